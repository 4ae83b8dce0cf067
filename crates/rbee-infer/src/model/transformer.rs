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

use super::attention::AttnShape;
use super::config::{Arch, ModelConfig};
use super::error::{CandleContext, ModelError};
use super::linear::Origin;
use super::rope::Rope;
use super::runtime::{Cpu, LayerKv, Runtime, Span};
use super::safetensors::SafetensorsModel;
use super::weights::TensorReader;

/// Largest batch run through the layers at once, like llama.cpp's default
/// `n_ubatch`; longer prompts are processed in slices of this many tokens.
/// Slicing the same way also keeps attention on the same numeric path as
/// llama.cpp.
pub const MAX_BATCH: usize = 512;

/// A loaded model's weights on runtime `R` (the CPU unless said otherwise). Sequences' state
/// lives in [`SeqCache`]s.
#[derive(Debug)]
pub struct Transformer<R: Runtime = Cpu> {
    runtime: R,
    config: ModelConfig,
    /// `token_embd.weight`, also the output projection when `output` is absent.
    embedding: R::Matrix,
    output: Option<R::Matrix>,
    output_norm: R::Vector,
    layers: Vec<Layer<R>>,
    rope_global: Rope,
    /// RoPE of sliding-window layers, when it differs (gemma3).
    rope_local: Option<Rope>,
}

#[derive(Debug)]
struct Layer<R: Runtime> {
    attn_norm: R::Vector,
    /// Output rows are `[q | k | v]`.
    qkv: R::Matrix,
    q_norm: Option<R::Vector>,
    k_norm: Option<R::Vector>,
    wo: R::Matrix,
    post_attn_norm: Option<R::Vector>,
    ffn_norm: R::Vector,
    /// Output rows are `[gate | up]`.
    gate_up: R::Matrix,
    down: R::Matrix,
    post_ffn_norm: Option<R::Vector>,
    sliding: bool,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Transformer>();
};

impl Transformer<Cpu> {
    /// Loads a GGUF model on the CPU runtime; `device` must be the CPU.
    pub fn load_gguf(path: &Path, device: &Device) -> Result<Transformer, ModelError> {
        if !device.is_cpu() {
            return Err(ModelError::UnsupportedDevice(device.location()));
        }
        Transformer::load_gguf_on(Cpu, path)
    }

    /// Loads a safetensors folder opened with [`SafetensorsModel::open`] on the CPU runtime:
    /// the same model, kernels and results as the GGUF converted from it.
    pub fn load_safetensors(
        model: &SafetensorsModel,
        device: &Device,
    ) -> Result<Transformer, ModelError> {
        if !device.is_cpu() {
            return Err(ModelError::UnsupportedDevice(device.location()));
        }
        Transformer::load_safetensors_on(Cpu, model)
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
                output: if i + 1 == n_batches {
                    Output::Logits
                } else {
                    Output::Nothing
                },
            }];
            logits = self.forward_batch(&mut step)?.pop().flatten();
        }
        let logits = logits.ok_or(ModelError::EmptyInput)?;
        let n = logits.len();
        Tensor::from_vec(logits, n, &Device::Cpu).context(|| "building the logits tensor".into())
    }
}

impl<R: Runtime> Transformer<R> {
    /// Loads a GGUF model on `runtime`.
    pub fn load_gguf_on(runtime: R, path: &Path) -> Result<Transformer<R>, ModelError> {
        let header = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&header)?;
        let mut reader = TensorReader::open(path, &header)?;
        let started = std::time::Instant::now();
        let model = Self::load(runtime, &config, &mut reader)?;
        tracing::debug!(
            arch = config.architecture,
            layers = config.n_layers,
            runtime = model.runtime.describe(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded model weights"
        );
        Ok(model)
    }

    /// Loads a safetensors folder on `runtime`.
    pub fn load_safetensors_on(
        runtime: R,
        model: &SafetensorsModel,
    ) -> Result<Transformer<R>, ModelError> {
        let config = ModelConfig::from_gguf(model.header())?;
        let mut reader = TensorReader::open_safetensors(model)?;
        Self::load(runtime, &config, &mut reader)
    }

    fn load(
        rt: R,
        config: &ModelConfig,
        r: &mut TensorReader<'_>,
    ) -> Result<Transformer<R>, ModelError> {
        let c = config;
        let hidden = c.hidden_size;
        // The vocabulary-sized matrices are streamed: they dominate small models.
        let embedding = rt.load_embedding(r, "token_embd.weight", c.vocab_size, hidden)?;
        let output = if r.has("output.weight") {
            let bias = r.optional_vector("output.bias", c.vocab_size)?;
            Some(rt.load_matrix(r, "output.weight", c.vocab_size, hidden, bias)?)
        } else {
            None
        };
        let output_norm = rt.vector(r.vector("output_norm.weight", hidden)?)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for il in 0..c.n_layers {
            layers.push(Self::load_layer(&rt, c, r, il)?);
        }
        // llama 3 ships per-pair RoPE frequency divisors.
        let freq_factors = r.optional_vector("rope_freqs.weight", c.n_rot / 2)?;
        let rope_global = Rope::new(c.rope_style, c.n_rot, &c.rope, freq_factors);
        let rope_local = (c.sliding_window.is_some() && c.rope_local != c.rope)
            .then(|| Rope::new(c.rope_style, c.n_rot, &c.rope_local, None));
        Ok(Transformer {
            runtime: rt,
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
        rt: &R,
        c: &ModelConfig,
        r: &mut TensorReader<'_>,
        il: usize,
    ) -> Result<Layer<R>, ModelError> {
        let name = |t: &str| format!("blk.{il}.{t}");
        let hidden = c.hidden_size;
        let (q_dim, kv_dim, kv_dim_v) = (c.q_dim(), c.kv_dim(), c.kv_dim_v());
        let qkv = if r.has(&name("attn_qkv.weight")) {
            let rows = q_dim + kv_dim + kv_dim_v;
            let bias = r.optional_vector(&name("attn_qkv.bias"), rows)?;
            rt.fused(vec![(
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
            rt.fused(parts)?
        };
        let (q_norm, k_norm) = if c.qk_norm {
            (
                Some(rt.vector(r.vector(&name("attn_q_norm.weight"), c.head_dim)?)?),
                Some(rt.vector(r.vector(&name("attn_k_norm.weight"), c.head_dim)?)?),
            )
        } else {
            (None, None)
        };
        let wo_bias = r.optional_vector(&name("attn_output.bias"), hidden)?;
        let wo = rt.fused(vec![(
            r.matrix(
                &name("attn_output.weight"),
                hidden,
                c.n_heads * c.head_dim_v,
            )?,
            wo_bias,
        )])?;
        let ffn = c.ffn_size;
        let gate_up = if c.arch == Arch::Phi3 {
            let bias = r.optional_vector(&name("ffn_up.bias"), 2 * ffn)?;
            rt.fused(vec![(
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
            rt.fused(parts)?
        };
        let down_bias = r.optional_vector(&name("ffn_down.bias"), hidden)?;
        let down = rt.fused(vec![(
            r.matrix(&name("ffn_down.weight"), hidden, ffn)?,
            down_bias,
        )])?;
        let (post_attn_norm, post_ffn_norm) = if c.post_norms {
            (
                Some(rt.vector(r.vector(&name("post_attention_norm.weight"), hidden)?)?),
                Some(rt.vector(r.vector(&name("post_ffw_norm.weight"), hidden)?)?),
            )
        } else {
            (None, None)
        };
        Ok(Layer {
            attn_norm: rt.vector(r.vector(&name("attn_norm.weight"), hidden)?)?,
            qkv,
            q_norm,
            k_norm,
            wo,
            post_attn_norm,
            ffn_norm: rt.vector(r.vector(&name("ffn_norm.weight"), hidden)?)?,
            gate_up,
            down,
            post_ffn_norm,
            sliding: c.sliding_layers.get(il).copied().unwrap_or(false),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The runtime the model runs on.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// An empty KV cache for one sequence of this model.
    pub fn new_cache(&self) -> SeqCache<R> {
        let c = &self.config;
        SeqCache {
            layers: (0..c.n_layers)
                .map(|_| self.runtime.new_kv(c.kv_dim(), c.kv_dim_v()))
                .collect(),
        }
    }

    /// Checks one entry of a step before anything runs.
    fn check(&self, step: &SeqStep<'_, R>) -> Result<(), ModelError> {
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

    /// Teacher forcing: the logits after every token of `tokens`, the first `prefill` in one
    /// batch (the prefill path, at most [`MAX_BATCH`]), the rest one step at a time (the decode
    /// path), on a cache of its own. How runtimes are compared position by position.
    pub fn logits_per_position(
        &mut self,
        tokens: &[u32],
        prefill: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut cache = self.new_cache();
        let mut out = Vec::with_capacity(tokens.len());
        let mut at = 0;
        while at < tokens.len() {
            let n = if at == 0 {
                prefill.clamp(1, tokens.len())
            } else {
                1
            };
            let mut step = [SeqStep {
                cache: &mut cache,
                tokens: &tokens[at..at + n],
                start: at,
                output: Output::Logits,
            }];
            let logits = self
                .forward_batch(&mut step)?
                .pop()
                .flatten()
                .ok_or(ModelError::EmptyInput)?;
            out.push(logits);
            at += n;
        }
        Ok(out)
    }

    /// One forward step over several sequences: entry `i` runs its `tokens` (at most
    /// [`MAX_BATCH`]) at positions `start..` of its own cache. Returns, per entry, what its
    /// [`Output`] asked for.
    ///
    /// Rows of all entries go through each matmul together (each weight block is read once
    /// for all of them), but every row is computed as it would be in a batch of its entry's
    /// tokens alone: the results of an entry do not depend on the other entries.
    pub fn forward_batch(
        &mut self,
        steps: &mut [SeqStep<'_, R>],
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

    fn run_batch(&self, steps: &mut [SeqStep<'_, R>]) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        let rt = &self.runtime;
        let c = &self.config;
        let hidden = c.hidden_size;
        let all_tokens: Vec<u32> = steps
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let mut x = rt.embed(&self.embedding, &all_tokens)?;
        if let Some(s) = c.embedding_scale {
            rt.scale(&mut x, s)?;
        }
        let (q_dim, kv_dim, kv_dim_v) = (c.q_dim(), c.kv_dim(), c.kv_dim_v());
        let n_layers = self.layers.len();
        // The entries whose rows are still carried, with the rows they carry in `x`: every
        // token, until the last layer (where an entry wanting logits keeps its final row, one
        // wanting hidden states all of them, and one wanting nothing stops).
        let mut carried: Vec<Carried> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| Carried {
                entry: i,
                tokens: s.tokens.len(),
                rows: s.tokens.len(),
            })
            .collect();
        for (il, layer) in self.layers.iter().enumerate() {
            let last_layer = il + 1 == n_layers;
            let origins: Vec<Origin> = carried
                .iter()
                .flat_map(|cr| Origin::batch(cr.entry as u32, cr.tokens))
                .collect();
            let spans: Vec<Span> = carried
                .iter()
                .map(|cr| Span {
                    rows: cr.tokens,
                    start: steps[cr.entry].start,
                    batch: cr.tokens,
                })
                .collect();
            let mut h = rt.copy(&x)?;
            rt.rms_norm(&mut h, &layer.attn_norm, c.rms_eps)?;
            let qkv = rt.matmul(&layer.qkv, &h, &origins)?;
            drop(h);
            let [mut q, mut k, v]: [R::Act; 3] = rt
                .split_columns(&qkv, &[q_dim, kv_dim, kv_dim_v])?
                .try_into()
                .map_err(|_| ModelError::Unsupported("a split into three parts".into()))?;
            drop(qkv);
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                rt.rms_norm(&mut q, qn, c.rms_eps)?;
                rt.rms_norm(&mut k, kn, c.rms_eps)?;
            }
            let rope = match &self.rope_local {
                Some(local) if layer.sliding => local,
                _ => &self.rope_global,
            };
            rt.rope(&mut q, rope, c.n_heads, c.head_dim, &spans)?;
            rt.rope(&mut k, rope, c.n_kv_heads, c.head_dim, &spans)?;
            let mut row = 0;
            for cr in &carried {
                let kv = &mut steps[cr.entry].cache.layers[il];
                rt.append_kv(kv, &k, &v, row..row + cr.tokens)?;
                row += cr.tokens;
            }
            if c.query_scale != 1.0 {
                rt.scale(&mut q, c.query_scale)?;
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
            // Which rows go on past attention, where each sits in its own batch, and the
            // attention spans of the query rows.
            let mut wo_origins = origins;
            let mut attn_spans = spans;
            let mut ffn_origins = None;
            if last_layer {
                // In the last layer only an entry's final position matters when it wants
                // logits (llama.cpp drops the other rows there too); rows are independent, so
                // this does not change the result. Entries that want hidden states keep all
                // rows (as llama.cpp does for pooled embeddings); entries that want nothing
                // stop here, their cache written.
                let mut keep_rows = Vec::new();
                let mut kept = Vec::new();
                let (mut wo_o, mut ffn_o, mut a_spans) = (Vec::new(), Vec::new(), Vec::new());
                let mut row = 0;
                for cr in &carried {
                    let (n, start) = (cr.tokens, steps[cr.entry].start);
                    let seq = cr.entry as u32;
                    match steps[cr.entry].output {
                        Output::Nothing => {}
                        Output::Logits => {
                            keep_rows.push(row + n - 1);
                            // llama.cpp projects every row and keeps the last one afterwards;
                            // the row's position in that batch decides how some kernels round.
                            wo_o.push(Origin {
                                row: n as u32 - 1,
                                batch: n as u32,
                                seq,
                            });
                            ffn_o.push(Origin::single(seq));
                            a_spans.push(Span {
                                rows: 1,
                                start: start + n - 1,
                                batch: n,
                            });
                            kept.push(Carried { rows: 1, ..*cr });
                        }
                        Output::Hidden => {
                            keep_rows.extend(row..row + n);
                            wo_o.extend(Origin::batch(seq, n));
                            ffn_o.extend(Origin::batch(seq, n));
                            a_spans.push(Span {
                                rows: n,
                                start,
                                batch: n,
                            });
                            kept.push(*cr);
                        }
                    }
                    row += n;
                }
                if kept.is_empty() {
                    return Ok(vec![None; steps.len()]);
                }
                q = rt.gather_rows(&q, q_dim, &keep_rows)?;
                x = rt.gather_rows(&x, hidden, &keep_rows)?;
                wo_origins = wo_o;
                ffn_origins = Some(ffn_o);
                attn_spans = a_spans;
                carried = kept;
            }
            let entries: Vec<(Span, &R::Kv)> = attn_spans
                .iter()
                .zip(&carried)
                .map(|(&span, cr)| (span, &steps[cr.entry].cache.layers[il]))
                .collect();
            let attn = rt.attention(&q, &entries, &shape)?;
            drop(q);
            let mut a = rt.matmul(&layer.wo, &attn, &wo_origins)?;
            if let Some(w) = &layer.post_attn_norm {
                rt.rms_norm(&mut a, w, c.rms_eps)?;
            }
            rt.add(&mut x, &a)?;
            let ffn_origins = ffn_origins.unwrap_or(wo_origins);
            let mut h = rt.copy(&x)?;
            rt.rms_norm(&mut h, &layer.ffn_norm, c.rms_eps)?;
            let gate_up = rt.matmul(&layer.gate_up, &h, &ffn_origins)?;
            let act = rt.gated(&gate_up, c.ffn_size, c.activation)?;
            let mut f = rt.matmul(&layer.down, &act, &ffn_origins)?;
            if let Some(w) = &layer.post_ffn_norm {
                rt.rms_norm(&mut f, w, c.rms_eps)?;
            }
            rt.add(&mut x, &f)?;
        }
        // `x` now holds the rows of the entries that want an output, in `carried` order.
        rt.rms_norm(&mut x, &self.output_norm, c.rms_eps)?;
        let mut out = vec![None; steps.len()];
        let (mut logit_rows, mut singles) = (Vec::new(), Vec::new());
        let mut row = 0;
        let finals = rt.to_host(rt.copy(&x)?)?;
        for cr in &carried {
            let rows = &finals[row * hidden..(row + cr.rows) * hidden];
            // Checked here, not only on the logits: quantising a NaN activation for the output
            // matmul turns it into zeros, and broken weights would answer token 0 forever.
            if !all_finite(rows) {
                return Err(ModelError::NonFinite {
                    position: steps[cr.entry].start + cr.tokens - 1,
                });
            }
            match steps[cr.entry].output {
                Output::Logits => {
                    logit_rows.push(row);
                    singles.push(Origin::single(cr.entry as u32));
                }
                Output::Hidden => out[cr.entry] = Some(rows.to_vec()),
                Output::Nothing => {}
            }
            row += cr.rows;
        }
        if logit_rows.is_empty() {
            return Ok(out);
        }
        let last = if logit_rows.len() == row {
            x
        } else {
            rt.gather_rows(&x, hidden, &logit_rows)?
        };
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        let logits = rt.to_host(rt.matmul(output, &last, &singles)?)?;
        let vocab = c.vocab_size;
        for (t, origin) in singles.iter().enumerate() {
            let entry = origin.seq as usize;
            let logits = &logits[t * vocab..(t + 1) * vocab];
            if !all_finite(logits) {
                return Err(ModelError::NonFinite {
                    position: steps[entry].start + steps[entry].tokens.len() - 1,
                });
            }
            out[entry] = Some(logits.to_vec());
        }
        Ok(out)
    }

    /// Bytes of weights and tables (each sequence's [`SeqCache::bytes`] comes on top).
    pub fn memory_in_use(&self) -> u64 {
        let weights = self.sum_matrices(|rt, m| rt.matrix_bytes(m));
        let rope = self.rope_global.bytes() + self.rope_local.as_ref().map_or(0, Rope::bytes);
        (weights + rope) as u64
    }

    /// Of the weights' bytes, those used in place from the mapped model file.
    pub fn mapped_weight_bytes(&self) -> u64 {
        self.sum_matrices(|rt, m| rt.matrix_mapped_bytes(m)) as u64
    }

    fn sum_matrices(&self, bytes: impl Fn(&R, &R::Matrix) -> usize) -> usize {
        let rt = &self.runtime;
        bytes(rt, &self.embedding)
            + self.output.as_ref().map_or(0, |m| bytes(rt, m))
            + self
                .layers
                .iter()
                .map(|l| {
                    bytes(rt, &l.qkv)
                        + bytes(rt, &l.wo)
                        + bytes(rt, &l.gate_up)
                        + bytes(rt, &l.down)
                })
                .sum::<usize>()
    }
}

/// An entry's rows while they travel through the layers.
#[derive(Debug, Clone, Copy)]
struct Carried {
    entry: usize,
    /// Tokens the entry runs this step.
    tokens: usize,
    /// Rows of it still in the activations.
    rows: usize,
}

/// One sequence's keys and values, for every layer of the model that made it
/// ([`Transformer::new_cache`]), in runtime `R`'s storage (on the CPU f16, growing in chunks of
/// positions as the sequence does).
#[derive(Debug)]
pub struct SeqCache<R: Runtime = Cpu> {
    layers: Vec<R::Kv>,
}

impl<R: Runtime> Clone for SeqCache<R>
where
    R::Kv: Clone,
{
    fn clone(&self) -> Self {
        SeqCache {
            layers: self.layers.clone(),
        }
    }
}

impl<R: Runtime> SeqCache<R> {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
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
        self.layers.iter_mut().for_each(LayerKv::clear);
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(LayerKv::bytes).sum::<usize>() as u64
    }
}

/// What an entry of a step returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Nothing: a prompt chunk before the last only fills the cache.
    Nothing,
    /// The logits of its last token (`vocab_size` values).
    Logits,
    /// The final hidden state (after the output norm, before the output projection) of every
    /// token, `tokens × hidden_size` values: what embeddings are pooled from.
    Hidden,
}

/// One sequence's part of a [`Transformer::forward_batch`] step.
#[derive(Debug)]
pub struct SeqStep<'a, R: Runtime = Cpu> {
    pub cache: &'a mut SeqCache<R>,
    /// At most [`MAX_BATCH`] tokens, at positions `start..`.
    pub tokens: &'a [u32],
    /// At most the cache's length; a shorter one rewinds the cache there first.
    pub start: usize,
    pub output: Output,
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
