//! The server of `/rbee/infer/2`: runs a generation a peer asks for, here only (a forwarded
//! request never hops again), and streams it back frame by frame. The messages are
//! `rbee_proto::infer`'s.

use std::sync::Arc;

use rbee_net::frame::write_frame;
use rbee_net::{Client, PeerId};
use rbee_proto::infer::{InferFrame, InferRequest, MAX_REQUEST_FRAME};
use rbee_proto::pool::INFER_PROTOCOL;

use crate::NodeContext;
use crate::error::NodeError;
use crate::serve;

/// What the caller hears before the generation starts.
const FRAMES: super::ProgressFrames<InferFrame> = super::ProgressFrames {
    phase: InferFrame::Phase,
    progress: |done, total, peers| InferFrame::Progress { done, total, peers },
};

fn error_frame(e: &NodeError) -> InferFrame {
    e.to_event()
}

/// Serves `/rbee/infer/2` for peers until the network stops.
pub async fn serve_infer(ctx: Arc<NodeContext>, net: Client) {
    super::accept(
        ctx,
        net,
        INFER_PROTOCOL,
        |ctx, peer, mut stream| async move {
            serve_one(&ctx, peer, &mut stream).await;
            stream
        },
        error_frame,
    )
    .await;
}

async fn serve_one(ctx: &NodeContext, peer: PeerId, stream: &mut rbee_net::Stream) {
    let Some(request) = super::read_request(
        stream,
        peer,
        MAX_REQUEST_FRAME,
        InferRequest::check,
        error_frame,
    )
    .await
    else {
        return;
    };
    tracing::debug!(%peer, model = %request.model, "serving a generation for a peer");
    // The request is a job here too: what happens before the first token (a pull from the
    // pool, a load) is listed in this node's jobs and relayed to the caller as it happens.
    let job = ctx.jobs.create("infer");
    // Whichever way this returns, the job ends (a peer that dies before the first token
    // left it `running` for good).
    let _ends = job.fail_unless_ended("the peer went away before the generation finished");
    job.phase(&format!("serving a request from peer {peer}"));
    // `local_only`: a forwarded request never hops again, so there are no routing loops.
    let start = serve::start_with(
        ctx,
        &request.model,
        request.prompt,
        request.params,
        true,
        Some(&job),
    );
    let Some(started) = super::relay_until_started(stream, &job, start, FRAMES).await else {
        return;
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
    // The generation's events are the wire's frames: relayed as they come.
    while let Some(frame) = started.events.recv().await {
        match &frame {
            InferFrame::Done(stats) => job.done(serde_json::json!({"model": started.model,
                "for_peer": peer.to_string(), "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens})),
            InferFrame::Error { message, .. } => job.fail(message),
            _ => {}
        }
        // A failed write means the caller went away: returning drops the events, which
        // cancels the generation.
        if write_frame(stream, &frame).await.is_err() {
            job.fail("the peer went away");
            return;
        }
        if frame.is_last() {
            return;
        }
    }
    job.fail("the generation ended without a result");
}
