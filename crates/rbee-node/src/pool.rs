//! The node's side of the pool: what it publishes about itself, and `/rbee/infer/1` in both
//! directions (serving peers' requests here, forwarding ours to a peer).
//!
//! Wire format of `/rbee/infer/1` (frames from [`rbee_net::frame`]): the caller sends one
//! [`InferRequest`]; the server answers `Started`, then `Text`… and one `Done` or `Error`.
//! Either side closing the stream cancels the generation.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use rbee_infer::engine::Prompt;
use rbee_infer::sampling::SamplingParams;
use rbee_net::frame::{read_frame, write_frame};
use rbee_net::{Client, PeerId};
use rbee_proto::pool::{DeviceStatus, DiskModel, INFER_PROTOCOL, LoadedModel, NodeStatus};
use rbee_proto::{ContentId, ModelSource};
use tokio::sync::{Semaphore, mpsc};

use crate::NodeContext;
use crate::actors::worker::ModelState;
use crate::api::generate::{self, Chunk, Started};
use crate::error::NodeError;
use crate::jobs::{Job, JobEvent};
use rbee_proto::infer::{InferFrame, InferRequest, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};

/// Generations served to peers at once; more are refused with "busy".
const MAX_INBOUND: usize = 64;
/// How long a peer has to send its request after opening the stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dialing a peer and opening a stream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence between two frames of a running generation.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Events buffered between the peer stream and the HTTP response.
const BRIDGE_BUFFER: usize = 64;

/// The node's latest status, shared by the publisher and the router.
pub type StatusCache = Arc<Mutex<Option<NodeStatus>>>;

fn source_ref(source: &ModelSource) -> Option<String> {
    match source {
        ModelSource::HuggingFace {
            repo,
            revision,
            file,
        } => {
            let rev = if revision == "main" {
                String::new()
            } else {
                format!("@{revision}")
            };
            let file = file.as_ref().map(|f| format!(":{f}")).unwrap_or_default();
            Some(format!("{repo}{rev}{file}"))
        }
        ModelSource::Ollama { name } => Some(format!("ollama:{name}")),
        ModelSource::Local { .. } => None,
    }
}

/// The models in this node's store, as the pool sees them.
async fn disk_models(ctx: &NodeContext) -> Result<Vec<DiskModel>, NodeError> {
    let records = ctx.catalog.list().await?;
    Ok(records
        .iter()
        .take(rbee_proto::pool::MAX_STATUS_MODELS)
        .map(|r| DiskModel {
            content_id: r.entry.content_id,
            names: std::iter::once(&r.entry.name)
                .chain(&r.entry.aliases)
                .take(rbee_proto::pool::MAX_MODEL_NAMES)
                .cloned()
                .collect(),
            source: source_ref(&r.manifest.source),
            size: r.manifest.total_size(),
            shared: !ctx.config.not_shared.iter().any(|n| r.entry.answers_to(n)),
        })
        .collect())
}

/// This node as its peers should see it.
async fn local_status(
    ctx: &NodeContext,
    tokens_per_sec: f32,
    on_disk: Vec<DiskModel>,
) -> Result<NodeStatus, NodeError> {
    let worker = ctx.worker.status().await?;
    let loaded = worker
        .models
        .iter()
        .filter_map(|(id, _, state)| match state {
            ModelState::Loaded {
                queue, live, busy, ..
            } => Some(LoadedModel {
                content_id: id.parse::<ContentId>().ok()?,
                device: worker.device.clone(),
                // The wire's `queue` is requests waiting or running, as the engine counts them.
                queue: u32::try_from(queue + live).unwrap_or(u32::MAX),
                queue_capacity: u32::try_from(ctx.config.queue_capacity).unwrap_or(u32::MAX),
                busy: *busy,
            }),
            _ => None,
        })
        .take(rbee_proto::pool::MAX_STATUS_MODELS)
        .collect();
    Ok(NodeStatus {
        name: ctx.name.clone(),
        api_addr: Some(ctx.api_addr.to_string()),
        seq: 0,
        devices: vec![DeviceStatus {
            name: worker.device.clone(),
            budget_bytes: worker.budget_bytes,
            used_bytes: worker.used_bytes,
        }],
        loaded,
        on_disk,
        tokens_per_sec,
    })
}

/// Keeps the status cache fresh and hands every status to the network, which publishes it
/// when it changed and once per interval regardless.
pub async fn publish_status(ctx: Arc<NodeContext>, net: Client) {
    let interval = Duration::from_millis(ctx.config.status_interval_ms);
    let mut tick = tokio::time::interval(interval / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Recent throughput: generated tokens over a sliding window of about ten seconds.
    let mut window = (
        Instant::now(),
        ctx.metrics.tokens_generated.load(Ordering::Relaxed),
    );
    let mut rate = 0f32;
    // The worker's state changes by the moment and is asked every tick; the catalog (files
    // on disk) changes rarely and is read once per interval.
    let mut on_disk: Option<(Instant, Vec<DiskModel>)> = None;
    loop {
        tick.tick().await;
        if on_disk
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() >= interval)
        {
            match disk_models(&ctx).await {
                Ok(models) => on_disk = Some((Instant::now(), models)),
                Err(e) => tracing::debug!("catalog not available: {e}"),
            }
        }
        let models = on_disk.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();
        let elapsed = window.0.elapsed();
        if elapsed >= Duration::from_secs(10) {
            let now = ctx.metrics.tokens_generated.load(Ordering::Relaxed);
            rate = (now.saturating_sub(window.1)) as f32 / elapsed.as_secs_f32();
            window = (Instant::now(), now);
        }
        match local_status(&ctx, rate, models).await {
            Ok(status) => {
                if let Ok(mut cache) = ctx.status.lock() {
                    *cache = Some(status.clone());
                }
                if net.publish_status(status).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::debug!("status not available: {e}"),
        }
    }
}

fn error_frame(e: &NodeError) -> InferFrame {
    InferFrame::Error {
        code: e.wire_code(),
        message: e.to_string(),
    }
}

/// Serves `/rbee/infer/1` for peers until the network stops.
pub async fn serve_infer(ctx: Arc<NodeContext>, net: Client) {
    let mut incoming = match net.accept(INFER_PROTOCOL) {
        Ok(i) => i,
        Err(e) => return tracing::error!("cannot serve {INFER_PROTOCOL}: {e}"),
    };
    let slots = Arc::new(Semaphore::new(MAX_INBOUND));
    while let Some((peer, mut stream)) = incoming.next().await {
        let ctx = ctx.clone();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    serve_one(&ctx, peer, &mut stream).await;
                    let _ = stream.close().await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let e = NodeError::Busy {
                        message: format!(
                            "node {} serves {MAX_INBOUND} peer requests already",
                            ctx.name
                        ),
                        retry_after_secs: 1,
                    };
                    let _ = write_frame(&mut stream, &error_frame(&e)).await;
                    let _ = stream.close().await;
                });
            }
        }
    }
}

async fn serve_one(ctx: &NodeContext, peer: PeerId, stream: &mut rbee_net::Stream) {
    let request: InferRequest =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(stream, MAX_REQUEST_FRAME)).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "bad infer request: {e}");
                let e = NodeError::BadRequest(format!("malformed request: {e}"));
                let _ = write_frame(stream, &error_frame(&e)).await;
                return;
            }
            Err(_) => return tracing::debug!(%peer, "peer sent no request in time"),
        };
    if let Err(e) = request.check().map_err(NodeError::BadRequest) {
        tracing::debug!(%peer, "refused an infer request: {e}");
        let _ = write_frame(stream, &error_frame(&e)).await;
        return;
    }
    tracing::debug!(%peer, model = %request.model, "serving a generation for a peer");
    // The request is a job here too: what happens before the first token (a pull from the
    // pool, a load) is listed in this node's jobs and relayed to the caller as it happens.
    let job = ctx.jobs.create("infer");
    // Whichever way this returns, the job ends (a peer that dies before the first token
    // left it `running` for good).
    let _ends = job.fail_unless_ended("the peer went away before the generation finished");
    job.phase(&format!("serving a request from peer {peer}"));
    let (_, live) = job.subscribe();
    // `local_only`: a forwarded request never hops again, so there are no routing loops.
    let start = generate::start_with(
        ctx,
        &request.model,
        request.prompt,
        request.params,
        true,
        Some(&job),
    );
    tokio::pin!(start);
    let mut live = live.map(tokio_stream::wrappers::BroadcastStream::new);
    let started = loop {
        let event = async {
            match live.as_mut() {
                Some(l) => l.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            result = &mut start => break result,
            event = event => {
                let frame = match event {
                    Some(Ok(JobEvent::Phase { phase })) => InferFrame::Phase(phase),
                    Some(Ok(JobEvent::Progress { done, total, peers, .. })) => InferFrame::Progress {
                        done,
                        total,
                        peers: peers.unwrap_or_default(),
                    },
                    Some(_) => continue,
                    None => {
                        live = None;
                        continue;
                    }
                };
                if write_frame(stream, &frame).await.is_err() {
                    job.fail("the peer went away");
                    return;
                }
            }
        }
    };
    let mut started = match started {
        Ok(s) => s,
        Err(e) => {
            job.fail(&e);
            let _ = write_frame(stream, &error_frame(&e)).await;
            return;
        }
    };
    job.phase(&format!("generating for peer {peer}"));
    let head = InferFrame::Started {
        node: started.node.clone(),
        model: started.model.clone(),
        prompt_tokens: started.prompt_tokens as u64,
    };
    if write_frame(stream, &head).await.is_err() {
        return;
    }
    while let Some(chunk) = started.events.recv().await {
        let (frame, last) = match chunk {
            Chunk::Text(t) => (InferFrame::Text(t), false),
            Chunk::Done(stats) => {
                job.done(serde_json::json!({"model": started.model, "for_peer": peer.to_string(),
                    "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens}));
                (InferFrame::Done(stats), true)
            }
            Chunk::Failed(e) => {
                job.fail(&e);
                (error_frame(&e), true)
            }
        };
        // A failed write means the caller went away: returning drops the events, which
        // cancels the generation.
        if write_frame(stream, &frame).await.is_err() {
            job.fail("the peer went away");
            return;
        }
        if last {
            return;
        }
    }
    job.fail("the generation ended without a result");
}

async fn next_frame(
    stream: &mut rbee_net::Stream,
    wait: Duration,
    node: &str,
) -> Result<InferFrame, NodeError> {
    match tokio::time::timeout(wait, read_frame(stream, MAX_RESPONSE_FRAME)).await {
        Ok(Ok(Some(f))) => Ok(f),
        Ok(Ok(None)) => Err(NodeError::Unavailable(format!(
            "node {node} closed the stream before finishing"
        ))),
        Ok(Err(e)) => Err(NodeError::Unavailable(format!("node {node}: {e}"))),
        Err(_) => Err(NodeError::Unavailable(format!(
            "node {node} sent nothing for {}s",
            wait.as_secs()
        ))),
    }
}

/// Runs a generation on `peer`. Returns once the first piece of output arrived, so a peer
/// that fails before its first token is an error the caller can fail over from.
pub async fn start_remote(
    ctx: &NodeContext,
    peer: PeerId,
    node: &str,
    model: &str,
    prompt: Prompt,
    params: SamplingParams,
    job: Option<&Arc<Job>>,
) -> Result<Started, NodeError> {
    let net = ctx
        .net
        .as_ref()
        .ok_or_else(|| NodeError::Internal("no pool network on this node".into()))?;
    let t0 = Instant::now();
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, net.open_stream(peer, INFER_PROTOCOL))
        .await
        .map_err(|_| NodeError::Unavailable(format!("node {node} did not answer in time")))?
        .map_err(|e| NodeError::Unavailable(format!("node {node}: {e}")))?;
    tracing::debug!(node, us = t0.elapsed().as_micros() as u64, "stream opened");
    let request = InferRequest {
        model: model.to_string(),
        prompt,
        params,
    };
    write_frame(&mut stream, &request)
        .await
        .map_err(|e| NodeError::Unavailable(format!("node {node}: {e}")))?;
    // The peer may load the model first: as long as this node would wait itself.
    // (Each phase or progress frame restarts the wait: a pull there may take minutes.)
    let first_wait = Duration::from_secs(ctx.config.load_wait_secs) + Duration::from_secs(30);
    let (served_by, model_name, prompt_tokens) = loop {
        match next_frame(&mut stream, first_wait, node).await? {
            InferFrame::Started {
                node,
                model,
                prompt_tokens,
            } => break (node, model, prompt_tokens as usize),
            InferFrame::Error { code, message } => {
                return Err(NodeError::from_wire(code, message, node));
            }
            InferFrame::Phase(phase) => {
                if let Some(job) = job {
                    job.phase(&format!("on node {node}: {phase}"));
                }
            }
            InferFrame::Progress { done, total, peers } => {
                if let Some(job) = job {
                    job.emit(JobEvent::Progress {
                        done,
                        total,
                        rate_bytes_per_sec: 0.0,
                        eta_secs: None,
                        peers: Some(peers),
                    });
                }
            }
            _ => {
                return Err(NodeError::Unavailable(format!(
                    "node {node} broke the protocol (no start frame)"
                )));
            }
        }
    };
    tracing::debug!(node, us = t0.elapsed().as_micros() as u64, "peer started");
    let first = match next_frame(&mut stream, IDLE_TIMEOUT, node).await? {
        InferFrame::Text(t) => Chunk::Text(t),
        InferFrame::Done(s) => Chunk::Done(s),
        InferFrame::Error { code, message } => {
            return Err(NodeError::from_wire(code, message, node));
        }
        InferFrame::Started { .. } | InferFrame::Phase(_) | InferFrame::Progress { .. } => {
            return Err(NodeError::Unavailable(format!(
                "node {node} broke the protocol (a start frame after the start)"
            )));
        }
    };
    tracing::debug!(
        node,
        us = t0.elapsed().as_micros() as u64,
        "first output from peer"
    );
    let (tx, rx) = mpsc::channel(BRIDGE_BUFFER);
    let node_name = served_by.clone();
    tokio::spawn(async move {
        let mut next = Some(first);
        loop {
            let chunk = match next.take() {
                Some(c) => c,
                None => match next_frame(&mut stream, IDLE_TIMEOUT, &node_name).await {
                    Ok(InferFrame::Text(t)) => Chunk::Text(t),
                    Ok(InferFrame::Done(s)) => Chunk::Done(s),
                    Ok(InferFrame::Error { code, message }) => {
                        Chunk::Failed(NodeError::from_wire(code, message, &node_name))
                    }
                    Ok(
                        InferFrame::Started { .. }
                        | InferFrame::Phase(_)
                        | InferFrame::Progress { .. },
                    ) => Chunk::Failed(NodeError::Unavailable(format!(
                        "node {node_name} broke the protocol mid-stream"
                    ))),
                    Err(e) => Chunk::Failed(NodeError::Unavailable(format!(
                        "the generation was cut off: {e}"
                    ))),
                },
            };
            let last = !matches!(chunk, Chunk::Text(_));
            // The client went away: dropping the stream cancels the peer's generation.
            if tx.send(chunk).await.is_err() || last {
                break;
            }
        }
        let _ = stream.close().await;
    });
    Ok(Started {
        node: served_by,
        model: model_name,
        prompt_tokens,
        events: rx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_proto::pool::ErrorCode;

    #[test]
    fn frames_survive_the_codec() {
        let req = InferRequest {
            model: "gemma".into(),
            prompt: Prompt::Chat(vec![rbee_infer::chat::ChatMessage::new("user", "hé 🐝")]),
            params: SamplingParams {
                seed: Some(7),
                stop: vec!["\n".into()],
                ..Default::default()
            },
        };
        let bytes = rbee_proto::codec::encode(&req).unwrap();
        let back: InferRequest = rbee_proto::codec::decode(&bytes).unwrap();
        assert_eq!(back.prompt, req.prompt);
        assert_eq!(back.params, req.params);
        let err = NodeError::from_wire(
            ErrorCode::Busy {
                retry_after_secs: 3,
            },
            "queue full".into(),
            "b",
        );
        assert_eq!((err.status(), err.retry_after()), (503, Some(3)));
        assert!(err.to_string().contains("on node b"));
    }

    #[test]
    fn every_error_crosses_the_wire_as_what_it_is() {
        // What a client of the forwarding node sees is what it would have seen from the
        // serving node: same HTTP status, same OpenAI code.
        let errors = [
            NodeError::BadRequest("x".into()),
            NodeError::NotFound("x".into()),
            NodeError::PromptTooLong("x".into()),
            NodeError::InvalidModel("x".into()),
            NodeError::Busy {
                message: "x".into(),
                retry_after_secs: 5,
            },
            NodeError::Unavailable("x".into()),
            NodeError::Cancelled("x".into()),
            NodeError::Internal("x".into()),
            NodeError::NeverFits {
                model: "m".into(),
                device: "cpu".into(),
                needed: 2,
                budget: 1,
            },
        ];
        for e in errors {
            let back = NodeError::from_wire(e.wire_code(), e.to_string(), "b");
            assert_eq!(
                (back.status(), back.code(), back.retry_after()),
                (e.status(), e.code(), e.retry_after()),
                "{e:?}"
            );
        }
    }

    #[test]
    fn hugging_face_sources_are_published_in_reference_form() {
        let s = ModelSource::HuggingFace {
            repo: "org/r".into(),
            revision: "main".into(),
            file: Some("f.gguf".into()),
        };
        assert_eq!(source_ref(&s).as_deref(), Some("org/r:f.gguf"));
        let s = ModelSource::HuggingFace {
            repo: "org/r".into(),
            revision: "abc".into(),
            file: None,
        };
        assert_eq!(source_ref(&s).as_deref(), Some("org/r@abc"));
    }
}
