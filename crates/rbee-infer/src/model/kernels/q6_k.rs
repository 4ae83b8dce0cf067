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

use std::borrow::Cow;

use super::dispatch::Kernels;
use super::hsum8;
use super::pages::Pages;
use super::pool::{PARALLEL_UNPACK, par_columns};
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
use super::q6_k_tiles::SCALE_SHUFFLE;
pub(crate) use super::q6_k_tiles::{Block, Packed};
use super::quantize::{Q8KRows, QK_K, quantize_q8_k};

const BLOCK_BYTES: usize = 210;
/// Bytes of one super-block once loaded ([`Packed`]).
pub(crate) const LOADED_BLOCK_BYTES: usize = std::mem::size_of::<Packed>();

/// A ggml Q6_K block's bytes as the matrix stores them: its codes permuted for the kernels
/// and packed again ([`Packed`]).
fn load(b: &[u8]) -> Packed {
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
    Packed::pack(&Block {
        d: crate::model::f16::f16_to_f32(u16::from_le_bytes([d[0], d[1]])),
        scales,
        codes,
    })
}

#[derive(Debug)]
pub(crate) struct Q6KMatrix {
    pub rows: usize,
    pub cols: usize,
    blocks: Pages<Packed>,
}

impl Q6KMatrix {
    #[cfg(test)]
    pub fn from_blocks(data: &[u8], rows: usize, cols: usize) -> Option<Q6KMatrix> {
        let mut m = Q6KMatrix::empty(rows, cols)?;
        (m.push(data) && m.is_complete()).then_some(m)
    }

    /// An empty matrix to be filled by [`push`](Self::push), row by row.
    pub fn empty(rows: usize, cols: usize) -> Option<Q6KMatrix> {
        cols.is_multiple_of(QK_K).then_some(())?;
        Some(Q6KMatrix {
            rows,
            cols,
            blocks: Pages::with_capacity(rows.checked_mul(cols)? / QK_K),
        })
    }

    /// Appends whole Q6_K blocks (ggml bytes); false if `data` is not whole
    /// blocks or would overfill the matrix.
    pub fn push(&mut self, data: &[u8]) -> bool {
        let n = data.len() / BLOCK_BYTES;
        if !data.len().is_multiple_of(BLOCK_BYTES)
            || self.blocks.len() + n > self.rows * self.cols / QK_K
        {
            return false;
        }
        super::pool::par_jobs(
            &mut self.blocks.spare_mut()[..n],
            1,
            n >= PARALLEL_UNPACK,
            |i, out| out[0] = load(&data[i * BLOCK_BYTES..][..BLOCK_BYTES]),
        );
        self.blocks.set_filled(n);
        true
    }

    pub fn is_complete(&self) -> bool {
        self.blocks.len() == self.rows * self.cols / QK_K
    }

    pub fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>()
    }

    /// `tiled`: llama.cpp's batch has at least 8 rows (see the module docs).
    pub fn matmul(&self, x: &[f32], m: usize, tiled: bool) -> Vec<f32> {
        self.matmul_with(super::dispatch::active(), x, m, tiled)
    }

    /// [`matmul`](Self::matmul) on the kernel set `set`.
    pub(crate) fn matmul_with(&self, set: Kernels, x: &[f32], m: usize, tiled: bool) -> Vec<f32> {
        let mut acts = Q8KRows::default();
        quantize_q8_k(x, &mut acts);
        let a = permuted_f32(&acts.q);
        let nb = self.cols / QK_K;
        let finish = |lanes: &[f32; 8]| if tiled { lanes[0] } else { hsum8(lanes) };
        let (tiles, first) = Tiles::new(&acts, m / 4, nb);
        let sums16 = sums16(&acts);
        par_columns(m, self.rows, 8, |cols, out| {
            let width = cols.len();
            // The prompt kernels' weight rows, unpacked once for all the rows they serve: with
            // several blocks of row groups (a long prompt) all of them first, for every block;
            // with one, each just before its use, while it is in cache.
            let mut unpacked = Vec::with_capacity(nb);
            let all = tiles.blocks(nb).nth(1).is_some();
            if all {
                unpack_row(&self.blocks[cols.start * nb..cols.end * nb], &mut unpacked);
            }
            // Row groups in blocks that stay in cache while every weight row passes them.
            for groups in tiles.blocks(nb) {
                for (i, c) in cols.clone().enumerate() {
                    let w = if all {
                        &unpacked[i * nb..(i + 1) * nb]
                    } else {
                        unpack_row(&self.blocks[c * nb..(c + 1) * nb], &mut unpacked)
                    };
                    tiles.each(set, groups.clone(), w, nb, tiled, |r, sums| {
                        for (t, s) in sums.iter().enumerate() {
                            out[(r + t) * width + i] = *s;
                        }
                    });
                }
            }
            // vec_dot rows left over (decode rows).
            let weight = |c: usize| &self.blocks[c * nb..(c + 1) * nb];
            let whole = cols.start + cols.len() / 4 * 4;
            let row_first = if tiled { m } else { first };
            // Four weight rows at a time against every such activation row while they are in
            // cache: the weights are read from memory once, however many rows there are.
            for c in (cols.start..whole).step_by(4) {
                for r in row_first..m {
                    let lanes = row_vec_dot4(
                        std::array::from_fn(|t| weight(c + t)),
                        &acts,
                        &a,
                        &sums16,
                        r,
                    );
                    for (t, lanes) in lanes.iter().enumerate() {
                        out[r * width + c - cols.start + t] = hsum8(lanes);
                    }
                }
            }
            for (i, c) in cols.clone().enumerate() {
                if (!tiled && c < whole) || first == m {
                    continue;
                }
                let w = unpack_row(&self.blocks[c * nb..(c + 1) * nb], &mut unpacked);
                // Four activation rows share each unpacked weight block.
                let mut r = first;
                while r + 4 <= m {
                    let acc = dot_tile::<4>(w, &acts, &a, std::array::from_fn(|t| r + t), tiled);
                    for (t, lanes) in acc.iter().enumerate() {
                        out[(r + t) * width + i] = finish(lanes);
                    }
                    r += 4;
                }
                for r in r..m {
                    out[r * width + i] = finish(&dot_tile::<1>(w, &acts, &a, [r], tiled)[0]);
                }
            }
        })
    }

    /// Dequantised row `r`, as ggml's `dequantize_row_q6_K` (`d * scale * q`).
    pub fn row(&self, r: usize, out: &mut Vec<f32>) {
        let nb = self.cols / QK_K;
        for b in &self.blocks[r * nb..(r + 1) * nb] {
            for e in 0..QK_K {
                let c = b.code(e / 32 * 32 + permuted(e % 32));
                out.push(b.d * f32::from(b.scales[e / 16]) * f32::from(c as i8 - 32));
            }
        }
    }
}

/// Weight row `w` with one byte a code, in `into`.
fn unpack_row<'a>(w: &[Packed], into: &'a mut Vec<Block>) -> &'a [Block] {
    into.resize(w.len(), bytemuck::Zeroable::zeroed());
    for (out, b) in into.iter_mut().zip(w) {
        b.unpack_into(out);
    }
    into
}

/// Position of value `i` of a 32-value chunk in the permuted layout.
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

/// Activation codes as the AVX2 [`dot_tile`] reads them: the i8 codes.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
fn permuted_f32(q: &[i8]) -> Cow<'_, [i8]> {
    Cow::Borrowed(q)
}

/// Activation codes as f32, permuted within each 32-value chunk like the weights.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn permuted_f32(q: &[i8]) -> Cow<'_, [f32]> {
    let mut out = vec![0f32; q.len()];
    for (dst, src) in out.chunks_exact_mut(32).zip(q.chunks_exact(32)) {
        for (i, &v) in src.iter().enumerate() {
            dst[permuted(i)] = f32::from(v);
        }
    }
    Cow::Owned(out)
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
/// Exact sum of lanes holding integers (in f64, so no bound). Not inlined,
/// for the reason given at [`super::hsum8`].
#[inline(never)]
fn exact_sum(x: &[f32; 8], y: &[f32; 8], z: &[i32; 8]) -> f64 {
    (0..8)
        .map(|l| f64::from(x[l]) + f64::from(y[l]) - f64::from(z[l]))
        .sum()
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
/// One weight row (all super-blocks) times `T` activation rows.
///
/// Per super-block and row, lane `l` gathers `scale * code * a` over the
/// positions `32c + 4l .. 32c + 4l + 4` of each chunk `c` — summed separately
/// over chunks 0..4 and 4..8 so each part stays an exact f32 (4 * 127 * 4 *
/// 63 * 127 < 2^24) — minus the code offset `32 * scale * bsum` of chunk `l`
/// (ggml subtracts it per lane). `tiled`: the per-super-block integer is
/// the sum of all lanes and the result is in lane 0; otherwise (vec_dot)
/// the caller sums the eight returned lane accumulators with [`hsum8`].
#[inline(never)]
fn dot_tile<const T: usize>(
    w: &[Block],
    acts: &Q8KRows,
    a: &[f32],
    rows: [usize; T],
    tiled: bool,
) -> [[f32; 8]; T] {
    let nb = w.len();
    let mut acc = [[0f32; 8]; T];
    for (bi, b) in w.iter().enumerate() {
        let mut codes = [0f32; QK_K];
        for (c, &q) in codes.iter_mut().zip(b.codes.iter()) {
            *c = f32::from(q);
        }
        let scales: [f32; 16] = std::array::from_fn(|i| f32::from(b.scales[i]));
        for (t, &row) in rows.iter().enumerate() {
            let ab = row * nb + bi;
            let a = &a[ab * QK_K..(ab + 1) * QK_K];
            let bsums = &acts.bsums[ab * 16..(ab + 1) * 16];
            let mut halves = [[0f32; 8]; 2];
            for chunk in 0..8 {
                let (codes, a) = (
                    &codes[32 * chunk..32 * chunk + 32],
                    &a[32 * chunk..32 * chunk + 32],
                );
                let mut sums = [0f32; 8];
                for step in 0..4 {
                    for l in 0..8 {
                        sums[l] = codes[step * 8 + l].mul_add(a[step * 8 + l], sums[l]);
                    }
                }
                let (s0, s1) = (scales[2 * chunk], scales[2 * chunk + 1]);
                let half = &mut halves[chunk / 4];
                for l in 0..8 {
                    half[l] = sums[l].mul_add(if l < 4 { s0 } else { s1 }, half[l]);
                }
            }
            let offsets: [i32; 8] = std::array::from_fn(|l| {
                32 * (i32::from(b.scales[2 * l]) * bsums[2 * l]
                    + i32::from(b.scales[2 * l + 1]) * bsums[2 * l + 1])
            });
            if tiled {
                // tiled-kernel.cpp: fma(d_w * isum, d_a, acc) per super-block.
                let isum = exact_sum(&halves[0], &halves[1], &offsets) as f32;
                acc[t][0] = (b.d * isum).mul_add(acts.d[ab], acc[t][0]);
            } else {
                // vec_dot: each integer lane, rounded once (cvtdq2ps), one FMA.
                let d = acts.d[ab] * b.d;
                for l in 0..8 {
                    let lane = (f64::from(halves[0][l]) + f64::from(halves[1][l])
                        - f64::from(offsets[l])) as f32;
                    acc[t][l] = d.mul_add(lane, acc[t][l]);
                }
            }
        }
    }
    acc
}

/// [`dot_tile`] with ggml's integer instructions: per 32-value chunk,
/// `vpmaddubsw` (codes times activation codes) and `vpmaddwd` (times the
/// two 16-value scales) give the lanes, minus the code offset per lane; the
/// float steps are the portable kernel's.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
fn dot_tile<const T: usize>(
    w: &[Block],
    acts: &Q8KRows,
    a: &[i8],
    rows: [usize; T],
    tiled: bool,
) -> [[f32; 8]; T] {
    use super::avx2::{
        add_i32_m256i, fused_mul_add_m256, hsum_i32, load_i8, load_u8, m256i, madd_i16,
        mul_u8_i8_pairs, set_splat_m256, sub_i32_m256i, to_f32,
    };
    let nb = w.len();
    let (a, _) = a.as_chunks::<32>();
    let mut acc = [[0f32; 8]; T];
    for (bi, b) in w.iter().enumerate() {
        let (codes, _) = b.codes.as_chunks::<32>();
        let scales: [m256i; 8] = std::array::from_fn(|c| {
            let (s0, s1) = (i16::from(b.scales[2 * c]), i16::from(b.scales[2 * c + 1]));
            m256i::from(std::array::from_fn::<i16, 16, _>(|i| {
                if i < 8 { s0 } else { s1 }
            }))
        });
        for (t, &row) in rows.iter().enumerate() {
            let ab = row * nb + bi;
            let a = &a[ab * 8..ab * 8 + 8];
            let bsums = &acts.bsums[ab * 16..(ab + 1) * 16];
            let mut sum = m256i::default();
            for c in 0..8 {
                let p = mul_u8_i8_pairs(load_u8(&codes[c]), load_i8(&a[c]));
                sum = add_i32_m256i(sum, madd_i16(p, scales[c]));
            }
            let offsets: [i32; 8] = std::array::from_fn(|l| {
                32 * (i32::from(b.scales[2 * l]) * bsums[2 * l]
                    + i32::from(b.scales[2 * l + 1]) * bsums[2 * l + 1])
            });
            let lanes = sub_i32_m256i(sum, m256i::from(offsets));
            if tiled {
                // tiled-kernel.cpp: fma(d_w * isum, d_a, acc) per super-block.
                let isum = hsum_i32(lanes) as f32;
                acc[t][0] = (b.d * isum).mul_add(acts.d[ab], acc[t][0]);
            } else {
                // vec_dot: each integer lane, rounded once (cvtdq2ps), one FMA.
                let d = set_splat_m256(acts.d[ab] * b.d);
                acc[t] = fused_mul_add_m256(d, to_f32(lanes), acc[t].into()).to_array();
            }
        }
    }
    acc
}

/// Each activation block's 16-value code sums as i16 (at most 16 * 127), for
/// [`row_vec_dot4`].
fn sums16(acts: &Q8KRows) -> Vec<[i16; 16]> {
    acts.bsums
        .chunks_exact(16)
        .map(|s| std::array::from_fn(|i| s[i] as i16))
        .collect()
}

/// One activation row (`r`) times four weight rows with vec_dot's arithmetic ([`dot_tile`]
/// without `tiled`, per weight row), the code offsets from one `vpmaddwd` each instead of
/// scalar products. The rows are walked one after the other, each in memory order (see
/// `q4_k_tiles::row_gemv4`); each output is its own row's operations, in their order.
/// Returns each weight row's eight lane accumulators (the caller sums them with [`hsum8`]).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
fn row_vec_dot4(
    w: [&[Packed]; 4],
    acts: &Q8KRows,
    a: &[i8],
    sums16: &[[i16; 16]],
    r: usize,
) -> [[f32; 8]; 4] {
    use super::avx2::{
        add_i32_m256i, fused_mul_add_m256, load_i8, m256, m256i, madd_i16, mul_u8_i8_pairs,
        set_splat_m256, sub_i32_m256i, to_f32, zeroed_m256,
    };
    use safe_arch::{
        convert_to_i16_m256i_from_i8_m128i, m128i, shl_imm_u32_m256i, shuffle_av_i8z_all_m128i,
    };
    let nb = w[0].len();
    let (a, _) = a.as_chunks::<32>();
    let a = &a[r * nb * 8..(r + 1) * nb * 8];
    let (ad, bs) = (&acts.d[r * nb..(r + 1) * nb], &sums16[r * nb..(r + 1) * nb]);
    let mut acc: [m256; 4] = [zeroed_m256(); 4];
    // One weight row after the other, each in memory order (see `q4_k_tiles::row_gemv4`).
    for (acc, w) in acc.iter_mut().zip(&w) {
        for bi in 0..nb {
            let q8 = &a[bi * 8..bi * 8 + 8];
            let bsums = m256i::from(bs[bi]);
            let b = &w[bi];
            let codes = super::q6_k_tiles::chunks(b);
            let scales = m128i::from(b.scales);
            let wide = convert_to_i16_m256i_from_i8_m128i(scales);
            // Lane l starts at -32 * (scale[2l] * bsum[2l] + scale[2l+1] * bsum[2l+1]).
            let mut sum = sub_i32_m256i(
                m256i::default(),
                shl_imm_u32_m256i::<5>(madd_i16(bsums, wide)),
            );
            for (c, &q) in codes.iter().enumerate() {
                let sc = convert_to_i16_m256i_from_i8_m128i(shuffle_av_i8z_all_m128i(
                    scales,
                    m128i::from(SCALE_SHUFFLE[c]),
                ));
                sum = add_i32_m256i(sum, madd_i16(mul_u8_i8_pairs(q, load_i8(&q8[c])), sc));
            }
            *acc = fused_mul_add_m256(set_splat_m256(ad[bi] * b.d), to_f32(sum), *acc);
        }
    }
    acc.map(|a| a.to_array())
}

/// Without AVX2: [`dot_tile`] for each of the four weight rows.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn row_vec_dot4(
    w: [&[Packed]; 4],
    acts: &Q8KRows,
    a: &[f32],
    _: &[[i16; 16]],
    r: usize,
) -> [[f32; 8]; 4] {
    w.map(|w| {
        let mut unpacked = Vec::new();
        dot_tile::<1>(unpack_row(w, &mut unpacked), acts, a, [r], false)[0]
    })
}

/// Groups of four activation rows for the tiled kernel, block-interleaved
/// for [`tile_tiled`]: per group and super-block the four rows' codes,
/// scales and 16-value sums.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
struct Tiles {
    q: Vec<[[i8; QK_K]; 4]>,
    d: Vec<[f32; 4]>,
    bsums: Vec<[[i16; 16]; 4]>,
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
impl Tiles {
    /// The first `groups` groups of four rows, and the first row they leave
    /// to the row kernels.
    fn new(acts: &Q8KRows, groups: usize, nb: usize) -> (Tiles, usize) {
        let (blocks, _) = acts.q.as_chunks::<QK_K>();
        let mut tiles = Tiles {
            q: Vec::with_capacity(groups * nb),
            d: Vec::with_capacity(groups * nb),
            bsums: Vec::with_capacity(groups * nb),
        };
        for g in 0..groups {
            for b in 0..nb {
                let ab = |t: usize| (4 * g + t) * nb + b;
                tiles.q.push(std::array::from_fn(|t| blocks[ab(t)]));
                tiles.d.push(std::array::from_fn(|t| acts.d[ab(t)]));
                // Sums of 16 codes: at most 16 * 127 in magnitude.
                tiles.bsums.push(std::array::from_fn(|t| {
                    std::array::from_fn(|i| acts.bsums[ab(t) * 16 + i] as i16)
                }));
            }
        }
        (tiles, 4 * groups)
    }

    /// The groups in cache-sized blocks.
    fn blocks(&self, nb: usize) -> impl Iterator<Item = std::ops::Range<usize>> + use<> {
        super::pool::group_blocks(self.d.len() / nb.max(1), nb * (4 * QK_K + 16 + 128))
    }

    /// `f(first_row, outputs)` for the groups `range`, against weight row `w`, with the
    /// tiled kernel's arithmetic or (not `tiled`) vec_dot's, on the kernel set `set`.
    fn each(
        &self,
        set: Kernels,
        range: std::ops::Range<usize>,
        w: &[Block],
        nb: usize,
        tiled: bool,
        mut f: impl FnMut(usize, [f32; 4]),
    ) {
        use super::dispatch::{q6_k_tile_tiled, q6_k_tile_vec_dot};
        let blocks = range.start * nb..range.end * nb;
        let groups = self.q[blocks.clone()]
            .chunks_exact(nb)
            .zip(self.d[blocks.clone()].chunks_exact(nb))
            .zip(self.bsums[blocks].chunks_exact(nb));
        for (g, ((q, d), bs)) in (range.start..).zip(groups) {
            let out = if tiled {
                q6_k_tile_tiled(set, w, q, d, bs)
            } else {
                q6_k_tile_vec_dot(set, w, q, d, bs).map(|lanes| hsum8(&lanes))
            };
            f(4 * g, out);
        }
    }
}

/// No tiles without AVX2: every row takes the row kernels.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
struct Tiles;

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
impl Tiles {
    fn new(_: &Q8KRows, _: usize, _: usize) -> (Tiles, usize) {
        (Tiles, 0)
    }

    fn blocks(&self, _: usize) -> std::iter::Empty<std::ops::Range<usize>> {
        std::iter::empty()
    }

    fn each(
        &self,
        _: Kernels,
        _: std::ops::Range<usize>,
        _: &[Block],
        _: usize,
        _: bool,
        _: impl FnMut(usize, [f32; 4]),
    ) {
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_blocks::{Rng, random_q6_k};
    use super::*;

    /// The Q6_K prompt tiles on every kernel set this CPU runs, at a real model's sizes: every
    /// set gives the AVX2 set's bits (the tiled kernel's rounding, for batches of 8 rows or
    /// more, and vec_dot's, for fewer). Cases: 192 weight rows of a 1.5B model's ffn_down (8960
    /// wide) times 32 rows (eight groups of four, their activations in L2, as the matmul's
    /// row-group blocks keep them), and 192 rows of a 2048-wide matrix times 4 rows (in L1).
    ///
    /// With `RBEE_KERNEL_BENCH_ROUNDS=N` it also times them, one thread, best of N alternating
    /// rounds, and prints ns per super-block times one activation row (docs/BENCHMARKS.md:
    /// `RBEE_KERNEL_BENCH_ROUNDS=7 cargo test --config
    /// 'profile.test.package.rbee-infer.debug-assertions=false' -p rbee-infer --lib
    /// q6_k_prompt_tiles -- --nocapture`; the config drops the standard library's debug
    /// checks from the loads, as release builds do). Decode rows run the AVX2 kernel in every
    /// set (a VNNI form measured no gain: they wait on memory).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[test]
    fn q6_k_prompt_tiles_agree_on_every_kernel_set_at_model_sizes() {
        use super::super::dispatch::{KernelSet, q6_k_tile_tiled, q6_k_tile_vec_dot};
        use std::hint::black_box;
        use std::time::Instant;
        type Kernel =
            fn(Kernels, &[Block], &[[[i8; QK_K]; 4]], &[[f32; 4]], &[[[i16; 16]; 4]]) -> Vec<f32>;
        let kernels: [(&str, Kernel); 2] = [
            ("tiled", |k, w, q, d, b| {
                q6_k_tile_tiled(k, w, q, d, b).to_vec()
            }),
            ("vec_dot", |k, w, q, d, b| {
                q6_k_tile_vec_dot(k, w, q, d, b).concat()
            }),
        ];
        struct Case {
            w: Q6KMatrix,
            tiles: Tiles,
            m: usize,
        }
        let case = |rows: usize, cols: usize, m: usize, rng: &mut Rng| {
            let w =
                Q6KMatrix::from_blocks(&random_q6_k(rng, rows * cols / QK_K), rows, cols).unwrap();
            let x: Vec<f32> = (0..m * cols).map(|_| 2.0 * rng.float()).collect();
            let mut acts = Q8KRows::default();
            quantize_q8_k(&x, &mut acts);
            let (tiles, _) = Tiles::new(&acts, m / 4, cols / QK_K);
            Case { w, tiles, m }
        };
        let mut rng = Rng(31);
        let cases = [case(192, 8960, 32, &mut rng), case(192, 2048, 4, &mut rng)];
        let sets: Vec<Kernels> = KernelSet::ALL
            .into_iter()
            .filter_map(|s| Kernels::new(s).ok())
            .collect();
        let avx2 = Kernels::new(KernelSet::Avx2).unwrap();
        let rounds: usize = std::env::var("RBEE_KERNEL_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // Per set: ns per super-block times one activation row, per case and kernel.
        let mut best = vec![[f64::INFINITY; 4]; sets.len()];
        for (i, c) in cases.iter().enumerate() {
            let nb = c.w.cols / QK_K;
            let unpacked: Vec<Block> = c.w.blocks.iter().map(Packed::unpack).collect();
            let weight = |r: usize| &unpacked[r * nb..(r + 1) * nb];
            let group = |g: usize| {
                let b = g * nb..(g + 1) * nb;
                (
                    &c.tiles.q[b.clone()],
                    &c.tiles.d[b.clone()],
                    &c.tiles.bsums[b],
                )
            };
            let every = |k: Kernels, kernel: Kernel, each: &mut dyn FnMut(Vec<f32>)| {
                for r in 0..192 {
                    for g in 0..c.m / 4 {
                        let (q, d, b) = group(g);
                        each(kernel(k, weight(r), q, d, b));
                    }
                }
            };
            for (j, &(name, kernel)) in kernels.iter().enumerate() {
                let mut want = Vec::new();
                every(avx2, kernel, &mut |v| {
                    want.extend(v.iter().map(|x| x.to_bits()))
                });
                for &k in &sets {
                    let mut got = Vec::new();
                    every(k, kernel, &mut |v| {
                        got.extend(v.iter().map(|x| x.to_bits()))
                    });
                    assert!(
                        got == want,
                        "{name} on {} differs from avx2",
                        k.set().name()
                    );
                }
                for _ in 0..rounds {
                    for (k, best) in sets.iter().zip(&mut best) {
                        let t = Instant::now();
                        every(*k, kernel, &mut |v| {
                            black_box(v);
                        });
                        let ns = t.elapsed().as_nanos() as f64 / (192 * c.m * nb) as f64;
                        best[2 * i + j] = best[2 * i + j].min(ns);
                    }
                }
            }
        }
        if rounds > 0 {
            eprintln!("Q6_K kernels, ns per super-block x row, best of {rounds} rounds, 1 thread:");
            eprintln!("set          tiled(L2)  vec_dot(L2)  tiled(L1)  vec_dot(L1)");
            for (k, b) in sets.iter().zip(&best) {
                eprintln!(
                    "{:<12} {:>9.2} {:>12.2} {:>10.2} {:>12.2}",
                    k.set().name(),
                    b[0],
                    b[1],
                    b[2],
                    b[3]
                );
            }
        }
    }

    /// The row kernel that serves four weight rows at once computes, for each, exactly what
    /// the one-row kernel computes.
    #[test]
    fn the_four_weight_row_kernel_equals_the_one_row_kernel() {
        let (rows, cols, m) = (8, 512, 3);
        let mut rng = Rng(29);
        let data = random_q6_k(&mut rng, rows * cols / QK_K);
        let w = Q6KMatrix::from_blocks(&data, rows, cols).unwrap();
        let x: Vec<f32> = (0..m * cols).map(|_| 2.0 * rng.float()).collect();
        let mut acts = Q8KRows::default();
        quantize_q8_k(&x, &mut acts);
        let a = permuted_f32(&acts.q);
        let nb = cols / QK_K;
        let weight = |c: usize| &w.blocks[c * nb..(c + 1) * nb];
        let sums = sums16(&acts);
        for r in 0..m {
            for c in (0..rows).step_by(4) {
                let four =
                    row_vec_dot4(std::array::from_fn(|t| weight(c + t)), &acts, &a, &sums, r);
                for (t, got) in four.iter().enumerate() {
                    let w: Vec<Block> = weight(c + t).iter().map(Packed::unpack).collect();
                    let want = dot_tile::<1>(&w, &acts, &a, [r], false)[0];
                    assert_eq!(
                        got.map(f32::to_bits),
                        want.map(f32::to_bits),
                        "row {r}, weight row {}",
                        c + t
                    );
                }
            }
        }
    }
}
