//! The HTTP API (axum): OpenAI-compatible `/v1/*`, the job API with server-sent events,
//! `/health` and `/metrics`. Every handler talks to the actors through their handles.

pub(crate) mod generate;
mod guard;
mod health;
mod hub;
mod jobs;
mod openai;
pub(crate) mod server;

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
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
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
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(node.clone(), guard::admit));
    if let Some(cors) = node.http.cors() {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn_with_state(node.clone(), guard::gate))
        .with_state(node)
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
    let body = serde_json::json!({
        "error": {
            "message": e.to_string(),
            "type": e.error_type(),
            "param": null,
            "code": e.status(),
        }
    });
    let mut resp = (status, axum::Json(body)).into_response();
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
