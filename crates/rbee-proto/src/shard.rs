//! `/rbee/shard/1`: a node asks a peer for a model's manifest or its shards. Each request
//! frame gets one reply frame; after `Data { len }` exactly `len` raw bytes follow
//! (docs/PROTOCOL.md).

use serde::{Deserialize, Serialize};

use crate::pool::ErrorCode;
use crate::{ContentId, Manifest, ShardHash};

/// Largest request frame a peer may send on `/rbee/shard/1`.
pub const REQUEST_CAP: usize = 4096;
/// Largest reply frame (a manifest; shard bytes are not framed).
pub const REPLY_CAP: usize = crate::codec::MAX_MESSAGE_SIZE;

#[derive(Debug, Serialize, Deserialize)]
pub enum ShardRequest {
    Manifest(ContentId),
    /// A shard by hash; `range` is (offset, length) within it.
    Shard {
        hash: ShardHash,
        range: Option<(u64, u64)>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ShardReply {
    Manifest(Manifest),
    Data { len: u64 },
    Error { code: ErrorCode, message: String },
}

/// What a peer's answer to `ShardRequest::Manifest(id)` is worth: a manifest that is valid
/// and hashes to `id`, or why not.
pub fn manifest_reply(reply: Option<ShardReply>, id: &ContentId) -> Result<Manifest, String> {
    match reply {
        Some(ShardReply::Manifest(m)) => {
            m.validate().map_err(|e| format!("invalid manifest: {e}"))?;
            // The current rule, or the legacy one of a model cataloged before it.
            if !m.matches_id(id) {
                return Err("sent a manifest that does not hash to the content id".into());
            }
            Ok(m)
        }
        Some(ShardReply::Error { message, .. }) => Err(message),
        _ => Err("broke the protocol".into()),
    }
}
