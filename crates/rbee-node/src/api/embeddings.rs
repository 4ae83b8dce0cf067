//! The embedding endpoints: OpenAI's `POST /v1/embeddings`, and Ollama's `POST /api/embed`
//! and older `POST /api/embeddings` (with Ollama's error shape). Each parses its body into a
//! [`serve::EmbedTask`], refusing by name what it does not implement, and writes the vectors
//! the model (here or on a peer) made.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rbee_proto::embed::MAX_INPUTS;
use rbee_proto::generation::Prompt;
use serde_json::Value;

use super::types::{
    EmbeddingData, EmbeddingList, EmbeddingRequest, EmbeddingUsage, EmbeddingValue,
    OllamaEmbedRequest, OllamaEmbedResponse, OllamaEmbeddingsRequest, OllamaEmbeddingsResponse,
    OllamaError, OllamaInput, PromptInput,
};
use crate::NodeContext;
use crate::error::NodeError;
use crate::serve::{self, EmbedTask, Embedded};

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, NodeError> {
    parsed
        .map(|Json(v)| v)
        .map_err(|e| NodeError::BadRequest(format!("invalid request body: {}", e.body_text())))
}

fn with_node(mut resp: Response, node: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(node) {
        resp.headers_mut().insert("x-rbee-node", v);
    }
    resp
}

/// 1 to [`MAX_INPUTS`] inputs.
fn check_count(n: usize, field: &str) -> Result<(), NodeError> {
    if n == 0 || n > MAX_INPUTS {
        return Err(NodeError::BadRequest(format!(
            "`{field}` has {n} inputs; send 1 to {MAX_INPUTS}"
        )));
    }
    Ok(())
}

/// `dimensions` as the wire carries it: a positive count.
fn dimensions(d: Option<i64>) -> Result<Option<u32>, NodeError> {
    d.map(|d| {
        u32::try_from(d).ok().filter(|&d| d > 0).ok_or_else(|| {
            NodeError::BadRequest(format!(
                "`dimensions` {d}: give a positive number of values"
            ))
        })
    })
    .transpose()
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Float,
    Base64,
}

/// What an OpenAI request asks for.
fn openai_task(req: EmbeddingRequest) -> Result<(String, EmbedTask, Format), NodeError> {
    let format = match req.encoding_format.as_deref() {
        None | Some("float") => Format::Float,
        Some("base64") => Format::Base64,
        Some(other) => {
            return Err(NodeError::BadRequest(format!(
                "`encoding_format` {other:?}: use \"float\" or \"base64\""
            )));
        }
    };
    let inputs: Vec<Prompt> = match req.input {
        PromptInput::One(text) => vec![Prompt::Text(text)],
        PromptInput::Many(texts) => texts.into_iter().map(Prompt::Text).collect(),
        PromptInput::Tokens(ids) => vec![Prompt::Tokens(ids)],
        PromptInput::ManyTokens(lists) => lists.into_iter().map(Prompt::Tokens).collect(),
    };
    check_count(inputs.len(), "input")?;
    let task = EmbedTask {
        inputs,
        // OpenAI refuses an input over the model's limit rather than cutting it.
        truncate: false,
        dimensions: dimensions(req.dimensions)?,
    };
    Ok((req.model, task, format))
}

/// `POST /v1/embeddings`.
pub async fn openai(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<EmbeddingRequest>, JsonRejection>,
) -> Response {
    let (model, task, format) = match body(req).and_then(openai_task) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    let embedded = match serve::embed(&ctx, &model, task).await {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let node = embedded.node.clone();
    let usage = EmbeddingUsage {
        prompt_tokens: embedded.prompt_tokens,
        total_tokens: embedded.prompt_tokens,
    };
    let data = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding".into(),
            index,
            embedding: match format {
                Format::Float => EmbeddingValue::Float(v),
                Format::Base64 => EmbeddingValue::Base64(base64_f32(&v)),
            },
        })
        .collect();
    let list = EmbeddingList {
        object: "list".into(),
        data,
        model: embedded.model,
        usage,
    };
    with_node(Json(list).into_response(), &node)
}

/// The little-endian bytes of `v`, in standard base64 (what OpenAI's `base64` format is).
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Ollama's error shape, with the status (and `Retry-After`) the error has everywhere.
pub(super) fn ollama_error(e: &NodeError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        Json(OllamaError {
            error: e.to_string(),
        }),
    )
        .into_response();
    if let Some(secs) = e.retry_after()
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Ollama's `options` and `keep_alive`: no model option applies to an embedding here, so any
/// given is refused by name; `keep_alive` is accepted when well-formed (a duration string such
/// as "5m", or seconds) and does not change how long rbee keeps the model.
fn check_ollama_extras(
    options: Option<&serde_json::Map<String, Value>>,
    keep_alive: Option<&Value>,
) -> Result<(), NodeError> {
    if let Some((key, _)) = options.and_then(|o| o.iter().find(|(_, v)| !v.is_null())) {
        return Err(NodeError::BadRequest(format!(
            "`options.{key}` is not supported for embeddings by this node; remove it (the model's own settings apply)"
        )));
    }
    match keep_alive {
        None | Some(Value::Null | Value::Number(_) | Value::String(_)) => Ok(()),
        Some(other) => Err(NodeError::BadRequest(format!(
            "`keep_alive` {other}: give a duration such as \"5m\" or a number of seconds"
        ))),
    }
}

/// Runs a parsed Ollama embedding request: the vectors, and the nanoseconds it took.
async fn ollama_run(
    ctx: &NodeContext,
    parsed: Result<(String, EmbedTask), NodeError>,
) -> Result<(Embedded, u64), NodeError> {
    let (model, task) = parsed?;
    let started = Instant::now();
    let embedded = serve::embed(ctx, &model, task).await?;
    Ok((embedded, started.elapsed().as_nanos() as u64))
}

/// `POST /api/embed`.
pub async fn ollama_embed(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<OllamaEmbedRequest>, JsonRejection>,
) -> Response {
    let parsed = body(req).and_then(|req| {
        check_ollama_extras(req.options.as_ref(), req.keep_alive.as_ref())?;
        let inputs: Vec<Prompt> = match req.input {
            OllamaInput::One(text) => vec![Prompt::Text(text)],
            OllamaInput::Many(texts) => texts.into_iter().map(Prompt::Text).collect(),
        };
        check_count(inputs.len(), "input")?;
        let task = EmbedTask {
            inputs,
            truncate: req.truncate.unwrap_or(true),
            dimensions: dimensions(req.dimensions)?,
        };
        Ok((req.model, task))
    });
    match ollama_run(&ctx, parsed).await {
        Ok((embedded, nanos)) => {
            let node = embedded.node.clone();
            let resp = OllamaEmbedResponse {
                model: embedded.model,
                embeddings: embedded.vectors,
                total_duration: nanos,
                load_duration: 0,
                prompt_eval_count: embedded.prompt_tokens,
            };
            with_node(Json(resp).into_response(), &node)
        }
        Err(e) => ollama_error(&e),
    }
}

/// `POST /api/embeddings` (Ollama's older endpoint): one `prompt`, one `embedding`.
pub async fn ollama_embeddings(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<OllamaEmbeddingsRequest>, JsonRejection>,
) -> Response {
    let parsed = body(req).and_then(|req| {
        check_ollama_extras(req.options.as_ref(), req.keep_alive.as_ref())?;
        let task = EmbedTask {
            inputs: vec![Prompt::Text(req.prompt)],
            truncate: true,
            dimensions: None,
        };
        Ok((req.model, task))
    });
    match ollama_run(&ctx, parsed).await {
        Ok((mut embedded, _)) => {
            let node = embedded.node.clone();
            let embedding = embedded.vectors.pop().unwrap_or_default();
            with_node(
                Json(OllamaEmbeddingsResponse { embedding }).into_response(),
                &node,
            )
        }
        Err(e) => ollama_error(&e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(v: Value) -> Result<(String, EmbedTask, Format), NodeError> {
        serde_json::from_value::<EmbeddingRequest>(v)
            .map_err(|e| NodeError::BadRequest(e.to_string()))
            .and_then(openai_task)
    }

    #[test]
    fn every_input_shape_is_one_vector_each() {
        let shapes = [
            (serde_json::json!("one"), 1),
            (serde_json::json!(["a", "b", "c"]), 3),
            (serde_json::json!([101, 7592, 102]), 1),
            (serde_json::json!([[101, 102], [101, 7, 102]]), 2),
        ];
        for (input, n) in shapes {
            let (_, task, format) =
                parse(serde_json::json!({"model": "m", "input": input})).unwrap();
            assert_eq!(task.inputs.len(), n, "{input}");
            assert!(format == Format::Float && !task.truncate);
        }
        let (_, task, format) = parse(serde_json::json!({"model": "m", "input": "x",
            "encoding_format": "base64", "dimensions": 64, "user": "u-1"}))
        .unwrap();
        assert!(format == Format::Base64);
        assert_eq!(task.dimensions, Some(64));
    }

    #[test]
    fn what_is_not_implemented_or_wrong_is_refused_by_name() {
        for (body, field) in [
            (
                serde_json::json!({"model": "m", "input": "x", "encoding_format": "int8"}),
                "encoding_format",
            ),
            (
                serde_json::json!({"model": "m", "input": "x", "dimensions": -3}),
                "dimensions",
            ),
            (serde_json::json!({"model": "m", "input": []}), "input"),
            (
                serde_json::json!({"model": "m", "input": "x", "normalize": false}),
                "normalize",
            ),
        ] {
            let msg = parse(body.clone()).err().unwrap().to_string();
            assert!(msg.contains(field), "{body}: {msg}");
        }
        let msg = check_ollama_extras(
            Some(serde_json::json!({"num_ctx": 8192}).as_object().unwrap()),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("options.num_ctx"), "{msg}");
        assert!(check_ollama_extras(None, Some(&serde_json::json!("5m"))).is_ok());
        assert!(check_ollama_extras(None, Some(&serde_json::json!(-1))).is_ok());
        assert!(check_ollama_extras(None, Some(&serde_json::json!([1]))).is_err());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 = 00 00 80 3f; -2.0f32 = 00 00 00 c0.
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
    }
}
