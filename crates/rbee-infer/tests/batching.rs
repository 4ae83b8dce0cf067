//! Continuous batching on the real demo model: many sequences at once give each exactly the
//! tokens it gets alone; they join and leave between steps; the KV budget queues, then
//! refuses; a follow-up chat turn reuses its history.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_infer::InferError;
use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::{
    Backend, CandleBackend, FinishReason, GenerateEvent, GenerateRequest, LoadOptions, LoadedModel,
    Prompt,
};
use rbee_infer::sampling::SamplingParams;

fn load(opts: LoadOptions) -> Option<Arc<dyn LoadedModel>> {
    Some(CandleBackend.load(&demo_model()?, &opts).unwrap())
}

/// Sampled, seeded, of different lengths: each request has its own parameters.
fn request(i: usize) -> GenerateRequest {
    let topics = [
        "bees",
        "rivers",
        "compilers",
        "bread",
        "glaciers",
        "chess",
        "lighthouses",
        "owls",
    ];
    let mut params = SamplingParams {
        temperature: 0.7 + 0.05 * i as f32,
        seed: Some(1000 + i as u64),
        max_tokens: 12 + 3 * i,
        ..SamplingParams::default()
    };
    params.ignore_eos = true;
    GenerateRequest {
        prompt: Prompt::Text(format!(
            "Write a short paragraph about {}. {}",
            topics[i % topics.len()],
            "Be concrete. ".repeat(i)
        )),
        params,
    }
}

/// A prompt longer than one prefill chunk (512 tokens): it is computed over several steps
/// while the others decode.
fn long_request() -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text(format!(
            "Summarise this log in one line. {}",
            (0..160)
                .map(|i| format!("line {i}: ok;"))
                .collect::<String>()
        )),
        params: SamplingParams::greedy(10),
    }
}

fn alone(model: &dyn LoadedModel, request: GenerateRequest) -> Vec<u32> {
    collect(model.generate(request).unwrap()).unwrap().0
}

#[test]
fn eight_concurrent_seeded_requests_give_exactly_their_sequential_outputs() {
    // No prefix reuse: every run computes its whole prompt, alone or batched.
    let Some(model) = load(LoadOptions {
        prefix_reuse: false,
        ..LoadOptions::default()
    }) else {
        return;
    };
    assert_eq!(model.info().max_sequences, 8);
    let sequential: Vec<Vec<u32>> = (0..8).map(|i| alone(model.as_ref(), request(i))).collect();
    let concurrent: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let generation = model.generate(request(i)).unwrap();
                s.spawn(move || collect(generation).unwrap().0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (c, s)) in concurrent.iter().zip(&sequential).enumerate() {
        assert_eq!(c.len(), 12 + 3 * i);
        assert_eq!(
            c, s,
            "request {i}: batched output differs from its run alone"
        );
    }
    // They really ran together: eight different outputs, all at once.
    assert!(concurrent.windows(2).all(|w| w[0] != w[1]));
}

#[test]
fn a_request_joining_mid_decode_leaves_the_others_unchanged() {
    let Some(model) = load(LoadOptions {
        prefix_reuse: false,
        ..LoadOptions::default()
    }) else {
        return;
    };
    let expected: Vec<Vec<u32>> = (0..4).map(|i| alone(model.as_ref(), request(i))).collect();
    let long_alone = alone(model.as_ref(), long_request());
    let mut running: Vec<_> = (0..4)
        .map(|i| model.generate(request(i)).unwrap())
        .collect();
    // Every one of the four is decoding before the newcomer arrives.
    let mut heads: Vec<Vec<u32>> = vec![Vec::new(); 4];
    for (g, head) in running.iter_mut().zip(&mut heads) {
        for event in g.by_ref() {
            if let GenerateEvent::Token { id, .. } = event {
                head.push(id);
                if head.len() == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(model.activity().live, 4);
    let newcomer = model.generate(long_request()).unwrap();
    let results: Vec<Vec<u32>> = running
        .into_iter()
        .zip(heads)
        .map(|(g, mut head)| {
            head.extend(collect(g).unwrap().0);
            head
        })
        .collect();
    assert_eq!(results, expected, "a joining request changed the others");
    let (joined, stats) = collect(newcomer).unwrap();
    assert!(stats.prompt_tokens > 512, "{}", stats.prompt_tokens);
    assert_eq!(
        joined, long_alone,
        "the joining request differs from its run alone"
    );
}

#[test]
fn cancelling_a_sequence_mid_batch_frees_its_slot_for_a_waiting_one() {
    let Some(model) = load(LoadOptions {
        max_sequences: 2,
        prefix_reuse: false,
        ..LoadOptions::default()
    }) else {
        return;
    };
    let endless = || {
        let mut params = SamplingParams::greedy(4000);
        params.ignore_eos = true;
        GenerateRequest {
            prompt: Prompt::Text("Count: 1, 2, 3,".into()),
            params,
        }
    };
    let mut a = model.generate(endless()).unwrap().peekable();
    let mut b = model.generate(endless()).unwrap().peekable();
    assert!(a.peek().is_some() && b.peek().is_some());
    let waiting = model.generate(request(0)).unwrap();
    let busy = model.activity();
    assert_eq!((busy.live, busy.queued), (2, 1), "{busy:?}");
    drop(a);
    // The waiting request takes the freed slot and finishes while `b` still runs.
    let started = Instant::now();
    let (ids, stats) = collect(waiting).unwrap();
    assert_eq!(ids, alone_of(&model, request(0)));
    assert_eq!(stats.finish_reason, FinishReason::Length);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(b.next().is_some(), "the other sequence kept running");
    let now = model.activity();
    assert!(now.live <= 2 && now.queued == 0, "{now:?}");
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !model.activity().is_idle() {
        assert!(Instant::now() < deadline, "{:?}", model.activity());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alone_of(model: &Arc<dyn LoadedModel>, request: GenerateRequest) -> Vec<u32> {
    alone(model.as_ref(), request)
}

#[test]
fn the_kv_budget_running_out_queues_then_refuses_with_a_clear_message() {
    // Room for one worst case (prompt + max_tokens ≤ 256 positions) though four slots exist.
    let Some(model) = load(LoadOptions {
        context_length: Some(256),
        kv_budget_tokens: Some(256),
        max_sequences: 4,
        queue_capacity: 1,
        prefix_reuse: false,
        ..LoadOptions::default()
    }) else {
        return;
    };
    assert_eq!(model.info().kv_budget_tokens, 256);
    let big = || {
        let mut params = SamplingParams::greedy(200);
        params.ignore_eos = true;
        GenerateRequest {
            prompt: Prompt::Text("Tell a long story.".into()),
            params,
        }
    };
    let mut first = model.generate(big()).unwrap().peekable();
    assert!(first.peek().is_some());
    // A free slot but no KV room: it waits rather than fails.
    let second = model.generate(big()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let busy = model.activity();
    assert_eq!((busy.live, busy.queued), (1, 1), "{busy:?}");
    // The queue behind it is one deep: it fills, then the next is refused, saying why. (The
    // model thread takes the second off the queue between steps; a loaded machine can make
    // that late, so wait for the room rather than assume it.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let third = loop {
        match model.generate(big()) {
            Ok(g) => break g,
            Err(InferError::QueueFull { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let err = model.generate(big()).unwrap_err();
    assert!(
        matches!(err, InferError::QueueFull { capacity: 1 }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("KV cache budget") && msg.contains("retry"),
        "{msg}"
    );
    assert_eq!(err.error_type(), "overloaded");
    // Nothing is lost: the waiting ones run once room frees.
    drop(first);
    drop(third);
    let (ids, stats) = collect(second).unwrap();
    assert_eq!(
        (ids.len(), stats.finish_reason),
        (200, FinishReason::Length)
    );
}

#[test]
fn a_follow_up_chat_turn_reports_its_history_as_cached_tokens() {
    let Some(model) = load(LoadOptions::default()) else {
        return;
    };
    let system = ChatMessage::new(
        "system",
        "You are a concise assistant for a home lab. Answer in one sentence, name concrete \
         tools, and never invent version numbers you are not sure of.",
    );
    let first_turn = vec![
        system.clone(),
        ChatMessage::new("user", "What is a reverse proxy?"),
    ];
    let generation = model
        .generate(GenerateRequest {
            prompt: Prompt::Chat(first_turn.clone()),
            params: SamplingParams::greedy(16),
        })
        .unwrap();
    let mut answer = String::new();
    let mut stats = None;
    for event in generation {
        match event {
            GenerateEvent::Token { text, .. } => answer.push_str(&text),
            GenerateEvent::Text(text) => answer.push_str(&text),
            GenerateEvent::Done(s) => stats = Some(s),
            GenerateEvent::Error(e) => panic!("{e}"),
            GenerateEvent::Started { .. } => {}
        }
    }
    let first = stats.unwrap();
    assert_eq!(first.cached_tokens, 0, "nothing was cached before");
    assert!(first.prompt_tokens >= 32, "{}", first.prompt_tokens);
    let mut second_turn = first_turn;
    second_turn.push(ChatMessage::new("assistant", answer));
    second_turn.push(ChatMessage::new("user", "And a load balancer?"));
    let (_, second) = collect(
        model
            .generate(GenerateRequest {
                prompt: Prompt::Chat(second_turn),
                params: SamplingParams::greedy(8),
            })
            .unwrap(),
    )
    .unwrap();
    // At least the whole first prompt comes from the cache; the rest is computed.
    assert!(
        second.cached_tokens >= first.prompt_tokens && second.cached_tokens < second.prompt_tokens,
        "{} cached of {} (first prompt {})",
        second.cached_tokens,
        second.prompt_tokens,
        first.prompt_tokens
    );
    // A different conversation shares only the system prompt, and reuses that much.
    let (_, other) = collect(
        model
            .generate(GenerateRequest {
                prompt: Prompt::Chat(vec![system, ChatMessage::new("user", "What is DNS?")]),
                params: SamplingParams::greedy(4),
            })
            .unwrap(),
    )
    .unwrap();
    assert!(
        other.cached_tokens >= 32 && other.cached_tokens < first.prompt_tokens,
        "{} cached of {}",
        other.cached_tokens,
        other.prompt_tokens
    );
}

/// The grammar vocabulary (llguidance's token trie over Gemma's 262k tokens, about a second to
/// build) is built off the model thread as the model loads: a constrained request that arrives
/// first waits for it without holding up a request that came after it, then runs, valid.
#[test]
fn a_constrained_request_waiting_for_the_grammar_holds_nothing_up() {
    let Some(model) = load(LoadOptions {
        context_length: Some(1024),
        ..LoadOptions::default()
    }) else {
        return;
    };
    // Right after the load, before the vocabulary can be ready.
    let mut json_params = SamplingParams::greedy(48);
    json_params.constraint = Some(rbee_infer::engine::Constraint::JsonSchema(
        r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"], "additionalProperties": false}"#.into(),
    ));
    let json = model
        .generate(GenerateRequest {
            prompt: Prompt::Chat(vec![ChatMessage::new("user", "A cat as JSON.")]),
            params: json_params,
        })
        .unwrap();
    let free = model
        .generate(GenerateRequest {
            prompt: Prompt::Text("The sea is".into()),
            params: SamplingParams::greedy(2),
        })
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for event in json {
            match event {
                GenerateEvent::Started { .. } => tx.send(Instant::now()).unwrap(),
                GenerateEvent::Token { text: t, .. } | GenerateEvent::Text(t) => text.push_str(&t),
                GenerateEvent::Done(stats) => return (text, stats.finish_reason),
                GenerateEvent::Error(e) => panic!("the constrained request failed: {e}"),
            }
        }
        panic!("the constrained request ended without a result");
    });
    let (ids, stats) = collect(free).unwrap();
    let free_done = Instant::now();
    assert_eq!((ids.len(), stats.finish_reason), (2, FinishReason::Length));
    let (text, finish) = reader.join().unwrap();
    let json_started = rx.recv().unwrap();
    // Before, the first constrained request built the trie on the model thread: the request
    // behind it got nothing until then.
    assert!(
        free_done < json_started,
        "the unconstrained request waited for the grammar vocabulary ({:?} after the constrained one started)",
        free_done - json_started
    );
    let value: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    assert!(value["name"].is_string(), "{text}");
    assert_eq!(finish, FinishReason::Stop);
}
