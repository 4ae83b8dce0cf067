//! Which files a model reference means, decided from the repo listing alone.

use rbee_proto::quant;
use serde::Deserialize;

use crate::{HubError, MAX_FILES};

/// A file in a repo listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Path inside the repo (`model-Q4_K_M.gguf`, `sub/x.gguf`).
    pub name: String,
    pub size: u64,
    /// The git blob id (SHA-1 of the git object): the ETag of a non-LFS file.
    pub blob_id: String,
    /// SHA-256 of the content, for LFS files: their ETag.
    pub sha256: Option<String>,
}

impl RemoteFile {
    /// What the hub sends as the file's ETag, and the name of its blob in the HF cache.
    pub fn etag(&self) -> &str {
        self.sha256.as_deref().unwrap_or(&self.blob_id)
    }
}

/// A repo's files at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoListing {
    pub repo: String,
    /// The revision asked for (branch, tag or commit).
    pub revision: String,
    /// The commit it resolved to (40 hex).
    pub commit: String,
    pub files: Vec<RemoteFile>,
}

impl RepoListing {
    fn get(&self, name: &str) -> Option<&RemoteFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// The file names, for error messages (at most 40, then a count).
    pub fn names(&self) -> String {
        if self.files.is_empty() {
            return "no files at all".into();
        }
        let mut out: Vec<&str> = self
            .files
            .iter()
            .take(40)
            .map(|f| f.name.as_str())
            .collect();
        let more = self.files.len().saturating_sub(out.len());
        let tail = (more > 0).then(|| format!("and {more} more"));
        out.extend(tail.as_deref());
        out.join(", ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanKind {
    /// One GGUF file.
    Gguf { file: String },
    /// A GGUF split into `parts` files; `first` is `…-00001-of-0000N.gguf`.
    SplitGguf { first: String, parts: u32 },
    /// config.json, tokenizer files and the weight shards.
    Safetensors,
}

/// What to download for a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub kind: PlanKind,
    /// Every file to fetch, in order.
    pub files: Vec<RemoteFile>,
}

impl Plan {
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The file the store imports by name (`None` for a safetensors folder).
    pub fn model_file(&self) -> Option<&str> {
        match &self.kind {
            PlanKind::Gguf { file } => Some(file),
            PlanKind::SplitGguf { first, .. } => Some(first),
            PlanKind::Safetensors => None,
        }
    }
}

#[derive(Deserialize)]
struct RawListing {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<RawSibling>,
}

#[derive(Deserialize)]
struct RawSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<RawLfs>,
}

#[derive(Deserialize)]
struct RawLfs {
    sha256: Option<String>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses `GET /api/models/{repo}/revision/{rev}?blobs=true`. Every name, hash and commit that
/// will become a path is checked here.
pub(crate) fn parse_listing(
    repo: &str,
    revision: &str,
    bytes: &[u8],
) -> Result<RepoListing, HubError> {
    let bad = |why: String| HubError::BadResponse(format!("listing of {repo}@{revision}: {why}"));
    let raw: RawListing = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let commit = raw
        .sha
        .filter(|s| is_hex(s, 40))
        .ok_or_else(|| bad("no 40-hex commit `sha`".into()))?
        .to_ascii_lowercase();
    if raw.siblings.len() > MAX_FILES {
        return Err(bad(format!("more than {MAX_FILES} files")));
    }
    let mut files = Vec::with_capacity(raw.siblings.len());
    for s in raw.siblings {
        if rbee_proto::check_relative_file_name(&s.rfilename).is_err() {
            tracing::warn!(repo, file = %s.rfilename.escape_debug(), "skipping a file with an unsafe name");
            continue;
        }
        let sha256 = match s.lfs.and_then(|l| l.sha256) {
            Some(h) if is_hex(&h, 64) => Some(h.to_ascii_lowercase()),
            Some(_) => return Err(bad(format!("bad LFS sha256 for {}", s.rfilename))),
            None => None,
        };
        let (Some(size), Some(blob_id)) = (s.size, s.blob_id) else {
            return Err(bad(format!("no size or blobId for {}", s.rfilename)));
        };
        if !is_hex(&blob_id, 40) {
            return Err(bad(format!("bad blobId for {}", s.rfilename)));
        }
        files.push(RemoteFile {
            name: s.rfilename,
            size,
            blob_id: blob_id.to_ascii_lowercase(),
            sha256,
        });
    }
    Ok(RepoListing {
        repo: repo.to_string(),
        revision: revision.to_string(),
        commit,
        files,
    })
}

/// Side files of a safetensors model: the store's own list, the first ones required.
const SAFETENSORS_REQUIRED: &[&str] = rbee_proto::SAFETENSORS_SIDE_FILES
    .split_at(rbee_proto::SAFETENSORS_REQUIRED_FILES)
    .0;
const SAFETENSORS_OPTIONAL: &[&str] = rbee_proto::SAFETENSORS_SIDE_FILES
    .split_at(rbee_proto::SAFETENSORS_REQUIRED_FILES)
    .1;
pub(crate) const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// Decides what `file` (or, without one, the repo) means:
///
/// - a named `.gguf` file: that file; the first part of a split GGUF: all its parts;
/// - no file: the GGUF that [`quant::choose_gguf`] picks (Q4_K_M, Q5_K_M, Q4_0, Q5_0, Q8_0,
///   else the smallest), whole if split;
/// - no GGUF at all: a safetensors model (config, tokenizer and generation files, and the index;
///   the shards the index names are added once it is fetched, see `Hub::complete`);
/// - nothing usable: an error listing what the repo has.
pub fn plan(listing: &RepoListing, file: Option<&str>) -> Result<Plan, HubError> {
    let make = |kind: PlanKind, files: Vec<RemoteFile>| Plan {
        repo: listing.repo.clone(),
        revision: listing.revision.clone(),
        commit: listing.commit.clone(),
        kind,
        files,
    };
    let chosen = match file {
        // `org/repo:Q4_K_M` (Ollama's `hf.co/…` names): the repo's GGUF with that
        // quantization tag, the first by name.
        Some(f) if listing.get(f).is_none() && quant::is_quant_tag(f) => {
            let mut hits: Vec<&str> = listing
                .files
                .iter()
                .map(|r| r.name.as_str())
                .filter(|n| n.to_ascii_lowercase().ends_with(".gguf"))
                .filter(|n| !quant::is_later_split_part(n))
                .filter(|n| {
                    !n.rsplit('/')
                        .next()
                        .unwrap_or(n)
                        .to_ascii_lowercase()
                        .starts_with("mmproj")
                })
                .filter(|n| quant::has_quant_tag(n, &f.to_ascii_uppercase()))
                .collect();
            hits.sort_unstable();
            let Some(name) = hits.first() else {
                return Err(HubError::NotFound(format!(
                    "{}@{}: no GGUF with quantization `{f}`; the repo has: {}",
                    listing.repo,
                    listing.revision,
                    listing.names()
                )));
            };
            Some((*name).to_string())
        }
        Some(f) => {
            let Some(remote) = listing.get(f) else {
                return Err(HubError::NotFound(format!(
                    "{}@{}: no file `{f}`; the repo has: {}",
                    listing.repo,
                    listing.revision,
                    listing.names()
                )));
            };
            if !remote.name.to_ascii_lowercase().ends_with(".gguf") {
                return Err(HubError::Invalid(format!(
                    "{}:{f} is not a GGUF file: name a .gguf file, or give just the repo for a safetensors model",
                    listing.repo
                )));
            }
            Some(remote.name.clone())
        }
        None => {
            let pairs: Vec<(String, Option<u64>)> = listing
                .files
                .iter()
                .map(|f| (f.name.clone(), Some(f.size)))
                .collect();
            quant::choose_gguf(&pairs)
        }
    };
    if let Some(name) = chosen {
        let Some((part, total)) = quant::split_part(&name) else {
            let f = listing.get(&name).cloned().into_iter().collect();
            return Ok(make(PlanKind::Gguf { file: name }, f));
        };
        if part != 1 {
            return Err(HubError::Invalid(format!(
                "{}:{name} is part {part} of a {total}-part split GGUF: name the first part (-00001-of-{total:05}.gguf)",
                listing.repo
            )));
        }
        let prefix = &name[..name.len() - "00001-of-00000.gguf".len()];
        let mut parts = Vec::with_capacity(total as usize);
        for i in 1..=total {
            let part_name = format!("{prefix}{i:05}-of-{total:05}.gguf");
            match listing.get(&part_name) {
                Some(f) => parts.push(f.clone()),
                None => {
                    return Err(HubError::NotFound(format!(
                        "{}: split GGUF part `{part_name}` is missing from the repo",
                        listing.repo
                    )));
                }
            }
        }
        return Ok(make(
            PlanKind::SplitGguf {
                first: name,
                parts: total,
            },
            parts,
        ));
    }
    let has_weights =
        listing.get(SAFETENSORS_INDEX).is_some() || listing.get("model.safetensors").is_some();
    let has_required = SAFETENSORS_REQUIRED
        .iter()
        .all(|n| listing.get(n).is_some());
    if has_weights && has_required {
        let mut files: Vec<RemoteFile> = SAFETENSORS_REQUIRED
            .iter()
            .chain(SAFETENSORS_OPTIONAL)
            .filter_map(|n| listing.get(n).cloned())
            .collect();
        match listing.get(SAFETENSORS_INDEX) {
            Some(index) => files.push(index.clone()),
            None => files.extend(listing.get("model.safetensors").cloned()),
        }
        return Ok(make(PlanKind::Safetensors, files));
    }
    Err(HubError::NoUsableFiles {
        repo: listing.repo.clone(),
        revision: listing.revision.clone(),
        files: listing.names(),
    })
}

#[derive(Deserialize)]
struct RawIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// Adds the shards `model.safetensors.index.json` names to a safetensors plan.
pub(crate) fn add_shards(
    plan: &mut Plan,
    listing: &RepoListing,
    index: &[u8],
) -> Result<(), HubError> {
    let raw: RawIndex = serde_json::from_slice(index).map_err(|e| {
        HubError::BadResponse(format!(
            "{}: {SAFETENSORS_INDEX} is not a valid index: {e}",
            plan.repo
        ))
    })?;
    let mut shards: Vec<&String> = raw.weight_map.values().collect();
    shards.sort();
    shards.dedup();
    for shard in shards {
        let Some(f) = listing.get(shard) else {
            return Err(HubError::NotFound(format!(
                "{}: the index names shard `{shard}`, which the repo does not have",
                plan.repo
            )));
        };
        if !plan.files.iter().any(|p| p.name == f.name) {
            plan.files.push(f.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[(&str, u64)]) -> RepoListing {
        RepoListing {
            repo: "org/repo".into(),
            revision: "main".into(),
            commit: "a".repeat(40),
            files: names
                .iter()
                .map(|(n, s)| RemoteFile {
                    name: n.to_string(),
                    size: *s,
                    blob_id: "b".repeat(40),
                    sha256: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_quantization_tag_picks_the_gguf_with_it() {
        let l = listing(&[
            ("model-Q4_K_M.gguf", 5),
            ("model-Q8_0.gguf", 9),
            ("mmproj-model-Q8_0.gguf", 1),
        ]);
        let p = plan(&l, Some("Q8_0")).unwrap();
        assert_eq!(
            p.kind,
            PlanKind::Gguf {
                file: "model-Q8_0.gguf".into()
            }
        );
        let p = plan(&l, Some("q4_k_m")).unwrap();
        assert_eq!(
            p.kind,
            PlanKind::Gguf {
                file: "model-Q4_K_M.gguf".into()
            }
        );
        let e = plan(&l, Some("IQ2_XS")).unwrap_err().to_string();
        assert!(e.contains("IQ2_XS") && e.contains("model-Q8_0.gguf"), "{e}");
    }

    #[test]
    fn split_ggufs_are_planned_whole() {
        let l = listing(&[
            ("m-Q4_K_M-00002-of-00002.gguf", 5),
            ("m-Q4_K_M-00001-of-00002.gguf", 5),
            ("m-Q8_0.gguf", 9),
        ]);
        let p = plan(&l, None).unwrap();
        assert_eq!(
            p.kind,
            PlanKind::SplitGguf {
                first: "m-Q4_K_M-00001-of-00002.gguf".into(),
                parts: 2
            }
        );
        assert_eq!(p.files.len(), 2);
        assert_eq!(p.total_size(), 10);
        let err = plan(&l, Some("m-Q4_K_M-00002-of-00002.gguf")).unwrap_err();
        assert!(err.to_string().contains("first part"), "{err}");
        let broken = listing(&[("m-00001-of-00003.gguf", 1), ("m-00002-of-00003.gguf", 1)]);
        let err = plan(&broken, None).unwrap_err();
        assert!(err.to_string().contains("m-00003-of-00003.gguf"), "{err}");
    }

    /// A sentence-transformers repo (all-MiniLM-L6-v2's layout, ONNX and other exports
    /// beside): the safetensors model with the files that say how it pools and normalises.
    #[test]
    fn a_sentence_transformers_repo_brings_its_pooling_files() {
        let l = listing(&[
            ("1_Pooling/config.json", 1),
            ("README.md", 1),
            ("config.json", 1),
            ("config_sentence_transformers.json", 1),
            ("model.safetensors", 9),
            ("modules.json", 1),
            ("onnx/model.onnx", 9),
            ("pytorch_model.bin", 9),
            ("sentence_bert_config.json", 1),
            ("special_tokens_map.json", 1),
            ("tokenizer.json", 1),
            ("tokenizer_config.json", 1),
            ("vocab.txt", 1),
        ]);
        let p = plan(&l, None).unwrap();
        assert_eq!(p.kind, PlanKind::Safetensors);
        let mut names: Vec<&str> = p.files.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "1_Pooling/config.json",
                "README.md",
                "config.json",
                "config_sentence_transformers.json",
                "model.safetensors",
                "modules.json",
                "sentence_bert_config.json",
                "special_tokens_map.json",
                "tokenizer.json",
                "tokenizer_config.json",
            ]
        );
    }

    #[test]
    fn no_usable_files_lists_what_there_is() {
        let l = listing(&[("README.md", 1), ("pytorch_model.bin", 9)]);
        let err = plan(&l, None).unwrap_err().to_string();
        assert!(
            err.contains("README.md") && err.contains("pytorch_model.bin"),
            "{err}"
        );
        let err = plan(&l, Some("README.md")).unwrap_err().to_string();
        assert!(err.contains("not a GGUF"), "{err}");
        let err = plan(&l, Some("x.gguf")).unwrap_err().to_string();
        assert!(err.contains("no file `x.gguf`"), "{err}");
    }

    #[test]
    fn listings_with_unsafe_paths_or_hashes_are_refused() {
        let ok = br#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[
            {"rfilename":"../evil.gguf","size":1,"blobId":"0123456789abcdef0123456789abcdef01234567"},
            {"rfilename":"a.gguf","size":1,"blobId":"0123456789abcdef0123456789abcdef01234567"}]}"#;
        let l = parse_listing("o/r", "main", ok).unwrap();
        assert_eq!(l.files.len(), 1);
        let bad_commit = br#"{"sha":"../../x","siblings":[]}"#;
        assert!(parse_listing("o/r", "main", bad_commit).is_err());
        let bad_sha = br#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[
            {"rfilename":"a.gguf","size":1,"blobId":"0123456789abcdef0123456789abcdef01234567","lfs":{"sha256":"../x"}}]}"#;
        assert!(parse_listing("o/r", "main", bad_sha).is_err());
    }
}
