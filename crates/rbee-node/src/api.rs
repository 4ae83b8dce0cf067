//! The HTTP API (axum): OpenAI-compatible `/v1/*`, Ollama's embedding routes, the job API
//! with server-sent events, `/health` and `/metrics`. Every handler talks to the actors
//! through their handles.

mod dashboard;
mod embeddings;
mod guard;
mod health;
mod hub;
mod jobs;
mod ollama;
mod openai;
pub mod output;
mod presets;
pub(crate) mod server;
pub mod types;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use guard::HttpPolicy;

use crate::NodeContext;
use crate::error::NodeError;

/// The routes, inside the request checks of [`guard`]: `Host` and `Origin` outermost, then
/// CORS preflights (when origins are configured), then the token and the body.
pub fn router(node: Arc<NodeContext>) -> Router {
    let mut app = Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .route("/v1/pool/events", get(dashboard::pool_events))
        .route("/v1/activity", get(dashboard::activity))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/api/embed", post(embeddings::ollama_embed))
        .route("/api/embeddings", post(embeddings::ollama_embeddings))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/pull", post(ollama::pull))
        .route("/api/delete", axum::routing::delete(ollama::delete))
        .route("/api/copy", post(ollama::copy))
        .route("/api/create", post(ollama::create))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/jobs/{id}/stream", get(jobs::stream))
        .route(
            "/v1/jobs/{id}",
            axum::routing::delete(jobs::cancel).get(jobs::show),
        )
        .route("/v1/hub/search", get(hub::search))
        .route("/v1/pool", get(health::pool))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .route("/v1/tasks", get(health::tasks));
    if node.config.fault_kill_tasks {
        app = app.route("/v1/tasks/{name}/kill", post(health::kill_task));
    }
    let mut app = app
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            node.clone(),
            dashboard::record,
        ))
        .layer(middleware::from_fn_with_state(node.clone(), guard::admit));
    if let Some(cors) = node.http.cors() {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn_with_state(node.clone(), guard::gate))
        .layer(middleware::from_fn(request_id))
        .with_state(node)
}

/// Every response carries an `x-request-id`: the client's own when it sent a sane one
/// (up to 128 visible ASCII characters), else a new one, so a report can name the request.
async fn request_id(req: axum::extract::Request, next: middleware::Next) -> Response {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let given = req
        .headers()
        .get("x-request-id")
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
        })
        .cloned();
    let id = given.unwrap_or_else(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("req-{started:x}-{n}"))
            .unwrap_or(HeaderValue::from_static("req"))
    });
    let mut resp = next.run(req).await;
    resp.headers_mut().insert("x-request-id", id);
    resp
}

async fn not_found(uri: axum::http::Uri) -> Response {
    NodeError::NotFound(format!(
        "no route `{}`: see docs/API.md for the endpoints",
        uri.path()
    ))
    .into_response()
}

/// OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn error_response(e: &NodeError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(types::ErrorBody::of(e))).into_response();
    if let Some(secs) = e.retry_after()
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}
