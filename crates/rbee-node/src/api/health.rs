//! `/health` (liveness plus every model's state), `/metrics` (Prometheus text) and `/v1/tasks`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::NodeContext;
use crate::actors::worker::ModelState;
use crate::error::NodeError;
use crate::metrics::Gauges;

pub async fn health(State(ctx): State<Arc<NodeContext>>) -> Response {
    let worker = ctx.workers.status().await;
    let catalog = ctx.catalog.list().await;
    let mut models: Vec<Value> = Vec::new();
    if let Ok(records) = &catalog {
        for r in records {
            let id = r.entry.content_id.to_hex();
            // Where it is loaded (or loading, or failed): the device's state, with its name.
            let state = worker
                .as_ref()
                .ok()
                .and_then(|ws| {
                    ws.iter().find_map(|w| {
                        let (_, _, s) = w.models.iter().find(|(mid, _, _)| *mid == id)?;
                        let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
                        v["device"] = json!(w.device);
                        Some(v)
                    })
                })
                .unwrap_or_else(|| json!({"state": "on_disk"}));
            let meta = &r.manifest.metadata;
            models.push(
                json!({"name": r.entry.name, "content_id": id, "size": r.manifest.total_size(),
                "architecture": meta.architecture, "quantization": meta.quantization,
                "parameter_count": meta.parameter_count, "status": state}),
            );
        }
        // A damaged model is shown as such; it does not make the node unhealthy.
        let store = ctx.store.clone();
        if let Ok(Ok(damaged)) = tokio::task::spawn_blocking(move || store.damaged()).await {
            for d in damaged {
                models.push(
                    json!({"name": d.entry.name, "content_id": d.entry.content_id.to_hex(),
                                   "status": {"state": "damaged", "reason": d.reason}}),
                );
            }
        }
    }
    let ok = worker.is_ok() && catalog.is_ok();
    let errors: Vec<String> = [worker.as_ref().err(), catalog.as_ref().err()]
        .into_iter()
        .flatten()
        .map(|e| e.to_string())
        .collect();
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "node": ctx.name,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": ctx.started.elapsed().as_secs(),
        "devices": worker.as_ref().map(|ws| ws.iter().map(device_json).collect::<Vec<_>>()).unwrap_or_default(),
        "models": models,
        "errors": errors,
    });
    let status = if ok { 200 } else { 503 };
    (
        axum::http::StatusCode::from_u16(status).unwrap_or_default(),
        Json(body),
    )
        .into_response()
}

/// One device in `/health`: its budget, what models use, what is free, and what it holds.
fn device_json(w: &crate::actors::worker::WorkerStatus) -> Value {
    let models: Vec<&str> = w
        .models
        .iter()
        .filter(|(_, _, s)| matches!(s, ModelState::Loaded { .. } | ModelState::Loading { .. }))
        .map(|(_, name, _)| name.as_str())
        .collect();
    json!({
        "device": w.device,
        "kind": if w.device == "cpu" { "cpu" } else { "gpu" },
        "budget_bytes": w.budget_bytes,
        "used_bytes": w.used_bytes,
        "free_bytes": w.budget_bytes.saturating_sub(w.used_bytes),
        "models": models,
        "parts": w.parts,
    })
}

pub async fn metrics(State(ctx): State<Arc<NodeContext>>) -> Response {
    let mut gauges = Gauges::default();
    for w in ctx.workers.status().await.unwrap_or_default() {
        gauges
            .memory
            .push((w.device.clone(), w.used_bytes, w.budget_bytes));
        for (_, name, state) in &w.models {
            if let ModelState::Loaded { queue, live, .. } = state {
                gauges.models_loaded += 1;
                gauges.queue_depth.push((name.clone(), *queue as u64));
                gauges.live_sequences.push((name.clone(), *live as u64));
            }
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(&gauges),
    )
        .into_response()
}

/// `GET /v1/pool`: this node and every peer in its view.
pub async fn pool(State(ctx): State<Arc<NodeContext>>) -> Response {
    Json(pool_view(&ctx).await).into_response()
}

/// The body of `GET /v1/pool` (and of each `GET /v1/pool/events` event).
pub(crate) async fn pool_view(ctx: &NodeContext) -> Value {
    let status = ctx.status.lock().ok().and_then(|s| s.clone());
    let Some(net) = &ctx.net else {
        // Alone, nothing publishes (and caches) a status: make one now, with the tokens/s of
        // the latest history sample.
        let status = match crate::peer::status::Stored::read(ctx).await {
            Ok(stored) => {
                let rate = ctx.activity.latest_rate() as f32;
                crate::peer::status::local_status(ctx, rate, stored)
                    .await
                    .ok()
            }
            Err(_) => None,
        };
        return json!({
            "pool": null,
            "node": {"name": ctx.name, "peer_id": null, "listen_addrs": [], "status": status},
            "peers": [],
            "message": "this node runs alone: start it with --pool-key (make one with `rbee-node pool new`)",
        });
    };
    let listen: Vec<String> = net
        .listen_addrs()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|a| format!("{a}/p2p/{}", net.local_peer_id()))
        .collect();
    let peers: Vec<_> = net.peers().iter().map(PeerSummary::of).collect();
    json!({
        "pool": ctx.pool,
        "node": {"name": ctx.name, "peer_id": net.local_peer_id().to_string(), "listen_addrs": listen, "status": status},
        "peers": peers,
    })
}

/// The JSON shape of a peer for `GET /v1/pool` and `rbee-node peers`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerSummary {
    pub peer_id: String,
    pub name: String,
    pub api_addr: Option<String>,
    pub last_seen_ms: u64,
    pub connected: bool,
    pub rtt_ms: Option<f64>,
    pub status: rbee_proto::pool::NodeStatus,
}

impl PeerSummary {
    pub fn of(peer: &rbee_net::Peer) -> PeerSummary {
        PeerSummary {
            peer_id: peer.id.to_string(),
            name: peer.status.name.clone(),
            api_addr: peer.status.api_addr.clone(),
            last_seen_ms: peer.last_seen.elapsed().as_millis() as u64,
            connected: peer.connected,
            rtt_ms: peer.rtt.map(|d| d.as_secs_f64() * 1000.0),
            status: peer.status.clone(),
        }
    }
}

/// `GET /v1/tasks`: the supervised tasks running now and how often each was restarted.
pub async fn tasks(State(ctx): State<Arc<NodeContext>>) -> Response {
    let data: Vec<_> = ctx
        .tasks
        .list()
        .into_iter()
        .map(|(name, restarts)| json!({"name": name, "restarts": restarts}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `POST /v1/tasks/{name}/kill` (only with `fault_kill_tasks`): makes the named tasks panic.
pub async fn kill_task(
    State(ctx): State<Arc<NodeContext>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let killed = ctx.tasks.kill(&name);
    if killed.is_empty() {
        return NodeError::NotFound(format!(
            "no running task `{name}` (GET /v1/tasks lists them)"
        ))
        .into_response();
    }
    tracing::warn!(?killed, "fault injection: killing tasks");
    Json(json!({"killed": killed})).into_response()
}
