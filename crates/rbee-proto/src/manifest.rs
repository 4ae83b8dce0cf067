//! Manifests: what a model is made of, independent of where it is stored.
//!
//! A model is one or more files (a GGUF, or a safetensors folder). Each file is cut into
//! fixed-size shards, and the manifest lists the BLAKE3 hash of every shard, so a file can be
//! fetched from many peers at once and each piece verified on arrival. The manifest's own
//! content id covers the content and canonical file names, not where the bytes came from
//! (see [`Manifest::content_id`]), so the same bytes are one model whatever the file was called.

use serde::{Deserialize, Serialize};

use crate::{ContentId, ShardHash, codec};

/// 4 MiB: big enough that per-shard overhead is noise, small enough that a lost shard is cheap
/// and a 250 MB model still spreads across peers.
pub const DEFAULT_SHARD_SIZE: u64 = 4 << 20;
pub const MIN_SHARD_SIZE: u64 = 64 << 10;
pub const MAX_SHARD_SIZE: u64 = 64 << 20;
/// A safetensors model of a few hundred shards is the largest honest case.
pub const MAX_FILES: usize = 4096;
const MAX_FILE_NAME: usize = 512;
/// The name a single-file GGUF model's file has in its manifest and view, whatever it was
/// called where it came from (that name is kept in [`ModelSource`], outside the id).
pub const GGUF_FILE_NAME: &str = "model.gguf";
/// The files of a Hugging Face model folder, besides its `*.safetensors` weights and their
/// index, that a model is made of (the first two it cannot do without): its configuration and
/// tokenizer, generation settings, and the sentence-transformers files that say how an
/// embedding model pools, normalises and cuts its inputs (`modules.json`, the pooling module's
/// config, `sentence_bert_config.json`, `config_sentence_transformers.json`), plus the model
/// card, whose tags say whether it was trained for Matryoshka dimensions. Imports, HuggingFace
/// pulls and pulls from peers keep the same set.
pub const SAFETENSORS_SIDE_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "README.md",
];
/// How many of [`SAFETENSORS_SIDE_FILES`], from the first, a folder must have.
pub const SAFETENSORS_REQUIRED_FILES: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelFormat {
    Gguf,
    Safetensors,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Gguf => "gguf",
            ModelFormat::Safetensors => "safetensors",
        }
    }
}

/// A summary of the model's own metadata, for listings and routing decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub format: ModelFormat,
    pub architecture: String,
    /// e.g. `Q4_K_M`, `F16`, `BF16`.
    pub quantization: String,
    pub parameter_count: u64,
    pub context_length: u64,
}

/// Where the bytes first came from. Kept in the manifest so a peer that pulled
/// `org/repo:file.gguf` can be found by that same reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelSource {
    /// Imported from a local file or folder; only its final path component is recorded.
    Local {
        name: String,
    },
    HuggingFace {
        repo: String,
        revision: String,
        file: Option<String>,
    },
    Ollama {
        name: String,
    },
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path inside the model (`model.gguf`, `tokenizer.json`, `model-00001-of-00002.safetensors`).
    pub name: String,
    pub size: u64,
    pub shard_size: u64,
    pub shards: Vec<ShardHash>,
}

impl FileEntry {
    /// The id of this file's bytes: BLAKE3 over the shard size and the shard hashes. Equal files
    /// (cut with the same shard size) share one blob in the store.
    pub fn blob_id(&self) -> ContentId {
        let mut h = blake3::Hasher::new();
        h.update(b"rbee-blob-v1");
        h.update(&self.size.to_le_bytes());
        h.update(&self.shard_size.to_le_bytes());
        for s in &self.shards {
            h.update(s.as_bytes());
        }
        ContentId::from_hash(h.finalize())
    }

    /// Number of shards a file of `size` bytes has (an empty file has none).
    pub fn shard_count(size: u64, shard_size: u64) -> u64 {
        size.div_ceil(shard_size.max(1))
    }

    /// Byte length of shard `index`, or None past the end.
    pub fn shard_len(&self, index: usize) -> Option<u64> {
        let start = (index as u64).checked_mul(self.shard_size)?;
        (start < self.size).then(|| (self.size - start).min(self.shard_size))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest has no files")]
    NoFiles,
    #[error("manifest has {0} files, more than the limit of {MAX_FILES}")]
    TooManyFiles(usize),
    #[error("file name `{name}` is not allowed: {reason}")]
    BadFileName { name: String, reason: String },
    #[error("file `{0}` appears twice")]
    DuplicateFile(String),
    #[error(
        "file `{name}`: shard size {shard_size} is outside {MIN_SHARD_SIZE}..={MAX_SHARD_SIZE} or not a power of two"
    )]
    BadShardSize { name: String, shard_size: u64 },
    #[error("file `{name}`: {size} bytes need {expected} shards, the manifest lists {listed}")]
    ShardCount {
        name: String,
        size: u64,
        expected: u64,
        listed: usize,
    },
    // Not a `#[source]`: the message already holds it, and a chain would print it twice.
    #[error("{0}")]
    Codec(codec::CodecError),
}

impl From<codec::CodecError> for ManifestError {
    fn from(e: codec::CodecError) -> Self {
        ManifestError::Codec(e)
    }
}

/// Checks a relative file name taken from a manifest, a peer or a user: no absolute paths, no
/// `..`, no backslashes or control characters, so it can never escape the model's folder.
pub fn check_relative_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > MAX_FILE_NAME {
        return Err(format!("it is longer than {MAX_FILE_NAME} bytes"));
    }
    if name.starts_with('/') {
        return Err("it is absolute".into());
    }
    if name.chars().any(|c| c == '\\' || c.is_control()) {
        return Err("it contains a backslash or control character".into());
    }
    if name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("it has an empty, `.` or `..` component".into());
    }
    Ok(())
}

/// A model's content, as content-addressed parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Sorted by name; the encoding is canonical because nothing in here is unordered.
    pub files: Vec<FileEntry>,
    pub metadata: ModelMetadata,
    pub source: ModelSource,
}

/// What the content id hashes: the files under their canonical names, and the metadata
/// (derived from those bytes). Not the source.
#[derive(Serialize)]
struct IdInput<'a> {
    domain: &'a str,
    files: Vec<(&'a str, u64, u64, &'a [ShardHash])>,
    metadata: &'a ModelMetadata,
}

impl Manifest {
    /// The model's id: BLAKE3 of the canonical encoding of `"rbee-model-v2"`, its files
    /// (name, size, shard size, shard hashes; sorted by name) and its metadata, where the one
    /// file of a single-file GGUF model is always named [`GGUF_FILE_NAME`]. The source is left
    /// out, so identical bytes are one model whether they came from `a.gguf`, `b.gguf`,
    /// HuggingFace or Ollama.
    pub fn content_id(&self) -> ContentId {
        let input = IdInput {
            domain: "rbee-model-v2",
            files: self
                .files
                .iter()
                .map(|f| {
                    (
                        self.canonical_name(f),
                        f.size,
                        f.shard_size,
                        f.shards.as_slice(),
                    )
                })
                .collect(),
            metadata: &self.metadata,
        };
        // Encoding in-memory values cannot fail: no maps, no unsized floats.
        match codec::encode(&input) {
            Ok(bytes) => ContentId::of(&bytes),
            Err(e) => unreachable!("manifest encoding failed: {e}"),
        }
    }

    /// The id before `rbee-model-v2`: BLAKE3 of the whole encoding, file names and source
    /// included. Models cataloged then keep it; see [`Manifest::matches_id`].
    pub fn legacy_content_id(&self) -> ContentId {
        match codec::encode(self) {
            Ok(bytes) => ContentId::of(&bytes),
            Err(e) => unreachable!("manifest encoding failed: {e}"),
        }
    }

    /// Whether this manifest is the one `id` names: under the current rule, or under the
    /// legacy one (stores and peers from before it file and advertise models by that id).
    pub fn matches_id(&self, id: &ContentId) -> bool {
        self.content_id() == *id || self.legacy_content_id() == *id
    }

    /// Files as the content id sees them: (canonical name, blob id), sorted by name. Two
    /// manifests with equal lists hold the same bytes under the same roles.
    pub fn canonical_files(&self) -> Vec<(&str, ContentId)> {
        self.files
            .iter()
            .map(|f| (self.canonical_name(f), f.blob_id()))
            .collect()
    }

    /// The name the content id gives `file`: a single-file GGUF is `model.gguf` whatever it
    /// was called; the files of a folder keep their names (they are its structure).
    fn canonical_name<'a>(&self, file: &'a FileEntry) -> &'a str {
        if self.metadata.format == ModelFormat::Gguf && self.files.len() == 1 {
            GGUF_FILE_NAME
        } else {
            file.name.as_str()
        }
    }

    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn shard_total(&self) -> usize {
        self.files.iter().map(|f| f.shards.len()).sum()
    }

    /// The file a loader opens first: the GGUF, or for safetensors the first weights file.
    pub fn primary_file(&self) -> Option<&FileEntry> {
        let ext = match self.metadata.format {
            ModelFormat::Gguf => ".gguf",
            ModelFormat::Safetensors => ".safetensors",
        };
        self.files.iter().find(|f| f.name.ends_with(ext))
    }

    /// Structural checks for a manifest that came from outside (a peer, a file on disk).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.files.is_empty() {
            return Err(ManifestError::NoFiles);
        }
        if self.files.len() > MAX_FILES {
            return Err(ManifestError::TooManyFiles(self.files.len()));
        }
        let mut prev: Option<&str> = None;
        for f in &self.files {
            check_relative_file_name(&f.name).map_err(|reason| ManifestError::BadFileName {
                name: f.name.clone(),
                reason,
            })?;
            if let Some(p) = prev {
                if p == f.name {
                    return Err(ManifestError::DuplicateFile(f.name.clone()));
                }
                if p > f.name.as_str() {
                    return Err(ManifestError::BadFileName {
                        name: f.name.clone(),
                        reason: "files are not sorted by name".into(),
                    });
                }
            }
            prev = Some(&f.name);
            if !(MIN_SHARD_SIZE..=MAX_SHARD_SIZE).contains(&f.shard_size)
                || !f.shard_size.is_power_of_two()
            {
                return Err(ManifestError::BadShardSize {
                    name: f.name.clone(),
                    shard_size: f.shard_size,
                });
            }
            let expected = FileEntry::shard_count(f.size, f.shard_size);
            if expected != f.shards.len() as u64 {
                return Err(ManifestError::ShardCount {
                    name: f.name.clone(),
                    size: f.size,
                    expected,
                    listed: f.shards.len(),
                });
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        Ok(codec::encode(self)?)
    }

    /// Decodes and validates; use this for every manifest that did not come from this process.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest = codec::decode(bytes)?;
        m.validate()?;
        Ok(m)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(size: u64) -> Manifest {
        let shard_size = MIN_SHARD_SIZE;
        let n = FileEntry::shard_count(size, shard_size);
        Manifest {
            files: vec![FileEntry {
                name: "model.gguf".into(),
                size,
                shard_size,
                shards: (0..n).map(|i| ShardHash::of(&i.to_le_bytes())).collect(),
            }],
            metadata: ModelMetadata {
                format: ModelFormat::Gguf,
                architecture: "gemma3".into(),
                quantization: "Q4_K_M".into(),
                parameter_count: 268_098_176,
                context_length: 32768,
            },
            source: ModelSource::Local {
                name: "model.gguf".into(),
            },
        }
    }

    #[test]
    fn round_trip_and_stable_content_id() {
        let m = sample(3 * MIN_SHARD_SIZE + 1);
        let bytes = m.encode().unwrap();
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.content_id(), m.content_id());
        assert_eq!(m.legacy_content_id(), ContentId::of(&bytes));
        assert!(m.matches_id(&m.content_id()) && m.matches_id(&m.legacy_content_id()));
        // Pinned: changing what the id covers changes every model's id.
        assert_eq!(
            sample(10).content_id().to_hex(),
            "05b9ad8e0d97221b892540e19b63149bd5d282f81c93bdbdb4f7f496243ee340"
        );
    }

    #[test]
    fn the_same_bytes_are_one_model_whatever_the_file_was_called() {
        let m = sample(3 * MIN_SHARD_SIZE + 1);
        let mut renamed = m.clone();
        renamed.files[0].name = "tiny-Q4_K_M.gguf".into();
        renamed.source = ModelSource::Local {
            name: "tiny-Q4_K_M.gguf".into(),
        };
        let mut pulled = m.clone();
        pulled.source = ModelSource::HuggingFace {
            repo: "org/repo".into(),
            revision: "0".repeat(40),
            file: Some("sub/x.gguf".into()),
        };
        assert_eq!(renamed.content_id(), m.content_id());
        assert_eq!(pulled.content_id(), m.content_id());
        assert_eq!(renamed.canonical_files(), m.canonical_files());
        // The legacy id told them apart.
        assert_ne!(renamed.legacy_content_id(), m.legacy_content_id());

        // Other bytes, metadata or (for several files) names are another model.
        let mut other = m.clone();
        other.files[0].shards[0] = ShardHash::of(b"other");
        assert_ne!(other.content_id(), m.content_id());
        let mut other = m.clone();
        other.metadata.context_length += 1;
        assert_ne!(other.content_id(), m.content_id());
        let mut two = m.clone();
        two.files.insert(
            0,
            FileEntry {
                name: "config.json".into(),
                ..m.files[0].clone()
            },
        );
        let mut two_renamed = two.clone();
        two_renamed.files[1].name = "weights.gguf".into();
        assert_ne!(two.content_id(), two_renamed.content_id());
    }

    #[test]
    fn shard_lengths_at_the_boundaries() {
        let s = MIN_SHARD_SIZE;
        for (size, count, last) in [
            (0, 0, None),
            (1, 1, Some(1)),
            (s - 1, 1, Some(s - 1)),
            (s, 1, Some(s)),
            (s + 1, 2, Some(1)),
        ] {
            let m = sample(size);
            let f = &m.files[0];
            assert_eq!(f.shards.len() as u64, count, "size {size}");
            let last_idx = count.saturating_sub(1) as usize;
            assert_eq!(f.shard_len(last_idx), last, "size {size}");
            assert_eq!(f.shard_len(count as usize), None);
            m.validate().unwrap();
        }
    }

    #[test]
    fn validation_rejects_what_a_peer_could_forge() {
        let mut m = sample(10);
        m.files[0].name = "../../etc/passwd".into();
        assert!(matches!(
            m.validate(),
            Err(ManifestError::BadFileName { .. })
        ));

        let mut m = sample(10);
        m.files[0].shards.push(ShardHash::of(b"extra"));
        assert!(matches!(
            m.validate(),
            Err(ManifestError::ShardCount { .. })
        ));

        let mut m = sample(10);
        m.files[0].shard_size = 1000;
        assert!(matches!(
            m.validate(),
            Err(ManifestError::BadShardSize { .. })
        ));

        let mut m = sample(10);
        m.files.push(m.files[0].clone());
        assert!(matches!(m.validate(), Err(ManifestError::DuplicateFile(_))));

        let mut m = sample(10);
        m.files.clear();
        assert_eq!(m.validate(), Err(ManifestError::NoFiles));

        let bytes = sample(10).encode().unwrap();
        assert!(Manifest::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn file_names_cannot_escape() {
        for bad in ["", "/etc", "a/../b", "a//b", "./a", "a\\b", "a\nb"] {
            assert!(check_relative_file_name(bad).is_err(), "{bad:?}");
        }
        for good in ["model.gguf", "sub/dir/model-00001-of-00002.safetensors"] {
            assert!(check_relative_file_name(good).is_ok(), "{good}");
        }
    }
}
