//! The request path, below the HTTP API and above the engine: route a generation (this
//! node, a peer, or a pull here first, with failover and fallback chains), load and queue it
//! on a worker, and bridge the model thread's blocking events to async
//! [`GenerationEvent`]s (the one event type a generation has from here to the client). Shared by
//! the OpenAI routes, the `infer` job and requests from peers. A request walks one way:
//! `api` → `serve` → the engine or a peer (`serve::remote`).

pub mod remote;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rbee_infer::engine::{GenerateEvent, GenerateRequest, Prompt};
use rbee_infer::sampling::SamplingParams;
use rbee_proto::ModelRef;
use rbee_proto::generation::GenerationEvent;
use tokio::sync::{mpsc, oneshot};

use crate::NodeContext;
use crate::actors::catalog::ResolvedModel;
use crate::actors::router::RouteTarget;
use crate::actors::worker::WorkerHandle;
use crate::error::NodeError;
use crate::jobs::Job;

/// Events buffered between the model thread and the HTTP response.
const BRIDGE_BUFFER: usize = 64;

/// A generation that has started: the prompt was accepted and output is coming.
#[derive(Debug)]
pub struct Started {
    /// The node that runs it.
    pub node: String,
    pub model: String,
    pub prompt_tokens: usize,
    /// `Text`, then `Done` or `Error`.
    pub events: mpsc::Receiver<GenerationEvent>,
}

/// Starts a generation wherever the router says, failing over to the next candidate when
/// one fails before producing output.
pub async fn start(
    ctx: &NodeContext,
    model: &str,
    prompt: Prompt,
    params: SamplingParams,
) -> Result<Started, NodeError> {
    start_with(ctx, model, prompt, params, false, None).await
}

/// [`start`], for a request a peer forwarded (`local_only`: it never hops again) or for a
/// job (`job`: where the phases of a pull it triggers are reported).
pub async fn start_with(
    ctx: &NodeContext,
    model: &str,
    prompt: Prompt,
    params: SamplingParams,
    local_only: bool,
    job: Option<&Arc<Job>>,
) -> Result<Started, NodeError> {
    // A fallback chain: each model in turn while the previous has no capacity anywhere.
    let Some(chain) = ctx.config.routes.get(model) else {
        return start_one(ctx, model, prompt, params, local_only, job).await;
    };
    let mut last_error = None;
    for candidate in chain {
        match start_one(
            ctx,
            candidate,
            prompt.clone(),
            params.clone(),
            local_only,
            job,
        )
        .await
        {
            Ok(started) => return Ok(started),
            Err(e) if e.is_node_specific() => {
                tracing::info!(route = model, model = %candidate, "no capacity, trying the next model of the route: {e}");
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| NodeError::NotFound(format!("route `{model}` is empty"))))
}

async fn start_one(
    ctx: &NodeContext,
    model: &str,
    prompt: Prompt,
    params: SamplingParams,
    local_only: bool,
    job: Option<&Arc<Job>>,
) -> Result<Started, NodeError> {
    let reference: ModelRef = model.parse()?;
    if matches!(reference, ModelRef::LocalPath(_)) {
        return Err(NodeError::BadRequest(format!(
            "`{model}` is a path; import it first (POST /v1/jobs model_import) and use its name"
        )));
    }
    let t0 = std::time::Instant::now();
    let targets = ctx
        .router
        .route(reference, model.to_string(), local_only)
        .await?;
    tracing::debug!(model, us = t0.elapsed().as_micros() as u64, "routed");
    let mut last_error = None;
    for target in targets {
        let (result, peer) = match target {
            RouteTarget::Local { model, worker } => (
                start_local(ctx, *model, worker, prompt.clone(), params.clone()).await,
                None,
            ),
            RouteTarget::Pull => (
                pull_and_start(ctx, model, job, prompt.clone(), params.clone()).await,
                None,
            ),
            RouteTarget::Peer { peer, node } => (
                remote::start_remote(ctx, peer, &node, model, prompt.clone(), params.clone(), job)
                    .await,
                Some((peer, node)),
            ),
        };
        match result {
            Ok(started) => {
                if let Some((peer, _)) = peer {
                    ctx.router.peer_result(peer, true);
                }
                return Ok(started);
            }
            Err(e) if e.is_node_specific() => {
                if let Some((peer, node)) = peer {
                    tracing::warn!(%peer, %node, "peer failed before its first token, trying the next: {e}");
                    // A busy peer is healthy; only failures count against it.
                    if !e.is_transient() {
                        ctx.router.peer_result(peer, false);
                    }
                }
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| NodeError::NotFound(format!("no node in the pool can serve `{model}`"))))
}

/// Pulls `model` from the peers that hold it (reporting to `job`, or to a `model_pull` job
/// of its own that `GET /v1/jobs` lists), then runs the request here.
async fn pull_and_start(
    ctx: &NodeContext,
    model: &str,
    job: Option<&Arc<Job>>,
    prompt: Prompt,
    params: SamplingParams,
) -> Result<Started, NodeError> {
    let own = job.is_none().then(|| ctx.jobs.create("model_pull"));
    let Some(pull_job) = job.or(own.as_ref()) else {
        return Err(NodeError::Internal("no job for the pull".into()));
    };
    tracing::info!(model, job = %pull_job.id, "no node can run the model now: pulling it here from the pool");
    let pulled = ctx
        .provisioner
        .pull(model, crate::pull::Reach::Pool, pull_job)
        .await;
    if let Some(own) = &own {
        match &pulled {
            Ok(o) => own.done(o.job_result()),
            Err(e) => own.fail(e),
        }
    }
    let resolved = ctx
        .catalog
        .resolve(ModelRef::ContentId(pulled?.import.content_id))
        .await?;
    if let Some(job) = job {
        job.phase("loading");
    }
    start_local(ctx, resolved, ctx.worker.clone(), prompt, params).await
}

/// Runs on this node's worker.
pub async fn start_local(
    ctx: &NodeContext,
    model: ResolvedModel,
    worker: WorkerHandle,
    prompt: Prompt,
    params: SamplingParams,
) -> Result<Started, NodeError> {
    let wait = Duration::from_secs(ctx.config.load_wait_secs);
    let loaded = worker.acquire(model.clone(), wait).await?;
    ctx.catalog.touch(model.id());
    let generation = loaded.generate(GenerateRequest { prompt, params })?;
    let (started_tx, started_rx) = oneshot::channel::<Result<usize, NodeError>>();
    let (tx, rx) = mpsc::channel(BRIDGE_BUFFER);
    let cancel = generation.cancel_flag();
    let metrics = ctx.metrics.clone();
    // The model thread's channel is blocking; a blocking task forwards it. When the HTTP side
    // goes away, the send fails, the generation is dropped, and the model stops.
    // Tokens are counted here, where they are generated: a request forwarded from a peer
    // counts on this node (which published tokens/s then reflects), not on the forwarder.
    tokio::task::spawn_blocking(move || {
        let mut started_tx = Some(started_tx);
        let mut ended = false;
        for event in generation {
            let chunk = match event {
                GenerateEvent::Started { prompt_tokens } => {
                    if let Some(s) = started_tx.take() {
                        let _ = s.send(Ok(prompt_tokens));
                    }
                    continue;
                }
                GenerateEvent::Error(e) if started_tx.is_some() => {
                    if let Some(s) = started_tx.take() {
                        let _ = s.send(Err(e.into()));
                    }
                    return;
                }
                GenerateEvent::Token { text, .. } => {
                    metrics.tokens_generated.fetch_add(1, Ordering::Relaxed);
                    GenerationEvent::Text(text)
                }
                GenerateEvent::Text(text) => GenerationEvent::Text(text),
                GenerateEvent::Done(stats) => GenerationEvent::Done(stats),
                GenerateEvent::Error(e) => NodeError::from(e).to_event(),
            };
            ended = chunk.is_last();
            if tx.blocking_send(chunk).is_err() {
                cancel.store(true, Ordering::Relaxed);
                return;
            }
        }
        if !ended {
            let unloaded = NodeError::from(rbee_infer::InferError::Unloaded);
            let _ = tx.blocking_send(unloaded.to_event());
        }
    });
    let prompt_tokens = match started_rx.await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(NodeError::Internal(
                "the model stopped before starting".into(),
            ));
        }
    };
    ctx.metrics
        .prompt_tokens
        .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    Ok(Started {
        node: ctx.name.clone(),
        model: model.name().to_string(),
        prompt_tokens,
        events: rx,
    })
}
