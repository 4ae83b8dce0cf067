// The preset editor: a form over Ollama's Modelfile fields, saved with POST /api/create,
// prefilled from POST /api/show's Modelfile, removed with DELETE /api/delete. The parsing and
// rendering mirror crates/rbee-node/src/preset.rs (the server stays the judge: its error
// messages are shown as they come).
import { h } from "preact";
import { useEffect, useState } from "preact/hooks";
import htm from "htm";
import { AuthError, call } from "./api.js";

const html = htm.bind(h);

// The PARAMETERs the server maps onto its sampling (preset.rs `map_options`), with the kind
// of number each takes. `stop` is edited as a list apart.
export const PARAMS = [
  { key: "temperature", label: "Temperature", int: false, min: 0, step: "0.05" },
  { key: "top_k", label: "Top k", int: true, min: 0 },
  { key: "top_p", label: "Top p", int: false, min: 0, step: "0.05" },
  { key: "min_p", label: "Min p", int: false, min: 0, step: "0.05" },
  { key: "repeat_penalty", label: "Repeat penalty", int: false, min: 0, step: "0.05" },
  { key: "seed", label: "Seed", int: true },
  { key: "num_ctx", label: "Context length (num_ctx)", int: true, min: 1 },
  { key: "num_predict", label: "Max tokens (num_predict)", int: true, min: -2 },
];
const KNOWN = new Set([...PARAMS.map((p) => p.key), "stop"]);

// Names as the dashboard shows them: Ollama's default tag left off.
export const bare = (name) => name.replace(/:latest$/, "");

// This node's presets from GET /api/tags (a preset's `details.parent_model` names its base;
// a model's is empty): name, base and the base's details.
export const presetsOf = (tags) =>
  tags.models.filter((m) => m.details?.parent_model).map((m) => ({ name: bare(m.name), base: bare(m.details.parent_model), details: m.details }));

// A Modelfile value: `"""…"""` (may span lines), `"…"`, or the rest of the line, as the
// server reads it. Returns [value, lines consumed after this one].
function value(rest, lines, at) {
  rest = rest.trim();
  if (rest.startsWith('"""')) {
    const body = rest.slice(3);
    const end = body.indexOf('"""');
    if (end >= 0) return [body.slice(0, end), 0];
    let text = body;
    for (let i = at + 1; i < lines.length; i++) {
      const cut = lines[i].indexOf('"""');
      text += "\n" + (cut >= 0 ? lines[i].slice(0, cut) : lines[i]);
      if (cut >= 0) return [text.replace(/^\n+/, ""), i - at];
    }
    return [text, lines.length - at];
  }
  if (rest.startsWith('"') && rest.endsWith('"') && rest.length >= 2)
    return [rest.slice(1, -1).replaceAll('\\"', '"').replaceAll("\\n", "\n"), 0];
  return [rest, 0];
}

function scalar(text) {
  if (/^-?\d+$/.test(text)) return Number(text);
  if (text.trim() !== "" && Number.isFinite(Number(text))) return Number(text);
  if (text === "true" || text === "false") return text === "true";
  return text;
}

// The form's fields from a Modelfile's text (what /api/show answers for a preset).
export function fromModelfile(text) {
  const form = { from: "", system: "", template: null, params: {}, stop: [], messages: [], license: [], other: {} };
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^(\S+)\s*([\s\S]*)$/);
    const word = m[1].toUpperCase();
    let rest = m[2];
    if (word === "PARAMETER" || word === "MESSAGE") {
      const k = rest.match(/^(\S+)\s+([\s\S]*)$/);
      if (!k) continue;
      const [v, used] = value(k[2], lines, i);
      i += used;
      if (word === "MESSAGE") form.messages.push({ role: k[1].toLowerCase(), content: v });
      else if (k[1] === "stop") form.stop.push(v);
      else if (KNOWN.has(k[1])) form.params[k[1]] = String(v);
      else form.other[k[1]] = scalar(v);
      continue;
    }
    const [v, used] = value(rest, lines, i);
    i += used;
    if (word === "FROM") form.from = v;
    else if (word === "SYSTEM") form.system = v;
    else if (word === "TEMPLATE") form.template = v;
    else if (word === "LICENSE") form.license.push(v);
  }
  return form;
}

// A stop sequence as typed: `\n` and `\t` mean a newline and a tab.
const unescape = (s) => s.replace(/\\([nt\\])/g, (_, c) => ({ n: "\n", t: "\t", "\\": "\\" })[c]);
const escape = (s) => s.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\t/g, "\\t");

// What the form asks POST /api/create for, or an error message for a field it cannot send.
export function createBody(form) {
  const name = form.name.trim();
  if (!name) return { error: "Give the preset a name." };
  if (!form.from.trim()) return { error: "Choose the base model." };
  const parameters = { ...form.other };
  for (const p of PARAMS) {
    const raw = (form.params[p.key] ?? "").trim();
    if (raw === "") continue;
    const n = Number(raw);
    if (!Number.isFinite(n) || (p.int && !Number.isInteger(n)))
      return { error: `${p.label} must be ${p.int ? "a whole number" : "a number"}.` };
    parameters[p.key] = n;
  }
  const stop = form.stopText.split("\n").filter((s) => s !== "").map(unescape);
  if (stop.length) parameters.stop = stop;
  const messages = form.messages.filter((m) => m.content.trim() !== "");
  const body = { model: name, from: form.from.trim(), parameters, messages, stream: false };
  if (form.system.trim()) body.system = form.system;
  // A preset's Ollama TEMPLATE is not edited here, but kept when the preset is saved.
  if (form.template) body.template = form.template;
  const license = form.license.trim();
  if (license) body.license = license;
  return { body };
}

const quoted = (t) => (t.includes("\n") || t.includes('"') ? `"""${t}"""` : `"${t}"`);

// The Modelfile the form makes, written as the server writes it.
export function render(body) {
  let out = `FROM ${body.from}\n`;
  if (body.template != null) out += `TEMPLATE ${quoted(body.template)}\n`;
  if (body.system != null) out += `SYSTEM ${quoted(body.system)}\n`;
  // Sorted by name, as the server keeps them.
  for (const [k, v] of Object.entries(body.parameters).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    for (const one of Array.isArray(v) ? v : [v]) out += `PARAMETER ${k} ${typeof one === "string" ? quoted(one) : JSON.stringify(one)}\n`;
  for (const m of body.messages) out += `MESSAGE ${m.role} ${quoted(m.content)}\n`;
  if (body.license) out += `LICENSE ${quoted(body.license)}\n`;
  return out;
}

const blank = (from) => ({ name: "", from: from || "", system: "", template: null, params: {}, stopText: "", messages: [], license: "", other: {} });

// The editor. `editing` names the preset to edit (prefilled from /api/show), or is null for a
// new one; `bases` are this node's models (the base's suggestions); `onSaved(name)` and
// `onClose()` tell the Models view.
export function PresetEditor({ editing, bases, onSaved, onDeleted, onClose, onAuth }) {
  const [form, setForm] = useState(() => blank(bases[0]));
  const [loading, setLoading] = useState(!!editing);
  const [error, setError] = useState(null);
  const [saved, setSaved] = useState(null);
  const [busy, setBusy] = useState(false);
  const fail = (e) => (e instanceof AuthError ? onAuth() : setError(e.message));
  const load = (name) =>
    call("/api/show", { method: "POST", body: { model: name } }).then((shown) => {
      const f = fromModelfile(shown.modelfile || "");
      setForm({
        ...blank(),
        name,
        from: bare(f.from),
        system: shown.system ?? f.system,
        template: f.template,
        params: f.params,
        stopText: f.stop.map(escape).join("\n"),
        messages: f.messages,
        license: f.license.join("\n"),
        other: f.other,
      });
    });
  useEffect(() => {
    // A new preset just saved becomes the one edited: already shown as the server has it.
    if (editing && editing === form.name) return;
    setError(null);
    setSaved(null);
    if (!editing) return setForm(blank(bases[0]));
    setLoading(true);
    load(editing)
      .catch(fail)
      .finally(() => setLoading(false));
  }, [editing]);
  const set = (patch) => setForm((f) => ({ ...f, ...patch }));
  const setMessage = (i, patch) => set({ messages: form.messages.map((m, j) => (j === i ? { ...m, ...patch } : m)) });
  const made = createBody(form);
  async function save(e) {
    e.preventDefault();
    setSaved(null);
    if (made.error) return setError(made.error);
    setError(null);
    setBusy(true);
    try {
      await call("/api/create", { method: "POST", body: made.body });
      // Shown again as the server now has it.
      await load(made.body.model);
      setSaved(made.body.model);
      onSaved(made.body.model);
    } catch (err) {
      fail(err);
    }
    setBusy(false);
  }
  async function remove() {
    if (!confirm(`Delete the preset ${editing}? Its base model stays.`)) return;
    setBusy(true);
    try {
      await call("/api/delete", { method: "DELETE", body: { model: editing } });
      onDeleted(editing);
    } catch (err) {
      fail(err);
    }
    setBusy(false);
  }
  const title = editing ? `Edit preset ${editing}` : "New preset";
  if (loading) return html`<section class="preset-editor" aria-label=${title}><p role="status">Loading ${editing}…</p></section>`;
  return html`<section class="preset-editor" aria-labelledby="preset-h">
    <h3 id="preset-h">${title}</h3>
    <form onSubmit=${save} novalidate>
      <div class="fields">
        <label for="preset-name">Preset name</label>
        <input id="preset-name" value=${form.name} readOnly=${!!editing} required autocomplete="off"
          onInput=${(e) => set({ name: e.target.value })} placeholder="e.g. terse-gemma" />
        <label for="preset-base">Base model</label>
        <input id="preset-base" list="preset-bases" value=${form.from} required autocomplete="off"
          onInput=${(e) => set({ from: e.target.value })} aria-describedby="preset-base-hint" />
        <datalist id="preset-bases">${bases.map((b) => html`<option value=${b} />`)}</datalist>
        <small id="preset-base-hint">A model (or preset) on this node.</small>
        <label for="preset-system">System prompt</label>
        <textarea id="preset-system" rows="3" value=${form.system} onInput=${(e) => set({ system: e.target.value })}></textarea>
      </div>
      <fieldset class="params">
        <legend>Parameters <small>(empty: the request's or the engine's default)</small></legend>
        ${PARAMS.map(
          (p) => html`<div>
            <label for=${`preset-${p.key}`}>${p.label}</label>
            <input id=${`preset-${p.key}`} type="number" inputmode=${p.int ? "numeric" : "decimal"} step=${p.step || "1"} min=${p.min}
              value=${form.params[p.key] ?? ""} onInput=${(e) => set({ params: { ...form.params, [p.key]: e.target.value } })} />
          </div>`,
        )}
        <div class="stop">
          <label for="preset-stop">Stop sequences</label>
          <textarea id="preset-stop" rows="2" value=${form.stopText} aria-describedby="preset-stop-hint"
            onInput=${(e) => set({ stopText: e.target.value })}></textarea>
          <small id="preset-stop-hint">One a line; <code>\\n</code> is a newline.</small>
        </div>
      </fieldset>
      <fieldset class="examples">
        <legend>Example messages <small>(put before every chat)</small></legend>
        ${form.messages.length === 0 && html`<p>None.</p>`}
        <ol>
          ${form.messages.map(
            (m, i) => html`<li class="example">
              <label for=${`preset-role-${i}`}>Role of message ${i + 1}</label>
              <select id=${`preset-role-${i}`} value=${m.role} onChange=${(e) => setMessage(i, { role: e.target.value })}>
                ${["user", "assistant", "system"].map((r) => html`<option value=${r}>${r}</option>`)}
              </select>
              <label for=${`preset-content-${i}`}>Text of message ${i + 1}</label>
              <textarea id=${`preset-content-${i}`} rows="2" value=${m.content} onInput=${(e) => setMessage(i, { content: e.target.value })}></textarea>
              <button type="button" class="danger" onClick=${() => set({ messages: form.messages.filter((_, j) => j !== i) })}>Remove message ${i + 1}</button>
            </li>`,
          )}
        </ol>
        <button type="button" onClick=${() => set({ messages: [...form.messages, { role: form.messages.length % 2 ? "assistant" : "user", content: "" }] })}>Add message</button>
      </fieldset>
      <label for="preset-license">License <small>(optional)</small></label>
      <textarea id="preset-license" rows="1" value=${form.license} onInput=${(e) => set({ license: e.target.value })}></textarea>
      <details class="preview" open>
        <summary>Modelfile preview</summary>
        <pre id="preset-preview" aria-live="polite">${made.body ? render(made.body) : made.error}</pre>
      </details>
      ${error && html`<p class="error" role="alert" id="preset-error">${error}</p>`}
      ${saved && html`<p class="ok" role="status">Saved preset <strong>${saved}</strong>.</p>`}
      <div class="row">
        <button type="submit" disabled=${busy}>Save preset</button>
        ${editing && html`<button type="button" class="danger" disabled=${busy} onClick=${remove}>Delete preset</button>`}
        <button type="button" onClick=${onClose}>Close editor</button>
      </div>
    </form>
  </section>`;
}
