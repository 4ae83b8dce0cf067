//! A pull from the pool: [`Pool::pull`] fetches a model from every peer that holds it at
//! once over `/rbee/shard/1`, verifying each shard before it is written, resuming from the
//! store's record of verified shards, and dropping (and for a while distrusting) peers that
//! send wrong bytes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use rbee_net::frame::{read_frame, write_frame};
use rbee_net::{Client, PeerId};
use rbee_proto::pool::SHARD_PROTOCOL;
use rbee_proto::{ContentId, Manifest, ShardHash};
use rbee_store::{ImportOutcome, PartialModel, Store, StoreError};

use crate::actors::router::RouterHandle;
use crate::error::NodeError;
use crate::jobs::{Job, JobEvent};
use rbee_proto::pool::ErrorCode;
use rbee_proto::shard::{REPLY_CAP, ShardReply, ShardRequest, manifest_reply};

/// Longest wait for one shard (4 MiB) before the peer counts as stalled.
const SHARD_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests in flight per peer during a pull.
const PER_PEER: usize = 4;
/// How long a worker waits after a peer said it is at its upload limit.
const BUSY_WAIT: Duration = Duration::from_millis(200);
/// How long a pull waits for Kademlia's provider lookup when the pool view names no holder.
const PROVIDER_LOOKUP: Duration = Duration::from_secs(3);
/// ...and when the view already names holders.
const PROVIDER_GRACE: Duration = Duration::from_millis(250);
/// How long a manifest request has to itself before the next source is asked as well.
const MANIFEST_HEDGE: Duration = Duration::from_millis(1500);
/// How long a peer that sent a corrupt shard is left out of this node's later pulls.
const DISTRUST_FOR: Duration = Duration::from_secs(3600);
/// Consecutive failures after which a peer is dropped from a pull.
const MAX_PEER_FAILURES: u32 = 3;
/// New streams a worker lets a peer drop unanswered, in a row, before that counts as a
/// failure (each is followed by a BUSY_WAIT pause).
const MAX_DROPPED_STREAMS: u32 = 8;

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
    manifest_reply(reply, &id)
}

/// Why a shard did not come.
enum FetchError {
    /// The peer is at its upload limit (other pullers): wait and ask again, no fault of its.
    Busy,
    /// The stream ended before any reply: on a new stream, most likely dropped by libp2p
    /// on the peer's side (see `worker`).
    NoReply(String),
    Failed(String),
}

impl From<String> for FetchError {
    fn from(e: String) -> FetchError {
        FetchError::Failed(e)
    }
}

/// Fetches one shard into `buf` (a spare buffer, or empty), resized to the shard.
async fn fetch_shard(
    stream: &mut rbee_net::Stream,
    hash: ShardHash,
    expected: u64,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, FetchError> {
    write_frame(stream, &ShardRequest::Shard { hash, range: None })
        .await
        .map_err(|e| FetchError::NoReply(e.to_string()))?;
    let reply: Option<ShardReply> = read_frame(stream, REPLY_CAP)
        .await
        .map_err(|e| FetchError::NoReply(e.to_string()))?;
    match reply {
        Some(ShardReply::Data { len }) if len == expected => {
            // (`resize` only zero-fills what a spare buffer lacks; `read_to_end` would zero-fill
            // through an iterator that crawls in debug builds.)
            if buf.is_empty() {
                buf = vec![0u8; expected as usize];
            } else {
                buf.resize(expected as usize, 0);
            }
            stream
                .read_exact(&mut buf)
                .await
                .map_err(|e| format!("cut off mid-shard: {e}"))?;
            Ok(buf)
        }
        Some(ShardReply::Data { len }) => {
            Err(format!("announced {len} bytes for a {expected}-byte shard").into())
        }
        Some(ShardReply::Error {
            code: ErrorCode::Busy { .. },
            ..
        }) => Err(FetchError::Busy),
        Some(ShardReply::Error { message, .. }) => Err(message.into()),
        None => Err(FetchError::NoReply("closed the stream".into())),
        _ => Err(String::from("broke the protocol").into()),
    }
}

/// Shared state of one pull.
#[derive(Default)]
struct PullState {
    queue: VecDeque<(usize, usize)>,
    /// Shards being fetched, with how many workers fetch each (2 in the endgame).
    in_flight: HashMap<(usize, usize), usize>,
    /// Shards fetched and waiting for the writer.
    writing: HashSet<(usize, usize)>,
    done: HashSet<(usize, usize)>,
    total: usize,
    bytes: u64,
    /// Peers (by name) in the pull right now.
    active: Vec<String>,
    bad: Vec<String>,
    /// The peers behind `bad`, distrusted by later pulls too.
    bad_ids: Vec<PeerId>,
    gone: Vec<String>,
    /// A local failure (disk full, I/O) that ends the pull whatever the peers do.
    fatal: Option<String>,
}

impl PullState {
    /// Ends `peer`'s part in the pull, recording why in `list` (`bad` or `gone`).
    fn drop_peer(&mut self, name: &str, bad: bool) {
        self.active.retain(|n| n != name);
        let list = if bad { &mut self.bad } else { &mut self.gone };
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    }

    /// Gives back a shard a worker was fetching; back in the queue when nobody else has it.
    fn release(&mut self, key: (usize, usize), requeue: bool) {
        if let Some(n) = self.in_flight.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&key);
                if requeue && !self.done.contains(&key) && !self.writing.contains(&key) {
                    self.queue.push_back(key);
                }
            }
        }
    }

    fn finished(&self) -> bool {
        self.done.len() >= self.total || self.fatal.is_some()
    }

    /// The next shard for a worker: the queue first; when it is empty, a shard another
    /// worker is still fetching (the endgame: at most two race for one), so one slow peer
    /// cannot hold up the end.
    fn take_next(&mut self) -> Option<(usize, usize)> {
        let pick = self.queue.pop_front().or_else(|| {
            self.in_flight
                .iter()
                .filter(|(k, n)| **n < 2 && !self.done.contains(k))
                .map(|(k, _)| *k)
                .min()
        });
        if let Some(k) = pick {
            *self.in_flight.entry(k).or_insert(0) += 1;
        }
        pick
    }

    /// A worker fetched `key`: whether its bytes go to the writer (false when the other
    /// racer of the endgame was first).
    fn fetched(&mut self, key: (usize, usize)) -> bool {
        self.release(key, false);
        !self.done.contains(&key) && self.writing.insert(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(shards: usize) -> PullState {
        PullState {
            queue: (0..shards).map(|i| (0, i)).collect(),
            total: shards,
            active: vec!["a".into(), "b".into()],
            ..PullState::default()
        }
    }

    #[test]
    fn shards_go_out_in_order_then_the_endgame_races_each_at_most_twice() {
        let mut st = state(2);
        assert_eq!(st.take_next(), Some((0, 0)));
        assert_eq!(st.take_next(), Some((0, 1)));
        // Queue empty: the endgame hands out shards still in flight, once more each.
        assert_eq!(st.take_next(), Some((0, 0)));
        assert_eq!(st.take_next(), Some((0, 1)));
        assert_eq!(st.take_next(), None, "never a third racer");
        // The first racer's bytes are written; the second's are dropped.
        assert!(st.fetched((0, 0)));
        assert!(!st.fetched((0, 0)));
        assert!(!st.in_flight.contains_key(&(0, 0)));
    }

    #[test]
    fn a_failed_shard_is_requeued_unless_someone_else_still_has_it() {
        let mut st = state(1);
        let k = st.take_next().unwrap();
        let again = st.take_next().unwrap();
        assert_eq!(k, again, "endgame racer");
        st.release(k, true);
        assert!(st.queue.is_empty(), "the other racer still fetches it");
        st.release(k, true);
        assert_eq!(st.queue, [(0, 0)], "nobody has it: back in the queue");
        // Written already: a late failure does not bring it back.
        let k = st.take_next().unwrap();
        assert!(st.fetched(k));
        st.done.insert(k);
        st.release(k, true);
        assert!(st.queue.is_empty());
        assert!(st.finished());
    }

    #[test]
    fn dropped_peers_are_recorded_once_and_a_local_failure_ends_the_pull() {
        let mut st = state(3);
        st.drop_peer("a", true);
        st.drop_peer("a", true);
        st.drop_peer("b", false);
        assert_eq!(
            (st.bad.as_slice(), st.gone.as_slice()),
            (&["a".to_string()][..], &["b".to_string()][..])
        );
        assert!(st.active.is_empty());
        assert!(!st.finished());
        st.fatal = Some("disk full".into());
        assert!(st.finished());
    }
}

/// A fetched shard on its way to the writer.
struct Fetched {
    key: (usize, usize),
    bytes: Vec<u8>,
    peer: PeerId,
    name: String,
}

/// Fetched shards that may wait for the writer (4 MiB each): bounds a pull's memory while
/// the writer syncs a checkpoint, and lets fetching go on meanwhile.
const WRITE_QUEUE: usize = 8;

/// Everything a pull's workers share.
struct Pull {
    net: Client,
    manifest: Manifest,
    state: Mutex<PullState>,
    /// Shard buffers written out and free for the next fetch. Reusing them spares a fresh
    /// 4 MiB allocation per shard (zeroed by the kernel, then by us) on both threads.
    spare: Mutex<Vec<Vec<u8>>>,
}

/// What this node's pulls share: one lock per model being pulled (a second pull of the
/// same model — a job and a request routed here, say — waits for the first instead of
/// writing the same partial files), and the peers that sent corrupt shards, which later
/// pulls leave out for an hour (`DISTRUST_FOR`).
#[derive(Debug, Default)]
pub struct Pulls {
    locks: Mutex<HashMap<ContentId, Arc<tokio::sync::Mutex<()>>>>,
    /// Peer → until when it is left out.
    distrusted: Mutex<HashMap<PeerId, Instant>>,
}

impl Pulls {
    fn lock_for(&self, id: ContentId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the locks nobody holds or waits for.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(id).or_default().clone()
    }

    fn distrust(&self, peer: PeerId) {
        let mut map = self.distrusted.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(peer, Instant::now() + DISTRUST_FOR);
    }

    /// How long `peer` is still left out of pulls, if it is.
    fn distrusted_for(&self, peer: &PeerId) -> Option<Duration> {
        let mut map = self.distrusted.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, until| *until > now);
        map.get(peer).map(|until| *until - now)
    }
}

/// What a pull from the pool needs: the network, the store it writes to, the router (told
/// about peers that fail), and the state this node's pulls share. The provisioner owns it.
#[derive(Debug, Clone)]
pub struct Pool {
    pub net: Client,
    pub store: Store,
    pub router: RouterHandle,
    pub pulls: Arc<Pulls>,
}

/// Pulls model `id` from `sources` into the store, resuming a partial pull. Returns the
/// cataloged model, or an error naming the peers that failed.
async fn pull_model(
    ctx: &Pool,
    id: ContentId,
    name_hint: String,
    sources: Vec<Source>,
    job: &Arc<Job>,
) -> Result<ImportOutcome, NodeError> {
    let lock = ctx.pulls.lock_for(id);
    // Owned, because the writer takes it along: a pull restarted after a crash waits here
    // until the crashed one's writer has let go of the partial files.
    let one_at_a_time = match lock.clone().try_lock_owned() {
        Ok(guard) => guard,
        Err(_) => {
            job.phase("waiting for the pull of the same model already under way");
            lock.lock_owned().await
        }
    };
    // The pull this one waited for may have brought the model.
    if let Ok(found) = ctx.store.resolve(&rbee_proto::ModelRef::ContentId(id)) {
        return Ok(ImportOutcome {
            content_id: id,
            name: found.entry.name,
            manifest: found.manifest,
            already_present: true,
        });
    }
    let net = ctx.net.clone();
    // The manifest from the first source that answers. Sources are asked one after another,
    // the next as soon as one fails, or after MANIFEST_HEDGE while one says nothing (a
    // frozen peer would otherwise cost the request's 30 s timeout). A failed source is
    // asked once more after a pause: a connection closing under the request is not the
    // end of that source.
    let ask = |i: usize, pause: Duration| {
        let (net, peer) = (net.clone(), sources[i].peer);
        async move {
            tokio::time::sleep(pause).await;
            (i, request_manifest(&net, peer, id).await)
        }
    };
    let mut asking = futures::stream::FuturesUnordered::new();
    let mut tries = vec![0u32; sources.len()];
    let mut next = 0;
    let mut errors = Vec::new();
    let manifest = loop {
        if asking.is_empty() {
            if next == sources.len() {
                break None;
            }
            asking.push(ask(next, Duration::ZERO));
            tries[next] += 1;
            next += 1;
        }
        let more = next < sources.len();
        tokio::select! {
            Some((i, answer)) = asking.next() => match answer {
                Ok(m) => break Some(m),
                Err(e) if tries[i] < 2 => {
                    tracing::debug!(peer = %sources[i].name, "manifest request failed ({e}); again");
                    tries[i] += 1;
                    asking.push(ask(i, BUSY_WAIT));
                }
                Err(e) => errors.push(format!("{}: {e}", sources[i].name)),
            },
            () = tokio::time::sleep(MANIFEST_HEDGE), if more => {
                asking.push(ask(next, Duration::ZERO));
                tries[next] += 1;
                next += 1;
            }
        }
    };
    drop(asking);
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
    let partial: PartialModel = tokio::task::spawn_blocking(move || store.begin_partial_as(id, m2))
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
    let missing = partial.missing();
    let already = partial.bytes_verified();
    let all_shards: usize = manifest.files.iter().map(|f| f.shards.len()).sum();
    let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    job.phase(&format!(
        "pulling {} shards ({} already verified) from {} peer(s): {}",
        missing.len(),
        all_shards - missing.len(),
        sources.len(),
        names.join(", ")
    ));
    let (writes, write_rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
    let pull = Arc::new(Pull {
        net,
        manifest,
        state: Mutex::new(PullState {
            queue: missing.iter().copied().collect(),
            in_flight: HashMap::new(),
            writing: HashSet::new(),
            done: HashSet::new(),
            total: missing.len(),
            bytes: already,
            active: names,
            bad: Vec::new(),
            bad_ids: Vec::new(),
            gone: Vec::new(),
            fatal: None,
        }),
        spare: Mutex::new(Vec::new()),
    });
    let started = Instant::now();
    // One writer owns the partial model: it verifies each shard against the manifest, writes
    // it, and checkpoints, while the workers go on fetching.
    let writer = {
        let (pull, job, router) = (pull.clone(), job.clone(), ctx.router.clone());
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = one_at_a_time;
            write_shards(
                partial,
                write_rx,
                &pull,
                &job,
                &router,
                started,
                total_bytes,
            )
        })
    };
    let mut workers = tokio::task::JoinSet::new();
    for s in sources {
        for _ in 0..PER_PEER {
            let (pull, job, writes) = (pull.clone(), job.clone(), writes.clone());
            let (peer, name) = (s.peer, s.name.clone());
            workers.spawn(async move { worker(&pull, &writes, peer, &name, &job).await });
        }
    }
    // The writer's queue closes when the last worker (holding the last sender) is gone.
    drop(writes);
    // Once every shard is in (or the pull failed or was cancelled), workers still waiting on
    // a frozen or unreachable peer are cut off rather than left to run out their timeouts
    // (a minute for a fetch): the shards they held were raced and written by others.
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            next = workers.join_next() => {
                if next.is_none() {
                    break;
                }
            }
            _ = check.tick() => {
                let over = job.is_cancelled()
                    || pull.state.lock().map_or(true, |st| st.finished());
                if over {
                    workers.abort_all();
                }
            }
        }
    }
    let partial = writer
        .await
        .map_err(|e| NodeError::Internal(format!("the pull's writer failed: {e}")))?;
    let st = std::mem::take(
        &mut *pull
            .state
            .lock()
            .map_err(|_| NodeError::Internal("pull state poisoned".into()))?,
    );
    for peer in &st.bad_ids {
        ctx.pulls.distrust(*peer);
    }
    if let Some(e) = st.fatal {
        return Err(NodeError::Unavailable(format!(
            "pull of {} stopped: {e}; verified shards are kept, run the pull again to resume",
            id.short()
        )));
    }
    if job.is_cancelled() {
        return Err(NodeError::Cancelled(
            "cancelled; run the pull again to resume".into(),
        ));
    }
    if st.done.len() < st.total {
        let mut why = Vec::new();
        if !st.bad.is_empty() {
            why.push(format!("sent corrupt data: {}", st.bad.join(", ")));
        }
        if !st.gone.is_empty() {
            why.push(format!("failed or left: {}", st.gone.join(", ")));
        }
        return Err(NodeError::Unavailable(format!(
            "pull of {} incomplete: {} of {} shards still missing ({}); verified shards are kept, run the pull again to resume",
            id.short(),
            st.total - st.done.len(),
            all_shards,
            why.join("; ")
        )));
    }
    job.phase("importing");
    let transfer = started.elapsed();
    let outcome = tokio::task::spawn_blocking(move || partial.finish(&name_hint))
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
    let fetched = total_bytes.saturating_sub(already);
    tracing::info!(
        model = %id.short(),
        "pulled {:.1} MB in {:.2}s ({:.0} MB/s), then verified and committed in {:.2}s",
        fetched as f64 / 1e6,
        transfer.as_secs_f64(),
        fetched as f64 / 1e6 / transfer.as_secs_f64().max(1e-6),
        (started.elapsed() - transfer).as_secs_f64()
    );
    Ok(outcome)
}

/// The writer of a pull (a blocking thread): verifies and writes every fetched shard, marks
/// peers that sent wrong bytes, and reports progress. Returns the partial model when the
/// workers are done.
fn write_shards(
    mut partial: PartialModel,
    mut fetched: tokio::sync::mpsc::Receiver<Fetched>,
    pull: &Pull,
    job: &Job,
    router: &RouterHandle,
    started: Instant,
    total_bytes: u64,
) -> PartialModel {
    while let Some(Fetched {
        key: (fi, si),
        bytes,
        peer,
        name,
    }) = fetched.blocking_recv()
    {
        let result = if partial.is_verified(fi, si) {
            Ok(false)
        } else {
            partial.write_shard(fi, si, &bytes).map(|_| true)
        };
        let len = bytes.len() as u64;
        if let Ok(mut spare) = pull.spare.lock()
            && spare.len() < WRITE_QUEUE
        {
            spare.push(bytes);
        }
        let Ok(mut st) = pull.state.lock() else { break };
        st.writing.remove(&(fi, si));
        match result {
            Ok(fresh) => {
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
                        peers: Some(st.active.clone()),
                    });
                }
            }
            Err(StoreError::ShardMismatch { .. }) => {
                // Wrong bytes: this peer is out of the pull and avoided for a while.
                tracing::warn!(%peer, %name, "peer sent a corrupt shard, dropping it");
                st.drop_peer(&name, true);
                if !st.bad_ids.contains(&peer) {
                    st.bad_ids.push(peer);
                }
                if !st.done.contains(&(fi, si)) && !st.in_flight.contains_key(&(fi, si)) {
                    st.queue.push_back((fi, si));
                }
                router.peer_result(peer, false);
            }
            Err(e) => {
                tracing::error!("pull stopped, cannot write: {e}");
                st.fatal = Some(e.to_string());
            }
        }
    }
    partial
}

/// One of a peer's fetchers: takes shards from the queue (or races a straggler in the
/// endgame) and hands what it fetched to the writer, until the pull is done or the peer
/// is out.
async fn worker(
    pull: &Pull,
    writes: &tokio::sync::mpsc::Sender<Fetched>,
    peer: PeerId,
    name: &str,
    job: &Job,
) {
    let mut stream = None;
    let mut failures = 0;
    // Whether the current stream has carried a reply, and how many new streams in a row
    // the peer dropped unanswered.
    let mut answered = false;
    let mut dropped = 0;
    loop {
        if job.is_cancelled() {
            return;
        }
        // Next shard: the queue first; when it is empty, race a shard another peer is still
        // fetching (endgame), so one slow peer cannot hold up the end.
        let next = {
            let Ok(mut st) = pull.state.lock() else {
                return;
            };
            if st.finished() || !st.active.iter().any(|n| n == name) {
                return;
            }
            st.take_next()
        };
        let Some((fi, si)) = next else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Some(entry) = pull.manifest.files.get(fi) else {
            return;
        };
        let (Some(&hash), Some(len)) = (entry.shards.get(si), entry.shard_len(si)) else {
            return;
        };
        if stream.is_none() {
            stream = pull.net.open_stream(peer, SHARD_PROTOCOL).await.ok();
            answered = false;
        }
        let fresh = stream.is_some() && !answered;
        let result = match stream.as_mut() {
            Some(s) => {
                let buf = pull
                    .spare
                    .lock()
                    .ok()
                    .and_then(|mut b| b.pop())
                    .unwrap_or_default();
                tokio::time::timeout(SHARD_TIMEOUT, fetch_shard(s, hash, len, buf))
                    .await
                    .unwrap_or_else(|_| Err(String::from("stalled").into()))
            }
            None => Err(String::from("unreachable").into()),
        };
        let fetched = {
            let Ok(mut st) = pull.state.lock() else {
                return;
            };
            match result {
                Ok(bytes) => {
                    (failures, dropped, answered) = (0, 0, true);
                    if !st.fetched((fi, si)) {
                        continue; // the other racer of the endgame was first
                    }
                    Some(bytes)
                }
                Err(FetchError::Busy) => {
                    answered = true;
                    st.release((fi, si), true);
                    None
                }
                // libp2p hands a peer's inbound streams to its acceptor through a one-slot
                // channel and drops those that arrive while the slot is taken, which happens
                // when several workers open streams at once to a busy node. Not the peer's
                // fault: open another after a pause, a few times before it counts.
                Err(FetchError::NoReply(e)) if fresh && dropped < MAX_DROPPED_STREAMS => {
                    stream = None;
                    dropped += 1;
                    tracing::debug!(%peer, %name, "new stream dropped unanswered ({e}); again");
                    st.release((fi, si), true);
                    None
                }
                Err(FetchError::NoReply(e) | FetchError::Failed(e)) => {
                    stream = None;
                    failures += 1;
                    tracing::debug!(%peer, %name, "shard {} failed: {e}", hash.short());
                    st.release((fi, si), true);
                    if failures >= MAX_PEER_FAILURES {
                        st.drop_peer(name, false);
                        return;
                    }
                    continue;
                }
            }
        };
        // The peer was at its upload limit, or dropped a new stream: no fault of its; ask
        // again in a moment.
        let Some(bytes) = fetched else {
            tokio::time::sleep(BUSY_WAIT).await;
            continue;
        };
        let item = Fetched {
            key: (fi, si),
            bytes,
            peer,
            name: name.to_string(),
        };
        if writes.send(item).await.is_err() {
            return;
        }
    }
}

impl Pool {
    /// The pool step of a pull: if peers hold a model that `reference` names, pull it from
    /// them. `Ok(None)`: no peer has it (the caller goes on to the hub).
    pub async fn pull(
        &self,
        reference: &str,
        job: &Arc<Job>,
    ) -> Result<Option<ImportOutcome>, NodeError> {
        pull_from_pool(self, reference, job).await
    }
}

async fn pull_from_pool(
    ctx: &Pool,
    reference: &str,
    job: &Arc<Job>,
) -> Result<Option<ImportOutcome>, NodeError> {
    let net = &ctx.net;
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
    // The version most peers hold; by content id, also the holders that only Kademlia knows
    // (provider records reach beyond the gossip view).
    let asked_id = match reference.parse::<rbee_proto::ModelRef>() {
        Ok(rbee_proto::ModelRef::ContentId(id)) => Some(id),
        _ => None,
    };
    let (id, mut sources) = match by_model.into_iter().max_by_key(|(_, s)| s.len()) {
        Some(best) => best,
        None => match asked_id {
            Some(id) => (id, Vec::new()),
            None => return Ok(None),
        },
    };
    // Peers in the view are enough to start; Kademlia then only gets a moment to add
    // holders beyond the view. With none in view it is the only hope, and gets longer.
    let within = if sources.is_empty() {
        PROVIDER_LOOKUP
    } else {
        PROVIDER_GRACE
    };
    if let Ok(providers) = net.find_providers(id, within).await {
        for peer in providers {
            if !sources.iter().any(|s| s.peer == peer) {
                let name = net
                    .peer(&peer)
                    .map_or_else(|| peer.to_string(), |p| p.status.name);
                sources.push(Source { peer, name });
            }
        }
    }
    // Peers that sent this node corrupt shards lately are left out.
    let mut avoided = Vec::new();
    sources.retain(|s| match ctx.pulls.distrusted_for(&s.peer) {
        Some(left) => {
            avoided.push((s.name.clone(), left));
            false
        }
        None => true,
    });
    let avoided_names = || {
        let names: Vec<&str> = avoided.iter().map(|(n, _)| n.as_str()).collect();
        names.join(", ")
    };
    if !avoided.is_empty() {
        tracing::warn!(
            model = %id.short(),
            peers = %avoided_names(),
            "leaving out peers that sent corrupt data"
        );
    }
    if sources.is_empty() {
        if avoided.is_empty() {
            return Ok(None);
        }
        if let Ok(rbee_proto::ModelRef::HuggingFace(_)) = reference.parse() {
            job.phase(&format!(
                "not pulling from {}: sent corrupt data lately",
                avoided_names()
            ));
            return Ok(None);
        }
        let minutes = avoided
            .iter()
            .map(|(_, left)| left.as_secs().div_ceil(60))
            .min()
            .unwrap_or(0);
        return Err(NodeError::Unavailable(format!(
            "the only peers holding `{reference}` ({}) sent this node corrupt data; its pulls leave them out for another {minutes} min. Run `rbee-node models verify` on those nodes, or pull the model by its HuggingFace reference",
            avoided_names()
        )));
    }
    let name = match reference.parse::<rbee_proto::ModelRef>() {
        Ok(rbee_proto::ModelRef::Name(n)) => n,
        _ => hint.filter(|h| !h.is_empty()).unwrap_or_else(|| id.short()),
    };
    match pull_model(ctx, id, name, sources, job).await {
        Ok(outcome) => Ok(Some(outcome)),
        // A failure among the rest is only half the story when holders were left out.
        Err(e) if !avoided.is_empty() => Err(NodeError::Unavailable(format!(
            "{e}; left out of this pull: {} (sent this node corrupt data)",
            avoided_names()
        ))),
        Err(e) => Err(e),
    }
}
