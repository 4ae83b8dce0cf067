//! `/rbee/shard/1`: a node asks a peer for a model's manifest, its shards, or a preset's
//! definition. Each request frame gets one reply frame; after `Data { len }` exactly `len` raw
//! bytes follow (docs/PROTOCOL.md).

use serde::{Deserialize, Serialize};

use crate::pool::ErrorCode;
use crate::{ContentId, Manifest, ShardHash};

/// Largest request frame a peer may send on `/rbee/shard/1`.
pub const REQUEST_CAP: usize = 4096;
/// Largest reply frame (a manifest; shard bytes are not framed).
pub const REPLY_CAP: usize = crate::codec::MAX_MESSAGE_SIZE;
/// Largest preset definition a node sends or accepts (a Modelfile's worth of JSON; the
/// store keeps at most 1 MiB).
pub const MAX_PRESET_BYTES: usize = 1 << 20;
/// Largest reply frame to `ShardRequest::Preset` (the definition and the frame's envelope).
pub const PRESET_REPLY_CAP: usize = MAX_PRESET_BYTES + 64;

#[derive(Debug, Serialize, Deserialize)]
pub enum ShardRequest {
    Manifest(ContentId),
    /// A shard by hash; `range` is (offset, length) within it.
    Shard {
        hash: ShardHash,
        range: Option<(u64, u64)>,
    },
    /// A preset's definition by its content id (the BLAKE3 of its canonical JSON). Added
    /// after the first two: a node of the earlier `/rbee/pool/2` never sees a preset in a
    /// status, so it is never asked.
    Preset(ContentId),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ShardReply {
    Manifest(Manifest),
    Data {
        len: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// A preset's definition: canonical JSON that hashes to the id asked for.
    Preset(Vec<u8>),
}

/// What a peer's answer to `ShardRequest::Preset(id)` is worth: the definition's bytes when
/// they are within [`MAX_PRESET_BYTES`] and hash to `id`, or why not.
pub fn preset_reply(reply: Option<ShardReply>, id: &ContentId) -> Result<Vec<u8>, String> {
    match reply {
        Some(ShardReply::Preset(bytes)) => {
            if bytes.len() > MAX_PRESET_BYTES {
                return Err(format!(
                    "sent a preset of {} bytes, over the limit of {MAX_PRESET_BYTES}",
                    bytes.len()
                ));
            }
            if ContentId::of(&bytes) != *id {
                return Err("sent a preset that does not hash to its content id".into());
            }
            Ok(bytes)
        }
        Some(ShardReply::Error { message, .. }) => Err(message),
        _ => Err("broke the protocol".into()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preset_is_taken_only_when_it_hashes_to_the_id_asked_for() {
        let body = br#"{"base":"00","from":"m"}"#.to_vec();
        let id = ContentId::of(&body);
        assert_eq!(
            preset_reply(Some(ShardReply::Preset(body.clone())), &id).unwrap(),
            body
        );
        let mut forged = body.clone();
        forged[2] ^= 1;
        let e = preset_reply(Some(ShardReply::Preset(forged)), &id).unwrap_err();
        assert!(e.contains("does not hash"), "{e}");
        let huge = vec![b' '; MAX_PRESET_BYTES + 1];
        let e = preset_reply(
            Some(ShardReply::Preset(huge.clone())),
            &ContentId::of(&huge),
        )
        .unwrap_err();
        assert!(e.contains("over the limit"), "{e}");
        assert!(preset_reply(None, &id).is_err());
        let e = preset_reply(
            Some(ShardReply::Error {
                code: ErrorCode::NotFound,
                message: "no such preset".into(),
            }),
            &id,
        )
        .unwrap_err();
        assert_eq!(e, "no such preset");
    }

    #[test]
    fn a_preset_reply_fits_its_frame_cap() {
        let bytes =
            crate::codec::encode(&ShardReply::Preset(vec![0xff; MAX_PRESET_BYTES])).unwrap();
        assert!(bytes.len() <= PRESET_REPLY_CAP, "{}", bytes.len());
    }
}
