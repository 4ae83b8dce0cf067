//! Blobs are checked against their manifest before a model loads: on the first load after an
//! import or pull, and whenever a file changed since its last verified load. What was verified
//! is recorded per blob in `verified.json` (size, modification time, device and inode), so an
//! unchanged file costs a `stat`, and a file changed in place, replaced or truncated is
//! re-hashed in full. Imports and pulls hashed the bytes they stored and record them directly.
//!
//! The record is a cache: losing it (or an entry) only means hashing again, so a damaged one is
//! read as empty and a failure to write it is a warning.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use rbee_proto::{ContentId, ShardHash};
use serde::{Deserialize, Serialize};

use crate::catalog::ModelRecord;
use crate::error::{IoContext, StoreError};
use crate::fsutil::{self, read_full};
use crate::store::Store;

const VERSION: u32 = 1;

/// What a file looked like when its bytes were last found to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            size: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    version: u32,
    /// Blob id (hex) → stamp.
    blobs: BTreeMap<String, Stamp>,
}

/// What [`Store::verify_for_load`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadCheck {
    /// Files re-hashed (new since the last verified load, or changed); the others were
    /// unchanged since they were last verified.
    pub rehashed: Vec<String>,
}

impl Store {
    fn verified_path(&self) -> PathBuf {
        self.root().join("verified.json")
    }

    fn read_verified(&self) -> BTreeMap<String, Stamp> {
        let path = self.verified_path();
        let Ok(bytes) = fs::read(&path) else {
            return BTreeMap::new();
        };
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) if r.version == VERSION => r.blobs,
            _ => {
                tracing::warn!(
                    "{} is unreadable; every model file is hashed again before its next load",
                    path.display()
                );
                BTreeMap::new()
            }
        }
    }

    /// Read-modify-write of the record under the catalog lock (never held while hashing).
    fn update_verified(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Stamp>),
    ) -> Result<(), StoreError> {
        let _guard = self.lock_catalog()?;
        self.update_verified_locked(f)
    }

    /// [`Store::update_verified`] for a caller that holds the catalog lock.
    fn update_verified_locked(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Stamp>),
    ) -> Result<(), StoreError> {
        let mut blobs = self.read_verified();
        let before = blobs.clone();
        f(&mut blobs);
        if blobs == before {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&Record {
            version: VERSION,
            blobs,
        })
        .map_err(|e| StoreError::BadSource(format!("encoding the verified record: {e}")))?;
        fsutil::write_atomic(&self.verified_path(), &bytes)
    }

    /// Records blobs whose bytes this process just hashed and stored (an import, a pull).
    /// Best effort: a blob left out is hashed on its first load.
    pub(crate) fn record_verified(&self, blobs: &[ContentId]) {
        let stamps: Vec<(String, Stamp)> = blobs
            .iter()
            .filter_map(|id| {
                let m = fs::metadata(self.blob_path(id)).ok()?;
                Some((id.to_hex(), Stamp::of(&m)))
            })
            .collect();
        if stamps.is_empty() {
            return;
        }
        if let Err(e) = self.update_verified(|all| all.extend(stamps)) {
            tracing::warn!("could not record verified blobs (they are hashed on first load): {e}");
        }
    }

    /// Forgets blobs that are gone (gc, under the catalog lock).
    pub(crate) fn prune_verified_locked(&self, live_blobs: &HashSet<String>) {
        if let Err(e) = self.update_verified_locked(|all| all.retain(|b, _| live_blobs.contains(b)))
        {
            tracing::warn!("could not prune the verified record: {e}");
        }
    }

    /// Checks a model's files against its manifest before it is loaded: each file that is new
    /// since its last verified load, or changed since (size, modification time, inode), is
    /// hashed shard by shard; an unchanged one costs a `stat`. A mismatch is an error naming
    /// the file and what to run; nothing is recorded for it, so it is checked again next time.
    pub fn verify_for_load(&self, record: &ModelRecord) -> Result<LoadCheck, StoreError> {
        let known = self.read_verified();
        let dir = self.model_dir(&record.entry.content_id);
        let mut check = LoadCheck::default();
        let mut fresh = Vec::new();
        for f in &record.manifest.files {
            let path = dir.join(&f.name);
            let bad = |problem: String| StoreError::CorruptModelFile {
                model: record.entry.name.clone(),
                file: f.name.clone(),
                path: path.clone(),
                problem,
            };
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(bad("the file is missing".into()));
                }
                Err(e) => return Err(StoreError::io("stat", &path, e)),
            };
            if meta.len() != f.size {
                return Err(bad(format!(
                    "it has {} bytes, its manifest says {}",
                    meta.len(),
                    f.size
                )));
            }
            let stamp = Stamp::of(&meta);
            let key = f.blob_id().to_hex();
            if known.get(&key) == Some(&stamp) {
                continue;
            }
            let mut file = fsutil::open_regular(&path)?;
            let mut buf = vec![0u8; usize::try_from(f.shard_size).unwrap_or(usize::MAX)];
            for (i, want) in f.shards.iter().enumerate() {
                let n = read_full(&mut file, &mut buf).ctx("read", &path)?;
                if ShardHash::of(&buf[..n]) != *want {
                    let start = i as u64 * f.shard_size;
                    return Err(bad(format!(
                        "shard {i} (bytes {start}..{}) does not match its hash",
                        start + n as u64
                    )));
                }
            }
            check.rehashed.push(f.name.clone());
            // Recorded only if the file did not change while it was being hashed.
            if fs::metadata(&path).is_ok_and(|m| Stamp::of(&m) == stamp) {
                fresh.push((key, stamp));
            }
        }
        if !fresh.is_empty()
            && let Err(e) = self.update_verified(|all| all.extend(fresh))
        {
            tracing::warn!("could not record verified files (hashed again next load): {e}");
        }
        Ok(check)
    }
}
