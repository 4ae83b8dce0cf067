//! Concurrent streams through one loaded model, as users of a node get them: every stream is
//! its own `generate` call read on its own thread, and the engine batches them. Prints JSON
//! lines; driven by `scripts/bench-batch`, which runs llama.cpp's batched decode beside it.
//!
//! `bench_batch <model.gguf> <prompts.json> <gen_tokens> <threads>`
//!
//! `prompts.json`: `{"streams": [1, 2, 4, 8, 16], "prompts": [[ids…], …],
//! "followup_history": [ids…], "followup_turn": [ids…]}` (llama.cpp's token ids, BOS included,
//! so both engines read the same input). Lines printed:
//! - `{"kind":"streams", "streams":N, "aggregate_decode_tok_s", "ttft_p50_ms", "ttft_p99_ms",
//!   "wall_s"}` for each N: N streams submitted at once, `gen_tokens` greedy tokens each;
//!   aggregate decode = tokens after each stream's first over the time from the last first
//!   token to the last token (the decode phase, as llama.cpp's side measures it);
//! - `{"kind":"join", "idle_ttft_ms", "join_ttft_ms"}`: one request's TTFT alone, and arriving
//!   while seven others decode (median of three each);
//! - `{"kind":"followup", "first_ttft_ms", "followup_ttft_ms", "history_tokens",
//!   "cached_tokens"}`: a short first turn, and the next turn of a conversation whose history
//!   was computed before (prefix reuse).
//!
//! `RBEE_BENCH_STREAMS_ONLY=1` stops after the streams runs (to profile them alone).
//!
//! The streams and join runs load the model with prefix reuse off, so that repeating a prompt
//! across runs measures computation, not the cache; the follow-up run loads it with reuse on.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use rbee_infer::engine::{
    Backend, CandleBackend, GenerateEvent, GenerateRequest, LoadOptions, LoadedModel, Prompt,
};
use rbee_infer::sampling::SamplingParams;
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error>;

/// What one stream saw, in seconds from when it was submitted.
struct StreamTimes {
    submitted: Instant,
    first: f64,
    last: f64,
    tokens: usize,
    cached: usize,
}

/// Submits a request (on the calling thread, so requests submitted in a loop arrive together,
/// as llama.cpp's side gets its prompts in one batch) and reads it to the end on a thread of
/// its own; `first_token` hears when its first token arrived.
fn spawn_stream(
    model: &Arc<dyn LoadedModel>,
    prompt: Vec<u32>,
    gen_tokens: usize,
    first_token: Option<mpsc::Sender<()>>,
) -> std::thread::JoinHandle<Result<StreamTimes, String>> {
    let mut params = SamplingParams::greedy(gen_tokens);
    params.ignore_eos = true;
    let submitted = Instant::now();
    let generation = model
        .generate(GenerateRequest {
            prompt: Prompt::Tokens(prompt),
            params,
        })
        .map_err(|e| e.to_string());
    std::thread::spawn(move || {
        let generation = generation?;
        let mut times = StreamTimes {
            submitted,
            first: 0.0,
            last: 0.0,
            tokens: 0,
            cached: 0,
        };
        for event in generation {
            match event {
                GenerateEvent::Token { .. } => {
                    times.last = submitted.elapsed().as_secs_f64();
                    if times.tokens == 0 {
                        times.first = times.last;
                        if let Some(tx) = &first_token {
                            let _ = tx.send(());
                        }
                    }
                    times.tokens += 1;
                }
                GenerateEvent::Done(stats) => {
                    times.cached = stats.cached_tokens;
                    return Ok(times);
                }
                GenerateEvent::Error(e) => return Err(e.to_string()),
                _ => {}
            }
        }
        Err("the generation ended without a result".into())
    })
}

fn join_all(
    handles: Vec<std::thread::JoinHandle<Result<StreamTimes, String>>>,
) -> Result<Vec<StreamTimes>, Error> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| Error::from("a stream thread panicked"))?
                .map_err(Error::from)
        })
        .collect()
}

/// The `q` quantile (nearest rank) of `xs`.
fn quantile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

fn median(mut xs: Vec<f64>) -> f64 {
    quantile(&mut xs, 0.5)
}

fn load(
    path: &str,
    max_sequences: usize,
    prefix_reuse: bool,
) -> Result<Arc<dyn LoadedModel>, Error> {
    let opts = LoadOptions {
        context_length: Some(2048),
        max_sequences,
        queue_capacity: 64,
        prefix_reuse,
        ..Default::default()
    };
    Ok(CandleBackend.load(Path::new(path), &opts)?)
}

fn streams(
    model: &Arc<dyn LoadedModel>,
    prompts: &[Vec<u32>],
    gen_tokens: usize,
) -> Result<Value, Error> {
    let started = Instant::now();
    let handles = prompts
        .iter()
        .map(|p| spawn_stream(model, p.clone(), gen_tokens, None))
        .collect();
    let times = join_all(handles)?;
    let wall = started.elapsed().as_secs_f64();
    let at = |t: &StreamTimes, secs: f64| (t.submitted - started).as_secs_f64() + secs;
    let decode_from = times.iter().map(|t| at(t, t.first)).fold(0.0, f64::max);
    let decode_to = times.iter().map(|t| at(t, t.last)).fold(0.0, f64::max);
    let decoded: usize = times.iter().map(|t| t.tokens.saturating_sub(1)).sum();
    let mut ttft: Vec<f64> = times.iter().map(|t| t.first * 1e3).collect();
    Ok(json!({
        "kind": "streams",
        "streams": prompts.len(),
        "aggregate_decode_tok_s": decoded as f64 / (decode_to - decode_from),
        "ttft_p50_ms": quantile(&mut ttft, 0.5),
        "ttft_p99_ms": quantile(&mut ttft, 0.99),
        "wall_s": wall,
    }))
}

/// One request's TTFT with the model idle, and arriving while seven others decode.
fn join(
    model: &Arc<dyn LoadedModel>,
    prompts: &[Vec<u32>],
    gen_tokens: usize,
) -> Result<Value, Error> {
    let [others @ .., newcomer] = &prompts[..8] else {
        return Err("the join run needs 8 prompts".into());
    };
    let mut idle = Vec::new();
    let mut joined = Vec::new();
    for _ in 0..3 {
        let alone = join_all(vec![spawn_stream(model, newcomer.clone(), 2, None)])?;
        idle.push(alone[0].first * 1e3);
        let (tx, rx) = mpsc::channel();
        // Long enough that all seven still decode when the newcomer arrives and finishes.
        let running: Vec<_> = others
            .iter()
            .map(|p| spawn_stream(model, p.clone(), gen_tokens * 4, Some(tx.clone())))
            .collect();
        for _ in others {
            rx.recv()?;
        }
        let late = join_all(vec![spawn_stream(model, newcomer.clone(), 2, None)])?;
        joined.push(late[0].first * 1e3);
        join_all(running)?;
    }
    Ok(json!({"kind": "join", "idle_ttft_ms": median(idle), "join_ttft_ms": median(joined)}))
}

/// A first turn (short prompt, nothing cached) against the next turn of a conversation whose
/// history is in the cache.
fn followup(path: &str, history: &[u32], turn: &[u32]) -> Result<Value, Error> {
    let model = load(path, 8, true)?;
    let mut first = Vec::new();
    let mut next = Vec::new();
    let mut cached = 0;
    for round in 0..3u32 {
        // Distinct per round so that no first turn finds an earlier one cached.
        let mut fresh = turn.to_vec();
        fresh.rotate_left(1 + round as usize);
        first.push(join_all(vec![spawn_stream(&model, fresh, 2, None)])?[0].first * 1e3);
        // The conversation so far, computed once (its answer is not part of the history).
        let mut convo = history.to_vec();
        convo.rotate_left(round as usize + 1);
        join_all(vec![spawn_stream(&model, convo.clone(), 1, None)])?;
        convo.extend_from_slice(turn);
        let t = join_all(vec![spawn_stream(&model, convo, 2, None)])?;
        next.push(t[0].first * 1e3);
        cached = t[0].cached;
    }
    Ok(json!({
        "kind": "followup",
        "first_ttft_ms": median(first),
        "followup_ttft_ms": median(next),
        "history_tokens": history.len(),
        "cached_tokens": cached,
    }))
}

fn ids(v: &Value) -> Result<Vec<u32>, Error> {
    v.as_array()
        .ok_or("expected a list of token ids")?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| Error::from("a token id is not a u32"))
        })
        .collect()
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, prompts_file, gen_tokens, threads] = args.as_slice() else {
        return Err("usage: bench_batch <model.gguf> <prompts.json> <gen_tokens> <threads>".into());
    };
    // The kernels' thread pool is sized from CANDLE_NUM_THREADS at start-up: the caller sets
    // it, and a mismatch would compare different thread counts without saying so.
    if std::env::var("CANDLE_NUM_THREADS").ok().as_deref() != Some(threads.as_str()) {
        return Err(
            format!("run with CANDLE_NUM_THREADS={threads} to use {threads} threads").into(),
        );
    }
    let gen_tokens: usize = gen_tokens.parse()?;
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(prompts_file)?)?;
    let prompts = spec["prompts"]
        .as_array()
        .ok_or("prompts.json has no \"prompts\" list")?
        .iter()
        .map(ids)
        .collect::<Result<Vec<_>, _>>()?;
    let counts: Vec<usize> = spec["streams"]
        .as_array()
        .ok_or("prompts.json has no \"streams\" list")?
        .iter()
        .filter_map(Value::as_u64)
        .map(|n| n as usize)
        .collect();
    let most = counts.iter().copied().max().unwrap_or(1).max(8);
    if prompts.len() < most {
        return Err(format!("{} prompts given; the runs need {most}", prompts.len()).into());
    }
    let loaded = load(model, most, false)?;
    println!(
        "{}",
        json!({"kind": "load", "threads": threads, "load_s": loaded.info().load_secs})
    );
    // Warm-up: page cache, thread pool, allocator.
    join_all(vec![spawn_stream(&loaded, prompts[0].clone(), 4, None)])?;
    for &n in &counts {
        println!("{}", streams(&loaded, &prompts[..n], gen_tokens)?);
    }
    // For profiling the batched decode on its own.
    if std::env::var_os("RBEE_BENCH_STREAMS_ONLY").is_some() {
        return Ok(());
    }
    println!("{}", join(&loaded, &prompts, gen_tokens)?);
    drop(loaded);
    let history = ids(&spec["followup_history"])?;
    let turn = ids(&spec["followup_turn"])?;
    println!("{}", followup(model, &history, &turn)?);
    Ok(())
}
