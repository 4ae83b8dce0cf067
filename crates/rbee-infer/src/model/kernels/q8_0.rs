//! Weights in 32-value blocks with one scale (Q8_0, and Q5_0 widened to it
//! losslessly at load) times Q8_0 activations.
//!
//! ggml's AVX2 `vec_dot_q8_0_q8_0` / `vec_dot_q5_0_q8_0` (and tinyBLAS's
//! `tinyBLAS_Q0_AVX`, which computes the same) split each block's 32 products
//! into eight lanes of four consecutive products, add each lane into an f32
//! accumulator with one FMA by `d_w * d_a`, and finish with a horizontal sum.
//!
//! With AVX2 the lane sums are ggml's own `vpmaddubsw` + `vpmaddwd` (through
//! `safe_arch`, no `unsafe`), and prompts go through tiles of four activation
//! rows times two weight rows. Without it, the codes are stored permuted
//! within each block so that the four products of every lane line up in four
//! vectors of eight, and the lane sums are computed with f32 FMAs, which the
//! compiler vectorises well. Products and partial sums are integers below
//! 2^24, so both are exact and give the same lane sums as ggml's integer
//! arithmetic.

use super::dispatch::Kernels;
use super::pages::Pages;
use super::pool::{PARALLEL_UNPACK, par_columns};
use super::quantize::{Q8_0Rows, QK8_0, quantize_q8_0};
use super::{hsum8, hsum8_each};

/// Position in the permuted block of the value at position `i`: lane `i / 4`,
/// step `i % 4`, stored step-major (`step * 8 + lane`).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
#[inline(always)]
fn permuted(i: usize) -> usize {
    (i % 4) * 8 + i / 4
}

/// With AVX2 the lanes are summed by ggml's integer instructions, which
/// want the codes in their natural order.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn permuted(i: usize) -> usize {
    i
}

/// How activation codes are held for `dot_tile` (here without AVX2, in `q8_0_tiles` with it): f32 for the portable
/// kernel, the i8 codes themselves for the AVX2 one.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
type Code = f32;
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
type Code = i8;

/// A row-major `rows × cols` matrix of Q8_0 codes and scales.
#[derive(Debug)]
pub(crate) struct Q8_0Matrix {
    pub rows: usize,
    pub cols: usize,
    /// Block scales (f16 values, widened), `rows * cols / 32`.
    d: Pages<f32>,
    /// Codes, `rows * cols`, permuted within each block (see [`permuted`]).
    q: Pages<i8>,
}

/// Rows of activations prepared for the kernel: block scales and codes
/// ([`Code`]), permuted like the weights.
struct Acts {
    d: Vec<f32>,
    q: Vec<Code>,
}

impl Acts {
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    fn new(raw: Q8_0Rows) -> Acts {
        let mut q = vec![0.0; raw.q.len()];
        for (dst, src) in q.chunks_exact_mut(QK8_0).zip(raw.q.chunks_exact(QK8_0)) {
            for (i, &v) in src.iter().enumerate() {
                dst[permuted(i)] = f32::from(v);
            }
        }
        Acts { d: raw.d, q }
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    fn new(raw: Q8_0Rows) -> Acts {
        Acts { d: raw.d, q: raw.q }
    }
}

impl Q8_0Matrix {
    pub fn bytes(&self) -> usize {
        self.d.len() * 4 + self.q.len()
    }

    /// `x` (`m` rows of `cols`) times the transpose: `m` rows of `rows` outputs.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(super::dispatch::active(), x, m)
    }

    /// [`matmul`](Self::matmul) on the kernel set `k`.
    pub(crate) fn matmul_with(&self, k: Kernels, x: &[f32], m: usize) -> Vec<f32> {
        let mut raw = Q8_0Rows::default();
        quantize_q8_0(x, &mut raw);
        let acts = Acts::new(raw);
        if m == 1 {
            return par_columns(1, self.rows, 16, |cols, out| {
                self.single_row(k, cols, &acts, out)
            });
        }
        self.batch(k, acts, m)
    }

    /// Several activation rows (prefill).
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    fn batch(&self, _: Kernels, acts: Acts, m: usize) -> Vec<f32> {
        let k = self.cols;
        let nb = k / QK8_0;
        par_columns(m, self.rows, 16, |cols, out| {
            let width = cols.len();
            let row = |r: usize| (&acts.q[r * k..(r + 1) * k], &acts.d[r * nb..(r + 1) * nb]);
            for (i, c) in cols.clone().enumerate() {
                let wq = &self.q[c * k..(c + 1) * k];
                let wd = &self.d[c * nb..(c + 1) * nb];
                // Four activation rows share each converted weight block.
                let mut r = 0;
                while r + 4 <= m {
                    let sums =
                        hsum8_each(&dot_tile::<4>(wq, wd, std::array::from_fn(|t| row(r + t))));
                    for (t, s) in sums.iter().enumerate() {
                        out[(r + t) * width + i] = *s;
                    }
                    r += 4;
                }
                for r in r..m {
                    out[r * width + i] = hsum8(&dot_tile::<1>(wq, wd, [row(r)])[0]);
                }
            }
        })
    }

    /// Several activation rows (prefill): tiles of four activation rows
    /// (interleaved by block, see [`Tiles`]) times two weight rows at once, so
    /// every loaded block serves several products; leftover rows one by one.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    fn batch(&self, kernels: Kernels, acts: Acts, m: usize) -> Vec<f32> {
        use super::dispatch::{q8_0_dot_tile, q8_0_tile_4x1, q8_0_tile_4x2};
        let k = self.cols;
        let nb = k / QK8_0;
        let tiles = Tiles::new(&acts, m, nb);
        let full = m - m % 4;
        par_columns(m, self.rows, 16, |cols, out| {
            let width = cols.len();
            let weight = |c: usize| (&self.q[c * k..(c + 1) * k], &self.d[c * nb..(c + 1) * nb]);
            // Row groups in blocks that stay in cache while every weight row passes them.
            for groups in super::pool::group_blocks(m / 4, nb * (4 * QK8_0 + 16)) {
                let mut c = cols.start;
                while c + 2 <= cols.end {
                    let (w0, w1) = (weight(c), weight(c + 1));
                    for (i, (tq, td)) in tiles.iter(groups.clone(), nb) {
                        let sums = q8_0_tile_4x2(kernels, w0, w1, tq, td);
                        for (t, s) in sums.iter().enumerate() {
                            let o = (4 * i + t) * width + c - cols.start;
                            out[o..o + 2].copy_from_slice(s);
                        }
                    }
                    c += 2;
                }
                for c in c..cols.end {
                    let (wq, wd) = weight(c);
                    for (i, (tq, td)) in tiles.iter(groups.clone(), nb) {
                        let sums = q8_0_tile_4x1(kernels, wq, wd, tq, td);
                        for (t, s) in sums.iter().enumerate() {
                            out[(4 * i + t) * width + c - cols.start] = *s;
                        }
                    }
                }
            }
            for c in cols.clone() {
                let (wq, wd) = weight(c);
                for r in full..m {
                    let row = (&acts.q[r * k..(r + 1) * k], &acts.d[r * nb..(r + 1) * nb]);
                    out[r * width + c - cols.start] =
                        hsum8(&q8_0_dot_tile::<1>(kernels, wq, wd, [row])[0]);
                }
            }
        })
    }

    /// One activation row (decode) against the weight rows `cols`; one
    /// out-of-line horizontal sum serves four outputs.
    fn single_row(
        &self,
        kernels: Kernels,
        cols: std::ops::Range<usize>,
        acts: &Acts,
        out: &mut [f32],
    ) {
        let k = self.cols;
        let nb = k / QK8_0;
        let dot = |c: usize| {
            dot_tile_on::<1>(
                kernels,
                &self.q[c * k..(c + 1) * k],
                &self.d[c * nb..(c + 1) * nb],
                [(&acts.q, &acts.d)],
            )[0]
        };
        let mut c = cols.start;
        while c + 4 <= cols.end {
            let sums = hsum8_each(&[dot(c), dot(c + 1), dot(c + 2), dot(c + 3)]);
            out[c - cols.start..c - cols.start + 4].copy_from_slice(&sums);
            c += 4;
        }
        for c in c..cols.end {
            out[c - cols.start] = hsum8(&dot(c));
        }
    }

    /// Dequantised row `r` (embedding lookup): `d * q`, as ggml's `get_rows`.
    pub fn row(&self, r: usize, out: &mut Vec<f32>) {
        let nb = self.cols / QK8_0;
        let q = &self.q[r * self.cols..(r + 1) * self.cols];
        for (b, block) in q.chunks_exact(QK8_0).enumerate() {
            let d = self.d[r * nb + b];
            out.extend((0..QK8_0).map(|i| f32::from(block[permuted(i)]) * d));
        }
    }
}

/// `dot_tile` on the kernel set `k`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn dot_tile_on<const T: usize>(
    k: Kernels,
    wq: &[i8],
    wd: &[f32],
    rows: [(&[Code], &[f32]); T],
) -> [[f32; 8]; T] {
    super::dispatch::q8_0_dot_tile(k, wq, wd, rows)
}

/// `dot_tile`: portable builds have one kernel set.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
#[inline(always)]
fn dot_tile_on<const T: usize>(
    _: Kernels,
    wq: &[i8],
    wd: &[f32],
    rows: [(&[Code], &[f32]); T],
) -> [[f32; 8]; T] {
    dot_tile(wq, wd, rows)
}

/// One weight row times `T` activation rows (codes, block scales): per
/// block, eight lane sums of four products (exact in f32), then
/// `acc[l] = fma(d_w * d_a, lane, acc[l])`. Returns the lanes; the caller
/// sums them with [`hsum8`].
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
#[inline(never)]
fn dot_tile<const T: usize>(wq: &[i8], wd: &[f32], rows: [(&[f32], &[f32]); T]) -> [[f32; 8]; T] {
    let nb = wd.len();
    let mut acc = [[0f32; 8]; T];
    for b in 0..nb {
        let wb = &wq[b * QK8_0..(b + 1) * QK8_0];
        let mut w = [0f32; QK8_0];
        for (x, &q) in w.iter_mut().zip(wb) {
            *x = f32::from(q);
        }
        let dw = wd[b];
        for (t, (aq, ad)) in rows.iter().enumerate() {
            let a = &aq[b * QK8_0..(b + 1) * QK8_0];
            let mut lanes = [0f32; 8];
            for step in 0..4 {
                for l in 0..8 {
                    lanes[l] = w[step * 8 + l].mul_add(a[step * 8 + l], lanes[l]);
                }
            }
            let d = dw * ad[b];
            for l in 0..8 {
                acc[t][l] = d.mul_add(lanes[l], acc[t][l]);
            }
        }
    }
    acc
}

/// Activation rows in groups of four, block-interleaved: for each group
/// and block, the four rows' codes and scales side by side, so the tile
/// kernels walk one contiguous slice.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
struct Tiles {
    q: Vec<[[i8; QK8_0]; 4]>,
    d: Vec<[f32; 4]>,
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
impl Tiles {
    fn new(acts: &Acts, m: usize, nb: usize) -> Tiles {
        let (blocks, _) = acts.q.as_chunks::<QK8_0>();
        let groups = m / 4;
        let mut q = Vec::with_capacity(groups * nb);
        let mut d = Vec::with_capacity(groups * nb);
        for g in 0..groups {
            for b in 0..nb {
                q.push(std::array::from_fn(|t| blocks[(4 * g + t) * nb + b]));
                d.push(std::array::from_fn(|t| acts.d[(4 * g + t) * nb + b]));
            }
        }
        Tiles { q, d }
    }

    /// The groups `range`, each with its index, blocks and scales.
    #[allow(clippy::type_complexity)]
    fn iter(
        &self,
        range: std::ops::Range<usize>,
        nb: usize,
    ) -> impl Iterator<Item = (usize, (&[[[i8; QK8_0]; 4]], &[[f32; 4]]))> {
        let blocks = range.start * nb..range.end * nb;
        (range.start..).zip(
            self.q[blocks.clone()]
                .chunks_exact(nb)
                .zip(self.d[blocks].chunks_exact(nb)),
        )
    }
}

/// Converts Q8_0 block bytes (ggml layout; Q5_0 arrives widened to Q8_0) to a matrix.
#[cfg(test)]
pub(crate) fn from_blocks(data: &[u8], rows: usize, cols: usize) -> Option<Q8_0Matrix> {
    let mut m = Q8_0Matrix::empty(rows, cols)?;
    (m.push(data) && m.is_complete()).then_some(m)
}

/// Bytes of one ggml Q8_0 block.
const BLOCK_BYTES: usize = 34;

impl Q8_0Matrix {
    /// An empty matrix to be filled by [`push`](Self::push), row by row.
    pub fn empty(rows: usize, cols: usize) -> Option<Q8_0Matrix> {
        cols.is_multiple_of(QK8_0).then_some(())?;
        let n = rows.checked_mul(cols)?;
        Some(Q8_0Matrix {
            rows,
            cols,
            d: Pages::with_capacity(n / QK8_0),
            q: Pages::with_capacity(n),
        })
    }

    /// Appends whole Q8_0 blocks (ggml bytes); false if `data` is not whole
    /// blocks or would overfill the matrix.
    pub fn push(&mut self, data: &[u8]) -> bool {
        let blocks = data.len() / BLOCK_BYTES;
        if !data.len().is_multiple_of(BLOCK_BYTES)
            || self.q.len() + blocks * QK8_0 > self.rows * self.cols
        {
            return false;
        }
        self.d.extend(
            data.chunks_exact(BLOCK_BYTES).map(|block| {
                crate::model::f16::f16_to_f32(u16::from_le_bytes([block[0], block[1]]))
            }),
        );
        super::pool::par_jobs(
            &mut self.q.spare_mut()[..blocks * QK8_0],
            QK8_0,
            blocks >= PARALLEL_UNPACK,
            |b, out| {
                for (i, &v) in data[b * BLOCK_BYTES + 2..][..QK8_0].iter().enumerate() {
                    out[permuted(i)] = v as i8;
                }
            },
        );
        self.q.set_filled(blocks * QK8_0);
        true
    }

    pub fn is_complete(&self) -> bool {
        self.q.len() == self.rows * self.cols
    }
}
