//! Fixtures shared by the engine's test files.
#![allow(dead_code)]

use std::path::PathBuf;

use rbee_infer::InferError;
use rbee_infer::engine::{GenerateEvent, Generation, GenerationStats};

/// The demo GGUF (`scripts/fetch-demo-model`, or `RBEE_DEMO_MODEL`). Missing is a skip on a
/// developer's machine and a failure in CI, where `scripts/test` fetches it.
pub fn demo_model() -> Option<PathBuf> {
    let path = std::env::var_os("RBEE_DEMO_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/rbee/demo-model/gemma-3-270m-q4_k_m.gguf"))
        })
        .filter(|p| p.is_file());
    if path.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "demo model missing in CI: scripts/test should have fetched it"
        );
        eprintln!(
            "SKIPPED: demo model not found (run scripts/fetch-demo-model or set RBEE_DEMO_MODEL)"
        );
    }
    path
}

/// The embedding demo model, all-MiniLM-L6-v2 (`scripts/fetch-embed-model`, or
/// `RBEE_EMBED_MODEL`): a skip on a developer's machine without it, a failure in CI.
pub fn embed_model() -> Option<PathBuf> {
    let path = std::env::var_os("RBEE_EMBED_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/rbee/embed-model/all-MiniLM-L6-v2"))
        })
        .filter(|p| p.join("model.safetensors").is_file());
    if path.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "embedding model missing in CI: scripts/test should have fetched it"
        );
        eprintln!(
            "SKIPPED: embedding model not found (run scripts/fetch-embed-model or set RBEE_EMBED_MODEL)"
        );
    }
    path
}

/// The directory of the committed llama.cpp / numpy references.
pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Reads a generation to its end: the token ids and the final stats.
pub fn collect(generation: Generation) -> Result<(Vec<u32>, GenerationStats), InferError> {
    let mut ids = Vec::new();
    for event in generation {
        match event {
            GenerateEvent::Token { id, .. } => ids.push(id),
            GenerateEvent::Done(stats) => return Ok((ids, stats)),
            GenerateEvent::Error(e) => return Err(e),
            _ => {}
        }
    }
    panic!("generation ended without Done");
}
