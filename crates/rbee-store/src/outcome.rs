//! What store operations report: an import's outcome, a damaged model, a catalog rebuild.
//! Their own module, below `store`, `import` and `recover`, which all speak of them.

use std::path::PathBuf;

use rbee_proto::{ContentId, Manifest};

use crate::catalog::CatalogEntry;
use crate::error::StoreError;

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    pub content_id: rbee_proto::ContentId,
    pub name: String,
    /// The same bytes were already cataloged (under `name`); nothing was added.
    pub already_present: bool,
    pub manifest: Manifest,
}

impl ImportOutcome {
    pub(crate) fn existing(e: &CatalogEntry, manifest: Manifest) -> Self {
        ImportOutcome {
            content_id: e.content_id,
            name: e.name.clone(),
            already_present: true,
            manifest,
        }
    }
}

/// A cataloged model whose manifest is missing or damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedModel {
    pub entry: CatalogEntry,
    /// What is wrong, naming the files (the manifest, and where it was moved).
    pub reason: String,
}

impl DamagedModel {
    /// The error a lookup of this model answers with.
    pub fn error(&self) -> StoreError {
        StoreError::DamagedModel {
            name: self.entry.name.clone(),
            id: self.entry.content_id,
            reason: self.reason.clone(),
        }
    }
}

/// Why the catalog had to be rebuilt, and what it holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// `catalog.json` was missing (`None`), or did not parse and was moved here.
    pub damaged_catalog: Option<PathBuf>,
    /// (name, content id) of every model cataloged again, with its default name.
    pub models: Vec<(String, ContentId)>,
    /// Manifests that were damaged too: quarantined, cataloged as `damaged-<id>`.
    pub damaged: Vec<(String, ContentId)>,
}
