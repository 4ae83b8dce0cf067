//! `ProvisionerActor`: gets models onto this node: imports from local sources (files, folders,
//! Ollama, the HuggingFace cache), and pulls ([`crate::pull::get`]: catalog, then the pool,
//! then the hub) for `model_pull` jobs and for requests routed here to fetch a model, each
//! reported as job events. It owns the pull sources (the pool's shared pull state among them).
//!
//! Each pull runs as a supervised task (`pull <job id>`): one that panics is restarted and
//! resumes from the shards already verified, up to [`MAX_PULL_RESTARTS`] times, then its job
//! fails saying so. One import per source at a time; pulls of the same model wait for each
//! other (the pool's per-model lock; the HF cache's per-file lock).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rbee_store::{ImportSource, Store};

use super::Handle;
use crate::error::NodeError;
use crate::jobs::Job;
use crate::pull::{PullOutcome, Reach, Sources};
use crate::tasks::Tasks;

/// Restarts of a pull that panics before its job fails.
pub const MAX_PULL_RESTARTS: u32 = 3;

/// Where a pull's caller hears how it ended.
pub type PullReply = tokio::sync::oneshot::Sender<Result<PullOutcome, NodeError>>;

pub enum ProvisionerMsg {
    Import {
        source: String,
        name: Option<String>,
        job: Arc<Job>,
    },
    /// Get `model` onto this node, reporting on `job`. Without `reply` the pull ends the
    /// job; with one, the caller hears the outcome and the job stays the caller's.
    Pull {
        model: String,
        reach: Reach,
        job: Arc<Job>,
        reply: Option<PullReply>,
    },
    /// Internal: an import finished. The source is unlocked before the job ends, so a client
    /// that sees the job done can import the same source again at once.
    Finished {
        source: String,
        job: Arc<Job>,
        outcome: Result<serde_json::Value, String>,
    },
}

/// What the provisioner (re)starts with.
#[derive(Debug, Clone)]
pub struct ProvisionerArgs {
    pub sources: Sources,
    pub tasks: Arc<Tasks>,
}

pub struct ProvisionerState {
    store: Store,
    sources: Sources,
    tasks: Arc<Tasks>,
    running: HashSet<String>,
}

#[derive(Debug)]
pub struct ProvisionerActor;

impl Actor for ProvisionerActor {
    type Msg = ProvisionerMsg;
    type State = ProvisionerState;
    type Arguments = ProvisionerArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ProvisionerMsg>,
        args: ProvisionerArgs,
    ) -> Result<ProvisionerState, ActorProcessingErr> {
        Ok(ProvisionerState {
            store: args.sources.store.clone(),
            sources: args.sources,
            tasks: args.tasks,
            running: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<ProvisionerMsg>,
        msg: ProvisionerMsg,
        st: &mut ProvisionerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProvisionerMsg::Finished {
                source,
                job,
                outcome,
            } => {
                st.running.remove(&source);
                match outcome {
                    Ok(result) => job.done(result),
                    Err(message) => job.fail(message),
                }
            }
            ProvisionerMsg::Pull {
                model,
                reach,
                job,
                reply,
            } => {
                tokio::spawn(supervised_pull(
                    st.sources.clone(),
                    st.tasks.clone(),
                    model,
                    reach,
                    job,
                    reply,
                ));
            }
            ProvisionerMsg::Import { source, name, job } => {
                if !st.running.insert(source.clone()) {
                    job.fail(format!("an import of `{source}` is already running"));
                    return Ok(());
                }
                let store = st.store.clone();
                tokio::task::spawn_blocking(move || {
                    let outcome = import(&store, &source, name.as_deref(), &job);
                    if let Err(e) = me.cast(ProvisionerMsg::Finished {
                        source,
                        job: job.clone(),
                        outcome,
                    }) {
                        job.fail(format!("the provisioner stopped: {e}"));
                    }
                });
            }
        }
        Ok(())
    }
}

/// Runs one pull under supervision and reports how it ended (see the module docs).
async fn supervised_pull(
    sources: Sources,
    tasks: Arc<Tasks>,
    model: String,
    reach: Reach,
    job: Arc<Job>,
    reply: Option<PullReply>,
) {
    let slot: Arc<Mutex<Option<Result<PullOutcome, NodeError>>>> = Arc::default();
    let (s, m, j, out) = (sources, model, job.clone(), slot.clone());
    let ended = tasks
        .supervise(
            format!("pull {}", job.id),
            Some(MAX_PULL_RESTARTS),
            move || {
                let (sources, model, job, out) = (s.clone(), m.clone(), j.clone(), out.clone());
                async move {
                    let result = crate::pull::get(&sources, &model, reach, &job).await;
                    *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                }
            },
        )
        .await;
    let outcome = match ended {
        Err(crashed) => Err(NodeError::Internal(format!(
            "{crashed}; verified shards are kept, run the pull again to resume"
        ))),
        Ok(()) => slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| {
                Err(NodeError::Internal(
                    "the pull ended without a result".into(),
                ))
            }),
    };
    match reply {
        Some(reply) => {
            let _ = reply.send(outcome);
        }
        None => match outcome {
            Ok(out) => job.done(out.job_result()),
            Err(e) => job.fail(e),
        },
    }
}

/// Imports `source`, reporting progress on `job`; what the job ends with is returned.
pub(crate) fn import(
    store: &Store,
    source: &str,
    name: Option<&str>,
    job: &Job,
) -> Result<serde_json::Value, String> {
    job.phase("importing");
    let src = ImportSource::parse(source).map_err(|e| e.to_string())?;
    // A cancelled job stops the import at its next shard (and unlocks the path, which the
    // actor holds until this returns).
    let cancelled = || job.is_cancelled();
    // Progress at most every 100 ms, with rate and ETA, as pulls report it.
    let mut throttle = crate::pull::Throttle::new();
    let result = store.import_cancellable(&src, name, &cancelled, &mut |p| {
        throttle.progress(job, p.done, p.total)
    });
    result
        .map(|out| {
            serde_json::json!({
                "name": out.name,
                "content_id": out.content_id.to_hex(),
                "already_present": out.already_present,
                "size": out.manifest.total_size(),
            })
        })
        .map_err(|e| e.to_string())
}

pub type ProvisionerHandle = Handle<ProvisionerMsg>;

impl ProvisionerHandle {
    /// Starts a `model_pull`: the pull ends `job`.
    pub fn start_pull(&self, model: String, job: Arc<Job>) {
        let sent = self.try_cast(ProvisionerMsg::Pull {
            model,
            reach: Reach::Anywhere,
            job: job.clone(),
            reply: None,
        });
        if let Err(e) = sent {
            job.fail(e);
        }
    }

    /// Pulls `model` and waits for it, reporting on `job` without ending it.
    pub async fn pull(
        &self,
        model: &str,
        reach: Reach,
        job: &Arc<Job>,
    ) -> Result<PullOutcome, NodeError> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.try_cast(ProvisionerMsg::Pull {
            model: model.into(),
            reach,
            job: job.clone(),
            reply: Some(reply),
        })?;
        outcome.await.map_err(|_| {
            NodeError::Unavailable("the provisioner stopped during the pull; retry".into())
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobStatus, Jobs};

    fn gguf(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("tiny.gguf");
        rbee_format::gguf::writer::GgufWriter::tiny_model("llama")
            .write_file(&path)
            .unwrap();
        path
    }

    async fn ended(job: &Job) -> JobStatus {
        for _ in 0..500 {
            if job.status() != JobStatus::Running {
                return job.status();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the job never ended: {}", job.summary());
    }

    #[tokio::test]
    async fn a_cancelled_import_ends_catalogs_nothing_and_frees_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data")).unwrap();
        let src = gguf(dir.path()).to_str().unwrap().to_string();
        let args = ProvisionerArgs {
            sources: Sources {
                store: store.clone(),
                pool: None,
                hub: None,
            },
            tasks: Arc::default(),
        };
        let (actor, _done) = ractor::Actor::spawn(None, ProvisionerActor, args)
            .await
            .unwrap();
        let jobs = Jobs::default();
        let import = |name: &str| {
            let job = jobs.create("model_import");
            let msg = ProvisionerMsg::Import {
                source: src.clone(),
                name: Some(name.into()),
                job: job.clone(),
            };
            (job, msg)
        };

        let (job, msg) = import("tiny");
        job.cancel();
        actor.cast(msg).unwrap();
        assert_eq!(ended(&job).await, JobStatus::Cancelled);
        assert!(
            job.summary().to_string().contains("cancelled"),
            "{}",
            job.summary()
        );
        assert!(store.list().unwrap().is_empty());
        // Nothing half-written is left behind for gc to find.
        assert_eq!(store.gc().unwrap().removed_paths, 0);

        // A client that sees an import end may import the same source again at once: the
        // source is unlocked before the job ends.
        for round in 0..20 {
            let (job, msg) = import("tiny");
            actor.cast(msg).unwrap();
            assert_eq!(
                ended(&job).await,
                JobStatus::Done,
                "round {round}: {}",
                job.summary()
            );
        }
        assert_eq!(store.list().unwrap().len(), 1);
        actor.stop(None);
    }
}
