//! Model references: everything a user may type to name a model.
//!
//! | form | meaning |
//! |---|---|
//! | `org/repo`, `hf:org/repo` | a HuggingFace repo; the provisioner picks the file |
//! | `org/repo:file.gguf` | that file of the repo |
//! | `org/repo@rev`, `org/repo@rev:file` | pinned to a branch, tag or commit |
//! | `/abs/path`, `./rel`, `../rel`, `~/path`, `file:path` | a local file or folder |
//! | `cid:<64 hex>` or a bare 64-hex id | exact content in the pool |
//! | `name` | a catalog name or alias |
//!
//! `Display` writes the canonical form, and parsing it gives back the same value.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ContentId;

const ACCEPTED_FORMS: &str = "accepted forms: `org/repo`, `hf:org/repo`, `org/repo:file.gguf`, \
     `org/repo@revision`, `org/repo@revision:file`, a local path (`/…`, `./…`, `../…`, `~/…`, \
     `file:…`), `cid:<64 hex>` or a bare 64-hex content id, or a catalog name/alias \
     (letters, digits, `.`, `_`, `-`, `:`)";

/// Longest org, repo, name or revision we accept; HuggingFace caps repo names at 96.
const MAX_PART: usize = 96;
const MAX_NAME: usize = 128;
const MAX_PATH: usize = 4096;

/// A reference that matches none of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid model reference `{input}`: {reason}; {ACCEPTED_FORMS}")]
pub struct RefError {
    input: String,
    reason: String,
}

impl RefError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        Self {
            input: input.chars().take(200).collect(),
            reason: reason.into(),
        }
    }
}

/// A HuggingFace repo, optionally pinned to a revision and narrowed to one file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HfRef {
    pub repo: String,
    pub revision: Option<String>,
    pub file: Option<String>,
}

impl HfRef {
    /// The revision to resolve: the one given, else `main`.
    pub fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl fmt::Display for HfRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repo)?;
        if let Some(rev) = &self.revision {
            write!(f, "@{rev}")?;
        }
        if let Some(file) = &self.file {
            write!(f, ":{file}")?;
        }
        Ok(())
    }
}

/// What a user typed to name a model, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelRef {
    HuggingFace(HfRef),
    LocalPath(String),
    ContentId(ContentId),
    /// A catalog name or alias.
    Name(String),
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::HuggingFace(hf) => write!(f, "hf:{hf}"),
            ModelRef::LocalPath(p) if has_path_prefix(p) => f.write_str(p),
            ModelRef::LocalPath(p) => write!(f, "file:{p}"),
            ModelRef::ContentId(id) => write!(f, "cid:{id}"),
            ModelRef::Name(n) => f.write_str(n),
        }
    }
}

fn has_path_prefix(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("./") || s.starts_with("../") || s.starts_with("~/")
}

fn is_part_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_repo_part(input: &str, what: &str, part: &str) -> Result<(), RefError> {
    if part.is_empty() {
        return Err(RefError::new(input, format!("the {what} is empty")));
    }
    if part.len() > MAX_PART {
        return Err(RefError::new(
            input,
            format!("the {what} is longer than {MAX_PART} characters"),
        ));
    }
    if let Some(c) = part.chars().find(|c| !is_part_char(*c)) {
        return Err(RefError::new(input, format!("the {what} contains `{c}`")));
    }
    if part.starts_with(['.', '-']) || part.contains("..") || part.contains("--") {
        return Err(RefError::new(
            input,
            format!("the {what} `{part}` may not start with `.`/`-` or contain `..`/`--`"),
        ));
    }
    Ok(())
}

/// True when `s` is usable as a catalog name or alias.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| is_part_char(c) || c == ':')
        && !is_hex64(s)
        && !["cid:", "file:", "hf:"].iter().any(|p| s.starts_with(p))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_hf(input: &str, body: &str) -> Result<HfRef, RefError> {
    // `org/repo[@rev][:file]`: the revision may contain `/` (refs/pr/1) but never `:`.
    let (head, file) = match body.split_once(':') {
        Some((h, f)) => (h, Some(f)),
        None => (body, None),
    };
    let (repo, revision) = match head.split_once('@') {
        Some((r, rev)) => (r, Some(rev)),
        None => (head, None),
    };
    let Some((org, name)) = repo.split_once('/') else {
        return Err(RefError::new(input, "a HuggingFace repo is `org/repo`"));
    };
    check_repo_part(input, "organisation", org)?;
    check_repo_part(input, "repo name", name)?;
    if let Some(rev) = revision {
        let ok = !rev.is_empty()
            && rev.len() <= MAX_PART
            && rev.chars().all(|c| is_part_char(c) || c == '/')
            && !rev.contains("..")
            && !rev.starts_with('/')
            && !rev.ends_with('/');
        if !ok {
            return Err(RefError::new(input, format!("bad revision `{rev}`")));
        }
    }
    if let Some(file) = file {
        crate::check_relative_file_name(file)
            .map_err(|e| RefError::new(input, format!("bad file name: {e}")))?;
    }
    Ok(HfRef {
        repo: repo.to_string(),
        revision: revision.map(str::to_string),
        file: file.map(str::to_string),
    })
}

impl FromStr for ModelRef {
    type Err = RefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(RefError::new(input, "it is empty"));
        }
        if s.len() > MAX_PATH {
            return Err(RefError::new(input, "it is too long"));
        }
        if s.contains('\0') {
            return Err(RefError::new(input, "it contains a NUL byte"));
        }
        if let Some(hex) = s.strip_prefix("cid:") {
            let id = hex
                .parse()
                .map_err(|e: crate::IdParseError| RefError::new(input, e.to_string()))?;
            return Ok(ModelRef::ContentId(id));
        }
        if is_hex64(s)
            && let Ok(id) = s.parse()
        {
            return Ok(ModelRef::ContentId(id));
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(RefError::new(input, "the path after `file:` is empty"));
            }
            return Ok(ModelRef::LocalPath(path.to_string()));
        }
        if has_path_prefix(s) || s == "." || s == ".." || s == "~" {
            return Ok(ModelRef::LocalPath(s.to_string()));
        }
        if let Some(body) = s.strip_prefix("hf:") {
            return parse_hf(input, body).map(ModelRef::HuggingFace);
        }
        if s.contains('/') {
            return parse_hf(input, s).map(ModelRef::HuggingFace);
        }
        if is_valid_name(s) {
            return Ok(ModelRef::Name(s.to_string()));
        }
        Err(RefError::new(
            input,
            "it is not a repo, path, content id or valid name",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hf(repo: &str, rev: Option<&str>, file: Option<&str>) -> ModelRef {
        ModelRef::HuggingFace(HfRef {
            repo: repo.into(),
            revision: rev.map(Into::into),
            file: file.map(Into::into),
        })
    }

    #[test]
    fn parses_every_accepted_form() {
        let id = ContentId::of(b"x");
        let cases: Vec<(String, ModelRef)> = vec![
            ("org/repo".into(), hf("org/repo", None, None)),
            ("hf:org/repo".into(), hf("org/repo", None, None)),
            (
                "org/repo:file.gguf".into(),
                hf("org/repo", None, Some("file.gguf")),
            ),
            ("org/repo@v1.0".into(), hf("org/repo", Some("v1.0"), None)),
            (
                "Qwen/Qwen2.5-0.5B-GGUF@refs/pr/1:sub/q4_k_m.gguf".into(),
                hf(
                    "Qwen/Qwen2.5-0.5B-GGUF",
                    Some("refs/pr/1"),
                    Some("sub/q4_k_m.gguf"),
                ),
            ),
            (
                "/models/a.gguf".into(),
                ModelRef::LocalPath("/models/a.gguf".into()),
            ),
            ("./a.gguf".into(), ModelRef::LocalPath("./a.gguf".into())),
            ("~/a".into(), ModelRef::LocalPath("~/a".into())),
            ("file:a.gguf".into(), ModelRef::LocalPath("a.gguf".into())),
            (format!("cid:{id}"), ModelRef::ContentId(id)),
            (id.to_string(), ModelRef::ContentId(id)),
            ("gemma3:270m".into(), ModelRef::Name("gemma3:270m".into())),
            ("demo".into(), ModelRef::Name("demo".into())),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<ModelRef>(), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_references_listing_the_forms() {
        for bad in [
            "",
            "org/",
            "a/b/c",
            "org/re po",
            "org/repo:../etc/passwd",
            "org/repo:/abs",
            "org/repo@",
            "org/repo:",
            "cid:1234",
            "naïve",
            "-leading",
            "org/re..po",
        ] {
            let err = bad.parse::<ModelRef>().expect_err(bad);
            let msg = err.to_string();
            assert!(msg.contains("accepted forms"), "{bad}: {msg}");
            assert!(msg.contains("org/repo:file.gguf"), "{bad}: {msg}");
        }
    }

    fn part() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9_]{0,10}(\\.[A-Za-z0-9]{1,4})?"
    }

    fn any_ref() -> impl Strategy<Value = ModelRef> {
        prop_oneof![
            (
                part(),
                part(),
                proptest::option::of("[a-z0-9]{1,8}(/[a-z0-9]{1,4})?"),
                proptest::option::of("([a-z]{1,5}/)?[A-Za-z0-9_.-]{0,12}[A-Za-z0-9]\\.gguf"),
            )
                .prop_map(|(o, r, rev, file)| ModelRef::HuggingFace(HfRef {
                    repo: format!("{o}/{r}"),
                    revision: rev,
                    file,
                })),
            "(/|\\./|\\.\\./|~/)?[a-z0-9 _./-]{1,30}[a-z0-9]".prop_map(ModelRef::LocalPath),
            any::<[u8; 32]>().prop_map(|b| ModelRef::ContentId(ContentId::from_bytes(b))),
            "[a-z0-9][a-z0-9._:-]{0,20}"
                .prop_filter("not hex64", |s| is_valid_name(s))
                .prop_map(ModelRef::Name),
        ]
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(r in any_ref()) {
            let text = r.to_string();
            prop_assert_eq!(text.parse::<ModelRef>(), Ok(r), "{}", text);
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = s.parse::<ModelRef>();
        }
    }
}
