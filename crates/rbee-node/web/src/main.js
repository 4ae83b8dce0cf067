// The rbee dashboard: Pool, Models, Chat and Activity views over the node's own API.
import { h, render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import htm from "htm";
import { AuthError, call, fmt, request, stream, token } from "./api.js";
import { PresetEditor, presetsOf } from "./presets.js";

const html = htm.bind(h);
const VIEWS = ["Pool", "Models", "Chat", "Activity"];

// The pool view, live from GET /v1/pool/events; reconnects after a drop.
function usePool(onAuth) {
  const [pool, setPool] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    const abort = new AbortController();
    (async () => {
      while (!abort.signal.aborted) {
        try {
          await stream("/v1/pool/events", {
            signal: abort.signal,
            onEvent: (name, data) => {
              if (name === "pool") {
                setPool(JSON.parse(data));
                setError(null);
              }
            },
          });
        } catch (e) {
          if (abort.signal.aborted) return;
          if (e instanceof AuthError) return onAuth();
          setError(String(e.message || e));
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    return () => abort.abort();
  }, []);
  return [pool, error];
}

function nodesOf(pool) {
  if (!pool) return [];
  const self = {
    self: true,
    name: pool.node.name,
    peer_id: pool.node.peer_id,
    api_addr: pool.node.status?.api_addr || location.host,
    last_seen_ms: 0,
    connected: true,
    status: pool.node.status,
  };
  return [self, ...pool.peers];
}

// content id → names, from every node's store.
function modelNames(nodes) {
  const names = new Map();
  for (const n of nodes)
    for (const m of n.status?.on_disk || []) if (!names.has(m.content_id)) names.set(m.content_id, m.names);
  return names;
}

const short = (id) => (id ? String(id).slice(0, 12) : "");

function Meter({ used, budget, label }) {
  const pct = budget ? Math.min(100, (100 * used) / budget) : 0;
  return html`<span class="meter">
    <meter min="0" max=${budget || 1} value=${used} aria-label=${label}></meter>
    ${fmt.bytes(used)} / ${fmt.bytes(budget)} (${fmt.bytes(Math.max(0, budget - used))} free, ${pct.toFixed(0)}%)
  </span>`;
}

function Topology({ nodes }) {
  const r = 70;
  const cx = 110;
  const cy = 95;
  const at = (i) => {
    const a = (2 * Math.PI * i) / Math.max(1, nodes.length) - Math.PI / 2;
    return [cx + (nodes.length > 1 ? r * Math.cos(a) : 0), cy + (nodes.length > 1 ? r * Math.sin(a) : 0)];
  };
  return html`<svg class="topology" viewBox="0 0 220 190" role="img" aria-label=${`pool of ${nodes.length} nodes`}>
    ${nodes.slice(1).map((n, i) => {
      const [x, y] = at(i + 1);
      const [x0, y0] = at(0);
      return html`<line x1=${x0} y1=${y0} x2=${x} y2=${y} class=${n.connected ? "link" : "link relayed"} />`;
    })}
    ${nodes.map((n, i) => {
      const [x, y] = at(i);
      const busy = (n.status?.loaded || []).some((m) => m.live > 0);
      return html`<g><circle cx=${x} cy=${y} r="13" class=${busy ? "node busy" : n.self ? "node self" : "node"} />
        <text x=${x} y=${y + 27} text-anchor="middle">${n.name}</text></g>`;
    })}
  </svg>`;
}

function PoolView({ pool, error }) {
  const nodes = nodesOf(pool);
  const names = modelNames(nodes);
  if (!pool) return html`<p role="status">${error ? `Cannot read the pool: ${error}` : "Connecting to the node…"}</p>`;
  return html`<section aria-labelledby="pool-h">
    <h2 id="pool-h">Pool <small>${pool.pool ? `key ${pool.pool}` : "this node runs alone"}</small></h2>
    ${error && html`<p class="error" role="alert">Live updates interrupted: ${error}</p>`}
    ${pool.message && html`<p>${pool.message}</p>`}
    <p role="status" aria-live="polite" id="node-count">${nodes.length} node${nodes.length === 1 ? "" : "s"}</p>
    <div class="pool">
      <${Topology} nodes=${nodes} />
      <div class="scroll"><table id="nodes">
        <thead><tr><th scope="col">Node</th><th scope="col">Address</th><th scope="col">Devices</th><th scope="col">Loaded models</th><th scope="col">Tokens/s</th><th scope="col">Last seen</th></tr></thead>
        <tbody>
          ${nodes.map(
            (n) => html`<tr data-node=${n.name} key=${n.peer_id || n.name}>
              <th scope="row">${n.name}${n.self ? " (this node)" : ""}</th>
              <td>${n.api_addr || "–"}${n.rtt_ms != null ? html`<br /><small>${n.rtt_ms.toFixed(1)} ms round trip</small>` : ""}</td>
              <td>${(n.status?.devices || []).map(
                (d) => html`<div><strong>${d.name}</strong> <${Meter} used=${d.used_bytes} budget=${d.budget_bytes} label=${`${n.name} ${d.name} memory`} /></div>`,
              )}</td>
              <td>${(n.status?.loaded || []).length === 0
                ? "none"
                : html`<ul>${n.status.loaded.map(
                    (m) => html`<li>${(names.get(m.content_id) || [short(m.content_id)])[0]}: ${m.live}/${m.max_live} live, ${m.queue} queued</li>`,
                  )}</ul>`}</td>
              <td>${(n.status?.tokens_per_sec ?? 0).toFixed(1)}</td>
              <td>${n.self ? "now" : fmt.ms(n.last_seen_ms) + " ago"}</td>
            </tr>`,
          )}
        </tbody>
      </table></div>
    </div>
  </section>`;
}

// A job's live state from its event stream.
function useJobs() {
  const [jobs, setJobs] = useState([]);
  const update = (id, f) => setJobs((js) => js.map((j) => (j.id === id ? { ...j, ...f(j) } : j)));
  async function start(operation, fields, label) {
    const { job_id } = await call("/v1/jobs", { method: "POST", body: { operation, ...fields } });
    setJobs((js) => [{ id: job_id, label, operation, phase: "started", state: "running" }, ...js].slice(0, 20));
    stream(`/v1/jobs/${job_id}/stream`, {
      onEvent: (name, data) => {
        const e = JSON.parse(data);
        if (name === "phase") update(job_id, () => ({ phase: e.phase || e.name || data }));
        else if (name === "progress") update(job_id, () => ({ progress: e }));
        else if (name === "done") update(job_id, () => ({ state: "done", result: e }));
        else if (name === "error") update(job_id, () => ({ state: "failed", error: e.message }));
      },
    }).catch((e) => update(job_id, () => ({ state: "failed", error: String(e.message || e) })));
    return job_id;
  }
  const cancel = (id) => call(`/v1/jobs/${id}`, { method: "DELETE" }).catch(() => {});
  return { jobs, start, cancel };
}

function JobRow({ job, cancel }) {
  const p = job.progress;
  return html`<li class=${`job ${job.state}`} data-job=${job.operation}>
    <strong>${job.label}</strong> <span class="state">${job.state}</span>${job.state === "running" ? ` · ${job.phase}` : ""}${job.result?.result?.source ? ` · source: ${job.result.result.source}` : ""}
    ${p && html`<div>
      <progress max=${p.total || 1} value=${p.done} aria-label=${`${job.label} progress`}></progress>
      ${fmt.bytes(p.done)} of ${fmt.bytes(p.total)}${p.rate_bytes_per_sec != null ? ` · ${fmt.bytes(p.rate_bytes_per_sec)}/s` : ""}${p.eta_secs != null ? ` · ${Math.ceil(p.eta_secs)} s left` : ""}${p.peers?.length ? ` · from ${p.peers.join(", ")}` : ""}
    </div>`}
    ${job.error && html`<div class="error" role="alert">${job.error}</div>`}
    ${job.state === "running" && html`<button type="button" onClick=${() => cancel(job.id)}>Cancel</button>`}
  </li>`;
}

function ModelsView({ pool, onAuth }) {
  const nodes = nodesOf(pool);
  const [local, setLocal] = useState([]);
  const [ref, setRef] = useState("");
  const [error, setError] = useState(null);
  const [presets, setPresets] = useState([]);
  // The editor: closed (false), a new preset (null) or a preset's name.
  const [editing, setEditing] = useState(false);
  const { jobs, start, cancel } = useJobs();
  // Architecture, quantization and parameters come from this node's catalog (the pool's
  // statuses carry names and sizes only): shown for the models this node holds. Presets are
  // this node's own (Ollama's /api/tags lists them, with their base as `parent_model`).
  const refresh = () =>
    Promise.all([call("/health"), call("/api/tags")])
      .then(([r, tags]) => {
        setLocal(r.models);
        setPresets(presetsOf(tags));
      })
      .catch((e) => (e instanceof AuthError ? onAuth() : setError(e.message)));
  useEffect(() => {
    refresh();
  }, [pool?.node?.status?.on_disk?.length, jobs.filter((j) => j.state !== "running").length]);
  const bases = [...local.filter((m) => m.name).map((m) => m.name), ...presets.map((p) => p.name)];
  const models = new Map();
  for (const n of nodes) {
    for (const m of n.status?.on_disk || []) {
      const e = models.get(m.content_id) || { id: m.content_id, names: m.names, size: m.size, source: m.source, holders: [], loaded: [] };
      e.holders.push(n.name);
      models.set(m.content_id, e);
    }
    for (const m of n.status?.loaded || []) models.get(m.content_id)?.loaded.push(n.name);
  }
  for (const m of models.values()) {
    m.holders.sort();
    m.loaded.sort();
  }
  const info = (id) => local.find((m) => m.content_id === id);
  const baseInfo = (p) => local.find((m) => m.name === p.base);
  const act = (operation, model, label) => start(operation, { model }, label).catch((e) => setError(e.message));
  const selfName = pool?.node?.name;
  return html`<section aria-labelledby="models-h">
    <h2 id="models-h">Models</h2>
    <form class="row" onSubmit=${(e) => {
      e.preventDefault();
      setError(null);
      if (ref.trim()) act("model_pull", ref.trim(), `pull ${ref.trim()}`);
    }}>
      <label for="pull-ref">Pull a model (name, content id, or HuggingFace <code>org/repo:file</code>)</label>
      <input id="pull-ref" value=${ref} onInput=${(e) => setRef(e.target.value)} placeholder="e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M" />
      <button type="submit">Pull</button>
    </form>
    <div class="row"><button type="button" onClick=${() => setEditing(null)} aria-expanded=${editing === null}>New preset</button></div>
    ${editing !== false && html`<${PresetEditor} editing=${editing} bases=${bases} onAuth=${onAuth}
      onSaved=${(name) => (setEditing(name), refresh())}
      onDeleted=${() => (setEditing(false), refresh())}
      onClose=${() => setEditing(false)} />`}
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${jobs.length > 0 && html`<h3>Jobs on this node</h3><ul class="jobs">${jobs.map((j) => html`<${JobRow} job=${j} cancel=${cancel} key=${j.id} />`)}</ul>`}
    <div class="scroll"><table id="models">
      <thead><tr><th scope="col">Model</th><th scope="col">Architecture</th><th scope="col">Quantization</th><th scope="col">Parameters</th><th scope="col">Size</th><th scope="col">Held by</th><th scope="col">Loaded on</th><th scope="col">Actions (this node)</th></tr></thead>
      <tbody>${models.size === 0 && presets.length === 0 && html`<tr><td colspan="8">No models in the pool yet: pull one above, or import one with <code>rbee-node models import</code>.</td></tr>`}
      ${[...models.values()].map((m) => {
        const here = m.holders.includes(selfName);
        const name = m.names[0];
        return html`<tr data-model=${name} key=${m.id}>
          <th scope="row">${name}${m.names.length > 1 ? html`<br /><small>${m.names.slice(1).join(", ")}</small>` : ""}<br /><small>${short(m.id)}${m.source ? ` · ${m.source}` : ""}</small></th>
          <td>${info(m.id)?.architecture || "–"}</td>
          <td>${info(m.id)?.quantization || "–"}</td>
          <td>${info(m.id)?.parameter_count ? fmt.count(info(m.id).parameter_count) : "–"}</td>
          <td>${fmt.bytes(m.size)}</td>
          <td>${m.holders.join(", ")}</td>
          <td>${m.loaded.join(", ") || "–"}</td>
          <td class="actions">${here
            ? html`<button type="button" onClick=${() => act("model_load", name, `load ${name}`)}>Load</button>
                <button type="button" onClick=${() => act("model_unload", name, `unload ${name}`)}>Unload</button>
                <button type="button" class="danger" onClick=${() => confirm(`Remove ${name} from this node's store?`) && act("model_remove", name, `remove ${name}`)}>Remove</button>`
            : html`<button type="button" onClick=${() => act("model_pull", m.id, `pull ${name}`)}>Pull here</button>`}</td>
        </tr>`;
      })}
      ${presets.map(
        (p) => html`<tr data-model=${p.name} data-preset=${p.base} class="preset" key=${`preset:${p.name}`}>
          <th scope="row">${p.name} <span class="badge">preset</span><br /><small>of ${p.base}</small></th>
          <td>${p.details.family || "–"}</td>
          <td>${p.details.quantization_level || "–"}</td>
          <td>${baseInfo(p)?.parameter_count ? fmt.count(baseInfo(p).parameter_count) : "–"}</td>
          <td>–</td>
          <td>${selfName}</td>
          <td>–</td>
          <td class="actions"><button type="button" onClick=${() => setEditing(p.name)} aria-label=${`Edit preset ${p.name}`}>Edit</button></td>
        </tr>`,
      )}</tbody>
    </table></div>
  </section>`;
}

// Embeddings, shown when a model of this node embeds: the vector's length, its first values,
// and the node that made it.
function EmbedPanel({ models, onAuth }) {
  const [model, setModel] = useState(models[0]);
  const [text, setText] = useState("");
  const [out, setOut] = useState(null);
  const [error, setError] = useState(null);
  async function embed(e) {
    e.preventDefault();
    if (!text.trim()) return;
    setError(null);
    const started = performance.now();
    try {
      const { body, headers } = await request("/v1/embeddings", { method: "POST", body: { model, input: text } });
      const v = body.data[0].embedding;
      setOut({ dims: v.length, head: v.slice(0, 6), node: headers.get("x-rbee-node"), ms: performance.now() - started, tokens: body.usage?.prompt_tokens });
    } catch (err) {
      if (err instanceof AuthError) return onAuth();
      setError(err.message);
    }
  }
  return html`<section aria-labelledby="embed-h" class="embed">
    <h3 id="embed-h">Embeddings</h3>
    <form class="row" onSubmit=${embed}>
      <label for="embed-model">Embedding model</label>
      <select id="embed-model" value=${model} onChange=${(e) => setModel(e.target.value)}>
        ${models.map((m) => html`<option value=${m}>${m}</option>`)}
      </select>
      <label for="embed-text">Text to embed</label>
      <input id="embed-text" value=${text} onInput=${(e) => setText(e.target.value)} />
      <button type="submit">Embed</button>
    </form>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${out && html`<p class="embed-result"><strong>${out.dims} dimensions</strong> from <strong>${out.node}</strong> in ${fmt.ms(out.ms)} (${out.tokens} tokens): [${out.head.map((x) => x.toFixed(4)).join(", ")}, …]</p>`}
  </section>`;
}

function ChatView({ pool, onAuth }) {
  const [models, setModels] = useState([]);
  const [embedders, setEmbedders] = useState([]);
  const [model, setModel] = useState("");
  const [system, setSystem] = useState("");
  const [temperature, setTemperature] = useState("0.7");
  const [maxTokens, setMaxTokens] = useState("512");
  const [input, setInput] = useState("");
  const [messages, setMessages] = useState([]);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const abort = useRef(null);
  const nodes = nodesOf(pool);
  useEffect(() => {
    // Presets run by name on every route; /api/tags lists them (they hold no weights, so the
    // OpenAI model list leaves them out).
    Promise.all([call("/v1/models"), call("/api/tags")])
      .then(([r, tags]) => {
        const presets = presetsOf(tags).map((p) => p.name);
        const local = r.data.filter((m) => (m.capabilities || ["completion"]).includes("completion")).map((m) => m.id);
        setEmbedders(r.data.filter((m) => (m.capabilities || []).includes("embedding")).map((m) => m.id));
        const embedOnly = new Set(r.data.filter((m) => !(m.capabilities || ["completion"]).includes("completion")).map((m) => m.content_id));
        const pooled = [];
        for (const n of nodes) for (const m of n.status?.on_disk || []) if (!embedOnly.has(m.content_id)) pooled.push(m.names[0]);
        const all = [...new Set([...local, ...presets, ...pooled])];
        setModels(all);
        setModel((cur) => cur || all[0] || "");
      })
      .catch((e) => (e instanceof AuthError ? onAuth() : setError(e.message)));
  }, [nodes.length]);
  async function send(e) {
    e.preventDefault();
    if (!input.trim() || !model || busy) return;
    const t = Number(temperature);
    if (!(t >= 0 && t <= 2)) return setError("Temperature must be a number from 0 to 2.");
    const max = Number(maxTokens);
    if (!(Number.isInteger(max) && max >= 1)) return setError("Max tokens must be a whole number of at least 1.");
    setError(null);
    const history = [...messages.filter((m) => m.role !== "meta"), { role: "user", content: input }];
    const reply = { role: "assistant", content: "", pending: true };
    setMessages([...history, reply]);
    setInput("");
    setBusy(true);
    abort.current = new AbortController();
    const started = performance.now();
    let first = null;
    let node = null;
    let tokens = null;
    let prompt = null;
    let chunks = 0;
    const show = (patch) => setMessages([...history, { ...reply, ...patch }]);
    try {
      await stream("/v1/chat/completions", {
        method: "POST",
        signal: abort.current.signal,
        body: {
          model,
          stream: true,
          stream_options: { include_usage: true },
          temperature: t,
          max_tokens: max,
          messages: [...(system.trim() ? [{ role: "system", content: system }] : []), ...history],
        },
        onResponse: (resp) => (node = resp.headers.get("x-rbee-node")),
        onEvent: (_, data) => {
          if (data === "[DONE]") return;
          const c = JSON.parse(data);
          if (c.error) throw new Error(c.error.message);
          if (c.usage) {
            tokens = c.usage.completion_tokens;
            prompt = c.usage.prompt_tokens;
          }
          const delta = c.choices?.[0]?.delta?.content;
          if (delta) {
            if (first == null) first = performance.now();
            chunks++;
            reply.content += delta;
            show({ node });
          }
        },
      });
    } catch (err) {
      if (err.name !== "AbortError") {
        if (err instanceof AuthError) onAuth();
        setError(err.message);
      }
    }
    const end = performance.now();
    const n = tokens ?? chunks;
    const tps = first != null && n > 1 ? (n - 1) / ((end - first) / 1000) : null;
    show({ pending: false, node, ttft: first != null ? first - started : null, tokens: n, prompt, tps, stopped: abort.current?.signal.aborted });
    setBusy(false);
  }
  return html`<section aria-labelledby="chat-h">
    <h2 id="chat-h">Chat</h2>
    <div class="row">
      <label for="chat-model">Model</label>
      <select id="chat-model" value=${model} onChange=${(e) => setModel(e.target.value)}>
        ${models.length === 0 && html`<option value="">no model in the pool</option>`}
        ${models.map((m) => html`<option value=${m}>${m}</option>`)}
      </select>
      <label for="chat-temp">Temperature</label>
      <input id="chat-temp" type="number" min="0" max="2" step="0.1" value=${temperature} onInput=${(e) => setTemperature(e.target.value)} />
      <label for="chat-max">Max tokens</label>
      <input id="chat-max" type="number" min="1" step="1" value=${maxTokens} onInput=${(e) => setMaxTokens(e.target.value)} />
      <button type="button" onClick=${() => setMessages([])} disabled=${busy}>New chat</button>
    </div>
    <label for="chat-system">System prompt</label>
    <textarea id="chat-system" rows="2" value=${system} onInput=${(e) => setSystem(e.target.value)}></textarea>
    <ol class="messages" aria-live="polite">
      ${messages.map(
        (m) => html`<li class=${`msg ${m.role}`}>
          <span class="who">${m.role === "user" ? "You" : "Model"}</span>
          <div class="text">${m.content}${m.pending ? "▍" : ""}</div>
          ${m.role === "assistant" && !m.pending && html`<small class="served">served by <strong class="served-by">${m.node || "?"}</strong> · ${m.tokens} tokens${m.prompt != null ? html` · <span class="prompt-tokens">${m.prompt} prompt tokens</span>` : ""} · TTFT ${fmt.ms(m.ttft)} · ${fmt.rate(m.tps)}${m.stopped ? " · stopped" : ""}</small>`}
        </li>`,
      )}
    </ol>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <form class="compose" onSubmit=${send}>
      <label for="chat-input">Message</label>
      <textarea id="chat-input" rows="3" value=${input} onInput=${(e) => setInput(e.target.value)}
        onKeyDown=${(e) => e.key === "Enter" && (e.ctrlKey || e.metaKey) && send(e)}></textarea>
      <button type="submit" disabled=${busy || !model}>Send</button>
      <button type="button" onClick=${() => abort.current?.abort()} disabled=${!busy}>Stop</button>
    </form>
    ${embedders.length > 0 && html`<${EmbedPanel} models=${embedders} onAuth=${onAuth} />`}
  </section>`;
}

function Chart({ points, label, unit, format }) {
  const w = 300;
  const hgt = 80;
  const max = Math.max(1e-9, ...points.map((p) => p.v));
  const t0 = points.length ? points[0].t : 0;
  const span = Math.max(1, (points.length ? points[points.length - 1].t : 1) - t0);
  const d = points.map((p) => `${((p.t - t0) / span) * w},${hgt - (p.v / max) * (hgt - 4)}`).join(" ");
  const last = points.length ? points[points.length - 1].v : null;
  return html`<figure class="chart">
    <svg viewBox=${`0 0 ${w} ${hgt}`} role="img" aria-label=${`${label}, last ${points.length} samples, now ${last == null ? "unknown" : format(last)}`} preserveAspectRatio="none">
      <polyline points=${d} />
    </svg>
    <figcaption>${label}: now ${last == null ? "–" : format(last)}, peak ${format(max)} ${unit}</figcaption>
  </figure>`;
}

function ActivityView({ onAuth }) {
  const [act, setAct] = useState(null);
  const [jobs, setJobs] = useState([]);
  const [error, setError] = useState(null);
  useEffect(() => {
    let live = true;
    const load = () =>
      Promise.all([call("/v1/activity"), call("/v1/jobs")])
        .then(([a, j]) => live && (setAct(a), setJobs(j.data), setError(null)))
        .catch((e) => (e instanceof AuthError ? onAuth() : setError(e.message)));
    load();
    const t = setInterval(load, 2000);
    return () => {
      live = false;
      clearInterval(t);
    };
  }, []);
  if (!act) return html`<p role="status">${error || "Loading…"}</p>`;
  const failedJobs = jobs.filter((j) => j.state === "failed");
  const row = (r) => html`<tr>
    <td>${new Date(r.at_ms).toLocaleTimeString()}</td><td>${r.route}</td><td>${r.model || "–"}</td><td>${r.node || "–"}</td>
    <td>${r.completion_tokens ?? "–"}</td><td>${fmt.ms(r.first_byte_ms)}</td><td>${fmt.ms(r.duration_ms)}</td><td>${r.status}</td></tr>`;
  const head = html`<thead><tr><th scope="col">Time</th><th scope="col">Route</th><th scope="col">Model</th><th scope="col">Node</th><th scope="col">Tokens</th><th scope="col">First byte</th><th scope="col">Duration</th><th scope="col">Status</th></tr></thead>`;
  return html`<section aria-labelledby="act-h">
    <h2 id="act-h">Activity <small>this node</small></h2>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="charts">
      <${Chart} label="Tokens/s" unit="" format=${(v) => v.toFixed(1)} points=${act.history.map((s) => ({ t: s.at_ms, v: s.tokens_per_sec }))} />
      <${Chart} label="Memory used" unit="" format=${fmt.bytes} points=${act.history.map((s) => ({ t: s.at_ms, v: s.used_bytes }))} />
    </div>
    <h3>Recent requests</h3>
    <div class="scroll"><table id="requests">${head}<tbody>${act.requests.map(row)}</tbody></table></div>
    <h3>Recent errors</h3>
    ${act.errors.length + failedJobs.length === 0
      ? html`<p>None.</p>`
      : html`<ul class="errors">
          ${act.errors.map((r) => html`<li><strong>${r.status}</strong> ${r.route} ${r.model || ""}: ${r.error || "(no message)"}</li>`)}
          ${failedJobs.map((j) => html`<li><strong>job ${j.operation}</strong>: ${j.error?.message || j.error || "failed"}</li>`)}
        </ul>`}
  </section>`;
}

function Login({ onDone }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState(null);
  async function submit(e) {
    e.preventDefault();
    token.set(value.trim());
    try {
      await call("/health");
      onDone();
    } catch (err) {
      token.set("");
      setError(err instanceof AuthError ? "That token was refused." : err.message);
    }
  }
  return html`<form class="login" onSubmit=${submit} aria-labelledby="login-h">
    <h2 id="login-h">This node needs its API token</h2>
    <p>It is kept for this browser tab only (sessionStorage) and sent in the Authorization header.</p>
    <label for="token">API token</label>
    <input id="token" type="password" autocomplete="current-password" value=${value} onInput=${(e) => setValue(e.target.value)} required />
    <button type="submit">Sign in</button>
    ${error && html`<p class="error" role="alert">${error}</p>`}
  </form>`;
}

function Dashboard({ onAuth }) {
  const [view, setView] = useState(() => (VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "Pool"));
  const [pool, error] = usePool(onAuth);
  useEffect(() => {
    const f = () => VIEWS.includes(location.hash.slice(1)) && setView(location.hash.slice(1));
    addEventListener("hashchange", f);
    return () => removeEventListener("hashchange", f);
  }, []);
  return html`<header>
      <h1>rbee <small>${pool?.node?.name || ""}</small></h1>
      <nav aria-label="Views"><ul>
        ${VIEWS.map((v) => html`<li><a href=${`#${v}`} aria-current=${view === v ? "page" : undefined}>${v}</a></li>`)}
      </ul></nav>
      ${token.get() && html`<button type="button" class="signout" onClick=${() => (token.set(""), onAuth())}>Sign out</button>`}
    </header>
    <main>
      ${view === "Pool" && html`<${PoolView} pool=${pool} error=${error} />`}
      ${view === "Models" && html`<${ModelsView} pool=${pool} onAuth=${onAuth} />`}
      ${view === "Chat" && html`<${ChatView} pool=${pool} onAuth=${onAuth} />`}
      ${view === "Activity" && html`<${ActivityView} onAuth=${onAuth} />`}
    </main>`;
}

function App() {
  const [needsToken, setNeedsToken] = useState(false);
  const [session, setSession] = useState(0);
  if (needsToken)
    return html`<main><h1>rbee</h1><${Login} onDone=${() => (setNeedsToken(false), setSession((s) => s + 1))} /></main>`;
  return html`<${Dashboard} key=${session} onAuth=${() => setNeedsToken(true)} />`;
}

const root = document.getElementById("app");
root.textContent = ""; // the "Loading…" line shown until the script runs
render(html`<${App} />`, root);
