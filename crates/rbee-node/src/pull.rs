//! Getting a model onto this node. [`get`] is the one place that decides the order: (1) this
//! node's catalog, (2) the pool ([`pool::Pool`]: every peer that holds it at once, verified
//! shard by shard), (3) HuggingFace ([`from_hub`]) for a HuggingFace reference. The
//! provisioner runs it for `model_pull` jobs and for requests routed here to fetch a model;
//! `rbee-node models pull` without a node runs it with no pool.
//!
//! A hub pull lists the repo, chooses the files, downloads them resumably into the HF cache
//! (`rbee_hub`), then imports the snapshot into the store with its source (repo, commit,
//! file) recorded, so `org/repo:file` finds it later. Cancellation is honoured until the
//! import starts; the import itself hard-links from the cache and either catalogs the whole
//! model or nothing.

pub mod pool;
pub mod presets;

use std::sync::Arc;

use rbee_hub::{Hub, HubError, PlanKind};
use rbee_proto::{ContentId, HfRef, ModelRef};
use rbee_store::{ImportOutcome, ImportSource, Store};

use crate::error::NodeError;
use crate::jobs::{Job, JobEvent};

/// What a pull reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum PullEvent {
    Phase(&'static str),
    /// Bytes of the current phase (download, then import) done of total.
    Progress {
        done: u64,
        total: u64,
    },
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    pub import: ImportOutcome,
    /// `local`, `pool` or `huggingface`.
    pub from: &'static str,
    /// What a job reports as the source: `local`, `pool`, or `hf:<reference>`.
    pub source: String,
    /// The commit the reference resolved to (when the hub was asked).
    pub commit: Option<String>,
    /// Bytes received from the hub by this pull (the pool's pull reports its own progress).
    pub transferred: Option<u64>,
}

/// Where a pull may look, after this node's catalog.
#[derive(Debug, Clone)]
pub struct Sources {
    pub store: Store,
    /// The pool; `None` when the node runs alone (or without a node).
    pub pool: Option<pool::Pool>,
    /// HuggingFace; `None` without an HF cache dir.
    pub hub: Option<Hub>,
}

/// How far a pull may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Catalog, pool, then HuggingFace: a `model_pull`.
    Anywhere,
    /// Catalog, then the pool: a request routed here because a peer holds the model; a chat
    /// request never starts a download from the internet.
    Pool,
}

impl PullOutcome {
    /// The result a `model_pull` job ends with.
    pub fn job_result(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.import.name,
            "content_id": self.import.content_id.to_hex(),
            "already_present": self.import.already_present,
            "size": self.import.manifest.total_size(),
            "source": self.source,
            "from": self.from,
            "commit": self.commit,
            "transferred": self.transferred,
        })
    }
}

/// Gets `model` onto this node: the catalog, then the pool, then (for a HuggingFace
/// reference, when `reach` allows) the hub. Reports phases and progress on `job`; a job
/// cancelled meanwhile ends the pull (nothing half-written is cataloged).
pub async fn get(
    sources: &Sources,
    model: &str,
    reach: Reach,
    job: &Arc<Job>,
) -> Result<PullOutcome, NodeError> {
    let reference: ModelRef = model.parse()?;
    if let ModelRef::LocalPath(_) = reference {
        return Err(NodeError::BadRequest(format!(
            "`{model}` is a path: import it (`rbee-node models import {model}`, or a model_import job) instead of pulling it"
        )));
    }
    let mut checked = Vec::new();
    match sources.store.resolve(&reference) {
        Ok(rec) => return existing(&sources.store, rec.entry.content_id, "local"),
        Err(rbee_store::StoreError::NotFound(_)) => {
            checked.push("not in this node's catalog".to_string())
        }
        Err(e) => return Err(e.into()),
    }
    // A preset's weights are its base's: pulling a preset pulls its base (by content id),
    // after fetching its definition from the pool when this node has none.
    if let ModelRef::Name(name) = &reference
        && let Some(preset) = preset(sources, name, job).await?
    {
        let base = format!("cid:{}", preset.base);
        let outcome = Box::pin(get(sources, &base, reach, job)).await?;
        let (store, name, p) = (sources.store.clone(), name.clone(), preset.clone());
        tokio::task::spawn_blocking(move || match crate::preset::find(&store, &name) {
            Some(_) => Ok(()),
            None => crate::preset::save(&store, &name, &p),
        })
        .await
        .map_err(|e| NodeError::Internal(format!("saving the preset: {e}")))??;
        return Ok(outcome);
    }
    match &sources.pool {
        Some(pool) => {
            if let Some(import) = pool.pull(model, job).await? {
                return Ok(PullOutcome {
                    import,
                    from: "pool",
                    source: "pool".into(),
                    commit: None,
                    transferred: None,
                });
            }
            let peers = pool.net.peers().len();
            checked.push(format!("none of the {peers} peer(s) in the pool shares it"));
        }
        None => checked.push("this node is in no pool".to_string()),
    }
    let hf = match (&reference, reach) {
        (ModelRef::HuggingFace(hf), Reach::Anywhere) => hf.clone(),
        (ModelRef::HuggingFace(_), Reach::Pool) => {
            return Err(NodeError::ModelNotFound {
                model: model.into(),
                checked,
                hint: Some(format!(
                    "pull it from HuggingFace first: `rbee-node models pull {model}`"
                )),
            });
        }
        _ => {
            if reach == Reach::Anywhere {
                checked.push("not a HuggingFace reference (`org/repo[:file]`)".into());
            }
            return Err(NodeError::ModelNotFound {
                model: model.into(),
                checked,
                hint: Some(
                    "`rbee-node models ls` and GET /v1/pool show the models there are".into(),
                ),
            });
        }
    };
    let Some(hub) = sources.hub.clone() else {
        checked.push("this node has no HuggingFace cache dir (set HF_HOME or --hf-home)".into());
        return Err(NodeError::ModelNotFound {
            model: model.into(),
            checked,
            hint: None,
        });
    };
    let store = sources.store.clone();
    let pulling = job.clone();
    let hub_pull = tokio::task::spawn_blocking(move || {
        let mut throttle = Throttle::new();
        from_hub(
            &store,
            &hub,
            &hf,
            &|| pulling.is_cancelled(),
            &mut |e| match e {
                PullEvent::Phase(p) => {
                    throttle.restart();
                    pulling.phase(p);
                }
                PullEvent::Progress { done, total } => throttle.progress(&pulling, done, total),
            },
        )
    });
    // The hub pull notices a cancel between reads; a stalled connection could delay that, so
    // a cancel ends the pull at once (the download resumes next time; nothing is cataloged).
    tokio::select! {
        done = hub_pull => done.map_err(|e| NodeError::Internal(format!("the hub pull failed: {e}")))?,
        () = job.cancelled() => Err(NodeError::Cancelled("cancelled; run the pull again to resume".into())),
    }
}

/// The preset `name` names: this node's own, else one the pool shares (its definition
/// fetched and checked, not yet stored).
async fn preset(
    sources: &Sources,
    name: &str,
    job: &Arc<Job>,
) -> Result<Option<crate::preset::Preset>, NodeError> {
    let (store, n) = (sources.store.clone(), name.to_string());
    let local = tokio::task::spawn_blocking(move || crate::preset::find(&store, &n))
        .await
        .map_err(|e| NodeError::Internal(format!("reading presets: {e}")))?;
    if local.is_some() {
        return Ok(local);
    }
    let Some(pool) = &sources.pool else {
        return Ok(None);
    };
    job.phase("asking the pool for a preset");
    presets::fetch(&pool.net, name).await
}

/// Progress events at most every 100 ms, with rate and ETA over the current phase.
pub(crate) struct Throttle {
    started: std::time::Instant,
    last: Option<std::time::Instant>,
}

impl Throttle {
    pub(crate) fn new() -> Self {
        Throttle {
            started: std::time::Instant::now(),
            last: None,
        }
    }

    fn restart(&mut self) {
        *self = Throttle::new();
    }

    pub(crate) fn progress(&mut self, job: &Job, done: u64, total: u64) {
        if self.last.is_some_and(|l| l.elapsed().as_millis() < 100) && done < total {
            return;
        }
        self.last = Some(std::time::Instant::now());
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

/// The hub step: pulls `hf` into `store` (the catalog is asked again first: a pull of the
/// same reference may have finished meanwhile); `cancel` is polled between chunks.
pub fn from_hub(
    store: &Store,
    hub: &Hub,
    hf: &HfRef,
    cancel: &(dyn Fn() -> bool + Sync),
    events: &mut dyn FnMut(PullEvent),
) -> Result<PullOutcome, NodeError> {
    let as_ref = ModelRef::HuggingFace(hf.clone());
    if let Ok(rec) = store.resolve(&as_ref) {
        return existing(store, rec.entry.content_id, "local");
    }
    events(PullEvent::Phase("resolving"));
    let mut downloading = false;
    let (plan, got) = hub.pull(hf, cancel, &mut |done, total| {
        if !downloading {
            downloading = true;
            events(PullEvent::Phase("downloading"));
        }
        events(PullEvent::Progress { done, total });
    })?;
    if cancel() {
        return Err(HubError::Cancelled.into());
    }
    if let PlanKind::SplitGguf { first, parts } = &plan.kind {
        return Err(NodeError::InvalidModel(format!(
            "{}:{first} is a {parts}-part split GGUF: all parts are downloaded in {}, but rbee \
             cannot import split GGUFs yet. Merge them with `llama-gguf-split --merge {} merged.gguf` \
             and run `rbee-node models import merged.gguf`",
            plan.repo,
            got.snapshot.display(),
            got.snapshot.join(first).display()
        )));
    }
    events(PullEvent::Phase("importing"));
    let source = ImportSource::HfCache(HfRef {
        repo: plan.repo.clone(),
        revision: Some(plan.commit.clone()),
        file: plan.model_file().map(str::to_string),
    });
    let import = store
        .clone()
        .with_hf_cache_dir(hub.cache_dir())
        .import(&source, &mut |p| {
            events(PullEvent::Progress {
                done: p.done,
                total: p.total,
            })
        })?;
    Ok(PullOutcome {
        import,
        from: "huggingface",
        source: format!("hf:{hf}"),
        commit: Some(plan.commit),
        transferred: Some(got.transferred),
    })
}

fn existing(store: &Store, id: ContentId, from: &'static str) -> Result<PullOutcome, NodeError> {
    let rec = store.resolve(&ModelRef::ContentId(id))?;
    Ok(PullOutcome {
        import: ImportOutcome {
            content_id: id,
            name: rec.entry.name,
            already_present: true,
            manifest: rec.manifest,
        },
        from,
        source: from.into(),
        commit: None,
        transferred: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::Jobs;

    fn sources(dir: &std::path::Path) -> Sources {
        let store = Store::open(dir.join("data")).unwrap();
        let gguf = dir.join("tiny.gguf");
        rbee_format::gguf::GgufWriter::tiny_model("llama")
            .write_file(&gguf)
            .unwrap();
        store
            .import_named(&ImportSource::Path(gguf), Some("tiny"), &mut |_| {})
            .unwrap();
        Sources {
            store,
            pool: None,
            hub: None,
        }
    }

    async fn get_err(s: &Sources, model: &str, reach: Reach) -> NodeError {
        let job = Jobs::default().create("model_pull");
        get(s, model, reach, &job).await.unwrap_err()
    }

    #[tokio::test]
    async fn the_catalog_comes_first_and_a_miss_names_every_place_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = sources(dir.path());
        let job = Jobs::default().create("model_pull");
        let found = get(&s, "tiny", Reach::Anywhere, &job).await.unwrap();
        assert_eq!((found.from, found.import.already_present), ("local", true));
        assert_eq!(found.job_result()["source"], "local");

        let e = get_err(&s, "ghost", Reach::Anywhere).await;
        assert_eq!((e.status(), e.code()), (404, Some("model_not_found")));
        assert_eq!(
            e.to_string(),
            "no model `ghost`: not in this node's catalog; this node is in no pool; not a \
             HuggingFace reference (`org/repo[:file]`). `rbee-node models ls` and GET /v1/pool \
             show the models there are"
        );
        // A request routed here for a pool pull never goes to HuggingFace.
        let e = get_err(&s, "org/repo", Reach::Pool).await;
        assert!(e.is_model_not_found(), "{e}");
        assert!(
            e.to_string().contains("pull it from HuggingFace first"),
            "{e}"
        );
        let e = get_err(&s, "org/repo", Reach::Anywhere).await;
        assert!(e.to_string().contains("no HuggingFace cache dir"), "{e}");
        let e = get_err(&s, "./model.gguf", Reach::Anywhere).await;
        assert_eq!(e.status(), 400, "{e}");
    }
}
