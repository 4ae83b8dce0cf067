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
    /// Unsigned codes 0..=63 in activation order (value = d * scale * (code - 32)).
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
                let mut codes = [0u8; QK_K];
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    let out = &mut codes[128 * half..];
                    for l in 0..32 {
                        out[l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                        out[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                        out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
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
        let nb = self.cols / QK_K;
        par_columns(m, self.rows, 8, |cols, out| {
            let width = cols.len();
            for r in 0..m {
                for (i, c) in cols.clone().enumerate() {
                    let w = &self.blocks[c * nb..(c + 1) * nb];
                    out[r * width + i] = if tiled {
                        dot_tiled(w, &acts, r * nb)
                    } else {
                        dot(w, &acts, r * nb)
                    };
                }
            }
        })
    }

    /// Dequantised row `r`, as ggml's `dequantize_row_q6_K` (`d * scale * q`).
    pub fn row(&self, r: usize, out: &mut Vec<f32>) {
        let nb = self.cols / QK_K;
        for b in &self.blocks[r * nb..(r + 1) * nb] {
            for (e, &c) in b.codes.iter().enumerate() {
                out.push(b.d * f32::from(b.scales[e / 16]) * f32::from(c as i8 - 32));
            }
        }
    }
}

/// The tiled kernel: one exact integer per super-block, one FMA each.
#[inline(always)]
fn dot_tiled(w: &[Block], acts: &Q8KRows, first_block: usize) -> f32 {
    let mut acc = 0f32;
    for (bi, b) in w.iter().enumerate() {
        let ab = first_block + bi;
        let q8 = &acts.q[ab * QK_K..(ab + 1) * QK_K];
        let mut isum = 0i32;
        for (sub, (codes, a)) in b
            .codes
            .chunks_exact(16)
            .zip(q8.chunks_exact(16))
            .enumerate()
        {
            let mut s = 0i32;
            for i in 0..16 {
                s += (i32::from(codes[i]) - 32) * i32::from(a[i]);
            }
            isum += s * i32::from(b.scales[sub]);
        }
        acc = (b.d * isum as f32).mul_add(acts.d[ab], acc);
    }
    acc
}

#[inline(always)]
fn dot(w: &[Block], acts: &Q8KRows, first_block: usize) -> f32 {
    let mut acc = [0f32; 8];
    for (bi, b) in w.iter().enumerate() {
        let ab = first_block + bi;
        let q8 = &acts.q[ab * QK_K..(ab + 1) * QK_K];
        let bsums = &acts.bsums[ab * 16..(ab + 1) * 16];
        let mut lanes = [0i32; 8];
        for (chunk, (codes, a)) in b
            .codes
            .chunks_exact(32)
            .zip(q8.chunks_exact(32))
            .enumerate()
        {
            let (s0, s1) = (
                i32::from(b.scales[2 * chunk]),
                i32::from(b.scales[2 * chunk + 1]),
            );
            for (l, lane) in lanes.iter_mut().enumerate() {
                let scale = if l < 4 { s0 } else { s1 };
                let mut s = 0i32;
                for i in 4 * l..4 * l + 4 {
                    s += i32::from(codes[i]) * i32::from(a[i]);
                }
                *lane += s * scale;
            }
        }
        for (l, lane) in lanes.iter_mut().enumerate() {
            let offset = i32::from(b.scales[2 * l]) * bsums[2 * l]
                + i32::from(b.scales[2 * l + 1]) * bsums[2 * l + 1];
            *lane -= 32 * offset;
        }
        let d = acts.d[ab] * b.d;
        for l in 0..8 {
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
        }
    }
    hsum8(&acc)
}
