//! [`Transformer`]: loading a GGUF model (or a safetensors folder) and running it over token batches.
//!
//! One decoder implementation serves every supported architecture; the
//! per-architecture choices live in [`ModelConfig`]. The layer follows
//! llama.cpp's graphs (`src/models/{llama,qwen2,qwen3,gemma3,phi3}.cpp`):
//!
//! ```text
//! x = embed(tokens) [* sqrt(hidden) for gemma3]
//! per layer:
//!   h = rms_norm(x) * attn_norm
//!   q, k, v = h·Wq (+bq), h·Wk (+bk), h·Wv (+bv)      (phi3: one fused Wqkv)
//!   q, k = rms_norm per head * q_norm, k_norm         (qwen3, gemma3)
//!   q, k = rope(q), rope(k); q *= query_scale         (gemma3, phi3)
//!   a = attention(q, cache + k, cache + v) · Wo (+bo)
//!   a = rms_norm(a) * post_attention_norm             (gemma3)
//!   x = x + a
//!   h = rms_norm(x) * ffn_norm
//!   f = (act(h·Wgate) * h·Wup) · Wdown                (phi3: Wup holds [gate | up])
//!   f = rms_norm(f) * post_ffw_norm                   (gemma3)
//!   x = x + f
//! logits = (rms_norm(x_last) * output_norm) · Wout    (Wout = token_embd when absent)
//! ```

use std::path::Path;

use candle_core::{Device, Tensor};
use rbee_format::gguf::GgufFile;

use super::attention::{AttnShape, attention};
use super::config::{Arch, ModelConfig};
use super::error::{CandleContext, ModelError};
use super::kv_cache::LayerCache;
use super::linear::{Linear, MultiLinear, Rows};
use super::ops::{add_assign, gated_activation, rms_norm, scale};
use super::rope::Rope;
use super::safetensors::SafetensorsModel;
use super::weights::TensorReader;

/// Largest batch run through the layers at once, like llama.cpp's default
/// `n_ubatch`; longer prompts are processed in slices of this many tokens.
/// Slicing the same way also keeps attention on the same numeric path as
/// llama.cpp.
pub const MAX_BATCH: usize = 512;

/// A loaded model with its KV cache. Runs on the CPU.
#[derive(Debug)]
pub struct Transformer {
    config: ModelConfig,
    /// `token_embd.weight`, also the output projection when `output` is absent.
    embedding: Linear,
    output: Option<Linear>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    caches: Vec<LayerCache>,
    rope_global: Rope,
    /// RoPE of sliding-window layers, when it differs (gemma3).
    rope_local: Option<Rope>,
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    /// Output rows are `[q | k | v]`.
    qkv: MultiLinear,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Linear,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// Output rows are `[gate | up]`.
    gate_up: MultiLinear,
    down: Linear,
    post_ffn_norm: Option<Vec<f32>>,
    sliding: bool,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Transformer>();
};

impl Transformer {
    /// Loads a GGUF model. Only `Device::Cpu` is supported.
    pub fn load_gguf(path: &Path, device: &Device) -> Result<Transformer, ModelError> {
        if !device.is_cpu() {
            return Err(ModelError::UnsupportedDevice(device.location()));
        }
        let header = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&header)?;
        let mut reader = TensorReader::open(path, &header)?;
        let started = std::time::Instant::now();
        let model = Self::load(&config, &mut reader)?;
        tracing::debug!(
            arch = config.architecture,
            layers = config.n_layers,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded model weights"
        );
        Ok(model)
    }

    /// Loads a safetensors folder opened with [`SafetensorsModel::open`]: the
    /// same model, kernels and results as the GGUF converted from it.
    /// Only `Device::Cpu` is supported.
    pub fn load_safetensors(
        model: &SafetensorsModel,
        device: &Device,
    ) -> Result<Transformer, ModelError> {
        if !device.is_cpu() {
            return Err(ModelError::UnsupportedDevice(device.location()));
        }
        let config = ModelConfig::from_gguf(model.header())?;
        let mut reader = TensorReader::open_safetensors(model)?;
        Self::load(&config, &mut reader)
    }

    fn load(config: &ModelConfig, r: &mut TensorReader<'_>) -> Result<Transformer, ModelError> {
        let c = config;
        let hidden = c.hidden_size;
        // The vocabulary-sized matrices are streamed: they dominate small models.
        let embedding = Linear::load(r, "token_embd.weight", c.vocab_size, hidden, None)?;
        let output = if r.has("output.weight") {
            let bias = r.optional_vector("output.bias", c.vocab_size)?;
            Some(Linear::load(
                r,
                "output.weight",
                c.vocab_size,
                hidden,
                bias,
            )?)
        } else {
            None
        };
        let output_norm = r.vector("output_norm.weight", hidden)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for il in 0..c.n_layers {
            layers.push(Self::load_layer(c, r, il)?);
        }
        // llama 3 ships per-pair RoPE frequency divisors.
        let freq_factors = r.optional_vector("rope_freqs.weight", c.n_rot / 2)?;
        let rope_global = Rope::new(c.rope_style, c.n_rot, &c.rope, freq_factors);
        let rope_local = (c.sliding_window.is_some() && c.rope_local != c.rope)
            .then(|| Rope::new(c.rope_style, c.n_rot, &c.rope_local, None));
        let caches = (0..c.n_layers)
            .map(|_| LayerCache::new(c.kv_dim(), c.kv_dim_v()))
            .collect();
        Ok(Transformer {
            config: config.clone(),
            embedding,
            output,
            output_norm,
            layers,
            caches,
            rope_global,
            rope_local,
        })
    }

    fn load_layer(
        c: &ModelConfig,
        r: &mut TensorReader<'_>,
        il: usize,
    ) -> Result<Layer, ModelError> {
        let name = |t: &str| format!("blk.{il}.{t}");
        let hidden = c.hidden_size;
        let (q_dim, kv_dim, kv_dim_v) = (c.q_dim(), c.kv_dim(), c.kv_dim_v());
        let qkv = if r.has(&name("attn_qkv.weight")) {
            let rows = q_dim + kv_dim + kv_dim_v;
            let bias = r.optional_vector(&name("attn_qkv.bias"), rows)?;
            MultiLinear::new(vec![(
                r.matrix(&name("attn_qkv.weight"), rows, hidden)?,
                bias,
            )])?
        } else {
            let mut parts = Vec::with_capacity(3);
            for (p, rows) in [("q", q_dim), ("k", kv_dim), ("v", kv_dim_v)] {
                let bias = r.optional_vector(&name(&format!("attn_{p}.bias")), rows)?;
                parts.push((
                    r.matrix(&name(&format!("attn_{p}.weight")), rows, hidden)?,
                    bias,
                ));
            }
            MultiLinear::new(parts)?
        };
        let (q_norm, k_norm) = if c.qk_norm {
            (
                Some(r.vector(&name("attn_q_norm.weight"), c.head_dim)?),
                Some(r.vector(&name("attn_k_norm.weight"), c.head_dim)?),
            )
        } else {
            (None, None)
        };
        let wo_bias = r.optional_vector(&name("attn_output.bias"), hidden)?;
        let wo = Linear::new(
            r.matrix(
                &name("attn_output.weight"),
                hidden,
                c.n_heads * c.head_dim_v,
            )?,
            wo_bias,
        )?;
        let ffn = c.ffn_size;
        let gate_up = if c.arch == Arch::Phi3 {
            let bias = r.optional_vector(&name("ffn_up.bias"), 2 * ffn)?;
            MultiLinear::new(vec![(
                r.matrix(&name("ffn_up.weight"), 2 * ffn, hidden)?,
                bias,
            )])?
        } else {
            let mut parts = Vec::with_capacity(2);
            for p in ["gate", "up"] {
                let bias = r.optional_vector(&name(&format!("ffn_{p}.bias")), ffn)?;
                parts.push((
                    r.matrix(&name(&format!("ffn_{p}.weight")), ffn, hidden)?,
                    bias,
                ));
            }
            MultiLinear::new(parts)?
        };
        let down_bias = r.optional_vector(&name("ffn_down.bias"), hidden)?;
        let down = Linear::new(r.matrix(&name("ffn_down.weight"), hidden, ffn)?, down_bias)?;
        let (post_attn_norm, post_ffn_norm) = if c.post_norms {
            (
                Some(r.vector(&name("post_attention_norm.weight"), hidden)?),
                Some(r.vector(&name("post_ffw_norm.weight"), hidden)?),
            )
        } else {
            (None, None)
        };
        Ok(Layer {
            attn_norm: r.vector(&name("attn_norm.weight"), hidden)?,
            qkv,
            q_norm,
            k_norm,
            wo,
            post_attn_norm,
            ffn_norm: r.vector(&name("ffn_norm.weight"), hidden)?,
            gate_up,
            down,
            post_ffn_norm,
            sliding: c.sliding_layers.get(il).copied().unwrap_or(false),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Positions currently in the KV cache.
    pub fn cached_positions(&self) -> usize {
        self.caches.first().map_or(0, LayerCache::len)
    }

    /// Runs `tokens` at positions `start_pos..` (appending to the KV cache)
    /// and returns the logits of the last position as a 1-D f32 tensor of
    /// `vocab_size` values.
    ///
    /// `start_pos` may be below the number of cached positions to rewind (the
    /// cache is truncated there first), but not above it.
    pub fn forward(&mut self, tokens: &[u32], start_pos: usize) -> Result<Tensor, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        let cached = self.cached_positions();
        if start_pos > cached {
            return Err(ModelError::BadPosition { start_pos, cached });
        }
        let end = start_pos + tokens.len();
        if end > self.config.context_length {
            return Err(ModelError::ContextOverflow {
                needed: end,
                context: self.config.context_length,
            });
        }
        if let Some(&token) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(ModelError::TokenOutOfRange {
                token,
                vocab: self.config.vocab_size,
            });
        }
        self.caches.iter_mut().for_each(|c| c.truncate(start_pos));
        let mut logits = None;
        let batches = tokens.chunks(MAX_BATCH);
        let n_batches = batches.len();
        for (i, batch) in batches.enumerate() {
            let start = start_pos + i * MAX_BATCH;
            logits = self.run_batch(batch, start, i + 1 == n_batches)?;
        }
        let logits = logits.ok_or(ModelError::EmptyInput)?;
        let n = logits.len();
        Tensor::from_vec(logits, n, &Device::Cpu).context(|| "building the logits tensor".into())
    }

    /// Empties the KV cache (RoPE tables are kept: they only depend on positions).
    pub fn clear_cache(&mut self) {
        self.caches.iter_mut().for_each(LayerCache::clear);
    }

    fn run_batch(
        &mut self,
        tokens: &[u32],
        start: usize,
        want_logits: bool,
    ) -> Result<Option<Vec<f32>>, ModelError> {
        let c = &self.config;
        let n = tokens.len();
        let hidden = c.hidden_size;
        let mut x = self.embedding.embedding(tokens)?;
        if let Some(s) = c.embedding_scale {
            scale(&mut x, s);
        }
        self.rope_global.ensure(start + n);
        if let Some(rope) = &mut self.rope_local {
            rope.ensure(start + n);
        }
        let (q_dim, kv_dim, kv_dim_v) = (c.q_dim(), c.kv_dim(), c.kv_dim_v());
        let n_layers = self.layers.len();
        // Rows of `x` still being carried: all of them, until the last layer
        // (where only the final position feeds the logits).
        let mut rows = n;
        for (il, (layer, cache)) in self.layers.iter().zip(self.caches.iter_mut()).enumerate() {
            let last_layer = il + 1 == n_layers;
            let mut h = x.clone();
            rms_norm(&mut h, &layer.attn_norm, c.rms_eps);
            let qkv = layer.qkv.forward(&h, Rows::all(n))?;
            let width = q_dim + kv_dim + kv_dim_v;
            let mut q = Vec::with_capacity(n * q_dim);
            let mut k = Vec::with_capacity(n * kv_dim);
            let mut v = Vec::with_capacity(n * kv_dim_v);
            for row in qkv.chunks_exact(width) {
                q.extend_from_slice(&row[..q_dim]);
                k.extend_from_slice(&row[q_dim..q_dim + kv_dim]);
                v.extend_from_slice(&row[q_dim + kv_dim..]);
            }
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                rms_norm(&mut q, qn, c.rms_eps);
                rms_norm(&mut k, kn, c.rms_eps);
            }
            let rope = match &self.rope_local {
                Some(local) if layer.sliding => local,
                _ => &self.rope_global,
            };
            rope.apply(&mut q, c.n_heads, c.head_dim, start);
            rope.apply(&mut k, c.n_kv_heads, c.head_dim, start);
            if c.query_scale != 1.0 {
                scale(&mut q, c.query_scale);
            }
            cache.append(&k, &v);
            if last_layer && !want_logits {
                break;
            }
            let shape = AttnShape {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
                head_dim_v: c.head_dim_v,
                kq_scale: c.kq_scale,
                window: if layer.sliding {
                    c.sliding_window
                } else {
                    None
                },
            };
            // In the last layer only the final position matters (llama.cpp
            // drops the other rows there too); rows are independent, so this
            // does not change the result.
            if last_layer {
                q.drain(..(n - 1) * q_dim);
                x.drain(..(n - 1) * hidden);
                rows = 1;
            }
            let q_start = start + n - rows;
            let attn = attention(&q, cache, q_start, &shape, n);
            // llama.cpp projects every row and keeps the last one afterwards;
            // the row's position in that batch decides how some kernels round.
            let wo_rows = Rows {
                count: rows,
                first: n - rows,
                batch: n,
            };
            let mut a = layer.wo.forward(&attn, wo_rows)?;
            if let Some(w) = &layer.post_attn_norm {
                rms_norm(&mut a, w, c.rms_eps);
            }
            add_assign(&mut x, &a);
            let mut h = x.clone();
            rms_norm(&mut h, &layer.ffn_norm, c.rms_eps);
            let gate_up = layer.gate_up.forward(&h, Rows::all(rows))?;
            let act = gated_activation(&gate_up, c.ffn_size, c.activation);
            let mut f = layer.down.forward(&act, Rows::all(rows))?;
            if let Some(w) = &layer.post_ffn_norm {
                rms_norm(&mut f, w, c.rms_eps);
            }
            add_assign(&mut x, &f);
        }
        if !want_logits {
            return Ok(None);
        }
        let mut last = x[(rows - 1) * hidden..].to_vec();
        rms_norm(&mut last, &self.output_norm, c.rms_eps);
        // Checked here, not only on the logits: quantising a NaN activation for the output
        // matmul turns it into zeros, and broken weights would answer token 0 forever.
        let position = start + n - 1;
        if !all_finite(&last) {
            return Err(ModelError::NonFinite { position });
        }
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        let logits = output.forward(&last, Rows::all(1))?;
        if !all_finite(&logits) {
            return Err(ModelError::NonFinite { position });
        }
        Ok(Some(logits))
    }

    /// Bytes of weights plus the KV cache currently reserved.
    pub fn memory_in_use(&self) -> u64 {
        let weights: usize = self.embedding.weight_bytes()
            + self.output.as_ref().map_or(0, Linear::weight_bytes)
            + self
                .layers
                .iter()
                .map(|l| {
                    l.qkv.weight_bytes()
                        + l.wo.weight_bytes()
                        + l.gate_up.weight_bytes()
                        + l.down.weight_bytes()
                })
                .sum::<usize>();
        let cache: usize = self.caches.iter().map(LayerCache::bytes).sum();
        let rope = self.rope_global.bytes() + self.rope_local.as_ref().map_or(0, Rope::bytes);
        (weights + cache + rope) as u64
    }
}

/// True when no value is NaN or infinite. A branch-free OR over the exponent bits, so it
/// vectorises: the logits of a 262k vocabulary are checked every token.
fn all_finite(values: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    values.iter().fold(0u32, |acc, v| {
        acc | u32::from(v.to_bits() & EXPONENT == EXPONENT)
    }) == 0
}

#[cfg(test)]
mod tests {
    use super::all_finite;

    #[test]
    fn all_finite_spots_nan_and_both_infinities_anywhere() {
        let mut v = vec![1.0f32; 1000];
        assert!(all_finite(&v));
        assert!(all_finite(&[
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            0.0,
            -0.0
        ]));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            v[997] = bad;
            assert!(!all_finite(&v), "{bad}");
            v[997] = 1.0;
        }
    }
}
