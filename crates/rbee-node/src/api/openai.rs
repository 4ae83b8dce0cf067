//! OpenAI-compatible endpoints: chat completions, completions (streaming and not), models.

use std::convert::Infallible;
use std::sync::Arc;
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
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::presets;
use super::types::{
    AssistantMessage, ChatChoice, ChatChunk, ChatCompletion, ChatRequest, ChunkChoice, Completion,
    CompletionRequest, Content, Delta, DeltaFunction, DeltaToolCall, ErrorBody, InMessage,
    ModelCard, ModelList, OutFunction, OutToolCall, PromptInput, Sampling, Stop, TextChoice, Usage,
};
use crate::NodeContext;
use crate::error::NodeError;
use crate::serve::{self, Started};
use rbee_infer::tools::{CallDelta, ReplyPiece, ReplySplitter};
use rbee_proto::generation::{ChatOptions, GenerationEvent, TokenLogprob, ToolCall, ToolDef};

/// Prompts one `/v1/completions` request may carry (each is a generation, run in turn).
const MAX_PROMPTS: usize = 16;

/// The engine's parameters from a request's sampling fields: llama.cpp's meanings for
/// `seed: -1` (random) and `top_k: 0` (off); without `max_tokens` a generation runs until
/// the model stops or the context is full.
fn params(s: &Sampling, kind: Kind) -> Result<SamplingParams, NodeError> {
    if s.n.is_some_and(|n| n != 1) {
        return Err(NodeError::BadRequest(
            "`n` other than 1 is not supported yet; send one request per choice".into(),
        ));
    }
    let d = SamplingParams::default();
    let stop = match &s.stop {
        None => Vec::new(),
        Some(Stop::One(one)) => vec![one.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    let top_k = match s.top_k {
        None => d.top_k,
        Some(k) if k <= 0 => None,
        Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX)),
    };
    let params = SamplingParams {
        temperature: s.temperature.unwrap_or(d.temperature),
        top_k,
        top_p: s.top_p.or(d.top_p),
        min_p: s.min_p.or(d.min_p),
        repeat_penalty: s.repeat_penalty.unwrap_or(d.repeat_penalty),
        frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
        presence_penalty: s.presence_penalty.unwrap_or(0.0),
        seed: s.seed.and_then(|v| u64::try_from(v).ok()),
        max_tokens: s
            .max_completion_tokens
            .or(s.max_tokens)
            .unwrap_or(rbee_infer::sampling::MAX_TOKENS),
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        constraint: super::output::response_format(s.response_format.as_ref())?,
        logprobs: super::output::logprobs(
            s.logprobs.as_ref(),
            s.top_logprobs.as_ref(),
            kind == Kind::Chat,
        )?,
        ..d
    };
    params.validate().map_err(NodeError::BadRequest)?;
    Ok(params)
}

fn include_usage(s: &Sampling) -> bool {
    s.stream_options.as_ref().is_some_and(|o| o.include_usage)
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

pub(super) fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, NodeError> {
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
            let tool_calls = match m.tool_calls {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(calls) => tool_calls_in(i, &calls)?,
            };
            // OpenAI's newer name for the system role.
            let role = if m.role == "developer" {
                "system".to_string()
            } else {
                m.role
            };
            let mut message = ChatMessage::new(role, content);
            message.tool_calls = tool_calls;
            message.tool_call_id = m.tool_call_id;
            Ok(message)
        })
        .collect()
}

/// An assistant message's `tool_calls` (OpenAI's shape, `arguments` a JSON text).
fn tool_calls_in(i: usize, calls: &serde_json::Value) -> Result<Vec<ToolCall>, NodeError> {
    let bad = |what: &str| {
        NodeError::BadRequest(format!(
            "`messages[{i}].tool_calls`: {what} (each is {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}})"
        ))
    };
    let list = calls.as_array().ok_or_else(|| bad("not a list"))?;
    list.iter()
        .enumerate()
        .map(|(n, c)| {
            let f = c
                .get("function")
                .ok_or_else(|| bad("a call has no `function`"))?;
            let name = f
                .get("name")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| bad("a call has no `function.name`"))?;
            let arguments = match f.get("arguments") {
                None | Some(serde_json::Value::Null) => "{}".to_string(),
                Some(serde_json::Value::String(a)) => a.clone(),
                // Some clients send the object itself.
                Some(other) => other.to_string(),
            };
            Ok(ToolCall {
                id: c
                    .get("id")
                    .and_then(serde_json::Value::as_str)
                    .map_or_else(|| format!("call_{n}"), str::to_string),
                name: name.to_string(),
                arguments,
            })
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        }
    }
}

/// What one request asks for: the prompts (one per choice) and how to answer. The OpenAI
/// and the Ollama routes both build it, from [`chat_job`] and [`completion_job`].
pub(super) struct Job {
    pub(super) model: String,
    pub(super) prompts: Vec<Prompt>,
    pub(super) params: SamplingParams,
    /// Tools whose calls are read back out of a chat reply (none: the reply is all text).
    pub(super) tools: Vec<ToolDef>,
    kind: Kind,
    stream: bool,
    include_usage: bool,
}

impl Job {
    /// A preset's Ollama TEMPLATE applied ([`presets::apply_template`]): the chat rendered to
    /// text through it; unchanged without one.
    pub(super) fn with_template(
        mut self,
        preset: &crate::preset::Preset,
    ) -> Result<Job, NodeError> {
        let prompts = std::mem::take(&mut self.prompts);
        self.prompts = presets::apply_template(preset, &mut self.params.chat, prompts)?;
        Ok(self)
    }
}

/// The one place a chat request becomes a generation: fields not implemented refused by
/// name, sampling checked, messages converted. Ollama's `/api/chat` and `/api/generate`
/// convert their bodies into a [`ChatRequest`] and come through here too.
pub(super) fn chat_job(mut req: ChatRequest) -> Result<Job, NodeError> {
    // Tools are implemented on chat (the not-yet list keeps them for completions).
    let tools = req.not_yet.tools.take();
    let tool_choice = req.not_yet.tool_choice.take();
    req.not_yet.refuse()?;
    let mut params = params(&req.sampling, Kind::Chat)?;
    let (tools, forced) = super::output::tools(tools.as_ref(), tool_choice.as_ref())?;
    if let Some(forced) = forced {
        if params.constraint.is_some() {
            return Err(NodeError::BadRequest(
                "`response_format` and a forced `tool_choice` cannot both constrain the reply; drop one".into(),
            ));
        }
        params.constraint = Some(forced);
    }
    params.chat = ChatOptions {
        tools: tools.clone(),
        template_kwargs: super::output::template_kwargs(
            req.chat_template_kwargs.as_ref(),
            req.reasoning_effort.as_ref(),
        )?,
    };
    params.validate().map_err(NodeError::BadRequest)?;
    Ok(Job {
        params,
        tools,
        prompts: vec![Prompt::Chat(messages(req.messages)?)],
        model: req.model,
        kind: Kind::Chat,
        stream: req.sampling.stream,
        include_usage: include_usage(&req.sampling),
    })
}

pub async fn chat_completions(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let job = match body(req) {
        Ok(mut req) => match presets::find(&ctx, &req.model).await {
            Ok(Some(p)) => presets::apply_chat(&p, &mut req)
                .and_then(|()| chat_job(req))
                .and_then(|job| job.with_template(&p)),
            Ok(None) => chat_job(req),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    run(ctx, job).await
}

pub async fn completions(
    State(ctx): State<Arc<NodeContext>>,
    req: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let job = match body(req) {
        Ok(mut req) => match presets::find(&ctx, &req.model).await {
            Ok(Some(p)) => presets::apply_sampling(&p, &mut req.sampling).and_then(|()| {
                req.model = presets::base_reference(&p);
                completion_job(req)
            }),
            Ok(None) => completion_job(req),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    run(ctx, job).await
}

/// [`chat_job`] for a text completion (one generation per prompt).
pub(super) fn completion_job(req: CompletionRequest) -> Result<Job, NodeError> {
    req.not_yet.refuse()?;
    let prompts: Vec<Prompt> = match req.prompt {
        PromptInput::One(p) => vec![Prompt::Text(p)],
        PromptInput::Many(ps) => ps.into_iter().map(Prompt::Text).collect(),
        PromptInput::Tokens(t) => vec![Prompt::Tokens(t)],
        PromptInput::ManyTokens(ts) => ts.into_iter().map(Prompt::Tokens).collect(),
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(NodeError::BadRequest(format!(
            "`prompt` is a list of {} prompts; send 1 to {MAX_PROMPTS}",
            prompts.len()
        )));
    }
    Ok(Job {
        params: params(&req.sampling, Kind::Text)?,
        tools: Vec::new(),
        prompts,
        model: req.model,
        kind: Kind::Text,
        stream: req.sampling.stream,
        include_usage: include_usage(&req.sampling),
    })
}

async fn run(ctx: Arc<NodeContext>, job: Result<Job, NodeError>) -> Response {
    let mut job = match job {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    // The first generation starts before the response does, so a request that cannot run
    // (unknown model, prompt too long, no capacity) is an HTTP error, not a broken stream.
    let first = job.prompts.remove(0);
    let started = match serve::start(&ctx, &job.model, first, job.params.clone()).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let node = started.node.clone();
    let resp = if job.stream {
        stream_response(ctx, started, job)
    } else {
        collect_response(ctx, started, job).await
    };
    with_node(resp, &node)
}

pub(super) fn finish_reason(stats: &GenerationStats) -> String {
    match stats.finish_reason {
        rbee_infer::engine::FinishReason::Length => "length",
        _ => "stop",
    }
    .into()
}

/// A chat choice's finish reason: `tool_calls` when the reply holds calls, unless it was cut
/// off by `max_tokens` (`length`, as OpenAI says then: the last call may be unfinished).
fn chat_finish_reason(stats: &GenerationStats, calls: bool) -> String {
    if calls && stats.finish_reason != rbee_infer::engine::FinishReason::Length {
        "tool_calls".into()
    } else {
        finish_reason(stats)
    }
}

/// Call `n`'s id, unique to this response: `call_<response id>_<n>`.
fn call_id(response_id: &str, n: usize) -> String {
    format!("call_{}_{n}", response_id.trim_start_matches("chatcmpl-"))
}

/// Calls in OpenAI's shape, with ids unique to this response.
fn out_tool_calls(response_id: &str, calls: &[ToolCall]) -> Vec<OutToolCall> {
    calls
        .iter()
        .enumerate()
        .map(|(n, c)| OutToolCall {
            id: call_id(response_id, n),
            kind: "function".into(),
            function: OutFunction {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            },
        })
        .collect()
}

pub(super) fn with_node(mut resp: Response, node: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(node) {
        resp.headers_mut().insert("x-rbee-node", v);
    }
    resp
}

fn add_usage(total: &mut Usage, prompt_tokens: usize, stats: &GenerationStats) {
    total.prompt_tokens += prompt_tokens;
    total.completion_tokens += stats.completion_tokens;
    total.total_tokens = total.prompt_tokens + total.completion_tokens;
    total.prompt_tokens_details.cached_tokens += stats.cached_tokens;
}

/// Runs one generation to its end: the text and the stats.
pub(super) async fn collect(
    ctx: &NodeContext,
    started: &mut Started,
) -> Result<(String, GenerationStats, Vec<TokenLogprob>), NodeError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    loop {
        let event = tokio::select! {
            event = started.events.recv() => event,
            () = ctx.halted() => return Err(shutting_down()),
        };
        match event {
            Some(GenerationEvent::Text(t)) => text.push_str(&t),
            Some(GenerationEvent::Logprobs(l)) => logprobs.extend(l),
            Some(GenerationEvent::Done(s)) => return Ok((text, s, logprobs)),
            Some(GenerationEvent::Error { code, message }) => {
                return Err(NodeError::from_code(code, message));
            }
            // Phases come before the start; nothing else follows it.
            Some(_) => continue,
            None => {
                return Err(NodeError::Internal(
                    "generation ended without a result".into(),
                ));
            }
        }
    }
}

async fn collect_response(ctx: Arc<NodeContext>, first: Started, job: Job) -> Response {
    let mut usage = Usage::default();
    let model = first.model.clone();
    let mut outputs = Vec::with_capacity(job.prompts.len() + 1);
    let mut next = Some(first);
    let mut rest = job.prompts.into_iter();
    while let Some(mut started) = next.take() {
        match collect(&ctx, &mut started).await {
            Ok((text, stats, logprobs)) => {
                add_usage(&mut usage, started.prompt_tokens, &stats);
                let logprobs =
                    job.params.logprobs.is_some().then(|| {
                        super::output::logprobs_json(&logprobs, job.kind == Kind::Chat, 0)
                    });
                outputs.push((text, stats, logprobs));
            }
            Err(e) => return e.into_response(),
        }
        if let Some(prompt) = rest.next() {
            match serve::start(&ctx, &job.model, prompt, job.params.clone()).await {
                Ok(s) => next = Some(s),
                Err(e) => return e.into_response(),
            }
        }
    }
    let id = request_id(job.kind.id_prefix());
    let created = now();
    match job.kind {
        Kind::Chat => Json(ChatCompletion {
            choices: outputs
                .into_iter()
                .enumerate()
                .map(|(index, (text, stats, logprobs))| {
                    // The splitter a stream uses, over the whole text: the same content and
                    // calls, to the byte, as the same generation streamed.
                    let mut split = ReplySplitter::new(job.tools.clone());
                    let first = split.push(&text);
                    let (rest, calls) = split.finish();
                    let reasoning = first.reasoning + &rest.reasoning;
                    ChatChoice {
                        index,
                        message: AssistantMessage {
                            role: "assistant".into(),
                            content: first.content + &rest.content,
                            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                            tool_calls: (!calls.is_empty()).then(|| out_tool_calls(&id, &calls)),
                        },
                        logprobs,
                        finish_reason: chat_finish_reason(&stats, !calls.is_empty()),
                    }
                })
                .collect(),
            id,
            object: "chat.completion".into(),
            created,
            model,
            system_fingerprint: None,
            usage,
        })
        .into_response(),
        Kind::Text => Json(Completion {
            id,
            object: "text_completion".into(),
            created,
            model,
            system_fingerprint: None,
            choices: outputs
                .into_iter()
                .enumerate()
                .map(|(index, (text, stats, logprobs))| TextChoice {
                    index,
                    text,
                    logprobs,
                    finish_reason: Some(finish_reason(&stats)),
                })
                .collect(),
            usage: Some(usage),
        })
        .into_response(),
    }
}

/// What a request still running when the shutdown drain ends gets.
pub(crate) fn shutting_down() -> NodeError {
    NodeError::Unavailable(
        "the node is shutting down and its drain time is over; retry the request (another node in the pool can serve it)".into(),
    )
}

/// One choice's piece of a stream: its index, the role (first chat chunk), the text, and the
/// finish reason (its last chunk).
struct Piece<'a> {
    index: usize,
    role: Option<&'a str>,
    text: Option<String>,
    finish: Option<String>,
    logprobs: Option<serde_json::Value>,
    reasoning: Option<String>,
    tool_calls: Option<Vec<DeltaToolCall>>,
}

/// Builds a stream's events: every chunk with the stream's id, object and `usage: null`.
struct Chunks {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Chunks {
    fn event(value: &impl serde::Serialize) -> Event {
        Event::default().data(serde_json::to_string(value).unwrap_or_default())
    }

    /// A chunk of this stream: one choice's piece, or (`None`) the usage chunk, whose
    /// `choices` are empty.
    fn chunk(&self, choice: Option<Piece<'_>>, usage: Option<Usage>) -> Event {
        let id = self.id.clone();
        let model = self.model.clone();
        match self.kind {
            Kind::Chat => Self::event(&ChatChunk {
                id,
                object: "chat.completion.chunk".into(),
                created: self.created,
                model,
                system_fingerprint: None,
                choices: choice
                    .map(|p| ChunkChoice {
                        index: p.index,
                        delta: Delta {
                            role: p.role.map(str::to_string),
                            content: p.text,
                            reasoning_content: p.reasoning,
                            tool_calls: p.tool_calls,
                        },
                        logprobs: p.logprobs,
                        finish_reason: p.finish,
                    })
                    .into_iter()
                    .collect(),
                usage,
            }),
            Kind::Text => Self::event(&Completion {
                id,
                object: "text_completion".into(),
                created: self.created,
                model,
                system_fingerprint: None,
                choices: choice
                    .map(|p| TextChoice {
                        index: p.index,
                        text: p.text.unwrap_or_default(),
                        logprobs: p.logprobs,
                        finish_reason: p.finish,
                    })
                    .into_iter()
                    .collect(),
                usage,
            }),
        }
    }

    fn piece(
        &self,
        index: usize,
        role: Option<&str>,
        text: Option<String>,
        finish: Option<String>,
    ) -> Event {
        let piece = Piece {
            index,
            role,
            text,
            finish,
            logprobs: None,
            reasoning: None,
            tool_calls: None,
        };
        self.chunk(Some(piece), None)
    }

    /// A piece of a reply: answer text and thinking (either may be empty), with the
    /// log-probabilities of the tokens that made it when they were asked for.
    fn reply(
        &self,
        index: usize,
        text: String,
        reasoning: String,
        logprobs: Option<serde_json::Value>,
    ) -> Event {
        let piece = Piece {
            index,
            role: None,
            text: (!text.is_empty() || self.kind == Kind::Text).then_some(text),
            finish: None,
            logprobs,
            reasoning: (!reasoning.is_empty()).then_some(reasoning),
            tool_calls: None,
        };
        self.chunk(Some(piece), None)
    }

    /// A piece of a tool call, in a chunk of its own, as OpenAI sends them: a call's first
    /// delta has its `index`, `id`, `type`, `function.name` and `arguments: ""`, the next ones
    /// fragments of its `arguments` (clients join them by `index`).
    fn call(&self, index: usize, delta: CallDelta, logprobs: Option<serde_json::Value>) -> Event {
        let call = match delta {
            CallDelta::Start { index: n, name } => DeltaToolCall {
                index: n,
                id: Some(call_id(&self.id, n)),
                kind: Some("function".into()),
                function: DeltaFunction {
                    name: Some(name),
                    arguments: String::new(),
                },
            },
            CallDelta::Arguments { index: n, text } => DeltaToolCall {
                index: n,
                id: None,
                kind: None,
                function: DeltaFunction {
                    name: None,
                    arguments: text,
                },
            },
        };
        let piece = Piece {
            index,
            role: None,
            text: None,
            finish: None,
            logprobs,
            reasoning: None,
            tool_calls: Some(vec![call]),
        };
        self.chunk(Some(piece), None)
    }

    /// A piece of a chat reply as events: its thinking and text, then its call deltas; the
    /// log-probabilities (of the tokens that made the piece) ride on the first.
    fn reply_events(
        &self,
        index: usize,
        piece: ReplyPiece,
        mut logprobs: Option<serde_json::Value>,
    ) -> Vec<Event> {
        let mut events = Vec::with_capacity(1 + piece.calls.len());
        if !piece.content.is_empty() || !piece.reasoning.is_empty() {
            events.push(self.reply(index, piece.content, piece.reasoning, logprobs.take()));
        }
        for delta in piece.calls {
            events.push(self.call(index, delta, logprobs.take()));
        }
        events
    }

    /// The last chunk when `include_usage` asked for it: no choices, the whole usage.
    fn usage(&self, usage: Usage) -> Event {
        self.chunk(None, Some(usage))
    }

    fn error(e: &NodeError) -> Event {
        Self::event(&ErrorBody::of(e))
    }
}

/// Streams one generation's pieces as choice `index`; its stats at the end, or the event
/// that ended the stream (an error already sent, or the client gone: `Err(())`).
async fn stream_one(
    ctx: &NodeContext,
    started: &mut Started,
    chunks: &Chunks,
    index: usize,
    wants_logprobs: bool,
    tools: &[ToolDef],
    tx: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<GenerationStats, ()> {
    // A send error means the client went away: returning drops the events receiver,
    // which stops the model at its next token.
    if chunks.kind == Kind::Chat
        && tx
            .send(Ok(chunks.piece(
                index,
                Some("assistant"),
                Some(String::new()),
                None,
            )))
            .await
            .is_err()
    {
        return Err(());
    }
    // Log-probabilities of tokens whose text has not been sent yet (held back, e.g. half a
    // character), and the text offset of the next piece (completions report it).
    let mut logprobs: Vec<TokenLogprob> = Vec::new();
    let mut offset = 0;
    let chat = chunks.kind == Kind::Chat;
    let mut split = chat.then(|| ReplySplitter::new(tools.to_vec()));
    loop {
        let event = tokio::select! {
            event = started.events.recv() => event,
            () = ctx.halted() => {
                let _ = tx.send(Ok(Chunks::error(&shutting_down()))).await;
                return Err(());
            }
        };
        let out = match event {
            Some(GenerationEvent::Logprobs(l)) => {
                logprobs.extend(l);
                continue;
            }
            Some(GenerationEvent::Text(text)) if text.is_empty() => continue,
            Some(GenerationEvent::Text(text)) => {
                let piece = match &mut split {
                    Some(split) => split.push(&text),
                    None => ReplyPiece {
                        content: text,
                        ..ReplyPiece::default()
                    },
                };
                if piece.is_empty() {
                    // Held back (a tag or a call may be starting); its log-probabilities wait
                    // with it.
                    continue;
                }
                let lp =
                    wants_logprobs.then(|| super::output::logprobs_json(&logprobs, chat, offset));
                offset += piece.content.len();
                logprobs.clear();
                if chat {
                    chunks.reply_events(index, piece, lp)
                } else {
                    vec![chunks.reply(index, piece.content, String::new(), lp)]
                }
            }
            Some(GenerationEvent::Done(stats)) => {
                let mut calls = false;
                if let Some(split) = split.take() {
                    let (rest, found) = split.finish();
                    let lp = (wants_logprobs && !rest.is_empty())
                        .then(|| super::output::logprobs_json(&logprobs, chat, offset));
                    for event in chunks.reply_events(index, rest, lp) {
                        if tx.send(Ok(event)).await.is_err() {
                            return Err(());
                        }
                    }
                    calls = !found.is_empty();
                }
                let finish = if chat {
                    chat_finish_reason(&stats, calls)
                } else {
                    finish_reason(&stats)
                };
                let last = chunks.piece(index, None, None, Some(finish));
                return match tx.send(Ok(last)).await {
                    Ok(()) => Ok(stats),
                    Err(_) => Err(()),
                };
            }
            Some(GenerationEvent::Error { code, message }) => {
                let e =
                    NodeError::from_code(code, format!("generation failed mid-stream: {message}"));
                let _ = tx.send(Ok(Chunks::error(&e))).await;
                return Err(());
            }
            // Phases come before the start; nothing else follows it.
            Some(_) => continue,
            None => {
                let e = NodeError::Internal("generation ended without a result".into());
                let _ = tx.send(Ok(Chunks::error(&e))).await;
                return Err(());
            }
        };
        for event in out {
            if tx.send(Ok(event)).await.is_err() {
                return Err(());
            }
        }
    }
}

fn stream_response(ctx: Arc<NodeContext>, first: Started, job: Job) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(16);
    let chunks = Chunks {
        kind: job.kind,
        id: request_id(job.kind.id_prefix()),
        created: now(),
        model: first.model.clone(),
    };
    tokio::spawn(async move {
        let mut usage = Usage::default();
        let mut next = Some(first);
        let mut rest = job.prompts.into_iter();
        let mut index = 0;
        while let Some(mut started) = next.take() {
            let Ok(stats) = stream_one(
                &ctx,
                &mut started,
                &chunks,
                index,
                job.params.logprobs.is_some(),
                &job.tools,
                &tx,
            )
            .await
            else {
                let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
                return;
            };
            add_usage(&mut usage, started.prompt_tokens, &stats);
            index += 1;
            if let Some(prompt) = rest.next() {
                match serve::start(&ctx, &job.model, prompt, job.params.clone()).await {
                    Ok(s) => next = Some(s),
                    Err(e) => {
                        let _ = tx.send(Ok(Chunks::error(&e))).await;
                    }
                }
            }
        }
        if job.include_usage {
            let _ = tx.send(Ok(chunks.usage(usage))).await;
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One card per name and alias, each saying what the model does (from its headers, read
/// once per model).
async fn cards(ctx: &NodeContext, records: &[rbee_store::ModelRecord]) -> Vec<ModelCard> {
    let mut cards = Vec::new();
    for r in records {
        let caps = match ctx.store.primary_path(r) {
            Some(path) => ctx.kinds.of(r.entry.content_id, &path).await.ok(),
            None => None,
        };
        let capabilities: Vec<String> = caps
            .map(|c| {
                [(c.generates, "completion"), (c.embeds, "embedding")]
                    .into_iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, name)| name.to_string())
                    .collect()
            })
            .unwrap_or_default();
        for id in std::iter::once(&r.entry.name).chain(r.entry.aliases.iter()) {
            cards.push(ModelCard {
                id: id.clone(),
                object: "model".into(),
                created: r.entry.added_at,
                owned_by: "rbee".into(),
                content_id: r.entry.content_id.to_hex(),
                architecture: r.manifest.metadata.architecture.clone(),
                capabilities: capabilities.clone(),
            });
        }
    }
    cards
}

pub async fn models(State(ctx): State<Arc<NodeContext>>) -> Response {
    match ctx.catalog.list().await {
        Ok(records) => Json(ModelList {
            object: "list".into(),
            data: cards(&ctx, &records).await,
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/models/{id}`: one model by a name or alias this node's catalog lists.
pub async fn model(
    State(ctx): State<Arc<NodeContext>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match ctx.catalog.list().await {
        Ok(records) => {
            let record: Vec<_> = records
                .into_iter()
                .filter(|r| r.entry.name == id || r.entry.aliases.contains(&id))
                .collect();
            match cards(&ctx, &record).await.into_iter().find(|c| c.id == id) {
                Some(card) => Json(card).into_response(),
                None => NodeError::ModelNotFound {
                    model: id,
                    checked: vec!["not in this node's catalog".into()],
                    hint: Some("GET /v1/models lists them".into()),
                }
                .into_response(),
            }
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    mod preset_templates {
        #![allow(clippy::unwrap_used)]
        use super::super::presets::apply_chat;
        use super::super::presets::tests::{chat, preset};
        use super::*;
        use serde_json::Value;

        fn templated(template: &str, body: Value) -> Result<Vec<Prompt>, NodeError> {
            let mut p = preset();
            p.modelfile.template = Some(template.into());
            let mut req = chat(body);
            apply_chat(&p, &mut req)?;
            Ok(chat_job(req)?.with_template(&p)?.prompts)
        }

        #[test]
        fn a_template_renders_the_chat_into_the_prompt() {
            let prompts = templated(
                "{{ range .Messages }}[{{ .Role }}]{{ .Content }}{{ end }}<reply>",
                json!({"model": "mario", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .unwrap();
            // SYSTEM, then MESSAGE and the chat's user turn merged as Ollama's collate merges them.
            assert_eq!(
                prompts,
                [Prompt::Text(
                    "[system]Be Mario.[user]Who are you?\n\nhi<reply>".into()
                )]
            );
            // Without a TEMPLATE the chat goes to the base's own template untouched.
            let mut req =
                chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
            apply_chat(&preset(), &mut req).unwrap();
            let job = chat_job(req).unwrap().with_template(&preset()).unwrap();
            assert!(matches!(&job.prompts[..], [Prompt::Chat(_)]));
        }

        #[test]
        fn tools_go_through_a_tools_template_else_the_generic_system_message() {
            let body = json!({"model": "mario", "messages": [{"role": "user", "content": "light?"}],
            "tools": [{"type": "function", "function": {"name": "light_on",
                "parameters": {"type": "object", "properties": {"room": {"type": "string"}}}}}]});
            let with = templated(
            "{{ range .Tools }}{{ .Function.Name }}={{ json .Function.Parameters }};{{ end }}{{ range .Messages }}{{ .Content }}{{ end }}",
            body.clone(),
        )
        .unwrap();
            assert_eq!(
            with,
            [Prompt::Text(
                "light_on={\"type\":\"object\",\"properties\":{\"room\":{\"type\":\"string\"}}};Be Mario.Who are you?\n\nlight?".into()
            )]
        );
            let without = templated("{{ .System }}|{{ .Prompt }}", body).unwrap();
            let [Prompt::Text(text)] = &without[..] else {
                panic!("{without:?}")
            };
            assert!(
                text.contains("<tools>") && text.contains("\"light_on\""),
                "{text}"
            );
            assert!(text.ends_with("|Who are you?\n\nlight?"), "{text}");
        }

        #[test]
        fn jinja_variables_are_refused_with_a_go_template() {
            let e = templated(
                "{{ .Prompt }}",
                json!({"model": "mario", "messages": [{"role": "user", "content": "hi"}],
                "chat_template_kwargs": {"add_vision_id": true}}),
            )
            .unwrap_err();
            assert!(
                e.to_string().contains("chat_template_kwargs.add_vision_id"),
                "{e}"
            );
            let ok = templated(
                "{{ if .Think }}T{{ end }}{{ .Prompt }}",
                json!({"model": "mario", "messages": [{"role": "user", "content": "hi"}],
                "chat_template_kwargs": {"enable_thinking": true}}),
            )
            .unwrap();
            assert!(
                matches!(&ok[..], [Prompt::Text(t)] if t.starts_with('T')),
                "{ok:?}"
            );
        }
    }

    fn parse(v: serde_json::Value) -> Result<Vec<ChatMessage>, NodeError> {
        messages(serde_json::from_value(v).unwrap())
    }

    fn sampling(v: serde_json::Value) -> Result<SamplingParams, NodeError> {
        params(&serde_json::from_value(v).unwrap(), Kind::Chat)
    }

    #[test]
    fn llama_cpp_meanings_and_no_default_token_limit() {
        let p = sampling(json!({})).unwrap();
        assert_eq!(
            p.max_tokens,
            rbee_infer::sampling::MAX_TOKENS,
            "no default limit"
        );
        let p = sampling(json!({"seed": -1, "top_k": 0})).unwrap();
        assert_eq!((p.seed, p.top_k), (None, None), "random seed, top-k off");
        let p = sampling(json!({"seed": 7, "top_k": 5, "max_tokens": 9})).unwrap();
        assert_eq!((p.seed, p.top_k, p.max_tokens), (Some(7), Some(5), 9));
        let p = sampling(json!({"frequency_penalty": 0.5, "presence_penalty": -0.5})).unwrap();
        assert_eq!((p.frequency_penalty, p.presence_penalty), (0.5, -0.5));
        assert!(sampling(json!({"presence_penalty": 3})).is_err());
        assert!(sampling(json!({"n": 2})).is_err());
    }

    #[test]
    fn developer_is_the_system_role_and_tool_call_histories_are_read() {
        let m = parse(json!([{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]))
            .unwrap();
        assert_eq!(m[0].role, "system");
        let m = parse(json!([{"role": "assistant", "content": null,
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "ok"}]))
        .unwrap();
        assert_eq!(m[0].tool_calls[0].name, "f");
        assert_eq!(m[0].tool_calls[0].arguments, "{\"a\": 1}");
        assert_eq!(m[1].tool_call_id.as_deref(), Some("1"));
        let e = parse(json!([{"role": "assistant", "tool_calls": [{"id": "1"}]}]));
        assert!(matches!(e, Err(NodeError::BadRequest(m)) if m.contains("tool_calls")));
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
