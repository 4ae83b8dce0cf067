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
//! On x86-64 builds with AVX2 (what `.cargo/config.toml` sets) the integer
//! parts use ggml's own instructions through `safe_arch`'s safe wrappers
//! (the `avx2` module), and prompts go through tile kernels that apply each weight
//! block to four activation rows; other targets use portable kernels that
//! the compiler vectorises as f32 FMAs. They run on candle's persistent
//! thread pool ([`pool`]).

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) mod avx2;
pub mod dispatch;
pub(crate) mod expf;
pub(crate) mod float;
pub(crate) mod pages;
pub(crate) mod pool;
pub(crate) mod q4_k;
pub(crate) mod q4_k_tiles;
pub(crate) mod q6_k;
pub(crate) mod q6_k_tiles;
pub(crate) mod q8_0;
pub(crate) mod q8_0_tiles;
pub(crate) mod quantize;
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) mod vnni;

/// ggml's `hsum_float_8` (and tinyBLAS's `hsum`): the order in which the
/// eight lanes of an AVX register are added.
///
/// Deliberately not inlined: next to this pairwise pattern the compiler's
/// SLP vectoriser splits the kernels' 8-lane loops into pairs, which halves
/// their speed.
#[inline(never)]
pub(crate) fn hsum8(x: &[f32; 8]) -> f32 {
    let r0 = x[4] + x[0];
    let r1 = x[5] + x[1];
    let r2 = x[6] + x[2];
    let r3 = x[7] + x[3];
    (r0 + r2) + (r1 + r3)
}

/// [`hsum8`] of several accumulators in one (out-of-line) call.
#[inline(never)]
pub(crate) fn hsum8_each<const N: usize>(x: &[[f32; 8]; N]) -> [f32; N] {
    std::array::from_fn(|i| {
        let x = &x[i];
        let r0 = x[4] + x[0];
        let r1 = x[5] + x[1];
        let r2 = x[6] + x[2];
        let r3 = x[7] + x[3];
        (r0 + r2) + (r1 + r3)
    })
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

/// Test data shared by the kernel tests: a deterministic byte stream and random blocks.
#[cfg(test)]
pub(crate) mod test_blocks {
    use crate::model::f16::f32_to_f16;

    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn byte(&mut self) -> u8 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 56) as u8
        }
        pub fn float(&mut self) -> f32 {
            f32::from(self.byte()) / 128.0 - 1.0
        }
    }

    /// `blocks` Q4_K super-blocks with fixed scales and random codes.
    pub(crate) fn random_q4_k(rng: &mut Rng, blocks: usize) -> Vec<u8> {
        let mut q4 = Vec::new();
        for _ in 0..blocks {
            q4.extend_from_slice(&f32_to_f16(0.01).to_le_bytes());
            q4.extend_from_slice(&f32_to_f16(0.002).to_le_bytes());
            q4.extend((0..140).map(|_| rng.byte()));
        }
        q4
    }

    /// `blocks` Q6_K super-blocks with random codes and scales.
    pub(crate) fn random_q6_k(rng: &mut Rng, blocks: usize) -> Vec<u8> {
        let mut q6 = Vec::new();
        for _ in 0..blocks {
            q6.extend((0..192).map(|_| rng.byte()));
            q6.extend((0..16).map(|_| rng.byte() / 2));
            q6.extend_from_slice(&f32_to_f16(0.003).to_le_bytes());
        }
        q6
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Each kernel against a plain reference: dequantised weights times
    //! dequantised activation codes, summed in f64. The kernels' float steps
    //! differ from that only by rounding, so a relative 1e-5 catches any
    //! mistake in the integer decomposition (lanes, scales, offsets).

    use super::quantize::{Q8_0Rows, Q8KRows, quantize_q8_0, quantize_q8_k};
    use super::test_blocks::{Rng, random_q4_k, random_q6_k};
    use super::*;
    use crate::model::f16::f32_to_f16;

    fn check(got: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(want) {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-5 * scale,
                "{what}: {g} vs {w}"
            );
        }
    }

    fn reference(w_rows: &[Vec<f32>], acts: &[Vec<f32>]) -> Vec<f64> {
        acts.iter()
            .flat_map(|a| {
                w_rows.iter().map(move |w| {
                    w.iter()
                        .zip(a)
                        .map(|(&x, &y)| f64::from(x) * f64::from(y))
                        .sum()
                })
            })
            .collect()
    }

    /// Nine rows (four-row tiles and a row left over) and 400 (a prompt: the eight-row
    /// kernels, weights interleaved or unpacked once for more than one block of row groups).
    #[test]
    fn q4_k_and_q6_k_match_dequantised_products() {
        for m in [9, 400] {
            dequantised_products(m);
        }
    }

    fn dequantised_products(m: usize) {
        let (rows, cols) = (24, 512);
        let mut rng = Rng(7);
        let x: Vec<f32> = (0..m * cols).map(|_| rng.float()).collect();
        let mut q8k = Q8KRows::default();
        quantize_q8_k(&x, &mut q8k);
        let acts: Vec<Vec<f32>> = (0..m)
            .map(|r| {
                (0..cols)
                    .map(|e| f32::from(q8k.q[r * cols + e]) * q8k.d[(r * cols + e) / 256])
                    .collect()
            })
            .collect();

        let q4 = random_q4_k(&mut rng, rows * cols / 256);
        let w = q4_k::Q4KMatrix::from_blocks(&q4, rows, cols).unwrap();
        let w_rows: Vec<Vec<f32>> = (0..rows)
            .map(|r| {
                let mut v = Vec::new();
                w.row(r, &mut v);
                v
            })
            .collect();
        let kernels: Vec<RowKernel> = (0..m).map(|r| RowKernel::for_row(r, m)).collect();
        check(
            &w.matmul(&x, m, &kernels),
            &reference(&w_rows, &acts),
            "q4_k",
        );

        let q6 = random_q6_k(&mut rng, rows * cols / 256);
        let w = q6_k::Q6KMatrix::from_blocks(&q6, rows, cols).unwrap();
        let w_rows: Vec<Vec<f32>> = (0..rows)
            .map(|r| {
                let mut v = Vec::new();
                w.row(r, &mut v);
                v
            })
            .collect();
        let want = reference(&w_rows, &acts);
        check(&w.matmul(&x, m, false), &want, "q6_k vec_dot");
        check(&w.matmul(&x, m, true), &want, "q6_k tiled");
    }

    /// A batched step hands rows of many sequences to one matmul; each row must come out
    /// bit for bit as its kernel computes it alone, whichever tile or row kernel it lands in.
    #[test]
    fn q4_k_and_q6_k_rows_are_the_same_in_any_batch() {
        let (rows, cols, m) = (10, 512, 11);
        let mut rng = Rng(3);
        let x: Vec<f32> = (0..m * cols).map(|_| rng.float()).collect();
        let q4 = random_q4_k(&mut rng, rows * cols / 256);
        let w = q4_k::Q4KMatrix::from_blocks(&q4, rows, cols).unwrap();
        let row = |r: usize| &x[r * cols..(r + 1) * cols];
        // Every kernel pattern a step makes: all gemv (decode rows), gemm rows first then
        // gemv, and runs of each shorter than a tile.
        use RowKernel::{Gemm, Gemv};
        let patterns: [Vec<RowKernel>; 3] = [
            vec![Gemv; m],
            [vec![Gemm; 8], vec![Gemv; 3]].concat(),
            [vec![Gemm; 6], vec![Gemv; 5]].concat(),
        ];
        for kernels in &patterns {
            let batched = w.matmul(&x, m, kernels);
            for (r, &k) in kernels.iter().enumerate() {
                assert_eq!(
                    &batched[r * rows..(r + 1) * rows],
                    &w.matmul(row(r), 1, &[k])[..],
                    "q4_k row {r} ({k:?}) of {kernels:?}"
                );
            }
        }
        let q6 = random_q6_k(&mut rng, rows * cols / 256);
        let w = q6_k::Q6KMatrix::from_blocks(&q6, rows, cols).unwrap();
        for tiled in [false, true] {
            let batched = w.matmul(&x, m, tiled);
            for r in 0..m {
                assert_eq!(
                    &batched[r * rows..(r + 1) * rows],
                    &w.matmul(row(r), 1, tiled)[..],
                    "q6_k row {r}, tiled {tiled}"
                );
            }
        }
    }

    #[test]
    fn q8_0_and_floats_match_dequantised_products() {
        let (rows, cols, m) = (20, 96, 3);
        let mut rng = Rng(11);
        let x: Vec<f32> = (0..m * cols).map(|_| rng.float()).collect();
        let mut q8 = Q8_0Rows::default();
        quantize_q8_0(&x, &mut q8);
        let acts: Vec<Vec<f32>> = (0..m)
            .map(|r| {
                (0..cols)
                    .map(|e| f32::from(q8.q[r * cols + e]) * q8.d[(r * cols + e) / 32])
                    .collect()
            })
            .collect();
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / 32 {
            bytes.extend_from_slice(&f32_to_f16(0.02).to_le_bytes());
            bytes.extend((0..32).map(|_| rng.byte()));
        }
        let w = q8_0::from_blocks(&bytes, rows, cols).unwrap();
        let w_rows: Vec<Vec<f32>> = (0..rows)
            .map(|r| {
                let mut v = Vec::new();
                w.row(r, &mut v);
                v
            })
            .collect();
        check(&w.matmul(&x, m), &reference(&w_rows, &acts), "q8_0");
        check(
            &w.matmul(&x[..cols], 1),
            &reference(&w_rows, &acts[..1]),
            "q8_0 single row",
        );

        // Prefill: tiles of four activation rows times pairs of weight rows,
        // with an odd weight row and leftover activation rows.
        let (rows_b, m_b) = (19, 11);
        let xb: Vec<f32> = (0..m_b * cols).map(|_| rng.float()).collect();
        let mut q8b = Q8_0Rows::default();
        quantize_q8_0(&xb, &mut q8b);
        let acts_b: Vec<Vec<f32>> = (0..m_b)
            .map(|r| {
                (0..cols)
                    .map(|e| f32::from(q8b.q[r * cols + e]) * q8b.d[(r * cols + e) / 32])
                    .collect()
            })
            .collect();
        let wb = q8_0::from_blocks(&bytes[..rows_b * cols / 32 * 34], rows_b, cols).unwrap();
        check(
            &wb.matmul(&xb, m_b),
            &reference(&w_rows[..rows_b], &acts_b),
            "q8_0 batch",
        );

        let wf: Vec<f32> = (0..rows * cols).map(|_| rng.float()).collect();
        let f = float::FloatMatrix {
            rows,
            cols,
            kind: float::FloatKind::F32,
            w: wf.clone(),
        };
        let w_rows: Vec<Vec<f32>> = wf.chunks(cols).map(<[f32]>::to_vec).collect();
        let xs: Vec<Vec<f32>> = x.chunks(cols).map(<[f32]>::to_vec).collect();
        check(
            &f.matmul(&x, m, true),
            &reference(&w_rows, &xs),
            "f32 batch",
        );
        check(
            &f.matmul(&x[..cols], 1, false),
            &reference(&w_rows, &xs[..1]),
            "f32 single row",
        );
    }
}
