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
//! Instead of a path, `synthetic-gemma3-270m` writes (to the temp directory)
//! and times a random-weight model with Gemma 3 270M Q4_K_M's exact shapes
//! and tensor types, for timing on machines without the real file.

use std::path::PathBuf;
use std::time::Instant;

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
        synthetic_gemma3_270m()?
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

/// Writes a random-weight model shaped like Gemma 3 270M Q4_K_M: same
/// hyperparameters, and per layer the same tensor types (attn_v Q8_0 and
/// ffn_down Q6_K in layers 0, 1, 4, 7, 10, 13, 15, 16, 17; Q5_0 / Q4_K elsewhere).
fn synthetic_gemma3_270m() -> Result<PathBuf, Box<dyn std::error::Error>> {
    use rbee_format::gguf::{GgmlType, GgufWriter};
    const HIDDEN: u64 = 640;
    const FFN: u64 = 2048;
    const VOCAB: u64 = 262_144;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut bytes = |n: u64| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    };
    // Random codes with sane f16 scales (0x1400 ~ 0.001).
    let mut blocks = |ty: GgmlType, n: u64| -> Vec<u8> {
        let (size, scales): (u64, &[usize]) = match ty {
            GgmlType::Q8_0 => (34, &[0]),
            GgmlType::Q5_0 => (22, &[0]),
            GgmlType::Q4_K => (144, &[0, 2]),
            _ => (210, &[208]),
        };
        let per = ty.block_size();
        let mut out = bytes(n / per * size);
        for block in out.chunks_exact_mut(size as usize) {
            for &at in scales {
                block[at..at + 2].copy_from_slice(&0x1400u16.to_le_bytes());
            }
        }
        out
    };
    let mut w = GgufWriter::new();
    let arch = "gemma3";
    w.add("general.architecture", arch)
        .add("gemma3.context_length", 32_768u32)
        .add("gemma3.embedding_length", HIDDEN as u32)
        .add("gemma3.block_count", 18u32)
        .add("gemma3.feed_forward_length", FFN as u32)
        .add("gemma3.attention.head_count", 4u32)
        .add("gemma3.attention.head_count_kv", 1u32)
        .add("gemma3.attention.key_length", 256u32)
        .add("gemma3.attention.value_length", 256u32)
        .add("gemma3.attention.layer_norm_rms_epsilon", 1e-6f32)
        .add("gemma3.rope.freq_base", 1e6f32)
        .add("gemma3.attention.sliding_window", 512u32)
        .add("tokenizer.ggml.bos_token_id", 2u32)
        .add(
            "tokenizer.ggml.tokens",
            (0..VOCAB).map(|i| format!("t{i}")).collect::<Vec<String>>(),
        );
    let ones: Vec<u8> = (0..HIDDEN).flat_map(|_| 1f32.to_le_bytes()).collect();
    let head_ones: Vec<u8> = (0..256).flat_map(|_| 1f32.to_le_bytes()).collect();
    w.add_tensor(
        "token_embd.weight",
        &[HIDDEN, VOCAB],
        GgmlType::Q8_0,
        blocks(GgmlType::Q8_0, HIDDEN * VOCAB),
    );
    w.add_tensor("output_norm.weight", &[HIDDEN], GgmlType::F32, ones.clone());
    for il in 0..18 {
        let wide = [0, 1, 4, 7, 10, 13, 15, 16, 17].contains(&il);
        let (v_ty, down_ty) = if wide {
            (GgmlType::Q8_0, GgmlType::Q6_K)
        } else {
            (GgmlType::Q5_0, GgmlType::Q4_K)
        };
        let name = |t: &str| format!("blk.{il}.{t}");
        for t in [
            "attn_norm",
            "ffn_norm",
            "post_attention_norm",
            "post_ffw_norm",
        ] {
            w.add_tensor(
                name(&format!("{t}.weight")),
                &[HIDDEN],
                GgmlType::F32,
                ones.clone(),
            );
        }
        for t in ["attn_q_norm", "attn_k_norm"] {
            w.add_tensor(
                name(&format!("{t}.weight")),
                &[256],
                GgmlType::F32,
                head_ones.clone(),
            );
        }
        let mut matrix = |t: &str, ty: GgmlType, cols: u64, rows: u64| {
            let data = blocks(ty, cols * rows);
            w.add_tensor(name(&format!("{t}.weight")), &[cols, rows], ty, data);
        };
        matrix("attn_q", GgmlType::Q5_0, HIDDEN, 1024);
        matrix("attn_k", GgmlType::Q5_0, HIDDEN, 256);
        matrix("attn_v", v_ty, HIDDEN, 256);
        matrix("attn_output", GgmlType::Q4_K, 1024, HIDDEN);
        matrix("ffn_gate", GgmlType::Q5_0, HIDDEN, FFN);
        matrix("ffn_up", GgmlType::Q5_0, HIDDEN, FFN);
        matrix("ffn_down", down_ty, FFN, HIDDEN);
    }
    let path = std::env::temp_dir().join("rbee-synthetic-gemma3-270m.gguf");
    w.write_file(&path)?;
    Ok(path)
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
