//! What nodes tell each other about themselves: the status each node gossips on the pool topic.
//!
//! A status is small (it lists models, not manifests) and is validated after decoding, so a
//! peer cannot make the pool view hold unbounded lists or strings.

use serde::{Deserialize, Serialize};

use crate::ContentId;

/// Gossipsub topic every node of a pool publishes its [`NodeStatus`] on. The version is part
/// of the name: nodes of another version do not see each other's statuses.
pub const POOL_TOPIC: &str = "/rbee/pool/3";
/// The stream protocol that runs a generation on a peer.
pub const INFER_PROTOCOL: &str = "/rbee/infer/2";
/// The stream protocol that embeds inputs on a peer.
pub const EMBED_PROTOCOL: &str = "/rbee/embed/1";
/// The stream protocol that serves shards of a model.
pub const SHARD_PROTOCOL: &str = "/rbee/shard/1";

/// Why a peer refused or failed a request on a stream protocol: the wire's own vocabulary,
/// not HTTP statuses (the edge maps these to HTTP, once, on the node that answers a client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request itself is wrong (bad sampling values, roles, model reference).
    BadRequest,
    /// The peer has no such model (or shard, or manifest).
    NotFound,
    /// The prompt does not fit the model's context.
    ContextLengthExceeded,
    /// The model's files are not a model this node can run.
    InvalidModel,
    /// Full for now (queue, upload slots); retry after the given seconds.
    Busy { retry_after_secs: u32 },
    /// The model is still loading.
    Loading,
    /// The model can never fit this node's memory budget.
    NeverFits,
    /// The peer cannot serve now (shutting down, its own peer failed).
    Unavailable,
    /// The request was cancelled.
    Cancelled,
    /// Anything else: a bug or an I/O failure on the peer.
    Internal,
    /// No model by the requested reference on the peer (nor where it looked).
    ModelNotFound,
}

/// Largest encoded status a node accepts from the topic.
pub const MAX_STATUS_SIZE: usize = 256 << 10;
/// Models listed in one status (loaded or on disk).
pub const MAX_STATUS_MODELS: usize = 512;
/// Names and aliases listed per model.
pub const MAX_MODEL_NAMES: usize = 16;
/// Devices listed in one status.
pub const MAX_DEVICES: usize = 16;
/// Longest string in a status (names, addresses).
pub const MAX_STATUS_STRING: usize = 512;
/// Presets listed in one status.
pub const MAX_STATUS_PRESETS: usize = 256;

/// One node's view of itself, published periodically and on every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's human name (its host name by default).
    pub name: String,
    /// Where its HTTP API listens, as `host:port`, when it is reachable from peers.
    pub api_addr: Option<String>,
    /// Increases with every status the node publishes; older ones are ignored.
    pub seq: u64,
    pub devices: Vec<DeviceStatus>,
    /// Models in memory, ready to serve.
    pub loaded: Vec<LoadedModel>,
    /// Models in the node's store.
    pub on_disk: Vec<DiskModel>,
    /// Decode speed over the node's recent generations, tokens per second (0 when idle).
    pub tokens_per_sec: f32,
    /// Presets (models derived by a Modelfile) the node stores and shares.
    pub presets: Vec<PresetStatus>,
}

/// A preset a node shares: its name, the content id of its definition (what a peer asks for
/// with `ShardRequest::Preset` and checks the reply against) and its base model's content id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresetStatus {
    pub name: String,
    pub id: ContentId,
    pub base: ContentId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// `cpu`, `cuda:0`, …
    pub name: String,
    /// Memory the node lets models use on this device.
    pub budget_bytes: u64,
    /// Memory models use now.
    pub used_bytes: u64,
}

impl DeviceStatus {
    pub fn free_bytes(&self) -> u64 {
        self.budget_bytes.saturating_sub(self.used_bytes)
    }

    /// Every device but the CPU is a GPU (`cuda:0`, `metal:0`, simulated `sim:0`).
    pub fn is_gpu(&self) -> bool {
        self.name != "cpu"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadedModel {
    pub content_id: ContentId,
    pub device: String,
    /// Requests waiting for a batch slot of this model.
    pub queue: u32,
    /// Requests that may wait before the node refuses more.
    pub queue_capacity: u32,
    /// A generation is running now.
    pub busy: bool,
    /// Sequences generating now, batched.
    pub live: u32,
    /// Sequences the model generates at once.
    pub max_live: u32,
}

impl LoadedModel {
    /// A request sent now would be admitted (run or queued).
    pub fn has_slot(&self) -> bool {
        self.queue < self.queue_capacity
    }

    /// A request sent now would join the running batch at the next step, without waiting:
    /// as good as an idle model.
    pub fn has_free_batch_slot(&self) -> bool {
        self.queue == 0 && self.live < self.max_live
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskModel {
    pub content_id: ContentId,
    /// Catalog name first, then aliases.
    pub names: Vec<String>,
    /// Where it came from in canonical reference form (`org/repo:file.gguf`), when not local.
    pub source: Option<String>,
    /// Bytes on disk (a lower bound for the memory it needs).
    pub size: u64,
    /// The node serves its shards to peers.
    pub shared: bool,
}

impl DiskModel {
    /// Whether a user's reference (name, alias, content id or source) names this model.
    pub fn matches(&self, reference: &str) -> bool {
        let r = reference.strip_prefix("hf:").unwrap_or(reference);
        let r = r.strip_prefix("cid:").unwrap_or(r);
        // `org/repo` also names a model pulled as `org/repo:file.gguf` (or `org/repo@rev:…`).
        let source_repo = self
            .source
            .as_deref()
            .and_then(|s| s.split([':', '@']).next());
        self.names.iter().any(|n| n == r)
            || self.source.as_deref() == Some(r)
            || (r.contains('/') && source_repo == Some(r))
            || (r.len() >= 8
                && self
                    .content_id
                    .to_hex()
                    .starts_with(&r.to_ascii_lowercase()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node status: {0}")]
pub struct StatusError(pub String);

impl NodeStatus {
    /// A status as it arrives from a peer's gossip: at most [`MAX_STATUS_SIZE`] bytes, in the
    /// rbee codec, within the limits of [`NodeStatus::validate`].
    pub fn from_wire(data: &[u8]) -> Result<NodeStatus, StatusError> {
        if data.len() > MAX_STATUS_SIZE {
            return Err(StatusError(format!(
                "{} bytes, over the limit of {MAX_STATUS_SIZE}",
                data.len()
            )));
        }
        let status: NodeStatus =
            crate::codec::decode(data).map_err(|e| StatusError(e.to_string()))?;
        status.validate()?;
        Ok(status)
    }

    /// Checks the limits a decoded status must respect.
    pub fn validate(&self) -> Result<(), StatusError> {
        let long = |s: &str| s.len() > MAX_STATUS_STRING;
        if long(&self.name) || self.api_addr.as_deref().is_some_and(long) {
            return Err(StatusError("a name or address is too long".into()));
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(StatusError(format!("{} devices", self.devices.len())));
        }
        if self.loaded.len() > MAX_STATUS_MODELS || self.on_disk.len() > MAX_STATUS_MODELS {
            return Err(StatusError("too many models".into()));
        }
        if self.devices.iter().any(|d| long(&d.name)) || self.loaded.iter().any(|m| long(&m.device))
        {
            return Err(StatusError("a device name is too long".into()));
        }
        for m in &self.on_disk {
            if m.names.len() > MAX_MODEL_NAMES
                || m.names.iter().any(|n| long(n))
                || m.source.as_deref().is_some_and(long)
            {
                return Err(StatusError("a model has too many or too long names".into()));
            }
        }
        if self.presets.len() > MAX_STATUS_PRESETS {
            return Err(StatusError(format!("{} presets", self.presets.len())));
        }
        if self.presets.iter().any(|p| long(&p.name)) {
            return Err(StatusError("a preset name is too long".into()));
        }
        if !self.tokens_per_sec.is_finite() || self.tokens_per_sec < 0.0 {
            return Err(StatusError(
                "tokens_per_sec is not a finite positive number".into(),
            ));
        }
        Ok(())
    }

    /// Free memory on the device with the most of it.
    /// The most memory free on one of its GPUs (every device but `cpu`); 0 without GPUs.
    pub fn max_gpu_free_bytes(&self) -> u64 {
        self.devices
            .iter()
            .filter(|d| d.is_gpu())
            .map(DeviceStatus::free_bytes)
            .max()
            .unwrap_or(0)
    }

    pub fn max_free_bytes(&self) -> u64 {
        self.devices
            .iter()
            .map(DeviceStatus::free_bytes)
            .max()
            .unwrap_or(0)
    }

    /// The stored model a reference names, if this node has one.
    pub fn find_on_disk(&self, reference: &str) -> Option<&DiskModel> {
        self.on_disk.iter().find(|m| m.matches(reference))
    }

    /// The shared preset named `name` (a name as the catalog spells it), if this node has one.
    pub fn find_preset(&self, name: &str) -> Option<&PresetStatus> {
        self.presets.iter().find(|p| p.name == name)
    }

    pub fn loaded(&self, id: &ContentId) -> Option<&LoadedModel> {
        self.loaded.iter().find(|m| &m.content_id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    pub(crate) fn status() -> NodeStatus {
        let id = ContentId::of(b"model");
        NodeStatus {
            name: "box-a".into(),
            api_addr: Some("127.0.0.1:7835".into()),
            seq: 3,
            devices: vec![DeviceStatus {
                name: "cpu".into(),
                budget_bytes: 10,
                used_bytes: 4,
            }],
            loaded: vec![LoadedModel {
                content_id: id,
                device: "cpu".into(),
                queue: 0,
                queue_capacity: 4,
                busy: false,
                live: 0,
                max_live: 1,
            }],
            on_disk: vec![DiskModel {
                content_id: id,
                names: vec!["gemma".into(), "g".into()],
                source: Some("org/repo:file.gguf".into()),
                size: 5,
                shared: true,
            }],
            tokens_per_sec: 12.5,
            presets: vec![PresetStatus {
                name: "pirate".into(),
                id: ContentId::of(b"preset"),
                base: id,
            }],
        }
    }

    #[test]
    fn round_trips_through_the_codec() {
        let s = status();
        let bytes = codec::encode(&s).unwrap();
        assert_eq!(codec::decode::<NodeStatus>(&bytes).unwrap(), s);
        assert!(s.validate().is_ok());
        assert_eq!(s.max_free_bytes(), 6);
    }

    #[test]
    fn references_match_names_sources_and_ids() {
        let s = status();
        let hex = ContentId::of(b"model").to_hex();
        for r in [
            "gemma",
            "g",
            "org/repo:file.gguf",
            "hf:org/repo:file.gguf",
            &hex[..12],
        ] {
            assert!(s.find_on_disk(r).is_some(), "{r}");
        }
        for r in ["gemm", "org/rep", "org/repo:other.gguf", &hex[..4], "other"] {
            assert!(s.find_on_disk(r).is_none(), "{r}");
        }
    }

    #[test]
    fn oversized_statuses_are_refused() {
        let mut s = status();
        s.name = "x".repeat(MAX_STATUS_STRING + 1);
        assert!(s.validate().is_err());
        let mut s = status();
        s.on_disk[0].names = vec!["n".into(); MAX_MODEL_NAMES + 1];
        assert!(s.validate().is_err());
        let mut s = status();
        s.tokens_per_sec = f32::NAN;
        assert!(s.validate().is_err());
        let mut s = status();
        s.presets = vec![s.presets[0].clone(); MAX_STATUS_PRESETS + 1];
        assert!(s.validate().is_err());
        let mut s = status();
        s.presets[0].name = "p".repeat(MAX_STATUS_STRING + 1);
        assert!(s.validate().is_err());
    }
}
