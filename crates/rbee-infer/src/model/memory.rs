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

/// The part of a model a device takes in a split ([`Transformer::device_layers_across`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceShare {
    /// Its last layers this many.
    pub layers: usize,
    /// Bytes on the device: those layers' weights and KV share, one step's activations.
    pub device_bytes: u64,
    /// Of those, the bytes that leave the host (weights and KV cache).
    pub moved: u64,
}

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

    /// Partial offload's plan: how many of the model's layers each device holds, given its
    /// `budgets` (bytes free), when the whole model does not fit one (the token embedding and
    /// the output projection stay on the CPU, as llama.cpp keeps them below full offload): the
    /// first device takes the last layers, the next the ones before those
    /// ([`plan_offload_across`](super::runtime::plan_offload_across)). Each layer costs its
    /// weights and its part of the KV cache (`kv_tokens` positions); each device that takes a
    /// layer also needs one step's activations. At most `cap` layers in all. Returns the
    /// model's layer count and one share per budget (`layers == 0`: that device takes none).
    pub fn device_layers_across(
        file: &GgufFile,
        kv_tokens: usize,
        step_tokens: usize,
        budgets: &[u64],
        cap: usize,
    ) -> Result<(usize, Vec<DeviceShare>), ModelError> {
        let c = ModelConfig::from_gguf(file)?;
        let mut layers = vec![0u64; c.n_layers];
        for t in &file.tensors {
            let layer = t
                .name
                .strip_prefix("blk.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(l) = layer.and_then(|i| layers.get_mut(i)) {
                *l += loaded_size(t);
            }
        }
        let kv_row = (c.kv_dim() + c.kv_dim_v()) as u64;
        let kv_per_layer = (kv_tokens as u64).next_multiple_of(256) * kv_row * 2;
        let (hidden, ffn) = (c.hidden_size as u64, c.ffn_size as u64);
        let qkv = (c.q_dim() + c.kv_dim() + c.kv_dim_v()) as u64;
        let activations = step_tokens.max(1) as u64 * (3 * hidden + 2 * qkv + 4 * ffn) * 4;
        let counts =
            super::runtime::plan_offload_across(&layers, kv_per_layer, activations, budgets, cap);
        let mut from_end = layers.iter().rev();
        let shares = counts
            .into_iter()
            .map(|n| {
                let moved = from_end.by_ref().take(n).sum::<u64>() + n as u64 * kv_per_layer;
                DeviceShare {
                    layers: n,
                    device_bytes: if n > 0 { activations + moved } else { 0 },
                    moved,
                }
            })
            .collect();
        Ok((c.n_layers, shares))
    }
}
