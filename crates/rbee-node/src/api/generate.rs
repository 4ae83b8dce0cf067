//! Shared by the OpenAI endpoints and the `infer` job: route, load, queue, and bridge the
//! model thread's blocking event stream onto the async side.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rbee_infer::engine::{GenerateEvent, GenerateRequest, Prompt};
use rbee_infer::sampling::SamplingParams;
use rbee_proto::ModelRef;
use tokio::sync::mpsc;

use crate::NodeContext;
use crate::error::NodeError;

/// Events buffered between the model thread and the HTTP response.
const BRIDGE_BUFFER: usize = 64;

/// A generation that has started: the prompt was accepted and tokens are coming.
pub struct Started {
    pub node: String,
    pub model: String,
    pub prompt_tokens: usize,
    pub events: mpsc::Receiver<GenerateEvent>,
}

pub async fn start(
    ctx: &NodeContext,
    model: &str,
    prompt: Prompt,
    params: SamplingParams,
) -> Result<Started, NodeError> {
    let reference: ModelRef = model.parse()?;
    if matches!(reference, ModelRef::LocalPath(_)) {
        return Err(NodeError::BadRequest(format!(
            "`{model}` is a path; import it first (POST /v1/jobs model_import) and use its name"
        )));
    }
    let route = ctx.router.route(reference).await.map_err(|e| match e {
        NodeError::NotFound(_) => NodeError::NotFound(format!(
            "model `{model}` not found on this node (GET /v1/models lists what is available)"
        )),
        other => other,
    })?;
    let wait = Duration::from_secs(ctx.config.load_wait_secs);
    let loaded = route.worker.acquire(route.model.clone(), wait).await?;
    ctx.catalog.touch(route.model.id());
    let generation = loaded.generate(GenerateRequest { prompt, params })?;
    let (tx, mut rx) = mpsc::channel(BRIDGE_BUFFER);
    let cancel = generation.cancel_flag();
    // The model thread's channel is blocking; a blocking task forwards it. When the HTTP side
    // goes away, the send fails, the generation is dropped, and the model stops.
    tokio::task::spawn_blocking(move || {
        let mut ended = false;
        for event in generation {
            ended = matches!(event, GenerateEvent::Done(_) | GenerateEvent::Error(_));
            if tx.blocking_send(event).is_err() {
                cancel.store(true, Ordering::Relaxed);
                return;
            }
        }
        if !ended {
            let _ = tx.blocking_send(GenerateEvent::Error(rbee_infer::InferError::Unloaded));
        }
    });
    match rx.recv().await {
        Some(GenerateEvent::Started { prompt_tokens }) => {
            ctx.metrics
                .prompt_tokens
                .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
            Ok(Started {
                node: route.node,
                model: route.model.name().to_string(),
                prompt_tokens,
                events: rx,
            })
        }
        Some(GenerateEvent::Error(e)) => Err(e.into()),
        _ => Err(NodeError::Internal(
            "the model stopped before starting".into(),
        )),
    }
}
