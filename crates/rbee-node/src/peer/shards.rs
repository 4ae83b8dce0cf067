//! The server of `/rbee/shard/1`: manifests and verified shards of the models this node
//! stores and shares, at most `max_uploads` at once, paced to `max_upload_rate`, and the
//! definitions of the presets it shares. The messages are `rbee_proto::shard`'s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use rbee_net::frame::{read_frame, write_frame};
use rbee_net::{Client, PeerId};
use rbee_proto::pool::SHARD_PROTOCOL;
use rbee_proto::{ContentId, Manifest, ShardHash};
use rbee_store::{Store, StoreError};
use tokio::sync::Semaphore;

use crate::NodeContext;
use crate::error::NodeError;
use rbee_proto::shard::{MAX_PRESET_BYTES, REQUEST_CAP, ShardReply, ShardRequest};

/// How long one write of an upload may wait for the puller to take it.
const UPLOAD_STALL: Duration = Duration::from_secs(20);
/// Bytes written per rate-limiter step.
const CHUNK: usize = 256 << 10;

/// Caps upload bandwidth across all uploads of this node.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: f64,
    state: tokio::sync::Mutex<(Instant, f64)>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec: bytes_per_sec as f64,
            state: tokio::sync::Mutex::new((Instant::now(), 0.0)),
        }
    }

    /// Waits until `n` more bytes may be sent.
    async fn take(&self, n: usize) {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        // Credit accrues for at most a quarter second, so bursts stay short.
        let credit = (st.1 + now.duration_since(st.0).as_secs_f64() * self.bytes_per_sec)
            .min(self.bytes_per_sec / 4.0);
        let after = credit - n as f64;
        *st = (now, after);
        if after < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-after / self.bytes_per_sec)).await;
        }
    }
}

/// Where each shard of every shared model is, rebuilt from the catalog when a hash is missing
/// (at most once a second).
#[derive(Default)]
struct ShardIndex {
    built: Option<Instant>,
    /// Each shard's model (shared, not copied per shard) and its file and shard index.
    shards: HashMap<ShardHash, (Arc<Manifest>, usize, usize)>,
    manifests: HashMap<ContentId, Arc<Manifest>>,
    /// When each shard was last read back and found intact. A model is usually pulled by
    /// several peers in a row; re-hashing every shard for each costs a core's worth of time
    /// per pull, while disk rot is slow (and every puller verifies what it gets anyway).
    checked: HashMap<ShardHash, Instant>,
}

/// How long a shard read back intact is served without hashing it again.
const RECHECK_AFTER: Duration = Duration::from_secs(600);

impl ShardIndex {
    fn rebuild(&mut self, store: &Store, unshared: &[String]) -> Result<(), StoreError> {
        self.shards.clear();
        self.manifests.clear();
        for rec in store.list()? {
            if unshared.iter().any(|n| rec.entry.answers_to(n)) {
                continue;
            }
            let manifest = Arc::new(rec.manifest);
            for (fi, f) in manifest.files.iter().enumerate() {
                for (si, h) in f.shards.iter().enumerate() {
                    self.shards.insert(*h, (manifest.clone(), fi, si));
                }
            }
            self.manifests.insert(rec.entry.content_id, manifest);
        }
        let shards = &self.shards;
        self.checked.retain(|h, _| shards.contains_key(h));
        self.built = Some(Instant::now());
        Ok(())
    }

    fn stale(&self) -> bool {
        self.built
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
    }
}

fn error_reply(e: &NodeError) -> ShardReply {
    ShardReply::Error {
        code: e.wire_code(),
        message: e.to_string(),
    }
}

/// Serves `/rbee/shard/1` until the network stops.
pub async fn serve_shards(ctx: Arc<NodeContext>, net: Client) {
    let mut incoming = match net.accept(SHARD_PROTOCOL) {
        Ok(i) => i,
        Err(e) => return tracing::error!("cannot serve {SHARD_PROTOCOL}: {e}"),
    };
    let uploads = Arc::new(Semaphore::new(ctx.config.max_uploads.max(1)));
    let index = Arc::new(tokio::sync::Mutex::new(ShardIndex::default()));
    let limit = ctx
        .config
        .max_upload_rate
        .map(|r| Arc::new(RateLimit::new(r)));
    while let Some((peer, mut stream)) = incoming.next().await {
        let (ctx, uploads, index, limit) =
            (ctx.clone(), uploads.clone(), index.clone(), limit.clone());
        tokio::spawn(async move {
            for _ in 0..REQUEST_CAP {
                let req: ShardRequest = match tokio::time::timeout(
                    Duration::from_secs(30),
                    read_frame(&mut stream, 4096),
                )
                .await
                {
                    Ok(Ok(Some(r))) => r,
                    _ => break,
                };
                let ok = serve_one(
                    &ctx,
                    peer,
                    &mut stream,
                    req,
                    &uploads,
                    &index,
                    limit.as_deref(),
                )
                .await;
                if !ok {
                    break;
                }
            }
            let _ = stream.close().await;
        });
    }
}

/// Answers one request; false when the stream is no longer usable.
/// The canonical definition of the shared preset whose content id is `id`.
async fn shared_preset(ctx: &NodeContext, id: ContentId) -> Result<Vec<u8>, NodeError> {
    crate::preset::all_async(&ctx.store)
        .await?
        .into_iter()
        .filter(|(name, _)| !ctx.config.not_shared.iter().any(|n| n == name))
        .map(|(_, p)| p.canonical())
        .find(|bytes| ContentId::of(bytes) == id && bytes.len() <= MAX_PRESET_BYTES)
        .ok_or_else(|| {
            NodeError::NotFound(format!(
                "node {} does not share preset {}",
                ctx.name,
                id.short()
            ))
        })
}

async fn serve_one(
    ctx: &NodeContext,
    peer: PeerId,
    stream: &mut rbee_net::Stream,
    req: ShardRequest,
    uploads: &Semaphore,
    index: &tokio::sync::Mutex<ShardIndex>,
    limit: Option<&RateLimit>,
) -> bool {
    let store = ctx.store.clone();
    let unshared = ctx.config.not_shared.clone();
    let mut idx = index.lock().await;
    let known = match &req {
        ShardRequest::Manifest(id) => idx.manifests.contains_key(id),
        ShardRequest::Shard { hash, .. } => idx.shards.contains_key(hash),
        // Presets are read from the store when asked for, not indexed.
        ShardRequest::Preset(_) => true,
    };
    if !known && idx.stale() {
        let mut fresh = std::mem::take(&mut *idx);
        let result =
            tokio::task::spawn_blocking(move || fresh.rebuild(&store, &unshared).map(|_| fresh))
                .await;
        match result {
            Ok(Ok(f)) => *idx = f,
            _ => tracing::warn!("cannot index the catalog for sharing"),
        }
    }
    match req {
        ShardRequest::Preset(id) => {
            drop(idx);
            let reply = match shared_preset(ctx, id).await {
                Ok(bytes) => ShardReply::Preset(bytes),
                Err(e) => error_reply(&e),
            };
            write_frame(stream, &reply).await.is_ok()
        }
        ShardRequest::Manifest(id) => {
            let reply = match idx.manifests.get(&id) {
                Some(m) => ShardReply::Manifest(Manifest::clone(m)),
                None => error_reply(&NodeError::NotFound(format!(
                    "node {} does not share model {}",
                    ctx.name,
                    id.short()
                ))),
            };
            drop(idx);
            write_frame(stream, &reply).await.is_ok()
        }
        ShardRequest::Shard { hash, range } => {
            let Some((manifest, fi, si)) = idx.shards.get(&hash).cloned() else {
                drop(idx);
                let e =
                    NodeError::NotFound(format!("node {} has no shard {}", ctx.name, hash.short()));
                return write_frame(stream, &error_reply(&e)).await.is_ok();
            };
            let verify = idx
                .checked
                .get(&hash)
                .is_none_or(|t| t.elapsed() > RECHECK_AFTER);
            drop(idx);
            let Ok(_permit) = uploads.try_acquire() else {
                let e = NodeError::Busy {
                    message: format!("node {} is at its upload limit", ctx.name),
                    retry_after_secs: 1,
                };
                return write_frame(stream, &error_reply(&e)).await.is_ok();
            };
            // Re-verified on the way out (unless it was a moment ago): a node does not serve
            // bytes that rotted on its disk.
            let store = ctx.store.clone();
            let bytes =
                tokio::task::spawn_blocking(move || store.read_shard(&manifest, fi, si, verify))
                    .await;
            let mut bytes = match bytes {
                Ok(Ok(b)) => {
                    if verify {
                        index.lock().await.checked.insert(hash, Instant::now());
                    }
                    b
                }
                Ok(Err(e)) => {
                    tracing::error!(%peer, "not serving shard {}: {e}", hash.short());
                    return write_frame(stream, &error_reply(&e.into())).await.is_ok();
                }
                Err(_) => return false,
            };
            if let Some((offset, len)) = range {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start
                    .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
                    .min(bytes.len());
                bytes = bytes[start..end].to_vec();
            }
            if ctx.config.fault_corrupt_uploads
                && let Some(b) = bytes.get_mut(0)
            {
                *b ^= 0x01;
            }
            // Every write has UPLOAD_STALL to go through: a puller that stops reading must
            // not keep the upload slot for as long as its connection stays open.
            let header = ShardReply::Data {
                len: bytes.len() as u64,
            };
            if !unstalled(peer, write_frame(stream, &header)).await {
                return false;
            }
            for chunk in bytes.chunks(CHUNK) {
                if let Some(l) = limit {
                    l.take(chunk.len()).await;
                }
                if !unstalled(peer, stream.write_all(chunk)).await {
                    return false;
                }
            }
            if !unstalled(peer, stream.flush()).await {
                return false;
            }
            ctx.metrics
                .shards_served
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ctx.metrics
                .shard_bytes_served
                .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            true
        }
    }
}

/// Whether an upload's write went through within [`UPLOAD_STALL`].
async fn unstalled<E>(peer: PeerId, write: impl Future<Output = Result<(), E>>) -> bool {
    match tokio::time::timeout(UPLOAD_STALL, write).await {
        Ok(result) => result.is_ok(),
        Err(_) => {
            tracing::warn!(%peer, "peer took nothing for {}s; dropping its upload", UPLOAD_STALL.as_secs());
            false
        }
    }
}
