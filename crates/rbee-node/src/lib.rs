//! rbee-node: a node's actors, router and HTTP API. The only crate that knows ractor and axum.
//!
//! [`run`] starts the supervision tree (see [`actors::supervisor`]) and serves the API until
//! the shutdown future resolves; in-flight requests finish before it returns.

pub mod actors;
mod api;
pub mod config;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod pull;

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
pub use crate::config::NodeConfig;
pub use crate::error::NodeError;

/// What every request handler can reach.
#[derive(Debug)]
pub struct NodeContext {
    pub name: String,
    pub config: NodeConfig,
    pub catalog: CatalogHandle,
    pub router: RouterHandle,
    pub worker: WorkerHandle,
    pub provisioner: ProvisionerHandle,
    pub jobs: jobs::Jobs,
    pub metrics: Arc<metrics::Metrics>,
    pub started: Instant,
    /// The HuggingFace client (None: no HF cache dir could be found, so no pulls or search).
    pub hub: Option<rbee_hub::Hub>,
}

fn node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rbee-node".into())
}

/// Runs a node until `shutdown` resolves. `on_ready` gets the bound API address.
pub async fn run(
    config: NodeConfig,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr) + Send,
) -> Result<(), NodeError> {
    config
        .validate()
        .map_err(|e| NodeError::BadRequest(e.to_string()))?;
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
    let metrics = Arc::new(metrics::Metrics::default());
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
    let ctx = Arc::new(NodeContext {
        name: node_name(),
        catalog: Handle::empty("the catalog"),
        router: Handle::empty("the router"),
        worker: Handle::empty("the cpu worker"),
        provisioner: Handle::empty("the provisioner"),
        jobs: jobs::Jobs::default(),
        metrics: metrics.clone(),
        started: Instant::now(),
        hub,
        config,
    });
    let args = SupervisorArgs {
        store,
        worker: WorkerArgs {
            device: "cpu".into(),
            budget: ctx.config.cpu_budget(),
            backend: Arc::new(CandleBackend),
            load: LoadOptions {
                context_length: Some(ctx.config.context_length),
                queue_capacity: ctx.config.queue_capacity,
                ..Default::default()
            },
            metrics,
        },
        catalog: ctx.catalog.clone(),
        provisioner: ctx.provisioner.clone(),
        worker_handle: ctx.worker.clone(),
        router: ctx.router.clone(),
        node: ctx.name.clone(),
    };
    let (supervisor, supervisor_done) = ractor::Actor::spawn(None, NodeSupervisor, args)
        .await
        .map_err(|e| NodeError::Internal(format!("cannot start the node's actors: {e}")))?;

    for model in ctx.config.preload.clone() {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let result = async {
                let route = ctx.router.route(model.parse()?).await?;
                route
                    .worker
                    .acquire(route.model, Duration::from_secs(3600))
                    .await
            }
            .await;
            match result {
                Ok(m) => tracing::info!(model, secs = m.info().load_secs, "preloaded"),
                Err(e) => tracing::error!(model, "preload failed: {e}"),
            }
        });
    }

    tracing::info!(%addr, node = %ctx.name, "API listening");
    on_ready(addr);
    let served = axum::serve(listener, api::router(ctx.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    supervisor.stop(None);
    let _ = supervisor_done.await;
    served.map_err(|e| NodeError::Internal(format!("HTTP server failed: {e}")))
}
