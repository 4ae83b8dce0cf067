//! The clients of `/rbee/infer/2` and `/rbee/embed/1`: run a request on a peer and bridge its
//! frames into the same [`Started`] a local generation gives, or the same [`Embedded`] a local
//! embedding request gives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use rbee_infer::engine::Prompt;
use rbee_infer::sampling::SamplingParams;
use rbee_net::PeerId;
use rbee_net::frame::{read_frame, write_frame};
use rbee_proto::embed::{self, EmbedFrame, EmbedRequest};
use rbee_proto::infer::{InferFrame, InferRequest, MAX_RESPONSE_FRAME};
use rbee_proto::pool::{EMBED_PROTOCOL, INFER_PROTOCOL};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::NodeContext;
use crate::error::NodeError;
use crate::jobs::{Job, JobEvent};
use crate::serve::{EmbedTask, Embedded, Started};

/// How long dialing a peer and opening a stream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence between two frames of a running generation.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Events buffered between the peer stream and the HTTP response.
const BRIDGE_BUFFER: usize = 64;

fn peer_failed(node: &str, why: impl std::fmt::Display) -> NodeError {
    NodeError::PeerFailed {
        node: node.to_string(),
        why: why.to_string(),
    }
}

async fn next_frame<F: DeserializeOwned>(
    stream: &mut rbee_net::Stream,
    wait: Duration,
    cap: usize,
    node: &str,
) -> Result<F, NodeError> {
    match tokio::time::timeout(wait, read_frame(stream, cap)).await {
        Ok(Ok(Some(f))) => Ok(f),
        Ok(Ok(None)) => Err(peer_failed(node, "it closed the stream before finishing")),
        Ok(Err(e)) => Err(peer_failed(node, e)),
        Err(_) => Err(peer_failed(
            node,
            format!("it sent nothing for {}s", wait.as_secs()),
        )),
    }
}

/// Opens a `protocol` stream to `peer` and sends `request` as its one frame.
async fn open(
    ctx: &NodeContext,
    peer: PeerId,
    node: &str,
    protocol: &'static str,
    request: &impl Serialize,
) -> Result<rbee_net::Stream, NodeError> {
    let net = ctx
        .net
        .as_ref()
        .ok_or_else(|| NodeError::Internal("no pool network on this node".into()))?;
    let t0 = Instant::now();
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, net.open_stream(peer, protocol))
        .await
        .map_err(|_| peer_failed(node, "it did not answer in time"))?
        .map_err(|e| peer_failed(node, e))?;
    tracing::debug!(node, us = t0.elapsed().as_micros() as u64, "stream opened");
    write_frame(&mut stream, request)
        .await
        .map_err(|e| peer_failed(node, e))?;
    Ok(stream)
}

/// How long to wait for a peer's first answer: as long as this node would wait for a load
/// itself (each phase or progress frame restarts the wait: a pull there may take minutes).
fn first_wait(ctx: &NodeContext) -> Duration {
    Duration::from_secs(ctx.config.load_wait_secs) + Duration::from_secs(30)
}

/// A phase or pull progress the peer reported before starting, told to the caller's job.
fn relay(job: Option<&Arc<Job>>, node: &str, event: Before) {
    let Some(job) = job else {
        return;
    };
    match event {
        Before::Phase(phase) => job.phase(&format!("on node {node}: {phase}")),
        Before::Progress { done, total, peers } => job.emit(JobEvent::Progress {
            done,
            total,
            rate_bytes_per_sec: 0.0,
            eta_secs: None,
            peers: Some(peers),
        }),
    }
}

/// What a peer may report before it starts.
enum Before {
    Phase(String),
    Progress {
        done: u64,
        total: u64,
        peers: Vec<String>,
    },
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
    let t0 = Instant::now();
    let request = InferRequest {
        model: model.to_string(),
        prompt,
        params,
    };
    let mut stream = open(ctx, peer, node, INFER_PROTOCOL, &request).await?;
    let first_wait = first_wait(ctx);
    let (served_by, model_name, prompt_tokens) = loop {
        match next_frame(&mut stream, first_wait, MAX_RESPONSE_FRAME, node).await? {
            InferFrame::Started {
                node,
                model,
                prompt_tokens,
            } => break (node, model, prompt_tokens as usize),
            InferFrame::Error { code, message } => {
                return Err(NodeError::from_wire(code, message, node));
            }
            InferFrame::Phase(phase) => relay(job, node, Before::Phase(phase)),
            InferFrame::Progress { done, total, peers } => {
                relay(job, node, Before::Progress { done, total, peers })
            }
            _ => {
                return Err(peer_failed(node, "it broke the protocol (no start frame)"));
            }
        }
    };
    tracing::debug!(node, us = t0.elapsed().as_micros() as u64, "peer started");
    let first = match next_frame(&mut stream, IDLE_TIMEOUT, MAX_RESPONSE_FRAME, node).await? {
        InferFrame::Error { code, message } => {
            return Err(NodeError::from_wire(code, message, node));
        }
        f @ (InferFrame::Text(_) | InferFrame::Logprobs(_) | InferFrame::Done(_)) => f,
        InferFrame::Started { .. } | InferFrame::Phase(_) | InferFrame::Progress { .. } => {
            return Err(peer_failed(
                node,
                "it broke the protocol (a start frame after the start)",
            ));
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
            let event = match next.take() {
                Some(e) => e,
                None => match next_frame(&mut stream, IDLE_TIMEOUT, MAX_RESPONSE_FRAME, &node_name)
                    .await
                {
                    Ok(
                        f @ (InferFrame::Text(_) | InferFrame::Logprobs(_) | InferFrame::Done(_)),
                    ) => f,
                    // The peer's error, its message naming the peer.
                    Ok(InferFrame::Error { code, message }) => {
                        NodeError::from_wire(code, message, &node_name).to_event()
                    }
                    Ok(
                        InferFrame::Started { .. }
                        | InferFrame::Phase(_)
                        | InferFrame::Progress { .. },
                    ) => peer_failed(&node_name, "it broke the protocol mid-stream").to_event(),
                    // Says which node and why (it went silent, the stream closed).
                    Err(e) => e.to_event(),
                },
            };
            let last = event.is_last();
            // The client went away: dropping the stream cancels the peer's generation.
            if tx.send(event).await.is_err() || last {
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

/// Embeds on `peer`: its phases and pull progress go to `job`, then the vectors are checked
/// against the request (one per input, one length, finite) before they are believed.
pub async fn embed_remote(
    ctx: &NodeContext,
    peer: PeerId,
    node: &str,
    model: &str,
    task: EmbedTask,
    job: Option<&Arc<Job>>,
) -> Result<Embedded, NodeError> {
    let inputs = task.inputs.len();
    let dimensions = task.dimensions;
    let request = EmbedRequest {
        model: model.to_string(),
        inputs: task.inputs,
        truncate: task.truncate,
        dimensions,
    };
    let mut stream = open(ctx, peer, node, EMBED_PROTOCOL, &request).await?;
    let mut wait = first_wait(ctx);
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(inputs);
    let result = loop {
        match next_frame(&mut stream, wait, embed::MAX_RESPONSE_FRAME, node).await? {
            EmbedFrame::Phase(phase) if vectors.is_empty() => {
                relay(job, node, Before::Phase(phase))
            }
            EmbedFrame::Progress { done, total, peers } if vectors.is_empty() => {
                relay(job, node, Before::Progress { done, total, peers })
            }
            EmbedFrame::Vectors(more) => {
                if vectors.len() + more.len() > inputs {
                    break Err(peer_failed(
                        node,
                        format!("it sent more than {inputs} vectors"),
                    ));
                }
                vectors.extend(more);
                wait = IDLE_TIMEOUT;
            }
            EmbedFrame::Done {
                node: served_by,
                model,
                prompt_tokens,
            } => {
                break embed::check_vectors(&vectors, inputs, dimensions)
                    .map(|()| Embedded {
                        node: served_by,
                        model,
                        vectors: std::mem::take(&mut vectors),
                        prompt_tokens: prompt_tokens as usize,
                    })
                    .map_err(|why| peer_failed(node, format!("it sent bad embeddings: {why}")));
            }
            EmbedFrame::Error { code, message } => {
                break Err(NodeError::from_wire(code, message, node));
            }
            EmbedFrame::Phase(_) | EmbedFrame::Progress { .. } => {
                break Err(peer_failed(
                    node,
                    "it broke the protocol (a phase after vectors)",
                ));
            }
        }
    };
    let _ = stream.close().await;
    result
}
