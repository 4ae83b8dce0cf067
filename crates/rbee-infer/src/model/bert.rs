//! BERT-family encoders: the transformer behind sentence-transformers models such as
//! all-MiniLM-L6-v2 and the bge/e5/gte families, from a Hugging Face folder or a llama.cpp
//! `bert` GGUF, and nomic-bert (nomic-embed-text) GGUFs: the same post-norm encoder with
//! rotary positions, a fused qkv projection, a SwiGLU feed-forward and no biases. Embeddings
//! only: every token attends to every other token of its input, and an input's vector is its
//! final hidden states pooled (mean, `[CLS]` or last token).
//!
//! Why not candle-transformers' BERT: it runs a batch as a padded rectangle with a mask, so a
//! batch of inputs of mixed lengths computes every padding row, and its results depend on
//! the padding. Here a batch is **packed**: the rows of all inputs one after another, every
//! matmul over all of them at once (candle's f32 GEMM), attention per input over its own rows.
//! Nothing is computed for padding, and an input's vector does not depend on what it was
//! batched with (to float rounding: the GEMM may block rows differently for another row
//! count, see `tests/encoder.rs`). It is also small enough to own: the architecture is the
//! published one (post-norm layers, absolute positions, exact GELU), written from the paper,
//! and checked against an independent numpy implementation and llama.cpp; nomic-bert's
//! differences are written from its technical report and checked against llama.cpp.
//!
//! - [`config`]: [`EncoderConfig`], from GGUF metadata or the sentence-transformers files.
//! - `tensors`: the weights by llama.cpp's names, from either format, as f32.
//! - `math`: layer norm, GELU, attention over packed inputs.

pub mod config;
mod math;
mod tensors;

use candle_core::{Device, Tensor};
use rbee_format::gguf::GgufFile;

use super::config::{RopeParams, RopeStyle};
use super::error::{CandleContext, ModelError};
use super::rope::Rope;
pub(crate) use config::not_yet;
pub use config::{ENCODER_ARCHITECTURES, ENCODER_MODEL_TYPES, EncoderConfig, Positions};
use math::Span;
use tensors::Tensors;

/// A linear layer: `x · wᵀ + b`.
#[derive(Debug)]
struct Linear {
    /// `wᵀ`, `in × out` (a transposed view of the `out × in` weights; the GEMM reads it by
    /// strides).
    wt: Tensor,
    /// Empty when the model has no bias here.
    bias: Vec<f32>,
    cols: usize,
}

impl Linear {
    fn load(t: &mut Tensors, name: &str) -> Result<Linear, ModelError> {
        let w = t.tensor(&format!("{name}.weight"))?;
        let cols = w.dims()[1];
        let bias = format!("{name}.bias");
        Ok(Linear {
            wt: w.t().context(|| format!("transposing {name}"))?,
            bias: if t.has(&bias) {
                t.values(&bias)?
            } else {
                Vec::new()
            },
            cols,
        })
    }

    /// Several projections of the same input as one (`[a | b | …]` per output row).
    fn fused(parts: Vec<Linear>) -> Result<Linear, ModelError> {
        let cols = parts.first().map_or(0, |p| p.cols);
        let wts: Vec<&Tensor> = parts.iter().map(|p| &p.wt).collect();
        let wt = Tensor::cat(&wts, 1)
            .and_then(|t| t.t())
            .and_then(|t| t.contiguous())
            .and_then(|t| t.t())
            .context(|| "fusing projections".into())?;
        // Biases fused too; a part without one adds zeros, unless no part has one.
        let bias = if parts.iter().all(|p| p.bias.is_empty()) {
            Vec::new()
        } else {
            parts
                .into_iter()
                .flat_map(|p| match p.bias.is_empty() {
                    true => vec![0.0; p.wt.dims()[1]],
                    false => p.bias,
                })
                .collect()
        };
        Ok(Linear { wt, bias, cols })
    }

    /// `x · wᵀ` for `x` of rows `cols` wide (the bias is the caller's, fused with what follows).
    fn matmul(&self, x: Vec<f32>) -> Result<Vec<f32>, ModelError> {
        let rows = x.len() / self.cols;
        let ctx = || format!("matmul of {rows} rows");
        let x = Tensor::from_vec(x, (rows, self.cols), &Device::Cpu).context(ctx)?;
        x.matmul(&self.wt)
            .and_then(|y| y.flatten_all())
            .and_then(|y| y.to_vec1::<f32>())
            .context(ctx)
    }
}

#[derive(Debug)]
struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Norm {
    fn load(t: &mut Tensors, name: &str) -> Result<Norm, ModelError> {
        Ok(Norm {
            w: t.values(&format!("{name}.weight"))?,
            b: t.values(&format!("{name}.bias"))?,
        })
    }
}

#[derive(Debug)]
struct Layer {
    qkv: Linear,
    output: Linear,
    attn_norm: Norm,
    /// `x·up`, or `[x·up | x·gate]` for a gated feed-forward.
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// A loaded BERT encoder.
#[derive(Debug)]
pub struct Bert {
    config: EncoderConfig,
    token_embd: Vec<f32>,
    position_embd: Vec<f32>,
    /// Row 0 of the token-type embeddings (every input is one segment), or zeros.
    token_type: Vec<f32>,
    embd_norm: Norm,
    layers: Vec<Layer>,
    /// Rotary tables for every position, with rotary positions.
    rope: Option<Rope>,
}

/// An encoder on disk, checked (headers only), ready to load.
#[derive(Debug)]
pub struct BertSource {
    config: EncoderConfig,
    tensors: Tensors,
    weight_bytes: u64,
}

impl BertSource {
    /// A llama.cpp `bert` GGUF the caller opened and validated.
    pub fn gguf(path: &std::path::Path, header: &GgufFile) -> Result<BertSource, ModelError> {
        let config = EncoderConfig::from_gguf(header)?;
        Self::checked(config, Tensors::gguf(path, header)?)
    }

    /// A Hugging Face BERT folder (sentence-transformers layout or plain).
    pub fn folder(dir: &std::path::Path) -> Result<BertSource, ModelError> {
        let config = EncoderConfig::from_folder(dir)?;
        Self::checked(config, Tensors::folder(dir)?)
    }

    fn checked(config: EncoderConfig, tensors: Tensors) -> Result<BertSource, ModelError> {
        let weight_bytes = tensors.check(&config)?;
        Ok(BertSource {
            config,
            tensors,
            weight_bytes,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Bytes the weights take once loaded (all f32).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Reads every weight.
    pub fn load(mut self) -> Result<Bert, ModelError> {
        let t = &mut self.tensors;
        let cfg = self.config;
        let h = cfg.hidden;
        let (position_embd, rope) = match cfg.position_kind {
            Positions::Absolute => {
                let mut table = t.values("position_embd.weight")?;
                table.truncate(cfg.positions * h);
                (table, None)
            }
            Positions::Rotary { freq_base, dims } => {
                let params = RopeParams {
                    freq_base,
                    freq_scale: 1.0,
                };
                let mut rope = Rope::new(RopeStyle::HalfSplit, dims, &params, None);
                rope.ensure(cfg.positions);
                (Vec::new(), Some(rope))
            }
        };
        let token_type = if t.has("token_types.weight") {
            let mut v = t.values("token_types.weight")?;
            v.truncate(h);
            v
        } else {
            vec![0.0; h]
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let qkv = if t.has(&p("attn_qkv.weight")) {
                Linear::load(t, &p("attn_qkv"))?
            } else {
                Linear::fused(vec![
                    Linear::load(t, &p("attn_q"))?,
                    Linear::load(t, &p("attn_k"))?,
                    Linear::load(t, &p("attn_v"))?,
                ])?
            };
            let up = if cfg.gated_ffn {
                Linear::fused(vec![
                    Linear::load(t, &p("ffn_up"))?,
                    Linear::load(t, &p("ffn_gate"))?,
                ])?
            } else {
                Linear::load(t, &p("ffn_up"))?
            };
            layers.push(Layer {
                qkv,
                output: Linear::load(t, &p("attn_output"))?,
                attn_norm: Norm::load(t, &p("attn_output_norm"))?,
                up,
                down: Linear::load(t, &p("ffn_down"))?,
                out_norm: Norm::load(t, &p("layer_output_norm"))?,
            });
        }
        let bert = Bert {
            token_embd: t.values("token_embd.weight")?,
            position_embd,
            token_type,
            embd_norm: Norm::load(t, "token_embd_norm")?,
            layers,
            rope,
            config: cfg,
        };
        tracing::debug!(from = %t.origin().display(), layers = bert.layers.len(), "encoder weights loaded");
        Ok(bert)
    }
}

impl Bert {
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The final hidden states of a packed batch: `inputs` one after another, each at most
    /// [`EncoderConfig::positions`] tokens, as rows of `hidden` values in the same order.
    pub fn forward(&self, inputs: &[&[u32]]) -> Result<Vec<f32>, ModelError> {
        let cfg = &self.config;
        let h = cfg.hidden;
        let mut spans = Vec::with_capacity(inputs.len());
        let mut rows = 0;
        for input in inputs {
            if input.is_empty() {
                return Err(ModelError::EmptyInput);
            }
            if input.len() > cfg.positions {
                return Err(ModelError::ContextOverflow {
                    needed: input.len(),
                    context: cfg.positions,
                });
            }
            spans.push(Span {
                start: rows,
                len: input.len(),
            });
            rows += input.len();
        }
        let mut x = vec![0f32; rows * h];
        for (input, span) in inputs.iter().zip(&spans) {
            for (pos, &token) in input.iter().enumerate() {
                if token as usize >= cfg.vocab {
                    return Err(ModelError::TokenOutOfRange {
                        token,
                        vocab: cfg.vocab,
                    });
                }
                let row = &mut x[(span.start + pos) * h..][..h];
                let word = &self.token_embd[token as usize * h..][..h];
                if self.position_embd.is_empty() {
                    for ((v, &w), &t) in row.iter_mut().zip(word).zip(&self.token_type) {
                        *v = w + t;
                    }
                } else {
                    let position = &self.position_embd[pos * h..][..h];
                    for (((v, &w), &p), &t) in
                        row.iter_mut().zip(word).zip(position).zip(&self.token_type)
                    {
                        *v = w + p + t;
                    }
                }
            }
        }
        math::add_layer_norm(&mut x, &[], &self.embd_norm.w, &self.embd_norm.b, cfg.eps);
        let head_dim = h / cfg.heads;
        for layer in &self.layers {
            let mut qkv = layer.qkv.matmul(x.clone())?;
            math::add_bias(&mut qkv, &layer.qkv.bias);
            if let Some(rope) = &self.rope {
                math::rotate_queries_and_keys(&mut qkv, &spans, rope, cfg.heads, head_dim);
            }
            let context = math::attention(&qkv, &spans, cfg.heads, head_dim);
            drop(qkv);
            let mut attn = layer.output.matmul(context)?;
            math::add_bias(&mut attn, &layer.output.bias);
            math::add_layer_norm(
                &mut x,
                &attn,
                &layer.attn_norm.w,
                &layer.attn_norm.b,
                cfg.eps,
            );
            drop(attn);
            let mut up = layer.up.matmul(x.clone())?;
            if cfg.gated_ffn {
                math::add_bias(&mut up, &layer.up.bias);
                up = math::swiglu(&up, cfg.ffn);
            } else {
                math::add_bias_gelu(&mut up, &layer.up.bias);
            }
            let mut down = layer.down.matmul(up)?;
            math::add_bias(&mut down, &layer.down.bias);
            math::add_layer_norm(&mut x, &down, &layer.out_norm.w, &layer.out_norm.b, cfg.eps);
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite { position: i / h });
        }
        Ok(x)
    }

    /// Bytes of activations one forward pass over `rows` rows needs at its peak.
    pub fn step_bytes(config: &EncoderConfig, rows: usize) -> u64 {
        // x, its copy, qkv (3h) and the attention output, or the FFN's up (ffn; twice and once
        // more for the gated product) and down (h).
        let ffn = if config.gated_ffn {
            3 * config.ffn
        } else {
            config.ffn
        };
        let per_row = (2 * config.hidden + (4 * config.hidden).max(ffn + config.hidden)) as u64;
        4 * per_row * rows as u64
    }
}
