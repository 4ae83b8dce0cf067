//! Q6_K weights times Q8_K activations. llama.cpp (which does not repack
//! Q6_K on x86) uses two kernels, by batch size:
//!
//! - fewer than 8 rows: AVX2 `vec_dot_q6_K_q8_K`. Per 256-value super-block
//!   it accumulates eight integer lanes: lane `l` holds the scaled products
//!   of unsigned 6-bit codes at positions `32c + 4l .. 32c + 4l + 4` of every
//!   32-value chunk `c`, minus 32 times the scaled activation sums of chunk
//!   `l` (the code offset, folded in through the Q8_K block sums). Each lane
//!   takes one FMA by `d_a * d_w` into an f32 accumulator; the eight are then
//!   summed horizontally.
//! - 8 rows or more: the tiled K-quant matmul (`tiled-kernel.cpp`), which
//!   reduces each super-block to one exact integer and accumulates
//!   `fma(d_w * isum, d_a, acc)` per super-block.

use super::hsum8;
use super::pool::par_columns;
use super::quantize::{Q8KRows, QK_K, quantize_q8_k};

const BLOCK_BYTES: usize = 210;

#[derive(Debug, Clone)]
struct Block {
    d: f32,
    scales: [i8; 16],
    /// Unsigned codes 0..=63 (value = d * scale * (code - 32)), permuted
    /// within each 32-value chunk as in `q8_0`: position `i` at
    /// `(i % 4) * 8 + i / 4`, so each lane's four codes line up.
    codes: [u8; QK_K],
}

#[derive(Debug)]
pub(crate) struct Q6KMatrix {
    pub rows: usize,
    pub cols: usize,
    blocks: Vec<Block>,
}

impl Q6KMatrix {
    pub fn from_blocks(data: &[u8], rows: usize, cols: usize) -> Option<Q6KMatrix> {
        if !cols.is_multiple_of(QK_K) || data.len() != rows * cols / QK_K * BLOCK_BYTES {
            return None;
        }
        let blocks = data
            .chunks_exact(BLOCK_BYTES)
            .map(|b| {
                let (ql, rest) = b.split_at(128);
                let (qh, rest) = rest.split_at(64);
                let (sc, d) = rest.split_at(16);
                let mut natural = [0u8; QK_K];
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    let out = &mut natural[128 * half..];
                    for l in 0..32 {
                        out[l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                        out[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                        out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
                let mut codes = [0u8; QK_K];
                for (i, &c) in natural.iter().enumerate() {
                    codes[i / 32 * 32 + permuted(i % 32)] = c;
                }
                let mut scales = [0i8; 16];
                for (s, &v) in scales.iter_mut().zip(sc) {
                    *s = v as i8;
                }
                Block {
                    d: crate::model::f16::f16_to_f32(u16::from_le_bytes([d[0], d[1]])),
                    scales,
                    codes,
                }
            })
            .collect();
        Some(Q6KMatrix { rows, cols, blocks })
    }

    pub fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>()
    }

    /// `tiled`: llama.cpp's batch has at least 8 rows (see the module docs).
    pub fn matmul(&self, x: &[f32], m: usize, tiled: bool) -> Vec<f32> {
        let mut acts = Q8KRows::default();
        quantize_q8_k(x, &mut acts);
        let a = permuted_f32(&acts.q);
        let nb = self.cols / QK_K;
        par_columns(m, self.rows, 8, |cols, out| {
            let width = cols.len();
            for (i, c) in cols.clone().enumerate() {
                let w = &self.blocks[c * nb..(c + 1) * nb];
                for r in 0..m {
                    out[r * width + i] = if tiled {
                        dot_tiled(w, &acts, &a, r * nb)
                    } else {
                        dot(w, &acts, &a, r * nb)
                    };
                }
            }
        })
    }

    /// Dequantised row `r`, as ggml's `dequantize_row_q6_K` (`d * scale * q`).
    pub fn row(&self, r: usize, out: &mut Vec<f32>) {
        let nb = self.cols / QK_K;
        for b in &self.blocks[r * nb..(r + 1) * nb] {
            for e in 0..QK_K {
                let c = b.codes[e / 32 * 32 + permuted(e % 32)];
                out.push(b.d * f32::from(b.scales[e / 16]) * f32::from(c as i8 - 32));
            }
        }
    }
}

/// Position of value `i` of a 32-value chunk in the permuted layout.
#[inline(always)]
fn permuted(i: usize) -> usize {
    (i % 4) * 8 + i / 4
}

/// Activation codes as f32, permuted within each 32-value chunk like the weights.
fn permuted_f32(q: &[i8]) -> Vec<f32> {
    let mut out = vec![0f32; q.len()];
    for (dst, src) in out.chunks_exact_mut(32).zip(q.chunks_exact(32)) {
        for (i, &v) in src.iter().enumerate() {
            dst[permuted(i)] = f32::from(v);
        }
    }
    out
}

/// For one 32-value chunk: the eight lane sums of four code × activation
/// products, exact in f32 (|sum| <= 4 * 63 * 127).
#[inline(always)]
fn chunk_lanes(codes: &[u8], a: &[f32]) -> [f32; 8] {
    let mut lanes = [0f32; 8];
    for step in 0..4 {
        for l in 0..8 {
            lanes[l] = f32::from(codes[step * 8 + l]).mul_add(a[step * 8 + l], lanes[l]);
        }
    }
    lanes
}

/// The tiled kernel: one exact integer per super-block, one FMA each.
#[inline(always)]
fn dot_tiled(w: &[Block], acts: &Q8KRows, a: &[f32], first_block: usize) -> f32 {
    let mut acc = 0f32;
    for (bi, b) in w.iter().enumerate() {
        let ab = first_block + bi;
        let a = &a[ab * QK_K..(ab + 1) * QK_K];
        let bsums = &acts.bsums[ab * 16..(ab + 1) * 16];
        let mut isum = 0i32;
        for (chunk, (codes, a)) in b.codes.chunks_exact(32).zip(a.chunks_exact(32)).enumerate() {
            let lanes = chunk_lanes(codes, a);
            // Lanes 0..4 hold the chunk's first 16 values, lanes 4..8 the next 16.
            let lo = (lanes[0] + lanes[1] + lanes[2] + lanes[3]) as i32 - 32 * bsums[2 * chunk];
            let hi = (lanes[4] + lanes[5] + lanes[6] + lanes[7]) as i32 - 32 * bsums[2 * chunk + 1];
            isum += lo * i32::from(b.scales[2 * chunk]) + hi * i32::from(b.scales[2 * chunk + 1]);
        }
        acc = (b.d * isum as f32).mul_add(acts.d[ab], acc);
    }
    acc
}

/// ggml's AVX2 `vec_dot_q6_K_q8_K` (see the module docs for the lanes).
#[inline(always)]
fn dot(w: &[Block], acts: &Q8KRows, a: &[f32], first_block: usize) -> f32 {
    let mut acc = [0f32; 8];
    for (bi, b) in w.iter().enumerate() {
        let ab = first_block + bi;
        let a = &a[ab * QK_K..(ab + 1) * QK_K];
        let bsums = &acts.bsums[ab * 16..(ab + 1) * 16];
        let mut lanes = [0i32; 8];
        for (chunk, (codes, a)) in b.codes.chunks_exact(32).zip(a.chunks_exact(32)).enumerate() {
            let sums = chunk_lanes(codes, a);
            let (s0, s1) = (
                i32::from(b.scales[2 * chunk]),
                i32::from(b.scales[2 * chunk + 1]),
            );
            for l in 0..8 {
                lanes[l] += sums[l] as i32 * if l < 4 { s0 } else { s1 };
            }
        }
        let d = acts.d[ab] * b.d;
        for l in 0..8 {
            // The code offset (32) of chunk `l`, through the block sums.
            let offset = i32::from(b.scales[2 * l]) * bsums[2 * l]
                + i32::from(b.scales[2 * l + 1]) * bsums[2 * l + 1];
            acc[l] = d.mul_add((lanes[l] - 32 * offset) as f32, acc[l]);
        }
    }
    hsum8(&acc)
}
