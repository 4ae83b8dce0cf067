//! The vocabulary every rbee crate shares: content ids, model references, manifests, and the one
//! codec that puts them on the wire or on disk.
//!
//! This crate has no async runtime, no networking and no inference code, so that anything can
//! depend on it. Everything a peer can send is decoded through [`codec`], which caps sizes before
//! it allocates.
//!
//! ```
//! use rbee_proto::ModelRef;
//! let r: ModelRef = "unsloth/gemma-3-270m-it-GGUF:gemma-3-270m-it-Q4_K_M.gguf".parse().unwrap();
//! assert!(matches!(r, ModelRef::HuggingFace(_)));
//! ```

pub mod codec;
pub mod embed;
pub mod generation;
mod id;
pub mod infer;
mod manifest;
mod model_ref;
pub mod pool;
pub mod quant;
pub mod shard;

pub use id::{ContentId, IdParseError, ShardHash};
pub use manifest::{
    DEFAULT_SHARD_SIZE, FileEntry, GGUF_FILE_NAME, MAX_FILES, MAX_SHARD_SIZE, MIN_SHARD_SIZE,
    Manifest, ManifestError, ModelFormat, ModelMetadata, ModelSource, SAFETENSORS_REQUIRED_FILES,
    SAFETENSORS_SIDE_FILES, check_relative_file_name,
};
pub use model_ref::{HfRef, ModelRef, RefError, is_valid_name};
