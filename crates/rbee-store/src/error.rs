use std::io;
use std::path::PathBuf;

use rbee_proto::{ContentId, ManifestError, ShardHash};

/// Everything the store can refuse or fail at, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "disk full while writing {path}: free some space and retry (nothing was added to the catalog)"
    )]
    DiskFull { path: PathBuf },
    // The cause is part of the message and not also a `#[source]`: printed with its chain
    // (`{:#}`), it would otherwise appear twice.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: invalid GGUF: {source}")]
    Gguf {
        path: PathBuf,
        source: rbee_format::gguf::GgufError,
    },
    #[error("{path}: invalid safetensors model: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error(
        "{path} is {kind}, not a regular file: import a GGUF file or a safetensors folder (nothing was read)"
    )]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("no model `{0}` in the catalog (see `rbee-node models ls`)")]
    NotFound(String),
    #[error("`{name}` already names model {existing}; pick another name or remove it first")]
    NameTaken { name: String, existing: ContentId },
    #[error(
        "`{0}` is not a valid model name: use letters, digits, `.`, `_`, `-`, `:` (not starting with a scheme like `hf:`)"
    )]
    InvalidName(String),
    #[error(
        "these bytes are already cataloged as `{name}` ({id}); nothing was imported or renamed. To reach it as `{wanted}` too, run `rbee-node models alias {name} {wanted}`; to rename it (clients using `{name}` then get 404), `rbee-node models rename {name} {wanted}`"
    )]
    AlreadyCataloged {
        name: String,
        id: ContentId,
        wanted: String,
    },
    #[error(
        "another rbee node ({holder}) is already running on the data dir {dir}: stop it first, or give this node its own `--data-dir`"
    )]
    NodeRunning { dir: PathBuf, holder: String },
    #[error(
        "`{file}` of model `{model}` ({path}) does not match its manifest: {problem}; it was not loaded. Run `rbee-node models verify {model}` to list the damage, then re-pull or re-import the model"
    )]
    CorruptModelFile {
        model: String,
        file: String,
        path: PathBuf,
        problem: String,
    },
    #[error("cancelled; nothing was imported")]
    Cancelled,
    #[error("model {0} is pinned; unpin it before removing")]
    Pinned(ContentId),
    #[error(
        "shard {index} of `{file}` does not match its hash (expected {expected:?}, got {actual:?})"
    )]
    ShardMismatch {
        file: String,
        index: usize,
        expected: ShardHash,
        actual: ShardHash,
    },
    #[error("shard {index} of `{file}` is out of range")]
    ShardOutOfRange { file: String, index: usize },
    #[error("pull of {0} is incomplete: {1} shards still missing")]
    Incomplete(ContentId, usize),
    #[error("invalid manifest: {0}")]
    Manifest(ManifestError),
    #[error("catalog file {path} is corrupt: {reason}")]
    CorruptCatalog { path: PathBuf, reason: String },
    #[error(
        "model `{name}` ({id}) is damaged: {reason}. The rest of the catalog works and gc keeps every blob meanwhile; re-import or re-pull the model to repair it, or forget it with `rbee-node models rm {name}`"
    )]
    DamagedModel {
        name: String,
        id: ContentId,
        reason: String,
    },
    #[error("ollama model `{name}`: {reason}")]
    Ollama { name: String, reason: String },
    #[error("HuggingFace cache: {0}")]
    HfCache(String),
    #[error("{0}")]
    BadSource(String),
}

impl From<ManifestError> for StoreError {
    fn from(e: ManifestError) -> Self {
        StoreError::Manifest(e)
    }
}

impl StoreError {
    /// Wraps an I/O error, turning "no space left" into the dedicated, actionable variant.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
            return StoreError::DiskFull { path };
        }
        StoreError::Io { op, path, source }
    }
}

pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::io(op, path, e))
    }
}
