//! rbee-node: a node's actors, router and HTTP API. The only crate that knows ractor and axum.
//!
//! [`run`] starts the supervision tree (see [`actors::supervisor`]) and serves the API until
//! the shutdown future resolves; in-flight requests finish before it returns.

pub mod activity;
pub mod actors;
mod api;
pub mod config;
pub mod devices;
pub mod error;
pub mod gotemplate;
pub mod jobs;
pub mod metrics;
pub mod peer;
pub mod preset;
pub mod pull;
pub mod route;
pub mod serve;
pub mod tasks;
pub mod units;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_infer::engine::{CandleBackend, LoadOptions};
use rbee_store::Store;

use crate::actors::Handle;
use crate::actors::catalog::CatalogHandle;
use crate::actors::provisioner::ProvisionerHandle;
use crate::actors::router::RouterHandle;
use crate::actors::supervisor::{NodeSupervisor, SupervisorArgs};
use crate::actors::worker::{WorkerArgs, WorkerHandle};
use crate::actors::workers::{DeviceWorker, Workers};
pub use crate::api::output as api_output;
pub use crate::api::types as api_types;
pub use crate::config::NodeConfig;
pub use crate::error::NodeError;

/// What every request handler can reach.
#[derive(Debug)]
pub struct NodeContext {
    pub name: String,
    /// The model store (the catalog actor owns catalog changes; sharing reads it).
    pub store: Store,
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    /// The pool network; `None` when the node runs alone (no pool key).
    pub net: Option<rbee_net::Client>,
    /// The pool's public fingerprint, when in a pool.
    pub pool: Option<String>,
    /// This node's latest status as published to the pool.
    pub status: peer::status::StatusCache,
    pub config: NodeConfig,
    pub catalog: CatalogHandle,
    pub router: RouterHandle,
    /// One worker per device this node offers (`--devices`), and placement across them.
    pub workers: Workers,
    pub provisioner: ProvisionerHandle,
    pub jobs: jobs::Jobs,
    pub metrics: Arc<metrics::Metrics>,
    pub started: Instant,
    /// The HuggingFace client (None: no HF cache dir could be found, so no pulls or search).
    pub hub: Option<rbee_hub::Hub>,
    /// The supervised tasks (peer servers, status publisher, pulls), by name.
    pub tasks: Arc<tasks::Tasks>,
    /// What the HTTP API answers (hosts, origins, token, body deadline).
    pub http: api::HttpPolicy,
    /// Set when the shutdown drain is over: streams still running end with an error event.
    pub halt: tokio::sync::watch::Sender<bool>,
    /// What each model can do (generate, embed), from its headers.
    pub kinds: serve::ModelKinds,
    /// Recent requests, errors and the tokens/s and memory history (the dashboard's).
    pub activity: activity::Activity,
}

impl NodeContext {
    /// Resolves once the shutdown drain is over (never, while the node serves).
    pub async fn halted(&self) {
        let mut rx = self.halt.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn node_name() -> String {
    Some(host_name())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rbee-node".into())
}

/// Joins the pool when a key is configured: the identity lives in the data dir, so the
/// node keeps its peer id across restarts.
async fn start_network(
    config: &NodeConfig,
    data_dir: &std::path::Path,
) -> Result<Option<(rbee_net::Client, String)>, NodeError> {
    let Some(key) = &config.pool_key else {
        tracing::info!("no pool key: this node runs alone (`rbee-node pool new` makes one)");
        return Ok(None);
    };
    let bad = |e: String| NodeError::BadRequest(e);
    let pool_key: rbee_net::PoolKey = key
        .parse()
        .map_err(|e: rbee_net::NetError| bad(e.to_string()))?;
    let keypair = rbee_net::load_or_create_identity(&data_dir.join("node.key"))
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    let mut net_config = rbee_net::NetConfig::new(keypair, pool_key);
    net_config.listen = vec![
        config
            .p2p_addr
            .parse()
            .map_err(|e| bad(format!("p2p_addr: {e}")))?,
    ];
    net_config.bootstrap = config
        .bootstrap
        .iter()
        .map(|a| a.parse().map_err(|e| bad(format!("bootstrap `{a}`: {e}"))))
        .collect::<Result<_, _>>()?;
    net_config.mdns = config.mdns;
    net_config.status_interval = Duration::from_millis(config.status_interval_ms);
    let (client, mut events) = rbee_net::spawn(net_config)
        .map_err(|e| NodeError::Unavailable(format!("pool network: {e}")))?;
    // Peers joining and leaving are logged by the network task; drain the events here.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let fingerprint = pool_key.fingerprint();
    tracing::info!(pool = %fingerprint, peer_id = %client.local_peer_id(), "joined the pool network");
    Ok(Some((client, fingerprint)))
}

/// Runs a node until `shutdown` resolves. `on_ready` gets the bound API address.
pub async fn run(
    mut config: NodeConfig,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr) + Send,
) -> Result<(), NodeError> {
    config
        .resolve_secrets()
        .and_then(|()| config.validate())
        .map_err(|e| NodeError::BadRequest(e.to_string()))?;
    // One node per data dir, held until this returns; taken before the port, so that a
    // second node on the same dir is told which process has it.
    let mut node_lock = store.lock_node()?;
    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|e| {
            NodeError::Unavailable(format!(
                "cannot listen on {}: {e} (another node running? pass --api-addr)",
                config.api_addr
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    if let Err(e) = node_lock.record_api_addr(&addr.to_string()) {
        tracing::warn!(
            "could not record the API address in {}: {e}",
            node_lock.path().display()
        );
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let tasks = Arc::new(tasks::Tasks::new(metrics.clone()));
    let hub = match config.hub_config().map(rbee_hub::Hub::new) {
        Some(Ok(hub)) => Some(hub),
        Some(Err(e)) => return Err(NodeError::BadRequest(e.to_string())),
        None => {
            tracing::warn!(
                "no HuggingFace cache dir (set HF_HOME or --hf-home): pulls and search are off"
            );
            None
        }
    };
    let name = config.node_name.clone().unwrap_or_else(node_name);
    let (net, pool) = match start_network(&config, store.root()).await? {
        Some((client, fingerprint)) => (Some(client), Some(fingerprint)),
        None => (None, None),
    };
    let backend: Arc<dyn rbee_infer::engine::Backend> = Arc::new(CandleBackend);
    let base_load = LoadOptions {
        context_length: Some(config.context_length),
        queue_capacity: config.queue_capacity,
        max_sequences: config.max_sequences,
        kv_budget_tokens: config.kv_budget_tokens,
        prefix_reuse: config.prefix_cache,
        ..Default::default()
    };
    let asked = config.device_specs().map_err(NodeError::BadRequest)?;
    let offered = devices::offer(
        asked.as_deref(),
        config.cpu_budget(),
        config.gpu_reserve,
        &base_load,
    );
    if offered.is_empty() {
        return Err(NodeError::BadRequest(
            "none of the devices asked for (--devices) can be used: see the warnings above".into(),
        ));
    }
    // One memory ledger per device, which every worker sees: a model split across devices
    // charges its parts to theirs. The host's memory is the CPU worker's budget; without a CPU
    // worker, GPU workers have no host memory to split models with.
    let ledgers: Vec<_> = offered
        .iter()
        .map(|o| actors::worker::DeviceMemory::new(o.budget))
        .collect();
    let host = offered.iter().position(|o| !o.is_gpu).map_or_else(
        || actors::worker::DeviceMemory::new(0),
        |i| ledgers[i].clone(),
    );
    let gpus: Vec<(usize, actors::worker::OtherGpu)> = offered
        .iter()
        .zip(&ledgers)
        .enumerate()
        .filter(|(_, (o, _))| o.is_gpu)
        .map(|(i, (o, memory))| {
            (
                i,
                actors::worker::OtherGpu {
                    name: o.name.clone(),
                    runtime_name: o.load.device_name.clone().unwrap_or_else(|| o.name.clone()),
                    device: o.load.device.clone(),
                    memory: memory.clone(),
                },
            )
        })
        .collect();
    let gpu_layers = Arc::new(config.gpu_layers.clone());
    let ctx = Arc::new(NodeContext {
        kinds: serve::ModelKinds::new(backend.clone()),
        name,
        store: store.clone(),
        api_addr: addr,
        net: net.clone(),
        pool,
        status: Default::default(),
        catalog: Handle::empty("the catalog"),
        router: Handle::empty("the router"),
        workers: Workers::new(
            offered
                .iter()
                .map(|o| DeviceWorker {
                    device: o.name.clone(),
                    is_gpu: o.is_gpu,
                    // Named once per device for the node's life.
                    handle: WorkerHandle::empty(Box::leak(
                        format!("the {} worker", o.name).into_boxed_str(),
                    )),
                })
                .collect(),
        ),
        provisioner: Handle::empty("the provisioner"),
        jobs: jobs::Jobs::default(),
        tasks: tasks.clone(),
        metrics: metrics.clone(),
        started: Instant::now(),
        hub,
        http: api::HttpPolicy::new(&config, addr, &host_name()),
        halt: tokio::sync::watch::channel(false).0,
        activity: Default::default(),
        config,
    });
    let sources = pull::Sources {
        store: store.clone(),
        pool: ctx.net.clone().map(|net| pull::pool::Pool {
            net,
            store: store.clone(),
            router: ctx.router.clone(),
            pulls: Arc::default(),
        }),
        hub: ctx.hub.clone(),
    };
    let args = SupervisorArgs {
        store: store.clone(),
        provisioning: actors::provisioner::ProvisionerArgs {
            sources,
            tasks: tasks.clone(),
        },
        worker: offered
            .into_iter()
            .zip(ledgers)
            .enumerate()
            .map(|(i, (o, memory))| WorkerArgs {
                other_gpus: if o.is_gpu {
                    gpus.iter()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, g)| g.clone())
                        .collect()
                } else {
                    Vec::new()
                },
                device: o.name,
                budget: o.budget,
                backend: backend.clone(),
                load: o.load,
                metrics: metrics.clone(),
                store: Some(store.clone()),
                memory,
                host: host.clone(),
                is_gpu: o.is_gpu,
                gpu_layers: gpu_layers.clone(),
            })
            .collect(),
        catalog: ctx.catalog.clone(),
        provisioner: ctx.provisioner.clone(),
        workers: ctx.workers.clone(),
        router: ctx.router.clone(),
        node: ctx.name.clone(),
        net: net.clone(),
        status: ctx.status.clone(),
    };
    let (supervisor, supervisor_done) = ractor::Actor::spawn(None, NodeSupervisor, args)
        .await
        .map_err(|e| NodeError::Internal(format!("cannot start the node's actors: {e}")))?;

    for model in ctx.config.preload.clone() {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let result = async {
                let resolved = ctx.catalog.resolve(model.parse()?).await?;
                ctx.workers
                    .acquire(resolved, Duration::from_secs(3600))
                    .await
            }
            .await;
            match result {
                Ok(m) => tracing::info!(model, secs = m.info().load_secs, "preloaded"),
                Err(e) => tracing::error!(model, "preload failed: {e}"),
            }
        });
    }

    let mut background = Vec::new();
    let (c, t) = (ctx.clone(), tasks.clone());
    background.push(tokio::spawn(async move {
        let _ = t
            .supervise("activity sampler", None, move || {
                activity::sample_history(c.clone())
            })
            .await;
    }));
    if let Some(net) = net {
        // Each restarted after a panic (tasks.rs); aborted at shutdown.
        let (c, n, t) = (ctx.clone(), net.clone(), tasks.clone());
        background.push(tokio::spawn(async move {
            let _ = t
                .supervise("status publisher", None, move || {
                    peer::status::publish_status(c.clone(), n.clone())
                })
                .await;
        }));
        let (c, n, t) = (ctx.clone(), net.clone(), tasks.clone());
        background.push(tokio::spawn(async move {
            let _ = t
                .supervise("shard server", None, move || {
                    peer::shards::serve_shards(c.clone(), n.clone())
                })
                .await;
        }));
        let (c, n, t) = (ctx.clone(), net.clone(), tasks.clone());
        background.push(tokio::spawn(async move {
            let _ = t
                .supervise("infer server", None, move || {
                    peer::infer::serve_infer(c.clone(), n.clone())
                })
                .await;
        }));
        let (c, n, t) = (ctx.clone(), net, tasks.clone());
        background.push(tokio::spawn(async move {
            let _ = t
                .supervise("embed server", None, move || {
                    peer::embed::serve_embed(c.clone(), n.clone())
                })
                .await;
        }));
    }

    tracing::info!(%addr, node = %ctx.name, "API listening");
    on_ready(addr);
    api::server::serve(listener, api::router(ctx.clone()), ctx.clone(), shutdown).await;
    for task in background {
        task.abort();
    }
    supervisor.stop(None);
    let _ = supervisor_done.await;
    drop(node_lock);
    Ok(())
}
