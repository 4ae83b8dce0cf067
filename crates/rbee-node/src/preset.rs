//! Presets: a model derived from a cataloged one by a Modelfile (Ollama's format) — a system
//! prompt, sampling parameters, example messages and a license over a base model named by
//! its content id. A preset holds no weights: it is a small JSON definition the store keeps
//! atomically (`Store::save_preset`), listed with the models and usable by name.
//!
//! Modelfile syntax (as Ollama reads it): one instruction a line, case-insensitive, `#`
//! comments; a value may be quoted with `"…"` or, across lines, `"""…"""`. `FROM`, `SYSTEM`,
//! `PARAMETER <key> <value>` (repeatable; `stop` collects), `MESSAGE <role> <text>`,
//! `LICENSE` (repeatable) and `TEMPLATE` (an Ollama Go template, rendered by
//! [`crate::gotemplate`] in place of the base model's own chat template; one it cannot render
//! exactly is refused here, naming the construct) are kept; `ADAPTER` is refused (no LoRA
//! support).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api_types::{Sampling, Stop};
use crate::error::NodeError;

/// The largest Modelfile read (a preset is a few kilobytes).
pub const MAX_MODELFILE_BYTES: usize = 512 * 1024;

/// An example message a preset puts before every chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresetMessage {
    pub role: String,
    pub content: String,
}

/// What a Modelfile says, before its `FROM` is resolved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Modelfile {
    /// The base as written: a catalog name or reference, or a GGUF path.
    pub from: String,
    /// An Ollama (Go) chat template that replaces the base model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Ollama's options (`temperature`, `num_ctx`, `stop`: a list, …).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<PresetMessage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub license: Vec<String>,
}

/// A stored preset: the Modelfile with its base resolved to a content id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    /// The base model's content id (hex).
    pub base: String,
    /// The base's name when the preset was made (for display).
    pub base_name: String,
    #[serde(flatten)]
    pub modelfile: Modelfile,
}

/// Why a Modelfile cannot be used: the line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Modelfile line {line}: {message}")]
pub struct ModelfileError {
    pub line: usize,
    pub message: String,
}

fn error(line: usize, message: impl Into<String>) -> ModelfileError {
    ModelfileError {
        line,
        message: message.into(),
    }
}

/// A PARAMETER value as JSON: an integer, a number, a boolean, else the text.
pub fn parameter_value(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = text.parse::<f64>()
        && f.is_finite()
    {
        return Value::from(f);
    }
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(text.to_string()),
    }
}

/// Adds `key value` to the parameters: `stop` collects into a list.
pub fn add_parameter(parameters: &mut Map<String, Value>, key: &str, value: Value) {
    if key == "stop" {
        let stops = parameters
            .entry("stop".to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = stops {
            match value {
                Value::Array(more) => list.extend(more),
                Value::String(s) => list.push(Value::String(s)),
                other => list.push(Value::String(other.to_string())),
            }
        }
    } else {
        parameters.insert(key.to_string(), value);
    }
}

/// Reads a value starting at `rest` (the text after the instruction on line `line`): a
/// `"""` block (which may span lines, taken from `lines`), a `"…"` string, or the rest of the
/// line. Returns the value and the number of extra lines it used.
fn value<'a>(
    rest: &str,
    line: usize,
    lines: &mut impl Iterator<Item = (usize, &'a str)>,
) -> Result<String, ModelfileError> {
    let rest = rest.trim();
    if let Some(body) = rest.strip_prefix("\"\"\"") {
        if let Some(end) = body.find("\"\"\"") {
            if !body[end + 3..].trim().is_empty() {
                return Err(error(line, "text after the closing `\"\"\"`"));
            }
            return Ok(body[..end].to_string());
        }
        let mut text = body.to_string();
        for (_, next) in lines.by_ref() {
            text.push('\n');
            if let Some(end) = next.find("\"\"\"") {
                if !next[end + 3..].trim().is_empty() {
                    return Err(error(line, "text after the closing `\"\"\"`"));
                }
                text.push_str(&next[..end]);
                return Ok(text.trim_start_matches('\n').to_string());
            }
            text.push_str(next);
        }
        return Err(error(line, "a `\"\"\"` block is never closed"));
    }
    if let Some(body) = rest.strip_prefix('"') {
        return match body.strip_suffix('"') {
            Some(inner) => Ok(inner.replace("\\\"", "\"").replace("\\n", "\n")),
            None => Err(error(line, "a quoted value has no closing `\"`")),
        };
    }
    Ok(rest.to_string())
}

/// Parses a Modelfile.
pub fn parse(text: &str) -> Result<Modelfile, ModelfileError> {
    if text.len() > MAX_MODELFILE_BYTES {
        return Err(error(
            0,
            format!("the Modelfile is over {MAX_MODELFILE_BYTES} bytes"),
        ));
    }
    let mut file = Modelfile::default();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut system_seen = false;
    while let Some((n, raw)) = lines.next() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match word.to_ascii_uppercase().as_str() {
            "FROM" => {
                if !file.from.is_empty() {
                    return Err(error(n, "a second FROM: a preset has one base"));
                }
                let from = value(rest, n, &mut lines)?;
                if from.trim().is_empty() {
                    return Err(error(n, "FROM needs a model name or a GGUF path"));
                }
                file.from = from.trim().to_string();
            }
            "SYSTEM" => {
                if system_seen {
                    return Err(error(n, "a second SYSTEM: give one system prompt"));
                }
                system_seen = true;
                file.system = Some(value(rest, n, &mut lines)?);
            }
            "PARAMETER" => {
                let (key, v) = rest
                    .trim()
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| error(n, "PARAMETER needs a name and a value"))?;
                let text = value(v, n, &mut lines)?;
                add_parameter(&mut file.parameters, key, parameter_value(&text));
            }
            "MESSAGE" => {
                let (role, v) = rest
                    .trim()
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| error(n, "MESSAGE needs a role and a text"))?;
                let role = role.to_ascii_lowercase();
                if !matches!(role.as_str(), "system" | "user" | "assistant") {
                    return Err(error(
                        n,
                        format!("MESSAGE role `{role}`: use system, user or assistant"),
                    ));
                }
                let content = value(v, n, &mut lines)?;
                file.messages.push(PresetMessage { role, content });
            }
            "LICENSE" => file.license.push(value(rest, n, &mut lines)?),
            "TEMPLATE" => {
                if file.template.is_some() {
                    return Err(error(n, "a second TEMPLATE: give one template"));
                }
                let template = value(rest, n, &mut lines)?;
                check_template(&template).map_err(|e| error(n, e))?;
                file.template = Some(template);
            }
            "ADAPTER" => {
                return Err(error(
                    n,
                    "ADAPTER is not supported: rbee does not apply LoRA adapters; merge the adapter into the GGUF first",
                ));
            }
            other => {
                return Err(error(
                    n,
                    format!(
                        "unknown instruction `{other}`: use FROM, TEMPLATE, SYSTEM, PARAMETER, MESSAGE or LICENSE"
                    ),
                ));
            }
        }
    }
    if file.from.is_empty() {
        return Err(error(0, "no FROM: name the base model"));
    }
    Ok(file)
}

/// Checks that a TEMPLATE is one [`crate::gotemplate`] renders exactly; the error names what
/// it does not support.
pub fn check_template(template: &str) -> Result<(), String> {
    crate::gotemplate::Template::parse(template)
        .map(|_| ())
        .map_err(|e| format!("{e}; rbee cannot render this template, so it is not kept"))
}

/// A value as a Modelfile writes it: `"""…"""` when it spans lines or has quotes.
fn quoted(text: &str) -> String {
    if text.contains('\n') || text.contains('"') {
        format!("\"\"\"{text}\"\"\"")
    } else {
        format!("\"{text}\"")
    }
}

impl Modelfile {
    /// The Modelfile text, with `from` as its FROM line: what `ollama create` accepts.
    pub fn render(&self, from: &str) -> String {
        let mut out = format!("FROM {from}\n");
        if let Some(template) = &self.template {
            out.push_str(&format!("TEMPLATE {}\n", quoted(template)));
        }
        if let Some(system) = &self.system {
            out.push_str(&format!("SYSTEM {}\n", quoted(system)));
        }
        for (key, v) in &self.parameters {
            let values: Vec<&Value> = match v {
                Value::Array(list) => list.iter().collect(),
                one => vec![one],
            };
            for v in values {
                let text = match v {
                    Value::String(s) => quoted(s),
                    other => other.to_string(),
                };
                out.push_str(&format!("PARAMETER {key} {text}\n"));
            }
        }
        for m in &self.messages {
            out.push_str(&format!("MESSAGE {} {}\n", m.role, quoted(&m.content)));
        }
        for l in &self.license {
            out.push_str(&format!("LICENSE {}\n", quoted(l)));
        }
        out
    }

    /// The PARAMETER lines alone, as Ollama's `/api/show` `parameters` lists them.
    pub fn parameters_text(&self) -> String {
        let mut out = String::new();
        for (key, v) in &self.parameters {
            let values: Vec<&Value> = match v {
                Value::Array(list) => list.iter().collect(),
                one => vec![one],
            };
            for v in values {
                out.push_str(&format!("{key:<30} {v}\n"));
            }
        }
        out
    }
}

/// Ollama's `options` that change nothing about the answer (threads, batch size, memory
/// mapping, GPU layers): accepted and left to this node's own settings.
const RUNTIME_OPTIONS: &[&str] = &[
    "num_keep",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mmap",
    "use_mlock",
    "num_thread",
    "numa",
];

/// The `options` of a chat or generate request, mapped onto the OpenAI route's sampling
/// fields. Options that would change the answer but are not implemented are refused by
/// name; `num_ctx` is returned for the caller to check against the loaded context.
pub fn map_options(
    options: Option<&Map<String, Value>>,
    sampling: &mut Sampling,
) -> Result<Option<u64>, NodeError> {
    let Some(options) = options else {
        return Ok(None);
    };
    let bad = |key: &str, want: &str, got: &Value| {
        NodeError::BadRequest(format!("`options.{key}` is {got}: give {want}"))
    };
    let float = |key: &str, v: &Value| -> Result<f32, NodeError> {
        v.as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| bad(key, "a number", v))
    };
    let int = |key: &str, v: &Value| -> Result<i64, NodeError> {
        v.as_i64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| bad(key, "an integer", v))
    };
    let mut num_ctx = None;
    for (key, v) in options {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "num_ctx" => {
                let n = int(key, v)?;
                num_ctx = Some(
                    u64::try_from(n)
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| bad(key, "a positive number of tokens", v))?,
                );
            }
            // -1: until the model stops; -2: until the context is full. Both are what no
            // limit means here (a generation never runs past the context).
            "num_predict" => match int(key, v)? {
                -1 | -2 => sampling.max_tokens = None,
                n if n > 0 => sampling.max_tokens = usize::try_from(n).ok(),
                _ => return Err(bad(key, "a positive count, -1 or -2", v)),
            },
            "temperature" => sampling.temperature = Some(float(key, v)?),
            "top_k" => sampling.top_k = Some(int(key, v)?),
            "top_p" => sampling.top_p = Some(float(key, v)?),
            "min_p" => sampling.min_p = Some(float(key, v)?),
            "repeat_penalty" => sampling.repeat_penalty = Some(float(key, v)?),
            "frequency_penalty" => sampling.frequency_penalty = Some(float(key, v)?),
            "presence_penalty" => sampling.presence_penalty = Some(float(key, v)?),
            "seed" => sampling.seed = Some(int(key, v)?),
            "stop" => {
                sampling.stop = Some(match v {
                    Value::String(s) => Stop::One(s.clone()),
                    Value::Array(a) => Stop::Many(
                        a.iter()
                            .map(|s| {
                                s.as_str()
                                    .map(str::to_string)
                                    .ok_or_else(|| bad(key, "a list of strings", v))
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    _ => return Err(bad(key, "a string or a list of strings", v)),
                });
            }
            // The penalty window is llama.cpp's 64 tokens here.
            "repeat_last_n" if int(key, v)? == 64 => {}
            // Off values of samplers this node does not have.
            "mirostat" if int(key, v)? == 0 => {}
            "typical_p" | "tfs_z" if float(key, v)? == 1.0 => {}
            "penalize_newline" if v.as_bool() == Some(true) => {}
            k if RUNTIME_OPTIONS.contains(&k) => {}
            k => {
                return Err(NodeError::BadRequest(format!(
                    "`options.{k}` ({v}) is not supported by this node; remove it (supported: num_ctx, num_predict, temperature, top_k, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty, seed, stop)"
                )));
            }
        }
    }
    Ok(num_ctx)
}

/// Checks a Modelfile's parameters as a request's `options` are checked, so a preset never
/// fails later.
pub fn check_parameters(parameters: &Map<String, Value>) -> Result<(), NodeError> {
    map_options(Some(parameters), &mut Sampling::default())
        .map(|_| ())
        .map_err(|e| NodeError::BadRequest(e.to_string().replace("`options.", "PARAMETER `")))
}

/// Stores `preset` as `name`, atomically (a reader sees the old definition or the new). It
/// blocks: call it off the async runtime.
pub fn save(store: &rbee_store::Store, name: &str, preset: &Preset) -> Result<(), NodeError> {
    let bytes = serde_json::to_vec_pretty(preset)
        .map_err(|e| NodeError::Internal(format!("writing the preset: {e}")))?;
    Ok(store.save_preset(name, &bytes)?)
}

/// Every stored preset, by name; one that does not parse is skipped with a warning. It
/// blocks: call it off the async runtime.
pub fn all(store: &rbee_store::Store) -> Result<Vec<(String, Preset)>, NodeError> {
    Ok(store
        .presets()?
        .into_iter()
        .filter_map(
            |(name, bytes)| match serde_json::from_slice::<Preset>(&bytes) {
                Ok(p) => Some((name, p)),
                Err(e) => {
                    tracing::warn!(preset = name, "skipping a preset that does not parse: {e}");
                    None
                }
            },
        )
        .collect())
}

/// The stored preset `name`, if there is one that parses. It blocks.
pub fn find(store: &rbee_store::Store, name: &str) -> Option<Preset> {
    all(store)
        .ok()?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
}

/// [`all`], off the async runtime.
pub async fn all_async(store: &rbee_store::Store) -> Result<Vec<(String, Preset)>, NodeError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || all(&store))
        .await
        .map_err(|e| NodeError::Internal(format!("reading presets: {e}")))?
}

impl Preset {
    /// The definition as peers exchange it: compact JSON. Its BLAKE3 is the preset's
    /// content id ([`Preset::id`]), which the pool status lists and a fetch is checked against.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The content id of the definition (also the digest `/api/tags` shows).
    pub fn id(&self) -> rbee_proto::ContentId {
        rbee_proto::ContentId::of(&self.canonical())
    }

    /// The base model's content id.
    pub fn base_id(&self) -> Option<rbee_proto::ContentId> {
        self.base.parse().ok()
    }

    /// A definition a peer sent (already checked to hash to the id it was asked for), held
    /// to what `models create` holds a Modelfile to: a base named by content id, parameters
    /// a request could carry, a template this node renders exactly.
    pub fn from_peer(bytes: &[u8]) -> Result<Preset, String> {
        let preset: Preset =
            serde_json::from_slice(bytes).map_err(|e| format!("not a preset definition: {e}"))?;
        if preset.base_id().is_none() {
            return Err(format!("its base `{}` is not a content id", preset.base));
        }
        check_parameters(&preset.modelfile.parameters).map_err(|e| e.to_string())?;
        if let Some(t) = &preset.modelfile.template {
            check_template(t)?;
        }
        Ok(preset)
    }

    /// A preset over this one: this one's settings, then `child`'s (its SYSTEM replaces this
    /// one's, its parameters override (a `stop` list replaces this one's), its MESSAGEs and
    /// LICENSE follow this one's).
    pub fn derive(&self, mut child: Modelfile) -> Preset {
        let mut merged = self.modelfile.clone();
        if child.system.is_some() {
            merged.system = child.system.take();
        }
        if child.template.is_some() {
            merged.template = child.template.take();
        }
        if child.parameters.contains_key("stop") {
            merged.parameters.remove("stop");
        }
        for (k, v) in std::mem::take(&mut child.parameters) {
            add_parameter(&mut merged.parameters, &k, v);
        }
        merged.messages.append(&mut child.messages);
        merged.license.append(&mut child.license);
        merged.from = child.from;
        Preset {
            base: self.base.clone(),
            base_name: self.base_name.clone(),
            modelfile: merged,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn a_peers_definition_is_held_to_what_a_local_modelfile_is() {
        let base = rbee_proto::ContentId::of(b"base").to_hex();
        let good = Preset {
            base: base.clone(),
            base_name: "gemma".into(),
            modelfile: Modelfile {
                from: "gemma".into(),
                system: Some("Be brief.".into()),
                ..Default::default()
            },
        };
        let back = Preset::from_peer(&good.canonical()).unwrap();
        assert_eq!(back, good);
        assert_eq!(back.id(), good.id(), "the id survives the trip");
        let with = |f: &dyn Fn(&mut Preset)| {
            let mut p = good.clone();
            f(&mut p);
            Preset::from_peer(&p.canonical())
        };
        let e = with(&|p| p.base = "gemma".into()).unwrap_err();
        assert!(e.contains("not a content id"), "{e}");
        let e = with(&|p| {
            p.modelfile.parameters.insert("mirostat".into(), json!(2));
        })
        .unwrap_err();
        assert!(e.contains("mirostat"), "{e}");
        let e = with(&|p| p.modelfile.template = Some("{{ printf \"%d\" 1 }}".into())).unwrap_err();
        assert!(e.contains("cannot render"), "{e}");
        assert!(Preset::from_peer(b"[1, 2]").is_err());
    }

    #[test]
    fn every_instruction_and_quoting() {
        let text = r#"
# a comment
FROM gemma:latest
TEMPLATE """{{- range .Messages }}<{{ .Role }}>
{{ .Content }}{{ end }}<model>
"""
system """You are Mario.
Answer as Mario."""
PARAMETER temperature 0.7
PARAMETER num_ctx 4096
PARAMETER stop "<end_of_turn>"
PARAMETER stop ###
PARAMETER seed 42
MESSAGE user "Who are you?"
MESSAGE assistant """It's-a me,
Mario!"""
LICENSE """MIT"""
LICENSE Apache-2.0
"#;
        let m = parse(text).unwrap();
        assert_eq!(m.from, "gemma:latest");
        assert_eq!(
            m.system.as_deref(),
            Some("You are Mario.\nAnswer as Mario.")
        );
        assert_eq!(m.parameters["temperature"], json!(0.7));
        assert_eq!(m.parameters["num_ctx"], json!(4096));
        assert_eq!(m.parameters["seed"], json!(42));
        assert_eq!(m.parameters["stop"], json!(["<end_of_turn>", "###"]));
        assert_eq!(m.messages.len(), 2);
        assert_eq!(m.messages[1].content, "It's-a me,\nMario!");
        assert_eq!(m.license, ["MIT", "Apache-2.0"]);
        assert_eq!(
            m.template.as_deref(),
            Some("{{- range .Messages }}<{{ .Role }}>\n{{ .Content }}{{ end }}<model>\n")
        );
        // What render writes parses back to the same.
        let again = parse(&m.render("gemma:latest")).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, words) in [
            ("FROM a\nADAPTER ./lora.gguf", 2, "ADAPTER"),
            (
                "FROM a\n\nTEMPLATE \"{{ template \\\"x\\\" }}\"",
                3,
                "`template` is not supported",
            ),
            ("FROM a\nTEMPLATE \"{{ upper .Prompt }}\"", 2, "`upper`"),
            ("FROM a\nSYSTEM \"\"\"never closed\nmore", 2, "never closed"),
            ("FROM a\nPARAMETER temperature", 2, "PARAMETER needs"),
            ("FROM a\nMESSAGE tool hi", 2, "role `tool`"),
            ("FROM a\nFROM b", 2, "second FROM"),
            (
                "FROM a\nFROBNICATE x",
                2,
                "unknown instruction `FROBNICATE`",
            ),
            ("SYSTEM hi", 0, "no FROM"),
            ("FROM a\nSYSTEM \"open", 2, "no closing"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.to_string().contains(words), "{text}: {e}");
            assert!(e.to_string().starts_with(&format!("Modelfile line {line}")));
        }
    }
}
