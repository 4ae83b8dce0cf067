//! `rbee-node join`, `status` and `config show`, and the client side of talking to a running
//! node (used by `infer` when a node is up).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rbee_node::NodeConfig;
use rbee_node::api_types::{ErrorBody, StreamChunk, StreamEvent};
use rbee_node::config::parse_bytes;
use serde::de::DeserializeOwned;

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// API address (default 127.0.0.1:7835; anything but loopback needs --api-token).
    #[arg(long)]
    api_addr: Option<SocketAddr>,
    /// Bearer token clients must send (visible in `ps`: prefer --api-token-file or
    /// RBEE_API_TOKEN).
    #[arg(long)]
    api_token: Option<String>,
    /// Read the bearer token from this file's first line.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Also answer requests whose Host header is this name (repeatable; `*` for any). Loopback
    /// names, the API's own addresses and, off loopback, this machine's host name are allowed.
    #[arg(long)]
    allowed_host: Vec<String>,
    /// Let browser pages from this origin call the API (CORS; repeatable; e.g.
    /// http://localhost:3000). Off by default.
    #[arg(long)]
    cors_origin: Vec<String>,
    /// HTTP connections served at once (default 256).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Seconds SIGTERM waits for in-flight requests before ending them (default 30).
    #[arg(long)]
    drain_secs: Option<u64>,
    /// Memory for models on this node, e.g. 8GiB (default: 70% of RAM).
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Devices to offer, comma-separated: cpu, cuda:N, metal:N, or sim:N=SIZE (a simulated
    /// GPU of SIZE, computed on the CPU; for trying placement and routing). Default: the CPU
    /// and every GPU this build can open.
    #[arg(long)]
    devices: Option<String>,
    /// Memory to leave free on each GPU (default 512MiB).
    #[arg(long, value_parser = parse_bytes)]
    gpu_reserve: Option<u64>,
    /// Context length models are loaded with.
    #[arg(long)]
    context_length: Option<usize>,
    /// Requests that may wait per model.
    #[arg(long)]
    queue_capacity: Option<usize>,
    /// Sequences each model generates at once, batched (default 8).
    #[arg(long)]
    max_sequences: Option<usize>,
    /// KV cache positions per model for all its sequences, live and kept for prefix reuse
    /// (default max-sequences × context-length).
    #[arg(long)]
    kv_budget_tokens: Option<usize>,
    /// Do not keep finished sequences' caches to reuse shared prompt prefixes.
    #[arg(long)]
    no_prefix_cache: bool,
    /// Load these models at start (repeatable).
    #[arg(long)]
    preload: Vec<String>,
    /// The pool's key (from `rbee-node pool new`); without one the node runs alone.
    #[arg(long, env = "RBEE_POOL_KEY", hide_env_values = true)]
    pool_key: Option<String>,
    /// Where peers connect to this node (libp2p multiaddr, default /ip4/0.0.0.0/tcp/7836).
    #[arg(long)]
    p2p_addr: Option<String>,
    /// A peer to join through when mDNS cannot see it (multiaddr; repeatable).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Do not look for peers on the LAN with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// This node's name in the pool (default: the host name).
    #[arg(long)]
    name: Option<String>,
}

/// The global HuggingFace flags.
#[derive(Debug, Default)]
pub struct HfFlags {
    pub endpoint: Option<String>,
    pub token: Option<String>,
    pub home: Option<PathBuf>,
}

/// The effective configuration: file, then `RBEE_*` (and `HF_*` for what is still unset), then
/// the global flags.
pub fn load_config(
    config: Option<&PathBuf>,
    data_dir: Option<PathBuf>,
    hf: HfFlags,
) -> Result<NodeConfig> {
    let mut c = NodeConfig::load(config.map(|p| p.as_path()))?;
    if data_dir.is_some() {
        c.data_dir = data_dir;
    }
    c.hf_endpoint = hf.endpoint.or(c.hf_endpoint);
    c.hf_token = hf.token.or(c.hf_token);
    c.hf_home = hf.home.or(c.hf_home);
    Ok(c)
}

pub fn join(mut config: NodeConfig, args: JoinArgs) -> Result<()> {
    if let Some(a) = args.api_addr {
        config.api_addr = a;
    }
    if args.api_token.is_some() {
        config.api_token = args.api_token;
    }
    if args.api_token_file.is_some() {
        config.api_token_file = args.api_token_file;
    }
    config.allowed_hosts.extend(args.allowed_host);
    config.cors_origins.extend(args.cors_origin);
    if let Some(n) = args.max_connections {
        config.max_connections = n;
    }
    if let Some(n) = args.drain_secs {
        config.drain_secs = n;
    }
    if args.memory_budget.is_some() {
        config.memory_budget = args.memory_budget;
    }
    if args.devices.is_some() {
        config.devices = args.devices.clone();
    }
    if let Some(r) = args.gpu_reserve {
        config.gpu_reserve = r;
    }
    if let Some(c) = args.context_length {
        config.context_length = c;
    }
    if let Some(q) = args.queue_capacity {
        config.queue_capacity = q;
    }
    if let Some(n) = args.max_sequences {
        config.max_sequences = n;
    }
    if args.kv_budget_tokens.is_some() {
        config.kv_budget_tokens = args.kv_budget_tokens;
    }
    if args.no_prefix_cache {
        config.prefix_cache = false;
    }
    config.preload.extend(args.preload);
    if args.pool_key.is_some() {
        config.pool_key = args.pool_key;
    }
    if let Some(a) = args.p2p_addr {
        config.p2p_addr = a;
    }
    config.bootstrap.extend(args.bootstrap);
    if args.no_mdns {
        config.mdns = false;
    }
    if args.name.is_some() {
        config.node_name = args.name;
    }
    config.resolve_secrets()?;
    config.validate()?;
    let pooled = config.pool_key.is_some();
    let data_dir = match &config.data_dir {
        Some(d) => d.clone(),
        None => rbee_store::default_data_dir()?,
    };
    let store = rbee_store::Store::open(&data_dir)
        .with_context(|| format!("opening the store at {}", data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let budget = config.cpu_budget();
        rbee_node::run(config, store, shutdown_signal(), move |addr| {
            let pool = if pooled {
                "in the pool (see `rbee-node peers`)"
            } else {
                "no pool key given: this node runs alone (`rbee-node pool new` makes one)"
            };
            // Not `eprintln!`: it panics when stderr cannot be written (a log on a full
            // disk), and a node must keep serving without its log.
            let _ = writeln!(
                std::io::stderr(),
                "rbee node listening on http://{addr} (data {}, cpu budget {}); {pool}",
                data_dir.display(),
                crate::output::bytes(budget)
            );
        })
        .await
    })?;
    let _ = writeln!(std::io::stderr(), "rbee node stopped");
    Ok(())
}

/// SIGINT or SIGTERM: stop taking requests, let running ones finish, exit 0.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

/// A client for the local node's API.
pub struct NodeClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl NodeClient {
    pub fn new(config: &NodeConfig) -> Self {
        let addr = config.api_addr;
        // A node bound to 0.0.0.0 is reached on loopback.
        let host = if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        };
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_millis(500)))
            .http_status_as_error(false)
            .build()
            .into();
        // The token the node was given in the config or environment, from a file too; an
        // unreadable file leaves none, and the node's 401 then says what to send.
        let mut secrets = config.clone();
        let token = match secrets.resolve_secrets() {
            Ok(()) => secrets.api_token,
            Err(_) => config.api_token.clone(),
        };
        NodeClient {
            base: format!("http://{host}"),
            token,
            agent,
        }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// `GET path` as JSON, or None if no node answers.
    pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let mut resp = self
            .auth(self.agent.get(&format!("{}{path}", self.base)))
            .call()
            .ok()?;
        resp.body_mut().read_json().ok()
    }

    /// `/health`, or None if no node answers.
    pub fn health(&self) -> Option<serde_json::Value> {
        self.health_checked().ok().flatten()
    }

    /// `/health`: `None` when no node answers, an error when one answers but refuses us.
    pub fn health_checked(&self) -> Result<Option<serde_json::Value>> {
        let Ok(mut resp) = self
            .auth(self.agent.get(&format!("{}/health", self.base)))
            .call()
        else {
            return Ok(None);
        };
        match resp.status().as_u16() {
            401 => bail!(
                "the node at {} wants an API token: set RBEE_API_TOKEN or RBEE_API_TOKEN_FILE (or api_token_file in the config)",
                self.base
            ),
            403 => bail!(
                "the node at {} refused the request: {}",
                self.base,
                resp.body_mut().read_to_string().unwrap_or_default()
            ),
            _ => Ok(resp.body_mut().read_json().ok()),
        }
    }

    /// Streams a completion to `out`; returns the final usage line for stderr.
    pub fn stream_completion<Req: serde::Serialize, C: StreamChunk + DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        out: &mut impl Write,
    ) -> Result<String> {
        let resp = self
            .auth(self.agent.post(&format!("{}{path}", self.base)))
            .send_json(body)
            .context("sending the request to the local node")?;
        let status = resp.status();
        let node = resp
            .headers()
            .get("x-rbee-node")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        let mut reader = std::io::BufReader::new(resp.into_body().into_reader());
        if !status.is_success() {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut reader, &mut text)?;
            let msg = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| e.error.message)
                .unwrap_or(text);
            bail!("the node answered {status}: {msg}");
        }
        let mut usage = String::new();
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                if data == "[DONE]" {
                    break;
                }
                let event: StreamEvent<C> = serde_json::from_str(data)
                    .with_context(|| format!("the node sent an unreadable event: {data}"))?;
                let chunk = match event {
                    StreamEvent::Error(e) => bail!("{}", e.error.message),
                    StreamEvent::Chunk(c) => c,
                };
                out.write_all(chunk.text().as_bytes())?;
                out.flush()?;
                if let Some(u) = chunk.usage() {
                    usage = format!(
                        "{} tokens (prompt {}) served by node {node}",
                        u.completion_tokens, u.prompt_tokens
                    );
                }
            }
            line.clear();
        }
        Ok(usage)
    }
}

impl NodeClient {
    /// Starts a job and follows its event stream to the end, showing progress; returns the
    /// job's result.
    pub fn run_job(
        &self,
        body: serde_json::Value,
        label: &'static str,
    ) -> Result<serde_json::Value> {
        self.run_job_cancellable(body, label, None)
    }

    /// Like [`run_job`](Self::run_job); when `cancel` becomes true (Ctrl-C), the job is
    /// cancelled on the node with `DELETE /v1/jobs/{id}` and its error event ends the stream.
    pub fn run_job_cancellable(
        &self,
        body: serde_json::Value,
        label: &'static str,
        cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<serde_json::Value> {
        let mut resp = self
            .auth(self.agent.post(&format!("{}/v1/jobs", self.base)))
            .send_json(body)
            .context("starting the job on the local node")?;
        let created: serde_json::Value = resp.body_mut().read_json()?;
        if let Some(msg) = created["error"]["message"].as_str() {
            bail!("{msg}");
        }
        let url = created["stream_url"]
            .as_str()
            .context("the node returned no stream_url")?;
        if let (Some(flag), Some(id)) = (cancel, created["job_id"].as_str()) {
            let delete = self.auth(
                self.agent
                    .delete(&format!("{}/v1/jobs/{id}", self.base))
                    .config()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build(),
            );
            // Watches the flag for as long as the process lives; the job ends the stream.
            std::thread::spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                match delete.call() {
                    Ok(r) if r.status().is_success() => {
                        eprintln!(
                            "cancelling the job on the node (a pull keeps its partial download)"
                        );
                    }
                    Ok(r) => {
                        eprintln!("could not cancel the job: the node answered {}", r.status())
                    }
                    Err(e) => eprintln!("could not cancel the job: {e}"),
                }
            });
        }
        let resp = self
            .auth(self.agent.get(&format!("{}{url}", self.base)))
            .call()
            .context("following the job")?;
        let (bar, mut update) = crate::output::progress_bar(label);
        let mut reader = std::io::BufReader::new(resp.into_body().into_reader());
        let mut line = String::new();
        let outcome = loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                break Err(anyhow::anyhow!("the job stream ended without a result"));
            }
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
            match v["type"].as_str() {
                Some("progress") => {
                    update(rbee_store::Progress {
                        phase: label,
                        done: v["done"].as_u64().unwrap_or(0),
                        total: v["total"].as_u64().unwrap_or(0),
                    });
                    // A pool pull names the peers it fetches from.
                    if let Some(peers) = v["peers"].as_array() {
                        let names: Vec<&str> = peers.iter().filter_map(|p| p.as_str()).collect();
                        bar.set_message(format!("{label} from {}", names.join(", ")));
                    }
                }
                Some("done") => break Ok(v["result"].clone()),
                Some("error") => {
                    break Err(anyhow::anyhow!(
                        "{}",
                        v["message"].as_str().unwrap_or("job failed")
                    ));
                }
                _ => {}
            }
        };
        bar.finish_and_clear();
        outcome
    }
}

/// The running local node's `/health`, or the error that says how to start one.
pub fn running_health(config: &NodeConfig) -> Result<serde_json::Value> {
    match NodeClient::new(config).health_checked()? {
        Some(h) => Ok(h),
        None => bail!(
            "no node answers at {}: start one with `rbee-node join`",
            config.api_addr
        ),
    }
}

pub fn status(config: &NodeConfig) -> Result<()> {
    let h = running_health(config)?;
    println!(
        "node {} ({}), up {}s, rbee {}",
        h["node"].as_str().unwrap_or("?"),
        h["status"].as_str().unwrap_or("?"),
        h["uptime_secs"],
        h["version"].as_str().unwrap_or("?")
    );
    for d in h["devices"].as_array().into_iter().flatten() {
        println!(
            "  device {}: {} of {} used",
            d["device"].as_str().unwrap_or("?"),
            crate::output::bytes(d["used_bytes"].as_u64().unwrap_or(0)),
            crate::output::bytes(d["budget_bytes"].as_u64().unwrap_or(0))
        );
        for p in d["parts"].as_array().into_iter().flatten() {
            println!(
                "    {} of {} (loaded by {})",
                crate::output::bytes(p["bytes"].as_u64().unwrap_or(0)),
                p["model"].as_str().unwrap_or("?"),
                p["held_by"].as_str().unwrap_or("?")
            );
        }
    }
    for m in h["models"].as_array().into_iter().flatten() {
        let s = &m["status"];
        let state = s["state"].as_str().unwrap_or("?");
        let detail = if state == "loaded" {
            format!(
                ", {} of {} sequences live, {} queued, on {}",
                s["live"],
                s["max_live"],
                s["queue"],
                s["runtime"].as_str().unwrap_or("?")
            )
        } else {
            String::new()
        };
        println!(
            "  model {:<32} {state}{detail}",
            m["name"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}

pub fn show_config(config: &NodeConfig) {
    print!("{}", config.to_toml());
    println!("# cpu budget in effect: {} bytes", config.cpu_budget());
}

/// `rbee-node pool new`: a fresh pool key on stdout, how to use it on stderr.
pub fn pool_new() -> Result<()> {
    let key = rbee_net::PoolKey::generate()?;
    println!("{key}");
    eprintln!(
        "pool {}: start every node with `rbee-node join --pool-key <key>` (or RBEE_POOL_KEY); keep the key secret",
        key.fingerprint()
    );
    Ok(())
}

/// `rbee-node peers`: the running node's pool view.
pub fn peers(config: &NodeConfig) -> Result<()> {
    let client = NodeClient::new(config);
    let Some(v) = client.get_json("/v1/pool") else {
        bail!(
            "no node answers at {}: start one with `rbee-node join`",
            config.api_addr
        );
    };
    if let Some(msg) = v["error"]["message"].as_str() {
        bail!("{msg}");
    }
    let Some(pool) = v["pool"].as_str() else {
        println!(
            "{}",
            v["message"].as_str().unwrap_or("this node runs alone")
        );
        return Ok(());
    };
    let node = &v["node"];
    println!(
        "pool {pool}: this node {} ({})",
        node["name"].as_str().unwrap_or("?"),
        node["peer_id"].as_str().unwrap_or("?")
    );
    for a in node["listen_addrs"].as_array().into_iter().flatten() {
        println!("  reachable at {}", a.as_str().unwrap_or("?"));
    }
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        println!("no peers yet (same LAN with mDNS, or pass --bootstrap <address of a peer>)");
    }
    for p in peers {
        let st = &p["status"];
        // Every device with its free memory: `cpu 12 GB free, cuda:0 7.5 GB free`.
        let devices: Vec<String> = st["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let free = d["budget_bytes"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(d["used_bytes"].as_u64().unwrap_or(0));
                format!(
                    "{} {} free",
                    d["name"].as_str().unwrap_or("?"),
                    crate::output::bytes(free)
                )
            })
            .collect();
        let loaded = st["loaded"].as_array().map_or(0, Vec::len);
        let disk = st["on_disk"].as_array().map_or(0, Vec::len);
        let rtt = p["rtt_ms"]
            .as_f64()
            .map_or_else(|| "-".to_string(), |r| format!("{r:.1} ms"));
        println!(
            "{:<20} {:<54} {}  models {disk} ({loaded} loaded)  rtt {rtt}  seen {} ms ago",
            p["name"].as_str().unwrap_or("?"),
            p["peer_id"].as_str().unwrap_or("?"),
            devices.join(", "),
            p["last_seen_ms"]
        );
    }
    Ok(())
}
