//! Constrained decoding and logprobs in the batched engine, on a tiny random-weight Qwen-style
//! model with a tool-aware chat template (a random model writes garbage unless the grammar
//! forces it, so a valid output proves the mask): each sequence of a mixed batch keeps its own
//! constraint or none, and gets exactly the tokens it gets alone.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::{
    Backend, CandleBackend, Constraint, FinishReason, GenerateEvent, GenerateRequest, LoadOptions,
    LoadedModel, Prompt, TokenLogprob,
};
use rbee_infer::sampling::SamplingParams;
use rbee_infer::tools::parse_tool_calls;
use rbee_proto::generation::{ChatOptions, ToolDef};
use serde_json::{Value, json};

/// tiny-qwen2 (byte-level BPE, random weights) with Qwen 2.5's tool-calling chat template,
/// and a context long enough for the template's tool instructions in byte-sized tokens.
fn tool_model(dir: &Path) -> PathBuf {
    let template = std::fs::read_to_string(reference_dir().join("qwen2.5-tools.jinja")).unwrap();
    let mut w = rbee_format::gguf::GgufWriter::copy_of(
        &reference_dir().join("tiny-qwen2.gguf"),
        &["tokenizer.chat_template", "qwen2.context_length"],
    )
    .unwrap();
    w.add("tokenizer.chat_template", template)
        .add("qwen2.context_length", 4096u32);
    let dst = dir.join("tiny-qwen2-tools.gguf");
    w.write_file(&dst).unwrap();
    dst
}

fn load(dir: &Path) -> Arc<dyn LoadedModel> {
    let opts = LoadOptions {
        prefix_reuse: false,
        ..LoadOptions::default()
    };
    CandleBackend.load(&tool_model(dir), &opts).unwrap()
}

fn tools() -> Vec<ToolDef> {
    vec![
        ToolDef {
            name: "set_light".into(),
            description: "Turn a light on or off".into(),
            parameters: json!({"type": "object", "properties": {
                "room": {"enum": ["kitchen", "hall"]},
                "on": {"type": "boolean"}},
                "required": ["room", "on"], "additionalProperties": false})
            .to_string(),
        },
        ToolDef {
            name: "get_time".into(),
            description: String::new(),
            parameters: String::new(),
        },
    ]
}

const COLOUR: &str = r#"{"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["colour", "n"], "additionalProperties": false}"#;

/// The four sequences of the mixed batch: a JSON schema (greedy), free text, a second schema
/// (sampled), a required tool call over a chat.
fn requests() -> Vec<GenerateRequest> {
    let schema = GenerateRequest {
        prompt: Prompt::Text("Pick a colour:".into()),
        params: SamplingParams {
            constraint: Some(Constraint::JsonSchema(COLOUR.into())),
            logprobs: Some(3),
            ..SamplingParams::greedy(64)
        },
    };
    let free = GenerateRequest {
        prompt: Prompt::Text("the quick brown".into()),
        params: SamplingParams {
            ignore_eos: true,
            logprobs: Some(0),
            ..SamplingParams::greedy(12)
        },
    };
    let sampled = GenerateRequest {
        prompt: Prompt::Text("ok?".into()),
        params: SamplingParams {
            temperature: 0.9,
            seed: Some(5),
            max_tokens: 64,
            constraint: Some(Constraint::JsonSchema(
                json!({"type": "object", "properties": {"ok": {"type": "boolean"}},
                       "required": ["ok"], "additionalProperties": false})
                .to_string(),
            )),
            ..SamplingParams::default()
        },
    };
    let call = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage::new("user", "Kitchen light on.")]),
        params: SamplingParams {
            constraint: Some(Constraint::ToolCall { only: None }),
            chat: ChatOptions {
                tools: tools(),
                template_kwargs: Vec::new(),
            },
            ..SamplingParams::greedy(96)
        },
    };
    vec![schema, free, sampled, call]
}

struct Out {
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: FinishReason,
}

fn read(generation: rbee_infer::engine::Generation) -> Out {
    let (mut ids, mut text, mut logprobs) = (Vec::new(), String::new(), Vec::new());
    for event in generation {
        match event {
            GenerateEvent::Token {
                id,
                text: t,
                logprob,
            } => {
                ids.push(id);
                text.push_str(&t);
                logprobs.extend(logprob);
            }
            GenerateEvent::Text(t) => text.push_str(&t),
            GenerateEvent::Done(stats) => {
                return Out {
                    ids,
                    text,
                    logprobs,
                    finish: stats.finish_reason,
                };
            }
            GenerateEvent::Error(e) => panic!("{e}"),
            GenerateEvent::Started { .. } => {}
        }
    }
    panic!("no Done")
}

fn check_colour(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(
        ["red", "green", "blue"].contains(&v["colour"].as_str().unwrap()),
        "{v}"
    );
    assert!((0..=9).contains(&v["n"].as_i64().unwrap()), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
}

#[test]
fn each_sequence_of_a_mixed_batch_keeps_its_own_constraint() {
    let tmp = tempfile::tempdir().unwrap();
    let model = load(tmp.path());
    let alone: Vec<Out> = requests()
        .into_iter()
        .map(|r| read(model.generate(r).unwrap()))
        .collect();
    let together: Vec<Out> = std::thread::scope(|s| {
        let handles: Vec<_> = requests()
            .into_iter()
            .map(|r| {
                let g = model.generate(r).unwrap();
                s.spawn(move || read(g))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.ids, t.ids, "sequence {i}: batched differs from alone");
    }
    for out in [&alone, &together] {
        // The schema's output is complete and valid, and ends because the grammar did.
        check_colour(&out[0].text);
        assert_eq!(out[0].finish, FinishReason::Stop);
        // Free text is whatever the random model writes: not JSON, and the full budget.
        assert_eq!(out[1].ids.len(), 12);
        assert!(serde_json::from_str::<Value>(&out[1].text).is_err());
        let ok: Value = serde_json::from_str(&out[2].text).unwrap();
        assert!(ok["ok"].is_boolean(), "{ok}");
        let (content, calls) = parse_tool_calls(&out[3].text, &tools())
            .unwrap_or_else(|| panic!("not a tool call: {:?}", out[3].text));
        assert_eq!(
            (content.as_str(), calls.len()),
            ("", 1),
            "{:?}",
            out[3].text
        );
        if calls[0].name == "set_light" {
            let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
            assert!(["kitchen", "hall"].contains(&args["room"].as_str().unwrap()));
            assert!(args["on"].is_boolean());
        } else {
            assert_eq!(calls[0].name, "get_time");
        }
    }
}

#[test]
fn logprobs_are_the_log_softmax_of_the_masked_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let model = load(tmp.path());
    let mut r = requests();
    let free = read(model.generate(r.remove(1)).unwrap());
    let schema = read(model.generate(r.remove(0)).unwrap());
    assert_eq!(free.logprobs.len(), free.ids.len());
    for lp in &free.logprobs {
        assert!(lp.logprob <= 0.0 && lp.top.is_empty(), "{lp:?}");
    }
    // Greedy: the sampled token is the most likely one, so its log-probability is the top
    // alternative's; the alternatives are sorted and are only tokens the grammar allows.
    assert_eq!(schema.logprobs.len(), schema.ids.len());
    let mut allowed_mass_is_all = 0;
    for lp in &schema.logprobs {
        assert!(!lp.top.is_empty() && lp.top.len() <= 3, "{lp:?}");
        assert_eq!(lp.top[0].logprob, lp.logprob, "{lp:?}");
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(lp.top.iter().all(|t| t.logprob.is_finite()));
        // Where the grammar allows one token only (a forced `"colour": "`), it has all the
        // probability: the masked tokens count for nothing.
        if lp.top.len() == 1 {
            assert!(lp.logprob.abs() < 1e-5, "{lp:?}");
            allowed_mass_is_all += 1;
        }
    }
    assert!(allowed_mass_is_all > 0, "some tokens are forced");
}

#[test]
fn a_bad_schema_is_refused_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let model = load(tmp.path());
    for (constraint, want) in [
        (Constraint::JsonSchema("{not json".into()), "not valid JSON"),
        (
            Constraint::JsonSchema(r#"{"type": "no-such-type"}"#.into()),
            "does not compile",
        ),
        (Constraint::ToolCall { only: None }, "no tools"),
    ] {
        let g = model
            .generate(GenerateRequest {
                prompt: Prompt::Text("x".into()),
                params: SamplingParams {
                    constraint: Some(constraint),
                    ..SamplingParams::greedy(4)
                },
            })
            .map(|g| {
                g.into_iter().find_map(|e| match e {
                    GenerateEvent::Error(e) => Some(e.to_string()),
                    _ => None,
                })
            });
        let msg = match g {
            Ok(Some(m)) => m,
            Err(e) => e.to_string(),
            Ok(None) => panic!("{want}: accepted"),
        };
        assert!(msg.contains(want), "{msg}");
    }
}
