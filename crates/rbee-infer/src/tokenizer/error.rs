//! The tokenizer's error type.
//!
//! Every variant names the GGUF key, file or token it is about, so a failed
//! model load says which part of which file was wrong.

use std::path::PathBuf;

/// Why a tokenizer could not be built, or a text could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata has no `{key}`")]
    MissingKey { key: &'static str },

    #[error("GGUF key `{key}` is {found}, expected {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },

    #[error("GGUF key `{key}` has {found} entries, but the vocabulary has {expected} tokens")]
    LengthMismatch {
        key: &'static str,
        expected: usize,
        found: usize,
    },

    #[error(
        "unsupported tokenizer model `{model}` (supported: \"llama\" (SentencePiece), \"gpt2\" (byte-level BPE), \"bert\" (WordPiece))"
    )]
    UnsupportedModel { model: String },

    #[error("token {token:?} appears twice in the vocabulary, as ids {first} and {second}")]
    DuplicateToken {
        token: String,
        first: u32,
        second: u32,
    },

    #[error("vocabulary is too large ({what})")]
    TooLarge { what: &'static str },

    #[error("cannot compile pre-tokenizer regex {pattern:?}: {message}")]
    Regex { pattern: String, message: String },

    #[error(
        "the vocabulary has no token for byte 0x{byte:02X}, which the text needs (no `<0x{byte:02X}>` byte token)"
    )]
    NoByteToken { byte: u8 },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot parse {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot load {}: {source}", path.display())]
    HfLoad {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },

    #[error("cannot build the WordPiece tokenizer from the GGUF vocabulary: {source}")]
    HfBuild {
        #[source]
        source: tokenizers::Error,
    },

    #[error("tokenizer.json model failed to encode the text: {source}")]
    HfEncode {
        #[source]
        source: tokenizers::Error,
    },
}
