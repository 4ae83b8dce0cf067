//! Damage the store survives: a lost or unparsable `catalog.json` is rebuilt from the
//! manifests, and a manifest that no longer decodes (or no longer hashes to the id it is
//! filed under) is moved to `quarantine/` and its model reported as damaged, while the rest of
//! the catalog keeps working.
//!
//! The rule for blobs: gc deletes a blob only when it can prove no cataloged model uses it. A
//! damaged model's blobs are unknown (its manifest is what lists them), so while any cataloged
//! model is damaged, gc deletes no blobs at all. `models rm` of the damaged model is the
//! explicit step that lets the next gc collect them.

use std::fs;
use std::path::PathBuf;

use rbee_proto::{ContentId, Manifest, ModelFormat, ModelSource};

use crate::catalog::{CatalogEntry, CatalogState, ModelRecord};
use crate::error::{IoContext, StoreError};
use crate::fsutil::{self, create_dir_all, list_dir, sync_dir};
use crate::outcome::{DamagedModel, RebuildReport};
use crate::store::{Store, sanitize_name};

/// The whole catalog: the models that work, and those that are damaged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub models: Vec<ModelRecord>,
    pub damaged: Vec<DamagedModel>,
}

/// A manifest that cannot be used, as opposed to an I/O error reading it.
pub(crate) enum ManifestProblem {
    /// `manifests/<id>` does not exist; the reason says whether it was quarantined earlier.
    Missing(String),
    /// It exists but does not decode, or does not hash to its id (moved to quarantine).
    Damaged(String),
}

impl ManifestProblem {
    pub fn reason(self) -> String {
        match self {
            ManifestProblem::Missing(r) | ManifestProblem::Damaged(r) => r,
        }
    }
}

/// The catalog name an import would give this manifest (before `-2`, `-3`, …): the file stem,
/// folder or repo name, or the Ollama name.
pub(crate) fn default_name_hint(m: &Manifest) -> String {
    let strip = |f: &str| {
        let base = f.rsplit('/').next().unwrap_or(f);
        base.strip_suffix(".gguf").unwrap_or(base).to_string()
    };
    match &m.source {
        ModelSource::Local { name } if m.metadata.format == ModelFormat::Gguf => strip(name),
        ModelSource::Local { name } => name.clone(),
        ModelSource::HuggingFace {
            file: Some(file), ..
        } => strip(file),
        ModelSource::HuggingFace { repo, .. } => {
            repo.rsplit('/').next().unwrap_or(repo).to_string()
        }
        ModelSource::Ollama { name } => name
            .strip_suffix(":latest")
            .unwrap_or(name)
            .replace('/', "-"),
    }
}

/// What makes two manifests the same model whatever their ids (see `Manifest::canonical_files`).
fn files_key(m: &Manifest) -> Vec<(String, ContentId)> {
    m.canonical_files()
        .into_iter()
        .map(|(n, b)| (n.to_string(), b))
        .collect()
}

impl Store {
    fn quarantine_dir(&self) -> PathBuf {
        self.root().join("quarantine")
    }

    /// Reads and checks `manifests/<id>`. `Ok(Err(_))`: the manifest is unusable (a damaged
    /// one is moved to `quarantine/` on the way); `Err`: it could not be read at all (an I/O
    /// error, which says nothing about its content).
    pub(crate) fn read_manifest(
        &self,
        id: &ContentId,
    ) -> Result<Result<Manifest, ManifestProblem>, StoreError> {
        let path = self.manifest_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(ManifestProblem::Missing(self.missing_reason(id))));
            }
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        let problem = match Manifest::decode(&bytes) {
            Ok(m) if m.matches_id(id) => return Ok(Ok(m)),
            Ok(_) => format!(
                "it does not hash to {} (its file name): its content changed",
                id.short()
            ),
            Err(e) => e.to_string(),
        };
        Ok(Err(ManifestProblem::Damaged(
            self.quarantine(id, &bytes, &problem),
        )))
    }

    /// Moves a damaged manifest to `quarantine/<id>` (with `<id>.reason`), so that re-importing
    /// or re-pulling the model writes a good one in its place. Returns the reason to report.
    /// Safe without the catalog lock: the file is moved only if it still holds the bytes that
    /// were found damaged (a repair racing this one wins).
    fn quarantine(&self, id: &ContentId, bad: &[u8], problem: &str) -> String {
        let path = self.manifest_path(id);
        let dir = self.quarantine_dir();
        let dest = dir.join(id.to_hex());
        let moved = (|| {
            if fs::read(&path).ctx("read", &path)? != bad {
                return Ok(false);
            }
            create_dir_all(&dir)?;
            fs::rename(&path, &dest).ctx("move to quarantine", &dest)?;
            sync_dir(&dir)?;
            sync_dir(path.parent().unwrap_or(self.root()))?;
            let note = format!(
                "{problem}\nquarantined at unix time {} from {}\n",
                fsutil::now_secs(),
                path.display()
            );
            fsutil::write_atomic(
                &dir.join(format!("{}.reason", id.to_hex())),
                note.as_bytes(),
            )?;
            Ok::<_, StoreError>(true)
        })();
        match moved {
            Ok(true) => {
                tracing::warn!(
                    "manifest {} is damaged ({problem}); moved it to {}. The rest of the catalog is unaffected",
                    path.display(),
                    dest.display()
                );
                format!(
                    "manifest {} is damaged ({problem}); it was moved to {}",
                    path.display(),
                    dest.display()
                )
            }
            Ok(false) => format!("manifest {} is damaged ({problem})", path.display()),
            Err(e) => {
                tracing::warn!("could not quarantine {}: {e}", path.display());
                format!(
                    "manifest {} is damaged ({problem}); moving it to {} failed: {e}",
                    path.display(),
                    dest.display()
                )
            }
        }
    }

    fn missing_reason(&self, id: &ContentId) -> String {
        let path = self.manifest_path(id);
        let dest = self.quarantine_dir().join(id.to_hex());
        if !dest.exists() {
            return format!("its manifest {} is missing", path.display());
        }
        let why = fs::read_to_string(
            self.quarantine_dir()
                .join(format!("{}.reason", id.to_hex())),
        )
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "reason not recorded".into());
        format!(
            "its manifest was damaged ({why}) and moved to {}",
            dest.display()
        )
    }

    /// The manifest of a cataloged model, or the error naming what is wrong with it.
    pub(crate) fn manifest_of(&self, entry: &CatalogEntry) -> Result<Manifest, StoreError> {
        self.read_manifest(&entry.content_id)?
            .map_err(|p| StoreError::DamagedModel {
                name: entry.name.clone(),
                id: entry.content_id,
                reason: p.reason(),
            })
    }

    /// Every cataloged model: those that work, and those whose manifest is damaged or
    /// missing (named, with the files involved). An I/O error reading a manifest fails the
    /// whole listing, since it says nothing about the manifest.
    pub fn listing(&self) -> Result<Listing, StoreError> {
        let state = self.state()?;
        let mut out = Listing::default();
        for entry in state.models {
            match self.read_manifest(&entry.content_id)? {
                Ok(manifest) => out.models.push(ModelRecord { entry, manifest }),
                Err(p) => out.damaged.push(DamagedModel {
                    entry,
                    reason: p.reason(),
                }),
            }
        }
        Ok(out)
    }

    /// Builds the catalog again from `manifests/`, under the catalog lock: every manifest
    /// that loads is cataloged under the name an import would give it (its view rebuilt if
    /// it lacks one), every damaged one is quarantined and cataloged as `damaged-<id>` so its
    /// blobs are kept until someone removes it. Names, aliases and pins are lost (the damaged
    /// `catalog.json`, if there was one, is kept next to it for reference).
    pub(crate) fn rebuild_catalog(
        &self,
        damaged_catalog: Option<&str>,
    ) -> Result<(CatalogState, Option<RebuildReport>), StoreError> {
        let catalog_path = self.catalog_path();
        let mut manifests: Vec<(std::time::Duration, ContentId)> = Vec::new();
        for path in list_dir(&self.root().join("manifests"))? {
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<ContentId>().ok())
            else {
                continue;
            };
            let mtime = fs::metadata(&path)
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .unwrap_or_default();
            manifests.push((mtime, id));
        }
        let moved_to = match damaged_catalog {
            Some(reason) => {
                let dest = self
                    .root()
                    .join(format!("catalog.json.damaged-{}", fsutil::now_secs()));
                fs::rename(catalog_path, &dest).ctx("move aside", &dest)?;
                sync_dir(self.root())?;
                tracing::warn!(
                    "catalog {} does not parse ({reason}); moved it to {} and rebuilding the catalog from the manifests",
                    catalog_path.display(),
                    dest.display()
                );
                Some(dest)
            }
            None => None,
        };
        let mut state = CatalogState::empty();
        if manifests.is_empty() && moved_to.is_none() {
            // A new store (or one whose manifests are gone too: nothing to rebuild from).
            return Ok((state, None));
        }
        // Import order, as far as the files tell: oldest first gets the plain name.
        manifests.sort();
        let mut report = RebuildReport {
            damaged_catalog: moved_to,
            models: Vec::new(),
            damaged: Vec::new(),
        };
        let mut seen = Vec::new();
        for (mtime, id) in manifests {
            let mtime = mtime.as_secs();
            let name = match self.read_manifest(&id)? {
                Ok(m) if seen.contains(&files_key(&m)) => {
                    // The same bytes under another id (a legacy one, and an import that
                    // found it): one model; gc removes the extra manifest.
                    continue;
                }
                Ok(m) => {
                    seen.push(files_key(&m));
                    let name = state.unique_name(&sanitize_name(&default_name_hint(&m)));
                    let complete = m.files.iter().all(|f| {
                        fs::metadata(self.blob_path(&f.blob_id())).is_ok_and(|b| b.len() == f.size)
                    });
                    if complete {
                        self.build_view(&id, &m)?;
                    }
                    report.models.push((name.clone(), id));
                    name
                }
                Err(p) => {
                    let name = state.unique_name(&format!("damaged-{}", id.short()));
                    tracing::warn!("cataloged damaged model as `{name}`: {}", p.reason());
                    report.damaged.push((name.clone(), id));
                    name
                }
            };
            state.models.push(CatalogEntry {
                content_id: id,
                name,
                aliases: Vec::new(),
                pinned: false,
                added_at: mtime,
                last_used: mtime,
            });
        }
        tracing::warn!(
            "catalog {} was {}: rebuilt it from the manifests with {} model(s) under their default names{}: {}",
            catalog_path.display(),
            if damaged_catalog.is_some() {
                "damaged"
            } else {
                "missing"
            },
            report.models.len() + report.damaged.len(),
            if report.damaged.is_empty() {
                String::new()
            } else {
                format!(" ({} damaged)", report.damaged.len())
            },
            report
                .models
                .iter()
                .chain(&report.damaged)
                .map(|(n, id)| format!("{n} ({})", id.short()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok((state, Some(report)))
    }
}
