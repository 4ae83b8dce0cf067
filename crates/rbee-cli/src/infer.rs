//! `rbee-node infer`: run one prompt on this machine and stream the answer to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::{
    Backend, CandleBackend, GenerateEvent, GenerateRequest, LoadOptions, Prompt,
};
use rbee_infer::sampling::SamplingParams;
use rbee_node::NodeConfig;
use rbee_node::api_types::{
    ChatChunk, ChatRequest, Completion, CompletionRequest, Content, InMessage, NotYet, PromptInput,
    Sampling, Stop, StreamOptions,
};
use rbee_proto::ModelRef;

use crate::node::NodeClient;

#[derive(Debug, Args)]
pub struct InferArgs {
    /// A catalog name, alias, content id, `org/repo:file` already pulled, or a GGUF path.
    #[arg(long, short)]
    model: String,
    #[arg(long, short)]
    prompt: String,
    /// Format the prompt as a chat turn with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A system message (implies --chat).
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    min_p: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Context length to load the model with (default 4096, capped at the model's).
    #[arg(long)]
    context: Option<usize>,
}

/// The model file for a reference: a path as is, anything else from the catalog.
pub(crate) fn model_path(data_dir: Option<PathBuf>, reference: &str) -> Result<PathBuf> {
    let r: ModelRef = reference.parse()?;
    if let ModelRef::LocalPath(p) = &r {
        return Ok(PathBuf::from(p));
    }
    let store = crate::models::open_store(data_dir)?;
    let record = store.resolve(&r)?;
    store.verify_for_load(&record)?;
    store.touch(&record.entry.content_id)?;
    store
        .primary_path(&record)
        .with_context(|| format!("model {} has no loadable file", record.entry.name))
}

/// Sends the prompt to the running local node, streaming its answer.
fn via_node(client: &NodeClient, args: &InferArgs) -> Result<()> {
    let sampling = Sampling {
        max_tokens: Some(args.max_tokens),
        temperature: Some(args.temperature),
        repeat_penalty: Some(args.repeat_penalty),
        seed: args.seed.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
        top_k: args.top_k.map(|k| i64::try_from(k).unwrap_or(i64::MAX)),
        top_p: args.top_p,
        min_p: args.min_p,
        stop: (!args.stop.is_empty()).then(|| Stop::Many(args.stop.clone())),
        stream: true,
        stream_options: Some(StreamOptions {
            include_usage: true,
        }),
        ..Sampling::default()
    };
    let mut out = std::io::stdout().lock();
    let usage = if args.chat || args.system.is_some() {
        let text = |role: &str, text: &str| InMessage {
            role: role.into(),
            content: Some(Content::Text(text.into())),
            tool_calls: None,
            tool_call_id: None,
        };
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(text("system", s));
        }
        messages.push(text("user", &args.prompt));
        let req = ChatRequest {
            model: args.model.clone(),
            messages,
            chat_template_kwargs: None,
            reasoning_effort: None,
            parallel_tool_calls: None,
            sampling,
            not_yet: NotYet::default(),
        };
        client.stream_completion::<_, ChatChunk>("/v1/chat/completions", &req, &mut out)?
    } else {
        let req = CompletionRequest {
            model: args.model.clone(),
            prompt: PromptInput::One(args.prompt.clone()),
            sampling,
            not_yet: NotYet::default(),
        };
        client.stream_completion::<_, Completion>("/v1/completions", &req, &mut out)?
    };
    writeln!(out)?;
    eprintln!("{usage}");
    Ok(())
}

pub fn run(config: &NodeConfig, args: InferArgs) -> Result<()> {
    let is_path = matches!(args.model.parse::<ModelRef>(), Ok(ModelRef::LocalPath(_)));
    if !is_path {
        let client = NodeClient::new(config);
        if client.health().is_some() {
            return via_node(&client, &args);
        }
    }
    let path = model_path(config.data_dir.clone(), &args.model)?;
    let defaults = SamplingParams::default();
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k.or(defaults.top_k),
        top_p: args.top_p.or(defaults.top_p),
        min_p: args.min_p.or(defaults.min_p),
        repeat_penalty: args.repeat_penalty,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop,
        ..defaults
    };
    let prompt = if args.chat || args.system.is_some() {
        let mut messages = Vec::new();
        if let Some(s) = args.system {
            messages.push(ChatMessage::new("system", s));
        }
        messages.push(ChatMessage::new("user", args.prompt));
        Prompt::Chat(messages)
    } else {
        Prompt::Text(args.prompt)
    };
    let opts = LoadOptions {
        context_length: args.context,
        ..Default::default()
    };
    let model = CandleBackend.load(&path, &opts)?;
    let load_secs = model.info().load_secs;
    let generation = model.generate(GenerateRequest { prompt, params })?;
    let mut out = std::io::stdout().lock();
    for event in generation {
        match event {
            GenerateEvent::Started { .. } => {}
            GenerateEvent::Token { text, .. } | GenerateEvent::Text(text) => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            GenerateEvent::Done(stats) => {
                writeln!(out)?;
                eprintln!(
                    "{} tokens, {:.1} tok/s (prompt {} tokens at {:.0} tok/s, load {:.2}s, finish: {})",
                    stats.completion_tokens,
                    stats.decode_tokens_per_sec(),
                    stats.prompt_tokens,
                    stats.prompt_tokens as f64 / stats.prefill_secs.max(1e-9),
                    load_secs,
                    stats.finish_reason.as_str()
                );
                return Ok(());
            }
            GenerateEvent::Error(e) => return Err(e.into()),
        }
    }
    bail!("the model thread stopped without finishing")
}
