//! Matmul and attention kernels that reproduce llama.cpp's CPU arithmetic
//! bit for bit.
//!
//! Why bit for bit: small models amplify rounding chaotically. On Gemma 3
//! 270M, merely switching llama.cpp's own flash attention on moves first-step
//! logits by up to 0.5, and the reference generations contain steps whose top
//! two logits differ by 0.0005. Matching llama.cpp's greedy output therefore
//! means performing the same float operations in the same order, so each
//! kernel here mirrors the one llama.cpp runs (its portable x86-64-v3 build:
//! AVX2 + FMA + F16C), verified against intermediate tensors dumped from it:
//!
//! - activations are quantised exactly as ggml does ([`quantize`]),
//! - integer partial sums are split into the same SIMD lanes and combined
//!   with the same fused multiply-adds and horizontal sums
//!   ([`q8_0`], [`q4_k`], [`q6_k`], [`float`]),
//! - the softmax uses ggml's vectorised `exp` ([`expf`]).
//!
//! Integer parts are exact whatever their order, so the kernels are free to
//! compute them in whatever way vectorises; only the float steps are fixed.
//! They run on candle's persistent thread pool ([`pool`]).

pub(crate) mod expf;
pub(crate) mod float;
pub(crate) mod pool;
pub(crate) mod q4_k;
pub(crate) mod q6_k;
pub(crate) mod q8_0;
pub(crate) mod quantize;

/// ggml's `hsum_float_8` (and tinyBLAS's `hsum`): the order in which the
/// eight lanes of an AVX register are added.
#[inline(always)]
pub(crate) fn hsum8(x: &[f32; 8]) -> f32 {
    let r0 = x[4] + x[0];
    let r1 = x[5] + x[1];
    let r2 = x[6] + x[2];
    let r3 = x[7] + x[3];
    (r0 + r2) + (r1 + r3)
}

/// Row `r` of a batch of `m` rows goes through ggml's 4-row `gemm` kernels
/// when it falls in the leading multiple of four, else through `gemv`;
/// repacked weight types round differently in the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowKernel {
    Gemm,
    Gemv,
}

impl RowKernel {
    pub fn for_row(row: usize, batch: usize) -> RowKernel {
        if batch > 3 && row < batch - batch % 4 {
            RowKernel::Gemm
        } else {
            RowKernel::Gemv
        }
    }
}
