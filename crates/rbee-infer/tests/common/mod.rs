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
