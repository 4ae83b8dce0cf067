//! `GET /v1/hub/search`: the HuggingFace model search, through this node's hub settings.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::NodeContext;
use crate::error::NodeError;

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    q: String,
    #[serde(default)]
    gguf: bool,
    limit: Option<usize>,
}

pub async fn search(
    State(ctx): State<Arc<NodeContext>>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => {
            return NodeError::BadRequest(format!(
                "{}: use ?q=<text>[&gguf=true][&limit=N]",
                e.body_text()
            ))
            .into_response();
        }
    };
    let Some(hub) = ctx.hub.clone() else {
        return NodeError::Unavailable(
            "this node has no HuggingFace cache dir: start it with HF_HOME or --hf-home set".into(),
        )
        .into_response();
    };
    let limit = query.limit.unwrap_or(20);
    let found = tokio::task::spawn_blocking(move || hub.search(&query.q, query.gguf, limit)).await;
    match found {
        Ok(Ok(hits)) => Json(json!({"object": "list", "data": hits})).into_response(),
        Ok(Err(e)) => NodeError::from(e).into_response(),
        Err(e) => NodeError::Internal(format!("search task failed: {e}")).into_response(),
    }
}
