//! The HTTP API (axum): OpenAI-compatible `/v1/*`, the job API with server-sent events,
//! `/health` and `/metrics`. Every handler talks to the actors through their handles.

pub(crate) mod generate;
mod health;
mod hub;
mod jobs;
mod openai;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::NodeContext;
use crate::error::NodeError;

/// Request bodies larger than this are refused before parsing (a long chat is far smaller).
const MAX_BODY: usize = 4 << 20;

pub fn router(node: Arc<NodeContext>) -> Router {
    Router::new()
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
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(node.clone(), guard))
        .with_state(node)
}

/// Checks the bearer token (when one is configured) and counts every request.
async fn guard(State(node): State<Arc<NodeContext>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let response = match &node.config.api_token {
        Some(token) if !authorized(&req, token) => error_response(&NodeError::Unauthorized),
        _ => next.run(req).await,
    };
    node.metrics.request(&endpoint, response.status().as_u16());
    response
}

fn authorized(req: &Request, token: &str) -> bool {
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ") else {
        return false;
    };
    // Constant-time comparison: the token is a secret.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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
