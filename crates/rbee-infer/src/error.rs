use std::path::PathBuf;

/// Everything loading or generating can fail at. `error_type` gives a stable label for metrics
/// and for the HTTP layer to pick a status.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{path}: invalid model: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: rbee_format::gguf::GgufError,
    },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    /// A well-formed model of an architecture this engine does not run: the store keeps and
    /// shares it, and a node whose engine runs it can serve it.
    #[error("{path}: architecture {architecture:?} is not one this engine runs ({runs})")]
    UnsupportedArchitecture {
        path: PathBuf,
        architecture: String,
        /// What it runs instead, in words (naming [`crate::SUPPORTED_ARCHITECTURES`] for GGUF).
        runs: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("{0}")]
    Chat(#[from] crate::chat::ChatError),
    #[error(
        "prompt is {}{tokens} tokens; this model is loaded with a context of {context} tokens",
        at_least(.counted_all)
    )]
    PromptTooLong {
        tokens: usize,
        context: usize,
        /// False when tokenizing stopped early, once the prompt was known not to fit.
        counted_all: bool,
    },
    #[error(
        "prompt is {bytes} bytes; a model loaded with a context of {context} tokens takes at most {limit} bytes of prompt"
    )]
    PromptTooLarge {
        bytes: usize,
        limit: usize,
        context: usize,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// One input of a request to embed could not be: which one, and why (with the kind of its
    /// cause, so an input too long for the context is a context error).
    #[error("input {index}: {source}")]
    Input {
        index: usize,
        #[source]
        source: Box<InferError>,
    },
    /// A request to generate text from an encoder.
    #[error(
        "this is an embedding model ({architecture}); it cannot generate text: use it through the embeddings endpoints"
    )]
    EmbeddingOnly { architecture: String },
    /// A request to embed with a decoder whose file names no pooling (not made for embeddings).
    #[error(
        "this is a text-generation model ({architecture}) without pooling metadata (`{architecture}.pooling_type`); it does not make embeddings: use an embedding model"
    )]
    NotAnEmbeddingModel { architecture: String },
    #[error(
        "the model's queue is full: {capacity} requests already wait for a free batch slot or room in the KV cache budget; retry shortly"
    )]
    QueueFull { capacity: usize },
    #[error("the model was unloaded or its worker thread stopped")]
    Unloaded,
    #[error("cannot start the model thread: {0}")]
    Thread(std::io::Error),
}

fn at_least(counted_all: &bool) -> &'static str {
    if *counted_all { "" } else { "at least " }
}

impl InferError {
    pub fn error_type(&self) -> &'static str {
        match self {
            InferError::Input { source, .. } => source.error_type(),
            InferError::Invalid { .. } | InferError::Unsupported { .. } => "invalid_model",
            InferError::UnsupportedArchitecture { .. } => "unsupported_architecture",
            InferError::Tokenizer(_) => "tokenizer_error",
            InferError::Model(_) => "model_error",
            InferError::Chat(_)
            | InferError::InvalidRequest(_)
            | InferError::EmbeddingOnly { .. }
            | InferError::NotAnEmbeddingModel { .. } => "invalid_request_error",
            InferError::PromptTooLong { .. } | InferError::PromptTooLarge { .. } => {
                "context_length_exceeded"
            }
            InferError::QueueFull { .. } => "overloaded",
            InferError::Unloaded | InferError::Thread(_) => "unavailable",
        }
    }
}
