//! Pure-Rust GGUF (v2/v3, little-endian) reader, validator and small writer.
//!
//! Model files arrive from users and untrusted peers, so the reader treats every
//! count, length and offset as hostile: each is checked against the bytes left in
//! the file and against an absolute cap (the `MAX_*` constants) before it drives
//! an allocation, all arithmetic is checked, and bad input is an error, never a
//! panic.
//!
//! - [`GgufFile::open`] / [`GgufFile::read`]: parse the header (metadata and
//!   tensor table) and check every tensor lies inside the file; tensor data is
//!   never read.
//! - [`validate`]: check a parsed file is a model rbee can run; returns a
//!   [`ModelSummary`].
//! - [`writer::GgufWriter`]: write small files, mainly test fixtures.

mod arch;
mod error;
mod reader;
mod tensor;
mod types;
mod validate;
mod value;
pub mod writer;

pub use error::GgufError;
pub use reader::{
    DEFAULT_ALIGNMENT, GgufFile, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_DIMS, MAX_KEY_LEN,
    MAX_METADATA_ENTRIES, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN, MAX_TENSORS,
};
pub use tensor::TensorInfo;
pub use types::GgmlType;
pub use validate::{ModelSummary, SUPPORTED_ARCHITECTURES, file_type_name, validate};
pub use value::{Array, Metadata, Value};
pub use writer::GgufWriter;
