//! Ollama's API on the same port, for clients that speak only it (Home Assistant, Enchanted,
//! VS Code Copilot's Ollama provider, the `ollama` Python client): `/api/version`,
//! `/api/tags`, `/api/show`, `/api/ps`, `/api/chat`, `/api/generate`, `/api/pull`,
//! `/api/delete`, `/api/copy`, and `/api/create` (a preset from a Modelfile, its TEMPLATE included).
//!
//! A chat or generate request is converted into the OpenAI route's own request
//! ([`ChatRequest`] / [`CompletionRequest`]) and through [`openai::chat_job`] /
//! [`openai::completion_job`], the one place requests become generations; routing across
//! the pool is then the same ([`serve::start`]). The generation's events come back as
//! Ollama's NDJSON objects. Errors are Ollama's `{"error": "…"}` with the statuses the
//! OpenAI routes use.

use rbee_infer::tools::{ReplyPiece, ReplySplitter};
use rbee_proto::generation::ToolCall;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rbee_infer::engine::GenerationStats;
use rbee_proto::ModelRef;
use rbee_proto::generation::GenerationEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::embeddings::ollama_error;
use super::openai::{self, body, chat_job, completion_job, finish_reason, with_node};
use super::presets::{self, map_options};
use super::types::{
    ChatRequest, CompletionRequest, Content, InMessage, NotYet, PromptInput, Sampling,
};
use crate::NodeContext;
use crate::error::NodeError;
use crate::jobs::JobEvent;
use crate::preset::{self as modelfile, Modelfile, Preset};
use crate::serve::{self, Started};

/// The Ollama version this API answers as: clients gate features on it (VS Code Copilot
/// needs at least 0.6.4).
pub const OLLAMA_VERSION: &str = "0.6.4";
/// The tag a name without one means.
const LATEST: &str = ":latest";
/// NDJSON lines buffered between a generation and the HTTP response.
const LINES: usize = 16;

// ---------------------------------------------------------------------------------------
// Names

/// What an Ollama model name means here. Ollama's names are `name:tag`, `:latest` when no tag
/// is given; rbee's catalog names carry no tag, so `name:latest` is the catalog's `name`
/// (unless a model is cataloged under the whole `name:latest`). A HuggingFace reference keeps
/// its `:file`, and `org/repo:Q4_K_M` (a quantization tag, as Ollama's `hf.co/…` names use)
/// asks for the repo's GGUF with that tag (the hub picks the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaName {
    /// The reference rbee routes and pulls by.
    pub reference: String,
}

impl OllamaName {
    /// Parses an Ollama name; `has_exact` says whether the catalog holds the name exactly as
    /// given (then it is used as is).
    pub fn parse(name: &str, has_exact: impl Fn(&str) -> bool) -> Result<OllamaName, NodeError> {
        let name = name.trim();
        let name = name.strip_prefix("hf.co/").unwrap_or(name);
        let name = name.strip_prefix("huggingface.co/").unwrap_or(name);
        if name.is_empty() {
            return Err(NodeError::BadRequest(
                "`model` is empty: give a model name such as `gemma3:latest`".into(),
            ));
        }
        let reference = if name.contains('/') {
            // `org/repo:latest` is the repo (the hub's preferred quantization).
            name.strip_suffix(LATEST).unwrap_or(name).to_string()
        } else if has_exact(name) {
            name.to_string()
        } else {
            name.strip_suffix(LATEST).unwrap_or(name).to_string()
        };
        // Refuse what is not a reference at all now, with the accepted forms.
        let _: ModelRef = reference.parse()?;
        Ok(OllamaName { reference })
    }
}

/// How a catalog name is shown: with `:latest` when it has no tag.
pub fn display_name(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}{LATEST}")
    }
}

/// Resolves an Ollama name against this node's catalog and presets.
async fn reference(ctx: &NodeContext, name: &str) -> Result<String, NodeError> {
    let mut names: Vec<String> = ctx
        .catalog
        .list()
        .await?
        .into_iter()
        .flat_map(|r| std::iter::once(r.entry.name).chain(r.entry.aliases))
        .collect();
    names.extend(presets::all(ctx).await?.into_iter().map(|(n, _)| n));
    Ok(OllamaName::parse(name, |n| names.iter().any(|c| c == n))?.reference)
}

/// The reference a request runs on and the preset it names, if it names one.
async fn with_preset(ctx: &NodeContext, name: &str) -> Result<(String, Option<Preset>), NodeError> {
    let model = reference(ctx, name).await?;
    Ok(match presets::find(ctx, &model).await? {
        Some(p) => (presets::base_reference(&p), Some(p)),
        None => (model, None),
    })
}

// ---------------------------------------------------------------------------------------
// Options and keep_alive

/// Ollama's `keep_alive`: how long the model stays loaded after the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeepAlive {
    /// Not given: the node's own policy.
    Default,
    /// 0: unload as soon as the request is answered.
    Unload,
    /// Negative: for as long as the node runs.
    Forever,
    /// A duration: rbee keeps it at least this long (it unloads only when memory is needed).
    For(Duration),
}

/// Parses `keep_alive`: seconds as a number or a string, or a Go duration (`"5m"`, `"1h30m"`,
/// `"-1m"`, `"300ms"`).
pub fn parse_keep_alive(v: Option<&Value>) -> Result<KeepAlive, NodeError> {
    let bad = |v: &Value| {
        NodeError::BadRequest(format!(
            "`keep_alive` {v}: give a duration such as \"5m\", a number of seconds, 0 (unload now) or -1 (keep loaded)"
        ))
    };
    let secs: f64 = match v {
        None | Some(Value::Null) => return Ok(KeepAlive::Default),
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| bad(v.unwrap_or(&Value::Null)))?,
        Some(Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(n) => n,
            Err(_) => go_duration(s.trim()).ok_or_else(|| bad(v.unwrap_or(&Value::Null)))?,
        },
        Some(other) => return Err(bad(other)),
    };
    Ok(if secs < 0.0 {
        KeepAlive::Forever
    } else if secs == 0.0 {
        KeepAlive::Unload
    } else {
        KeepAlive::For(Duration::from_secs_f64(secs.min(1e12)))
    })
}

/// A Go duration string in seconds (`-1h2m3.5s`, `300ms`).
fn go_duration(s: &str) -> Option<f64> {
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(sign * total)
}

// ---------------------------------------------------------------------------------------
// Request and response bodies

/// A message of `/api/chat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaMessage {
    pub role: String,
    #[serde(default)]
    pub content: String,
    /// Base64 images: refused (this node serves text models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    /// An earlier assistant turn's thinking: not sent back to the model (as Ollama does for
    /// templates without a thinking slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

/// `POST /api/chat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaChatRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<OllamaMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Map<String, Value>>,
    /// Default true: NDJSON lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<Value>,
}

/// `POST /api/generate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OllamaGenerateRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// The prompt as given, without the chat template.
    #[serde(default)]
    pub raw: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<Value>,
}

fn is_set(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

/// Ollama's `format` as the OpenAI route's `response_format`: `"json"` is `json_object`, a
/// schema is a strict `json_schema`.
pub fn response_format(format: Option<&Value>) -> Result<Option<Value>, NodeError> {
    Ok(match format {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s == "json" => Some(json!({"type": "json_object"})),
        Some(schema @ Value::Object(_)) => Some(json!({
            "type": "json_schema",
            "json_schema": {"name": "format", "schema": schema, "strict": true},
        })),
        Some(other) => {
            return Err(NodeError::BadRequest(format!(
                "`format` {other}: give \"json\" or a JSON schema object"
            )));
        }
    })
}

/// Ollama's agent fields in the shared request: `tools` where the OpenAI route receives
/// `tools`, `format` as its `response_format` (see [`response_format`]), and `think` as the
/// template's reasoning switch: `true`/`false` set `enable_thinking` (Qwen 3's and others'
/// template variable), a level (`"low"`, `"medium"`, `"high"`, as gpt-oss takes) is
/// `reasoning_effort`.
struct Agent {
    tools: Option<Value>,
    response_format: Option<Value>,
    chat_template_kwargs: Option<Value>,
    reasoning_effort: Option<Value>,
}

fn agent_fields(
    tools: Option<Value>,
    format: Option<&Value>,
    think: Option<&Value>,
) -> Result<Agent, NodeError> {
    let (chat_template_kwargs, reasoning_effort) = match think {
        None | Some(Value::Null) => (None, None),
        Some(Value::Bool(b)) => (Some(json!({"enable_thinking": b})), None),
        Some(Value::String(level)) if ["low", "medium", "high"].contains(&level.as_str()) => {
            (None, Some(json!(level)))
        }
        Some(other) => {
            return Err(NodeError::BadRequest(format!(
                "`think` {other}: give true, false, or a level (\"low\", \"medium\", \"high\")"
            )));
        }
    };
    Ok(Agent {
        tools,
        response_format: response_format(format)?,
        chat_template_kwargs,
        reasoning_effort,
    })
}

/// The shared chat request an `/api/chat` body means.
pub fn chat_request(req: OllamaChatRequest, model: String) -> Result<ChatRequest, NodeError> {
    let mut sampling = Sampling {
        stream: req.stream.unwrap_or(true),
        ..Sampling::default()
    };
    map_options(req.options.as_ref(), &mut sampling)?;
    let agent = agent_fields(req.tools, req.format.as_ref(), req.think.as_ref())?;
    sampling.response_format = agent.response_format;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        if is_set(&m.images) {
            return Err(NodeError::BadRequest(format!(
                "`messages[{i}].images`: images are not supported (this node serves text models); send text only"
            )));
        }
        messages.push(InMessage {
            role: m.role,
            content: Some(Content::Text(m.content)),
            tool_calls: m.tool_calls,
            tool_call_id: None,
        });
    }
    Ok(ChatRequest {
        model,
        messages,
        sampling,
        chat_template_kwargs: agent.chat_template_kwargs,
        reasoning_effort: agent.reasoning_effort,
        parallel_tool_calls: None,
        not_yet: NotYet {
            tools: agent.tools,
            ..NotYet::default()
        },
    })
}

/// What an `/api/generate` body means: a chat of one user turn (with `system` before it), or
/// with `raw` the prompt as given.
pub enum GenerateShape {
    Chat(ChatRequest),
    Raw(CompletionRequest),
}

/// The shared request an `/api/generate` body means.
pub fn generate_request(
    req: OllamaGenerateRequest,
    model: String,
) -> Result<GenerateShape, NodeError> {
    for (field, set) in [
        ("images", is_set(&req.images)),
        ("suffix", req.suffix.as_ref().is_some_and(|s| !s.is_empty())),
        (
            "template",
            req.template.as_ref().is_some_and(|s| !s.is_empty()),
        ),
        (
            "context",
            req.context.as_ref().is_some_and(|c| !c.is_empty()),
        ),
    ] {
        if set {
            let why = match field {
                "images" => "images are not supported (this node serves text models)",
                "suffix" => "fill-in-the-middle is not supported",
                "template" => "a per-request template is not supported; the model's own applies",
                _ => {
                    "the deprecated token `context` is not supported; send the conversation to /api/chat"
                }
            };
            return Err(NodeError::BadRequest(format!(
                "`{field}`: {why}; remove it"
            )));
        }
    }
    let mut sampling = Sampling {
        stream: req.stream.unwrap_or(true),
        ..Sampling::default()
    };
    map_options(req.options.as_ref(), &mut sampling)?;
    let agent = agent_fields(None, req.format.as_ref(), req.think.as_ref())?;
    sampling.response_format = agent.response_format;
    if req.raw {
        if req.system.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(NodeError::BadRequest(
                "`system` with `raw`: a raw prompt is sent as given; put the system text in the prompt".into(),
            ));
        }
        return Ok(GenerateShape::Raw(CompletionRequest {
            model,
            prompt: PromptInput::One(req.prompt),
            sampling,
            not_yet: NotYet::default(),
        }));
    }
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = req.system.filter(|s| !s.is_empty()) {
        messages.push(InMessage {
            role: "system".into(),
            content: Some(Content::Text(system)),
            tool_calls: None,
            tool_call_id: None,
        });
    }
    messages.push(InMessage {
        role: "user".into(),
        content: Some(Content::Text(req.prompt)),
        tool_calls: None,
        tool_call_id: None,
    });
    Ok(GenerateShape::Chat(ChatRequest {
        model,
        messages,
        sampling,
        chat_template_kwargs: agent.chat_template_kwargs,
        reasoning_effort: agent.reasoning_effort,
        parallel_tool_calls: None,
        not_yet: NotYet::default(),
    }))
}

// ---------------------------------------------------------------------------------------
// Time

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// RFC 3339 (UTC, nanoseconds) for a time since the Unix epoch, as Go writes `time.Time`.
pub fn rfc3339(t: Duration) -> String {
    let secs = t.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        t.subsec_nanos()
    )
}

fn nanos(secs: f64) -> u64 {
    (secs.max(0.0) * 1e9) as u64
}

// ---------------------------------------------------------------------------------------
// Handlers

/// Ollama's NDJSON: one object a line.
fn ndjson(rx: mpsc::Receiver<Value>) -> Response {
    use futures::StreamExt as _;
    let lines = ReceiverStream::new(rx).map(|v| {
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    let mut resp = Response::new(Body::from_stream(lines));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

fn err(e: &NodeError) -> Response {
    ollama_error(e)
}

/// `GET /api/version`.
pub async fn version() -> Response {
    Json(json!({"version": OLLAMA_VERSION})).into_response()
}

/// A model's `details`, from its manifest.
fn details(record: &rbee_store::ModelRecord) -> Value {
    let m = &record.manifest.metadata;
    json!({
        "parent_model": "",
        "format": format!("{:?}", m.format).to_ascii_lowercase(),
        "family": m.architecture,
        "families": [m.architecture],
        "parameter_size": parameter_size(m.parameter_count),
        "quantization_level": m.quantization,
    })
}

/// `268098176` → `"268.10M"`, as Ollama writes it.
pub fn parameter_size(count: u64) -> String {
    let c = count as f64;
    if c >= 1e9 {
        format!("{:.1}B", c / 1e9)
    } else if c >= 1e6 {
        format!("{:.2}M", c / 1e6)
    } else if c >= 1e3 {
        format!("{:.2}K", c / 1e3)
    } else {
        count.to_string()
    }
}

fn modified_at(record: &rbee_store::ModelRecord) -> String {
    rfc3339(Duration::from_secs(record.entry.added_at))
}

/// `GET /api/tags`: every catalog name and alias of this node.
pub async fn tags(State(ctx): State<Arc<NodeContext>>) -> Response {
    let records = match ctx.catalog.list().await {
        Ok(r) => r,
        Err(e) => return err(&e),
    };
    let mut models = Vec::new();
    for r in &records {
        for name in std::iter::once(&r.entry.name).chain(r.entry.aliases.iter()) {
            models.push(json!({
                "name": display_name(name),
                "model": display_name(name),
                "modified_at": modified_at(r),
                "size": r.manifest.total_size(),
                "digest": r.entry.content_id.to_hex(),
                "details": details(r),
            }));
        }
    }
    let presets = match presets::all(&ctx).await {
        Ok(p) => p,
        Err(e) => return err(&e),
    };
    for (name, preset) in presets {
        let base = records
            .iter()
            .find(|r| r.entry.content_id.to_hex() == preset.base);
        let mut d = base.map(details).unwrap_or_else(|| json!({}));
        d["parent_model"] = json!(display_name(&preset.base_name));
        models.push(json!({
            "name": display_name(&name),
            "model": display_name(&name),
            "modified_at": base.map(modified_at).unwrap_or_default(),
            "size": base.map(|r| r.manifest.total_size()).unwrap_or(0),
            "digest": preset_digest(&preset),
            "details": d,
        }));
    }
    Json(json!({"models": models})).into_response()
}

/// A preset's digest: the content id of its definition.
fn preset_digest(preset: &Preset) -> String {
    preset.id().to_hex()
}

/// `/api/show`'s and `/api/delete`'s body: `model` (older clients send `name`).
#[derive(Debug, Deserialize)]
pub struct ModelBody {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl ModelBody {
    fn model(&self) -> Result<&str, NodeError> {
        self.model
            .as_deref()
            .or(self.name.as_deref())
            .ok_or_else(|| NodeError::BadRequest("`model` is missing".into()))
    }
}

fn not_found(name: &str) -> NodeError {
    NodeError::ModelNotFound {
        model: name.to_string(),
        checked: vec!["not in this node's catalog".into()],
        hint: Some("GET /api/tags lists them; POST /api/pull fetches one".into()),
    }
}

async fn resolve_local(
    ctx: &NodeContext,
    name: &str,
) -> Result<crate::actors::catalog::ResolvedModel, NodeError> {
    let r = reference(ctx, name).await?;
    let model_ref: ModelRef = r.parse()?;
    ctx.catalog
        .resolve(model_ref)
        .await
        .map_err(|e| match e.status() {
            404 => not_found(name),
            _ => e,
        })
}

/// What `/api/show` reads from the model file's header: its metadata (scalars only) and
/// its chat template.
fn header_info(path: &std::path::Path) -> (Map<String, Value>, Option<String>) {
    let Ok(file) = rbee_format::gguf::GgufFile::open(path) else {
        return (Map::new(), None);
    };
    let mut info = Map::new();
    for (key, value) in file.metadata.iter() {
        if key.starts_with("tokenizer.") {
            continue;
        }
        let v = if let Some(s) = value.as_str() {
            json!(s)
        } else if let Some(n) = value.as_u64() {
            json!(n)
        } else if let Some(f) = value.as_f32() {
            json!(f)
        } else if let Some(b) = value.as_bool() {
            json!(b)
        } else {
            continue;
        };
        info.insert(key.to_string(), v);
    }
    // The template the engine renders chats with: the file's own, else its built-in one.
    let template = file
        .metadata
        .get_str("tokenizer.chat_template")
        .map(str::to_string)
        .or_else(|| {
            let arch = file.metadata.get_str("general.architecture")?;
            let tokens = file.metadata.get_str_array("tokenizer.ggml.tokens");
            let has = |t: &str| tokens.is_some_and(|v| v.iter().any(|x| x == t));
            Some(rbee_infer::chat::builtin_template(arch, has).to_string())
        });
    (info, template)
}

/// `POST /api/show`.
pub async fn show(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<ModelBody>, JsonRejection>,
) -> Response {
    let result = async {
        let req = body(req)?;
        let name = req.model()?.to_string();
        let (base, preset) = with_preset(&ctx, &name).await?;
        let model = match (resolve_local(&ctx, &base).await, &preset) {
            (Ok(m), _) => m,
            // A preset from the pool whose base only peers hold: what the preset says.
            (Err(e), Some(p)) if e.status() == 404 => return Ok(preset_only(p)),
            (Err(e), _) => return Err(e),
        };
        let caps = ctx.kinds.of(model.id(), &model.path).await?;
        let path = model.path.clone();
        let (mut info, template) = tokio::task::spawn_blocking(move || header_info(&path))
            .await
            .map_err(|e| NodeError::Internal(format!("reading the model header: {e}")))?;
        let meta = &model.record.manifest.metadata;
        let arch = meta.architecture.clone();
        info.entry("general.architecture".to_string())
            .or_insert(json!(arch));
        info.entry("general.parameter_count".to_string())
            .or_insert(json!(meta.parameter_count));
        info.entry(format!("{arch}.context_length"))
            .or_insert(json!(meta.context_length));
        let mut capabilities = Vec::new();
        if caps.generates {
            capabilities.push("completion");
        }
        if caps.embeds {
            capabilities.push("embedding");
        }
        // A preset's own TEMPLATE is the one its chats are rendered with.
        let template_text = preset
            .as_ref()
            .and_then(|p| p.modelfile.template.clone())
            .or(template)
            .unwrap_or_default();
        // `tools` and `thinking` are reported from the template (what Copilot and Open WebUI
        // check before offering them).
        if caps.generates && (template_text.contains("tools") || template_text.contains(".Tools")) {
            capabilities.push("tools");
        }
        if caps.generates && template_text.contains("<think>") {
            capabilities.push("thinking");
        }
        let (modelfile, parameters, license, mut details) = match &preset {
            Some(p) => {
                let mut d = details(&model.record);
                d["parent_model"] = json!(display_name(&p.base_name));
                (
                    p.modelfile.render(&display_name(model.name())),
                    p.modelfile.parameters_text(),
                    p.modelfile.license.join("\n"),
                    d,
                )
            }
            None => (
                Modelfile::default().render(&model.path.display().to_string()),
                String::new(),
                String::new(),
                details(&model.record),
            ),
        };
        details["format"] = json!(details["format"].as_str().unwrap_or("gguf"));
        let mut shown = json!({
            "license": license,
            "modelfile": modelfile,
            "parameters": parameters,
            "template": template_text,
            "details": details,
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": modified_at(&model.record),
        });
        if let Some(system) = preset.and_then(|p| p.modelfile.system) {
            shown["system"] = json!(system);
        }
        Ok::<_, NodeError>(shown)
    }
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => err(&e),
    }
}

/// `/api/show` of a preset whose base model is not in this node's catalog (it runs on a peer
/// that has it): the preset's own fields; the base's header (`model_info`, its template) is
/// on the peers, so `model_info` is empty until the base is pulled here.
fn preset_only(p: &Preset) -> Value {
    let template = p.modelfile.template.clone().unwrap_or_default();
    let mut capabilities = vec!["completion"];
    if template.contains("tools") || template.contains(".Tools") {
        capabilities.push("tools");
    }
    if template.contains("<think>") {
        capabilities.push("thinking");
    }
    let mut shown = json!({
        "license": p.modelfile.license.join("\n"),
        "modelfile": p.modelfile.render(&display_name(&p.base_name)),
        "parameters": p.modelfile.parameters_text(),
        "template": template,
        "details": {"format": "gguf", "parent_model": display_name(&p.base_name)},
        "model_info": {},
        "capabilities": capabilities,
    });
    if let Some(system) = &p.modelfile.system {
        shown["system"] = json!(system);
    }
    shown
}

/// `GET /api/ps`: the models loaded on this node.
pub async fn ps(State(ctx): State<Arc<NodeContext>>) -> Response {
    let workers = match ctx.workers.status().await {
        Ok(s) => s,
        Err(e) => return err(&e),
    };
    let records = ctx.catalog.list().await.unwrap_or_default();
    let mut models = Vec::new();
    let on_devices = workers
        .into_iter()
        .flat_map(|w| w.models.into_iter().map(move |m| (w.device.clone(), m)));
    for (device, (cid, name, state)) in on_devices {
        let crate::actors::worker::ModelState::Loaded {
            bytes,
            context_length,
            ..
        } = state
        else {
            continue;
        };
        let record = records.iter().find(|r| r.entry.content_id.to_hex() == cid);
        // rbee unloads a model only when its memory is needed: no fixed expiry.
        let expires = unix_now() + Duration::from_secs(100 * 365 * 86_400);
        models.push(json!({
            "name": display_name(&name),
            "model": display_name(&name),
            "size": bytes,
            "digest": cid,
            "details": record.map(details).unwrap_or_else(|| json!({})),
            "expires_at": rfc3339(expires),
            "size_vram": if device == "cpu" { 0 } else { bytes },
            "context_length": context_length,
        }));
    }
    Json(json!({"models": models})).into_response()
}

/// Unloads `model` from this node's worker (keep_alive 0). A model served by a peer is left
/// to that peer.
async fn unload(ctx: &NodeContext, model: &str) -> Result<bool, NodeError> {
    let Ok(resolved) = resolve_local(ctx, model).await else {
        return Ok(false);
    };
    let was = ctx.workers.unload(resolved.id()).await?;
    if was {
        tracing::info!(model, "unloaded (keep_alive 0)");
    }
    Ok(was)
}

/// `/api/chat` or `/api/generate` with nothing to generate: load the model (or with
/// `keep_alive` 0 unload it), as Ollama does.
async fn load_only(
    ctx: &NodeContext,
    model: &str,
    shown: &str,
    keep_alive: KeepAlive,
    chat: bool,
) -> Response {
    let started = Instant::now();
    let reason = if keep_alive == KeepAlive::Unload {
        if let Err(e) = unload(ctx, model).await {
            return err(&e);
        }
        "unload"
    } else {
        let resolved = match resolve_local(ctx, model).await {
            Ok(r) => r,
            Err(e) => return err(&e),
        };
        let wait = Duration::from_secs(ctx.config.load_wait_secs);
        if let Err(e) = ctx.workers.acquire(resolved, wait).await {
            return err(&e);
        }
        "load"
    };
    let mut v = json!({
        "model": shown,
        "created_at": rfc3339(unix_now()),
        "done": true,
        "done_reason": reason,
        "total_duration": started.elapsed().as_nanos() as u64,
    });
    if chat {
        v["message"] = json!({"role": "assistant", "content": ""});
    } else {
        v["response"] = json!("");
    }
    Json(v).into_response()
}

/// What a finished generation's last object carries.
fn final_fields(v: &mut Value, stats: &GenerationStats, started: Instant, load: Duration) {
    v["done"] = json!(true);
    v["done_reason"] = json!(finish_reason(stats));
    v["total_duration"] = json!(started.elapsed().as_nanos() as u64);
    v["load_duration"] = json!(load.as_nanos() as u64);
    v["prompt_eval_count"] = json!(stats.prompt_tokens);
    v["prompt_eval_duration"] = json!(nanos(stats.prefill_secs));
    v["eval_count"] = json!(stats.completion_tokens);
    v["eval_duration"] = json!(nanos(stats.decode_secs));
}

/// One object of a chat or generate answer: `message` or `response` with `text`.
fn piece(shown: &str, chat: bool, text: &str) -> Value {
    reply_piece(
        shown,
        chat,
        &ReplyPiece {
            content: text.into(),
            ..ReplyPiece::default()
        },
        &[],
    )
}

/// One object of an answer with its thinking (`thinking`, as Ollama returns a reasoning
/// model's) and, on chat, the tool calls the reply made (arguments as objects, as Ollama's
/// clients read them).
fn reply_piece(shown: &str, chat: bool, part: &ReplyPiece, calls: &[ToolCall]) -> Value {
    let mut v = json!({"model": shown, "created_at": rfc3339(unix_now()), "done": false});
    if chat {
        let mut m = json!({"role": "assistant", "content": part.content});
        if !part.reasoning.is_empty() {
            m["thinking"] = json!(part.reasoning);
        }
        if !calls.is_empty() {
            m["tool_calls"] = calls
                .iter()
                .map(|c| {
                    let arguments: Value =
                        serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
                    json!({"function": {"name": c.name, "arguments": arguments}})
                })
                .collect();
        }
        v["message"] = m;
    } else {
        v["response"] = json!(part.content);
        if !part.reasoning.is_empty() {
            v["thinking"] = json!(part.reasoning);
        }
    }
    v
}

/// The reply's splitter: thinking apart from the answer, and on chat the request's tools'
/// calls read back out (as the OpenAI route does).
fn splitter(g: &Generate) -> ReplySplitter {
    ReplySplitter::new(if g.chat {
        g.job.tools.clone()
    } else {
        Vec::new()
    })
}

/// A generation request, parsed: the shared job, how to answer, and what to do after.
struct Generate {
    job: openai::Job,
    /// The name as the client gave it (answers carry it).
    shown: String,
    stream: bool,
    chat: bool,
    keep_alive: KeepAlive,
    num_ctx: Option<u64>,
}

async fn generate_common(ctx: Arc<NodeContext>, parsed: Result<Generate, NodeError>) -> Response {
    let started = Instant::now();
    let mut g = match parsed {
        Ok(g) => g,
        Err(e) => return err(&e),
    };
    let Some(prompt) = g.job.prompts.pop() else {
        return err(&NodeError::BadRequest("nothing to generate".into()));
    };
    let model = g.job.model.clone();
    let context = g.num_ctx.and_then(|n| usize::try_from(n).ok());
    let mut run =
        match serve::start_sized(&ctx, &model, prompt, g.job.params.clone(), context).await {
            Ok(s) => s,
            Err(e) => return err(&e),
        };
    let load = started.elapsed();
    let node = run.node.clone();
    let resp = if g.stream {
        let (tx, rx) = mpsc::channel::<Value>(LINES);
        tokio::spawn(async move {
            let end = stream_generation(&ctx, &mut run, &g, &tx, started, load).await;
            drop(run);
            if g.keep_alive == KeepAlive::Unload {
                let _ = unload(&ctx, &model).await;
            }
            if let Some(e) = end {
                let _ = tx.send(json!({"error": e.to_string()})).await;
            }
        });
        ndjson(rx)
    } else {
        let collected = openai::collect(&ctx, &mut run).await;
        drop(run);
        if g.keep_alive == KeepAlive::Unload
            && let Err(e) = unload(&ctx, &model).await
        {
            tracing::warn!(model, "keep_alive 0: could not unload: {e}");
        }
        match collected {
            Ok((text, stats, _)) => {
                let mut split = splitter(&g);
                let first = split.push(&text);
                let (rest, calls) = split.finish();
                let whole = ReplyPiece {
                    reasoning: first.reasoning + &rest.reasoning,
                    content: first.content + &rest.content,
                    ..ReplyPiece::default()
                };
                let mut v = reply_piece(&g.shown, g.chat, &whole, &calls);
                final_fields(&mut v, &stats, started, load);
                Json(v).into_response()
            }
            Err(e) => return err(&e),
        }
    };
    with_node(resp, &node)
}

/// Streams a generation as NDJSON lines; the error that ended it early, if any (a client that
/// went away is no error).
async fn stream_generation(
    ctx: &NodeContext,
    run: &mut Started,
    g: &Generate,
    tx: &mpsc::Sender<Value>,
    started: Instant,
    load: Duration,
) -> Option<NodeError> {
    let mut split = Some(splitter(g));
    loop {
        let event = tokio::select! {
            event = run.events.recv() => event,
            () = ctx.halted() => return Some(openai::shutting_down()),
        };
        match event {
            Some(GenerationEvent::Text(t)) if t.is_empty() => continue,
            Some(GenerationEvent::Text(t)) => {
                let Some(s) = split.as_mut() else { continue };
                let part = s.push(&t);
                if part.content.is_empty() && part.reasoning.is_empty() {
                    // Held back (a tag may be starting), or pieces of a tool call: Ollama
                    // sends each call whole, when the reply ends.
                    continue;
                }
                if tx
                    .send(reply_piece(&g.shown, g.chat, &part, &[]))
                    .await
                    .is_err()
                {
                    return None;
                }
            }
            Some(GenerationEvent::Done(stats)) => {
                if let Some(s) = split.take() {
                    let (rest, calls) = s.finish();
                    let said = !rest.content.is_empty() || !rest.reasoning.is_empty();
                    if (said || !calls.is_empty())
                        && tx
                            .send(reply_piece(&g.shown, g.chat, &rest, &calls))
                            .await
                            .is_err()
                    {
                        return None;
                    }
                }
                let mut v = piece(&g.shown, g.chat, "");
                final_fields(&mut v, &stats, started, load);
                let _ = tx.send(v).await;
                return None;
            }
            Some(GenerationEvent::Error { code, message }) => {
                return Some(NodeError::from_code(
                    code,
                    format!("generation failed mid-stream: {message}"),
                ));
            }
            Some(_) => continue,
            None => {
                return Some(NodeError::Internal(
                    "generation ended without a result".into(),
                ));
            }
        }
    }
}

/// What `/api/chat` and `/api/generate` share once their body is read: the model (a preset
/// resolved to its base), `keep_alive`, load-only requests (nothing to generate), and the
/// run; `build` makes the shared job from the reference and the preset.
struct Ask {
    name: String,
    keep_alive: Option<Value>,
    options: Option<Map<String, Value>>,
    stream: bool,
    chat: bool,
    /// Nothing to generate: load (or with `keep_alive` 0 unload) the model.
    load_only: bool,
}

async fn answer(
    ctx: Arc<NodeContext>,
    ask: Ask,
    build: impl FnOnce(String, Option<&Preset>) -> Result<openai::Job, NodeError>,
) -> Response {
    let prepared = async {
        let keep_alive = parse_keep_alive(ask.keep_alive.as_ref())?;
        let (model, preset) = with_preset(&ctx, &ask.name).await?;
        Ok::<_, NodeError>((keep_alive, model, preset))
    }
    .await;
    let (keep_alive, model, preset) = match prepared {
        Ok(p) => p,
        Err(e) => return err(&e),
    };
    if ask.load_only {
        return load_only(&ctx, &model, &ask.name, keep_alive, ask.chat).await;
    }
    let parsed = map_options(ask.options.as_ref(), &mut Sampling::default()).and_then(|num_ctx| {
        Ok(Generate {
            job: build(model, preset.as_ref())?,
            shown: ask.name,
            stream: ask.stream,
            chat: ask.chat,
            keep_alive,
            num_ctx,
        })
    });
    generate_common(ctx, parsed).await
}

/// `POST /api/chat`.
pub async fn chat(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<OllamaChatRequest>, JsonRejection>,
) -> Response {
    let req = match body(req) {
        Ok(r) => r,
        Err(e) => return err(&e),
    };
    let ask = Ask {
        name: req.model.clone(),
        keep_alive: req.keep_alive.clone(),
        options: req.options.clone(),
        stream: req.stream.unwrap_or(true),
        chat: true,
        load_only: req.messages.is_empty(),
    };
    answer(ctx, ask, |model, preset| {
        let mut shared = chat_request(req, model)?;
        match preset {
            Some(p) => {
                presets::apply_chat(p, &mut shared)?;
                chat_job(shared)?.with_template(p)
            }
            None => chat_job(shared),
        }
    })
    .await
}

/// `POST /api/generate`.
pub async fn generate(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<OllamaGenerateRequest>, JsonRejection>,
) -> Response {
    let req = match body(req) {
        Ok(r) => r,
        Err(e) => return err(&e),
    };
    let ask = Ask {
        name: req.model.clone(),
        keep_alive: req.keep_alive.clone(),
        options: req.options.clone(),
        stream: req.stream.unwrap_or(true),
        chat: false,
        load_only: req.prompt.is_empty() && req.system.as_deref().unwrap_or("").is_empty(),
    };
    answer(ctx, ask, |model, preset| {
        match generate_request(req, model)? {
            GenerateShape::Chat(mut c) => match preset {
                Some(p) => {
                    presets::apply_chat(p, &mut c)?;
                    chat_job(c)?.with_template(p)
                }
                None => chat_job(c),
            },
            GenerateShape::Raw(mut r) => {
                if let Some(p) = preset {
                    presets::apply_sampling(p, &mut r.sampling)?;
                    r.model = presets::base_reference(p);
                }
                completion_job(r)
            }
        }
    })
    .await
}

/// `/api/pull`'s body.
#[derive(Debug, Deserialize)]
pub struct PullBody {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
}

/// `POST /api/pull`: a `model_pull` job (this node's catalog, the pool, then the hub),
/// reported as Ollama's status lines.
pub async fn pull(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<PullBody>, JsonRejection>,
) -> Response {
    let req = match body(req) {
        Ok(r) => r,
        Err(e) => return err(&e),
    };
    let Some(name) = req.model.or(req.name) else {
        return err(&NodeError::BadRequest("`model` is missing".into()));
    };
    let model = match reference(&ctx, &name).await {
        Ok(m) => m,
        Err(e) => return err(&e),
    };
    let stream = req.stream.unwrap_or(true);
    let job = ctx.jobs.create("model_pull");
    if !stream {
        // One answer: the pull's own error, with its status.
        return match ctx
            .provisioner
            .pull(&model, crate::pull::Reach::Anywhere, &job)
            .await
        {
            Ok(outcome) => {
                job.done(outcome.job_result());
                Json(json!({"status": "success"})).into_response()
            }
            Err(e) => {
                job.fail(&e);
                err(&e)
            }
        };
    }
    ctx.provisioner.start_pull(model.clone(), job.clone());
    let (past, live) = job.subscribe();
    let (tx, rx) = mpsc::channel::<Value>(LINES);
    tokio::spawn(async move {
        let _ = tx.send(json!({"status": "pulling manifest"})).await;
        let mut digest = String::new();
        let mut forward = |event: JobEvent| -> (Option<Value>, bool) {
            match event {
                JobEvent::Phase { phase } => (Some(json!({"status": phase})), false),
                JobEvent::Progress { done, total, .. } => {
                    if digest.is_empty() {
                        digest = format!("rbee-{}", job.id);
                    }
                    (
                        Some(json!({
                            "status": format!("pulling {model}"),
                            "digest": digest,
                            "total": total,
                            "completed": done,
                        })),
                        false,
                    )
                }
                JobEvent::Done { .. } => (Some(json!({"status": "success"})), true),
                JobEvent::Error { message } => (Some(json!({"error": message})), true),
                JobEvent::Token { .. } => (None, false),
            }
        };
        for event in past {
            let (line, end) = forward(event);
            if let Some(l) = line
                && tx.send(l).await.is_err()
            {
                return;
            }
            if end {
                return;
            }
        }
        let Some(mut live) = live else { return };
        while let Ok(event) = live.recv().await {
            let (line, end) = forward(event);
            if let Some(l) = line
                && tx.send(l).await.is_err()
            {
                return;
            }
            if end {
                return;
            }
        }
    });
    ndjson(rx)
}

/// `DELETE /api/delete`: removes a name. An alias goes alone; a model's own name removes the
/// model (its files, once no other model uses them).
pub async fn delete(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<ModelBody>, JsonRejection>,
) -> Response {
    let result = async {
        let req = body(req)?;
        let name = req.model()?.to_string();
        let reference = reference(&ctx, &name).await?;
        if presets::find(&ctx, &reference).await?.is_some() {
            let store = ctx.store.clone();
            tokio::task::spawn_blocking(move || store.remove_preset(&reference))
                .await
                .map_err(|e| NodeError::Internal(format!("removing the preset: {e}")))??;
            return Ok(());
        }
        let model = resolve_local(&ctx, &name).await?;
        if model.record.entry.aliases.contains(&reference) {
            let store = ctx.store.clone();
            let id = model.id();
            tokio::task::spawn_blocking(move || {
                store.unalias(&ModelRef::ContentId(id), &reference)
            })
            .await
            .map_err(|e| NodeError::Internal(format!("removing the alias: {e}")))??;
        } else {
            let _ = ctx.workers.unload(model.id()).await;
            ctx.catalog.remove(ModelRef::ContentId(model.id())).await?;
        }
        Ok::<_, NodeError>(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => err(&e),
    }
}

/// `/api/copy`'s body.
#[derive(Debug, Deserialize)]
pub struct CopyBody {
    pub source: String,
    pub destination: String,
}

/// `POST /api/copy`: another name for the same model (an alias; no bytes are copied).
pub async fn copy(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<CopyBody>, JsonRejection>,
) -> Response {
    let result = async {
        let req = body(req)?;
        let source = reference(&ctx, &req.source).await?;
        let preset = presets::find(&ctx, &source).await?;
        let destination = req
            .destination
            .trim()
            .strip_suffix(LATEST)
            .unwrap_or(req.destination.trim())
            .to_string();
        if !rbee_proto::is_valid_name(&destination) {
            return Err(NodeError::BadRequest(format!(
                "`destination` {:?} is not a valid model name (letters, digits, `.`, `-`, `_`, `:`)",
                req.destination
            )));
        }
        if let Some(p) = preset {
            return save_preset(&ctx, &destination, &p).await;
        }
        let model = resolve_local(&ctx, &req.source).await?;
        let store = ctx.store.clone();
        let id = model.id();
        tokio::task::spawn_blocking(move || store.alias(&ModelRef::ContentId(id), &destination))
            .await
            .map_err(|e| NodeError::Internal(format!("adding the name: {e}")))??;
        Ok::<_, NodeError>(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => err(&e),
    }
}

/// Stores `preset` as `name` (atomically), unless a cataloged model has that name.
async fn save_preset(ctx: &NodeContext, name: &str, preset: &Preset) -> Result<(), NodeError> {
    let taken = ctx
        .catalog
        .list()
        .await?
        .iter()
        .any(|r| r.entry.answers_to(name));
    if taken {
        return Err(NodeError::BadRequest(format!(
            "`{name}` already names a model in this node's catalog; choose another name for the preset"
        )));
    }
    let (store, name, preset) = (ctx.store.clone(), name.to_string(), preset.clone());
    tokio::task::spawn_blocking(move || modelfile::save(&store, &name, &preset))
        .await
        .map_err(|e| NodeError::Internal(format!("saving the preset: {e}")))?
}

/// `/api/create`'s body: a Modelfile's parts as fields (what the `ollama` client sends), or
/// the whole `modelfile` text (older clients).
#[derive(Debug, Deserialize)]
pub struct CreateBody {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub modelfile: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub license: Option<Value>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub messages: Option<Vec<OllamaMessage>>,
    #[serde(default)]
    pub adapters: Option<Value>,
    #[serde(default)]
    pub files: Option<Value>,
    #[serde(default)]
    pub quantize: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
}

/// The Modelfile a create body means.
pub fn create_modelfile(req: &CreateBody) -> Result<Modelfile, NodeError> {
    let bad = |m: String| NodeError::BadRequest(m);
    if is_set(&req.adapters) {
        return Err(bad("`adapters` is not supported: rbee does not apply LoRA adapters; merge the adapter into the GGUF and import it".into()));
    }
    if is_set(&req.files) {
        return Err(bad("`files` (a model from uploaded blobs) is not supported: import the GGUF with `rbee-node models import <path>`, then create from its name".into()));
    }
    if req.quantize.as_ref().is_some_and(|q| !q.is_empty()) {
        return Err(bad("`quantize` is not supported: rbee does not requantize; pull or import the quantization you want".into()));
    }
    let mut file = match &req.modelfile {
        Some(text) if !text.trim().is_empty() => {
            modelfile::parse(text).map_err(|e| bad(e.to_string()))?
        }
        _ => Modelfile::default(),
    };
    if let Some(from) = req.from.as_ref().filter(|f| !f.trim().is_empty()) {
        file.from = from.trim().to_string();
    }
    if file.from.is_empty() {
        return Err(bad("`from` is missing: name the base model".into()));
    }
    if let Some(system) = &req.system {
        file.system = Some(system.clone());
    }
    if let Some(template) = req.template.as_ref().filter(|t| !t.is_empty()) {
        modelfile::check_template(template).map_err(|e| bad(format!("`template`: {e}")))?;
        file.template = Some(template.clone());
    }
    for (key, value) in req.parameters.iter().flatten() {
        modelfile::add_parameter(&mut file.parameters, key, value.clone());
    }
    for (i, m) in req.messages.iter().flatten().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(bad(format!(
                "`messages[{i}].role` `{}`: use system, user or assistant",
                m.role
            )));
        }
        file.messages.push(modelfile::PresetMessage {
            role: m.role.clone(),
            content: m.content.clone(),
        });
    }
    match &req.license {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => file.license.push(s.clone()),
        Some(Value::Array(a)) => file
            .license
            .extend(a.iter().filter_map(Value::as_str).map(str::to_string)),
        Some(other) => return Err(bad(format!("`license` {other}: give a string or a list"))),
    }
    modelfile::check_parameters(&file.parameters)?;
    Ok(file)
}

/// `POST /api/create`: a preset over a cataloged model (or over another preset, whose
/// settings it starts from).
pub async fn create(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<CreateBody>, JsonRejection>,
) -> Response {
    let result = async {
        let req = body(req)?;
        let name = req
            .model
            .clone()
            .or(req.name.clone())
            .ok_or_else(|| NodeError::BadRequest("`model` (the new name) is missing".into()))?;
        let name = name.trim().strip_suffix(LATEST).unwrap_or(name.trim()).to_string();
        if !rbee_proto::is_valid_name(&name) {
            return Err(NodeError::BadRequest(format!(
                "`model` {name:?} is not a valid name (letters, digits, `.`, `-`, `_`, `:`)"
            )));
        }
        let file = create_modelfile(&req)?;
        if matches!(file.from.parse::<ModelRef>(), Ok(ModelRef::LocalPath(_))) {
            return Err(NodeError::BadRequest(format!(
                "FROM {}: a path; import the GGUF first (`rbee-node models import {}`) and create from its name",
                file.from, file.from
            )));
        }
        let from = reference(&ctx, &file.from).await?;
        let preset = match presets::find(&ctx, &from).await? {
            // Over another preset: its settings, then these.
            Some(parent) => parent.derive(file),
            None => {
                let base = resolve_local(&ctx, &from).await?;
                let caps = ctx.kinds.of(base.id(), &base.path).await?;
                if !caps.generates {
                    return Err(NodeError::BadRequest(format!(
                        "FROM {}: an embedding model; a preset needs a model that generates text",
                        file.from
                    )));
                }
                Preset {
                    base: base.id().to_hex(),
                    base_name: base.name().to_string(),
                    modelfile: file,
                }
            }
        };
        save_preset(&ctx, &name, &preset).await?;
        tracing::info!(preset = name, base = preset.base_name, "preset created");
        Ok::<_, NodeError>((req.stream.unwrap_or(true), preset))
    }
    .await;
    match result {
        Ok((true, preset)) => {
            let (tx, rx) = mpsc::channel::<Value>(LINES);
            let lines = [
                json!({"status": "reading model metadata"}),
                json!({"status": format!("using existing layer sha256:{}", preset.base)}),
                json!({"status": "writing manifest"}),
                json!({"status": "success"}),
            ];
            tokio::spawn(async move {
                for l in lines {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
            });
            ndjson(rx)
        }
        Ok((false, _)) => Json(json!({"status": "success"})).into_response(),
        Err(e) => err(&e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn name(n: &str, exact: &[&str]) -> String {
        OllamaName::parse(n, |c| exact.contains(&c))
            .unwrap()
            .reference
    }

    #[test]
    fn names_follow_ollamas_conventions() {
        assert_eq!(name("gemma:latest", &[]), "gemma");
        assert_eq!(name("gemma", &[]), "gemma");
        assert_eq!(name("gemma:2b", &[]), "gemma:2b");
        // A catalog name that is itself `x:latest` is used as is.
        assert_eq!(name("odd:latest", &["odd:latest"]), "odd:latest");
        assert_eq!(
            name("bartowski/Qwen2.5-0.5B-GGUF:Q4_K_M", &[]),
            "bartowski/Qwen2.5-0.5B-GGUF:Q4_K_M"
        );
        assert_eq!(name("hf.co/org/repo:Q8_0", &[]), "org/repo:Q8_0");
        assert_eq!(name("org/repo:latest", &[]), "org/repo");
        assert!(OllamaName::parse("", |_| false).is_err());
        assert!(OllamaName::parse("bad name!", |_| false).is_err());
        assert_eq!(display_name("gemma"), "gemma:latest");
        assert_eq!(display_name("gemma:2b"), "gemma:2b");
        for q in ["Q4_K_M", "q8_0", "IQ2_XS", "F16", "BF16"] {
            assert!(rbee_proto::quant::is_quant_tag(q), "{q}");
        }
        for f in ["model.Q4_K_M.gguf", "latest", "instruct", "sub/q4.gguf"] {
            assert!(!rbee_proto::quant::is_quant_tag(f), "{f}");
        }
    }

    #[test]
    fn keep_alive_reads_numbers_and_go_durations() {
        let k = |v: Value| parse_keep_alive(Some(&v)).unwrap();
        assert_eq!(parse_keep_alive(None).unwrap(), KeepAlive::Default);
        assert_eq!(k(json!(0)), KeepAlive::Unload);
        assert_eq!(k(json!("0")), KeepAlive::Unload);
        assert_eq!(k(json!("0s")), KeepAlive::Unload);
        assert_eq!(k(json!(-1)), KeepAlive::Forever);
        assert_eq!(k(json!("-1m")), KeepAlive::Forever);
        assert_eq!(k(json!("5m")), KeepAlive::For(Duration::from_secs(300)));
        assert_eq!(k(json!("1h30m")), KeepAlive::For(Duration::from_secs(5400)));
        assert_eq!(k(json!(300)), KeepAlive::For(Duration::from_secs(300)));
        assert_eq!(
            k(json!("300ms")),
            KeepAlive::For(Duration::from_millis(300))
        );
        assert!(parse_keep_alive(Some(&json!("soon"))).is_err());
        assert!(parse_keep_alive(Some(&json!([1]))).is_err());
    }

    #[test]
    fn chat_converts_into_the_shared_request_and_refuses_what_it_cannot_do() {
        let req: OllamaChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"}],
            "options": {"temperature": 0, "num_predict": 3}, "stream": false}))
        .unwrap();
        let shared = chat_request(req, "m".into()).unwrap();
        assert!(!shared.sampling.stream);
        assert_eq!(shared.sampling.max_tokens, Some(3));
        let job = chat_job(shared).unwrap();
        assert_eq!(job.params.max_tokens, 3);
        // The agent fields land where the OpenAI route receives them.
        let with = |extra: Value| {
            let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let req: OllamaChatRequest = serde_json::from_value(v).unwrap();
            chat_request(req, "m".into()).and_then(chat_job)
        };
        let job =
            with(json!({"tools": [{"type": "function", "function": {"name": "f"}}]})).unwrap();
        assert_eq!(job.tools.len(), 1);
        assert_eq!(job.params.chat.tools[0].name, "f");
        let job = with(json!({"format": "json"})).unwrap();
        assert_eq!(
            job.params.constraint,
            Some(rbee_proto::generation::Constraint::JsonObject)
        );
        let job = with(json!({"format": {"type": "object"}})).unwrap();
        assert!(matches!(
            job.params.constraint,
            Some(rbee_proto::generation::Constraint::JsonSchema(_))
        ));
        let job = with(json!({"think": false})).unwrap();
        assert_eq!(
            job.params.chat.template_kwargs,
            vec![("enable_thinking".to_string(), "false".to_string())]
        );
        // What is not implemented is refused by name.
        for (extra, field) in [
            (json!({"think": "maybe"}), "think"),
            (json!({"format": 3}), "format"),
            (
                json!({"messages": [{"role": "user", "content": "x", "images": ["AAAA"]}]}),
                "images",
            ),
        ] {
            let msg = with(extra.clone())
                .err()
                .unwrap_or_else(|| panic!("{extra} accepted"))
                .to_string();
            assert!(msg.contains(field), "{extra}: {msg}");
        }
        assert_eq!(
            response_format(Some(&json!({"type": "object"})))
                .unwrap()
                .unwrap()["json_schema"]["schema"],
            json!({"type": "object"})
        );
    }

    #[test]
    fn generate_is_one_user_turn_or_raw_text() {
        let req = OllamaGenerateRequest {
            model: "m".into(),
            prompt: "why?".into(),
            system: Some("be brief".into()),
            ..Default::default()
        };
        let GenerateShape::Chat(c) = generate_request(req, "m".into()).unwrap() else {
            panic!("a chat");
        };
        assert_eq!(c.messages.len(), 2);
        assert_eq!(c.messages[0].role, "system");
        let raw = OllamaGenerateRequest {
            model: "m".into(),
            prompt: "<start>".into(),
            raw: true,
            ..Default::default()
        };
        assert!(matches!(
            generate_request(raw, "m".into()).unwrap(),
            GenerateShape::Raw(_)
        ));
        for (req, field) in [
            (
                OllamaGenerateRequest {
                    images: Some(json!(["AAAA"])),
                    ..Default::default()
                },
                "images",
            ),
            (
                OllamaGenerateRequest {
                    template: Some("{{ .Prompt }}".into()),
                    ..Default::default()
                },
                "template",
            ),
            (
                OllamaGenerateRequest {
                    context: Some(vec![1, 2]),
                    ..Default::default()
                },
                "context",
            ),
        ] {
            let msg = generate_request(req, "m".into()).err().unwrap().to_string();
            assert!(msg.contains(field), "{msg}");
        }
    }

    #[test]
    fn times_are_rfc3339_and_sizes_as_ollama_writes_them() {
        assert_eq!(
            rfc3339(Duration::from_secs(0)),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339(Duration::new(1_709_251_200, 5)),
            "2024-03-01T00:00:00.000000005Z"
        );
        assert_eq!(parameter_size(268_098_176), "268.10M");
        assert_eq!(parameter_size(7_241_732_096), "7.2B");
    }
}
