//! Our transformer on candle-core's quantised CPU kernels, for the llama
//! (and Mistral), qwen2, qwen3, gemma3 and phi3 architectures.
//!
//! Why not candle-transformers: its per-architecture models diverge from
//! llama.cpp (quantized_gemma3 uses SiLU where Gemma needs tanh-GELU and
//! drifts at the second greedy token) and allocate RoPE tables for the whole
//! trained context. The contract here is "same math as llama.cpp", checked
//! token for token against it (`tests/model_reference.rs`), so one decoder
//! takes its per-architecture choices from GGUF metadata ([`ModelConfig`])
//! and reproduces llama.cpp's rounding where it matters: activation
//! quantisation in matmuls, the f16 KV cache, its flash-attention paths,
//! the f16 GELU table and the RoPE angle recurrence.
//!
//! - [`config`]: hyperparameters and per-architecture choices.
//! - `weights`: reading tensors (Q5_0 is widened to Q8_0 for SIMD kernels).
//! - `linear`: quantised matmuls, fused where projections share an input.
//! - `rope`, `kv_cache`, `attention`, `ops`: the layer's pieces.
//! - `transformer`: [`Transformer`], loading and the forward pass.
//! - `memory`: [`Transformer::estimate_memory`], from the header alone.

mod attention;
pub mod config;
mod error;
mod f16;
mod kernels;
mod kv_cache;
mod linear;
mod memory;
mod ops;
mod rope;
mod transformer;
mod weights;

pub use config::{Activation, Arch, ModelConfig, RopeParams, RopeStyle};
pub use error::ModelError;
pub use transformer::{MAX_BATCH, Transformer};
