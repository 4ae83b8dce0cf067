//! `rbee-node run <model>`: an interactive chat, as Ollama users know it (history, `"""`
//! multi-line input, `/bye`, `/set system …`, `/set parameter …`), and `rbee-node ps` /
//! `rbee-node stop <model>` for the models the running node holds in memory.
//!
//! With a node running, every turn goes to it (`/v1/chat/completions`, streamed), so the pool
//! routes it like any request; without one, the model is loaded once in this process and the
//! whole conversation runs here.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result, bail};
use clap::Args;
use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::{
    Backend, CandleBackend, GenerateEvent, GenerateRequest, LoadOptions, LoadedModel, Prompt,
};
use rbee_infer::sampling::SamplingParams;
use rbee_node::NodeConfig;
use rbee_node::api_types::{
    ChatChunk, ChatRequest, Content, InMessage, NotYet, Sampling, Stop, StreamOptions,
};
use rbee_proto::ModelRef;

use crate::node::NodeClient;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A catalog name, alias, content id or `org/repo:file` already pulled (or a GGUF path,
    /// which runs in this process).
    model: String,
    /// Answer this one prompt and exit (text piped on stdin is appended to it); without it,
    /// an interactive chat reads turns from stdin.
    prompt: Option<String>,
    /// The system message of the conversation (`/set system` changes it).
    #[arg(long)]
    system: Option<String>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// After each answer, print its token counts and where it ran on stderr.
    #[arg(long)]
    verbose: bool,
    /// Context length when the model loads in this process (default 4096, capped at the
    /// model's).
    #[arg(long)]
    context: Option<usize>,
}

/// The settings of a conversation that `/set parameter` changes.
#[derive(Debug, Clone, PartialEq)]
struct Params {
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: f32,
    seed: Option<u64>,
    max_tokens: usize,
    stop: Vec<String>,
}

impl Params {
    /// `/set parameter <name> <value>`, with Ollama's parameter names.
    fn set(&mut self, name: &str, value: &str) -> Result<()> {
        fn num<T: std::str::FromStr>(name: &str, value: &str) -> Result<T> {
            value
                .parse()
                .map_err(|_| anyhow::anyhow!("`{value}` is not a valid value for {name}"))
        }
        match name {
            "temperature" => self.temperature = num(name, value)?,
            "top_k" => self.top_k = Some(num(name, value)?),
            "top_p" => self.top_p = Some(num(name, value)?),
            "min_p" => self.min_p = Some(num(name, value)?),
            "repeat_penalty" => self.repeat_penalty = num(name, value)?,
            "seed" => self.seed = Some(num(name, value)?),
            "num_predict" => self.max_tokens = num(name, value)?,
            "stop" => self.stop.push(value.to_string()),
            _ => bail!(
                "unknown parameter `{name}`: one of temperature, top_k, top_p, min_p, repeat_penalty, seed, num_predict, stop"
            ),
        }
        Ok(())
    }

    fn show(&self) -> String {
        let mut s = format!(
            "temperature {}\nrepeat_penalty {}\nnum_predict {}\n",
            self.temperature, self.repeat_penalty, self.max_tokens
        );
        let opt = |name: &str, v: Option<String>| v.map(|v| format!("{name} {v}\n"));
        s.extend(opt("top_k", self.top_k.map(|v| v.to_string())));
        s.extend(opt("top_p", self.top_p.map(|v| v.to_string())));
        s.extend(opt("min_p", self.min_p.map(|v| v.to_string())));
        s.extend(opt("seed", self.seed.map(|v| v.to_string())));
        for stop in &self.stop {
            s.push_str(&format!("stop {stop:?}\n"));
        }
        s
    }
}

/// What answers a turn: the running node, or the model loaded in this process.
trait Answerer {
    /// Streams the assistant's answer to `messages` into `out`; returns its text and a line
    /// of statistics (tokens, prompt tokens, where it ran).
    fn answer(
        &mut self,
        messages: &[ChatMessage],
        params: &Params,
        out: &mut dyn Write,
    ) -> Result<(String, String)>;
}

/// Writes through to `out` and keeps a copy of what passed.
struct Tee<'a> {
    out: &'a mut dyn Write,
    seen: Vec<u8>,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

struct ViaNode {
    client: NodeClient,
    model: String,
}

impl Answerer for ViaNode {
    fn answer(
        &mut self,
        messages: &[ChatMessage],
        p: &Params,
        out: &mut dyn Write,
    ) -> Result<(String, String)> {
        let to_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let req = ChatRequest {
            model: self.model.clone(),
            messages: messages
                .iter()
                .map(|m| InMessage {
                    role: m.role.clone(),
                    content: Some(Content::Text(m.content.clone())),
                    tool_calls: None,
                    tool_call_id: None,
                })
                .collect(),
            sampling: Sampling {
                max_tokens: Some(p.max_tokens),
                temperature: Some(p.temperature),
                repeat_penalty: Some(p.repeat_penalty),
                seed: p.seed.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
                top_k: p.top_k.map(to_i64),
                top_p: p.top_p,
                min_p: p.min_p,
                stop: (!p.stop.is_empty()).then(|| Stop::Many(p.stop.clone())),
                stream: true,
                stream_options: Some(StreamOptions {
                    include_usage: true,
                }),
                ..Sampling::default()
            },
            chat_template_kwargs: None,
            reasoning_effort: None,
            parallel_tool_calls: None,
            not_yet: NotYet::default(),
        };
        let mut tee = Tee {
            out,
            seen: Vec::new(),
        };
        let usage = self.client.stream_completion::<_, ChatChunk>(
            "/v1/chat/completions",
            &req,
            &mut tee,
        )?;
        Ok((String::from_utf8_lossy(&tee.seen).into_owned(), usage))
    }
}

struct InProcess {
    model: std::sync::Arc<dyn LoadedModel>,
}

impl Answerer for InProcess {
    fn answer(
        &mut self,
        messages: &[ChatMessage],
        p: &Params,
        out: &mut dyn Write,
    ) -> Result<(String, String)> {
        let defaults = SamplingParams::default();
        let params = SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k.or(defaults.top_k),
            top_p: p.top_p.or(defaults.top_p),
            min_p: p.min_p.or(defaults.min_p),
            repeat_penalty: p.repeat_penalty,
            seed: p.seed,
            max_tokens: p.max_tokens,
            stop: p.stop.clone(),
            ..defaults
        };
        let generation = self.model.generate(GenerateRequest {
            prompt: Prompt::Chat(messages.to_vec()),
            params,
        })?;
        let mut text = String::new();
        for event in generation {
            match event {
                GenerateEvent::Started { .. } => {}
                GenerateEvent::Token { text: t, .. } | GenerateEvent::Text(t) => {
                    out.write_all(t.as_bytes())?;
                    out.flush()?;
                    text.push_str(&t);
                }
                GenerateEvent::Done(stats) => {
                    let usage = format!(
                        "{} tokens (prompt {}) in this process, {:.1} tok/s",
                        stats.completion_tokens,
                        stats.prompt_tokens,
                        stats.decode_tokens_per_sec()
                    );
                    return Ok((text, usage));
                }
                GenerateEvent::Error(e) => return Err(e.into()),
            }
        }
        bail!("the model thread stopped without finishing")
    }
}

/// One line of the user's, read and understood.
#[derive(Debug, PartialEq)]
enum Input {
    Message(String),
    Bye,
    Clear,
    SetSystem(String),
    SetParameter(String, String),
    Show(String),
    Help,
    Unknown(String),
}

const HELP: &str = "Available commands:
  /set system <text>             set the system message
  /set parameter <name> <value>  temperature, top_k, top_p, min_p, repeat_penalty, seed, num_predict, stop
  /show system | parameters      show the settings
  /clear                         forget the conversation so far
  /bye                           exit
  /?, /help                      this help
Use \"\"\" to begin and end a multi-line message.";

/// Reads the next input from `lines`: a `"""` line opens a message that runs to the line
/// ending in `"""`. None at the end of input.
fn read_input(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Result<Option<Input>> {
    let Some(line) = lines.next().transpose()? else {
        return Ok(None);
    };
    let trimmed = line.trim();
    if let Some(rest) = trimmed.strip_prefix("\"\"\"") {
        if let Some(one) = rest.strip_suffix("\"\"\"") {
            return Ok(Some(Input::Message(one.to_string())));
        }
        let mut text = rest.to_string();
        loop {
            let Some(next) = lines.next().transpose()? else {
                bail!("the input ended inside a \"\"\" message");
            };
            match next.trim_end().strip_suffix("\"\"\"") {
                Some(last) => {
                    text.push('\n');
                    text.push_str(last);
                    return Ok(Some(Input::Message(text.trim_start_matches('\n').into())));
                }
                None => {
                    text.push('\n');
                    text.push_str(&next);
                }
            }
        }
    }
    let Some(command) = trimmed.strip_prefix('/') else {
        return Ok(Some(Input::Message(line)));
    };
    let mut words = command.splitn(3, char::is_whitespace);
    let input = match (words.next(), words.next(), words.next()) {
        (Some("bye" | "exit"), None, None) => Input::Bye,
        (Some("clear"), None, None) => Input::Clear,
        (Some("?" | "help"), _, _) => Input::Help,
        (Some("set"), Some("system"), Some(text)) => Input::SetSystem(text.trim().into()),
        (Some("set"), Some("parameter"), Some(rest)) => match rest.trim().split_once(' ') {
            Some((name, value)) => Input::SetParameter(name.into(), value.trim().into()),
            None => Input::Unknown(format!("/{command} (usage: /set parameter <name> <value>)")),
        },
        (Some("show"), Some(what), None) => Input::Show(what.into()),
        _ => Input::Unknown(format!("/{command}")),
    };
    Ok(Some(input))
}

/// The messages a turn sends: the system message, the history, the new user message.
fn turn(system: Option<&str>, history: &[ChatMessage], user: &str) -> Vec<ChatMessage> {
    system
        .map(|s| ChatMessage::new("system", s))
        .into_iter()
        .chain(history.iter().cloned())
        .chain(std::iter::once(ChatMessage::new("user", user)))
        .collect()
}

pub fn run(config: &NodeConfig, args: RunArgs) -> Result<()> {
    let is_path = matches!(args.model.parse::<ModelRef>(), Ok(ModelRef::LocalPath(_)));
    let client = NodeClient::new(config);
    let mut answerer: Box<dyn Answerer> = if !is_path && client.health_checked()?.is_some() {
        Box::new(ViaNode {
            client,
            model: args.model.clone(),
        })
    } else {
        let path = crate::infer::model_path(config.data_dir.clone(), &args.model)?;
        let opts = LoadOptions {
            context_length: args.context,
            ..Default::default()
        };
        eprintln!("no node is running: loading {} in this process", args.model);
        Box::new(InProcess {
            model: CandleBackend.load(&path, &opts)?,
        })
    };
    let mut params = Params {
        temperature: args.temperature,
        top_k: None,
        top_p: None,
        min_p: None,
        repeat_penalty: 1.0,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: Vec::new(),
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    if let Some(prompt) = &args.prompt {
        let mut prompt = prompt.clone();
        if !stdin.is_terminal() {
            let mut piped = String::new();
            std::io::Read::read_to_string(&mut stdin.lock(), &mut piped)
                .context("reading stdin")?;
            if !piped.trim().is_empty() {
                prompt = format!("{prompt}\n\n{}", piped.trim_end());
            }
        }
        let messages = turn(args.system.as_deref(), &[], &prompt);
        let (_, usage) = answerer.answer(&messages, &params, &mut out)?;
        writeln!(out)?;
        if args.verbose {
            eprintln!("{usage}");
        }
        return Ok(());
    }
    let interactive = stdin.is_terminal();
    let mut system = args.system.clone();
    let mut history: Vec<ChatMessage> = Vec::new();
    let mut lines = stdin.lock().lines();
    if interactive {
        eprintln!("chatting with {} (/? for help, /bye to leave)", args.model);
    }
    loop {
        if interactive {
            write!(out, ">>> ")?;
            out.flush()?;
        }
        let Some(input) = read_input(&mut lines)? else {
            break;
        };
        match input {
            Input::Bye => break,
            Input::Help => println!("{HELP}"),
            Input::Clear => {
                history.clear();
                println!("Cleared the conversation.");
            }
            Input::SetSystem(text) => {
                system = Some(text);
                println!("Set the system message.");
            }
            Input::SetParameter(name, value) => match params.set(&name, &value) {
                Ok(()) => println!("Set parameter '{name}' to '{value}'."),
                Err(e) => eprintln!("error: {e}"),
            },
            Input::Show(what) => match what.as_str() {
                "system" => println!("{}", system.as_deref().unwrap_or("(no system message)")),
                "parameters" => print!("{}", params.show()),
                _ => eprintln!("error: /show system or /show parameters"),
            },
            Input::Unknown(command) => {
                eprintln!("Unknown command '{command}'. Type /? for help.");
            }
            Input::Message(text) if text.trim().is_empty() => {}
            Input::Message(text) => {
                let messages = turn(system.as_deref(), &history, &text);
                match answerer.answer(&messages, &params, &mut out) {
                    Ok((reply, usage)) => {
                        writeln!(out)?;
                        if args.verbose {
                            eprintln!("{usage}");
                        }
                        history.push(ChatMessage::new("user", text));
                        history.push(ChatMessage::new("assistant", reply));
                    }
                    // The turn is not kept: the user can retry it or change the settings.
                    Err(e) => {
                        writeln!(out)?;
                        eprintln!("error: {e:#}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// `rbee-node ps`: the models the running node holds in memory.
pub fn ps(config: &NodeConfig) -> Result<()> {
    let h = crate::node::running_health(config)?;
    println!(
        "{:<32} {:<12} {:>9}  {:<10} {:<24} IDLE",
        "NAME", "ID", "SIZE", "STATE", "PROCESSOR"
    );
    for m in h["models"].as_array().into_iter().flatten() {
        let s = &m["status"];
        let state = s["state"].as_str().unwrap_or("?");
        if !matches!(state, "loaded" | "loading") {
            continue;
        }
        let id = m["content_id"].as_str().unwrap_or("?");
        let (state, idle) = if state == "loaded" {
            let idle = if s["busy"].as_bool() == Some(true) {
                format!("busy: {} live, {} queued", s["live"], s["queue"])
            } else {
                format!("{:.0}s", s["idle_secs"].as_f64().unwrap_or(0.0))
            };
            (format!("{}/{} seqs", s["live"], s["max_live"]), idle)
        } else {
            ("loading".to_string(), "-".to_string())
        };
        println!(
            "{:<32} {:<12} {:>9}  {:<10} {:<24} {idle}",
            m["name"].as_str().unwrap_or("?"),
            &id[..id.len().min(12)],
            crate::output::bytes(s["bytes"].as_u64().unwrap_or(0)),
            state,
            s["runtime"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

/// `rbee-node stop <model>`: unloads it from the running node's memory (it stays on disk).
pub fn stop(config: &NodeConfig, model: &str) -> Result<()> {
    let client = NodeClient::new(config);
    if client.health_checked()?.is_none() {
        bail!(
            "no node answers at {}: nothing is loaded without one",
            config.api_addr
        );
    }
    let result = client.run_job(
        serde_json::json!({"operation": "model_unload", "model": model}),
        "unloading",
    )?;
    let name = result["model"].as_str().unwrap_or(model);
    if result["was_loaded"].as_bool() == Some(true) {
        println!("stopped {name}");
    } else {
        println!("{name} was not loaded");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(text: &str) -> Vec<Input> {
        let mut lines = text.lines().map(|l| Ok(l.to_string()));
        let mut got = Vec::new();
        while let Some(i) = read_input(&mut lines).expect("readable") {
            got.push(i);
        }
        got
    }

    #[test]
    fn commands_and_messages_are_told_apart() {
        assert_eq!(
            inputs(
                "hello\n/set system Be brief.\n/set parameter temperature 0\n/show parameters\n/clear\n/nope\n/?\n/bye"
            ),
            vec![
                Input::Message("hello".into()),
                Input::SetSystem("Be brief.".into()),
                Input::SetParameter("temperature".into(), "0".into()),
                Input::Show("parameters".into()),
                Input::Clear,
                Input::Unknown("/nope".into()),
                Input::Help,
                Input::Bye,
            ]
        );
    }

    #[test]
    fn triple_quotes_make_one_multi_line_message() {
        assert_eq!(
            inputs(
                "\"\"\"first\nsecond\nthird\"\"\"\n\"\"\"one line\"\"\"\n\"\"\"\nopened\n\"\"\""
            ),
            vec![
                Input::Message("first\nsecond\nthird".into()),
                Input::Message("one line".into()),
                Input::Message("opened\n".into()),
            ]
        );
        let mut open = "\"\"\"never closed\nstill going"
            .lines()
            .map(|l| Ok(l.to_string()));
        let err = read_input(&mut open).expect_err("unterminated");
        assert!(err.to_string().contains("ended inside"), "{err}");
    }

    #[test]
    fn parameters_use_ollama_names_and_refuse_the_unknown() {
        let mut p = Params {
            temperature: 0.8,
            top_k: None,
            top_p: None,
            min_p: None,
            repeat_penalty: 1.0,
            seed: None,
            max_tokens: 10,
            stop: vec![],
        };
        p.set("temperature", "0").expect("temperature");
        p.set("num_predict", "5").expect("num_predict");
        p.set("stop", "</s>").expect("stop");
        p.set("seed", "7").expect("seed");
        assert_eq!((p.temperature, p.max_tokens, p.seed), (0.0, 5, Some(7)));
        assert_eq!(p.stop, vec!["</s>".to_string()]);
        let e = p.set("mirostat", "1").expect_err("unknown");
        assert!(
            e.to_string().contains("unknown parameter `mirostat`"),
            "{e}"
        );
        let e = p.set("top_k", "many").expect_err("not a number");
        assert!(e.to_string().contains("`many` is not a valid value"), "{e}");
        assert!(p.show().contains("seed 7"));
    }

    #[test]
    fn a_turn_carries_the_system_message_and_the_history() {
        let history = vec![
            ChatMessage::new("user", "hi"),
            ChatMessage::new("assistant", "hello"),
        ];
        let m = turn(Some("Be brief."), &history, "again");
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(m[3].content, "again");
    }
}
