//! The model's error type. Every variant says which file, key, tensor or layer
//! was involved, because a load failure on a peer's node has to be diagnosable
//! from the log line alone.

use std::path::PathBuf;

/// Anything that can go wrong loading or running a [`Transformer`](super::Transformer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("cannot read GGUF header: {0}")]
    Gguf(#[from] rbee_format::gguf::GgufError),
    #[error("cannot read tensor data of {tensor} from {}: {source}", path.display())]
    Io {
        path: PathBuf,
        tensor: String,
        source: std::io::Error,
    },
    /// A well-formed model of an architecture this engine does not run (a node built with
    /// another engine might).
    #[error("architecture {architecture:?} is not one this engine runs ({runs})")]
    UnsupportedArchitecture {
        architecture: String,
        /// What it runs instead, in words: for GGUF the
        /// [`SUPPORTED_ARCHITECTURES`](super::config::SUPPORTED_ARCHITECTURES), for a
        /// safetensors folder the `model_type`s its conversion knows.
        runs: String,
    },
    #[error("metadata key {key} is missing or has the wrong type")]
    MissingMetadata { key: String },
    #[error("metadata {key} = {value} is invalid: {reason}")]
    BadMetadata {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{}: invalid safetensors model: {reason}", path.display())]
    Safetensors { path: PathBuf, reason: String },
    #[error("tensor {0} is missing")]
    MissingTensor(String),
    #[error("tensor {tensor} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        tensor: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor {tensor} has type {dtype}, which this engine cannot compute with")]
    TensorType {
        tensor: String,
        dtype: rbee_format::gguf::GgmlType,
    },
    #[error("{context}: {source}")]
    Candle {
        context: String,
        source: candle_core::Error,
    },
    #[error(
        "cannot run on {0:?} with the CPU runtime: load it through the engine \
         (`LoadOptions::device`) or with `Transformer::load_gguf_on(DeviceRuntime::new(..))`"
    )]
    UnsupportedDevice(candle_core::DeviceLocation),
    #[error("token id {token} is out of range for a vocabulary of {vocab}")]
    TokenOutOfRange { token: u32, vocab: usize },
    #[error(
        "start position {start_pos} does not continue the KV cache, which holds {cached} positions"
    )]
    BadPosition { start_pos: usize, cached: usize },
    #[error("{needed} positions exceed the context length {context}")]
    ContextOverflow { needed: usize, context: usize },
    #[error("forward called with no tokens")]
    EmptyInput,
    #[error(
        "the model produced non-finite values (NaN or infinity) at position {position}: its weights are broken or it overflowed; verify the file (`rbee-node models verify`) and re-pull or re-import it"
    )]
    NonFinite { position: usize },
}

/// Attaches a description of what was being done to a candle error.
pub(crate) trait CandleContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, ModelError>;
}

impl<T> CandleContext<T> for Result<T, candle_core::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, ModelError> {
        self.map_err(|source| ModelError::Candle {
            context: what(),
            source,
        })
    }
}
