//! `model_pull` of a HuggingFace reference from the hub. Shared by the `ProvisionerActor` (as a
//! job) and `rbee-node models pull` without a node. A node's job asks its pool first
//! ([`pool::pull_from_pool`]) and only comes here when no peer has the model; a pull
//! without a node has no pool to ask.
//!
//! Order: (1) the local catalog already has a model imported from this reference → done;
//! (2) the hub: list the repo, choose the
//! files, download them resumably into the HF cache (`rbee_hub`), then import the snapshot into
//! the store with its source (repo, commit, file) recorded, so `org/repo:file` finds it later.
//! Cancellation is honoured until the import starts; the import itself hard-links from the
//! cache and either catalogs the whole model or nothing.

pub mod pool;

use rbee_hub::{Hub, HubError, PlanKind};
use rbee_proto::{ContentId, HfRef, ModelRef};
use rbee_store::{ImportOutcome, ImportSource, Store};

use crate::error::NodeError;

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
    /// `pool`, `local` or `huggingface`.
    pub from: &'static str,
    /// The commit the reference resolved to (when the hub was asked).
    pub commit: Option<String>,
    /// Bytes received from the network by this pull.
    pub transferred: u64,
}

/// Pulls `hf` into `store`; `cancel` is polled between chunks.
pub fn pull(
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
        commit: Some(plan.commit),
        transferred: got.transferred,
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
        commit: None,
        transferred: 0,
    })
}

impl From<HubError> for NodeError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::NotFound(_) => NodeError::NotFound(e.to_string()),
            HubError::Gated { .. }
            | HubError::NoUsableFiles { .. }
            | HubError::Invalid(_)
            | HubError::Config(_) => NodeError::BadRequest(e.to_string()),
            HubError::Cancelled => NodeError::Cancelled(e.to_string()),
            HubError::Integrity { .. }
            | HubError::EtagChanged { .. }
            | HubError::Interrupted { .. }
            | HubError::Unreachable { .. }
            | HubError::Status { .. }
            | HubError::BadResponse(_) => NodeError::Unavailable(e.to_string()),
            HubError::Io { .. } => NodeError::Internal(e.to_string()),
        }
    }
}
