//! Self-contained tests of the transformer on tiny random-weight models built
//! with `GgufWriter`: loading every architecture's tensor layout, KV-cache
//! consistency, rewinding, errors and the memory estimate. (Agreement with
//! llama.cpp itself is `model_reference.rs`.)

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use rbee_format::gguf::{GgmlType, GgufFile, GgufWriter};
use rbee_infer::SUPPORTED_ARCHITECTURES;
use rbee_infer::model::{ModelError, Output, SeqCache, SeqStep, Transformer};

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 128;
const VOCAB: usize = 96;
const LAYERS: usize = 2;
const CONTEXT: usize = 64;

/// xorshift64*: deterministic weights without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// F32 tensor bytes of `n` random values scaled by `scale`.
fn f32_bytes(rng: &mut Rng, n: usize, scale: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|_| (rng.next() * scale).to_le_bytes())
        .collect()
}

/// Q8_0 tensor bytes (f16 scale + 32 codes per block).
fn q8_0_bytes(rng: &mut Rng, n: usize, scale: f32) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n / 32 {
        let d = scale / 127.0;
        out.extend_from_slice(&f16_bits(d).to_le_bytes());
        out.extend((0..32).map(|_| (rng.next() * 127.0) as i8 as u8));
    }
    out
}

/// f32 → f16 bits for normal values (test data only).
fn f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = (bits >> 13) & 0x3ff;
    ((bits >> 16) & 0x8000) as u16 | ((exp as u16) << 10) | mant as u16
}

/// A tiny model for `arch` with llama.cpp's tensor names for it. Projections
/// alternate between F32 and Q8_0 so both kernel families are exercised.
fn tiny_model(arch: &str, dir: &Path) -> PathBuf {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut w = GgufWriter::new();
    let key = |k: &str| format!("{arch}.{k}");
    w.add("general.architecture", arch)
        .add(key("block_count"), LAYERS as u32)
        .add(key("context_length"), CONTEXT as u32)
        .add(key("embedding_length"), HIDDEN as u32)
        .add(key("feed_forward_length"), FFN as u32)
        .add(key("attention.head_count"), HEADS as u32)
        .add(key("attention.head_count_kv"), KV_HEADS as u32)
        .add(key("attention.layer_norm_rms_epsilon"), 1e-6f32)
        .add(key("rope.freq_base"), 10_000f32);
    if arch == "gemma3" {
        w.add(key("attention.key_length"), HEAD_DIM as u32)
            .add(key("attention.value_length"), HEAD_DIM as u32)
            .add(key("attention.sliding_window"), 4u32);
    }
    let q_dim = HEADS * HEAD_DIM;
    let kv_dim = KV_HEADS * HEAD_DIM;
    let matrix =
        |w: &mut GgufWriter, rng: &mut Rng, name: String, rows: usize, cols: usize, quant: bool| {
            let scale = 1.0 / (cols as f32).sqrt();
            if quant {
                w.add_tensor(
                    name,
                    &[cols as u64, rows as u64],
                    GgmlType::Q8_0,
                    q8_0_bytes(rng, rows * cols, scale),
                );
            } else {
                w.add_tensor(
                    name,
                    &[cols as u64, rows as u64],
                    GgmlType::F32,
                    f32_bytes(rng, rows * cols, scale),
                );
            }
        };
    matrix(
        &mut w,
        &mut rng,
        "token_embd.weight".into(),
        VOCAB,
        HIDDEN,
        true,
    );
    let ones = |n: usize| (0..n).flat_map(|_| 1f32.to_le_bytes()).collect::<Vec<u8>>();
    w.add_tensor(
        "output_norm.weight",
        &[HIDDEN as u64],
        GgmlType::F32,
        ones(HIDDEN),
    );
    if arch != "gemma3" {
        matrix(
            &mut w,
            &mut rng,
            "output.weight".into(),
            VOCAB,
            HIDDEN,
            false,
        );
    }
    for il in 0..LAYERS {
        let name = |t: &str| format!("blk.{il}.{t}");
        let quant = il % 2 == 1;
        w.add_tensor(
            name("attn_norm.weight"),
            &[HIDDEN as u64],
            GgmlType::F32,
            ones(HIDDEN),
        );
        w.add_tensor(
            name("ffn_norm.weight"),
            &[HIDDEN as u64],
            GgmlType::F32,
            ones(HIDDEN),
        );
        if arch == "phi3" {
            matrix(
                &mut w,
                &mut rng,
                name("attn_qkv.weight"),
                q_dim + 2 * kv_dim,
                HIDDEN,
                quant,
            );
            matrix(
                &mut w,
                &mut rng,
                name("ffn_up.weight"),
                2 * FFN,
                HIDDEN,
                quant,
            );
        } else {
            matrix(
                &mut w,
                &mut rng,
                name("attn_q.weight"),
                q_dim,
                HIDDEN,
                quant,
            );
            matrix(
                &mut w,
                &mut rng,
                name("attn_k.weight"),
                kv_dim,
                HIDDEN,
                quant,
            );
            matrix(
                &mut w,
                &mut rng,
                name("attn_v.weight"),
                kv_dim,
                HIDDEN,
                !quant,
            );
            matrix(
                &mut w,
                &mut rng,
                name("ffn_gate.weight"),
                FFN,
                HIDDEN,
                quant,
            );
            matrix(&mut w, &mut rng, name("ffn_up.weight"), FFN, HIDDEN, quant);
        }
        matrix(
            &mut w,
            &mut rng,
            name("attn_output.weight"),
            HIDDEN,
            q_dim,
            quant,
        );
        matrix(
            &mut w,
            &mut rng,
            name("ffn_down.weight"),
            HIDDEN,
            FFN,
            quant,
        );
        if arch == "qwen2" {
            for (p, n) in [("q", q_dim), ("k", kv_dim), ("v", kv_dim)] {
                w.add_tensor(
                    name(&format!("attn_{p}.bias")),
                    &[n as u64],
                    GgmlType::F32,
                    f32_bytes(&mut rng, n, 0.1),
                );
            }
        }
        if arch == "qwen3" || arch == "gemma3" {
            w.add_tensor(
                name("attn_q_norm.weight"),
                &[HEAD_DIM as u64],
                GgmlType::F32,
                ones(HEAD_DIM),
            );
            w.add_tensor(
                name("attn_k_norm.weight"),
                &[HEAD_DIM as u64],
                GgmlType::F32,
                ones(HEAD_DIM),
            );
        }
        if arch == "gemma3" {
            w.add_tensor(
                name("post_attention_norm.weight"),
                &[HIDDEN as u64],
                GgmlType::F32,
                ones(HIDDEN),
            );
            w.add_tensor(
                name("post_ffw_norm.weight"),
                &[HIDDEN as u64],
                GgmlType::F32,
                ones(HIDDEN),
            );
        }
    }
    let path = dir.join(format!("tiny-{arch}.gguf"));
    w.write_file(&path).unwrap();
    path
}

fn logits(model: &mut Transformer, cache: &mut SeqCache, tokens: &[u32], start: usize) -> Vec<f32> {
    model
        .forward(cache, tokens, start)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best }) as u32
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        // Batched and single-row kernels sum in different orders and round
        // activations to f16/int8 at the same places, so they agree to a few ulps
        // of the activations, not exactly.
        assert!(
            (x - y).abs() <= 2e-3 * scale,
            "{what}: logit {i}: {x} vs {y}"
        );
    }
}

const PROMPT: [u32; 10] = [1, 17, 42, 5, 88, 23, 9, 61, 30, 2];

#[test]
fn every_architecture_loads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    for &arch in SUPPORTED_ARCHITECTURES {
        let path = tiny_model(arch, dir.path());
        let mut model = Transformer::load_gguf(&path, &Device::Cpu).unwrap();
        let mut cache = model.new_cache();
        let c = model.config();
        assert_eq!(
            (c.architecture.as_str(), c.vocab_size, c.n_layers),
            (arch, VOCAB, LAYERS)
        );
        assert_eq!(
            (c.n_heads, c.n_kv_heads, c.head_dim, c.hidden_size),
            (HEADS, KV_HEADS, HEAD_DIM, HIDDEN)
        );
        let out = logits(&mut model, &mut cache, &PROMPT, 0);
        assert_eq!(out.len(), VOCAB, "{arch}");
        assert!(out.iter().all(|v| v.is_finite()), "{arch}: {out:?}");
        assert_eq!(cache.len(), PROMPT.len());
    }
}

/// Token ids for a prompt of `n` tokens, different for each `salt`.
fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 31 + salt * 17 + 3) % VOCAB as u32)
        .collect()
}

/// Runs one entry as a step of its own; what the batch must reproduce bit for bit.
fn alone(
    model: &mut Transformer,
    cache: &mut SeqCache,
    tokens: &[u32],
    start: usize,
) -> Option<Vec<f32>> {
    let mut step = [SeqStep {
        cache,
        tokens,
        start,
        output: Output::Logits,
    }];
    model.forward_batch(&mut step).unwrap().pop().flatten()
}

#[test]
fn a_batched_step_gives_each_sequence_exactly_what_it_gets_alone() {
    let dir = tempfile::tempdir().unwrap();
    for &arch in SUPPORTED_ARCHITECTURES {
        let path = tiny_model(arch, dir.path());
        let mut model = Transformer::load_gguf(&path, &Device::Cpu).unwrap();
        // Four sequences at different stages: decoding after a prompt, a long prefill (a
        // tiled-kernel batch), a short prefill, and a second prompt chunk of a cached prompt.
        let decoding = prompt(10, 1);
        let long = prompt(12, 2);
        let short = prompt(3, 3);
        let chunked = prompt(9, 4);
        let mut caches: Vec<SeqCache> = (0..4).map(|_| model.new_cache()).collect();
        alone(&mut model, &mut caches[0], &decoding, 0);
        alone(&mut model, &mut caches[3], &chunked[..5], 0);
        let mut separate = caches.clone();
        let inputs: [(&[u32], usize); 4] =
            [(&[7], 10), (&long, 0), (&short, 0), (&chunked[5..], 5)];
        let expected: Vec<_> = separate
            .iter_mut()
            .zip(inputs)
            .map(|(cache, (tokens, start))| alone(&mut model, cache, tokens, start).unwrap())
            .collect();
        let mut steps: Vec<SeqStep<'_>> = caches
            .iter_mut()
            .zip(inputs)
            .map(|(cache, (tokens, start))| SeqStep {
                cache,
                tokens,
                start,
                output: Output::Logits,
            })
            .collect();
        let batched = model.forward_batch(&mut steps).unwrap();
        for (i, (got, want)) in batched.iter().zip(&expected).enumerate() {
            assert_eq!(got.as_ref(), Some(want), "{arch}: entry {i}");
        }
        for (got, want) in caches.iter().zip(&separate) {
            assert_eq!(got.len(), want.len(), "{arch}");
        }
        // The next step, all decoding, still agrees: the caches hold the same keys and values.
        let next: Vec<Vec<f32>> = separate
            .iter_mut()
            .map(|cache| {
                let at = cache.len();
                alone(&mut model, cache, &[11], at).unwrap()
            })
            .collect();
        let mut steps: Vec<SeqStep<'_>> = caches
            .iter_mut()
            .map(|cache| {
                let start = cache.len();
                SeqStep {
                    cache,
                    tokens: &[11],
                    start,
                    output: Output::Logits,
                }
            })
            .collect();
        let batched = model.forward_batch(&mut steps).unwrap();
        for (i, (got, want)) in batched.iter().zip(&next).enumerate() {
            assert_eq!(got.as_ref(), Some(want), "{arch}: decode entry {i}");
        }
        // An entry that asks for no logits gets none, and fills its cache all the same.
        let mut cache = model.new_cache();
        let mut step = [SeqStep {
            cache: &mut cache,
            tokens: &long,
            start: 0,
            output: Output::Nothing,
        }];
        assert_eq!(model.forward_batch(&mut step).unwrap(), vec![None]);
        assert_eq!(cache.len(), long.len());
    }
}

#[test]
fn kv_cache_makes_incremental_decoding_match_a_full_prompt() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "gemma3"] {
        let path = tiny_model(arch, dir.path());
        let mut model = Transformer::load_gguf(&path, &Device::Cpu).unwrap();
        let mut cache = model.new_cache();
        let whole = logits(&mut model, &mut cache, &PROMPT, 0);
        cache.clear();
        assert_eq!(cache.len(), 0);
        let mut last = Vec::new();
        for (i, &t) in PROMPT.iter().enumerate() {
            last = logits(&mut model, &mut cache, &[t], i);
        }
        assert_close(&last, &whole, arch);
        // Half the prompt at once, then the rest token by token.
        cache.clear();
        logits(&mut model, &mut cache, &PROMPT[..5], 0);
        for (i, &t) in PROMPT.iter().enumerate().skip(5) {
            last = logits(&mut model, &mut cache, &[t], i);
        }
        assert_close(&last, &whole, arch);
    }
}

#[test]
fn runs_are_deterministic_and_rewinding_recomputes() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model("qwen3", dir.path());
    let mut model = Transformer::load_gguf(&path, &Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let first = logits(&mut model, &mut cache, &PROMPT, 0);
    cache.clear();
    assert_eq!(
        logits(&mut model, &mut cache, &PROMPT, 0),
        first,
        "same input, same bits"
    );
    // Rewind to position 6 with a different suffix, then back to the original.
    let other = logits(&mut model, &mut cache, &[3, 4, 5, 6], 6);
    assert_ne!(other, first);
    assert_eq!(cache.len(), 10);
    assert_eq!(logits(&mut model, &mut cache, &PROMPT[6..], 6), first);
    // A greedy continuation is identical whether the prompt ran batched or not.
    let next = argmax(&first);
    let batched = logits(&mut model, &mut cache, &[next], PROMPT.len());
    cache.clear();
    for (i, &t) in PROMPT.iter().enumerate() {
        logits(&mut model, &mut cache, &[t], i);
    }
    let stepped = logits(&mut model, &mut cache, &[next], PROMPT.len());
    assert_eq!(argmax(&batched), argmax(&stepped));
}

#[test]
fn bad_requests_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model("llama", dir.path());
    let mut model = Transformer::load_gguf(&path, &Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    assert!(matches!(
        model.forward(&mut cache, &[], 0),
        Err(ModelError::EmptyInput)
    ));
    assert!(matches!(
        model.forward(&mut cache, &[VOCAB as u32], 0),
        Err(ModelError::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        model.forward(&mut cache, &[1], 3),
        Err(ModelError::BadPosition {
            start_pos: 3,
            cached: 0
        })
    ));
    let long = vec![1u32; CONTEXT + 1];
    assert!(matches!(
        model.forward(&mut cache, &long, 0),
        Err(ModelError::ContextOverflow { .. })
    ));
    // A failed call leaves the cache usable.
    assert_eq!(logits(&mut model, &mut cache, &PROMPT, 0).len(), VOCAB);
}

#[test]
fn unsupported_files_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model("llama", dir.path());
    let header = GgufFile::open(&path).unwrap();
    // Same model, but claiming YaRN RoPE scaling.
    let mut w = GgufWriter::new();
    for (k, v) in header.metadata.iter() {
        w.add(k, v.clone());
    }
    w.add("llama.rope.scaling.type", "yarn");
    let data = std::fs::read(&path).unwrap();
    for t in &header.tensors {
        let bytes = data[t.offset as usize..(t.offset + t.size) as usize].to_vec();
        w.add_tensor(t.name.clone(), &t.dims, t.dtype, bytes);
    }
    let yarn = dir.path().join("yarn.gguf");
    w.write_file(&yarn).unwrap();
    let err = Transformer::load_gguf(&yarn, &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("yarn"), "{err}");
    // And an unknown architecture.
    let w = GgufWriter::tiny_model("mamba");
    let mamba = dir.path().join("mamba.gguf");
    w.write_file(&mamba).unwrap();
    let err = Transformer::load_gguf(&mamba, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedArchitecture { architecture, .. } if architecture == "mamba"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&SUPPORTED_ARCHITECTURES.join(", ")),
        "{err}"
    );
}

#[test]
fn memory_estimate_covers_weights_and_grows_with_context() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model("gemma3", dir.path());
    let header = GgufFile::open(&path).unwrap();
    let small = Transformer::estimate_memory(&header, 8).unwrap();
    let large = Transformer::estimate_memory(&header, CONTEXT).unwrap();
    let weights: u64 = header.tensors.iter().map(|t| t.size).sum();
    assert!(small >= weights, "{small} < {weights}");
    assert!(large > small);
    let mut model = Transformer::load_gguf(&path, &Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    logits(&mut model, &mut cache, &PROMPT, 0);
    assert!(
        model.memory_in_use() <= large,
        "{} > {large}",
        model.memory_in_use()
    );
}
