//! Pulls in progress. A partial model lives under `partial/<cid>/` with one part file per model
//! file and a record of verified shards. A shard's bit is recorded only after its bytes were
//! verified and synced, so after any crash the record under-reports, never over-reports, and a
//! resumed pull fetches exactly the shards that are not known good. Nothing here is visible in
//! the catalog until [`PartialModel::finish`].

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use rbee_proto::{ContentId, Manifest, ShardHash, codec};

use crate::error::{IoContext, StoreError};
use crate::fsutil::{self, create_dir_all, remove_path};
use crate::outcome::ImportOutcome;
use crate::store::Store;

/// A model being fetched shard by shard.
#[derive(Debug)]
pub struct PartialModel {
    store: Store,
    id: ContentId,
    manifest: Manifest,
    dir: PathBuf,
    /// `verified[file][shard]`: verified and written (on disk after the next checkpoint).
    verified: Vec<Vec<bool>>,
    /// The shards the record listed when this pull (re)started: written by an earlier
    /// process, so [`PartialModel::finish`] reads them back and checks them again. Shards
    /// written here were hashed from the very bytes that were written.
    resumed: Vec<Vec<bool>>,
    parts: Vec<File>,
    /// Page-cache-bypassing writes, when the filesystem takes them.
    direct: Option<DirectWriter>,
    /// Shards written since the last checkpoint: not yet synced, not yet in the record.
    unsynced: usize,
}

/// Alignment of direct writes: buffer address, file offset and length (covers 512-byte and
/// 4 KiB logical blocks).
const ALIGN: usize = 4096;

/// Writes shards with `O_DIRECT`: the device reads them straight from an aligned buffer
/// instead of the kernel copying every byte into the page cache first. A pull writes each
/// byte once and does not read it back, so the page cache buys nothing there, and on the
/// project's VM that copy was the busiest part of a pull (`docs/BENCHMARKS.md`). Shards whose
/// offset or length is not aligned (a file's last one) go through the page cache as before;
/// a filesystem that refuses direct I/O (tmpfs) turns it off.
#[derive(Debug)]
struct DirectWriter {
    files: Vec<File>,
    /// Holds an `ALIGN`-aligned window as long as the largest shard.
    scratch: Vec<u8>,
}

impl DirectWriter {
    #[cfg(target_os = "linux")]
    fn open(paths: &[PathBuf]) -> Option<DirectWriter> {
        use std::os::unix::fs::OpenOptionsExt;
        let files = paths
            .iter()
            .map(|p| {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(p)
            })
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(DirectWriter {
            files,
            scratch: Vec::new(),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn open(_paths: &[PathBuf]) -> Option<DirectWriter> {
        None
    }

    /// Writes `data` at `offset` of part `file` directly. `Ok(false)`: not possible for this
    /// write (unaligned), use the page cache.
    fn write(&mut self, file: usize, offset: u64, data: &[u8]) -> std::io::Result<bool> {
        let Some(f) = self.files.get(file) else {
            return Ok(false);
        };
        if data.is_empty()
            || !data.len().is_multiple_of(ALIGN)
            || !offset.is_multiple_of(ALIGN as u64)
        {
            return Ok(false);
        }
        if self.scratch.len() < data.len() + ALIGN {
            self.scratch = vec![0; data.len() + ALIGN];
        }
        let pad = (ALIGN - self.scratch.as_ptr() as usize % ALIGN) % ALIGN;
        let window = &mut self.scratch[pad..pad + data.len()];
        window.copy_from_slice(data);
        f.write_all_at(window, offset)?;
        Ok(true)
    }
}

/// Shards written between checkpoints (64 MiB at the default shard size): a crash loses at
/// most this much progress, and a pull pays two fsyncs per checkpoint instead of per shard.
const CHECKPOINT_SHARDS: usize = 16;

impl Store {
    /// Starts a pull of `manifest`, or resumes the one already under way.
    pub fn begin_partial(&self, manifest: Manifest) -> Result<PartialModel, StoreError> {
        self.begin_partial_as(manifest.content_id(), manifest)
    }

    /// [`Store::begin_partial`] for the model the pool knows as `id`, which may be the
    /// manifest's legacy id (a model cataloged before content ids left out the source); the
    /// model is cataloged under `id`.
    pub fn begin_partial_as(
        &self,
        id: ContentId,
        manifest: Manifest,
    ) -> Result<PartialModel, StoreError> {
        manifest.validate()?;
        if !manifest.matches_id(&id) {
            return Err(StoreError::BadSource(format!(
                "the manifest does not hash to {id}"
            )));
        }
        let dir = self.partial_dir(&id);
        create_dir_all(&dir)?;
        let manifest_path = dir.join("manifest");
        if !manifest_path.exists() {
            fsutil::write_atomic(&manifest_path, &manifest.encode()?)?;
        }
        let record = dir.join("verified");
        let mut verified: Vec<Vec<bool>> = match fs::read(&record) {
            Ok(bytes) => codec::decode(&bytes).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let shape_ok = verified.len() == manifest.files.len()
            && verified
                .iter()
                .zip(&manifest.files)
                .all(|(v, f)| v.len() == f.shards.len());
        if !shape_ok {
            // A record that does not fit the manifest is worthless: start over.
            verified = manifest
                .files
                .iter()
                .map(|f| vec![false; f.shards.len()])
                .collect();
        }
        let mut parts = Vec::with_capacity(manifest.files.len());
        let part_paths: Vec<PathBuf> = (0..manifest.files.len())
            .map(|i| dir.join(format!("{i}.part")))
            .collect();
        for (f, path) in manifest.files.iter().zip(&part_paths) {
            let path = path.clone();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .ctx("open", &path)?;
            if file.metadata().ctx("stat", &path)?.len() != f.size {
                file.set_len(f.size).ctx("allocate", &path)?;
            }
            parts.push(file);
        }
        Ok(PartialModel {
            store: self.clone(),
            id,
            manifest,
            dir,
            resumed: verified.clone(),
            verified,
            direct: DirectWriter::open(&part_paths),
            parts,
            unsynced: 0,
        })
    }

    /// Content ids of pulls that were started and not finished.
    pub fn partial_pulls(&self) -> Result<Vec<ContentId>, StoreError> {
        Ok(fsutil::list_dir(&self.root().join("partial"))?
            .iter()
            .filter_map(|p| p.file_name()?.to_str()?.parse().ok())
            .collect())
    }
}

impl PartialModel {
    pub fn content_id(&self) -> ContentId {
        self.id
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// (file index, shard index) of every shard not yet verified, in file order.
    pub fn missing(&self) -> Vec<(usize, usize)> {
        self.verified
            .iter()
            .enumerate()
            .flat_map(|(fi, bits)| {
                bits.iter()
                    .enumerate()
                    .filter(|(_, ok)| !**ok)
                    .map(move |(si, _)| (fi, si))
            })
            .collect()
    }

    pub fn is_verified(&self, file: usize, shard: usize) -> bool {
        self.verified
            .get(file)
            .and_then(|b| b.get(shard))
            .copied()
            .unwrap_or(false)
    }

    pub fn bytes_verified(&self) -> u64 {
        self.manifest
            .files
            .iter()
            .zip(&self.verified)
            .map(|(f, bits)| {
                bits.iter()
                    .enumerate()
                    .filter(|(_, ok)| **ok)
                    .map(|(i, _)| f.shard_len(i).unwrap_or(0))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Verifies `data` against the manifest and, only if it matches, writes it and records it.
    /// A mismatch writes nothing and names the shard.
    pub fn write_shard(
        &mut self,
        file: usize,
        shard: usize,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let entry = self
            .manifest
            .files
            .get(file)
            .ok_or_else(|| StoreError::ShardOutOfRange {
                file: format!("#{file}"),
                index: shard,
            })?;
        let expected = *entry
            .shards
            .get(shard)
            .ok_or_else(|| StoreError::ShardOutOfRange {
                file: entry.name.clone(),
                index: shard,
            })?;
        let actual = ShardHash::of(data);
        if actual != expected || Some(data.len() as u64) != entry.shard_len(shard) {
            return Err(StoreError::ShardMismatch {
                file: entry.name.clone(),
                index: shard,
                expected,
                actual,
            });
        }
        let path = self.dir.join(format!("{file}.part"));
        let offset = shard as u64 * entry.shard_size;
        let direct = match self.direct.as_mut().map(|d| d.write(file, offset, data)) {
            Some(Ok(done)) => done,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {
                tracing::debug!("direct writes refused ({e}); writing through the page cache");
                self.direct = None;
                false
            }
            Some(Err(e)) => return Err(e).ctx("write", &path),
            None => false,
        };
        if !direct {
            self.parts[file]
                .write_all_at(data, offset)
                .ctx("write", &path)?;
        }
        self.verified[file][shard] = true;
        self.unsynced += 1;
        if self.unsynced >= CHECKPOINT_SHARDS {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes every shard written so far durable and records it: the part files are synced
    /// first, then the record is replaced atomically, so the record never lists a shard whose
    /// bytes could still be lost. Runs every few shards, and when the pull is dropped.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        if self.unsynced == 0 {
            return Ok(());
        }
        for (i, part) in self.parts.iter().enumerate() {
            let path = self.dir.join(format!("{i}.part"));
            part.sync_data().ctx("sync", &path)?;
        }
        fsutil::write_atomic(
            &self.dir.join("verified"),
            &codec::encode(&self.verified).map_err(rbee_proto::ManifestError::from)?,
        )?;
        self.unsynced = 0;
        Ok(())
    }

    /// Re-checks every shard, moves the files into the store and catalogs the model.
    pub fn finish(mut self, name_hint: &str) -> Result<ImportOutcome, StoreError> {
        self.checkpoint()?;
        let missing = self.missing().len();
        if missing > 0 {
            return Err(StoreError::Incomplete(self.id, missing));
        }
        let mut fresh = Vec::new();
        for (i, f) in self.manifest.files.iter().enumerate() {
            let path = self.dir.join(format!("{i}.part"));
            let file = &self.parts[i];
            let mut buf = Vec::new();
            for (si, want) in f.shards.iter().enumerate() {
                if !self.resumed[i][si] {
                    continue;
                }
                buf.resize(f.shard_len(si).unwrap_or(0) as usize, 0);
                file.read_exact_at(&mut buf, si as u64 * f.shard_size)
                    .ctx("read", &path)?;
                let actual = ShardHash::of(&buf);
                if actual != *want {
                    return Err(StoreError::ShardMismatch {
                        file: f.name.clone(),
                        index: si,
                        expected: *want,
                        actual,
                    });
                }
            }
            let blob = self.store.blob_path(&f.blob_id());
            if blob.exists() {
                continue;
            }
            self.parts[i].sync_all().ctx("sync", &path)?;
            let mut perms = fs::metadata(&path).ctx("stat", &path)?.permissions();
            perms.set_readonly(true);
            fs::set_permissions(&path, perms).ctx("chmod", &path)?;
            fsutil::commit_file(&path, &blob)?;
            fresh.push(f.blob_id());
        }
        let outcome = self
            .store
            .commit_model_as(self.id, self.manifest.clone(), name_hint)?;
        // Every shard was verified as it was written (or re-read above).
        self.store.record_verified(&fresh);
        remove_path(&self.dir)?;
        Ok(outcome)
    }

    /// Gives up on this pull and deletes what it fetched.
    pub fn abandon(mut self) -> Result<(), StoreError> {
        self.unsynced = 0;
        remove_path(&self.dir)
    }
}

impl Drop for PartialModel {
    /// A pull that stops (error, cancel, shutdown) keeps what it verified: best effort, since
    /// a failed checkpoint only means those shards are fetched again.
    fn drop(&mut self) {
        if self.unsynced > 0
            && self.dir.exists()
            && let Err(e) = self.checkpoint()
        {
            tracing::warn!("could not record pull progress: {e}");
        }
    }
}
