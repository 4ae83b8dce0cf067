//! The crate's single error type. Every variant carries enough context (key,
//! tensor, offset) for an import failure to say what is missing or broken.

use std::path::PathBuf;

use crate::gguf::types::GgmlType;

/// Anything that can go wrong reading, validating or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes found stay out of the message: an API client naming an arbitrary server path
    /// must not learn what the file holds.
    #[error("not a GGUF file: it does not start with the bytes \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("GGUF version {version} is not supported (only versions 2 and 3)")]
    UnsupportedVersion { version: u32 },
    #[error(
        "truncated file: {what} at offset {offset} needs {needed} bytes, only {remaining} remain"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        remaining: u64,
    },
    #[error("{what} is {value}, limit is {limit}")]
    LimitExceeded {
        what: String,
        value: u64,
        limit: u64,
    },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: String },
    #[error("{key} has unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("duplicate metadata key {key}")]
    DuplicateKey { key: String },
    #[error("general.alignment {value} is not a nonzero power of two")]
    BadAlignment { value: u64 },
    #[error("duplicate tensor name {tensor}")]
    DuplicateTensor { tensor: String },
    #[error(
        "tensor {tensor} has {n_dims} dimensions, expected 1 to {}",
        crate::gguf::MAX_DIMS
    )]
    BadDims { tensor: String, n_dims: u32 },
    #[error("tensor {tensor} has unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor} dimensions {dims:?} overflow")]
    DimsOverflow { tensor: String, dims: Vec<u64> },
    #[error(
        "tensor {tensor} row length {ne0} is not a multiple of the {dtype} block size {block_size}"
    )]
    PartialBlock {
        tensor: String,
        ne0: u64,
        dtype: GgmlType,
        block_size: u64,
    },
    #[error("tensor {tensor} offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {tensor} extends past end of file (offset {offset}, size {size}, file size {file_size})"
    )]
    PastEndOfFile {
        tensor: String,
        offset: u64,
        size: u64,
        file_size: u64,
    },
    #[error("tensors {first} and {second} overlap")]
    Overlap { first: String, second: String },
    #[error("{key} missing")]
    MissingKey { key: String },
    #[error("{key} has type {found}, expected {expected}")]
    WrongType {
        key: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("tensor {name} missing")]
    MissingTensor { name: String },
    #[error("{key} is {blocks}, but block {block} has no tensors (blk.{block}.*)")]
    MissingBlock {
        key: String,
        blocks: u64,
        block: u64,
    },
}
