//! Pure-Rust GGUF (v2/v3, little-endian) reader, validator and small writer.
//!
//! - [`GgufFile::open`] / [`GgufFile::read`]: parse the header (metadata and
//!   tensor table) and check every tensor lies inside the file; tensor data is
//!   never read.
//! - [`validate`]: check a parsed file is a well-formed model, of any
//!   architecture; returns a [`ModelSummary`].
//! - [`writer::GgufWriter`]: write small files, mainly test fixtures.

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
pub use validate::{ModelSummary, file_type_name, validate};
pub use value::{Array, Metadata, Value};
pub use writer::GgufWriter;
