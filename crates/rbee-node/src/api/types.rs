//! The OpenAI-compatible API's request and response bodies, typed: the server parses and
//! writes these, and the CLI and the tests read them, so a field means one thing
//! everywhere. Requests keep the fields rbee does not implement yet, so that a request
//! using one is refused naming it instead of being answered as if it had not been sent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::NodeError;

/// `stop`: one sequence or several.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message's `content`: text, or a list of parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn's tool calls (a history from a tool-using client):
    /// `[{"id", "type": "function", "function": {"name", "arguments"}}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields both endpoints share (OpenAI's, plus llama.cpp's common extras).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// 0 (or less) turns top-k off, as in llama.cpp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// A negative seed means "random", as in llama.cpp (`-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema", …}}`:
    /// the output is constrained to it (constrained decoding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Chat: `true` returns each token's log-probability; completions: the number of
    /// alternatives per token (0..=5, OpenAI's legacy shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// Chat: alternatives per token (0..=20), with `logprobs: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Value>,
}

/// Fields of OpenAI's API that rbee does not implement yet (or not on every route: the chat
/// route takes `tools` and `tool_choice` out before refusing the rest). Accepting them
/// silently would answer a different question than the one asked, so any that asks for
/// something is refused with a 400 naming it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotYet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Value>,
}

fn is_off(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Bool(true)) => false,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
    }
}

impl NotYet {
    /// The first field that asks for something rbee cannot do yet, as a 400 naming it.
    pub fn refuse(&self) -> Result<(), NodeError> {
        let refuse = |field: &str, why: &str| {
            Err(NodeError::BadRequest(format!(
                "`{field}` is not supported by this node yet{why}; remove it from the request"
            )))
        };
        let tool_choice_none = matches!(&self.tool_choice, Some(Value::String(s)) if s == "none");
        if !is_off(&self.tools) && !tool_choice_none {
            return refuse(
                "tools",
                " (tool calling); `tool_choice: \"none\"` sends them unused",
            );
        }
        let function_call_none =
            matches!(&self.function_call, Some(Value::String(s)) if s == "none");
        if !is_off(&self.functions) && !function_call_none {
            return refuse("functions", " (function calling)");
        }
        let checks = [
            ("logit_bias", &self.logit_bias),
            ("echo", &self.echo),
            ("suffix", &self.suffix),
            ("audio", &self.audio),
            ("prediction", &self.prediction),
        ];
        for (field, value) in checks {
            if !is_off(value) {
                return refuse(field, "");
            }
        }
        if let Some(b) = &self.best_of
            && b.as_u64() != Some(1)
            && !b.is_null()
        {
            return refuse("best_of", " (only 1)");
        }
        if let Some(m) = &self.modalities {
            let text_only = m
                .as_array()
                .is_some_and(|a| a.iter().all(|v| v.as_str() == Some("text")));
            if !text_only && !m.is_null() {
                return refuse("modalities", " (only `text`)");
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<InMessage>,
    /// Variables for the model's chat template (`{"enable_thinking": false}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<Value>,
    /// Reaches the chat template as the variable `reasoning_effort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<Value>,
    /// Accepted; a forced call (`tool_choice: required`) is one call, a free one may be
    /// several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub not_yet: NotYet,
}

/// `/v1/completions`' `prompt` (a string, a list of strings (one choice each), token ids, or
/// a list of token id lists), and `/v1/embeddings`' `input` of the same shapes (one vector
/// each).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptInput,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub not_yet: NotYet,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// As OpenAI reports it: how many prompt tokens came from a cache (prefix reuse).
    #[serde(default)]
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose keys and values were reused rather than computed.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
    /// A reasoning model's thinking (its `<think>…</think>`), kept out of `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The model's calls of the request's tools (`finish_reason` is then `tool_calls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<OutToolCall>>,
}

/// One tool call in a reply: `{"id", "type": "function", "function": {"name", "arguments"}}`,
/// `arguments` the model's text of the arguments (a JSON object's text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: OutFunction,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutFunction {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<Value>,
    pub finish_reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<DeltaToolCall>>,
}

/// A piece of a tool call in a stream, as OpenAI sends them: the first of a call carries its
/// `index`, `id`, `type: "function"`, `function.name` and `arguments: ""`; the next ones only
/// the `index` and a fragment of `function.arguments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeltaToolCall {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: DeltaFunction,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeltaFunction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<String>,
}

/// One event of a chat stream. Every chunk has `usage` (null but in the last one, when
/// `stream_options.include_usage` asked for it, whose `choices` are empty).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChunkChoice>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<Value>,
    /// Null in a stream's chunks until the prompt's last one.
    pub finish_reason: Option<String>,
}

/// A text completion, and (with `usage` null until the last) each event of its stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<TextChoice>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    /// OpenAI's: a string such as `context_length_exceeded`, or null.
    pub code: Option<String>,
}

/// Every error body, and a stream's error event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl ErrorBody {
    pub fn of(e: &NodeError) -> ErrorBody {
        ErrorBody {
            error: ApiError {
                message: e.to_string(),
                kind: e.error_type().into(),
                param: None,
                code: e.code().map(str::to_string),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    pub content_id: String,
    pub architecture: String,
    /// What it does, in Ollama's words: `completion` (chat and completions), `embedding`
    /// (the embeddings endpoints), or both; empty when its headers cannot be read here.
    pub capabilities: Vec<String>,
}

/// `POST /v1/embeddings`. Unknown fields are refused by name, never ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: PromptInput,
    /// `float` (the default) or `base64` (little-endian f32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// Keep this many leading values, renormalised: models trained with Matryoshka loss only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<i64>,
    /// The caller's end user, for their own records (OpenAI uses it to watch for abuse): it
    /// does not change the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One vector: a list of numbers, or their little-endian f32 bytes in base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingData {
    pub object: String,
    pub index: usize,
    pub embedding: EmbeddingValue,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// The answer of `/v1/embeddings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingList {
    pub object: String,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

/// Ollama's `input`: one text or several.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OllamaInput {
    One(String),
    Many(Vec<String>),
}

/// Ollama's `POST /api/embed`. Unknown fields are refused by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OllamaEmbedRequest {
    pub model: String,
    pub input: OllamaInput,
    /// Cut inputs longer than the model takes (Ollama's default: true); false refuses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    /// Model options: none applies to an embedding here, so any given is refused by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Map<String, Value>>,
    /// How long to keep the model loaded: accepted; rbee keeps a model loaded until its memory
    /// is needed (see docs/API.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<i64>,
}

/// The answer of `/api/embed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaEmbedResponse {
    pub model: String,
    pub embeddings: Vec<Vec<f32>>,
    /// Nanoseconds, as Ollama reports them.
    pub total_duration: u64,
    pub load_duration: u64,
    pub prompt_eval_count: usize,
}

/// Ollama's older `POST /api/embeddings`: one `prompt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OllamaEmbeddingsRequest {
    pub model: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
}

/// The answer of `/api/embeddings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaEmbeddingsResponse {
    pub embedding: Vec<f32>,
}

/// Ollama's error body: `{"error": "message"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaError {
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// What a client reads from a stream's chunks, whichever endpoint sent them.
pub trait StreamChunk {
    /// The text this chunk adds.
    fn text(&self) -> &str;
    fn usage(&self) -> Option<Usage>;
}

impl StreamChunk for ChatChunk {
    fn text(&self) -> &str {
        self.choices
            .first()
            .and_then(|c| c.delta.content.as_deref())
            .unwrap_or("")
    }
    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl StreamChunk for Completion {
    fn text(&self) -> &str {
        self.choices.first().map_or("", |c| c.text.as_str())
    }
    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// An event of a stream as a client reads it: a chunk, or the error that ended it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StreamEvent<T> {
    Error(ErrorBody),
    Chunk(T),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(v: Value) -> Option<String> {
        let req: ChatRequest = serde_json::from_value(v).unwrap();
        req.not_yet.refuse().err().map(|e| e.to_string())
    }

    fn chat(extra: Value) -> Value {
        let mut v =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn unimplemented_fields_are_refused_by_name_and_neutral_values_pass() {
        for (extra, field) in [
            (
                serde_json::json!({"tools": [{"type": "function"}]}),
                "tools",
            ),
            // (`response_format` and `logprobs` are implemented; `tools` is taken out of this
            // list by the chat route, so it stays refused on completions.)
            (serde_json::json!({"logit_bias": {"42": 5}}), "logit_bias"),
            (serde_json::json!({"echo": true}), "echo"),
            (serde_json::json!({"suffix": "x"}), "suffix"),
            (serde_json::json!({"functions": [{}]}), "functions"),
            (
                serde_json::json!({"modalities": ["text", "audio"]}),
                "modalities",
            ),
        ] {
            let msg = refused(chat(extra.clone())).unwrap_or_else(|| panic!("{extra} accepted"));
            assert!(msg.contains(&format!("`{field}`")), "{msg}");
        }
        for neutral in [
            serde_json::json!({"tools": [{"type": "function"}], "tool_choice": "none"}),
            serde_json::json!({"tools": []}),
            serde_json::json!({"response_format": {"type": "text"}}),
            serde_json::json!({"logprobs": false, "logit_bias": {}, "echo": false}),
            serde_json::json!({"logit_bias": null, "modalities": ["text"], "best_of": 1}),
        ] {
            assert_eq!(refused(chat(neutral.clone())), None, "{neutral}");
        }
    }

    #[test]
    fn usage_is_null_in_chunks_and_code_is_a_string() {
        let chunk = ChatChunk {
            id: "a".into(),
            object: "chat.completion.chunk".into(),
            created: 0,
            model: "m".into(),
            system_fingerprint: None,
            choices: vec![],
            usage: None,
        };
        let v = serde_json::to_value(&chunk).unwrap();
        assert!(v.as_object().unwrap().contains_key("usage") && v["usage"].is_null());
        let e = ErrorBody::of(&NodeError::PromptTooLong("long".into()));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        let e = ErrorBody::of(&NodeError::BadRequest("x".into()));
        assert!(serde_json::to_value(&e).unwrap()["error"]["code"].is_null());
    }
}
