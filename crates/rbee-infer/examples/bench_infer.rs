//! One inference run through the engine, as a user gets it (queue, model thread, sampler),
//! printing a JSON line: load time, prefill and decode speed, peak RSS, the greedy token ids.
//! Driven by `scripts/bench-infer`, which runs llama.cpp on the same file beside it.
//!
//! `cargo run --release -p rbee-infer --example bench_infer -- <model> <prompt-file> <n>`
//!
//! The prompt file holds either token ids (whitespace-separated, BOS included: the bench passes
//! llama.cpp's own ids so both engines see exactly the same input) or, with a `text:` first
//! line, text for rbee's tokenizer.

use std::path::Path;

use rbee_infer::engine::{
    Backend, CandleBackend, GenerateEvent, GenerateRequest, LoadOptions, Prompt,
};
use rbee_infer::sampling::SamplingParams;

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, prompt_file, n] = args.as_slice() else {
        return Err("usage: bench_infer <model> <prompt-file> <tokens>".into());
    };
    let prompt = std::fs::read_to_string(prompt_file)?;
    let prompt = match prompt.strip_prefix("text:") {
        Some(text) => Prompt::Text(text.trim_start_matches('\n').to_owned()),
        None => Prompt::Tokens(
            prompt
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .map_err(|e| format!("{prompt_file}: not a list of token ids ({e})"))?,
        ),
    };
    let n: usize = n.parse()?;
    let opts = LoadOptions {
        context_length: Some(2048),
        ..Default::default()
    };
    let loaded = CandleBackend.load(Path::new(model), &opts)?;
    let mut params = SamplingParams::greedy(n);
    params.ignore_eos = true;
    let generation = loaded.generate(GenerateRequest { prompt, params })?;
    let mut ids = Vec::new();
    for event in generation {
        match event {
            GenerateEvent::Token { id, .. } => ids.push(id),
            GenerateEvent::Done(stats) => {
                println!(
                    "{{\"load_s\": {:.4}, \"prompt_tokens\": {}, \"prefill_tok_s\": {:.2}, \"decode_tok_s\": {:.2}, \"completion_tokens\": {}, \"peak_rss\": {}, \"tokens\": {:?}}}",
                    loaded.info().load_secs,
                    stats.prompt_tokens,
                    stats.prompt_tokens as f64 / stats.prefill_secs,
                    stats.decode_tokens_per_sec(),
                    stats.completion_tokens,
                    peak_rss_bytes(),
                    ids
                );
                return Ok(());
            }
            GenerateEvent::Error(e) => return Err(e.into()),
            _ => {}
        }
    }
    Err("generation ended without a result".into())
}
