//! The server of `/rbee/embed/1`: embeds inputs a peer asks for, here only (a forwarded request
//! never hops again), and sends the vectors back in frames. The messages are
//! `rbee_proto::embed`'s.

use std::sync::Arc;

use rbee_net::frame::write_frame;
use rbee_net::{Client, PeerId};
use rbee_proto::embed::{EmbedFrame, EmbedRequest, MAX_REQUEST_FRAME, vectors_per_frame};
use rbee_proto::pool::EMBED_PROTOCOL;

use crate::NodeContext;
use crate::error::NodeError;
use crate::serve::{self, EmbedTask};

/// What the caller hears before the vectors come.
const FRAMES: super::ProgressFrames<EmbedFrame> = super::ProgressFrames {
    phase: EmbedFrame::Phase,
    progress: |done, total, peers| EmbedFrame::Progress { done, total, peers },
};

fn error_frame(e: &NodeError) -> EmbedFrame {
    EmbedFrame::Error {
        code: e.wire_code(),
        message: e.to_string(),
    }
}

/// Serves `/rbee/embed/1` for peers until the network stops.
pub async fn serve_embed(ctx: Arc<NodeContext>, net: Client) {
    super::accept(
        ctx,
        net,
        EMBED_PROTOCOL,
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
        EmbedRequest::check,
        error_frame,
    )
    .await
    else {
        return;
    };
    tracing::debug!(%peer, model = %request.model, inputs = request.inputs.len(), "embedding for a peer");
    // A job here too, so that a pull or a load it needs is listed and relayed to the caller.
    let job = ctx.jobs.create("embed");
    let _ends = job.fail_unless_ended("the peer went away before the embeddings were sent");
    job.phase(&format!("serving an embedding request from peer {peer}"));
    let task = EmbedTask {
        inputs: request.inputs,
        truncate: request.truncate,
        dimensions: request.dimensions,
    };
    // `local_only`: a forwarded request never hops again.
    let run = serve::embed_with(ctx, &request.model, task, true, Some(&job));
    let Some(result) = super::relay_until_started(stream, &job, run, FRAMES).await else {
        return;
    };
    let embedded = match result {
        Ok(e) => e,
        Err(e) => {
            job.fail(&e);
            let _ = write_frame(stream, &error_frame(&e)).await;
            return;
        }
    };
    let dims = embedded.vectors.first().map_or(1, Vec::len);
    for chunk in embedded.vectors.chunks(vectors_per_frame(dims)) {
        // A failed write means the caller went away.
        if write_frame(stream, &EmbedFrame::Vectors(chunk.to_vec()))
            .await
            .is_err()
        {
            job.fail("the peer went away");
            return;
        }
    }
    let done = EmbedFrame::Done {
        node: embedded.node,
        model: embedded.model.clone(),
        prompt_tokens: embedded.prompt_tokens as u64,
    };
    if write_frame(stream, &done).await.is_ok() {
        job.done(
            serde_json::json!({"model": embedded.model, "for_peer": peer.to_string(),
            "inputs": embedded.vectors.len(), "prompt_tokens": embedded.prompt_tokens}),
        );
    } else {
        job.fail("the peer went away");
    }
}
