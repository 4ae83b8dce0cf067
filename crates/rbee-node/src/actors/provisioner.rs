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
    /// Internal: an import finished.
    Finished(String),
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
            ProvisionerMsg::Finished(source) => {
                st.running.remove(&source);
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
                    import(&store, &source, name.as_deref(), &job);
                    let _ = me.cast(ProvisionerMsg::Finished(source));
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
            let mut result = crate::share::pull_result(&out.import, &format!("hf:{hf}"));
            result["from"] = serde_json::json!(out.from);
            result["commit"] = serde_json::json!(out.commit);
            result["transferred"] = serde_json::json!(out.transferred);
            job.done(result);
        }
        Err(e) => job.fail(e),
    }
}

pub(crate) fn import(store: &Store, source: &str, name: Option<&str>, job: &Job) {
    job.phase("importing");
    let started = Instant::now();
    let mut last = Instant::now();
    let src = match ImportSource::parse(source) {
        Ok(s) => s,
        Err(e) => return job.fail(e),
    };
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
    match result {
        Ok(out) => {
            job.done(serde_json::json!({
                "name": out.name,
                "content_id": out.content_id.to_hex(),
                "already_present": out.already_present,
                "size": out.manifest.total_size(),
            }));
        }
        Err(e) => job.fail(e),
    }
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

    #[test]
    fn a_cancelled_import_ends_and_catalogs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data")).unwrap();
        let src = gguf(dir.path());
        let jobs = Jobs::default();
        let job = jobs.create("model_import");
        job.cancel();
        import(&store, src.to_str().unwrap(), Some("tiny"), &job);
        assert_eq!(job.status(), JobStatus::Cancelled);
        assert!(
            job.summary()["error"]
                .as_str()
                .unwrap()
                .contains("cancelled")
        );
        assert!(store.list().unwrap().is_empty());
        // Nothing half-written is left behind for gc to find.
        assert_eq!(store.gc().unwrap().removed_paths, 0);

        let job = jobs.create("model_import");
        import(&store, src.to_str().unwrap(), Some("tiny"), &job);
        assert_eq!(job.status(), JobStatus::Done, "{}", job.summary());
    }
}
