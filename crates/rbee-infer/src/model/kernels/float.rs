//! F32, F16 and BF16 weights, as llama.cpp computes them on AVX2: activations
//! are first converted to the weight's type (F16 and BF16 round them); then
//! batches go through tinyBLAS (`llamafile_sgemm`: eight FMA lanes along the
//! inner dimension, lane = index mod 8, summed horizontally) and single rows
//! through ggml's `vec_dot` ([`vec_dot`]). Weights are widened to f32 at load
//! time; the products are the same because the conversions are exact.
//! (BF16 single rows use the f16 order, which is close but not ggml's.)

use super::{hsum8, pool::par_columns};
use crate::model::f16::round_f16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatKind {
    F32,
    F16,
    Bf16,
}

#[derive(Debug)]
pub(crate) struct FloatMatrix {
    pub rows: usize,
    pub cols: usize,
    pub kind: FloatKind,
    pub w: Vec<f32>,
}

impl FloatMatrix {
    pub fn bytes(&self) -> usize {
        self.w.len() * 4
    }

    /// `batched`: llama.cpp's matmul has more than one row (tinyBLAS), even
    /// if only some of its rows are computed here.
    pub fn matmul(&self, x: &[f32], m: usize, batched: bool) -> Vec<f32> {
        let x: Vec<f32> = match self.kind {
            FloatKind::F32 => x.to_vec(),
            FloatKind::F16 => x.iter().map(|&v| round_f16(v)).collect(),
            FloatKind::Bf16 => x.iter().map(|&v| round_bf16(v)).collect(),
        };
        let k = self.cols;
        let wide_tail = self.kind != FloatKind::F32;
        par_columns(m, self.rows, 8, |cols, out| {
            let width = cols.len();
            for r in 0..m {
                let a = &x[r * k..(r + 1) * k];
                for (i, c) in cols.clone().enumerate() {
                    let w = &self.w[c * k..(c + 1) * k];
                    // tinyBLAS only takes batches; single rows go to ggml's vec_dot.
                    out[r * width + i] = if batched {
                        dot(w, a)
                    } else {
                        vec_dot(w, a, wide_tail)
                    };
                }
            }
        })
    }

    pub fn row(&self, r: usize, out: &mut Vec<f32>) {
        out.extend_from_slice(&self.w[r * self.cols..(r + 1) * self.cols]);
    }
}

/// tinyBLAS's dot product: lane `i % 8` accumulates `w[i] * a[i]` with FMA.
#[inline(always)]
pub(crate) fn dot(w: &[f32], a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (wc, ac) = (w.chunks_exact(8), a.chunks_exact(8));
    let (wr, ar) = (wc.remainder(), ac.remainder());
    for (w8, a8) in wc.zip(ac) {
        for l in 0..8 {
            acc[l] = w8[l].mul_add(a8[l], acc[l]);
        }
    }
    for (l, (&wv, &av)) in wr.iter().zip(ar).enumerate() {
        acc[l] = wv.mul_add(av, acc[l]);
    }
    hsum8(&acc)
}

/// [`dot`] of four rows `w` with the same `a`, side by side: four
/// independent FMA chains instead of one, each the same operations.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn dot4(w: [&[f32]; 4], a: &[f32]) -> [f32; 4] {
    use super::avx2::{fused_mul_add_m256, zeroed_m256};
    use safe_arch::load_unaligned_m256;
    let n = a.len();
    let w = w.map(|w| &w[..n]);
    let mut acc = [zeroed_m256(); 4];
    let (a8, _) = a.as_chunks::<8>();
    let w8 = w.map(|w| w.as_chunks::<8>().0);
    for (i, a8) in a8.iter().enumerate() {
        let a8 = load_unaligned_m256(a8);
        for (acc, w8) in acc.iter_mut().zip(&w8) {
            *acc = fused_mul_add_m256(load_unaligned_m256(&w8[i]), a8, *acc);
        }
    }
    let mut acc = acc.map(|a| a.to_array());
    let tail = n - n % 8;
    for (acc, w) in acc.iter_mut().zip(w) {
        for (l, (&wv, &av)) in w[tail..].iter().zip(&a[tail..]).enumerate() {
            acc[l] = wv.mul_add(av, acc[l]);
        }
    }
    super::hsum8_each(&acc)
}

/// [`dot`] of four rows `w` with the same `a`.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
#[inline(always)]
pub(crate) fn dot4(w: [&[f32]; 4], a: &[f32]) -> [f32; 4] {
    w.map(|w| dot(w, a))
}

/// ggml's `ggml_vec_dot_f32` / `ggml_vec_dot_f16` (AVX2), used instead of
/// tinyBLAS when the matmul has a single column (tinyBLAS only serves
/// batches): four accumulators of eight lanes over steps of 32, reduced
/// pairwise, then the tail. `wide_tail` adds the tail in f64, as the f16
/// version does; the f32 version adds it in f32 (with FMA).
#[inline(always)]
pub(crate) fn vec_dot(w: &[f32], a: &[f32], wide_tail: bool) -> f32 {
    let n = w.len();
    let np = n - n % 32;
    let reduced = vec_dot_body(&w[..np], &a[..np]);
    vec_dot_tail(w, a, np, reduced, wide_tail)
}

/// [`vec_dot`]'s steps of 32 and their reduction, in AVX registers (the scalar loops below
/// compiled to 128-bit operations and shuffles: attention's decode rows run one per key and
/// head).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn vec_dot_body(w: &[f32], a: &[f32]) -> f32 {
    use super::avx2::{fused_mul_add_m256, zeroed_m256};
    use safe_arch::{add_m256, load_unaligned_m256};
    let (w8, _) = w.as_chunks::<8>();
    let (a8, _) = a.as_chunks::<8>();
    let mut sum = [zeroed_m256(); 4];
    for (w32, a32) in w8.chunks_exact(4).zip(a8.chunks_exact(4)) {
        for j in 0..4 {
            sum[j] = fused_mul_add_m256(
                load_unaligned_m256(&w32[j]),
                load_unaligned_m256(&a32[j]),
                sum[j],
            );
        }
    }
    let x0 = add_m256(add_m256(sum[0], sum[2]), add_m256(sum[1], sum[3])).to_array();
    // _mm_add_ps(lo, hi), then two horizontal adds.
    let t0 = [x0[0] + x0[4], x0[1] + x0[5], x0[2] + x0[6], x0[3] + x0[7]];
    (t0[0] + t0[1]) + (t0[2] + t0[3])
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
#[inline(always)]
fn vec_dot_body(w: &[f32], a: &[f32]) -> f32 {
    vec_dot_scalar(w, a)
}

/// [`vec_dot_body`] lane by lane, for builds without AVX2 (and to check the AVX one against).
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
#[inline(always)]
fn vec_dot_scalar(w: &[f32], a: &[f32]) -> f32 {
    let mut sum = [[0f32; 8]; 4];
    for (w32, a32) in w.chunks_exact(32).zip(a.chunks_exact(32)) {
        for j in 0..4 {
            for l in 0..8 {
                sum[j][l] = w32[8 * j + l].mul_add(a32[8 * j + l], sum[j][l]);
            }
        }
    }
    let mut x0 = [0f32; 8];
    let mut x1 = [0f32; 8];
    for l in 0..8 {
        x0[l] = sum[0][l] + sum[2][l];
        x1[l] = sum[1][l] + sum[3][l];
    }
    for l in 0..8 {
        x0[l] += x1[l];
    }
    // _mm_add_ps(lo, hi), then two horizontal adds.
    let t0 = [x0[0] + x0[4], x0[1] + x0[5], x0[2] + x0[6], x0[3] + x0[7]];
    (t0[0] + t0[1]) + (t0[2] + t0[3])
}

#[inline(always)]
fn vec_dot_tail(w: &[f32], a: &[f32], np: usize, reduced: f32, wide_tail: bool) -> f32 {
    if wide_tail {
        let mut s = f64::from(reduced);
        for (&wv, &av) in w[np..].iter().zip(&a[np..]) {
            s += f64::from(wv * av);
        }
        s as f32
    } else {
        let mut s = reduced;
        for (&wv, &av) in w[np..].iter().zip(&a[np..]) {
            s = wv.mul_add(av, s);
        }
        s
    }
}

/// ggml's `fp32_to_bf16`: round to nearest even (NaN kept quiet).
pub(crate) fn round_bf16(x: f32) -> f32 {
    let u = x.to_bits();
    let bits = if (u & 0x7fff_ffff) > 0x7f80_0000 {
        (u >> 16) | 64
    } else {
        (u.wrapping_add(0x7fff + ((u >> 16) & 1))) >> 16
    };
    f32::from_bits(bits << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vec_dot`'s steps in AVX registers add exactly what the lane-by-lane loops add, in the
    /// same order: the same bits, for lengths with and without a tail.
    #[test]
    fn vec_dot_in_registers_equals_the_lanes() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
        };
        for n in [32, 64, 128, 160, 256, 1024] {
            let w: Vec<f32> = (0..n).map(|_| next()).collect();
            let a: Vec<f32> = (0..n).map(|_| next() * 3.0).collect();
            assert_eq!(
                vec_dot_body(&w, &a).to_bits(),
                vec_dot_scalar(&w, &a).to_bits(),
                "n = {n}"
            );
        }
        // The tail (here 7 values) is added after the steps.
        let w: Vec<f32> = (0..135).map(|_| next()).collect();
        let a: Vec<f32> = (0..135).map(|_| next()).collect();
        let want = w[128..].iter().zip(&a[128..]).fold(
            f64::from(vec_dot_scalar(&w[..128], &a[..128])),
            |s, (x, y)| s + f64::from(x * y),
        ) as f32;
        assert_eq!(vec_dot(&w, &a, true).to_bits(), want.to_bits());
    }
}
