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
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

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
