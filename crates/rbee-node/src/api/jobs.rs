//! The job API: `POST /v1/jobs` starts an operation and returns its id and stream URL;
//! `GET /v1/jobs/{id}/stream` replays its events so far and then follows it live (SSE);
//! `DELETE /v1/jobs/{id}` cancels; `GET /v1/jobs` lists recent jobs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::Prompt;
use rbee_infer::sampling::SamplingParams;
use rbee_proto::ModelRef;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::NodeContext;
use crate::actors::provisioner::ProvisionerMsg;
use crate::error::NodeError;
use crate::jobs::{Job, JobEvent};
use crate::serve;
use rbee_proto::generation::GenerationEvent;

#[derive(Debug, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum JobRequest {
    ModelImport {
        source: String,
        name: Option<String>,
    },
    ModelPull {
        model: String,
    },
    ModelLoad {
        model: String,
    },
    ModelUnload {
        model: String,
    },
    ModelRemove {
        model: String,
    },
    Infer {
        model: String,
        prompt: Option<String>,
        messages: Option<Vec<ChatMessage>>,
        max_tokens: Option<usize>,
        temperature: Option<f32>,
        seed: Option<u64>,
    },
}

impl JobRequest {
    /// Everything that can be known wrong without running the job, refused before it is
    /// accepted, as the OpenAI routes refuse it: a 202 means the request itself was sound.
    fn check(&self) -> Result<(), NodeError> {
        match self {
            JobRequest::ModelImport { source, name } => {
                if source.trim().is_empty() {
                    return Err(NodeError::BadRequest(
                        "model_import needs a `source` (a path, `ollama:<name>` or `hf-cache:<repo>`)".into(),
                    ));
                }
                if let Some(name) = name
                    && !rbee_proto::is_valid_name(name)
                {
                    return Err(NodeError::BadRequest(format!(
                        "`{}` is not a valid model name: use letters, digits, `.`, `_`, `-`, `:` and `/`, starting with a letter or digit",
                        name.escape_debug()
                    )));
                }
                Ok(())
            }
            JobRequest::ModelPull { model }
            | JobRequest::ModelLoad { model }
            | JobRequest::ModelUnload { model }
            | JobRequest::ModelRemove { model } => {
                model.parse::<ModelRef>().map(drop).map_err(Into::into)
            }
            JobRequest::Infer { model, .. } => {
                if matches!(model.parse::<ModelRef>()?, ModelRef::LocalPath(_)) {
                    return Err(NodeError::BadRequest(format!(
                        "`{model}` is a path; import it first (POST /v1/jobs model_import) and use its name"
                    )));
                }
                self.generation().map(drop)
            }
        }
    }

    /// The prompt and sampling parameters of an `infer` job, checked.
    fn generation(&self) -> Result<(Prompt, SamplingParams), NodeError> {
        let JobRequest::Infer {
            prompt,
            messages,
            max_tokens,
            temperature,
            seed,
            ..
        } = self
        else {
            return Err(NodeError::Internal("not an infer job".into()));
        };
        let prompt = match (prompt, messages) {
            (Some(p), None) => Prompt::Text(p.clone()),
            (None, Some(m)) => {
                rbee_infer::chat::check_messages(m)
                    .map_err(|e| NodeError::BadRequest(e.to_string()))?;
                Prompt::Chat(m.clone())
            }
            _ => {
                return Err(NodeError::BadRequest(
                    "give exactly one of `prompt` or `messages`".into(),
                ));
            }
        };
        let d = SamplingParams::default();
        let params = SamplingParams {
            max_tokens: max_tokens.unwrap_or(rbee_infer::sampling::MAX_TOKENS),
            temperature: temperature.unwrap_or(d.temperature),
            seed: *seed,
            ..d
        };
        params.validate().map_err(NodeError::BadRequest)?;
        Ok((prompt, params))
    }

    fn operation(&self) -> &'static str {
        match self {
            JobRequest::ModelImport { .. } => "model_import",
            JobRequest::ModelPull { .. } => "model_pull",
            JobRequest::ModelLoad { .. } => "model_load",
            JobRequest::ModelUnload { .. } => "model_unload",
            JobRequest::ModelRemove { .. } => "model_remove",
            JobRequest::Infer { .. } => "infer",
        }
    }
}

pub async fn create(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<JobRequest>, JsonRejection>,
) -> Response {
    let req = match req {
        Ok(Json(r)) => r,
        Err(e) => {
            return NodeError::BadRequest(format!(
                "invalid job: {} (operation is one of model_import, model_pull, model_load, model_unload, model_remove, infer)",
                e.body_text()
            ))
            .into_response();
        }
    };
    if let Err(e) = req.check() {
        return e.into_response();
    }
    if let JobRequest::ModelPull { model } = &req
        && let Err(e) = pull_possible(&ctx, model)
    {
        return e.into_response();
    }
    let job = ctx.jobs.create(req.operation());
    let id = job.id.clone();
    match req {
        JobRequest::ModelImport { source, name } => {
            ctx.provisioner
                .cast(ProvisionerMsg::Import { source, name, job });
        }
        // The order (catalog, pool, hub) is the provisioner's (`pull::get`).
        JobRequest::ModelPull { model } => ctx.provisioner.start_pull(model, job),
        other => {
            let ctx = ctx.clone();
            tokio::spawn(async move { run(ctx, job, other).await });
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"job_id": id, "stream_url": format!("/v1/jobs/{id}/stream")})),
    )
        .into_response()
}

/// What is refused before a pull job starts: a reference that cannot parse or is a path, and,
/// on a node in no pool, anything that is neither in the catalog nor on HuggingFace.
fn pull_possible(ctx: &NodeContext, model: &str) -> Result<(), NodeError> {
    let reference = model.parse::<ModelRef>()?;
    match reference {
        ModelRef::LocalPath(_) => Err(NodeError::BadRequest(format!(
            "`{model}` is a path: import it with a model_import job instead of pulling it"
        ))),
        ModelRef::HuggingFace(_) => Ok(()),
        _ if ctx.net.is_some() || ctx.store.resolve(&reference).is_ok() => Ok(()),
        other => Err(NodeError::BadRequest(format!(
            "this node is in no pool, so model_pull takes a HuggingFace reference (`org/repo`, `org/repo:file.gguf`, `org/repo@revision`); `{other}` is not one"
        ))),
    }
}

async fn run(ctx: Arc<NodeContext>, job: Arc<Job>, req: JobRequest) {
    let work = async {
        match req {
            JobRequest::ModelLoad { model } => {
                job.phase("resolving");
                // Loading is about this node's memory: no routing to peers.
                let resolved = ctx.catalog.resolve(model.parse::<ModelRef>()?).await?;
                job.phase("loading");
                let wait = Duration::from_secs(ctx.config.load_wait_secs.max(600));
                let loaded = ctx.workers.acquire(resolved.clone(), wait).await?;
                let info = loaded.info();
                Ok(
                    json!({"model": resolved.name(), "load_secs": info.load_secs, "memory_bytes": info.memory.total(), "node": ctx.name}),
                )
            }
            JobRequest::ModelUnload { model } => {
                let resolved = ctx.catalog.resolve(model.parse::<ModelRef>()?).await?;
                let was_loaded = ctx.workers.unload(resolved.id()).await?;
                Ok(json!({"model": resolved.name(), "was_loaded": was_loaded}))
            }
            JobRequest::ModelRemove { model } => {
                let r: ModelRef = model.parse()?;
                if let Ok(resolved) = ctx.catalog.resolve(r.clone()).await {
                    ctx.workers.unload(resolved.id()).await?;
                }
                let removed = ctx.catalog.remove(r).await?;
                Ok(json!({"model": removed.name, "content_id": removed.content_id.to_hex()}))
            }
            JobRequest::Infer { ref model, .. } => {
                let (prompt, params) = req.generation()?;
                job.phase("loading");
                let mut started =
                    serve::start_with(&ctx, model, prompt, params, false, Some(&job)).await?;
                job.phase(&format!("generating on node {}", started.node));
                let mut text = String::new();
                loop {
                    let event = tokio::select! {
                        biased;
                        _ = job.cancelled() => return Err(NodeError::Cancelled("cancelled".into())),
                        e = started.events.recv() => e,
                    };
                    match event {
                        Some(GenerationEvent::Text(t)) => {
                            if !t.is_empty() {
                                text.push_str(&t);
                                job.emit(JobEvent::Token { text: t });
                            }
                        }
                        Some(GenerationEvent::Done(s)) => {
                            return Ok(
                                json!({"text": text, "node": started.node, "prompt_tokens": s.prompt_tokens,
                                "completion_tokens": s.completion_tokens, "finish_reason": s.finish_reason.as_str(),
                                "tokens_per_sec": s.decode_tokens_per_sec()}),
                            );
                        }
                        Some(GenerationEvent::Error { code, message }) => {
                            return Err(NodeError::from_code(code, message));
                        }
                        // Phases come before the start; nothing else follows it.
                        Some(_) => continue,
                        None => {
                            return Err(NodeError::Internal(
                                "generation ended without a result".into(),
                            ));
                        }
                    }
                }
            }
            JobRequest::ModelImport { .. } | JobRequest::ModelPull { .. } => {
                Err(NodeError::Internal("handled elsewhere".into()))
            }
        }
    };
    // Cancelling ends the job whatever step it is in (a load keeps going in the worker, where
    // the next request finds it).
    let result = tokio::select! {
        biased;
        _ = job.cancelled() => Err(NodeError::Cancelled("cancelled".into())),
        r = work => r,
    };
    match result {
        Ok(v) => job.done(v),
        Err(e) => job.fail(e),
    }
}

fn find(ctx: &NodeContext, id: &str) -> Result<Arc<Job>, NodeError> {
    ctx.jobs.get(id).ok_or_else(|| {
        NodeError::NotFound(format!("no job `{id}` (GET /v1/jobs lists recent jobs)"))
    })
}

fn sse_event(e: &JobEvent) -> Event {
    Event::default()
        .event(e.name())
        .data(serde_json::to_string(e).unwrap_or_default())
}

pub async fn stream(State(ctx): State<Arc<NodeContext>>, Path(id): Path<String>) -> Response {
    let job = match find(&ctx, &id) {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    let (history, live) = job.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let ctx = ctx;
        for e in &history {
            if tx.send(Ok(sse_event(e))).await.is_err() {
                return;
            }
        }
        let Some(mut live) = live else { return };
        loop {
            let next = tokio::select! {
                next = live.recv() => next,
                () = ctx.halted() => {
                    let message = super::openai::shutting_down().to_string();
                    let _ = tx.send(Ok(sse_event(&JobEvent::Error { message }))).await;
                    return;
                }
            };
            match next {
                Ok(e) => {
                    let end = e.is_terminal();
                    if tx.send(Ok(sse_event(&e))).await.is_err() || end {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = Event::default()
                        .comment(format!("{n} events skipped: this reader was too slow"));
                    if tx.send(Ok(note)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub async fn cancel(State(ctx): State<Arc<NodeContext>>, Path(id): Path<String>) -> Response {
    match find(&ctx, &id) {
        Ok(job) => {
            job.cancel();
            Json(job.summary()).into_response()
        }
        Err(e) => e.into_response(),
    }
}

pub async fn show(State(ctx): State<Arc<NodeContext>>, Path(id): Path<String>) -> Response {
    match find(&ctx, &id) {
        Ok(job) => Json(job.summary()).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn list(State(ctx): State<Arc<NodeContext>>) -> Response {
    let jobs: Vec<_> = ctx.jobs.list().iter().map(|j| j.summary()).collect();
    Json(json!({"object": "list", "data": jobs})).into_response()
}
