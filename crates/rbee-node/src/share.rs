//! Model sharing between nodes: `/rbee/shard/1` serves manifests and verified shards of the
//! models this node stores; [`pull_from_pool`] fetches a model from every peer that holds it
//! at once, verifying each shard before it is written, resuming from the store's record of
//! verified shards, and dropping peers that send wrong bytes.
//!
//! Wire format (frames from [`rbee_net::frame`]): the caller sends one [`ShardRequest`]; the
//! server answers one [`ShardReply`]; for `Data { len }` exactly `len` raw bytes follow.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use rbee_net::frame::{read_frame, write_frame};
use rbee_net::{Client, PeerId};
use rbee_proto::pool::SHARD_PROTOCOL;
use rbee_proto::{ContentId, Manifest, ShardHash};
use rbee_store::{ImportOutcome, PartialModel, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::NodeContext;
use crate::error::NodeError;
use crate::jobs::{Job, JobEvent};

/// Requests a peer may send before its stream is dropped.
const REQUEST_CAP: usize = 4096;
/// Largest reply frame (a manifest; shard bytes are not framed).
const REPLY_CAP: usize = rbee_proto::codec::MAX_MESSAGE_SIZE;
/// Longest wait for one shard (4 MiB) before the peer counts as stalled.
const SHARD_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests in flight per peer during a pull.
const PER_PEER: usize = 4;
/// Consecutive failures after which a peer is dropped from a pull.
const MAX_PEER_FAILURES: u32 = 3;
/// Bytes written per rate-limiter step.
const CHUNK: usize = 256 << 10;

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
    Error { status: u16, message: String },
}

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
}

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
        status: e.status(),
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
            drop(idx);
            let Ok(_permit) = uploads.try_acquire() else {
                let e = NodeError::Busy {
                    message: format!("node {} is at its upload limit", ctx.name),
                    retry_after_secs: 1,
                };
                return write_frame(stream, &error_reply(&e)).await.is_ok();
            };
            // Re-verified on the way out: a node never serves bytes that rotted on its disk.
            let store = ctx.store.clone();
            let bytes =
                tokio::task::spawn_blocking(move || store.read_shard(&manifest, fi, si, true))
                    .await;
            let mut bytes = match bytes {
                Ok(Ok(b)) => b,
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
            if write_frame(
                stream,
                &ShardReply::Data {
                    len: bytes.len() as u64,
                },
            )
            .await
            .is_err()
            {
                return false;
            }
            for chunk in bytes.chunks(CHUNK) {
                if let Some(l) = limit {
                    l.take(chunk.len()).await;
                }
                if stream.write_all(chunk).await.is_err() {
                    return false;
                }
            }
            if stream.flush().await.is_err() {
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

/// A peer that holds the model being pulled.
struct Source {
    peer: PeerId,
    name: String,
}

async fn request_manifest(net: &Client, peer: PeerId, id: ContentId) -> Result<Manifest, String> {
    let mut s = net
        .open_stream(peer, SHARD_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    write_frame(&mut s, &ShardRequest::Manifest(id))
        .await
        .map_err(|e| e.to_string())?;
    let reply: Option<ShardReply> =
        tokio::time::timeout(Duration::from_secs(30), read_frame(&mut s, REPLY_CAP))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
    let _ = s.close().await;
    match reply {
        Some(ShardReply::Manifest(m)) => {
            m.validate().map_err(|e| format!("invalid manifest: {e}"))?;
            if m.content_id() != id {
                return Err("sent a manifest that does not hash to the content id".into());
            }
            Ok(m)
        }
        Some(ShardReply::Error { message, .. }) => Err(message),
        _ => Err("broke the protocol".into()),
    }
}

async fn fetch_shard(
    stream: &mut rbee_net::Stream,
    hash: ShardHash,
    expected: u64,
) -> Result<Vec<u8>, String> {
    write_frame(stream, &ShardRequest::Shard { hash, range: None })
        .await
        .map_err(|e| e.to_string())?;
    let reply: Option<ShardReply> = read_frame(stream, REPLY_CAP)
        .await
        .map_err(|e| e.to_string())?;
    match reply {
        Some(ShardReply::Data { len }) if len == expected => {
            let mut buf = vec![0u8; expected as usize];
            stream
                .read_exact(&mut buf)
                .await
                .map_err(|e| format!("cut off mid-shard: {e}"))?;
            Ok(buf)
        }
        Some(ShardReply::Data { len }) => {
            Err(format!("announced {len} bytes for a {expected}-byte shard"))
        }
        Some(ShardReply::Error { message, .. }) => Err(message),
        _ => Err("closed the stream".into()),
    }
}

/// Shared state of one pull.
struct PullState {
    queue: VecDeque<(usize, usize)>,
    in_flight: HashMap<(usize, usize), usize>,
    done: HashSet<(usize, usize)>,
    total: usize,
    bytes: u64,
    bad: Vec<String>,
    gone: Vec<String>,
}

/// Pulls model `id` from `sources` into the store, resuming a partial pull. Returns the
/// cataloged model, or an error naming the peers that failed.
async fn pull_model(
    ctx: &NodeContext,
    id: ContentId,
    name_hint: String,
    sources: Vec<Source>,
    job: &Arc<Job>,
) -> Result<ImportOutcome, NodeError> {
    let net = ctx
        .net
        .clone()
        .ok_or_else(|| NodeError::Internal("no pool network".into()))?;
    let mut manifest = None;
    let mut errors = Vec::new();
    for s in &sources {
        match request_manifest(&net, s.peer, id).await {
            Ok(m) => {
                manifest = Some(m);
                break;
            }
            Err(e) => errors.push(format!("{}: {e}", s.name)),
        }
    }
    let manifest = manifest.ok_or_else(|| {
        NodeError::Unavailable(format!(
            "no peer gave the manifest of {}: {}",
            id.short(),
            errors.join("; ")
        ))
    })?;
    let total_bytes = manifest.total_size();
    let store = ctx.store.clone();
    let m2 = manifest.clone();
    let partial: PartialModel = tokio::task::spawn_blocking(move || store.begin_partial(m2))
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
    let missing = partial.missing();
    let already = partial.bytes_verified();
    let partial = Arc::new(Mutex::new(Some(partial)));
    let all_shards: usize = manifest.files.iter().map(|f| f.shards.len()).sum();
    let state = Arc::new(Mutex::new(PullState {
        queue: missing.iter().copied().collect(),
        in_flight: HashMap::new(),
        done: HashSet::new(),
        total: missing.len(),
        bytes: already,
        bad: Vec::new(),
        gone: Vec::new(),
    }));
    let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    job.phase(&format!(
        "pulling {} shards ({} already verified) from {} peer(s): {}",
        missing.len(),
        all_shards - missing.len(),
        sources.len(),
        names.join(", ")
    ));
    let started = Instant::now();
    let mut workers = Vec::new();
    for s in sources {
        for _ in 0..PER_PEER {
            let (net, state, partial, manifest, job, router) = (
                net.clone(),
                state.clone(),
                partial.clone(),
                manifest.clone(),
                job.clone(),
                ctx.router.clone(),
            );
            let (peer, name) = (s.peer, s.name.clone());
            workers.push(tokio::spawn(async move {
                worker(
                    net,
                    peer,
                    name,
                    state,
                    partial,
                    manifest,
                    job,
                    started,
                    total_bytes,
                    router,
                )
                .await;
            }));
        }
    }
    for w in workers {
        let _ = w.await;
    }
    let incomplete = {
        let st = state
            .lock()
            .map_err(|_| NodeError::Internal("pull state poisoned".into()))?;
        if job.is_cancelled() {
            Some(NodeError::BadRequest(
                "cancelled; run the pull again to resume".into(),
            ))
        } else if st.done.len() < st.total {
            let mut why = Vec::new();
            if !st.bad.is_empty() {
                why.push(format!("sent corrupt data: {}", st.bad.join(", ")));
            }
            if !st.gone.is_empty() {
                why.push(format!("failed or left: {}", st.gone.join(", ")));
            }
            Some(NodeError::Unavailable(format!(
                "pull of {} incomplete: {} of {} shards still missing ({}); verified shards are kept, run the pull again to resume",
                id.short(),
                st.total - st.done.len(),
                all_shards,
                why.join("; ")
            )))
        } else {
            None
        }
    };
    if let Some(e) = incomplete {
        return Err(e);
    }
    let partial = partial
        .lock()
        .ok()
        .and_then(|mut p| p.take())
        .ok_or_else(|| NodeError::Internal("pull finished twice".into()))?;
    job.phase("importing");
    let outcome = tokio::task::spawn_blocking(move || partial.finish(&name_hint))
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    net: Client,
    peer: PeerId,
    name: String,
    state: Arc<Mutex<PullState>>,
    partial: Arc<Mutex<Option<PartialModel>>>,
    manifest: Manifest,
    job: Arc<Job>,
    started: Instant,
    total_bytes: u64,
    router: crate::actors::router::RouterHandle,
) {
    let mut stream = None;
    let mut failures = 0;
    loop {
        if job.is_cancelled() {
            return;
        }
        // Next shard: the queue first; when it is empty, race a shard another peer is still
        // fetching (endgame), so one slow peer cannot hold up the end.
        let next = {
            let Ok(mut st) = state.lock() else { return };
            if st.done.len() >= st.total {
                return;
            }
            let pick = st.queue.pop_front().or_else(|| {
                st.in_flight
                    .iter()
                    .filter(|(k, n)| **n < 2 && !st.done.contains(k))
                    .map(|(k, _)| *k)
                    .next()
            });
            if let Some(k) = pick {
                *st.in_flight.entry(k).or_insert(0) += 1;
            }
            pick
        };
        let Some((fi, si)) = next else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Some(entry) = manifest.files.get(fi) else {
            return;
        };
        let (Some(&hash), Some(len)) = (entry.shards.get(si), entry.shard_len(si)) else {
            return;
        };
        if stream.is_none() {
            stream = net.open_stream(peer, SHARD_PROTOCOL).await.ok();
        }
        let result = match stream.as_mut() {
            Some(s) => tokio::time::timeout(SHARD_TIMEOUT, fetch_shard(s, hash, len))
                .await
                .unwrap_or_else(|_| Err("stalled".into())),
            None => Err("unreachable".into()),
        };
        let release = |st: &mut PullState, requeue: bool| {
            if let Some(n) = st.in_flight.get_mut(&(fi, si)) {
                *n -= 1;
                if *n == 0 {
                    st.in_flight.remove(&(fi, si));
                    if requeue && !st.done.contains(&(fi, si)) {
                        st.queue.push_back((fi, si));
                    }
                }
            }
        };
        let bytes = match result {
            Ok(b) => b,
            Err(e) => {
                stream = None;
                failures += 1;
                tracing::debug!(%peer, %name, "shard {} failed: {e}", hash.short());
                let Ok(mut st) = state.lock() else { return };
                release(&mut st, true);
                if failures >= MAX_PEER_FAILURES {
                    if !st.gone.contains(&name) {
                        st.gone.push(name.clone());
                    }
                    return;
                }
                continue;
            }
        };
        // Verify and write off the async threads; the store refuses bytes that do not hash
        // to the manifest's shard hash.
        let p = partial.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut guard = p.lock().map_err(|_| "poisoned".to_string())?;
            let partial = guard.as_mut().ok_or("finished")?;
            if partial.is_verified(fi, si) {
                return Ok(false);
            }
            partial
                .write_shard(fi, si, &bytes)
                .map(|_| true)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let Ok(mut st) = state.lock() else { return };
        match written {
            Ok(fresh) => {
                failures = 0;
                release(&mut st, false);
                if fresh && st.done.insert((fi, si)) {
                    st.bytes += len;
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    let rate = st.bytes as f64 / secs;
                    job.emit(JobEvent::Progress {
                        done: st.bytes,
                        total: total_bytes,
                        rate_bytes_per_sec: rate,
                        eta_secs: (rate > 0.0)
                            .then(|| total_bytes.saturating_sub(st.bytes) as f64 / rate),
                    });
                }
            }
            Err(e) => {
                // Wrong bytes: this peer is out of the pull and avoided for a while.
                tracing::warn!(%peer, %name, "peer sent a corrupt shard, dropping it: {e}");
                release(&mut st, true);
                if !st.bad.contains(&name) {
                    st.bad.push(name.clone());
                }
                router.peer_result(peer, false);
                return;
            }
        }
    }
}

/// The pool-first step of a pull: if peers hold a model that `reference` names, pull it from
/// them. `Ok(None)`: no peer has it (the caller goes on to the hub).
pub async fn pull_from_pool(
    ctx: &NodeContext,
    reference: &str,
    job: &Arc<Job>,
) -> Result<Option<ImportOutcome>, NodeError> {
    let Some(net) = &ctx.net else { return Ok(None) };
    job.phase("asking the pool");
    let mut by_model: HashMap<ContentId, Vec<Source>> = HashMap::new();
    let mut hint = None;
    for p in net.peers() {
        if let Some(m) = p.status.find_on_disk(reference).filter(|m| m.shared) {
            hint.get_or_insert_with(|| m.names.first().cloned().unwrap_or_default());
            by_model.entry(m.content_id).or_default().push(Source {
                peer: p.id,
                name: p.status.name.clone(),
            });
        }
    }
    // The version most peers hold.
    let Some((id, sources)) = by_model.into_iter().max_by_key(|(_, s)| s.len()) else {
        return Ok(None);
    };
    let name = match reference.parse::<rbee_proto::ModelRef>() {
        Ok(rbee_proto::ModelRef::Name(n)) => n,
        _ => hint.filter(|h| !h.is_empty()).unwrap_or_else(|| id.short()),
    };
    pull_model(ctx, id, name, sources, job).await.map(Some)
}
