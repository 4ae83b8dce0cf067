//! Token-for-token agreement with llama.cpp.
//!
//! `tests/reference/` holds vectors produced by llama.cpp (through
//! llama-cpp-python, CPU backend, flash attention off — see
//! `scripts/reference/make_reference.py`):
//!
//! - `tiny-<arch>.{gguf,json}`: random-weight models for each architecture,
//!   with a prompt, 16 greedy tokens and the top-5 logits of every step.
//! - `gemma3-270m-greedy.json`: 32 greedy tokens for six prompts on the real
//!   Gemma 3 270M Q4_K_M (the demo model, found at `$RBEE_DEMO_MODEL` or
//!   `~/.cache/rbee/demo-model/`, fetched by `scripts/fetch-demo-model`).
//!
//! Greedy tokens must match exactly, and so, today, do the logits: the
//! model reproduces llama.cpp's CPU arithmetic bit for bit (see
//! `src/model/kernels.rs`). The logit tolerance below only leaves room for
//! libm differences between machines (`cosf`, `expf`, `tanhf` in RoPE, the
//! softmax tail and the GELU table); any modelling or kernel mistake moves
//! logits by far more.
//!
//! Tests skip, saying why, when a file is absent.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::path::{Path, PathBuf};

use candle_core::Device;
use rbee_infer::model::Transformer;
use serde_json::Value;

const ABS_TOLERANCE: f32 = 1e-3;
const REL_TOLERANCE: f32 = 1e-4;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("reference")
}

fn read_json(path: &Path) -> Option<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(serde_json::from_str(&text).unwrap()),
        Err(e) => {
            eprintln!("skipping: cannot read {}: {e}", path.display());
            None
        }
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// `[[id, logit], ...]`
fn top5(v: &Value) -> Vec<(u32, f32)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
        .collect()
}

/// What we produced for one greedy run.
struct Run {
    tokens: Vec<u32>,
    /// Per step, our logits at llama.cpp's top-5 ids.
    logits: Vec<Vec<f32>>,
    /// Per step, our own best two logits' margin.
    margins: Vec<f32>,
}

/// Greedy decoding (ties to the lowest id, like the reference), stopping
/// after `max` tokens or an end-of-generation token.
fn greedy(
    model: &mut Transformer,
    prompt: &[u32],
    max: usize,
    eog: &[u32],
    expected_top5: &[Vec<(u32, f32)>],
) -> Run {
    let mut cache = model.new_cache();
    let mut logits = model
        .forward(&mut cache, prompt, 0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut run = Run {
        tokens: Vec::new(),
        logits: Vec::new(),
        margins: Vec::new(),
    };
    for step in 0..max {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        let second = logits
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != best)
            .map(|(_, &l)| l)
            .fold(f32::NEG_INFINITY, f32::max);
        run.margins.push(logits[best] - second);
        if let Some(top) = expected_top5.get(step) {
            run.logits
                .push(top.iter().map(|&(id, _)| logits[id as usize]).collect());
        }
        let token = best as u32;
        run.tokens.push(token);
        if eog.contains(&token) || step + 1 == max {
            break;
        }
        logits = model
            .forward(&mut cache, &[token], prompt.len() + step)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
    }
    run
}

/// Compares a run with llama.cpp's; returns a description of every mismatch.
fn compare(
    name: &str,
    run: &Run,
    expected: &[u32],
    expected_top5: &[Vec<(u32, f32)>],
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(step) = run.tokens.iter().zip(expected).position(|(a, b)| a != b) {
        let top = &expected_top5[step];
        problems.push(format!(
            "{name}: diverges at step {step}: ours {} vs llama.cpp {}; llama.cpp top-2 {:?} (margin {:.5}), \
             ours at those ids {:?}",
            run.tokens[step],
            expected[step],
            &top[..2],
            top[0].1 - top[1].1,
            &run.logits[step][..2]
        ));
    } else if run.tokens.len() != expected.len() {
        problems.push(format!(
            "{name}: {} tokens vs llama.cpp's {}",
            run.tokens.len(),
            expected.len()
        ));
    }
    let mut worst = (0f32, 0usize);
    // Logits are only comparable while the sequences agree.
    let agree = run
        .tokens
        .iter()
        .zip(expected)
        .take_while(|(a, b)| a == b)
        .count();
    for (step, (ours, theirs)) in run
        .logits
        .iter()
        .zip(expected_top5)
        .enumerate()
        .take(agree + 1)
    {
        for (&o, &(id, t)) in ours.iter().zip(theirs) {
            let err = (o - t).abs();
            if err > worst.0 {
                worst = (err, step);
            }
            if err > ABS_TOLERANCE + REL_TOLERANCE * t.abs() {
                problems.push(format!(
                    "{name}: step {step}, token {id}: logit {o} vs llama.cpp {t}"
                ));
            }
        }
    }
    eprintln!(
        "{name}: {}/{} tokens agree, worst top-5 logit error {:.2e} (step {})",
        agree,
        expected.len(),
        worst.0,
        worst.1
    );
    problems
}

fn tiny(arch: &str) {
    let dir = reference_dir();
    let gguf = dir.join(format!("tiny-{arch}.gguf"));
    let Some(reference) = read_json(&dir.join(format!("tiny-{arch}.json"))) else {
        return;
    };
    if !gguf.exists() {
        eprintln!("skipping: {} is absent", gguf.display());
        return;
    }
    let mut model = Transformer::load_gguf(&gguf, &Device::Cpu).unwrap();
    let prompt = ids(&reference["prompt_ids"]);
    let greedy_ref = &reference["greedy"];
    let expected = ids(&greedy_ref["tokens"]);
    let expected_top5: Vec<_> = greedy_ref["top5_per_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(top5)
        .collect();
    let eog = ids(&reference["eog_ids"]);
    let run = greedy(&mut model, &prompt, expected.len(), &eog, &expected_top5);
    let problems = compare(&format!("tiny-{arch}"), &run, &expected, &expected_top5);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn tiny_llama_matches_llama_cpp() {
    tiny("llama");
}

#[test]
fn tiny_qwen2_matches_llama_cpp() {
    tiny("qwen2");
}

#[test]
fn tiny_qwen3_matches_llama_cpp() {
    tiny("qwen3");
}

#[test]
fn tiny_phi3_matches_llama_cpp() {
    tiny("phi3");
}

#[test]
fn tiny_gemma3_matches_llama_cpp() {
    tiny("gemma3");
}

#[test]
fn gemma3_270m_matches_llama_cpp() {
    let Some(reference) = read_json(&reference_dir().join("gemma3-270m-greedy.json")) else {
        return;
    };
    let Some(path) = demo_model() else {
        return;
    };
    let mut model = Transformer::load_gguf(&path, &Device::Cpu).unwrap();
    let eog = ids(&reference["eog_ids"]);
    // Every prompt is checked for all its reference steps: the workspace
    // builds rbee-infer optimised in the dev and test profiles, so this is quick.
    let mut problems = Vec::new();
    for (i, case) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        let expected = ids(&case["tokens"]);
        let expected_top5: Vec<_> = case["top5_per_step"]
            .as_array()
            .unwrap()
            .iter()
            .map(top5)
            .collect();
        let run = greedy(&mut model, &prompt, expected.len(), &eog, &expected_top5);
        problems.extend(compare(
            &format!("gemma3-270m prompt {i}"),
            &run,
            &expected,
            &expected_top5,
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
