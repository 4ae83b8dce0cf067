//! OpenAI-compatible endpoints: chat completions, completions (streaming and not), models.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::{GenerationStats, Prompt};
use rbee_infer::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::generate::{self, Chunk, Started};
use crate::NodeContext;
use crate::error::NodeError;

/// Completion tokens when the request names no `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields both endpoints share (OpenAI's, plus llama.cpp's common extras).
#[derive(Debug, Default, Deserialize)]
struct Sampling {
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<usize>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

impl Sampling {
    fn params(&self) -> Result<SamplingParams, NodeError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(NodeError::BadRequest("only n = 1 is supported".into()));
        }
        let d = SamplingParams::default();
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.or(d.top_k),
            top_p: self.top_p.or(d.top_p),
            min_p: self.min_p.or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            seed: self.seed,
            max_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .unwrap_or(DEFAULT_MAX_TOKENS),
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            ..d
        };
        params.validate().map_err(NodeError::BadRequest)?;
        Ok(params)
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    model: String,
    prompt: String,
    #[serde(flatten)]
    sampling: Sampling,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{nanos:x}")
}

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, NodeError> {
    parsed
        .map(|Json(v)| v)
        .map_err(|e| NodeError::BadRequest(format!("invalid request body: {}", e.body_text())))
}

fn messages(input: Vec<InMessage>) -> Result<Vec<ChatMessage>, NodeError> {
    if input.is_empty() {
        return Err(NodeError::BadRequest("`messages` is empty".into()));
    }
    input
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for p in parts {
                        // Anything but text (images, audio, files) would be dropped unseen:
                        // refuse it by name instead of answering about half the message.
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => texts.push(t),
                            ("text", None) => {
                                return Err(NodeError::BadRequest(format!(
                                    "`messages[{i}]`: a `text` content part has no `text`"
                                )));
                            }
                            (kind, _) => {
                                return Err(NodeError::BadRequest(format!(
                                    "`messages[{i}]`: content parts of type `{kind}` are not supported (this node serves text models); send only `text` parts"
                                )));
                            }
                        }
                    }
                    texts.join("\n")
                }
            };
            Ok(ChatMessage::new(m.role, content))
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

pub async fn chat_completions(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let result = async {
        let req = body(req)?;
        let params = req.sampling.params()?;
        let prompt = Prompt::Chat(messages(req.messages)?);
        let started = generate::start(&ctx, &req.model, prompt, params).await?;
        Ok::<_, NodeError>(
            respond(
                ctx.clone(),
                started,
                Kind::Chat,
                req.sampling.stream,
                req.sampling.include_usage(),
            )
            .await,
        )
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

pub async fn completions(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let result = async {
        let req = body(req)?;
        let params = req.sampling.params()?;
        let started = generate::start(&ctx, &req.model, Prompt::Text(req.prompt), params).await?;
        Ok::<_, NodeError>(
            respond(
                ctx.clone(),
                started,
                Kind::Text,
                req.sampling.stream,
                req.sampling.include_usage(),
            )
            .await,
        )
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

fn usage(prompt_tokens: usize, stats: Option<&GenerationStats>) -> Value {
    let completion = stats.map_or(0, |s| s.completion_tokens);
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    })
}

fn finish_reason(stats: &GenerationStats) -> &'static str {
    match stats.finish_reason {
        rbee_infer::engine::FinishReason::Length => "length",
        _ => "stop",
    }
}

fn with_node(mut resp: Response, node: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(node) {
        resp.headers_mut().insert("x-rbee-node", v);
    }
    resp
}

async fn respond(
    ctx: Arc<NodeContext>,
    started: Started,
    kind: Kind,
    stream: bool,
    include_usage: bool,
) -> Response {
    let node = started.node.clone();
    let resp = if stream {
        stream_response(ctx, started, kind, include_usage)
    } else {
        collect_response(ctx, started, kind).await
    };
    with_node(resp, &node)
}

async fn collect_response(ctx: Arc<NodeContext>, mut started: Started, kind: Kind) -> Response {
    let mut text = String::new();
    let mut stats = None;
    loop {
        let event = tokio::select! {
            event = started.events.recv() => event,
            () = ctx.halted() => return shutting_down().into_response(),
        };
        let Some(event) = event else { break };
        match event {
            Chunk::Text(t) => text.push_str(&t),
            Chunk::Done(s) => {
                stats = Some(s);
                break;
            }
            Chunk::Failed(e) => return e.into_response(),
        }
    }
    let Some(stats) = stats else {
        return NodeError::Internal("generation ended without a result".into()).into_response();
    };
    ctx.metrics
        .tokens_generated
        .fetch_add(stats.completion_tokens as u64, Ordering::Relaxed);
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish_reason(&stats),
        }),
        Kind::Text => json!({
            "index": 0,
            "text": text,
            "logprobs": null,
            "finish_reason": finish_reason(&stats),
        }),
    };
    Json(json!({
        "id": request_id(if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }),
        "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": now(),
        "model": started.model,
        "system_fingerprint": null,
        "choices": [choice],
        "usage": usage(started.prompt_tokens, Some(&stats)),
    }))
    .into_response()
}

/// What a request still running when the shutdown drain ends gets.
pub(crate) fn shutting_down() -> NodeError {
    NodeError::Unavailable(
        "the node is shutting down and its drain time is over; retry the request (another node in the pool can serve it)".into(),
    )
}

fn stream_response(
    ctx: Arc<NodeContext>,
    mut started: Started,
    kind: Kind,
    include_usage: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(16);
    let id = request_id(if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    let created = now();
    let model = started.model.clone();
    let chunk = move |delta: Value, finish: Option<&str>| -> Event {
        let choice = match kind {
            Kind::Chat => {
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => {
                json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "logprobs": null, "finish_reason": finish})
            }
        };
        let obj = if kind == Kind::Chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        Event::default().data(
            json!({"id": id, "object": obj, "created": created, "model": model, "system_fingerprint": null, "choices": [choice]})
                .to_string(),
        )
    };
    tokio::spawn(async move {
        // A send error means the client went away: returning drops the events receiver,
        // which stops the model at its next token.
        if kind == Kind::Chat
            && tx
                .send(Ok(chunk(json!({"role": "assistant", "content": ""}), None)))
                .await
                .is_err()
        {
            return;
        }
        loop {
            let event = tokio::select! {
                event = started.events.recv() => event,
                () = ctx.halted() => {
                    let e = shutting_down();
                    let err = json!({"error": {"message": e.to_string(), "type": e.error_type(), "code": e.status()}});
                    let _ = tx.send(Ok(Event::default().data(err.to_string()))).await;
                    break;
                }
            };
            let Some(event) = event else { break };
            let out = match event {
                Chunk::Text(text) => {
                    if text.is_empty() {
                        continue;
                    }
                    chunk(json!({"content": text}), None)
                }
                Chunk::Done(stats) => {
                    ctx.metrics
                        .tokens_generated
                        .fetch_add(stats.completion_tokens as u64, Ordering::Relaxed);
                    if tx
                        .send(Ok(chunk(json!({}), Some(finish_reason(&stats)))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if include_usage {
                        let mut last = json!({"id": "usage", "object": "chat.completion.chunk", "created": created, "model": started.model, "choices": []});
                        last["usage"] = usage(started.prompt_tokens, Some(&stats));
                        let _ = tx.send(Ok(Event::default().data(last.to_string()))).await;
                    }
                    break;
                }
                Chunk::Failed(e) => {
                    let err = json!({"error": {"message": format!("generation failed mid-stream: {e}"), "type": e.error_type(), "code": e.status()}});
                    let _ = tx.send(Ok(Event::default().data(err.to_string()))).await;
                    break;
                }
            };
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub async fn models(State(ctx): State<Arc<NodeContext>>) -> Response {
    match ctx.catalog.list().await {
        Ok(records) => {
            let data: Vec<Value> = records
                .iter()
                .flat_map(|r| {
                    std::iter::once(&r.entry.name)
                        .chain(r.entry.aliases.iter())
                        .map(move |id| {
                            json!({"id": id, "object": "model", "created": r.entry.added_at, "owned_by": "rbee",
                                   "content_id": r.entry.content_id.to_hex(), "architecture": r.manifest.metadata.architecture})
                        })
                })
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<Vec<ChatMessage>, NodeError> {
        messages(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn text_parts_are_joined_and_other_parts_refused_by_name() {
        let ok = parse(serde_json::json!([{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]))
        .unwrap();
        assert_eq!(ok.len(), 1);
        let image = parse(serde_json::json!([
            {"role": "system", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]));
        let Err(NodeError::BadRequest(msg)) = image else {
            panic!("an image part must be refused");
        };
        assert!(
            msg.contains("`image_url`") && msg.contains("messages[1]"),
            "{msg}"
        );
        let empty = parse(serde_json::json!([{"role": "user", "content": [{"type": "text"}]}]));
        assert!(matches!(empty, Err(NodeError::BadRequest(_))));
        assert!(matches!(
            parse(serde_json::json!([])),
            Err(NodeError::BadRequest(_))
        ));
    }
}
