//! Times a GGUF model on this machine: load, prompt processing (an 88-token
//! prompt), greedy decoding (64 tokens) and peak memory, and prints the
//! generated text so a broken model is obvious at a glance.
//!
//! ```text
//! cargo run --release -p rbee-infer --example bench_model -- <model.gguf> [prompt tokens] [decode tokens]
//! ```
//!
//! The prompt is a fixed English paragraph turned into token ids by greedy
//! longest match over the GGUF vocabulary (a stand-in for the real tokenizer,
//! good enough for timing and eyeballing), cut or padded to the requested length.
//!
//! Instead of a path, `synthetic-gemma3-270m` (or `synthetic-qwen2-1.5b`) writes (to the temp directory)
//! and times a random-weight model with Gemma 3 270M Q4_K_M's exact shapes
//! and tensor types, for timing on machines without the real file.

use std::path::PathBuf;
use std::time::Instant;

#[path = "common/synthetic.rs"]
mod synthetic;

use candle_core::Device;
use rbee_format::gguf::GgufFile;
use rbee_infer::model::Transformer;

const TEXT: &str = "The history of the printing press begins in the fifteenth century, when \
Johannes Gutenberg combined movable metal type, oil-based inks and a wooden press adapted \
from those used to make wine. Within a few decades printing shops had spread across Europe, \
books became far cheaper, and ideas travelled faster than ever before. Historians still \
debate how much the press changed religion, science and politics, but few doubt that it \
changed how people read. In the following essay, we explain";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: bench_model <model.gguf> [prompt tokens] [decode tokens]")?;
    let path = if path == "synthetic-gemma3-270m" {
        synthetic::gemma3_270m()?
    } else if path == "synthetic-qwen2-1.5b" {
        synthetic::qwen2_1_5b()?
    } else {
        PathBuf::from(path)
    };
    let prompt_len: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(88);
    let decode_len: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);

    let header = GgufFile::open(&path)?;
    let vocab = header
        .metadata
        .get_str_array("tokenizer.ggml.tokens")
        .ok_or("no tokenizer.ggml.tokens")?
        .to_vec();
    let bos = header.metadata.get_u64("tokenizer.ggml.bos_token_id");
    let estimate = Transformer::estimate_memory(&header, prompt_len + decode_len)?;

    let started = Instant::now();
    let mut model = Transformer::load_gguf(&path, &Device::Cpu)?;
    let mut cache = model.new_cache();
    let load = started.elapsed();

    let mut prompt: Vec<u32> = bos.map(|b| b as u32).into_iter().collect();
    let mut ids = greedy_tokenize(TEXT, &vocab);
    if ids.is_empty() {
        // A vocabulary without English pieces (the synthetic model): any ids do.
        ids = (10..200).collect();
    }
    while prompt.len() < prompt_len {
        prompt.extend_from_slice(&ids);
    }
    prompt.truncate(prompt_len);

    // Warm-up pass (candle packs some weight types on first use) on a short prefix.
    model.forward(&mut cache, &prompt[..prompt_len.min(8)], 0)?;
    cache.clear();

    let started = Instant::now();
    let mut logits = model.forward(&mut cache, &prompt, 0)?;
    let prefill = started.elapsed();

    let mut generated = Vec::with_capacity(decode_len);
    let started = Instant::now();
    for i in 0..decode_len {
        let next = logits.argmax(0)?.to_scalar::<u32>()?;
        generated.push(next);
        if i + 1 < decode_len {
            logits = model.forward(&mut cache, &[next], prompt.len() + i)?;
        }
    }
    let decode = started.elapsed();

    let text = |ids: &[u32]| -> String {
        ids.iter()
            .map(|&t| {
                vocab
                    .get(t as usize)
                    .map_or("?", String::as_str)
                    .replace('\u{2581}', " ")
            })
            .collect()
    };
    println!("model:        {}", path.display());
    let threads: usize = std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(candle_core::utils::get_num_threads);
    println!("threads:      {threads}");
    println!("load:         {:.2} s", load.as_secs_f64());
    println!(
        "prefill:      {} tokens in {:.3} s = {:.1} tok/s",
        prompt.len(),
        prefill.as_secs_f64(),
        prompt.len() as f64 / prefill.as_secs_f64()
    );
    let steps = decode_len.saturating_sub(1).max(1);
    println!(
        "decode:       {} tokens in {:.3} s = {:.1} tok/s",
        steps,
        decode.as_secs_f64(),
        steps as f64 / decode.as_secs_f64()
    );
    println!("peak RSS:     {:.3} GB", peak_rss_bytes()? as f64 / 1e9);
    println!("RSS now:      {:.3} GB", rss_bytes("VmRSS:")? as f64 / 1e9);
    println!("estimate:     {:.3} GB", estimate as f64 / 1e9);
    println!("in use:       {:.3} GB", model.memory_in_use() as f64 / 1e9);
    println!("prompt:       {:?}", text(&prompt));
    println!("generated:    {:?}", text(&generated));
    println!("ids:          {generated:?}");
    Ok(())
}

/// Greedy longest-match over the vocabulary, SentencePiece style (spaces as U+2581).
fn greedy_tokenize(text: &str, vocab: &[String]) -> Vec<u32> {
    let index: std::collections::HashMap<&str, u32> = vocab
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i as u32))
        .collect();
    let text = text.replace(' ', "\u{2581}");
    let mut ids = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let mut end = rest.len().min(64);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        loop {
            if let Some(&id) = index.get(&rest[..end]) {
                ids.push(id);
                rest = &rest[end..];
                break;
            }
            end -= 1;
            while end > 0 && !rest.is_char_boundary(end) {
                end -= 1;
            }
            if end == 0 {
                // Not in the vocabulary at all: skip the character.
                let skip = rest.chars().next().map_or(1, char::len_utf8);
                rest = &rest[skip..];
                break;
            }
        }
    }
    ids
}

/// Peak resident set size (`VmHWM`) of this process.
fn peak_rss_bytes() -> Result<u64, Box<dyn std::error::Error>> {
    rss_bytes("VmHWM:")
}

/// A size field of `/proc/self/status`, in bytes.
fn rss_bytes(field: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or("no such field in /proc/self/status")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or("bad /proc/self/status line")?
        .parse()?;
    Ok(kb * 1024)
}
