//! The device seam: what the forward pass asks of the hardware it runs on.
//!
//! [`Transformer`](super::Transformer) is written once against [`Runtime`]; a runtime owns how
//! weights are stored, how activations live between operations, how one sequence's keys and
//! values are kept, and how each operation of a decoder layer is computed. [`Cpu`] is the
//! llama.cpp-exact kernels on host memory; [`DeviceRuntime`] is candle's kernels on any candle
//! device (weights and KV on the device, activations as device tensors: CUDA, Metal, and
//! candle's CPU device where it is tested). The transformer, the scheduler and sampling are
//! the same for both.
//!
//! Activations are `rows × width`, row-major, one row per token; which width an operation
//! works on is always given (or follows from a weight). Rows of several sequences travel
//! together through a step; `Origin` tells the matmul where each row sits in the batch its own
//! sequence would have run it in (the CPU kernels round by it, to stay exact under batching),
//! and a [`Span`] tells the position-dependent operations (RoPE, the KV cache, attention) which
//! consecutive rows belong to one sequence and at what positions.

mod cpu;
mod device;
mod nudged;
mod split;

use std::fmt::Debug;
use std::ops::Range;

use super::attention::AttnShape;
use super::config::Activation;
use super::error::ModelError;
pub(crate) use super::linear::Origin;
use super::rope::Rope;
use super::weights::{Blocks, TensorReader};

pub use cpu::Cpu;
pub use device::{DeviceKv, DeviceMatrix, DeviceRuntime};
pub use nudged::Nudged;
pub use split::{
    Split, SplitAct, SplitKv, SplitMatrix, SplitVector, plan_offload, plan_offload_across,
};

/// Consecutive activation rows of one sequence, at positions `start..start + rows`. `batch`:
/// how many rows that sequence's own batch had (attention picks its kernel by it; in the last
/// layer a sequence may carry only its final row of a larger batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub rows: usize,
    pub start: usize,
    pub batch: usize,
}

/// One sequence's keys and values for one layer, as a runtime stores them.
pub trait LayerKv: Send + Debug {
    /// Positions held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Keeps positions `..len`.
    fn truncate(&mut self, len: usize);
    /// Drops everything and frees the memory.
    fn clear(&mut self);
    /// Bytes reserved.
    fn bytes(&self) -> usize;
}

/// The operations of the decoder's forward pass on one kind of device.
///
/// Every method may fail (a device runs out of memory, a kernel launch fails); the CPU's only
/// fallible ones are candle's fallback kernels.
pub trait Runtime: Send + Sync + Debug + 'static {
    /// Activations on the device: `rows × width`, row-major.
    type Act: Send + Debug;
    /// A weight matrix (one or several fused projections of the same input, with their biases)
    /// in this device's matmul layout.
    type Matrix: Send + Sync + Debug;
    /// A vector of weights (norms).
    type Vector: Send + Sync + Debug;
    /// One layer's keys and values of one sequence.
    type Kv: LayerKv;

    /// What runs, in a few words (for logs and status): device and kernel set.
    fn describe(&self) -> String;

    // Loading.

    /// Matrix `name` (`rows × cols`) read from the file as it streams.
    fn load_matrix(
        &self,
        reader: &mut TensorReader<'_>,
        name: &str,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Self::Matrix, ModelError>;
    /// The token-embedding table `name` (`rows × cols`): looked up by [`embed`](Self::embed),
    /// and the output projection too when the model ties them. A runtime whose matrices live
    /// away from the host keeps a host copy for the lookup here.
    fn load_embedding(
        &self,
        reader: &mut TensorReader<'_>,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Self::Matrix, ModelError> {
        self.load_matrix(reader, name, rows, cols, None)
    }
    /// Projections of the same input; the output row is the parts' outputs side by side.
    fn fused(&self, parts: Vec<(Blocks, Option<Vec<f32>>)>) -> Result<Self::Matrix, ModelError>;
    fn vector(&self, values: Vec<f32>) -> Result<Self::Vector, ModelError>;
    /// Bytes a matrix takes on the device.
    fn matrix_bytes(&self, m: &Self::Matrix) -> usize;
    /// Of [`matrix_bytes`](Self::matrix_bytes), those used in place from the mapped model file
    /// (page cache, shared with every process that maps the file).
    fn matrix_mapped_bytes(&self, _m: &Self::Matrix) -> usize {
        0
    }
    /// An empty cache for one layer of one sequence (`k_row`, `v_row`: values per position).
    fn new_kv(&self, k_row: usize, v_row: usize) -> Self::Kv;

    // The forward pass.

    /// Rows `tokens` of `m`, dequantised: the embedding lookup.
    fn embed(&self, m: &Self::Matrix, tokens: &[u32]) -> Result<Self::Act, ModelError>;
    /// `x · mᵀ (+ bias)`, one input row per origin.
    fn matmul(
        &self,
        m: &Self::Matrix,
        x: &Self::Act,
        origins: &[Origin],
    ) -> Result<Self::Act, ModelError>;
    /// RMS norm of each `w.len()`-wide row, times `w`, in place (rows may be heads).
    fn rms_norm(&self, x: &mut Self::Act, w: &Self::Vector, eps: f32) -> Result<(), ModelError>;
    fn scale(&self, x: &mut Self::Act, s: f32) -> Result<(), ModelError>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<(), ModelError>;
    fn copy(&self, x: &Self::Act) -> Result<Self::Act, ModelError>;
    /// Rows of `[gate | up]` (each `ffn` wide) to rows of `act(gate) * up`.
    fn gated(
        &self,
        gate_up: &Self::Act,
        ffn: usize,
        activation: Activation,
    ) -> Result<Self::Act, ModelError>;
    /// Splits each row into consecutive column ranges of the given widths.
    fn split_columns(&self, x: &Self::Act, widths: &[usize]) -> Result<Vec<Self::Act>, ModelError>;
    /// Rows `rows` of `x` (each `width` wide), in that order.
    fn gather_rows(
        &self,
        x: &Self::Act,
        width: usize,
        rows: &[usize],
    ) -> Result<Self::Act, ModelError>;
    /// Rotates the rows of each span (`n_heads` heads of `head_dim`) by their positions.
    /// `rope` covers every position of the spans.
    fn rope(
        &self,
        x: &mut Self::Act,
        rope: &Rope,
        n_heads: usize,
        head_dim: usize,
        spans: &[Span],
    ) -> Result<(), ModelError>;
    /// Appends rows `rows` of `k` and `v` to one sequence's cache.
    fn append_kv(
        &self,
        kv: &mut Self::Kv,
        k: &Self::Act,
        v: &Self::Act,
        rows: Range<usize>,
    ) -> Result<(), ModelError>;
    /// Causal attention of each span's query rows (consecutive in `q`) over its sequence's
    /// cache, which already holds their own keys and values. Returns the spans' rows in order.
    fn attention(
        &self,
        q: &Self::Act,
        entries: &[(Span, &Self::Kv)],
        shape: &AttnShape,
    ) -> Result<Self::Act, ModelError>;
    /// The activations in host memory.
    fn to_host(&self, x: Self::Act) -> Result<Vec<f32>, ModelError>;
}
