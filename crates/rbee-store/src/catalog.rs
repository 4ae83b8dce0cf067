//! The catalog: which cataloged content ids exist, and the names, aliases, pins and last-used
//! stamps people and the eviction policy rely on.
//!
//! One small JSON file, replaced atomically under an exclusive file lock, so a CLI and a running
//! node can share a data dir and a crash leaves either the old catalog or the new one.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rbee_proto::{ContentId, Manifest};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, StoreError};
use crate::fsutil;

const CATALOG_VERSION: u32 = 1;

/// A cataloged model's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub content_id: ContentId,
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub pinned: bool,
    /// Unix seconds.
    pub added_at: u64,
    /// Unix seconds; drives least-recently-used eviction.
    pub last_used: u64,
}

impl CatalogEntry {
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }
}

/// A catalog entry with its manifest: what `models ls` and `models show` print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub entry: CatalogEntry,
    pub manifest: Manifest,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CatalogState {
    version: u32,
    pub models: Vec<CatalogEntry>,
}

/// What `catalog.json` held.
pub(crate) enum ReadCatalog {
    Present(CatalogState),
    Missing,
    /// It exists but does not parse; the reason says why.
    Damaged(String),
}

impl CatalogState {
    pub fn empty() -> Self {
        CatalogState {
            version: CATALOG_VERSION,
            models: Vec::new(),
        }
    }

    pub fn get(&self, id: &ContentId) -> Option<&CatalogEntry> {
        self.models.iter().find(|e| &e.content_id == id)
    }

    pub fn get_mut(&mut self, id: &ContentId) -> Option<&mut CatalogEntry> {
        self.models.iter_mut().find(|e| &e.content_id == id)
    }

    pub fn by_name(&self, name: &str) -> Option<&CatalogEntry> {
        self.models.iter().find(|e| e.answers_to(name))
    }

    /// `base`, or `base-2`, `base-3`, … whichever no other model answers to.
    pub fn unique_name(&self, base: &str) -> String {
        if self.by_name(base).is_none() {
            return base.to_string();
        }
        (2..)
            .map(|n| format!("{base}-{n}"))
            .find(|n| self.by_name(n).is_none())
            .unwrap_or_else(|| base.to_string())
    }

    /// Fails unless `name` is free or already belongs to `owner`.
    pub fn check_name_free(&self, name: &str, owner: &ContentId) -> Result<(), StoreError> {
        if !rbee_proto::is_valid_name(name) {
            return Err(StoreError::InvalidName(name.to_string()));
        }
        match self.by_name(name) {
            Some(e) if &e.content_id != owner => Err(StoreError::NameTaken {
                name: name.to_string(),
                existing: e.content_id,
            }),
            _ => Ok(()),
        }
    }
}

/// Handle on `catalog.json` and its lock file.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    path: PathBuf,
    lock_path: PathBuf,
}

impl Catalog {
    pub fn new(root: &Path) -> Self {
        Self {
            path: root.join("catalog.json"),
            lock_path: root.join("catalog.lock"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `catalog.json`. A missing file and one that does not parse are answers, not
    /// errors: the store rebuilds the catalog from its manifests then (see
    /// `Store::state`). A catalog of another version is an error: it may be a newer rbee's,
    /// and rebuilding would throw its names away.
    pub fn read(&self) -> Result<ReadCatalog, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadCatalog::Missing),
            Err(e) => return Err(StoreError::io("read", &self.path, e)),
        };
        let state: CatalogState = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => return Ok(ReadCatalog::Damaged(e.to_string())),
        };
        if state.version != CATALOG_VERSION {
            return Err(StoreError::CorruptCatalog {
                path: self.path.clone(),
                reason: format!(
                    "version {} is not the supported version {CATALOG_VERSION} (written by another rbee version?); nothing was changed",
                    state.version
                ),
            });
        }
        Ok(ReadCatalog::Present(state))
    }

    /// Takes the writer lock; it is held until the returned guard drops.
    pub fn lock(&self) -> Result<CatalogLock, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .ctx("open", &self.lock_path)?;
        file.lock().ctx("lock", &self.lock_path)?;
        Ok(CatalogLock { _file: file })
    }

    pub fn save(&self, state: &CatalogState) -> Result<(), StoreError> {
        let state = CatalogState {
            version: CATALOG_VERSION,
            models: state.models.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::CorruptCatalog {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        fsutil::write_atomic(&self.path, &bytes)
    }
}

/// Holds the catalog writer lock (released on drop, or when the process dies).
#[derive(Debug)]
pub(crate) struct CatalogLock {
    _file: File,
}
