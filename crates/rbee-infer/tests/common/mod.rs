//! Fixtures shared by the engine's test files.
#![allow(dead_code)]

use std::path::PathBuf;

use rbee_infer::InferError;
use rbee_infer::engine::{GenerateEvent, Generation, GenerationStats};

/// A model the test scripts fetch into the cache: `$var`, else `~/.cache/rbee/<cached>`, when
/// `present` says it is there. Missing is a skip on a developer's machine and a failure in CI,
/// where `scripts/test` fetches it.
fn cached_model(
    var: &str,
    cached: &str,
    present: fn(&std::path::Path) -> bool,
    script: &str,
) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rbee").join(cached))
        })
        .filter(|p| present(p));
    if path.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{cached} missing in CI: scripts/test should have fetched it"
        );
        eprintln!("SKIPPED: {cached} not found (run {script} or set {var})");
    }
    path
}

/// The demo GGUF (`scripts/fetch-demo-model`, or `RBEE_DEMO_MODEL`).
pub fn demo_model() -> Option<PathBuf> {
    cached_model(
        "RBEE_DEMO_MODEL",
        "demo-model/gemma-3-270m-q4_k_m.gguf",
        std::path::Path::is_file,
        "scripts/fetch-demo-model",
    )
}

/// The embedding demo model, all-MiniLM-L6-v2 (`scripts/fetch-embed-model`, or
/// `RBEE_EMBED_MODEL`).
pub fn embed_model() -> Option<PathBuf> {
    cached_model(
        "RBEE_EMBED_MODEL",
        "embed-model/all-MiniLM-L6-v2",
        |p| p.join("model.safetensors").is_file(),
        "scripts/fetch-embed-model",
    )
}

/// Waits until the model's engine has nothing queued or running, or fails after `secs`.
pub fn wait_idle(model: &dyn rbee_infer::engine::LoadedModel, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !model.activity().is_idle() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            model.activity()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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
