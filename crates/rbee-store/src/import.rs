//! Imports: a local GGUF file, a safetensors folder, an Ollama model, or a model already in the
//! HuggingFace cache. Each becomes a manifest plus blobs; importing the same bytes twice is a
//! no-op that says so.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use rbee_proto::{
    DEFAULT_SHARD_SIZE, GGUF_FILE_NAME, HfRef, Manifest, ModelFormat, ModelMetadata, ModelRef,
    ModelSource, SAFETENSORS_REQUIRED_FILES, SAFETENSORS_SIDE_FILES,
};

use crate::error::{IoContext, StoreError};
use crate::fsutil;
use crate::outcome::ImportOutcome;
use crate::store::{Progress, Report, Store, home};
use rbee_format::gguf;
use rbee_format::safetensors::{SafetensorsError, SafetensorsHeader};
use rbee_proto::quant;

/// Where an import reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportSource {
    /// A GGUF file or a safetensors folder.
    Path(PathBuf),
    /// `ollama:<name>[:tag]`, read from the local Ollama store.
    Ollama(String),
    /// `hf-cache:<org/repo>[@rev][:file]`, read from the local HuggingFace cache.
    HfCache(HfRef),
}

impl ImportSource {
    pub fn parse(s: &str) -> Result<ImportSource, StoreError> {
        if let Some(name) = s.strip_prefix("ollama:") {
            if name.is_empty() || name.contains("..") {
                return Err(StoreError::BadSource(format!(
                    "`{s}`: expected `ollama:<name>[:tag]`"
                )));
            }
            return Ok(ImportSource::Ollama(name.to_string()));
        }
        if let Some(repo) = s.strip_prefix("hf-cache:") {
            return match repo.parse::<ModelRef>() {
                Ok(ModelRef::HuggingFace(hf)) => Ok(ImportSource::HfCache(hf)),
                Ok(_) => Err(StoreError::BadSource(format!(
                    "`{s}`: expected `hf-cache:<org/repo>[@rev][:file]`"
                ))),
                Err(e) => Err(StoreError::BadSource(e.to_string())),
            };
        }
        let path = match s.strip_prefix("~/") {
            Some(rest) => home()?.join(rest),
            None => PathBuf::from(s),
        };
        Ok(ImportSource::Path(path))
    }
}

/// One file to bring in: where it is, and its name inside the model.
struct SourceFile {
    path: PathBuf,
    name: String,
}

impl Store {
    /// Validates the source, copies (or links) its files into the store, and catalogs it.
    pub fn import(
        &self,
        src: &ImportSource,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImportOutcome, StoreError> {
        self.import_reporting(src, &mut |p| {
            progress(p);
            Ok(())
        })
    }

    fn import_reporting(
        &self,
        src: &ImportSource,
        progress: &mut Report<'_>,
    ) -> Result<ImportOutcome, StoreError> {
        match src {
            ImportSource::Path(p) => self.import_path(p, progress),
            ImportSource::Ollama(name) => self.import_ollama(name, progress),
            ImportSource::HfCache(hf) => self.import_hf_cache(hf, progress),
        }
    }

    /// Imports `src` and, when `name` is given, catalogs it under that name. The name is
    /// checked before anything is read; bytes already cataloged under another name are
    /// refused, not renamed (every client using the old name would get 404); and a new model
    /// whose name turns out taken is removed again, so a failed import catalogs nothing.
    pub fn import_named(
        &self,
        src: &ImportSource,
        name: Option<&str>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImportOutcome, StoreError> {
        self.import_cancellable(src, name, &|| false, progress)
    }

    /// [`Store::import_named`] that stops, between shards, once `cancelled` says so: it then
    /// returns [`StoreError::Cancelled`] having cataloged nothing and left no partial blob.
    pub fn import_cancellable(
        &self,
        src: &ImportSource,
        name: Option<&str>,
        cancelled: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImportOutcome, StoreError> {
        if let Some(n) = name
            && !rbee_proto::is_valid_name(n)
        {
            return Err(StoreError::InvalidName(n.to_string()));
        }
        let mut out = self.import_reporting(src, &mut |p| {
            if cancelled() {
                return Err(StoreError::Cancelled);
            }
            progress(p);
            Ok(())
        })?;
        let Some(wanted) = name.filter(|n| *n != out.name) else {
            return Ok(out);
        };
        let id = rbee_proto::ModelRef::ContentId(out.content_id);
        if out.already_present {
            if self.resolve(&id)?.entry.aliases.iter().any(|a| a == wanted) {
                return Ok(out);
            }
            return Err(StoreError::AlreadyCataloged {
                name: out.name,
                id: out.content_id,
                wanted: wanted.to_string(),
            });
        }
        if let Err(e) = self.rename(&id, wanted) {
            if let Err(undo) = self.remove(&id, true) {
                tracing::warn!("could not remove the import `{}` again: {undo}", out.name);
            }
            return Err(e);
        }
        out.name = wanted.to_string();
        Ok(out)
    }

    fn import_path(
        &self,
        path: &Path,
        progress: &mut Report<'_>,
    ) -> Result<ImportOutcome, StoreError> {
        let meta = fs::metadata(path).ctx("open", path)?;
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        if meta.is_dir() {
            let (files, metadata) = safetensors_folder(path)?;
            let source = ModelSource::Local { name: base.clone() };
            return self.import_files(files, metadata, source, &base, false, progress);
        }
        let stem = base.strip_suffix(".gguf").unwrap_or(&base).to_string();
        fsutil::require_regular(path)?;
        let metadata = gguf_metadata(path)?;
        // Stored as `model.gguf` whatever it is called (the name stays in the source): the
        // same bytes are one model.
        let files = vec![SourceFile {
            path: path.to_path_buf(),
            name: GGUF_FILE_NAME.into(),
        }];
        let source = ModelSource::Local { name: base };
        self.import_files(files, metadata, source, &stem, false, progress)
    }

    /// What an Ollama model carries besides its GGUF: the system prompt, parameters,
    /// template, license and example messages of its manifest's layers (each read up to
    /// 1 MiB). Nothing is imported.
    pub fn ollama_settings(&self, name: &str) -> Result<OllamaSettings, StoreError> {
        let (root, manifest) = self.ollama_manifest(name)?;
        let err = |reason: String| StoreError::Ollama {
            name: name.to_string(),
            reason,
        };
        let mut settings = OllamaSettings::default();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let kind = layer["mediaType"].as_str().unwrap_or("");
            let Some(slot) = kind.strip_prefix("application/vnd.ollama.image.") else {
                continue;
            };
            if !matches!(
                slot,
                "system" | "params" | "template" | "license" | "messages"
            ) {
                continue;
            }
            let blob = ollama_blob(&root, layer["digest"].as_str().unwrap_or(""))
                .ok_or_else(|| err(format!("unexpected {slot} layer digest")))?;
            let mut text = String::new();
            fs::File::open(&blob)
                .ctx("open", &blob)?
                .take(MAX_SETTINGS_LAYER)
                .read_to_string(&mut text)
                .ctx("read", &blob)?;
            let json = |t: &str| {
                serde_json::from_str::<serde_json::Value>(t)
                    .map_err(|e| err(format!("the {slot} layer is not JSON: {e}")))
            };
            match slot {
                "system" => settings.system = Some(text),
                "template" => settings.template = Some(text),
                "license" => settings.license.push(text),
                "params" => settings.params = json(&text)?.as_object().cloned().unwrap_or_default(),
                _ => {
                    settings.messages = json(&text)?
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| {
                            Some((
                                m["role"].as_str()?.to_string(),
                                m["content"].as_str()?.to_string(),
                            ))
                        })
                        .collect();
                }
            }
        }
        Ok(settings)
    }

    /// The Ollama store's root and the manifest of `name` (`model[:tag]`, `:latest` by default).
    fn ollama_manifest(&self, name: &str) -> Result<(PathBuf, serde_json::Value), StoreError> {
        let err = |reason: String| StoreError::Ollama {
            name: name.to_string(),
            reason,
        };
        let root = self.ollama_root()?;
        let (model, tag) = name.split_once(':').unwrap_or((name, "latest"));
        let namespaced = if model.contains('/') {
            model.to_string()
        } else {
            format!("library/{model}")
        };
        let manifest_path = root
            .join("manifests/registry.ollama.ai")
            .join(&namespaced)
            .join(tag);
        let bytes = fs::read(&manifest_path).map_err(|e| {
            err(format!(
                "no manifest at {} ({e}); `ollama list` shows what is installed",
                manifest_path.display()
            ))
        })?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("manifest is not JSON: {e}")))?;
        Ok((root, json))
    }

    fn import_ollama(
        &self,
        name: &str,
        progress: &mut Report<'_>,
    ) -> Result<ImportOutcome, StoreError> {
        let err = |reason: String| StoreError::Ollama {
            name: name.to_string(),
            reason,
        };
        let (root, json) = self.ollama_manifest(name)?;
        let (model, tag) = name.split_once(':').unwrap_or((name, "latest"));
        let digest = json["layers"]
            .as_array()
            .and_then(|layers| {
                layers
                    .iter()
                    .find(|l| l["mediaType"] == "application/vnd.ollama.image.model")
            })
            .and_then(|l| l["digest"].as_str())
            .ok_or_else(|| err("manifest has no model layer".into()))?;
        let blob = ollama_blob(&root, digest)
            .ok_or_else(|| err(format!("unexpected layer digest `{digest}`")))?;
        let metadata = gguf_metadata(&blob)?;
        let display = if tag == "latest" {
            model.to_string()
        } else {
            format!("{model}:{tag}")
        };
        let files = vec![SourceFile {
            path: blob,
            name: GGUF_FILE_NAME.into(),
        }];
        let source = ModelSource::Ollama {
            name: format!("{model}:{tag}"),
        };
        let hint = display.replace('/', "-");
        self.import_files(files, metadata, source, &hint, true, progress)
    }

    fn import_hf_cache(
        &self,
        hf: &HfRef,
        progress: &mut Report<'_>,
    ) -> Result<ImportOutcome, StoreError> {
        let repo_dir = self
            .hf_cache_root()?
            .join(format!("models--{}", hf.repo.replace('/', "--")));
        if !repo_dir.is_dir() {
            return Err(StoreError::HfCache(format!(
                "{} is not in the cache ({} does not exist)",
                hf.repo,
                repo_dir.display()
            )));
        }
        let rev = hf.revision_or_main();
        let commit = if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            rev.to_string()
        } else {
            let ref_path = repo_dir.join("refs").join(rev);
            fs::read_to_string(&ref_path)
                .map_err(|_| {
                    StoreError::HfCache(format!("{}: revision `{rev}` is not cached", hf.repo))
                })?
                .trim()
                .to_string()
        };
        let snapshot = repo_dir.join("snapshots").join(&commit);
        let listing = list_files(&snapshot)?;
        let repo_name = hf.repo.rsplit('/').next().unwrap_or(&hf.repo);
        let chosen = match &hf.file {
            Some(f) => Some(f.clone()),
            None => quant::choose_gguf(&listing),
        };
        if let Some(file) = chosen {
            let path = snapshot.join(&file);
            if !path.is_file() {
                return Err(StoreError::HfCache(format!(
                    "{}@{commit}: `{file}` is not cached; cached files: {}",
                    hf.repo,
                    names(&listing)
                )));
            }
            let metadata = gguf_metadata(&path)?;
            let base = file.rsplit('/').next().unwrap_or(&file).to_string();
            let stem = base.strip_suffix(".gguf").unwrap_or(&base).to_string();
            let files = vec![SourceFile {
                path,
                name: GGUF_FILE_NAME.into(),
            }];
            let source = ModelSource::HuggingFace {
                repo: hf.repo.clone(),
                revision: commit,
                file: Some(file),
            };
            return self.import_files(files, metadata, source, &stem, true, progress);
        }
        if snapshot.join("config.json").is_file() {
            let (files, metadata) = safetensors_folder(&snapshot)?;
            let source = ModelSource::HuggingFace {
                repo: hf.repo.clone(),
                revision: commit,
                file: None,
            };
            return self.import_files(files, metadata, source, repo_name, true, progress);
        }
        Err(StoreError::HfCache(format!(
            "{}@{commit} has no GGUF file and no safetensors model; cached files: {}",
            hf.repo,
            names(&listing)
        )))
    }

    fn import_files(
        &self,
        files: Vec<SourceFile>,
        metadata: ModelMetadata,
        source: ModelSource,
        name_hint: &str,
        link: bool,
        progress: &mut Report<'_>,
    ) -> Result<ImportOutcome, StoreError> {
        let mut sizes = Vec::with_capacity(files.len());
        for f in &files {
            sizes.push(fs::metadata(&f.path).ctx("stat", &f.path)?.len());
        }
        let total: u64 = sizes.iter().sum();
        let mut offset = 0u64;
        let mut entries = Vec::with_capacity(files.len());
        let mut fresh = Vec::new();
        for (f, size) in files.iter().zip(sizes) {
            // Reported before each file is opened, so a cancelled import reads nothing more.
            progress(Progress {
                phase: "import",
                done: offset,
                total,
            })?;
            // Hard links must point at the real file, not at a symlink (the HF cache is all
            // symlinks into its blobs folder).
            let real = fs::canonicalize(&f.path).ctx("resolve", &f.path)?;
            let (entry, new) =
                self.ingest_file(&real, &f.name, DEFAULT_SHARD_SIZE, link, &mut |p| {
                    progress(Progress {
                        phase: p.phase,
                        done: offset + p.done,
                        total: total.max(offset + p.done),
                    })
                })?;
            offset += size;
            if new {
                fresh.push(entry.blob_id());
            }
            entries.push(entry);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let manifest = Manifest {
            files: entries,
            metadata,
            source,
        };
        let outcome = self.commit_model(manifest, name_hint)?;
        // Hashed on the way in: the first load need not hash them again.
        self.record_verified(&fresh);
        Ok(outcome)
    }
}

/// Opens and validates a GGUF, returning the summary the manifest records. Structure only: a
/// well-formed model of any architecture is accepted, since a peer's engine may run what this
/// node's cannot.
pub(crate) fn gguf_metadata(path: &Path) -> Result<ModelMetadata, StoreError> {
    fsutil::require_regular(path)?;
    let wrap = |source| StoreError::Gguf {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if let Some((part, total)) = quant::split_part(&name) {
        return Err(StoreError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "part {part} of a {total}-part split GGUF; merge it first with `llama-gguf-split --merge`"
            ),
        });
    }
    let file = gguf::GgufFile::open(path).map_err(wrap)?;
    let summary = gguf::validate(&file).map_err(wrap)?;
    Ok(ModelMetadata {
        format: ModelFormat::Gguf,
        architecture: summary.architecture,
        quantization: summary.quantization,
        parameter_count: summary.parameter_count,
        context_length: summary.context_length,
    })
}

/// Checks a safetensors model folder and lists the files that make it up.
fn safetensors_folder(dir: &Path) -> Result<(Vec<SourceFile>, ModelMetadata), StoreError> {
    let bad = |reason: String| StoreError::Safetensors {
        path: dir.to_path_buf(),
        reason,
    };
    for required in &SAFETENSORS_SIDE_FILES[..SAFETENSORS_REQUIRED_FILES] {
        if !dir.join(required).is_file() {
            return Err(bad(format!(
                "{required} is missing (a safetensors model folder needs config.json, tokenizer.json and *.safetensors)"
            )));
        }
    }
    let config_bytes = fs::read(dir.join("config.json")).ctx("read", dir.join("config.json"))?;
    let config: serde_json::Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| bad(format!("config.json is not valid JSON: {e}")))?;
    let architecture = config["model_type"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| bad("config.json has no `model_type`".into()))?;
    let context_length = config["max_position_embeddings"].as_u64().unwrap_or(0);

    let mut weights: Vec<String> = fs::read_dir(dir)
        .ctx("read directory", dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    weights.sort();
    if weights.is_empty() {
        return Err(bad("no *.safetensors files".into()));
    }
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let index: serde_json::Value = serde_json::from_slice(
            &fs::read(&index_path).ctx("read", &index_path)?,
        )
        .map_err(|e| {
            bad(format!(
                "model.safetensors.index.json is not valid JSON: {e}"
            ))
        })?;
        if let Some(map) = index["weight_map"].as_object() {
            for shard in map.values().filter_map(|v| v.as_str()) {
                if !weights.iter().any(|w| w == shard) {
                    return Err(bad(format!("the index names {shard}, which is missing")));
                }
            }
        }
    }
    let mut parameters = 0u64;
    let mut by_dtype = std::collections::BTreeMap::<&str, u64>::new();
    for w in &weights {
        let path = dir.join(w);
        fsutil::require_regular(&path)?;
        let header = safetensors_header(&path)?;
        for (_, t) in &header.tensors {
            parameters = parameters.saturating_add(t.n_elements());
            let bytes = by_dtype.entry(t.dtype.name()).or_default();
            *bytes = bytes.saturating_add(t.size());
        }
    }
    let quantization = by_dtype
        .iter()
        .max_by_key(|(_, bytes)| **bytes)
        .map(|(d, _)| d.to_string())
        .unwrap_or_default();
    let mut files: Vec<SourceFile> = SAFETENSORS_SIDE_FILES
        .iter()
        .chain(&["model.safetensors.index.json"])
        .filter(|n| dir.join(n).is_file())
        .map(|n| SourceFile {
            path: dir.join(n),
            name: n.to_string(),
        })
        .collect();
    files.extend(weights.into_iter().map(|w| SourceFile {
        path: dir.join(&w),
        name: w,
    }));
    let metadata = ModelMetadata {
        format: ModelFormat::Safetensors,
        architecture,
        quantization,
        parameter_count: parameters,
        context_length,
    };
    Ok((files, metadata))
}

/// One safetensors file's header, checked by the shared parser; failing to read the file is an
/// I/O error, not a broken model.
fn safetensors_header(path: &Path) -> Result<SafetensorsHeader, StoreError> {
    SafetensorsHeader::open(path).map_err(|e| match e {
        SafetensorsError::Open { source, .. } => StoreError::io("open", path, source),
        SafetensorsError::Io(source) => StoreError::io("read", path, source),
        e => StoreError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })
}

/// Files under `dir` (following the HF cache's symlinks), relative names with sizes.
fn list_files(dir: &Path) -> Result<Vec<(String, Option<u64>)>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).ctx("read directory", &d)? {
            let path = entry.ctx("read directory", &d)?.path();
            let meta = fs::metadata(&path).ctx("stat", &path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push((rel.to_string_lossy().into_owned(), Some(meta.len())));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn names(listing: &[(String, Option<u64>)]) -> String {
    if listing.is_empty() {
        return "(none)".into();
    }
    listing
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The largest settings layer of an Ollama model read (system prompts and templates are a few
/// kilobytes).
const MAX_SETTINGS_LAYER: u64 = 1 << 20;

/// The blob of an Ollama layer digest (`sha256:<64 hex>`), or None for any other shape.
fn ollama_blob(root: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))?;
    Some(root.join("blobs").join(format!("sha256-{hex}")))
}

/// An Ollama model's settings layers ([`Store::ollama_settings`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OllamaSettings {
    pub system: Option<String>,
    /// Its `params` layer: Ollama's options (`stop`, `temperature`, …).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Its Go template (kept in the preset an import makes; rbee-node renders it).
    pub template: Option<String>,
    pub license: Vec<String>,
    /// Example messages: role and content.
    pub messages: Vec<(String, String)>,
}

impl OllamaSettings {
    /// Whether it has no settings at all (the GGUF alone is the model).
    pub fn is_empty(&self) -> bool {
        self.system.is_none()
            && self.template.is_none()
            && self.params.is_empty()
            && self.license.is_empty()
            && self.messages.is_empty()
    }
}
