//! The architectures rbee can run: named by the validator and by its error messages, so in a
//! module of its own below both.

/// Architectures rbee can run.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma3", "phi3"];
