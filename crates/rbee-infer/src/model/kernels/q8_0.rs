//! Weights in 32-value blocks with one scale (Q8_0, and Q5_0 widened to it
//! losslessly at load) times Q8_0 activations.
//!
//! ggml's AVX2 `vec_dot_q8_0_q8_0` / `vec_dot_q5_0_q8_0` (and tinyBLAS's
//! `tinyBLAS_Q0_AVX`, which computes the same) split each block's 32 products
//! into eight lanes of four consecutive products, add each lane into an f32
//! accumulator with one FMA by `d_w * d_a`, and finish with a horizontal sum.

use super::quantize::{Q8_0Rows, QK8_0, quantize_q8_0};
use super::{hsum8, pool::par_columns};

/// A row-major `rows × cols` matrix of Q8_0 codes and scales.
#[derive(Debug)]
pub(crate) struct Q8_0Matrix {
    pub rows: usize,
    pub cols: usize,
    /// Block scales (f16 values, widened), `rows * cols / 32`.
    pub d: Vec<f32>,
    /// Codes, `rows * cols`.
    pub q: Vec<i8>,
}

impl Q8_0Matrix {
    pub fn bytes(&self) -> usize {
        self.d.len() * 4 + self.q.len()
    }

    /// `x` (`m` rows of `cols`) times the transpose: `m` rows of `rows` outputs.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut acts = Q8_0Rows::default();
        quantize_q8_0(x, &mut acts);
        let nb = self.cols / QK8_0;
        par_columns(m, self.rows, 16, |cols, out| {
            let width = cols.len();
            for r in 0..m {
                let ad = &acts.d[r * nb..(r + 1) * nb];
                let aq = &acts.q[r * self.cols..(r + 1) * self.cols];
                for (i, c) in cols.clone().enumerate() {
                    let wd = &self.d[c * nb..(c + 1) * nb];
                    let wq = &self.q[c * self.cols..(c + 1) * self.cols];
                    out[r * width + i] = dot(wq, wd, aq, ad);
                }
            }
        })
    }

    /// Dequantised row `r` (embedding lookup): `d * q`, as ggml's `get_rows`.
    pub fn row(&self, r: usize, out: &mut Vec<f32>) {
        let nb = self.cols / QK8_0;
        let q = &self.q[r * self.cols..(r + 1) * self.cols];
        for (b, block) in q.chunks_exact(QK8_0).enumerate() {
            let d = self.d[r * nb + b];
            out.extend(block.iter().map(|&v| f32::from(v) * d));
        }
    }
}

#[inline(always)]
fn dot(wq: &[i8], wd: &[f32], aq: &[i8], ad: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for ((w, a), (&dw, &da)) in wq
        .chunks_exact(QK8_0)
        .zip(aq.chunks_exact(QK8_0))
        .zip(wd.iter().zip(ad))
    {
        let lanes = lane_sums(w, a);
        let d = dw * da;
        for l in 0..8 {
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
        }
    }
    hsum8(&acc)
}

/// Sums of four consecutive products, eight lanes (exact integers).
#[inline(always)]
fn lane_sums(w: &[i8], a: &[i8]) -> [i32; 8] {
    let mut pairs = [0i32; 16];
    for (j, p) in pairs.iter_mut().enumerate() {
        let (w0, w1) = (i32::from(w[2 * j]), i32::from(w[2 * j + 1]));
        let (a0, a1) = (i32::from(a[2 * j]), i32::from(a[2 * j + 1]));
        *p = w0 * a0 + w1 * a1;
    }
    let mut lanes = [0i32; 8];
    for (l, lane) in lanes.iter_mut().enumerate() {
        *lane = pairs[2 * l] + pairs[2 * l + 1];
    }
    lanes
}

/// Converts Q8_0 block bytes (ggml layout; Q5_0 arrives widened to Q8_0) to a matrix.
pub(crate) fn from_blocks(
    dtype: candle_core::quantized::GgmlDType,
    data: &[u8],
    rows: usize,
    cols: usize,
) -> Option<Q8_0Matrix> {
    use candle_core::quantized::GgmlDType as T;
    if dtype != T::Q8_0 {
        return None;
    }
    let block_bytes = 34;
    let blocks = rows * cols / QK8_0;
    if data.len() != blocks * block_bytes {
        return None;
    }
    let mut d = Vec::with_capacity(blocks);
    let mut q = Vec::with_capacity(rows * cols);
    for block in data.chunks_exact(block_bytes) {
        d.push(crate::model::f16::f16_to_f32(u16::from_le_bytes([
            block[0], block[1],
        ])));
        q.extend(block[2..34].iter().map(|&v| v as i8));
    }
    Some(Q8_0Matrix { rows, cols, d, q })
}
