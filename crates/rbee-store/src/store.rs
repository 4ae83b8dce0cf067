//! The store itself: blobs, views, manifests, and the catalog operations on top of them.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbee_proto::{ContentId, FileEntry, Manifest, ModelRef, ShardHash};

use crate::catalog::{Catalog, CatalogEntry, CatalogLock, CatalogState, ModelRecord, ReadCatalog};
use crate::error::{IoContext, StoreError};
use crate::fsutil::{self, create_dir_all, list_dir, read_full, remove_path, sync_dir};
use crate::outcome::{DamagedModel, ImportOutcome, RebuildReport};

/// The largest preset definition read back ([`Store::presets`]); larger files are skipped.
pub const MAX_PRESET_BYTES: u64 = 1 << 20;

/// Progress of a long operation, reported as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
}

/// Where the store's import path reports progress; an `Err` (a cancelled job) stops it
/// between shards.
pub(crate) type Report<'a> = dyn FnMut(Progress) -> Result<(), StoreError> + 'a;

/// Where a shard's bytes live on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLocation {
    pub blob: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// The result of re-hashing a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub content_id: ContentId,
    pub name: String,
    /// (file name, shard index) of every shard whose bytes no longer match.
    pub bad_shards: Vec<(String, usize)>,
    /// Files whose blob is gone or has the wrong size.
    pub missing_files: Vec<String>,
    /// The model's manifest is damaged or missing (why, naming the files); nothing else
    /// could be checked.
    pub damaged: Option<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.bad_shards.is_empty() && self.missing_files.is_empty() && self.damaged.is_none()
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed_paths: usize,
    pub freed_bytes: u64,
    /// Cataloged models whose manifest is damaged or missing. While there are any, no blob
    /// is deleted: which blobs they use is unknown.
    pub kept_blobs_for: Vec<String>,
}

/// `RBEE_DATA_DIR`, else `$XDG_DATA_HOME/rbee`, else `~/.local/share/rbee`.
pub fn default_data_dir() -> Result<PathBuf, StoreError> {
    if let Some(dir) = std::env::var_os("RBEE_DATA_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("rbee"));
    }
    home().map(|h| h.join(".local/share/rbee"))
}

pub(crate) fn home() -> Result<PathBuf, StoreError> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| StoreError::BadSource("HOME is not set; pass --data-dir".into()))
}

/// `OLLAMA_MODELS`, else `~/.ollama/models`.
pub fn ollama_models_dir() -> Result<PathBuf, StoreError> {
    match std::env::var_os("OLLAMA_MODELS").filter(|d| !d.is_empty()) {
        Some(d) => Ok(PathBuf::from(d)),
        None => home().map(|h| h.join(".ollama/models")),
    }
}

/// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> Result<PathBuf, StoreError> {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("HF_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("hub"));
    }
    home().map(|h| h.join(".cache/huggingface/hub"))
}

/// A node's model store. Cheap to clone; every method is safe to call from several threads and
/// processes at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    catalog: Catalog,
    ollama_dir: Option<PathBuf>,
    hf_cache_dir: Option<PathBuf>,
    rebuilt: Option<Arc<RebuildReport>>,
}

impl Store {
    /// Opens (or creates) the store at `root`. A missing or unparsable `catalog.json` is
    /// rebuilt from the manifests first (logged, and kept in [`Store::rebuilt_catalog`]); a
    /// new store gets an empty `catalog.json` at once, so that a missing one always means a
    /// lost one.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for sub in ["blobs", "manifests", "views", "partial", "tmp"] {
            create_dir_all(&root.join(sub))?;
        }
        let catalog = Catalog::new(&root);
        let mut store = Store {
            root,
            catalog,
            ollama_dir: None,
            hf_cache_dir: None,
            rebuilt: None,
        };
        if !matches!(store.catalog.read()?, ReadCatalog::Present(_)) {
            let guard = store.catalog.lock()?;
            let (_, report) = store.state_locked(&guard)?;
            store.rebuilt = report.map(Arc::new);
        }
        Ok(store)
    }

    /// What [`Store::open`] rebuilt, if it found the catalog missing or damaged.
    pub fn rebuilt_catalog(&self) -> Option<&RebuildReport> {
        self.rebuilt.as_deref()
    }

    pub(crate) fn lock_catalog(&self) -> Result<CatalogLock, StoreError> {
        self.catalog.lock()
    }

    pub(crate) fn catalog_path(&self) -> &Path {
        self.catalog.path()
    }

    /// The catalog as it is now. A `catalog.json` that went missing or bad since is rebuilt
    /// from the manifests (under the lock) rather than read as an empty store.
    pub(crate) fn state(&self) -> Result<CatalogState, StoreError> {
        if let ReadCatalog::Present(state) = self.catalog.read()? {
            return Ok(state);
        }
        let guard = self.catalog.lock()?;
        Ok(self.state_locked(&guard)?.0)
    }

    /// [`Store::state`] for a caller that holds the lock; also says whether it rebuilt.
    pub(crate) fn state_locked(
        &self,
        _guard: &CatalogLock,
    ) -> Result<(CatalogState, Option<RebuildReport>), StoreError> {
        let (state, report) = match self.catalog.read()? {
            ReadCatalog::Present(state) => return Ok((state, None)),
            ReadCatalog::Missing => self.rebuild_catalog(None)?,
            ReadCatalog::Damaged(reason) => self.rebuild_catalog(Some(&reason))?,
        };
        self.catalog.save(&state)?;
        Ok((state, report))
    }

    /// Read-modify-write of the catalog under its lock. `f` sees the current state; if it
    /// returns Ok, the modified state is written atomically before the lock is released.
    pub(crate) fn update_catalog<T>(
        &self,
        f: impl FnOnce(&mut CatalogState) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.catalog.lock()?;
        let mut state = self.state_locked(&guard)?.0;
        let out = f(&mut state)?;
        self.catalog.save(&state)?;
        Ok(out)
    }

    /// Reads Ollama models from `dir` instead of `OLLAMA_MODELS` / `~/.ollama/models`.
    pub fn with_ollama_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ollama_dir = Some(dir.into());
        self
    }

    /// Reads the HuggingFace cache from `dir` instead of `HF_HUB_CACHE` / `HF_HOME`.
    pub fn with_hf_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.hf_cache_dir = Some(dir.into());
        self
    }

    pub(crate) fn ollama_root(&self) -> Result<PathBuf, StoreError> {
        self.ollama_dir.clone().map_or_else(ollama_models_dir, Ok)
    }

    pub(crate) fn hf_cache_root(&self) -> Result<PathBuf, StoreError> {
        self.hf_cache_dir.clone().map_or_else(hf_cache_dir, Ok)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn partial_dir(&self, id: &ContentId) -> PathBuf {
        self.root.join("partial").join(id.to_hex())
    }

    pub(crate) fn blob_path(&self, id: &ContentId) -> PathBuf {
        self.root.join("blobs").join(id.to_hex())
    }

    pub(crate) fn manifest_path(&self, id: &ContentId) -> PathBuf {
        self.root.join("manifests").join(id.to_hex())
    }

    /// The folder a loader opens: one file per model file, under its own name.
    pub fn model_dir(&self, id: &ContentId) -> PathBuf {
        self.root.join("views").join(id.to_hex())
    }

    /// The path of the model's main file (the GGUF, or the first safetensors file).
    pub fn primary_path(&self, record: &ModelRecord) -> Option<PathBuf> {
        let file = record.manifest.primary_file()?;
        Some(self.model_dir(&record.entry.content_id).join(&file.name))
    }

    /// Copies (or hard-links, when `link` is set and the filesystem allows) `src` into the blob
    /// store while hashing it shard by shard. Returns the file's entry, named `name`, and
    /// whether its blob is new (stored from the bytes just hashed) rather than already there.
    pub(crate) fn ingest_file(
        &self,
        src: &Path,
        name: &str,
        shard_size: u64,
        link: bool,
        progress: &mut Report<'_>,
    ) -> Result<(FileEntry, bool), StoreError> {
        let tmp = self.tmp_dir().join(fsutil::unique_name("ingest"));
        let result = self.ingest_into(src, &tmp, name, shard_size, link, progress);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn ingest_into(
        &self,
        src: &Path,
        tmp: &Path,
        name: &str,
        shard_size: u64,
        link: bool,
        progress: &mut Report<'_>,
    ) -> Result<(FileEntry, bool), StoreError> {
        // A hard link shares the inode, so we hash the link itself: what we verify is what we keep.
        let linked = link && fs::hard_link(src, tmp).is_ok();
        let mut input = fsutil::open_regular(if linked { tmp } else { src })?;
        let size = input.metadata().ctx("stat", src)?.len();
        let mut output = if linked {
            None
        } else {
            Some(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(tmp)
                    .ctx("create", tmp)?,
            )
        };
        let chunk = usize::try_from(shard_size)
            .map_err(|_| StoreError::BadSource(format!("shard size {shard_size} too large")))?;
        let mut buf = vec![0u8; chunk];
        let mut shards = Vec::with_capacity(FileEntry::shard_count(size, shard_size) as usize);
        let mut done = 0u64;
        loop {
            let n = read_full(&mut input, &mut buf).ctx("read", src)?;
            if n == 0 {
                break;
            }
            shards.push(ShardHash::of(&buf[..n]));
            if let Some(out) = output.as_mut() {
                out.write_all(&buf[..n]).ctx("write", tmp)?;
            }
            done += n as u64;
            progress(Progress {
                phase: "import",
                done,
                total: size.max(done),
            })?;
            if n < chunk {
                break;
            }
        }
        if done != size {
            return Err(StoreError::BadSource(format!(
                "{} changed size while being imported ({size} bytes, then {done})",
                src.display()
            )));
        }
        if let Some(out) = output {
            out.sync_all().ctx("sync", tmp)?;
            drop(out);
            set_read_only(tmp)?;
        }
        let entry = FileEntry {
            name: name.to_string(),
            size,
            shard_size,
            shards,
        };
        let blob = self.blob_path(&entry.blob_id());
        if blob.exists() {
            fs::remove_file(tmp).ctx("remove", tmp)?;
            return Ok((entry, false));
        }
        fsutil::commit_file(tmp, &blob)?;
        Ok((entry, true))
    }

    /// Makes a model whose blobs are all in place visible: manifest, view, then catalog entry.
    pub(crate) fn commit_model(
        &self,
        manifest: Manifest,
        name_hint: &str,
    ) -> Result<ImportOutcome, StoreError> {
        self.commit_model_as(manifest.content_id(), manifest, name_hint)
    }

    /// [`Store::commit_model`] under a given id: a pull keeps the id the pool knows the model
    /// by, the legacy one included (see `Manifest::matches_id`).
    pub(crate) fn commit_model_as(
        &self,
        id: ContentId,
        manifest: Manifest,
        name_hint: &str,
    ) -> Result<ImportOutcome, StoreError> {
        manifest.validate()?;
        if !manifest.matches_id(&id) {
            return Err(StoreError::BadSource(format!(
                "the manifest does not hash to {id}"
            )));
        }
        let bytes = manifest.encode()?;
        let manifest_path = self.manifest_path(&id);
        // Written when missing, or when the one there is damaged (it is quarantined first):
        // importing or pulling a damaged model again is how it is repaired.
        if self.read_manifest(&id)?.is_err() {
            fsutil::write_atomic(&manifest_path, &bytes)?;
        }
        self.build_view(&id, &manifest)?;
        let base = sanitize_name(name_hint);
        self.update_catalog(|state| {
            // Checked under the lock: a concurrent gc cannot have removed what we are naming.
            for f in &manifest.files {
                let blob = self.blob_path(&f.blob_id());
                let len = fs::metadata(&blob).map(|m| m.len()).ctx("stat", &blob)?;
                if len != f.size {
                    return Err(StoreError::BadSource(format!(
                        "blob for `{}` has {len} bytes, expected {}",
                        f.name, f.size
                    )));
                }
            }
            if let Some(e) = state.get(&id) {
                // The stored manifest: the first import's source, not this one's.
                let existing = self.manifest_of(e)?;
                return Ok(ImportOutcome::existing(e, existing));
            }
            if let Some(e) = same_files(state, self, &manifest) {
                // Cataloged under another id (its legacy one): the manifest and view just
                // written for `id` describe nothing cataloged. Removed under the lock, as gc
                // would, so that no rebuild catalogs the same bytes twice.
                remove_path(&manifest_path)?;
                remove_path(&self.model_dir(&id))?;
                let existing = self.manifest_of(e)?;
                return Ok(ImportOutcome::existing(e, existing));
            }
            let now = fsutil::now_secs();
            let entry = CatalogEntry {
                content_id: id,
                name: state.unique_name(&base),
                aliases: Vec::new(),
                pinned: false,
                added_at: now,
                last_used: now,
            };
            state.models.push(entry.clone());
            Ok(ImportOutcome {
                content_id: id,
                name: entry.name,
                already_present: false,
                manifest: manifest.clone(),
            })
        })
    }

    pub(crate) fn build_view(&self, id: &ContentId, manifest: &Manifest) -> Result<(), StoreError> {
        let dir = self.model_dir(id);
        if dir.exists() {
            return Ok(());
        }
        let tmp = self.tmp_dir().join(fsutil::unique_name("view"));
        let result = (|| {
            for f in &manifest.files {
                let dest = tmp.join(&f.name);
                if let Some(parent) = dest.parent() {
                    create_dir_all(parent)?;
                }
                let blob = self.blob_path(&f.blob_id());
                if fs::hard_link(&blob, &dest).is_err() {
                    std::os::unix::fs::symlink(&blob, &dest).ctx("link", &dest)?;
                }
            }
            sync_dir(&tmp)?;
            match fs::rename(&tmp, &dir) {
                Ok(()) => sync_dir(&self.root.join("views")),
                // Another process built the same view first: theirs is as good as ours.
                Err(_) if dir.exists() => remove_path(&tmp),
                Err(e) => Err(StoreError::io("rename into place", &dir, e)),
            }
        })();
        if result.is_err() {
            let _ = remove_path(&tmp);
        }
        result
    }

    /// The manifest filed under `id`. A damaged one is moved to `quarantine/` and reported
    /// as [`StoreError::DamagedModel`].
    pub fn load_manifest(&self, id: &ContentId) -> Result<Manifest, StoreError> {
        self.read_manifest(id)?
            .map_err(|p| StoreError::DamagedModel {
                name: id.short(),
                id: *id,
                reason: p.reason(),
            })
    }

    /// Every cataloged model that works, in the order they were added. Damaged ones are left
    /// out (see [`Store::listing`] for them), so one bad manifest does not hide the rest.
    pub fn list(&self) -> Result<Vec<ModelRecord>, StoreError> {
        let listing = self.listing()?;
        for d in &listing.damaged {
            tracing::debug!(model = %d.entry.name, "left out of the list: {}", d.reason);
        }
        Ok(listing.models)
    }

    /// Cataloged models whose manifest is damaged or missing.
    pub fn damaged(&self) -> Result<Vec<DamagedModel>, StoreError> {
        Ok(self.listing()?.damaged)
    }

    /// Finds a cataloged model by name, alias, content id (or a unique prefix of at least 6 hex
    /// characters), or the HuggingFace source it was imported from.
    pub fn resolve(&self, r: &ModelRef) -> Result<ModelRecord, StoreError> {
        let entry = self.resolve_entry(r)?;
        let manifest = self.manifest_of(&entry)?;
        Ok(ModelRecord { entry, manifest })
    }

    /// The catalog entry for a reference, whether or not its manifest is intact.
    pub fn resolve_entry(&self, r: &ModelRef) -> Result<CatalogEntry, StoreError> {
        let state = self.state()?;
        Ok(find_entry(&state, self, r)?
            .ok_or_else(|| StoreError::NotFound(r.to_string()))?
            .clone())
    }

    /// Adds another name for a model.
    pub fn alias(&self, r: &ModelRef, alias: &str) -> Result<ModelRecord, StoreError> {
        self.modify(r, |state, id| {
            state.check_name_free(alias, &id)?;
            if let Some(e) = state.get_mut(&id)
                && !e.answers_to(alias)
            {
                e.aliases.push(alias.to_string());
            }
            Ok(())
        })
    }

    fn preset_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        if !rbee_proto::is_valid_name(name) {
            return Err(StoreError::InvalidName(name.to_string()));
        }
        // `:` is kept readable in the file name as `%3A` (some file systems refuse `:`).
        Ok(self
            .root
            .join("presets")
            .join(format!("{}.json", name.replace(':', "%3A"))))
    }

    /// Stores a preset's definition (opaque bytes, at most 1 MiB) under `name`, atomically:
    /// a reader sees the old definition or the new, never a mix.
    pub fn save_preset(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.preset_path(name)?;
        fsutil::create_dir_all(&self.root.join("presets"))?;
        fsutil::write_atomic(&path, bytes)
    }

    /// The stored presets: name and definition, by name.
    pub fn presets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let dir = self.root.join("presets");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().to_string();
            let Some(stem) = file.strip_suffix(".json") else {
                continue;
            };
            let name = stem.replace("%3A", ":");
            if !rbee_proto::is_valid_name(&name) {
                continue;
            }
            let path = entry.path();
            if std::fs::metadata(&path).is_ok_and(|m| m.len() <= MAX_PRESET_BYTES) {
                match std::fs::read(&path) {
                    Ok(bytes) => out.push((name, bytes)),
                    Err(e) => tracing::warn!("could not read preset {}: {e}", path.display()),
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes the preset `name`; whether there was one.
    pub fn remove_preset(&self, name: &str) -> Result<bool, StoreError> {
        let path = self.preset_path(name)?;
        if !path.exists() {
            return Ok(false);
        }
        fsutil::remove_path(&path)?;
        Ok(true)
    }

    /// Removes one alias of a model (its name and other aliases stay); an alias it does not
    /// have is `NotFound`.
    pub fn unalias(&self, r: &ModelRef, alias: &str) -> Result<ModelRecord, StoreError> {
        self.modify(r, |state, id| {
            let e = state
                .get_mut(&id)
                .ok_or_else(|| StoreError::NotFound(alias.to_string()))?;
            if !e.aliases.iter().any(|a| a == alias) {
                return Err(StoreError::NotFound(alias.to_string()));
            }
            e.aliases.retain(|a| a != alias);
            Ok(())
        })
    }

    /// Changes a model's primary name (the old one is gone).
    pub fn rename(&self, r: &ModelRef, new_name: &str) -> Result<ModelRecord, StoreError> {
        self.modify(r, |state, id| {
            state.check_name_free(new_name, &id)?;
            if let Some(e) = state.get_mut(&id) {
                e.aliases.retain(|a| a != new_name);
                e.name = new_name.to_string();
            }
            Ok(())
        })
    }

    pub fn set_pinned(&self, r: &ModelRef, pinned: bool) -> Result<ModelRecord, StoreError> {
        self.modify(r, |state, id| {
            if let Some(e) = state.get_mut(&id) {
                e.pinned = pinned;
            }
            Ok(())
        })
    }

    /// Stamps a model as used now (for least-recently-used eviction).
    pub fn touch(&self, id: &ContentId) -> Result<(), StoreError> {
        self.update_catalog(|state| {
            let e = state
                .get_mut(id)
                .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            e.last_used = fsutil::now_secs();
            Ok(())
        })
    }

    fn modify(
        &self,
        r: &ModelRef,
        f: impl FnOnce(&mut CatalogState, ContentId) -> Result<(), StoreError>,
    ) -> Result<ModelRecord, StoreError> {
        // A damaged model is refused before anything changes.
        self.resolve(r)?;
        let entry = self.update_catalog(|state| {
            let id = find_entry(state, self, r)?
                .ok_or_else(|| StoreError::NotFound(r.to_string()))?
                .content_id;
            f(state, id)?;
            state
                .get(&id)
                .cloned()
                .ok_or_else(|| StoreError::NotFound(r.to_string()))
        })?;
        let manifest = self.manifest_of(&entry)?;
        Ok(ModelRecord { entry, manifest })
    }

    /// Forgets a model, then deletes every file no remaining model needs. Works for a damaged
    /// model too (that is how one gets rid of it).
    pub fn remove(
        &self,
        r: &ModelRef,
        force: bool,
    ) -> Result<(CatalogEntry, GcReport), StoreError> {
        let entry = self.resolve_entry(r)?;
        let id = entry.content_id;
        self.update_catalog(|state| {
            if state.get(&id).is_some_and(|e| e.pinned) && !force {
                return Err(StoreError::Pinned(id));
            }
            state.models.retain(|e| e.content_id != id);
            Ok(())
        })?;
        let report = self.gc()?;
        Ok((entry, report))
    }

    /// Deletes blobs, views and manifests no cataloged model references, and leftovers of
    /// imports whose process is gone. Partial pulls are kept: they are resumable.
    ///
    /// A blob is deleted only when gc can prove no cataloged model uses it: while any
    /// cataloged model's manifest is damaged or missing, no blob is deleted (the report names
    /// those models), and a manifest that cannot be read at all fails the gc. A missing or
    /// unparsable `catalog.json` is rebuilt from the manifests first, never read as empty.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let guard = self.catalog.lock()?;
        let state = self.state_locked(&guard)?.0;
        let mut live_models = HashSet::new();
        let mut live_blobs = HashSet::new();
        let mut report = GcReport::default();
        for e in &state.models {
            live_models.insert(e.content_id.to_hex());
            match self.read_manifest(&e.content_id)? {
                Ok(m) => {
                    for f in &m.files {
                        live_blobs.insert(f.blob_id().to_hex());
                    }
                }
                Err(_) => report.kept_blobs_for.push(e.name.clone()),
            }
        }
        let keep_all_blobs = !report.kept_blobs_for.is_empty();
        if keep_all_blobs {
            tracing::warn!(
                "gc deletes no blobs while these models are damaged (their manifests list the blobs they use): {}",
                report.kept_blobs_for.join(", ")
            );
        }
        let mut usage = LinkUsage::default();
        let mut sweep = |dir: &str, keep: &dyn Fn(&str) -> bool| -> Result<(), StoreError> {
            for path in list_dir(&self.root.join(dir))? {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if keep(&name) {
                    continue;
                }
                usage.add(&path);
                report.removed_paths += 1;
                remove_path(&path)?;
            }
            Ok(())
        };
        sweep("blobs", &|n| keep_all_blobs || live_blobs.contains(n))?;
        sweep("views", &|n| live_models.contains(n))?;
        sweep("manifests", &|n| live_models.contains(n))?;
        sweep("tmp", &|n| owner_alive(n))?;
        report.freed_bytes = usage.freed();
        if !keep_all_blobs {
            self.prune_verified_locked(&live_blobs);
        }
        Ok(report)
    }

    /// Re-hashes every shard of one model (or all of them) and reports what no longer matches.
    pub fn verify(
        &self,
        r: Option<&ModelRef>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<VerifyReport>, StoreError> {
        let (records, damaged) = match r {
            Some(r) => {
                let entry = self.resolve_entry(r)?;
                match self.read_manifest(&entry.content_id)? {
                    Ok(manifest) => (vec![ModelRecord { entry, manifest }], Vec::new()),
                    Err(p) => (
                        Vec::new(),
                        vec![DamagedModel {
                            entry,
                            reason: p.reason(),
                        }],
                    ),
                }
            }
            None => {
                let l = self.listing()?;
                (l.models, l.damaged)
            }
        };
        let total: u64 = records.iter().map(|r| r.manifest.total_size()).sum();
        let mut done = 0u64;
        let mut reports: Vec<VerifyReport> = damaged
            .into_iter()
            .map(|d| VerifyReport {
                content_id: d.entry.content_id,
                name: d.entry.name,
                bad_shards: Vec::new(),
                missing_files: Vec::new(),
                damaged: Some(d.reason),
            })
            .collect();
        for rec in records {
            let mut report = VerifyReport {
                content_id: rec.entry.content_id,
                name: rec.entry.name.clone(),
                bad_shards: Vec::new(),
                missing_files: Vec::new(),
                damaged: None,
            };
            for f in &rec.manifest.files {
                let blob = self.blob_path(&f.blob_id());
                let Ok(mut file) = File::open(&blob) else {
                    report.missing_files.push(f.name.clone());
                    done += f.size;
                    continue;
                };
                if file.metadata().map(|m| m.len()).ok() != Some(f.size) {
                    report.missing_files.push(f.name.clone());
                    done += f.size;
                    continue;
                }
                let mut buf = vec![0u8; f.shard_size as usize];
                for (i, want) in f.shards.iter().enumerate() {
                    let n = read_full(&mut file, &mut buf).ctx("read", &blob)?;
                    if ShardHash::of(&buf[..n]) != *want {
                        report.bad_shards.push((f.name.clone(), i));
                    }
                    done += n as u64;
                    progress(Progress {
                        phase: "verify",
                        done,
                        total,
                    });
                }
            }
            reports.push(report);
        }
        Ok(reports)
    }

    /// Reads one shard of a cataloged model, optionally re-verifying it against the manifest.
    pub fn read_shard(
        &self,
        manifest: &Manifest,
        file_index: usize,
        shard_index: usize,
        verify: bool,
    ) -> Result<Vec<u8>, StoreError> {
        let f = manifest
            .files
            .get(file_index)
            .ok_or_else(|| StoreError::ShardOutOfRange {
                file: format!("#{file_index}"),
                index: shard_index,
            })?;
        let len = f
            .shard_len(shard_index)
            .ok_or_else(|| StoreError::ShardOutOfRange {
                file: f.name.clone(),
                index: shard_index,
            })?;
        let blob = self.blob_path(&f.blob_id());
        let mut file = File::open(&blob).ctx("open", &blob)?;
        file.seek(SeekFrom::Start(shard_index as u64 * f.shard_size))
            .ctx("seek", &blob)?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact(&mut buf).ctx("read", &blob)?;
        if verify {
            let actual = ShardHash::of(&buf);
            if actual != f.shards[shard_index] {
                return Err(StoreError::ShardMismatch {
                    file: f.name.clone(),
                    index: shard_index,
                    expected: f.shards[shard_index],
                    actual,
                });
            }
        }
        Ok(buf)
    }

    /// Finds a shard by its hash in any cataloged model.
    pub fn locate_shard(&self, hash: &ShardHash) -> Result<Option<ShardLocation>, StoreError> {
        for rec in self.list()? {
            for f in &rec.manifest.files {
                if let Some(i) = f.shards.iter().position(|s| s == hash) {
                    return Ok(Some(ShardLocation {
                        blob: self.blob_path(&f.blob_id()),
                        offset: i as u64 * f.shard_size,
                        len: f.shard_len(i).unwrap_or(0),
                    }));
                }
            }
        }
        Ok(None)
    }
}

fn find_entry<'a>(
    state: &'a CatalogState,
    store: &Store,
    r: &ModelRef,
) -> Result<Option<&'a CatalogEntry>, StoreError> {
    Ok(match r {
        ModelRef::ContentId(id) => state.get(id),
        ModelRef::Name(name) => match state.by_name(name) {
            Some(e) => Some(e),
            None => unique_prefix(state, name)?,
        },
        ModelRef::HuggingFace(hf) => state.models.iter().find(|e| {
            store
                .load_manifest(&e.content_id)
                .is_ok_and(|m| match m.source {
                    rbee_proto::ModelSource::HuggingFace {
                        repo,
                        revision,
                        file,
                    } => {
                        repo.eq_ignore_ascii_case(&hf.repo)
                            && hf.revision.as_ref().is_none_or(|r| *r == revision)
                            && (hf.file.is_none() || hf.file == file)
                    }
                    _ => false,
                })
        }),
        ModelRef::LocalPath(p) => {
            return Err(StoreError::BadSource(format!(
                "`{p}` is a path, not a cataloged model: import it with `rbee-node models import {p}`"
            )));
        }
    })
}

fn unique_prefix<'a>(
    state: &'a CatalogState,
    prefix: &str,
) -> Result<Option<&'a CatalogEntry>, StoreError> {
    if prefix.len() < 6 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let prefix = prefix.to_ascii_lowercase();
    let mut hits = state
        .models
        .iter()
        .filter(|e| e.content_id.to_hex().starts_with(&prefix));
    match (hits.next(), hits.next()) {
        (Some(e), None) => Ok(Some(e)),
        (Some(_), Some(_)) => Err(StoreError::BadSource(format!(
            "`{prefix}` matches several models; give more characters"
        ))),
        _ => Ok(None),
    }
}

/// A cataloged model with byte-identical files (same blobs under the same canonical names),
/// whatever its source or id: a model cataloged under its legacy id is found by a new import
/// of the same bytes.
fn same_files<'a>(
    state: &'a CatalogState,
    store: &Store,
    manifest: &Manifest,
) -> Option<&'a CatalogEntry> {
    let want = manifest.canonical_files();
    state.models.iter().find(|e| {
        store
            .load_manifest(&e.content_id)
            .is_ok_and(|m| m.canonical_files() == want)
    })
}

/// Turns a file stem or repo name into a valid catalog name.
pub(crate) fn sanitize_name(hint: &str) -> String {
    let mut s: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':') {
                c
            } else {
                '-'
            }
        })
        .collect();
    s = s
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    s.truncate(100);
    if !rbee_proto::is_valid_name(&s) {
        s = format!("model-{s}");
        s.truncate(100);
    }
    if rbee_proto::is_valid_name(&s) {
        s
    } else {
        "model".to_string()
    }
}

fn set_read_only(path: &Path) -> Result<(), StoreError> {
    let mut perms = fs::metadata(path).ctx("stat", path)?.permissions();
    perms.set_readonly(true);
    fs::set_permissions(path, perms).ctx("chmod", path)
}

/// The space removing a set of paths frees. A view is a hard link to its blob, and an import
/// from the HuggingFace cache or Ollama shares the inode with their copy: bytes are freed
/// only when the last link to an inode goes, so each inode is counted once, and only if every
/// one of its links was among the removed paths.
#[derive(Default)]
struct LinkUsage {
    /// (device, inode) → (links when first seen, bytes, links removed).
    inodes: HashMap<(u64, u64), (u64, u64, u64)>,
}

impl LinkUsage {
    /// Records `path` (a file, or a directory and everything under it) before it is removed.
    fn add(&mut self, path: &Path) {
        use std::os::unix::fs::MetadataExt;
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                for p in list_dir(path).unwrap_or_default() {
                    self.add(&p);
                }
            }
            Ok(m) => {
                let e = self
                    .inodes
                    .entry((m.dev(), m.ino()))
                    .or_insert((m.nlink(), m.len(), 0));
                e.2 += 1;
            }
            Err(_) => {}
        }
    }

    fn freed(&self) -> u64 {
        self.inodes
            .values()
            .filter(|(links, _, removed)| removed >= links)
            .map(|(_, bytes, _)| bytes)
            .sum()
    }
}

/// Temp files carry their creator's pid (`prefix-<pid>-…`); keep those whose process lives.
fn owner_alive(name: &str) -> bool {
    let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) if pid == std::process::id() => true,
        Some(pid) => Path::new("/proc").join(pid.to_string()).exists(),
        None => false,
    }
}
