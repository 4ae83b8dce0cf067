//! Sentences per second of an embedding model, as a node's clients get them: each batch is one
//! `encode` request of N texts (tokenized, packed, pooled and normalised by the engine). Prints
//! one JSON line per batch size; driven by `scripts/bench-embed`, which runs llama.cpp beside
//! it on the same sentences.
//!
//! `bench_embed <model folder or GGUF> <sentences.json> <batch sizes, comma-separated> <secs>`
//!
//! `sentences.json`: a list of strings. Each batch size N encodes the first N sentences once to
//! warm up, then repeatedly for `secs` seconds; the line gives the mean rate:
//! `{"batch": N, "sentences_per_sec": …, "runs": …, "tokens": …}`. With `vectors` as the batch
//! sizes, it prints `{"vectors": […]}` of all the sentences instead (to compare engines).
//! Threads: candle's pool (`RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS`).

use std::time::Instant;

use rbee_infer::engine::{Backend, CandleBackend, EncodeRequest, LoadOptions, Prompt};
use serde_json::json;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, sentences, batches, secs] = args.as_slice() else {
        return Err("usage: bench_embed <model> <sentences.json> <batches> <secs>".into());
    };
    let sentences: Vec<String> = serde_json::from_str(&std::fs::read_to_string(sentences)?)?;
    let secs: f64 = secs.parse()?;
    let model = CandleBackend.load(model.as_ref(), &LoadOptions::default())?;
    eprintln!("{}", model.info().runtime);
    if batches == "vectors" {
        let inputs = sentences.into_iter().map(Prompt::Text).collect();
        let request = EncodeRequest {
            inputs,
            normalize: true,
            truncate: true,
        };
        let vectors = model.encode(request)?.wait()?.vectors;
        println!("{}", json!({ "vectors": vectors }));
        return Ok(());
    }
    for n in batches.split(',') {
        let n: usize = n.parse()?;
        let request = || EncodeRequest {
            inputs: sentences
                .iter()
                .take(n)
                .cloned()
                .map(Prompt::Text)
                .collect(),
            normalize: true,
            truncate: true,
        };
        let tokens = model.encode(request())?.wait()?.prompt_tokens;
        let started = Instant::now();
        let mut runs = 0;
        while runs == 0 || started.elapsed().as_secs_f64() < secs {
            model.encode(request())?.wait()?;
            runs += 1;
        }
        let per_run = started.elapsed().as_secs_f64() / runs as f64;
        println!(
            "{}",
            json!({"batch": n, "sentences_per_sec": n as f64 / per_run, "runs": runs,
                   "tokens": tokens})
        );
    }
    Ok(())
}
