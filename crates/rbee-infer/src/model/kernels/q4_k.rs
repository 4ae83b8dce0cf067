//! Q4_K weights times Q8_K activations.
//!
//! llama.cpp repacks Q4_K into 8-column interleaved blocks on AVX2 and runs
//! `ggml_gemm_q4_K_8x8_q8_K` on groups of four activation rows and
//! `ggml_gemv_q4_K_8x8_q8_K` on the rest. Both keep one f32 accumulator for
//! the scaled products and one for the mins per output, but the gemm adds
//! into them once per 64 values and the gemv once per 256, which rounds
//! differently; [`RowKernel`] picks the one llama.cpp would use for a row.

use std::borrow::Cow;

use super::RowKernel;
use super::dispatch::Kernels;
use super::pages::Pages;
use super::pool::{PARALLEL_UNPACK, par_columns};
pub(crate) use super::q4_k_tiles::{Block, Raw};
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
use super::q4_k_tiles::{Rows8, interleave8};
use super::quantize::{Q8KRows, QK_K, quantize_q8_k};
use crate::model::mapped::{MappedRange, touch_pages};

const BLOCK_BYTES: usize = 144;
/// Bytes of one super-block once loaded ([`Raw`]: ggml's own).
pub(crate) const LOADED_BLOCK_BYTES: usize = std::mem::size_of::<Raw>();
const _: () = assert!(LOADED_BLOCK_BYTES == BLOCK_BYTES);

/// Weight row `w` with its scales and mins unpacked, in `into`.
fn unpack_row<'a>(w: &[Raw], into: &'a mut Vec<Block>) -> &'a [Block] {
    into.resize(w.len(), bytemuck::Zeroable::zeroed());
    for (out, b) in into.iter_mut().zip(w) {
        b.unpack_into(out);
    }
    into
}

/// Where a Q4_K matrix's blocks live.
#[derive(Debug)]
enum Store {
    /// Copied into memory of its own (tests, or bytes that came from no mapped file).
    Copied(Pages<Raw>),
    /// In place in the mapped model file: one range per stacked part (q, k and v, or gate and
    /// up, lie apart in the file), each whole rows.
    Mapped(Vec<MappedRange>),
}

/// A Q4_K matrix's weight rows, wherever they live: up to one slice per stacked part.
struct Rows<'a> {
    nb: usize,
    /// Each part's first row and blocks, in row order.
    parts: Vec<(usize, &'a [Raw])>,
}

impl<'a> Rows<'a> {
    /// Weight row `c`'s blocks.
    #[inline]
    fn row(&self, c: usize) -> &'a [Raw] {
        let (first, blocks) = self
            .parts
            .iter()
            .rev()
            .find(|(first, _)| *first <= c)
            .copied()
            .unwrap_or((0, &[]));
        &blocks[(c - first) * self.nb..(c - first + 1) * self.nb]
    }
}

#[derive(Debug)]
pub(crate) struct Q4KMatrix {
    pub rows: usize,
    pub cols: usize,
    blocks: Store,
}

impl Q4KMatrix {
    #[cfg(test)]
    pub fn from_blocks(data: &[u8], rows: usize, cols: usize) -> Option<Q4KMatrix> {
        let mut m = Q4KMatrix::empty(rows, cols)?;
        (m.push(data) && m.is_complete()).then_some(m)
    }

    /// An empty matrix to be filled by [`push`](Self::push), row by row.
    pub fn empty(rows: usize, cols: usize) -> Option<Q4KMatrix> {
        cols.is_multiple_of(QK_K).then_some(())?;
        Some(Q4KMatrix {
            rows,
            cols,
            blocks: Store::Copied(Pages::with_capacity(rows.checked_mul(cols)? / QK_K)),
        })
    }

    /// A `rows × cols` matrix over ggml blocks in place in a mapped file: `parts` stacked
    /// row-wise, each whole rows, `rows` in all (else `None`). Every page is mapped in now, in
    /// parallel ([`touch_pages`]), so the load ends with the weights resident.
    pub fn mapped(parts: Vec<MappedRange>, rows: usize, cols: usize) -> Option<Q4KMatrix> {
        cols.is_multiple_of(QK_K).then_some(())?;
        let row_bytes = cols / QK_K * BLOCK_BYTES;
        let whole_rows = |p: &MappedRange| p.bytes().len().is_multiple_of(row_bytes);
        let bytes: usize = parts.iter().map(|p| p.bytes().len()).sum();
        (row_bytes > 0 && parts.iter().all(whole_rows) && bytes == rows * row_bytes)
            .then_some(())?;
        for p in &parts {
            const CHUNK: usize = 1 << 20;
            let bytes = p.bytes();
            let mut folded = vec![0u8; bytes.len().div_ceil(CHUNK)];
            super::pool::par_jobs(&mut folded, 1, bytes.len() >= 4 * CHUNK, |i, out| {
                out[0] = touch_pages(&bytes[i * CHUNK..((i + 1) * CHUNK).min(bytes.len())]);
            });
            std::hint::black_box(folded);
        }
        Some(Q4KMatrix {
            rows,
            cols,
            blocks: Store::Mapped(parts),
        })
    }

    /// Whether the blocks are used in place from a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.blocks, Store::Mapped(_))
    }

    fn weight_rows(&self) -> Rows<'_> {
        let nb = self.cols / QK_K;
        let parts = match &self.blocks {
            Store::Copied(pages) => vec![(0, &pages[..])],
            Store::Mapped(ranges) => {
                let mut first = 0;
                ranges
                    .iter()
                    .map(|r| {
                        let blocks: &[Raw] = bytemuck::cast_slice(r.bytes());
                        let part = (first, blocks);
                        first += blocks.len() / nb.max(1);
                        part
                    })
                    .collect()
            }
        };
        Rows { nb, parts }
    }

    /// Blocks in the matrix.
    fn len(&self) -> usize {
        match &self.blocks {
            Store::Copied(pages) => pages.len(),
            Store::Mapped(ranges) => ranges.iter().map(|r| r.bytes().len() / BLOCK_BYTES).sum(),
        }
    }

    /// Appends whole Q4_K blocks (ggml bytes); false if `data` is not whole
    /// blocks or would overfill the matrix.
    pub fn push(&mut self, data: &[u8]) -> bool {
        let n = data.len() / BLOCK_BYTES;
        let Store::Copied(blocks) = &mut self.blocks else {
            return false;
        };
        if !data.len().is_multiple_of(BLOCK_BYTES)
            || blocks.len() + n > self.rows * self.cols / QK_K
        {
            return false;
        }
        // ggml's blocks are the stored form: a copy, in parallel chunks.
        let raw: &[Raw] = bytemuck::cast_slice(data);
        const CHUNK: usize = 1024;
        let spare = &mut blocks.spare_mut()[..n];
        let (whole, tail) = spare.split_at_mut(n / CHUNK * CHUNK);
        super::pool::par_jobs(whole, CHUNK, n >= PARALLEL_UNPACK, |i, out| {
            out.copy_from_slice(&raw[i * CHUNK..(i + 1) * CHUNK]);
        });
        tail.copy_from_slice(&raw[n / CHUNK * CHUNK..]);
        blocks.set_filled(n);
        true
    }

    pub fn is_complete(&self) -> bool {
        self.len() == self.rows * self.cols / QK_K
    }

    pub fn bytes(&self) -> usize {
        self.len() * std::mem::size_of::<Raw>()
    }

    /// `m` rows of activations times the transpose; `kernels[r]` chooses the
    /// rounding of row `r`.
    pub fn matmul(&self, x: &[f32], m: usize, kernels: &[RowKernel]) -> Vec<f32> {
        self.matmul_with(super::dispatch::active(), x, m, kernels)
    }

    /// [`matmul`](Self::matmul) on the kernel set `set`.
    pub(crate) fn matmul_with(
        &self,
        set: Kernels,
        x: &[f32],
        m: usize,
        kernels: &[RowKernel],
    ) -> Vec<f32> {
        let mut acts = Q8KRows::default();
        quantize_q8_k(x, &mut acts);
        let a = codes(&acts.q);
        let nb = self.cols / QK_K;
        let (tiles, rest) = Tiles::new(&acts, kernels, nb);
        // Rows left to the row kernels: the gemv ones (decode rows) take four weight rows at
        // a time; any other one goes alone.
        let (gemv, others): (Vec<usize>, Vec<usize>) =
            rest.iter().partition(|&&r| kernels[r] == RowKernel::Gemv);
        let pair_sums = pair_sums(&acts);
        let rows = self.weight_rows();
        par_columns(m, self.rows, 8, |cols, out| {
            let width = cols.len();
            // The prompt kernels' weight row, unpacked once for all the rows they serve.
            let mut unpacked = Vec::with_capacity(nb);
            let weight = |c: usize| rows.row(c);
            // Where the kernel set has it and the groups are enough, they take eight weight
            // rows at a time (the columns before `narrow`), interleaved once for all the
            // blocks of row groups: with several (a long prompt) all of the columns first,
            // with one each eight just before their use, while they are in cache.
            let narrow = tiles.eight_row_columns(set, cols.clone());
            let piece = if tiles.blocks(nb).nth(1).is_some() {
                narrow - cols.start
            } else {
                8
            };
            let mut rows8 = Vec::new();
            for first in (cols.start..narrow).step_by(piece.max(1)) {
                rows8.clear();
                for c in (first..(first + piece).min(narrow)).step_by(8) {
                    interleave8(std::array::from_fn(|t| weight(c + t)), &mut rows8);
                }
                for groups in tiles.blocks(nb) {
                    tiles.each8(set, groups.clone(), first, nb, &rows8, |r, c, sums| {
                        for (t, s) in sums.iter().enumerate() {
                            let o = (r + t) * width + c - cols.start;
                            out[o..o + 8].copy_from_slice(s);
                        }
                    });
                }
            }
            // Row groups in blocks that stay in cache while every weight row passes them.
            for groups in tiles.blocks(nb) {
                // Prompt (gemm) tiles take each weight row unpacked once; decode (gemv) tiles,
                // few per step, read the stored blocks.
                let gemm = tiles.has_gemm(groups.clone());
                for (i, c) in cols.clone().enumerate().skip(narrow - cols.start) {
                    let raw = weight(c);
                    let w = if gemm {
                        unpack_row(raw, &mut unpacked)
                    } else {
                        &[]
                    };
                    tiles.each(set, groups.clone(), raw, w, nb, |r, sums| {
                        for (t, s) in sums.iter().enumerate() {
                            out[(r + t) * width + i] = *s;
                        }
                    });
                }
            }
            let whole = cols.start + cols.len() / 4 * 4;
            // Four weight rows at a time against every such activation row while they are
            // in cache: the weights are read from memory once, however many rows there are.
            for c in (cols.start..whole).step_by(4) {
                for &r in &gemv {
                    let sums = row_gemv4_on(
                        set,
                        std::array::from_fn(|t| weight(c + t)),
                        &acts,
                        &a,
                        &pair_sums,
                        r,
                    );
                    let o = r * width + c - cols.start;
                    out[o..o + 4].copy_from_slice(&sums);
                }
            }
            for c in (whole..cols.end).filter(|_| !gemv.is_empty()) {
                let w = unpack_row(weight(c), &mut unpacked);
                for &r in &gemv {
                    out[r * width + c - cols.start] =
                        dot_tile::<1>(w, &acts, &a, [(r, RowKernel::Gemv)])[0];
                }
            }
            for (i, c) in cols.clone().enumerate() {
                if others.is_empty() {
                    break;
                }
                let w = unpack_row(weight(c), &mut unpacked);
                // Any other rows: four share each unpacked weight block.
                let (fours, ones) = others.as_chunks::<4>();
                for four in fours {
                    let sums = dot_tile::<4>(w, &acts, &a, four.map(|r| (r, kernels[r])));
                    for (&r, s) in four.iter().zip(sums) {
                        out[r * width + i] = s;
                    }
                }
                for &r in ones {
                    out[r * width + i] = dot_tile::<1>(w, &acts, &a, [(r, kernels[r])])[0];
                }
            }
        })
    }

    /// Dequantised row `r`, as ggml's `dequantize_row_q4_K`.
    pub fn row(&self, r: usize, out: &mut Vec<f32>) {
        for b in self.weight_rows().row(r).iter().map(Raw::unpack) {
            for j in 0..4 {
                let (d1, m1) = (
                    b.d * f32::from(b.scales[2 * j]),
                    b.dmin * f32::from(b.mins[2 * j]),
                );
                let (d2, m2) = (
                    b.d * f32::from(b.scales[2 * j + 1]),
                    b.dmin * f32::from(b.mins[2 * j + 1]),
                );
                let q = &b.qs[32 * j..32 * j + 32];
                out.extend(q.iter().map(|&v| d1 * f32::from(v & 0x0f) - m1));
                out.extend(q.iter().map(|&v| d2 * f32::from(v >> 4) - m2));
            }
        }
    }
}

/// Activation codes as [`dot_tile`] reads them: widened to f32 for the
/// portable kernel, the i8 codes themselves for the AVX2 one.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn codes(q: &[i8]) -> Cow<'_, [f32]> {
    Cow::Owned(q.iter().map(|&v| f32::from(v)).collect())
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
fn codes(q: &[i8]) -> Cow<'_, [i8]> {
    Cow::Borrowed(q)
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
/// Exact sums of four groups of eight lanes holding integers below 2^24
/// in total. Not inlined, for the reason given at [`super::hsum8`].
#[inline(never)]
fn exact_sums(x: &[[f32; 8]; 4]) -> [f32; 4] {
    let mut out = [0f32; 4];
    for (o, lanes) in out.iter_mut().zip(x) {
        *o = lanes.iter().sum();
    }
    out
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
/// Eight lane sums of `w * a` over 64 values.
#[inline(always)]
fn lanes64(w: &[f32; 64], a: &[f32]) -> [f32; 8] {
    let mut lanes = [0f32; 8];
    for step in 0..8 {
        for l in 0..8 {
            lanes[l] = w[step * 8 + l].mul_add(a[step * 8 + l], lanes[l]);
        }
    }
    lanes
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
/// One weight row (`w`, all super-blocks) times `T` activation rows, given as
/// (row index, kernel). Returns the `T` outputs.
#[inline(never)]
fn dot_tile<const T: usize>(
    w: &[Block],
    acts: &Q8KRows,
    a: &[f32],
    rows: [(usize, RowKernel); T],
) -> [f32; T] {
    let nb = w.len();
    let mut acc = [0f32; T];
    let mut acc_min = [0f32; T];
    for (bi, b) in w.iter().enumerate() {
        // Scaled codes as f32, once for all rows: w[j] holds `scale * code`
        // for values 64j..64j+64 (low nibbles, then high nibbles).
        let mut w = [[0f32; 64]; 4];
        for (j, w) in w.iter_mut().enumerate() {
            let q = &b.qs[32 * j..32 * j + 32];
            let (s_lo, s_hi) = (f32::from(b.scales[2 * j]), f32::from(b.scales[2 * j + 1]));
            for (x, &v) in w[..32].iter_mut().zip(q) {
                *x = f32::from(v & 0x0f) * s_lo;
            }
            for (x, &v) in w[32..].iter_mut().zip(q) {
                *x = f32::from(v >> 4) * s_hi;
            }
        }
        for (t, &(row, kernel)) in rows.iter().enumerate() {
            let ab = row * nb + bi;
            let da = acts.d[ab];
            let q8 = &a[ab * QK_K..(ab + 1) * QK_K];
            let bsums = &acts.bsums[ab * 16..(ab + 1) * 16];
            // Per 64 values: eight lanes of `scale * code * a`, each below
            // 8 * 63 * 15 * 127 < 2^24, so exact in f32.
            let mut per64 = [[0f32; 8]; 4];
            for (j, lanes) in per64.iter_mut().enumerate() {
                *lanes = lanes64(&w[j], &q8[64 * j..64 * j + 64]);
            }
            let per64 = exact_sums(&per64);
            let mut mins64 = [0i32; 4];
            for (j, m) in mins64.iter_mut().enumerate() {
                let bs_lo = bsums[4 * j] + bsums[4 * j + 1];
                let bs_hi = bsums[4 * j + 2] + bsums[4 * j + 3];
                *m = i32::from(b.mins[2 * j]) * bs_lo + i32::from(b.mins[2 * j + 1]) * bs_hi;
            }
            let scale = b.d * da;
            let scale_min = b.dmin * da;
            match kernel {
                RowKernel::Gemm => {
                    for j in 0..4 {
                        acc[t] = per64[j].mul_add(scale, acc[t]);
                        acc_min[t] = (mins64[j] as f32).mul_add(scale_min, acc_min[t]);
                    }
                }
                RowKernel::Gemv => {
                    // The super-block's integer can pass 2^24: add in f64, round once.
                    let total: f64 = per64.iter().map(|&v| f64::from(v)).sum();
                    acc[t] = (total as f32).mul_add(scale, acc[t]);
                    acc_min[t] = (mins64.iter().sum::<i32>() as f32).mul_add(scale_min, acc_min[t]);
                }
            }
        }
    }
    for (a, m) in acc.iter_mut().zip(acc_min) {
        *a -= m;
    }
    acc
}

/// [`dot_tile`] with ggml's integer instructions: per 64 values the exact
/// integer `sum(scale * code * a)` comes from `vpmaddubsw` (nibbles times
/// activation codes) and `vpmaddwd` (times the sub-block scales); the float
/// steps are the portable kernel's.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
fn dot_tile<const T: usize>(
    w: &[Block],
    acts: &Q8KRows,
    a: &[i8],
    rows: [(usize, RowKernel); T],
) -> [f32; T] {
    use super::avx2::{
        add_i32_m256i, hsum_i32_4, load_i8, load_u8, m256i, madd_i16, mul_u8_i8_pairs, nibbles,
        splat_i16,
    };
    let nb = w.len();
    let (a, _) = a.as_chunks::<32>();
    let mut acc = [0f32; T];
    let mut acc_min = [0f32; T];
    for (bi, b) in w.iter().enumerate() {
        // Nibbles and scales once for all rows: values 64j..64j+32 are the
        // low nibbles of qs[32j..32j+32], 64j+32..64j+64 the high ones.
        let (qs, _) = b.qs.as_chunks::<32>();
        let mut lo = [m256i::default(); 4];
        let mut hi = [m256i::default(); 4];
        let mut s_lo = [m256i::default(); 4];
        let mut s_hi = [m256i::default(); 4];
        for j in 0..4 {
            (lo[j], hi[j]) = nibbles(load_u8(&qs[j]));
            s_lo[j] = splat_i16(i16::from(b.scales[2 * j]));
            s_hi[j] = splat_i16(i16::from(b.scales[2 * j + 1]));
        }
        for (t, &(row, kernel)) in rows.iter().enumerate() {
            let ab = row * nb + bi;
            let da = acts.d[ab];
            let q8 = &a[ab * 8..ab * 8 + 8];
            let bsums = &acts.bsums[ab * 16..(ab + 1) * 16];
            let mut v = [m256i::default(); 4];
            for j in 0..4 {
                v[j] = add_i32_m256i(
                    madd_i16(mul_u8_i8_pairs(lo[j], load_i8(&q8[2 * j])), s_lo[j]),
                    madd_i16(mul_u8_i8_pairs(hi[j], load_i8(&q8[2 * j + 1])), s_hi[j]),
                );
            }
            // Each below 2^24 (see the portable kernel), so exact in f32.
            let per64i = hsum_i32_4(v);
            let per64 = per64i.map(|v| v as f32);
            let mut mins64 = [0i32; 4];
            for (j, m) in mins64.iter_mut().enumerate() {
                let bs_lo = bsums[4 * j] + bsums[4 * j + 1];
                let bs_hi = bsums[4 * j + 2] + bsums[4 * j + 3];
                *m = i32::from(b.mins[2 * j]) * bs_lo + i32::from(b.mins[2 * j + 1]) * bs_hi;
            }
            let scale = b.d * da;
            let scale_min = b.dmin * da;
            match kernel {
                RowKernel::Gemm => {
                    for j in 0..4 {
                        acc[t] = per64[j].mul_add(scale, acc[t]);
                        acc_min[t] = (mins64[j] as f32).mul_add(scale_min, acc_min[t]);
                    }
                }
                RowKernel::Gemv => {
                    // The super-block's integer, rounded once.
                    let total: i32 = per64i.iter().sum();
                    acc[t] = (total as f32).mul_add(scale, acc[t]);
                    acc_min[t] = (mins64.iter().sum::<i32>() as f32).mul_add(scale_min, acc_min[t]);
                }
            }
        }
    }
    for (a, m) in acc.iter_mut().zip(acc_min) {
        *a -= m;
    }
    acc
}

/// Row groups from which the AVX-512 set's eight-weight-row tiles pay for interleaving the
/// weight rows (at least four in each cache block of groups, which the interleaving is
/// repeated for). Measured on the 1.5B (`bench_batch`, `bench_infer`, 2 threads, single runs):
/// 4 decode streams (one group) 21 tok/s with them against 45 without; 16 streams (4 groups)
/// 47 with them, 51–54 without; an 88-token prompt (22 groups, 4 to a cache block on the
/// 8960-wide matrix) 97–101 tok/s when four to a block suffice, 91–94 when eight were needed.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
const TILE8_MIN_GROUPS: usize = 8;

/// Groups of four consecutive activation rows that take the same kernel,
/// block-interleaved for [`tile_gemm`] and [`tile_gemv`]: per group and
/// super-block the four rows' codes, scales and (for the mins) 32-value sums
/// laid out as `[j][row](low, high)`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
struct Tiles {
    q: Vec<[[i8; QK_K]; 4]>,
    d: Vec<[f32; 4]>,
    bsums: Vec<[i16; 32]>,
    /// Each group's first row and kernel.
    groups: Vec<(usize, RowKernel)>,
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
/// Splits rows `0..kernels.len()` into groups of four consecutive rows with the same kernel
/// (first rows, in order) and the rows left over.
fn group_rows(kernels: &[RowKernel]) -> (Vec<(usize, RowKernel)>, Vec<usize>) {
    let (mut groups, mut rest) = (Vec::new(), Vec::new());
    let mut r = 0;
    while r < kernels.len() {
        let run = kernels[r..]
            .iter()
            .take_while(|&&k| k == kernels[r])
            .count();
        let whole = run - run % 4;
        groups.extend((r..r + whole).step_by(4).map(|g| (g, kernels[r])));
        rest.extend(r + whole..r + run);
        r += run;
    }
    (groups, rest)
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
impl Tiles {
    /// The tiles and the rows they leave to the row kernels.
    fn new(acts: &Q8KRows, kernels: &[RowKernel], nb: usize) -> (Tiles, Vec<usize>) {
        let (groups, rest) = group_rows(kernels);
        let (blocks, _) = acts.q.as_chunks::<QK_K>();
        let mut tiles = Tiles {
            q: Vec::with_capacity(groups.len() * nb),
            d: Vec::with_capacity(groups.len() * nb),
            bsums: Vec::with_capacity(groups.len() * nb),
            groups,
        };
        for &(first, _) in &tiles.groups {
            for b in 0..nb {
                let ab = |t: usize| (first + t) * nb + b;
                tiles.q.push(std::array::from_fn(|t| blocks[ab(t)]));
                tiles.d.push(std::array::from_fn(|t| acts.d[ab(t)]));
                let mut bs = [0i16; 32];
                for j in 0..4 {
                    for t in 0..4 {
                        let s = &acts.bsums[ab(t) * 16..ab(t) * 16 + 16];
                        // At most 32 * 127 in magnitude.
                        bs[8 * j + 2 * t] = (s[4 * j] + s[4 * j + 1]) as i16;
                        bs[8 * j + 2 * t + 1] = (s[4 * j + 2] + s[4 * j + 3]) as i16;
                    }
                }
                tiles.bsums.push(bs);
            }
        }
        (tiles, rest)
    }

    /// The groups in cache-sized blocks.
    fn blocks(&self, nb: usize) -> impl Iterator<Item = std::ops::Range<usize>> + use<> {
        super::pool::group_blocks(self.groups.len(), nb * (4 * QK_K + 16 + 64))
    }

    /// The end of the columns of `cols` that the eight-row kernel takes, eight at a time: on
    /// a kernel set with it, and groups enough to repay interleaving the weight rows
    /// ([`interleave8`]); `cols.start` otherwise.
    fn eight_row_columns(&self, set: Kernels, cols: std::ops::Range<usize>) -> usize {
        // Interleaving eight weight rows costs several times one group's work on them: only
        // worth it for enough groups (a prompt; a decode step of many sequences).
        if !super::dispatch::q4_k_has_tile8(set) || self.groups.len() < TILE8_MIN_GROUPS {
            return cols.start;
        }
        cols.start + cols.len() / 8 * 8
    }

    /// `f(first_row, first_column, outputs)` for the groups in `range` against the weight
    /// rows in `rows8` (from [`interleave8`], eight at a time from column
    /// `first`).
    fn each8(
        &self,
        set: Kernels,
        range: std::ops::Range<usize>,
        first: usize,
        nb: usize,
        rows8: &[Rows8],
        mut f: impl FnMut(usize, usize, [[f32; 8]; 4]),
    ) {
        for (i, rows8) in rows8.chunks_exact(nb.max(1)).enumerate() {
            for g in range.clone() {
                let (row, kernel) = self.groups[g];
                let b = g * nb..(g + 1) * nb;
                if let Some(sums) = super::dispatch::q4_k_tile8(
                    set,
                    kernel == RowKernel::Gemv,
                    rows8,
                    &self.q[b.clone()],
                    &self.d[b.clone()],
                    &self.bsums[b],
                ) {
                    f(row, first + 8 * i, sums);
                }
            }
        }
    }

    /// Whether any group in `range` takes the gemm rounding.
    fn has_gemm(&self, range: std::ops::Range<usize>) -> bool {
        self.groups[range]
            .iter()
            .any(|&(_, k)| k == RowKernel::Gemm)
    }

    /// `f(first_row, outputs)` for the groups `range`, against weight row `raw` (`w`: the
    /// same row unpacked, when [`has_gemm`](Self::has_gemm)).
    fn each(
        &self,
        set: Kernels,
        range: std::ops::Range<usize>,
        raw: &[Raw],
        w: &[Block],
        nb: usize,
        mut f: impl FnMut(usize, [f32; 4]),
    ) {
        use super::dispatch::{q4_k_tile_gemm, q4_k_tile_gemv};
        let blocks = range.start * nb..range.end * nb;
        let groups = self.q[blocks.clone()]
            .chunks_exact(nb)
            .zip(self.d[blocks.clone()].chunks_exact(nb))
            .zip(self.bsums[blocks].chunks_exact(nb));
        for (&(first, kernel), ((q, d), bs)) in self.groups[range].iter().zip(groups) {
            f(
                first,
                match kernel {
                    RowKernel::Gemm => q4_k_tile_gemm(set, w, q, d, bs),
                    RowKernel::Gemv => q4_k_tile_gemv(set, raw, q, d, bs),
                },
            );
        }
    }
}

/// No eight-row kernel without AVX2 (never called: no columns are left to it).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn interleave8(_: [&[Raw]; 8], _: &mut Vec<()>) {}

/// No tiles without AVX2: every row takes the row kernels.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
struct Tiles;

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
impl Tiles {
    fn new(_: &Q8KRows, kernels: &[RowKernel], _: usize) -> (Tiles, Vec<usize>) {
        (Tiles, (0..kernels.len()).collect())
    }

    fn blocks(&self, _: usize) -> std::iter::Empty<std::ops::Range<usize>> {
        std::iter::empty()
    }

    fn has_gemm(&self, _: std::ops::Range<usize>) -> bool {
        false
    }

    fn each(
        &self,
        _: Kernels,
        _: std::ops::Range<usize>,
        _: &[Raw],
        _: &[Block],
        _: usize,
        _: impl FnMut(usize, [f32; 4]),
    ) {
    }

    fn eight_row_columns(&self, _: Kernels, cols: std::ops::Range<usize>) -> usize {
        cols.start
    }

    fn each8(
        &self,
        _: Kernels,
        _: std::ops::Range<usize>,
        _: usize,
        _: usize,
        _: &[()],
        _: impl FnMut(usize, usize, [[f32; 8]; 4]),
    ) {
    }
}

/// Per activation block, the 32-value code sums of each half of each 64-value part,
/// `[lo0, hi0, lo1, hi1, lo2, hi2, lo3, hi3]` (at most 32 * 127 each), for [`row_gemv4`].
fn pair_sums(acts: &Q8KRows) -> Vec<[i16; 8]> {
    acts.bsums
        .chunks_exact(16)
        .map(|s| std::array::from_fn(|i| (s[2 * i] + s[2 * i + 1]) as i16))
        .collect()
}

/// [`row_gemv4`] on the kernel set `set`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn row_gemv4_on(
    set: Kernels,
    w: [&[Raw]; 4],
    acts: &Q8KRows,
    a: &[i8],
    pair_sums: &[[i16; 8]],
    r: usize,
) -> [f32; 4] {
    super::dispatch::q4_k_row_gemv4(set, w, acts, a, pair_sums, r)
}

/// [`row_gemv4`]: portable builds have one kernel set.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
#[inline(always)]
fn row_gemv4_on(
    _: Kernels,
    w: [&[Raw]; 4],
    acts: &Q8KRows,
    a: &[f32],
    pair_sums: &[[i16; 8]],
    r: usize,
) -> [f32; 4] {
    row_gemv4(w, acts, a, pair_sums, r)
}

/// Without AVX2: [`dot_tile`] for each of the four weight rows.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn row_gemv4(w: [&[Raw]; 4], acts: &Q8KRows, a: &[f32], _: &[[i16; 8]], r: usize) -> [f32; 4] {
    w.map(|w| {
        let w: Vec<Block> = w.iter().map(Raw::unpack).collect();
        dot_tile::<1>(&w, acts, a, [(r, RowKernel::Gemv)])[0]
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_blocks::{Rng, random_q4_k};
    use super::*;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    use crate::model::kernels::q4_k_tiles::row_gemv4;

    /// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j`.
    fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    /// The scales and mins unpacked four at a time are ggml's, one by one, for any bytes.
    #[test]
    fn scales_and_mins_unpack_as_ggml_does() {
        let mut rng = Rng(5);
        for _ in 0..2000 {
            let mut bytes = [0u8; 144];
            bytes.fill_with(|| rng.byte());
            // Finite scales, as every model's are (no infinity or NaN exponent).
            for hi in [1, 3] {
                if bytes[hi] & 0x7c == 0x7c {
                    bytes[hi] &= !0x40;
                }
            }
            let raw: Raw = bytemuck::pod_read_unaligned(&bytes);
            let (scales, mins) = raw.scales_mins();
            for j in 0..8 {
                assert_eq!(
                    (scales[j], mins[j]),
                    scale_min_k4(j, &bytes[4..16]),
                    "{bytes:?}"
                );
            }
            let block = raw.unpack();
            let half = |i: usize| {
                crate::model::f16::f16_to_f32(u16::from_le_bytes([bytes[i], bytes[i + 1]]))
            };
            assert_eq!(
                (block.d.to_bits(), block.dmin.to_bits()),
                (half(0).to_bits(), half(2).to_bits())
            );
            assert_eq!(&block.qs[..], &bytes[16..]);
        }
    }

    /// The row kernels that serve several rows at once compute, for each, exactly what the
    /// one-row kernel computes: every output bit for bit.
    #[test]
    fn multi_row_kernels_equal_the_one_row_kernel() {
        let (rows, cols, m) = (8, 768, 6);
        let mut rng = Rng(17);
        let data = random_q4_k(&mut rng, rows * cols / QK_K);
        let w = Q4KMatrix::from_blocks(&data, rows, cols).unwrap();
        let x: Vec<f32> = (0..m * cols).map(|_| 2.0 * rng.float()).collect();
        let mut acts = Q8KRows::default();
        quantize_q8_k(&x, &mut acts);
        let a = codes(&acts.q);
        let nb = cols / QK_K;
        let stored = w.weight_rows();
        let raw = |c: usize| stored.row(c);
        let unpacked: Vec<Block> = (0..w.rows)
            .flat_map(|c| stored.row(c).iter().map(Raw::unpack))
            .collect();
        let weight = |c: usize| &unpacked[c * nb..(c + 1) * nb];
        let sums = pair_sums(&acts);
        for r in 0..m {
            for c in (0..rows).step_by(4) {
                let four = row_gemv4(std::array::from_fn(|t| raw(c + t)), &acts, &a, &sums, r);
                for (t, got) in four.iter().enumerate() {
                    let want = dot_tile::<1>(weight(c + t), &acts, &a, [(r, RowKernel::Gemv)])[0];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "row {r}, weight row {}",
                        c + t
                    );
                }
            }
            for kernel in [RowKernel::Gemv, RowKernel::Gemm] {
                let rows4: [usize; 4] = std::array::from_fn(|t| (r + t) % m);
                let tile = dot_tile::<4>(weight(1), &acts, &a, rows4.map(|r| (r, kernel)));
                for (t, &rr) in rows4.iter().enumerate() {
                    let want = dot_tile::<1>(weight(1), &acts, &a, [(rr, kernel)])[0];
                    assert_eq!(tile[t].to_bits(), want.to_bits(), "{kernel:?} row {rr}");
                }
            }
        }
    }

    /// Decode rows (one activation row, the gemv rounding, four weight rows a call) on every
    /// kernel set this CPU runs, one thread: every set gives the AVX2 set's bits, on rows of a
    /// 1.5B model's width (1536: six super-blocks).
    ///
    /// With `RBEE_KERNEL_BENCH_ROUNDS=N` it also times them, best of N alternating rounds, on
    /// 1024 weight rows (1.3 MiB, in cache after the first round) and on 65536 (85 MiB, read
    /// from memory each round), and prints the weight bytes per second: what one thread's decode
    /// could read if memory were no limit, beside what it reads when it is (docs/BENCHMARKS.md:
    /// `RBEE_KERNEL_BENCH_ROUNDS=5 cargo test --release -p rbee-infer --lib
    /// decode_rows_on_every_set -- --nocapture`).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[test]
    fn decode_rows_on_every_set() {
        use crate::model::kernels::dispatch::{KernelSet, Kernels};
        let cols = 1536;
        let nb = cols / QK_K;
        let mut rng = Rng(41);
        let x: Vec<f32> = (0..cols).map(|_| 2.0 * rng.float()).collect();
        let mut acts = Q8KRows::default();
        quantize_q8_k(&x, &mut acts);
        let a = codes(&acts.q);
        let sums = pair_sums(&acts);
        let sets: Vec<Kernels> = KernelSet::ALL
            .into_iter()
            .filter_map(|s| Kernels::new(s).ok())
            .collect();
        let avx2 = Kernels::new(KernelSet::Avx2).unwrap();
        let run = |set: Kernels, w: &Q4KMatrix| -> Vec<f32> {
            let rows = w.weight_rows();
            (0..w.rows)
                .step_by(4)
                .flat_map(|c| {
                    row_gemv4_on(
                        set,
                        std::array::from_fn(|t| rows.row(c + t)),
                        &acts,
                        &a,
                        &sums,
                        0,
                    )
                })
                .collect()
        };
        let small = Q4KMatrix::from_blocks(&random_q4_k(&mut rng, 1024 * nb), 1024, cols).unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let want = bits(run(avx2, &small));
        for &set in &sets {
            assert!(
                bits(run(set, &small)) == want,
                "{} differs from avx2",
                set.set().name()
            );
        }
        let rounds: usize = std::env::var("RBEE_KERNEL_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if rounds == 0 {
            return;
        }
        let large =
            Q4KMatrix::from_blocks(&random_q4_k(&mut rng, 65536 * nb), 65536, cols).unwrap();
        let mut best = vec![[f64::INFINITY; 2]; sets.len()];
        for _ in 0..rounds {
            for (i, &set) in sets.iter().enumerate() {
                for (j, w) in [&small, &large].into_iter().enumerate() {
                    // The small matrix 32 times a round, so that its time is not one call's.
                    let times = if j == 0 { 32 } else { 1 };
                    let started = std::time::Instant::now();
                    for _ in 0..times {
                        std::hint::black_box(run(set, w));
                    }
                    let secs = started.elapsed().as_secs_f64() / times as f64;
                    best[i][j] = best[i][j].min(secs / w.bytes() as f64);
                }
            }
        }
        for (set, b) in sets.iter().zip(&best) {
            println!(
                "q4_k decode rows, {}, one thread: {:.1} GB/s in cache, {:.1} GB/s from memory",
                set.set().name(),
                1e-9 / b[0],
                1e-9 / b[1]
            );
        }
    }
}
