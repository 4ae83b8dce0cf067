//! The client of `/rbee/infer/2`: runs a request on a peer and bridges its frames into the
//! same [`Started`] a local generation gives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use rbee_infer::engine::Prompt;
use rbee_infer::sampling::SamplingParams;
use rbee_net::PeerId;
use rbee_net::frame::{read_frame, write_frame};
use rbee_proto::infer::{InferFrame, InferRequest, MAX_RESPONSE_FRAME};
use rbee_proto::pool::INFER_PROTOCOL;
use tokio::sync::mpsc;

use crate::NodeContext;
use crate::error::NodeError;
use crate::jobs::{Job, JobEvent};
use crate::serve::Started;

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

async fn next_frame(
    stream: &mut rbee_net::Stream,
    wait: Duration,
    node: &str,
) -> Result<InferFrame, NodeError> {
    match tokio::time::timeout(wait, read_frame(stream, MAX_RESPONSE_FRAME)).await {
        Ok(Ok(Some(f))) => Ok(f),
        Ok(Ok(None)) => Err(peer_failed(node, "it closed the stream before finishing")),
        Ok(Err(e)) => Err(peer_failed(node, e)),
        Err(_) => Err(peer_failed(
            node,
            format!("it sent nothing for {}s", wait.as_secs()),
        )),
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
        .map_err(|_| peer_failed(node, "it did not answer in time"))?
        .map_err(|e| peer_failed(node, e))?;
    tracing::debug!(node, us = t0.elapsed().as_micros() as u64, "stream opened");
    let request = InferRequest {
        model: model.to_string(),
        prompt,
        params,
    };
    write_frame(&mut stream, &request)
        .await
        .map_err(|e| peer_failed(node, e))?;
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
                return Err(peer_failed(node, "it broke the protocol (no start frame)"));
            }
        }
    };
    tracing::debug!(node, us = t0.elapsed().as_micros() as u64, "peer started");
    let first = match next_frame(&mut stream, IDLE_TIMEOUT, node).await? {
        InferFrame::Error { code, message } => {
            return Err(NodeError::from_wire(code, message, node));
        }
        f @ (InferFrame::Text(_) | InferFrame::Done(_)) => f,
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
                None => match next_frame(&mut stream, IDLE_TIMEOUT, &node_name).await {
                    Ok(f @ (InferFrame::Text(_) | InferFrame::Done(_))) => f,
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
