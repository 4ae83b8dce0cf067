//! [`Transformer`]: loading a GGUF model (or a safetensors folder) and running it over token
//! batches of one or many sequences.
//!
//! The weights are loaded once and only read afterwards; each sequence's keys and values live
//! in its own [`SeqCache`]. [`Transformer::forward_batch`] runs one step for several
//! sequences at once — prompt chunks and single decode tokens side by side — so every weight
//! matrix is read once per step for all of their rows. Each row is computed with the
//! arithmetic its own sequence's batch would use ([`Origin`]), so a sequence's results are the
//! same whichever others share the step.
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
use super::linear::{Linear, MultiLinear, Origin};
use super::ops::{add_assign, gated_activation, rms_norm, scale};
use super::rope::Rope;
use super::safetensors::SafetensorsModel;
use super::weights::TensorReader;

/// Largest batch run through the layers at once, like llama.cpp's default
/// `n_ubatch`; longer prompts are processed in slices of this many tokens.
/// Slicing the same way also keeps attention on the same numeric path as
/// llama.cpp.
pub const MAX_BATCH: usize = 512;

/// A loaded model's weights. Runs on the CPU. Sequences' state lives in [`SeqCache`]s.
#[derive(Debug)]
pub struct Transformer {
    config: ModelConfig,
    /// `token_embd.weight`, also the output projection when `output` is absent.
    embedding: Linear,
    output: Option<Linear>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
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
        Ok(Transformer {
            config: config.clone(),
            embedding,
            output,
            output_norm,
            layers,
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

    /// An empty KV cache for one sequence of this model.
    pub fn new_cache(&self) -> SeqCache {
        let c = &self.config;
        SeqCache {
            layers: (0..c.n_layers)
                .map(|_| LayerCache::new(c.kv_dim(), c.kv_dim_v()))
                .collect(),
        }
    }

    /// Runs `tokens` of one sequence at positions `start_pos..` (appending to its KV cache)
    /// and returns the logits of the last position as a 1-D f32 tensor of `vocab_size` values.
    /// Prompts longer than [`MAX_BATCH`] run in slices of that many tokens.
    ///
    /// `start_pos` may be below the number of cached positions to rewind (the cache is
    /// truncated there first), but not above it.
    pub fn forward(
        &mut self,
        cache: &mut SeqCache,
        tokens: &[u32],
        start_pos: usize,
    ) -> Result<Tensor, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        let mut logits = None;
        let batches = tokens.chunks(MAX_BATCH);
        let n_batches = batches.len();
        for (i, batch) in batches.enumerate() {
            let mut step = [SeqStep {
                cache: &mut *cache,
                tokens: batch,
                start: start_pos + i * MAX_BATCH,
                logits: i + 1 == n_batches,
            }];
            logits = self.forward_batch(&mut step)?.pop().flatten();
        }
        let logits = logits.ok_or(ModelError::EmptyInput)?;
        let n = logits.len();
        Tensor::from_vec(logits, n, &Device::Cpu).context(|| "building the logits tensor".into())
    }

    /// Checks one entry of a step before anything runs.
    fn check(&self, step: &SeqStep<'_>) -> Result<(), ModelError> {
        let tokens = step.tokens;
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        if tokens.len() > MAX_BATCH {
            return Err(ModelError::Unsupported(format!(
                "a step entry of {} tokens exceeds the batch limit of {MAX_BATCH}",
                tokens.len()
            )));
        }
        let cached = step.cache.len();
        if step.start > cached {
            return Err(ModelError::BadPosition {
                start_pos: step.start,
                cached,
            });
        }
        let end = step.start + tokens.len();
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
        Ok(())
    }

    /// One forward step over several sequences: entry `i` runs its `tokens` (at most
    /// [`MAX_BATCH`]) at positions `start..` of its own cache. Returns, per entry, the logits
    /// of its last position when it asked for them.
    ///
    /// Rows of all entries go through each matmul together (each weight block is read once
    /// for all of them), but every row is computed as it would be in a batch of its entry's
    /// tokens alone: the results of an entry do not depend on the other entries.
    pub fn forward_batch(
        &mut self,
        steps: &mut [SeqStep<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        for step in steps.iter() {
            self.check(step)?;
        }
        for step in steps.iter_mut() {
            step.cache.truncate(step.start);
        }
        let end = steps
            .iter()
            .map(|s| s.start + s.tokens.len())
            .max()
            .unwrap_or(0);
        self.rope_global.ensure(end);
        if let Some(rope) = &mut self.rope_local {
            rope.ensure(end);
        }
        self.run_batch(steps)
    }

    fn run_batch(&self, steps: &mut [SeqStep<'_>]) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        let c = &self.config;
        let hidden = c.hidden_size;
        let all_tokens: Vec<u32> = steps
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let mut x = self.embedding.embedding(&all_tokens)?;
        if let Some(s) = c.embedding_scale {
            scale(&mut x, s);
        }
        let (q_dim, kv_dim, kv_dim_v) = (c.q_dim(), c.kv_dim(), c.kv_dim_v());
        let n_layers = self.layers.len();
        // The entries whose rows are still carried, with their row count in `x`: all of
        // them, until the last layer (where only entries wanting logits keep their final row).
        let mut carried: Vec<(usize, usize)> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.tokens.len()))
            .collect();
        let origins_of = |carried: &[(usize, usize)]| -> Vec<Origin> {
            carried
                .iter()
                .flat_map(|&(i, n)| Origin::batch(i as u32, n))
                .collect()
        };
        for (il, layer) in self.layers.iter().enumerate() {
            let last_layer = il + 1 == n_layers;
            let origins = origins_of(&carried);
            let mut h = x.clone();
            rms_norm(&mut h, &layer.attn_norm, c.rms_eps);
            let qkv = layer.qkv.forward(&h, &origins)?;
            let width = q_dim + kv_dim + kv_dim_v;
            let rows = origins.len();
            let mut q = Vec::with_capacity(rows * q_dim);
            let mut k = Vec::with_capacity(rows * kv_dim);
            let mut v = Vec::with_capacity(rows * kv_dim_v);
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
            let mut row = 0;
            for &(i, n) in &carried {
                let start = steps[i].start;
                rope.apply(
                    &mut q[row * q_dim..(row + n) * q_dim],
                    c.n_heads,
                    c.head_dim,
                    start,
                );
                rope.apply(
                    &mut k[row * kv_dim..(row + n) * kv_dim],
                    c.n_kv_heads,
                    c.head_dim,
                    start,
                );
                steps[i].cache.layers[il].append(
                    &k[row * kv_dim..(row + n) * kv_dim],
                    &v[row * kv_dim_v..(row + n) * kv_dim_v],
                );
                row += n;
            }
            if c.query_scale != 1.0 {
                scale(&mut q, c.query_scale);
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
            // In the last layer only each entry's final position matters (llama.cpp drops
            // the other rows there too); rows are independent, so this does not change the
            // result. Entries that want no logits stop here, their cache written.
            let mut wo_origins = origins;
            if last_layer {
                let mut kept = Vec::new();
                let (mut kq, mut kx) = (Vec::new(), Vec::new());
                let mut row = 0;
                for &(i, n) in &carried {
                    if steps[i].logits {
                        let last = row + n - 1;
                        kq.extend_from_slice(&q[last * q_dim..(last + 1) * q_dim]);
                        kx.extend_from_slice(&x[last * hidden..(last + 1) * hidden]);
                        kept.push((i, n));
                    }
                    row += n;
                }
                if kept.is_empty() {
                    return Ok(vec![None; steps.len()]);
                }
                // llama.cpp projects every row and keeps the last one afterwards; the row's
                // position in that batch decides how some kernels round.
                wo_origins = kept
                    .iter()
                    .map(|&(i, n)| Origin {
                        row: n as u32 - 1,
                        batch: n as u32,
                        seq: i as u32,
                    })
                    .collect();
                q = kq;
                x = kx;
                carried = kept;
            }
            let mut attn = Vec::with_capacity(wo_origins.len() * c.n_heads * c.head_dim_v);
            let mut row = 0;
            for &(i, n) in &carried {
                let step = &steps[i];
                let rows = if last_layer { 1 } else { n };
                let q_start = step.start + n - rows;
                attn.extend(attention(
                    &q[row * q_dim..(row + rows) * q_dim],
                    &step.cache.layers[il],
                    q_start,
                    &shape,
                    n,
                ));
                row += rows;
            }
            let mut a = layer.wo.forward(&attn, &wo_origins)?;
            if let Some(w) = &layer.post_attn_norm {
                rms_norm(&mut a, w, c.rms_eps);
            }
            add_assign(&mut x, &a);
            let ffn_origins: Vec<Origin> = if last_layer {
                carried
                    .iter()
                    .map(|&(i, _)| Origin::single(i as u32))
                    .collect()
            } else {
                wo_origins
            };
            let mut h = x.clone();
            rms_norm(&mut h, &layer.ffn_norm, c.rms_eps);
            let gate_up = layer.gate_up.forward(&h, &ffn_origins)?;
            let act = gated_activation(&gate_up, c.ffn_size, c.activation);
            let mut f = layer.down.forward(&act, &ffn_origins)?;
            if let Some(w) = &layer.post_ffn_norm {
                rms_norm(&mut f, w, c.rms_eps);
            }
            add_assign(&mut x, &f);
        }
        // `x` now holds one row per entry that wants logits, in `carried` order.
        let mut out = vec![None; steps.len()];
        let mut finals = Vec::with_capacity(carried.len() * hidden);
        for (t, &(i, n)) in carried.iter().enumerate() {
            let mut last = x[t * hidden..(t + 1) * hidden].to_vec();
            rms_norm(&mut last, &self.output_norm, c.rms_eps);
            // Checked here, not only on the logits: quantising a NaN activation for the output
            // matmul turns it into zeros, and broken weights would answer token 0 forever.
            if !all_finite(&last) {
                return Err(ModelError::NonFinite {
                    position: steps[i].start + n - 1,
                });
            }
            finals.extend(last);
        }
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        let singles: Vec<Origin> = carried
            .iter()
            .map(|&(i, _)| Origin::single(i as u32))
            .collect();
        let logits = output.forward(&finals, &singles)?;
        let vocab = c.vocab_size;
        for (t, &(i, n)) in carried.iter().enumerate() {
            let row = logits[t * vocab..(t + 1) * vocab].to_vec();
            if !all_finite(&row) {
                return Err(ModelError::NonFinite {
                    position: steps[i].start + n - 1,
                });
            }
            out[i] = Some(row);
        }
        Ok(out)
    }

    /// Bytes of weights and tables (each sequence's [`SeqCache::bytes`] comes on top).
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
        let rope = self.rope_global.bytes() + self.rope_local.as_ref().map_or(0, Rope::bytes);
        (weights + rope) as u64
    }
}

/// One sequence's keys and values, for every layer of the model that made it
/// ([`Transformer::new_cache`]). Stored as f16; grows in chunks of positions as the sequence
/// does.
#[derive(Debug, Clone)]
pub struct SeqCache {
    layers: Vec<LayerCache>,
}

impl SeqCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps positions `..len` (a shorter prefix to extend differently).
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|l| l.truncate(len));
    }

    /// Drops everything and frees the memory.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(LayerCache::clear);
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(LayerCache::bytes).sum::<usize>() as u64
    }
}

/// One sequence's part of a [`Transformer::forward_batch`] step.
#[derive(Debug)]
pub struct SeqStep<'a> {
    pub cache: &'a mut SeqCache,
    /// At most [`MAX_BATCH`] tokens, at positions `start..`.
    pub tokens: &'a [u32],
    /// At most the cache's length; a shorter one rewinds the cache there first.
    pub start: usize,
    /// Return the logits of the last token (false: only fill the cache, a prompt chunk
    /// before the last).
    pub logits: bool,
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
