//! The request path, below the HTTP API and above the engine: route a request (this node, a
//! peer, or a pull here first, with failover and fallback chains), load and queue it on a
//! worker, and bridge the model thread's blocking answer to async: a generation's events as
//! [`GenerationEvent`]s (the one event type a generation has from here to the client), an
//! embedding request's vectors as [`Embedded`]. Shared by the OpenAI and Ollama routes, the
//! `infer` job and requests from peers. A request walks one way: `api` → `serve` → the engine
//! or a peer (`serve::remote`).
//!
//! What a model can do (generate, embed) is known from its headers before it is loaded
//! ([`ModelKinds`]), so a chat request to an embedding model, or an embedding request to a
//! chat model, is a 400 that costs no load.

pub mod remote;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_infer::InferError;
use rbee_infer::engine::{
    Backend, Capabilities, EncodeRequest, GenerateEvent, GenerateRequest, LoadedModel, Prompt,
};
use rbee_infer::sampling::SamplingParams;
use rbee_proto::generation::GenerationEvent;
use rbee_proto::{ContentId, ModelRef};
use tokio::sync::{mpsc, oneshot};

use crate::NodeContext;
use crate::actors::catalog::ResolvedModel;
use crate::actors::router::RouteTarget;
use crate::actors::workers::Workers;
use crate::error::NodeError;
use crate::jobs::Job;

/// Events buffered between the model thread and the HTTP response.
const BRIDGE_BUFFER: usize = 64;
/// Models whose capabilities are remembered; beyond it the memory starts over.
const MAX_KNOWN_MODELS: usize = 4096;

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

/// Inputs to embed, and how.
#[derive(Debug, Clone)]
pub struct EmbedTask {
    /// Text or token ids: one vector each, in order.
    pub inputs: Vec<Prompt>,
    /// Cut inputs longer than the model takes (else such a request is refused).
    pub truncate: bool,
    /// Keep this many leading values, renormalised (Matryoshka-trained models only).
    pub dimensions: Option<u32>,
}

/// The answer to an [`EmbedTask`].
#[derive(Debug)]
pub struct Embedded {
    /// The node that ran it.
    pub node: String,
    pub model: String,
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// What a request asks a model to do.
#[derive(Debug, Clone)]
enum Task {
    Generate {
        prompt: Prompt,
        params: SamplingParams,
        /// Tokens of context wanted on this node (Ollama's `num_ctx`); a peer loads with its own.
        context: Option<usize>,
    },
    Embed(EmbedTask),
}

/// What a task gave: the started generation, or the vectors.
#[derive(Debug)]
enum Ran {
    Generation(Started),
    Embedding(Embedded),
}

impl Ran {
    fn generation(self) -> Result<Started, NodeError> {
        match self {
            Ran::Generation(s) => Ok(s),
            Ran::Embedding(_) => Err(NodeError::Internal("an embedding for a generation".into())),
        }
    }

    fn embedding(self) -> Result<Embedded, NodeError> {
        match self {
            Ran::Embedding(e) => Ok(e),
            Ran::Generation(_) => Err(NodeError::Internal("a generation for an embedding".into())),
        }
    }
}

/// What each cataloged model can do, read from its headers once (content ids never change
/// what they name).
pub struct ModelKinds {
    backend: Arc<dyn Backend>,
    known: Mutex<HashMap<ContentId, Capabilities>>,
}

impl std::fmt::Debug for ModelKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelKinds").finish_non_exhaustive()
    }
}

impl ModelKinds {
    pub fn new(backend: Arc<dyn Backend>) -> ModelKinds {
        ModelKinds {
            backend,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// What the model with content id `id` at `path` can do (reads its headers the first
    /// time, on a blocking thread).
    pub async fn of(
        &self,
        id: ContentId,
        path: &std::path::Path,
    ) -> Result<Capabilities, NodeError> {
        if let Some(c) = self.lock().get(&id) {
            return Ok(*c);
        }
        let backend = self.backend.clone();
        let path = path.to_path_buf();
        let caps = tokio::task::spawn_blocking(move || backend.capabilities(&path))
            .await
            .map_err(|e| NodeError::Internal(format!("reading model headers: {e}")))??;
        let mut known = self.lock();
        if known.len() >= MAX_KNOWN_MODELS {
            known.clear();
        }
        known.insert(id, caps);
        Ok(caps)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ContentId, Capabilities>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Refuses a task the model cannot do, naming the model: before it is loaded.
fn check_capability(
    model: &ResolvedModel,
    caps: Capabilities,
    task: &Task,
) -> Result<(), NodeError> {
    let arch = &model.record.manifest.metadata.architecture;
    let refusal = match task {
        Task::Generate { .. } if !caps.generates => InferError::EmbeddingOnly {
            architecture: arch.clone(),
        },
        Task::Embed(_) if !caps.embeds => InferError::NotAnEmbeddingModel {
            architecture: arch.clone(),
        },
        _ => return Ok(()),
    };
    Err(NodeError::BadRequest(format!(
        "model `{}`: {refusal}",
        model.name()
    )))
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

/// [`start`] with at least `context` tokens of context where this node runs it (Ollama's
/// `num_ctx`; see `WorkerHandle::acquire_with_context`). A peer that serves it loads the model
/// with its own configured context.
pub async fn start_sized(
    ctx: &NodeContext,
    model: &str,
    prompt: Prompt,
    params: SamplingParams,
    context: Option<usize>,
) -> Result<Started, NodeError> {
    let task = Task::Generate {
        prompt,
        params,
        context,
    };
    run_with(ctx, model, task, false, None).await?.generation()
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
    let task = Task::Generate {
        prompt,
        params,
        context: None,
    };
    run_with(ctx, model, task, local_only, job)
        .await?
        .generation()
}

/// Embeds the inputs wherever the router says (routed as a generation is: the model loaded
/// with a free batch slot, else on disk with memory free, else pulled), failing over to the
/// next candidate when one fails.
pub async fn embed(ctx: &NodeContext, model: &str, task: EmbedTask) -> Result<Embedded, NodeError> {
    embed_with(ctx, model, task, false, None).await
}

/// [`embed`], for a request a peer forwarded (`local_only`) or with a job for the phases.
pub async fn embed_with(
    ctx: &NodeContext,
    model: &str,
    task: EmbedTask,
    local_only: bool,
    job: Option<&Arc<Job>>,
) -> Result<Embedded, NodeError> {
    run_with(ctx, model, Task::Embed(task), local_only, job)
        .await?
        .embedding()
}

async fn run_with(
    ctx: &NodeContext,
    model: &str,
    task: Task,
    local_only: bool,
    job: Option<&Arc<Job>>,
) -> Result<Ran, NodeError> {
    // A fallback chain: each model in turn while the previous has no capacity anywhere.
    let Some(chain) = ctx.config.routes.get(model) else {
        return run_one(ctx, model, task, local_only, job).await;
    };
    let mut last_error = None;
    for candidate in chain {
        match run_one(ctx, candidate, task.clone(), local_only, job).await {
            Ok(ran) => return Ok(ran),
            Err(e) if e.is_node_specific() => {
                tracing::info!(route = model, model = %candidate, "no capacity, trying the next model of the route: {e}");
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| NodeError::NotFound(format!("route `{model}` is empty"))))
}

async fn run_one(
    ctx: &NodeContext,
    model: &str,
    task: Task,
    local_only: bool,
    job: Option<&Arc<Job>>,
) -> Result<Ran, NodeError> {
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
            RouteTarget::Local { model, worker } => {
                (run_local(ctx, *model, worker, task.clone()).await, None)
            }
            RouteTarget::Pull => (pull_and_run(ctx, model, job, task.clone()).await, None),
            RouteTarget::Peer { peer, node } => {
                let result = match task.clone() {
                    Task::Generate { prompt, params, .. } => {
                        remote::start_remote(ctx, peer, &node, model, prompt, params, job)
                            .await
                            .map(Ran::Generation)
                    }
                    Task::Embed(embed) => remote::embed_remote(ctx, peer, &node, model, embed, job)
                        .await
                        .map(Ran::Embedding),
                };
                (result, Some((peer, node)))
            }
        };
        match result {
            Ok(ran) => {
                if let Some((peer, _)) = peer {
                    ctx.router.peer_result(peer, true);
                }
                return Ok(ran);
            }
            Err(e) if e.is_node_specific() => {
                if let Some((peer, node)) = peer {
                    tracing::warn!(%peer, %node, "peer failed before its first output, trying the next: {e}");
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

/// Runs a task on this node's worker, once the model's headers say it can.
async fn run_local(
    ctx: &NodeContext,
    model: ResolvedModel,
    worker: Workers,
    task: Task,
) -> Result<Ran, NodeError> {
    // A file whose headers cannot be read is left to the worker: its load finds the same
    // fault, answers with it and records it in the model's status (`/health`: failed).
    if let Ok(caps) = ctx.kinds.of(model.id(), &model.path).await {
        check_capability(&model, caps, &task)?;
    }
    let wait = Duration::from_secs(ctx.config.load_wait_secs);
    let context = match &task {
        Task::Generate { context, .. } => *context,
        Task::Embed(_) => None,
    };
    let loaded = worker
        .acquire_with_context(model.clone(), context, wait)
        .await?;
    ctx.catalog.touch(model.id());
    match task {
        Task::Generate { prompt, params, .. } => start_local(ctx, &model, loaded, prompt, params)
            .await
            .map(Ran::Generation),
        Task::Embed(embed) => embed_local(ctx, &model, loaded, embed)
            .await
            .map(Ran::Embedding),
    }
}

/// Pulls `model` from the peers that hold it (reporting to `job`, or to a `model_pull` job
/// of its own that `GET /v1/jobs` lists), then runs the request here.
async fn pull_and_run(
    ctx: &NodeContext,
    model: &str,
    job: Option<&Arc<Job>>,
    task: Task,
) -> Result<Ran, NodeError> {
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
    run_local(ctx, resolved, ctx.workers.clone(), task).await
}

/// Runs a generation on a model loaded on this node's worker.
async fn start_local(
    ctx: &NodeContext,
    model: &ResolvedModel,
    loaded: Arc<dyn LoadedModel>,
    prompt: Prompt,
    params: SamplingParams,
) -> Result<Started, NodeError> {
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
                GenerateEvent::Token { text, logprob, .. } => {
                    metrics.tokens_generated.fetch_add(1, Ordering::Relaxed);
                    if let Some(lp) = logprob
                        && tx
                            .blocking_send(GenerationEvent::Logprobs(vec![lp]))
                            .is_err()
                    {
                        cancel.store(true, Ordering::Relaxed);
                        return;
                    }
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

/// Sets a flag when dropped: an embedding request whose caller went away (the HTTP client,
/// the peer) is cancelled on the model thread.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Embeds with a model loaded on this node's worker: the model's own pooling and
/// normalisation, then the `dimensions` asked for where the model was trained for them.
async fn embed_local(
    ctx: &NodeContext,
    model: &ResolvedModel,
    loaded: Arc<dyn LoadedModel>,
    task: EmbedTask,
) -> Result<Embedded, NodeError> {
    let dimensions = check_dimensions(model, loaded.as_ref(), task.dimensions)?;
    let normalize = loaded.info().normalize;
    let encoding = loaded.encode(EncodeRequest {
        inputs: task.inputs,
        normalize,
        truncate: task.truncate,
    })?;
    let _cancel = CancelOnDrop(encoding.cancel_flag());
    let result = tokio::task::spawn_blocking(move || {
        // Holding the model while it works: it is busy, never evicted.
        let _loaded = loaded;
        encoding.wait()
    })
    .await
    .map_err(|e| NodeError::Internal(format!("the embedding task failed: {e}")))??;
    ctx.metrics
        .prompt_tokens
        .fetch_add(result.prompt_tokens as u64, Ordering::Relaxed);
    let mut vectors = result.vectors;
    if let Some(d) = dimensions {
        for v in &mut vectors {
            v.truncate(d);
            if normalize {
                rescale_to_unit(v);
            }
        }
    }
    Ok(Embedded {
        node: ctx.name.clone(),
        model: model.name().to_string(),
        vectors,
        prompt_tokens: result.prompt_tokens,
    })
}

/// The `dimensions` to cut vectors to: none when the full length is asked; a shorter prefix
/// only for a model trained for it (Matryoshka); anything else is a 400 naming the field.
fn check_dimensions(
    model: &ResolvedModel,
    loaded: &dyn LoadedModel,
    dimensions: Option<u32>,
) -> Result<Option<usize>, NodeError> {
    let full = loaded.info().embedding_length;
    let Some(d) = dimensions.map(|d| d as usize) else {
        return Ok(None);
    };
    if d == full {
        return Ok(None);
    }
    if d == 0 || d > full {
        return Err(NodeError::BadRequest(format!(
            "`dimensions` {d}: model `{}` makes vectors of {full} values; ask for 1 to {full}",
            model.name()
        )));
    }
    if !loaded.info().matryoshka {
        return Err(NodeError::BadRequest(format!(
            "`dimensions` {d}: model `{}` does not declare Matryoshka training (its model card's tags), so a shorter vector is not an embedding; omit `dimensions` or ask for {full}",
            model.name()
        )));
    }
    Ok(Some(d))
}

/// Scales `v` to unit Euclidean length (sum of squares in f64); a zero vector stays zero.
fn rescale_to_unit(v: &mut [f32]) {
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}
