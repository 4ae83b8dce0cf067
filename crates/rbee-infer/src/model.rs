//! Our transformer for the llama (and Mistral), qwen2, qwen3, gemma3 and
//! phi3 architectures ([`config::SUPPORTED_ARCHITECTURES`], the engine's one
//! list of what runs), loading quantised GGUF weights (or, for llama and
//! qwen2, Hugging Face safetensors folders), on the CPU.
//!
//! Why not candle-transformers: its per-architecture models diverge from
//! llama.cpp (quantized_gemma3 uses SiLU where Gemma needs tanh-GELU and
//! drifts at the second greedy token) and allocate RoPE tables for the whole
//! trained context. The contract here is "same math as llama.cpp", checked
//! token for token against it (`tests/model_reference.rs`): one decoder
//! takes its per-architecture choices from GGUF metadata ([`ModelConfig`]),
//! and its kernels reproduce llama.cpp's CPU arithmetic bit for bit (see
//! `kernels`), which is what makes greedy output identical on models as
//! sensitive to rounding as Gemma 3 270M.
//!
//! - [`config`]: hyperparameters and per-architecture choices.
//! - [`SafetensorsModel`]: a safetensors folder described as the GGUF its
//!   conversion would be, so everything below serves both formats.
//! - `weights`: reading tensors (Q5_0 is widened to Q8_0, losslessly).
//! - `kernels`: llama.cpp-exact matmuls, softmax `exp`, thread pool use.
//! - `linear`: weight matrices on those kernels (candle's for other types),
//!   fused where projections share an input.
//! - `rope`, `kv_cache`, `attention`, `ops`: the layer's pieces.
//! - [`runtime`]: the device seam the forward pass is written against, [`Cpu`], the
//!   runtime of the pieces above, and [`DeviceRuntime`], candle's kernels on a candle device
//!   (the GPU path).
//! - `transformer`: [`Transformer`], loading and the forward pass.
//! - `memory`: [`Transformer::estimate_memory`], from the header alone.

mod attention;
pub mod bert;
pub mod config;
mod error;
mod f16;
mod kernels;
mod kv_cache;
mod linear;
mod mapped;
mod memory;
pub use memory::DeviceShare;
mod ops;
mod rope;
pub mod runtime;
mod safetensors;
mod transformer;
mod weights;

pub use config::{Activation, Arch, ModelConfig, RopeParams, RopeStyle};
pub use error::ModelError;
pub use runtime::{Cpu, DeviceRuntime, LayerKv, Runtime, Split, plan_offload};
pub use safetensors::SafetensorsModel;
pub use transformer::{MAX_BATCH, Output, SeqCache, SeqStep, Transformer};
