//! What this node does for its peers: serves `/rbee/infer/2`, `/rbee/embed/1` and
//! `/rbee/shard/1`, and publishes its status. Each server runs under `tasks::supervise`.
//!
//! The two request servers (`infer`, `embed`) share how they accept streams (at most
//! `MAX_INBOUND` each at once, more refused as busy) and how they relay what happens before
//! a request starts (a pull from the pool, a load) to the caller as it happens.

pub mod embed;
pub mod infer;
pub mod shards;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use rbee_net::frame::{read_frame, write_frame};
use rbee_net::{Client, PeerId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::NodeContext;
use crate::error::NodeError;
use crate::jobs::{Job, JobEvent};

/// Requests of one protocol served to peers at once; more are refused with "busy".
pub(crate) const MAX_INBOUND: usize = 64;
/// How long a peer has to send its request after opening the stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a peer's one request frame (at most `cap` bytes, within [`REQUEST_TIMEOUT`]) and
/// checks it by `check`, the HTTP API's rules; a malformed or refused request is answered with
/// `error(…)` as its one frame. `None`: nothing to serve.
pub(crate) async fn read_request<R: DeserializeOwned, F: Serialize>(
    stream: &mut rbee_net::Stream,
    peer: PeerId,
    cap: usize,
    check: impl Fn(&R) -> Result<(), String>,
    error: fn(&NodeError) -> F,
) -> Option<R> {
    let refuse = |why: String| NodeError::BadRequest(why);
    let request: R = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(stream, cap)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "malformed request: {e}");
            let _ = write_frame(stream, &error(&refuse(format!("malformed request: {e}")))).await;
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "peer sent no request in time");
            return None;
        }
    };
    if let Err(why) = check(&request) {
        tracing::debug!(%peer, "refused a request: {why}");
        let _ = write_frame(stream, &error(&refuse(why))).await;
        return None;
    }
    Some(request)
}

/// Accepts `protocol` streams until the network stops, serving each with `serve` while fewer
/// than [`MAX_INBOUND`] run; beyond that a stream gets `busy(error)` as its one frame.
pub(crate) async fn accept<S, Fut, F>(
    ctx: Arc<NodeContext>,
    net: Client,
    protocol: &'static str,
    serve: S,
    busy: fn(&NodeError) -> F,
) where
    S: Fn(Arc<NodeContext>, PeerId, rbee_net::Stream) -> Fut,
    Fut: Future<Output = rbee_net::Stream> + Send + 'static,
    F: Serialize + Send + Sync + 'static,
{
    let mut incoming = match net.accept(protocol) {
        Ok(i) => i,
        Err(e) => return tracing::error!("cannot serve {protocol}: {e}"),
    };
    let slots = Arc::new(Semaphore::new(MAX_INBOUND));
    while let Some((peer, mut stream)) = incoming.next().await {
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let served = serve(ctx.clone(), peer, stream);
                tokio::spawn(async move {
                    let mut stream = served.await;
                    let _ = stream.close().await;
                    drop(permit);
                });
            }
            Err(_) => {
                let e = NodeError::Busy {
                    message: format!(
                        "node {} serves {MAX_INBOUND} peer requests already",
                        ctx.name
                    ),
                    retry_after_secs: 1,
                };
                let frame = busy(&e);
                tokio::spawn(async move {
                    let _ = write_frame(&mut stream, &frame).await;
                    let _ = stream.close().await;
                });
            }
        }
    }
}

/// How a protocol's frames tell a caller what happens before its request starts.
pub(crate) struct ProgressFrames<F> {
    pub phase: fn(String) -> F,
    pub progress: fn(u64, u64, Vec<String>) -> F,
}

impl<F> ProgressFrames<F> {
    fn of(&self, event: JobEvent) -> Option<F> {
        match event {
            JobEvent::Phase { phase } => Some((self.phase)(phase)),
            JobEvent::Progress {
                done, total, peers, ..
            } => Some((self.progress)(done, total, peers.unwrap_or_default())),
            _ => None,
        }
    }
}

/// Runs `start` (routing here, maybe a pull and a load) for a peer's request, relaying the
/// job's phases and pull progress to the peer as `frames`, as they happen. `None` when the
/// peer went away meanwhile (the job is failed then; dropping `start` cancels it).
pub(crate) async fn relay_until_started<T, F: Serialize>(
    stream: &mut rbee_net::Stream,
    job: &Arc<Job>,
    start: impl Future<Output = T>,
    frames: ProgressFrames<F>,
) -> Option<T> {
    let (_, live) = job.subscribe();
    tokio::pin!(start);
    let mut live = live.map(tokio_stream::wrappers::BroadcastStream::new);
    loop {
        let event = async {
            match live.as_mut() {
                Some(l) => l.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            result = &mut start => return Some(result),
            event = event => {
                let out = match event {
                    Some(Ok(event)) => match frames.of(event) {
                        Some(f) => f,
                        None => continue,
                    },
                    Some(Err(_)) => continue,
                    None => {
                        live = None;
                        continue;
                    }
                };
                if write_frame(stream, &out).await.is_err() {
                    job.fail("the peer went away");
                    return None;
                }
            }
        }
    }
}
