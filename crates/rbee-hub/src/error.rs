/// Everything a hub operation can fail with, phrased so the user knows what to do next.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{repo}: the hub answered {status}: the repo is gated or private (or does not exist). \
         If it exists, accept its terms on the hub's page and give rbee a token with read access: \
         `--hf-token <token>` or the HF_TOKEN environment variable{with_token}"
    )]
    Gated {
        repo: String,
        status: u16,
        with_token: &'static str,
    },
    #[error("{0}")]
    NotFound(String),
    #[error(
        "{repo}@{revision} has no usable model files (no GGUF, no safetensors model); it has: {files}"
    )]
    NoUsableFiles {
        repo: String,
        revision: String,
        files: String,
    },
    #[error(
        "integrity check failed for {repo}:{file}: the hub says {algorithm} {expected}, the downloaded bytes hash to {actual}; the download was discarded and nothing was imported"
    )]
    Integrity {
        repo: String,
        file: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error(
        "{repo}:{file}: the hub serves ETag {served} but its listing says {listed}; the repo changed during the pull, retry it"
    )]
    EtagChanged {
        repo: String,
        file: String,
        listed: String,
        served: String,
    },
    #[error(
        "download of {file} was interrupted ({reason}); {kept} of {total} bytes are kept in the HF cache and the next pull resumes from there"
    )]
    Interrupted {
        file: String,
        kept: u64,
        total: u64,
        reason: String,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("cannot reach the hub at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the hub answered {status} for {what}")]
    Status { status: u16, what: String },
    #[error("unexpected answer from the hub: {0}")]
    BadResponse(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    /// The reference names something that is not a model file.
    #[error("{0}")]
    Invalid(String),
}

impl HubError {
    pub(crate) fn from_status(
        status: u16,
        repo: &str,
        revision: Option<&str>,
        file: Option<&str>,
    ) -> HubError {
        match (status, file) {
            (401 | 403, _) => HubError::Gated {
                repo: repo.to_string(),
                status,
                with_token: "",
            },
            (404, Some(f)) => HubError::NotFound(format!(
                "{repo}: file `{f}` not found at revision `{}`",
                revision.unwrap_or("main")
            )),
            (404, None) => HubError::NotFound(format!(
                "{repo}: no such repo or revision `{}` on the hub (check the spelling; `rbee-node models search` finds repos)",
                revision.unwrap_or("main")
            )),
            _ => HubError::Status {
                status,
                what: match file {
                    Some(f) => format!("{repo}:{f}"),
                    None => repo.to_string(),
                },
            },
        }
    }

    /// Adds "a token was sent" to a gated error when one was.
    pub(crate) fn token_was_sent(self, sent: bool) -> HubError {
        match self {
            HubError::Gated { repo, status, .. } if sent => HubError::Gated {
                repo,
                status,
                with_token: " (a token was sent: it lacks access to this repo)",
            },
            other => other,
        }
    }

    pub(crate) fn transport(endpoint: &str, e: ureq::Error) -> HubError {
        HubError::Unreachable {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        }
    }

    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> HubError {
        HubError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True for failures that say "give me a token".
    pub fn is_auth(&self) -> bool {
        matches!(self, HubError::Gated { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, HubError::NotFound(_))
    }
}
