//! What the first constrained request on a freshly loaded model costs it and the model's other
//! sequences: an unconstrained greedy stream starts right after the load; once it has written
//! `after` tokens, a request with a JSON schema arrives. Printed: the constrained request's
//! latency to its first token and to its end, and the unconstrained stream's longest gap
//! between two tokens (and its median, for scale). Best of nothing: each round loads the
//! model afresh, since only a fresh model has no grammar vocabulary yet.
//!
//! `cargo run --profile dev -p rbee-infer --example bench_grammar_first -- <model> [after] [rounds]`

use std::path::Path;
use std::time::{Duration, Instant};

use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::{
    Backend, CandleBackend, Constraint, GenerateEvent, GenerateRequest, LoadOptions, Prompt,
};
use rbee_infer::sampling::SamplingParams;

const SCHEMA: &str = r#"{"type": "object", "properties": {"title": {"type": "string", "maxLength": 40}}, "required": ["title"], "additionalProperties": false}"#;

fn request(n: usize, constraint: Option<Constraint>) -> GenerateRequest {
    let mut params = SamplingParams::greedy(n);
    params.ignore_eos = true;
    params.constraint = constraint;
    GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage::new(
            "user",
            "Write a long story about a lighthouse keeper.",
        )]),
        params,
    }
}

struct Round {
    load: Duration,
    first_token: Duration,
    done: Duration,
    max_gap: Duration,
    median_gap: Duration,
}

fn round(model: &Path, after: usize) -> Result<Round, Box<dyn std::error::Error>> {
    let opts = LoadOptions {
        context_length: Some(2048),
        prefix_reuse: false,
        ..Default::default()
    };
    let loading = Instant::now();
    let loaded = CandleBackend.load(model, &opts)?;
    let load = loading.elapsed();
    let free = loaded.generate(request(after + 96, None))?;
    let mut token_times = Vec::new();
    let mut constrained = None;
    let mut first_token = None;
    let mut done = None;
    for event in free {
        match event {
            GenerateEvent::Token { .. } => token_times.push(Instant::now()),
            GenerateEvent::Done(_) => break,
            GenerateEvent::Error(e) => return Err(e.into()),
            _ => {}
        }
        if token_times.len() == after && constrained.is_none() {
            let sent = Instant::now();
            let json = loaded.generate(request(8, Some(Constraint::JsonSchema(SCHEMA.into()))))?;
            // Read on its own thread, so the unconstrained stream is read as it comes.
            constrained = Some(std::thread::spawn(move || {
                let (mut first, mut end) = (None, None);
                for event in json {
                    match event {
                        GenerateEvent::Token { .. } if first.is_none() => {
                            first = Some(sent.elapsed());
                        }
                        GenerateEvent::Done(_) | GenerateEvent::Error(_) => {
                            end = Some(sent.elapsed());
                            break;
                        }
                        _ => {}
                    }
                }
                (first, end)
            }));
        }
    }
    if let Some(handle) = constrained {
        let (first, end) = handle.join().map_err(|_| "the reader panicked")?;
        first_token = first;
        done = end;
    }
    let mut gaps: Vec<Duration> = token_times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    Ok(Round {
        load,
        first_token: first_token.ok_or("the constrained request wrote no token")?,
        done: done.ok_or("the constrained request did not end")?,
        max_gap: gaps.last().copied().unwrap_or_default(),
        median_gap: gaps.get(gaps.len() / 2).copied().unwrap_or_default(),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .ok_or("usage: bench_grammar_first <model> [after] [rounds]")?;
    let after: usize = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    println!("model: {model}");
    println!(
        "a JSON-schema request arrives after {after} tokens of an unconstrained stream, on a fresh load"
    );
    println!(
        "{:>5} {:>8} {:>16} {:>12} {:>14} {:>14}",
        "round", "load s", "json 1st tok ms", "json end ms", "max gap ms", "median gap ms"
    );
    for r in 0..rounds {
        let x = round(Path::new(model), after)?;
        println!(
            "{:>5} {:>8.2} {:>16.0} {:>12.0} {:>14.0} {:>14.1}",
            r + 1,
            x.load.as_secs_f64(),
            x.first_token.as_secs_f64() * 1e3,
            x.done.as_secs_f64() * 1e3,
            x.max_gap.as_secs_f64() * 1e3,
            x.median_gap.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
