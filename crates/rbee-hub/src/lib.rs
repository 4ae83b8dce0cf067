//! The HuggingFace Hub, as rbee uses it: list a repo's files at a revision, decide which files a
//! model reference means ([`plan`]), download them resumably and verified into the standard HF
//! cache layout ([`Hub::download`]), and search models ([`Hub::search`]).
//!
//! Built on `hf-hub` 0.5: its [`hf_hub::Cache`] layout (`models--org--repo/{blobs,snapshots,refs}`,
//! `<blob>.part` partial files, `<blob>.lock`) and its configured client for the repo listing.
//! The file transfer itself is written here on ureq because hf-hub cannot be cancelled mid-file,
//! does not check the hub's hashes, and follows redirects itself (we check the hub's ETag and
//! commit headers on the first hop and never send the token past the hub).
//!
//! Nothing here knows the store: the node imports the downloaded snapshot with `hf-cache:`.

mod download;
mod error;
mod plan;
mod search;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};

pub use download::Downloaded;
pub use error::HubError;
pub use plan::{Plan, PlanKind, RemoteFile, RepoListing, plan};
pub use search::{MAX_SEARCH_LIMIT, SearchHit};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The largest repo listing or search answer we read (a repo with 10 000 files is ~2 MB).
pub(crate) const MAX_JSON: u64 = 16 << 20;
/// The longest one response body may take; a transfer that needs longer is resumed.
pub(crate) const SEGMENT: Duration = Duration::from_secs(300);
/// The most files a repo listing may name.
pub(crate) const MAX_FILES: usize = 100_000;

/// Where the hub is and how to talk to it; set explicitly by the caller (the node's config),
/// with [`HubConfig::from_env`] giving the usual `HF_*` defaults.
#[derive(Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// `https://huggingface.co` or a mirror; no trailing slash needed.
    pub endpoint: String,
    /// Only for gated or private repos; sent to `endpoint` and nowhere else.
    pub token: Option<String>,
    /// The HF hub cache (`$HF_HOME/hub`): downloads land here, in HF's layout.
    pub cache_dir: PathBuf,
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

impl HubConfig {
    /// `HF_ENDPOINT` (else the public hub), `HF_TOKEN`, and `HF_HUB_CACHE`, else `$HF_HOME/hub`,
    /// else `~/.cache/huggingface/hub`. None only when no cache dir can be found at all.
    pub fn from_env() -> Option<HubConfig> {
        let cache_dir = env("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| env("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub")))?;
        Some(HubConfig {
            endpoint: env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
            token: env("HF_TOKEN"),
            cache_dir,
        })
    }
}

/// A hub client. Cheap to clone; every call is blocking (run it on a blocking thread).
#[derive(Debug, Clone)]
pub struct Hub {
    config: HubConfig,
    endpoint: String,
    api: Api,
    cache: Cache,
    /// Our own agent for transfers and search: no automatic redirects, statuses as values.
    agent: ureq::Agent,
}

impl Hub {
    pub fn new(mut config: HubConfig) -> Result<Hub, HubError> {
        let endpoint = config.endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(HubError::Config(format!(
                "hub endpoint `{endpoint}` must start with http:// or https://"
            )));
        }
        config.token = config.token.filter(|t| !t.trim().is_empty());
        let cache = Cache::new(config.cache_dir.clone());
        let api = ApiBuilder::from_cache(cache.clone())
            .with_endpoint(endpoint.clone())
            .with_token(config.token.clone())
            .with_progress(false)
            .with_user_agent("rbee", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| HubError::Config(format!("cannot build the hub client: {e}")))?;
        let agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // ureq has no idle timeout: a stalled transfer ends after this and resumes from
            // what it got (see `download`), so big files arrive in segments, never hang.
            .timeout_recv_body(Some(SEGMENT))
            .user_agent(format!("rbee/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Hub {
            config,
            endpoint,
            api,
            cache,
            agent,
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The HF hub cache this client downloads into (give it to `Store::with_hf_cache_dir`).
    pub fn cache_dir(&self) -> &Path {
        &self.config.cache_dir
    }

    fn repo(&self, repo: &str, revision: &str) -> Repo {
        Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string())
    }

    /// True when `url` is on the hub itself, the only place the token may go.
    fn same_origin(&self, url: &str) -> bool {
        origin(url).is_some_and(|o| Some(o) == origin(&self.endpoint))
    }

    fn with_auth<B>(&self, url: &str, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.config.token {
            Some(t) if self.same_origin(url) => req.header("authorization", format!("Bearer {t}")),
            _ => req,
        }
    }

    /// The repo's files at `revision` (branch, tag or commit), with sizes and hashes, and the
    /// commit the revision resolves to.
    pub fn listing(&self, repo: &str, revision: &str) -> Result<RepoListing, HubError> {
        let req = self
            .api
            .repo(self.repo(repo, revision))
            .info_request()
            .query("blobs", "true")
            .config()
            .timeout_global(Some(Duration::from_secs(120)))
            .build();
        let mut resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::StatusCode(code)) => {
                return Err(HubError::from_status(code, repo, Some(revision), None)
                    .token_was_sent(self.config.token.is_some()));
            }
            Err(e) => return Err(HubError::transport(&self.endpoint, e)),
        };
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_JSON)
            .read_to_vec()
            .map_err(|e| HubError::BadResponse(format!("listing of {repo}: {e}")))?;
        plan::parse_listing(repo, revision, &bytes)
    }

    /// Lists the repo and decides which files `hf` means; see [`plan`].
    pub fn resolve(&self, hf: &rbee_proto::HfRef) -> Result<Plan, HubError> {
        let listing = self.listing(&hf.repo, hf.revision_or_main())?;
        plan(&listing, hf.file.as_deref())
    }
}

/// `scheme://host[:port]` of a URL.
pub(crate) fn origin(url: &str) -> Option<&str> {
    let rest_at = url.find("://")? + 3;
    let end = url[rest_at..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| rest_at + i);
    Some(&url[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin("https://huggingface.co/a/b"),
            Some("https://huggingface.co")
        );
        assert_eq!(origin("http://127.0.0.1:9/x?y"), Some("http://127.0.0.1:9"));
        assert_eq!(origin("http://h"), Some("http://h"));
        assert_eq!(origin("/relative"), None);
    }

    #[test]
    fn the_token_goes_only_to_the_hub() {
        let hub = Hub::new(HubConfig {
            endpoint: "http://127.0.0.1:9/".into(),
            token: Some("secret".into()),
            cache_dir: std::env::temp_dir(),
        })
        .unwrap();
        assert!(hub.same_origin("http://127.0.0.1:9/org/repo/resolve/main/x"));
        assert!(!hub.same_origin("http://127.0.0.1:10/cdn/x"));
        assert!(!hub.same_origin("http://127.0.0.1:9.evil/x"));
        assert!(!format!("{:?}", hub.config()).contains("secret"));
    }
}
