//! `ProvisionerActor`: gets models onto this node: imports from local sources (files, folders,
//! Ollama, the HuggingFace cache) and pulls of HuggingFace references (see [`crate::pull`]:
//! catalog, then the pool, then the hub), reported as job events. One import per source at a
//! time; pulls of the same reference may run side by side, because the HF cache's per-file lock
//! makes the second wait for the first one's download instead of downloading again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rbee_store::{ImportSource, Store};

use super::Handle;
use crate::jobs::{Job, JobEvent};
use crate::pull::PullEvent;

pub enum ProvisionerMsg {
    Import {
        source: String,
        name: Option<String>,
        job: Arc<Job>,
    },
    /// Pull a HuggingFace reference with `hub`.
    Pull {
        hf: rbee_proto::HfRef,
        hub: Box<rbee_hub::Hub>,
        job: Arc<Job>,
    },
    /// Internal: an import finished. The source is unlocked before the job ends, so a client
    /// that sees the job done can import the same source again at once.
    Finished {
        source: String,
        job: Arc<Job>,
        outcome: Result<serde_json::Value, String>,
    },
}

pub struct ProvisionerState {
    store: Store,
    running: HashSet<String>,
}

#[derive(Debug)]
pub struct ProvisionerActor;

impl Actor for ProvisionerActor {
    type Msg = ProvisionerMsg;
    type State = ProvisionerState;
    type Arguments = Store;

    async fn pre_start(
        &self,
        _me: ActorRef<ProvisionerMsg>,
        store: Store,
    ) -> Result<ProvisionerState, ActorProcessingErr> {
        Ok(ProvisionerState {
            store,
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
            ProvisionerMsg::Pull { hf, hub, job } => {
                let store = st.store.clone();
                let watcher = job.clone();
                let task = tokio::task::spawn_blocking(move || pull(&store, &hub, &hf, &job));
                // The pull notices a cancel between reads; a stalled connection could delay that,
                // so the job itself ends at once (nothing is cataloged after a cancel).
                tokio::spawn(async move {
                    tokio::select! {
                        _ = watcher.cancelled() => watcher.fail("cancelled"),
                        _ = task => {}
                    }
                });
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

/// Progress events at most every 100 ms, with rate and ETA over the current phase.
struct Throttle {
    started: Instant,
    last: Option<Instant>,
}

impl Throttle {
    fn new() -> Self {
        Throttle {
            started: Instant::now(),
            last: None,
        }
    }

    fn restart(&mut self) {
        *self = Throttle::new();
    }

    fn progress(&mut self, job: &Job, done: u64, total: u64) {
        if self.last.is_some_and(|l| l.elapsed().as_millis() < 100) && done < total {
            return;
        }
        self.last = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        job.emit(JobEvent::Progress {
            done,
            total,
            rate_bytes_per_sec: rate,
            peers: None,
            eta_secs: (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate),
        });
    }
}

fn pull(store: &Store, hub: &rbee_hub::Hub, hf: &rbee_proto::HfRef, job: &Job) {
    let mut throttle = Throttle::new();
    let result = crate::pull::pull(store, hub, hf, &|| job.is_cancelled(), &mut |e| match e {
        PullEvent::Phase(p) => {
            throttle.restart();
            job.phase(p);
        }
        PullEvent::Progress { done, total } => throttle.progress(job, done, total),
    });
    match result {
        Ok(out) => {
            let mut result = crate::pull::pool::pull_result(&out.import, &format!("hf:{hf}"));
            result["from"] = serde_json::json!(out.from);
            result["commit"] = serde_json::json!(out.commit);
            result["transferred"] = serde_json::json!(out.transferred);
            job.done(result);
        }
        Err(e) => job.fail(e),
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
    let started = Instant::now();
    let mut last = Instant::now();
    let src = ImportSource::parse(source).map_err(|e| e.to_string())?;
    // A cancelled job stops the import at its next shard (and unlocks the path, which the
    // actor holds until this returns).
    let cancelled = || job.is_cancelled();
    let result = store.import_cancellable(&src, name, &cancelled, &mut |p| {
        // A progress event at most every 100 ms keeps the stream readable.
        if last.elapsed().as_millis() < 100 && p.done < p.total {
            return;
        }
        last = Instant::now();
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = p.done as f64 / secs;
        job.emit(JobEvent::Progress {
            done: p.done,
            total: p.total,
            rate_bytes_per_sec: rate,
            peers: None,
            eta_secs: (rate > 0.0).then(|| (p.total - p.done) as f64 / rate),
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobStatus, Jobs};

    fn gguf(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("tiny.gguf");
        rbee_gguf::writer::GgufWriter::tiny_model("llama")
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
        let (actor, _done) = ractor::Actor::spawn(None, ProvisionerActor, store.clone())
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
