// Talking to the node: the token (sessionStorage only, sent as a header, never in a URL),
// JSON calls, and server-sent events read with fetch streaming (EventSource cannot send
// an Authorization header).
const KEY = "rbee-token";

export class AuthError extends Error {}

export const token = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (t) => (t ? sessionStorage.setItem(KEY, t) : sessionStorage.removeItem(KEY)),
};

function headers(extra = {}) {
  const h = { ...extra };
  const t = token.get();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function failure(resp) {
  if (resp.status === 401) return new AuthError("this node needs its API token");
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    message = body?.error?.message || body?.error || message;
  } catch (_) {
    // not JSON: keep the status line
  }
  return new Error(message);
}

// A JSON call: its body and the response's headers (x-rbee-node names the serving node).
export async function request(path, { method = "GET", body, signal } = {}) {
  const resp = await fetch(path, {
    method,
    signal,
    headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!resp.ok) throw await failure(resp);
  // Some answers have no body (Ollama's DELETE /api/delete is a bare 200).
  const text = await resp.text();
  return { body: text ? JSON.parse(text) : null, headers: resp.headers };
}

export const call = async (path, opts) => (await request(path, opts)).body;

// Reads an SSE response; calls onEvent(name, data) for each event. Resolves when it ends.
export async function readEvents(resp, onEvent) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

export async function stream(path, { method = "GET", body, signal, onEvent, onResponse }) {
  const resp = await fetch(path, {
    method,
    signal,
    headers: headers(body === undefined ? { Accept: "text/event-stream" } : { "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!resp.ok) throw await failure(resp);
  if (onResponse) onResponse(resp);
  await readEvents(resp, onEvent);
}

export const fmt = {
  bytes(n) {
    if (n == null) return "–";
    const u = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < u.length - 1) {
      n /= 1000;
      i++;
    }
    return `${n.toFixed(i && n < 10 ? 1 : 0)} ${u[i]}`;
  },
  ms(n) {
    if (n == null) return "–";
    return n < 1000 ? `${Math.round(n)} ms` : `${(n / 1000).toFixed(1)} s`;
  },
  count(n) {
    if (n >= 1e9) return `${(n / 1e9).toFixed(1)} B`;
    if (n >= 1e6) return `${Math.round(n / 1e6)} M`;
    return String(n);
  },
  rate(n) {
    return n == null ? "–" : `${n.toFixed(1)} tok/s`;
  },
};
