//! The vocabulary of a generation, as it crosses the wire between nodes and reaches the
//! engine: a prompt (text, a conversation or token ids), how to sample, and how it ended.
//! The engine (`rbee-infer`) re-exports these; the infer protocol ([`crate::infer`]) carries
//! them.

use serde::{Deserialize, Serialize};

use crate::pool::ErrorCode;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's tool calls (the history of a tool-using client).
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A call of one of the request's tools, as the model made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments: a JSON object's text.
    pub arguments: String,
}

/// A function the model may call: OpenAI's `tools[].function`, Ollama's `tools[].function`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// The JSON schema of its arguments (JSON text; `{}` when it takes none).
    pub parameters: String,
}

/// How a chat prompt is rendered beyond its messages: the tools the model is told about, and
/// extra variables for the model's chat template (`enable_thinking`, `reasoning_effort`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatOptions {
    pub tools: Vec<ToolDef>,
    /// Template variables: a name and its value as JSON text.
    pub template_kwargs: Vec<(String, String)>,
}

/// Tools one request may define.
pub const MAX_TOOLS: usize = 128;
/// Template variables one request may set.
pub const MAX_TEMPLATE_KWARGS: usize = 32;

/// Why a conversation cannot be formatted at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessagesError {
    #[error("message {index} has role `{role}`; use system, user, assistant or tool")]
    BadRole { index: usize, role: String },
    #[error("a chat needs at least one message")]
    Empty,
}

/// What every template needs of a conversation: at least one message, each with a role it
/// knows. Callers that queue work check it up front, so a bad chat fails when it is sent.
pub fn check_messages(messages: &[ChatMessage]) -> Result<(), MessagesError> {
    if messages.is_empty() {
        return Err(MessagesError::Empty);
    }
    for (index, m) in messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(MessagesError::BadRole {
                index,
                role: m.role.clone(),
            });
        }
    }
    Ok(())
}

/// A prompt: raw text to continue, a conversation to format with the chat template, or token
/// ids used exactly as given (no BOS added: include it if the model wants one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
    Tokens(Vec<u32>),
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// End-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// Prompt tokens whose keys and values came from a kept cache (a shared prefix) rather
    /// than being computed; OpenAI's `usage.prompt_tokens_details.cached_tokens`.
    pub cached_tokens: usize,
    /// Time spent computing the output constraint's token masks (0 without a constraint).
    pub mask_secs: f64,
}

impl GenerationStats {
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.completion_tokens as f64 / self.decode_secs.max(1e-9)
    }
}

/// Above this a repetition penalty only garbles text; huge values overflow to infinity.
const MAX_REPEAT_PENALTY: f32 = 100.0;
/// More tokens than any context holds; a bigger `max_tokens` is a typo.
pub const MAX_TOKENS: usize = 1 << 20;

/// How to pick tokens and when to stop. Defaults match llama.cpp's CLI where it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    /// 1.0 disables it.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at (prompt included, as llama.cpp).
    pub repeat_last_n: usize,
    /// OpenAI's: subtracted from a token's logit once per time it occurs in the window.
    pub frequency_penalty: f32,
    /// OpenAI's: subtracted from a token's logit once if it occurs in the window at all.
    pub presence_penalty: f32,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Generation stops before the first occurrence of any of these in the output text.
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks need a fixed token count).
    pub ignore_eos: bool,
    /// What the output must be; the node that runs the generation compiles it.
    pub constraint: Option<Constraint>,
    /// Report each sampled token's log-probability and, with `Some(n)`, the `n` most likely
    /// alternatives (0..=[`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<u8>,
    /// Tools and template variables for a chat prompt (ignored for text and token prompts).
    pub chat: ChatOptions,
}

/// Most alternatives per token `logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u8 = 20;
/// Largest constraint text (a JSON schema or grammar): it crosses the wire inside the request.
pub const MAX_CONSTRAINT_BYTES: usize = 256 << 10;

/// What a generation's output must be (constrained decoding). The text form travels to the
/// node that serves the request, which compiles it over its own model's vocabulary, so a
/// constraint means the same thing on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    /// Any JSON object (OpenAI's `json_object`, Ollama's `format: "json"`).
    JsonObject,
    /// JSON valid against this JSON schema (its JSON text): OpenAI's `json_schema`, Ollama's
    /// `format: {schema}`. Properties the schema does not list are not generated.
    JsonSchema(String),
    /// A grammar in llguidance's Lark dialect.
    Lark(String),
    /// A call of one of the request's tools (`ChatOptions::tools`), or of the named one, in
    /// the model's own tool-call format (the serving node knows its template): the output
    /// always parses as a call with arguments valid against the tool's schema.
    ToolCall { only: Option<String> },
}

impl Constraint {
    fn text_len(&self) -> usize {
        match self {
            Constraint::JsonObject => 0,
            Constraint::JsonSchema(s) | Constraint::Lark(s) => s.len(),
            Constraint::ToolCall { only } => only.as_ref().map_or(0, String::len),
        }
    }
}

/// One generated token's log-probability (natural log), and the most likely alternatives at
/// that step, most likely first; from the log-softmax of the model's logits after any
/// constraint's mask (disallowed tokens never appear), before penalties and temperature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's bytes (not always valid UTF-8 on their own).
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.95),
            min_p: Some(0.05),
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
            constraint: None,
            logprobs: None,
            chat: ChatOptions::default(),
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..Default::default()
        }
    }

    /// Rejects values that make no sense, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.temperature) || self.temperature.is_nan() {
            return Err(format!(
                "temperature {} must be between 0 and 100",
                self.temperature
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(format!("top_p {p} must be in (0, 1]"));
        }
        if let Some(p) = self.min_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(format!("min_p {p} must be in [0, 1]"));
        }
        if self.top_k == Some(0) {
            return Err("top_k must be at least 1".into());
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= MAX_REPEAT_PENALTY) {
            return Err(format!(
                "repeat_penalty {} must be in (0, {MAX_REPEAT_PENALTY}] (1 is off, 1.1 typical)",
                self.repeat_penalty
            ));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(format!("{name} {v} must be between -2 and 2 (0 is off)"));
            }
        }
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS {
            return Err(format!(
                "max_tokens {} must be 1..={MAX_TOKENS} (generation also stops at the context length)",
                self.max_tokens
            ));
        }
        if self.stop.len() > 16 || self.stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err("stop: at most 16 non-empty sequences of up to 256 bytes".into());
        }
        if let Some(n) = self.logprobs
            && n > MAX_TOP_LOGPROBS
        {
            return Err(format!("top_logprobs {n} must be 0..={MAX_TOP_LOGPROBS}"));
        }
        if let Some(c) = &self.constraint
            && c.text_len() > MAX_CONSTRAINT_BYTES
        {
            return Err(format!(
                "the output constraint (JSON schema or grammar) is {} bytes; at most {MAX_CONSTRAINT_BYTES}",
                c.text_len()
            ));
        }
        let tools = &self.chat.tools;
        if tools.len() > MAX_TOOLS {
            return Err(format!("{} tools; at most {MAX_TOOLS}", tools.len()));
        }
        let tool_bytes: usize = tools
            .iter()
            .map(|t| t.name.len() + t.description.len() + t.parameters.len())
            .sum();
        if tool_bytes > MAX_CONSTRAINT_BYTES {
            return Err(format!(
                "the tools' definitions are {tool_bytes} bytes; at most {MAX_CONSTRAINT_BYTES}"
            ));
        }
        if let Some(t) = tools
            .iter()
            .find(|t| t.name.is_empty() || t.name.len() > 64)
        {
            return Err(format!("tool name `{}` must be 1 to 64 characters", t.name));
        }
        if self.chat.template_kwargs.len() > MAX_TEMPLATE_KWARGS {
            return Err(format!(
                "{} template variables; at most {MAX_TEMPLATE_KWARGS}",
                self.chat.template_kwargs.len()
            ));
        }
        match &self.constraint {
            Some(Constraint::ToolCall { only: None }) if tools.is_empty() => {
                return Err("a tool call is required but no tools are given".into());
            }
            Some(Constraint::ToolCall { only: Some(name) })
                if !tools.iter().any(|t| &t.name == name) =>
            {
                return Err(format!(
                    "the tool `{name}` asked for is not among the tools"
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// One step of a generation, wherever it runs: the one event type from the engine's bridge
/// on the node that runs it, across `/rbee/infer/2` (it is the wire frame), to the SSE
/// stream and the job of the node the client asked. In order: any `Phase`/`Progress`
/// (a pull or load first), `Started`, any number of `Text`, then `Done` or `Error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GenerationEvent {
    Started {
        node: String,
        model: String,
        prompt_tokens: u64,
    },
    /// Valid UTF-8; may be empty.
    Text(String),
    /// The log-probabilities of the tokens generated since the last one, when the request
    /// asked for `logprobs`; sent before the `Text` they produced.
    Logprobs(Vec<TokenLogprob>),
    Done(GenerationStats),
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Before `Started`: what the serving node is doing first (pulling the model from the
    /// pool, loading it).
    Phase(String),
    /// Before `Started`: the progress of a pull on the serving node.
    Progress {
        done: u64,
        total: u64,
        peers: Vec<String>,
    },
}

impl GenerationEvent {
    /// `Done` or `Error`: nothing follows.
    pub fn is_last(&self) -> bool {
        matches!(
            self,
            GenerationEvent::Done(_) | GenerationEvent::Error { .. }
        )
    }
}
