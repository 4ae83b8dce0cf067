//! Node configuration: a TOML file in the XDG config dir, each field overridable by an
//! `RBEE_*` environment variable and then by a command-line flag (the CLI applies flags).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::units::{parse_bytes, total_ram};

pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7835";
/// The longest API token accepted.
const MAX_TOKEN: usize = 1024;
/// The largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;
/// Below this no model fits; a budget of 0 is a typo.
const MIN_BUDGET: u64 = 1 << 20;
/// Peers connect here; only nodes with the pool key get past the first bytes.
pub const DEFAULT_P2P_ADDR: &str = "/ip4/0.0.0.0/tcp/7836";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where models live (default: `$XDG_DATA_HOME/rbee`).
    pub data_dir: Option<PathBuf>,
    /// HTTP API address; loopback unless `api_token` is set.
    pub api_addr: SocketAddr,
    /// Bearer token required on every API request; mandatory off loopback.
    pub api_token: Option<String>,
    /// A file holding the token (first line), so it never shows in `ps` or shell history.
    pub api_token_file: Option<PathBuf>,
    /// Host names (the HTTP `Host` header) the API answers besides loopback names, its own
    /// addresses and, off loopback, the machine's host name; `*` allows any. Guards against
    /// DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`http://host:port`) allowed to call the API cross-origin (CORS);
    /// none by default, `*` for any.
    pub cors_origins: Vec<String>,
    /// HTTP connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (also closes idle keep-alive
    /// connections after this long).
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body.
    pub body_timeout_secs: u64,
    /// Seconds SIGTERM waits for in-flight requests; then streams end with an error event.
    pub drain_secs: u64,
    /// CPU memory models may use, in bytes (default: `memory_fraction` of RAM).
    pub memory_budget: Option<u64>,
    /// Share of total RAM for models when no budget is given; the rest is the OS's headroom.
    pub memory_fraction: f64,
    /// The devices this node offers, comma-separated: `cpu`, `cuda:N`, `metal:N`, `sim:N=SIZE`
    /// (a simulated GPU). Default: the CPU and every GPU the build can open.
    pub devices: Option<String>,
    /// Memory left free on each GPU: its budget is what the driver reports free at start,
    /// less this.
    pub gpu_reserve: u64,
    /// Context length models are loaded with (capped at each model's own).
    pub context_length: usize,
    /// Requests that may wait per model while its batch slots are full; beyond that: 503 +
    /// Retry-After.
    pub queue_capacity: usize,
    /// Sequences each model generates at once, batched: every step decodes one token for all
    /// of them, reading the weights once.
    pub max_sequences: usize,
    /// KV cache positions per model for all its sequences (live, and kept for prefix reuse);
    /// default `max_sequences × context_length`. Counted in the model's memory.
    pub kv_budget_tokens: Option<usize>,
    /// Keep finished sequences' KV caches so a prompt sharing their prefix (the next chat
    /// turn, a common system prompt) continues from them.
    pub prefix_cache: bool,
    /// Seconds a request waits for its model to finish loading before it gets a 503.
    pub load_wait_secs: u64,
    /// Models to load at start.
    pub preload: Vec<String>,
    /// HuggingFace endpoint (default: `HF_ENDPOINT`, else <https://huggingface.co>).
    pub hf_endpoint: Option<String>,
    /// Token for gated or private HuggingFace repos (default: `HF_TOKEN`); sent to the hub only.
    pub hf_token: Option<String>,
    /// HuggingFace home; pulls download into `<hf_home>/hub` (default: `HF_HOME`, else
    /// `~/.cache/huggingface`), the cache `hf-cache:` imports read too.
    pub hf_home: Option<PathBuf>,
    /// The node's name in the pool (default: the host name).
    pub node_name: Option<String>,
    /// The pool's shared secret (`rbee-node pool new`); without it the node runs alone.
    pub pool_key: Option<String>,
    /// Where the node listens for its peers (libp2p multiaddr).
    pub p2p_addr: String,
    /// Peers to dial at start, for pools mDNS cannot see (libp2p multiaddrs).
    pub bootstrap: Vec<String>,
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// Milliseconds between status publications when nothing changes; a peer silent for
    /// three of them leaves the view.
    pub status_interval_ms: u64,
    /// Fallback chains: a name that maps to models tried in order, the next one when the
    /// previous has no capacity anywhere in the pool (`[routes] chat = ["big", "small"]`).
    pub routes: std::collections::BTreeMap<String, Vec<String>>,
    /// Shard uploads to peers at once; more get "busy" and try another peer.
    pub max_uploads: usize,
    /// Upload bandwidth cap for serving shards, bytes per second (none: unlimited).
    pub max_upload_rate: Option<u64>,
    /// Models (names) this node keeps to itself: not announced as shared, not served.
    pub not_shared: Vec<String>,
    /// Per model name, the most of its layers a GPU takes (llama.cpp's `-ngl`): the rest run
    /// on the CPU even when the whole model would fit the GPU (`[gpu_layers] "qwen2.5:7b" =
    /// 20`). Unlisted models: as many as fit, the whole model when it fits.
    pub gpu_layers: std::collections::BTreeMap<String, usize>,
    /// Test-only fault injection: flip a bit in every shard served (proves pullers detect it).
    pub fault_corrupt_uploads: bool,
    /// Test-only fault injection: `POST /v1/tasks/{name}/kill` makes a supervised task (the
    /// shard or infer server, the status publisher, `pull` for every pull) panic, to prove
    /// it comes back.
    pub fault_kill_tasks: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: None,
            api_addr: DEFAULT_API_ADDR
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7835))),
            api_token: None,
            api_token_file: None,
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            max_connections: 256,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            drain_secs: 30,
            memory_budget: None,
            memory_fraction: 0.7,
            devices: None,
            gpu_reserve: 512 << 20,
            context_length: 4096,
            queue_capacity: 16,
            max_sequences: rbee_infer::engine::DEFAULT_MAX_SEQUENCES,
            kv_budget_tokens: None,
            prefix_cache: true,
            load_wait_secs: 60,
            preload: Vec::new(),
            hf_endpoint: None,
            hf_token: None,
            hf_home: None,
            node_name: None,
            pool_key: None,
            p2p_addr: DEFAULT_P2P_ADDR.into(),
            bootstrap: Vec::new(),
            mdns: true,
            status_interval_ms: 1000,
            routes: Default::default(),
            max_uploads: 4,
            max_upload_rate: None,
            not_shared: Vec::new(),
            gpu_layers: Default::default(),
            fault_corrupt_uploads: false,
            fault_kill_tasks: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("environment variable {var}: {reason}")]
    Env { var: &'static str, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// `$XDG_CONFIG_HOME/rbee/config.toml`, else `~/.config/rbee/config.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("rbee/config.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/rbee/config.toml"))
}

fn env(var: &'static str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

fn env_parse<T: std::str::FromStr>(var: &'static str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    env(var)
        .map(|v| {
            v.parse::<T>().map_err(|e| ConfigError::Env {
                var,
                reason: format!("`{v}`: {e}"),
            })
        })
        .transpose()
}

impl NodeConfig {
    /// Reads `path` (or the default path, if it exists), then applies `RBEE_*` variables.
    pub fn load(path: Option<&Path>) -> Result<NodeConfig, ConfigError> {
        let explicit = path.is_some();
        let path = path.map(Path::to_path_buf).or_else(default_config_path);
        let mut config = match path {
            Some(p) if p.exists() || explicit => {
                let text = std::fs::read_to_string(&p).map_err(|e| ConfigError::File {
                    path: p.clone(),
                    reason: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: p.clone(),
                    reason: e.to_string(),
                })?
            }
            _ => NodeConfig::default(),
        };
        config.apply_env()?;
        Ok(config)
    }

    fn apply_env(&mut self) -> Result<(), ConfigError> {
        if let Some(v) = env("RBEE_DATA_DIR") {
            self.data_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = env_parse("RBEE_API_ADDR")? {
            self.api_addr = v;
        }
        if let Some(v) = env("RBEE_API_TOKEN") {
            self.api_token = Some(v);
        }
        if let Some(v) = env("RBEE_API_TOKEN_FILE") {
            self.api_token_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("RBEE_ALLOWED_HOSTS") {
            self.allowed_hosts = list(&v);
        }
        if let Some(v) = env("RBEE_CORS_ORIGINS") {
            self.cors_origins = list(&v);
        }
        if let Some(v) = env_parse("RBEE_MAX_CONNECTIONS")? {
            self.max_connections = v;
        }
        if let Some(v) = env_parse("RBEE_HEADER_TIMEOUT_SECS")? {
            self.header_timeout_secs = v;
        }
        if let Some(v) = env_parse("RBEE_BODY_TIMEOUT_SECS")? {
            self.body_timeout_secs = v;
        }
        if let Some(v) = env_parse("RBEE_DRAIN_SECS")? {
            self.drain_secs = v;
        }
        if let Some(v) = env("RBEE_MEMORY_BUDGET") {
            self.memory_budget = Some(parse_bytes(&v).map_err(|reason| ConfigError::Env {
                var: "RBEE_MEMORY_BUDGET",
                reason,
            })?);
        }
        if let Some(v) = env_parse("RBEE_MEMORY_FRACTION")? {
            self.memory_fraction = v;
        }
        if let Some(v) = env("RBEE_DEVICES") {
            self.devices = Some(v);
        }
        if let Some(v) = env("RBEE_GPU_RESERVE") {
            self.gpu_reserve = parse_bytes(&v).map_err(|reason| ConfigError::Env {
                var: "RBEE_GPU_RESERVE",
                reason,
            })?;
        }
        if let Some(v) = env_parse("RBEE_CONTEXT_LENGTH")? {
            self.context_length = v;
        }
        if let Some(v) = env_parse("RBEE_QUEUE_CAPACITY")? {
            self.queue_capacity = v;
        }
        if let Some(v) = env_parse("RBEE_MAX_SEQUENCES")? {
            self.max_sequences = v;
        }
        if let Some(v) = env_parse("RBEE_KV_BUDGET_TOKENS")? {
            self.kv_budget_tokens = Some(v);
        }
        if let Some(v) = env_parse("RBEE_PREFIX_CACHE")? {
            self.prefix_cache = v;
        }
        if let Some(v) = env_parse("RBEE_LOAD_WAIT_SECS")? {
            self.load_wait_secs = v;
        }
        if let Some(v) = env("RBEE_PRELOAD") {
            self.preload = list(&v);
        }
        if let Some(v) = env("RBEE_NODE_NAME") {
            self.node_name = Some(v);
        }
        if let Some(v) = env("RBEE_POOL_KEY") {
            self.pool_key = Some(v);
        }
        if let Some(v) = env("RBEE_P2P_ADDR") {
            self.p2p_addr = v;
        }
        if let Some(v) = env("RBEE_BOOTSTRAP") {
            self.bootstrap = list(&v);
        }
        if let Some(v) = env_parse("RBEE_MDNS")? {
            self.mdns = v;
        }
        if let Some(v) = env_parse("RBEE_MAX_UPLOADS")? {
            self.max_uploads = v;
        }
        if let Some(v) = env("RBEE_MAX_UPLOAD_RATE") {
            self.max_upload_rate = Some(parse_bytes(&v).map_err(|reason| ConfigError::Env {
                var: "RBEE_MAX_UPLOAD_RATE",
                reason,
            })?);
        }
        if let Some(v) = env("RBEE_NOT_SHARED") {
            self.not_shared = list(&v);
        }
        if let Some(v) = env("RBEE_GPU_LAYERS") {
            self.gpu_layers = list(&v)
                .iter()
                .map(|pair| {
                    let (name, n) = pair.rsplit_once('=').ok_or(())?;
                    Ok((name.trim().to_string(), n.trim().parse().map_err(|_| ())?))
                })
                .collect::<Result<_, ()>>()
                .map_err(|()| ConfigError::Env {
                    var: "RBEE_GPU_LAYERS",
                    reason: "expected `model=N,model=N` (N: layers on a GPU)".into(),
                })?;
        }
        if let Some(v) = env_parse("RBEE_FAULT_CORRUPT_UPLOADS")? {
            self.fault_corrupt_uploads = v;
        }
        if let Some(v) = env_parse("RBEE_FAULT_KILL_TASKS")? {
            self.fault_kill_tasks = v;
        }
        if let Some(v) = env_parse("RBEE_STATUS_INTERVAL_MS")? {
            self.status_interval_ms = v;
        }
        // rbee's own variables override the file; HuggingFace's usual ones only fill gaps.
        if let Some(v) = env("RBEE_HF_ENDPOINT") {
            self.hf_endpoint = Some(v);
        }
        if let Some(v) = env("RBEE_HF_TOKEN") {
            self.hf_token = Some(v);
        }
        if let Some(v) = env("RBEE_HF_HOME") {
            self.hf_home = Some(PathBuf::from(v));
        }
        if let Some(v) = env("HF_ENDPOINT") {
            self.hf_endpoint.get_or_insert(v);
        }
        if let Some(v) = env("HF_TOKEN") {
            self.hf_token.get_or_insert(v);
        }
        if let Some(v) = env("HF_HOME") {
            self.hf_home.get_or_insert(PathBuf::from(v));
        }
        Ok(())
    }

    /// The HuggingFace client settings: these fields, then `HF_HUB_CACHE` and
    /// `~/.cache/huggingface/hub` for the cache. None when no cache dir can be found.
    pub fn hub_config(&self) -> Option<rbee_hub::HubConfig> {
        let defaults = rbee_hub::HubConfig::from_env();
        let cache_dir = match &self.hf_home {
            Some(home) => home.join("hub"),
            None => defaults.as_ref()?.cache_dir.clone(),
        };
        Some(rbee_hub::HubConfig {
            endpoint: self
                .hf_endpoint
                .clone()
                .unwrap_or_else(|| rbee_hub::DEFAULT_ENDPOINT.to_string()),
            token: self.hf_token.clone(),
            cache_dir,
        })
    }

    /// Reads `api_token_file` into `api_token` (once; the file's first line, trimmed).
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        let Some(path) = self.api_token_file.take() else {
            return Ok(());
        };
        if self.api_token.is_some() {
            return Err(ConfigError::Invalid(format!(
                "both an API token and an API token file ({}) are set: give one",
                path.display()
            )));
        }
        let bad = |reason: String| ConfigError::File {
            path: path.clone(),
            reason,
        };
        let meta = std::fs::metadata(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        if !meta.is_file() || meta.len() > MAX_TOKEN_FILE {
            return Err(bad(format!(
                "an API token file must be a regular file of at most {MAX_TOKEN_FILE} bytes"
            )));
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            return Err(bad("its first line is empty: write the token there".into()));
        }
        self.api_token = Some(token);
        Ok(())
    }

    /// Refuses settings that are unsafe or meaningless.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.device_specs().map_err(ConfigError::Invalid)?;
        if let Some(token) = &self.api_token
            && (token.is_empty()
                || token.len() > MAX_TOKEN
                || token.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError::Invalid(format!(
                "the API token must be 1 to {MAX_TOKEN} characters without spaces or control characters (e.g. the output of `openssl rand -hex 32`)"
            )));
        }
        if let Some(budget) = self.memory_budget {
            if budget < MIN_BUDGET {
                return Err(ConfigError::Invalid(format!(
                    "memory budget {budget} bytes is too small to hold any model: give at least 1MiB, e.g. --memory-budget 8GiB"
                )));
            }
            if let Some(ram) = total_ram()
                && budget > ram
            {
                return Err(ConfigError::Invalid(format!(
                    "memory budget {budget} bytes is more than this machine's RAM ({ram} bytes): a model that big would be killed by the OOM killer; give less, or leave it unset for {}% of RAM",
                    (self.memory_fraction * 100.0).round()
                )));
            }
        }
        for host in &self.allowed_hosts {
            if host.is_empty() || host.contains(['/', ' ', '@']) || host.len() > 253 {
                return Err(ConfigError::Invalid(format!(
                    "allowed host `{host}` must be a host name or address (no scheme, path or spaces), or `*`"
                )));
            }
        }
        for origin in &self.cors_origins {
            let ok = origin == "*"
                || origin == "null"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && !origin.contains(char::is_whitespace)
                    && axum::http::HeaderValue::from_str(origin).is_ok());
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "CORS origin `{origin}` must be scheme://host[:port] as a browser sends it (e.g. http://localhost:3000, no trailing slash), or `*`"
                )));
            }
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(ConfigError::Invalid(
                "max_connections must be 1..=65536".into(),
            ));
        }
        if !(1..=600).contains(&self.header_timeout_secs)
            || !(1..=3600).contains(&self.body_timeout_secs)
            || self.drain_secs > 3600
        {
            return Err(ConfigError::Invalid(
                "header_timeout_secs must be 1..=600, body_timeout_secs 1..=3600 and drain_secs 0..=3600".into(),
            ));
        }
        if !self.api_addr.ip().is_loopback() && self.api_token.as_deref().is_none_or(str::is_empty)
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve the API on {} without a token: pass --api-token (or RBEE_API_TOKEN), or bind to 127.0.0.1",
                self.api_addr
            )));
        }
        if !(0.05..=0.95).contains(&self.memory_fraction) {
            return Err(ConfigError::Invalid(format!(
                "memory_fraction {} must be between 0.05 and 0.95",
                self.memory_fraction
            )));
        }
        if self.queue_capacity == 0 || self.queue_capacity > 4096 {
            return Err(ConfigError::Invalid(
                "queue_capacity must be 1..=4096".into(),
            ));
        }
        if self.max_sequences == 0 || self.max_sequences > 256 {
            return Err(ConfigError::Invalid(format!(
                "max_sequences {} must be 1..=256",
                self.max_sequences
            )));
        }
        if let Some(kv) = self.kv_budget_tokens
            && kv < self.context_length
        {
            return Err(ConfigError::Invalid(format!(
                "kv_budget_tokens {kv} must hold at least one context ({} tokens)",
                self.context_length
            )));
        }
        if let Some(key) = &self.pool_key {
            key.parse::<rbee_net::PoolKey>()
                .map_err(|e| ConfigError::Invalid(format!("pool key: {e}")))?;
        }
        for addr in std::iter::once(&self.p2p_addr).chain(&self.bootstrap) {
            addr.parse::<rbee_net::Multiaddr>().map_err(|e| {
                ConfigError::Invalid(format!(
                    "`{addr}` is not a libp2p address (e.g. /ip4/192.168.1.20/tcp/7836): {e}"
                ))
            })?;
        }
        for (name, chain) in &self.routes {
            if chain.is_empty() || chain.len() > 16 || chain.iter().any(|m| m == name) {
                return Err(ConfigError::Invalid(format!(
                    "route `{name}` must list 1 to 16 models other than itself"
                )));
            }
        }
        for (name, &n) in &self.gpu_layers {
            if name.is_empty() || n == 0 {
                return Err(ConfigError::Invalid(format!(
                    "gpu_layers `{name}` = {n}: give a model name and at least one layer (to keep a model off the GPUs, offer only the CPU: --devices cpu)"
                )));
            }
        }
        if !(50..=60_000).contains(&self.status_interval_ms) {
            return Err(ConfigError::Invalid(
                "status_interval_ms must be 50..=60000".into(),
            ));
        }
        if self.context_length < 64 {
            return Err(ConfigError::Invalid(
                "context_length must be at least 64".into(),
            ));
        }
        Ok(())
    }

    /// The devices asked for, parsed (`None`: not set, offer what the build finds).
    pub fn device_specs(&self) -> Result<Option<Vec<crate::devices::DeviceSpec>>, String> {
        self.devices
            .as_deref()
            .map(crate::devices::parse_list)
            .transpose()
    }

    /// The CPU budget: the configured bytes, else a share of total RAM.
    pub fn cpu_budget(&self) -> u64 {
        self.memory_budget.unwrap_or_else(|| {
            (total_ram().unwrap_or(8 << 30) as f64 * self.memory_fraction) as u64
        })
    }

    /// The configuration as TOML, secrets masked.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for secret in [
            &mut shown.api_token,
            &mut shown.pool_key,
            &mut shown.hf_token,
        ] {
            if secret.is_some() {
                *secret = Some("<set>".into());
            }
        }
        toml::to_string(&shown).unwrap_or_default()
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn gpu_layers_come_from_the_file_and_a_zero_is_refused() {
        let c: NodeConfig = toml::from_str("[gpu_layers]\n\"qwen2.5:7b\" = 20\n").unwrap();
        assert_eq!(c.gpu_layers.get("qwen2.5:7b"), Some(&20));
        c.validate().unwrap();
        let zero: NodeConfig = toml::from_str("[gpu_layers]\nm = 0\n").unwrap();
        let e = zero.validate().unwrap_err().to_string();
        assert!(e.contains("at least one layer"), "{e}");
    }

    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("123"), Ok(123));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }

    #[test]
    fn non_loopback_needs_a_token() {
        let mut c = NodeConfig {
            api_addr: "0.0.0.0:7835".parse().unwrap(),
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--api-token")
        );
        c.api_token = Some("s3cret".into());
        assert!(c.validate().is_ok());
        assert!(NodeConfig::default().validate().is_ok());
    }

    #[test]
    fn hub_settings_come_from_the_config() {
        let c = NodeConfig {
            hf_endpoint: Some("http://127.0.0.1:9".into()),
            hf_token: Some("hf_x".into()),
            hf_home: Some("/srv/hf".into()),
            ..Default::default()
        };
        let h = c.hub_config().unwrap();
        assert_eq!(h.endpoint, "http://127.0.0.1:9");
        assert_eq!(h.token.as_deref(), Some("hf_x"));
        assert_eq!(h.cache_dir, PathBuf::from("/srv/hf/hub"));
        let shown = c.to_toml();
        assert!(!shown.contains("hf_x"), "{shown}");
        let back: NodeConfig = toml::from_str(&shown).unwrap();
        assert_eq!(back.hf_home, c.hf_home);
    }

    #[test]
    fn toml_round_trip_and_unknown_fields_refused() {
        let c = NodeConfig {
            memory_budget: Some(1 << 30),
            preload: vec!["demo".into()],
            routes: [(
                "chat".to_string(),
                vec!["big".to_string(), "small".to_string()],
            )]
            .into(),
            ..Default::default()
        };
        let back: NodeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let secret = NodeConfig {
            pool_key: Some("ab".repeat(32)),
            ..Default::default()
        };
        assert!(!secret.to_toml().contains(&"ab".repeat(32)));
        assert!(secret.validate().is_ok());
        let bad = NodeConfig {
            pool_key: Some("nope".into()),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("pool new"));
        assert!(toml::from_str::<NodeConfig>("colour = \"blue\"").is_err());
    }
}
