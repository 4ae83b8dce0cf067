//! The cost of constrained decoding: the same greedy generation on one model with no
//! constraint and with a JSON schema active, alternating, best of `rounds`; printed side by side:
//! decode tokens/s, the slowdown, and the grammar mask's cost per token (the time the
//! llguidance matcher takes to compute each token's mask over the whole vocabulary, measured
//! inside the scheduler).
//!
//! `scripts/bench-grammar [model.gguf]`, or
//! `cargo run --release -p rbee-infer --example bench_grammar -- <model> [tokens] [rounds]`

use std::path::Path;

use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::{
    Backend, CandleBackend, Constraint, GenerateEvent, GenerateRequest, GenerationStats,
    LoadOptions, LoadedModel, Prompt,
};
use rbee_infer::sampling::SamplingParams;

/// An object with a long free-text field (at least 1,000 characters), so the constrained run
/// writes as many tokens as the free one before the grammar can end.
const SCHEMA: &str = r#"{"type": "object", "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string", "minLength": 1000}}, "required": ["title", "story"], "additionalProperties": false}"#;

fn run(
    model: &dyn LoadedModel,
    n: usize,
    constraint: Option<Constraint>,
) -> Result<GenerationStats, Box<dyn std::error::Error>> {
    let mut params = SamplingParams::greedy(n);
    params.ignore_eos = true;
    params.constraint = constraint;
    let prompt = Prompt::Chat(vec![ChatMessage::new(
        "user",
        "Write a long story about a lighthouse keeper, as JSON with a title and the story.",
    )]);
    for event in model.generate(GenerateRequest { prompt, params })? {
        match event {
            GenerateEvent::Done(stats) => return Ok(stats),
            GenerateEvent::Error(e) => return Err(e.into()),
            _ => {}
        }
    }
    Err("generation ended without a result".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .ok_or("usage: bench_grammar <model> [tokens] [rounds]")?;
    let n: usize = args.get(2).map_or(Ok(128), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let opts = LoadOptions {
        context_length: Some(2048),
        prefix_reuse: false,
        ..Default::default()
    };
    let loaded = CandleBackend.load(Path::new(model), &opts)?;
    // Warm-up: the first constrained request builds the vocabulary's token trie.
    let warm = std::time::Instant::now();
    run(
        loaded.as_ref(),
        4,
        Some(Constraint::JsonSchema(SCHEMA.into())),
    )?;
    let first_secs = warm.elapsed().as_secs_f64();
    let (mut free_best, mut json_best, mut mask_us) = (0f64, 0f64, f64::MAX);
    let mut json_tokens = 0;
    for _ in 0..rounds {
        let free = run(loaded.as_ref(), n, None)?;
        let json = run(
            loaded.as_ref(),
            n,
            Some(Constraint::JsonSchema(SCHEMA.into())),
        )?;
        free_best = free_best.max(free.decode_tokens_per_sec());
        json_best = json_best.max(json.decode_tokens_per_sec());
        // Masks are computed for every sampled token, the first (after the prompt) included.
        mask_us = mask_us.min(json.mask_secs * 1e6 / json.completion_tokens.max(1) as f64);
        json_tokens = json.completion_tokens;
    }
    println!("model: {model}");
    println!("greedy, {n} tokens, best of {rounds} alternating rounds");
    println!("first constrained request (builds the token trie): {first_secs:.3} s");
    println!("{:<28} {:>10}", "run", "decode tok/s");
    println!("{:<28} {:>10.2}", "unconstrained", free_best);
    println!(
        "{:<28} {:>10.2}   ({json_tokens} tokens)",
        "JSON schema (llguidance)", json_best
    );
    println!(
        "slowdown: {:.1}%   mask cost: {mask_us:.0} µs/token",
        (1.0 - json_best / free_best) * 100.0
    );
    Ok(())
}
