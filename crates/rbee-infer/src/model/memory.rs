//! Memory estimate for admitting a model onto a node before loading it.
//!
//! The estimate mirrors what loading and running actually allocate, so that
//! a node's budget check and its real footprint agree: weights in their
//! kernels' layouts (see `weights::loaded_size`), the f16 KV cache and RoPE
//! tables for `context` positions, and the activations of one full batch.

use rbee_format::gguf::GgufFile;

use super::config::ModelConfig;
use super::error::ModelError;
use super::transformer::{MAX_BATCH, Transformer};
use super::weights::loaded_size;

impl Transformer {
    /// Bytes of weights plus KV cache (and working memory) needed to run the
    /// model in `file` over `context` positions, computed from the header alone.
    pub fn estimate_memory(file: &GgufFile, context: usize) -> Result<u64, ModelError> {
        Self::estimate_memory_for(file, context, context, MAX_BATCH)
    }

    /// The same for a model serving several sequences: `kv_tokens` KV positions in all
    /// (every sequence slot's cache), and steps of up to `step_tokens` rows.
    /// Bytes of KV cache one position of one sequence takes (keys and values of every layer,
    /// f16).
    pub fn kv_bytes_per_token(file: &GgufFile) -> Result<u64, ModelError> {
        let c = ModelConfig::from_gguf(file)?;
        Ok(c.n_layers as u64 * (c.kv_dim() + c.kv_dim_v()) as u64 * 2)
    }

    pub fn estimate_memory_for(
        file: &GgufFile,
        context: usize,
        kv_tokens: usize,
        step_tokens: usize,
    ) -> Result<u64, ModelError> {
        let c = ModelConfig::from_gguf(file)?;
        let context = context.min(c.context_length) as u64;
        let kv_tokens = (kv_tokens as u64).max(context);
        let mut weights = 0u64;
        for t in &file.tensors {
            weights += loaded_size(t);
        }
        let (hidden, ffn) = (c.hidden_size as u64, c.ffn_size as u64);
        let kv_row = (c.kv_dim() + c.kv_dim_v()) as u64;
        let kv_cache = kv_tokens.next_multiple_of(256) * Self::kv_bytes_per_token(file)?;
        let tables = if c.sliding_window.is_some() { 2 } else { 1 };
        let rope = tables * context.next_multiple_of(256) * (c.n_rot as u64 / 2) * 2 * 4;
        let batch = step_tokens.max(1) as u64;
        let qkv = (c.q_dim() + c.kv_dim() + c.kv_dim_v()) as u64;
        // Live per-layer buffers for one batch: x, h, qkv + split copies,
        // attention output, gate/up and activation, plus the widened KV.
        let activations = batch * (3 * hidden + 2 * qkv + 4 * ffn) * 4 + context * kv_row * 4;
        let logits = c.vocab_size as u64 * 4;
        Ok(weights + kv_cache + rope + activations + logits)
    }
}
