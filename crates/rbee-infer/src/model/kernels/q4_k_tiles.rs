//! The loaded Q4_K super-block and the AVX2 Q4_K kernels' bodies ([`super::q4_k`] explains
//! the arithmetic): each body written once over its integer step (`*_with`), instantiated for
//! AVX2 here and for the VNNI sets in `vnni`, and called through `dispatch`, which picks the
//! set. They sit below both the matrix code and the dispatch, so neither depends on the
//! other through them.

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
use super::quantize::{Q8KRows, QK_K};

/// One Q4_K super-block with its 6-bit scales and mins unpacked, as the prompt kernels read it
/// ([`Raw`] is how a matrix stores it).
#[derive(Debug, Clone, Copy, bytemuck::Zeroable)]
pub(crate) struct Block {
    pub(crate) d: f32,
    pub(crate) dmin: f32,
    pub(crate) scales: [u8; 8],
    pub(crate) mins: [u8; 8],
    pub(crate) qs: [u8; 128],
}

/// One Q4_K super-block as ggml writes it, and as a matrix keeps it (144 bytes): its scale and
/// min scale as f16, the sub-blocks' 6-bit scales and mins packed in 12 bytes, the codes. A
/// decode row reads every byte once per token, so it reads these (unpacking the scales in
/// registers, [`Raw::scales_mins`]); the prompt kernels, which use each block for many rows,
/// take each weight row unpacked once ([`Raw::unpack`]).
#[derive(Debug, Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(C)]
pub(crate) struct Raw {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: [u8; 12],
    pub(crate) qs: [u8; 128],
}

impl Raw {
    /// The scale and the min scale (exact conversions from f16).
    #[inline(always)]
    pub(crate) fn d_dmin(&self) -> (f32, f32) {
        // `half` converts with the F16C instruction where the build has it (as x86-64 builds
        // do): a decode row converts two per super-block.
        let f32_of = |h: [u8; 2]| half::f16::from_le_bytes(h).to_f32();
        (f32_of(self.d), f32_of(self.dmin))
    }

    /// The eight sub-blocks' scales and mins (ggml's `get_scale_min_k4`, four at a time): bytes
    /// 0..4 hold scales 0..4 and bytes 4..8 mins 0..4 in their low six bits, whose top two
    /// bits are those of scales and mins 4..8, whose low four bits bytes 8..12 hold.
    #[inline(always)]
    pub(crate) fn scales_mins(&self) -> ([u8; 8], [u8; 8]) {
        let word = |i: usize| u32::from_le_bytes(std::array::from_fn(|k| self.scales[4 * i + k]));
        let (a, b, c) = (word(0), word(1), word(2));
        let low6 = 0x3f3f_3f3f;
        let (nibble, top2) = (0x0f0f_0f0f, 0x0303_0303);
        let scales_hi = (c & nibble) | ((a >> 6) & top2) << 4;
        let mins_hi = ((c >> 4) & nibble) | ((b >> 6) & top2) << 4;
        let bytes = |lo: u32, hi: u32| (u64::from(lo) | u64::from(hi) << 32).to_le_bytes();
        (bytes(a & low6, scales_hi), bytes(b & low6, mins_hi))
    }

    /// The block with its scales and mins unpacked.
    pub(crate) fn unpack(&self) -> Block {
        let mut out = bytemuck::Zeroable::zeroed();
        self.unpack_into(&mut out);
        out
    }

    /// [`unpack`](Self::unpack) into `out` (in place).
    pub(crate) fn unpack_into(&self, out: &mut Block) {
        (out.scales, out.mins) = self.scales_mins();
        (out.d, out.dmin) = self.d_dmin();
        out.qs = self.qs;
    }
}

/// One weight row times a group of four gemm rows: `dot_tile`'s
/// arithmetic for `RowKernel::Gemm`, with the float steps of the four rows
/// side by side in one register (each lane the same operations in the same
/// order as the scalar code).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
pub(crate) fn tile_gemm(
    w: &[Block],
    tq: &[[[i8; QK_K]; 4]],
    td: &[[f32; 4]],
    tb: &[[i16; 32]],
) -> [f32; 4] {
    tile_gemm_with(
        |qs, scales, a| parts_by_steps(super::avx2::q4_step, qs, scales, a),
        w,
        tq,
        td,
        tb,
    )
}

/// The four rows' exact integers over each 64-value part `j` of super-block `b` (element j,
/// lane t: row t's `sum(scale * code * a)` over values 64j..64j+64), from the rows' activation
/// codes: by [`Step`]s ([`parts_by_steps`]) or, on AVX-512, in 512-bit registers (`vnni`).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) trait Parts:
    Fn(&[u8; 128], [u8; 8], [&[i8; QK_K]; 4]) -> [safe_arch::m128i; 4] + Copy
{
}
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
impl<F: Fn(&[u8; 128], [u8; 8], [&[i8; QK_K]; 4]) -> [safe_arch::m128i; 4] + Copy> Parts for F {}

/// [`Parts`] by one integer step per row and part, and a horizontal sum of the four rows.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn parts_by_steps(
    step: impl Step,
    qs: &[u8; 128],
    scales: [u8; 8],
    a: [&[i8; QK_K]; 4],
) -> [safe_arch::m128i; 4] {
    use super::avx2::{hsum_i32_4, load_i8, load_u8, nibbles};
    let (qs, _) = qs.as_chunks::<32>();
    let a: [&[[i8; 32]]; 4] = [
        a[0].as_chunks::<32>().0,
        a[1].as_chunks::<32>().0,
        a[2].as_chunks::<32>().0,
        a[3].as_chunks::<32>().0,
    ];
    let mut out = [safe_arch::m128i::default(); 4];
    for (j, out) in out.iter_mut().enumerate() {
        let (lo, hi) = nibbles(load_u8(&qs[j]));
        let (s_lo, s_hi) = (splat(scales[2 * j]), splat(scales[2 * j + 1]));
        let mut v = [Int::default(); 4];
        for (t, v) in v.iter_mut().enumerate() {
            *v = step(
                Int::default(),
                (lo, load_i8(&a[t][2 * j]), s_lo),
                (hi, load_i8(&a[t][2 * j + 1]), s_hi),
            );
        }
        *out = safe_arch::m128i::from(hsum_i32_4(v));
    }
    out
}

/// The integer step of the Q4_K kernels ([`super::avx2::q4_step`]'s signature): ggml's, or a
/// VNNI one that computes the same total.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) trait Step: Fn(Int, (Int, Int, Int), (Int, Int, Int)) -> Int + Copy {}
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
impl<F: Fn(Int, (Int, Int, Int), (Int, Int, Int)) -> Int + Copy> Step for F {}

/// Sub-block `k`'s scale in every i16 lane of a register, from all eight in each half.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn scale(scales: Int, k: usize) -> Int {
    safe_arch::shuffle_av_i8z_half_m256i(scales, Int::from(SCALE_SHUFFLE[k]))
}

/// Byte shuffles for [`scale`]: i16 `k` of each 128-bit half into all eight of its lanes.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
const SCALE_SHUFFLE: [[i8; 32]; 8] = {
    let mut out = [[0i8; 32]; 8];
    let mut k = 0;
    while k < 8 {
        let mut i = 0;
        while i < 32 {
            out[k][i] = (2 * k + i % 2) as i8;
            i += 1;
        }
        k += 1;
    }
    out
};

/// Scale `s` in every i16 lane.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn splat(s: u8) -> Int {
    super::avx2::splat_i16(i16::from(s))
}

/// The eight scales of `scales` as i16, in both 128-bit halves of a register.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn scales_i16(scales: [u8; 8]) -> Int {
    use safe_arch::{convert_to_u16_m128i_from_lower8_u8_m128i, set_i64_m128i, set_m128i_m256i};
    let s = convert_to_u16_m128i_from_lower8_u8_m128i(set_i64_m128i(0, i64::from_le_bytes(scales)));
    set_m128i_m256i(s, s)
}

/// An AVX register of integers.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) type Int = super::avx2::m256i;

/// [`tile_gemm`] with the integers of each 64-value part from `part`: inlined into each
/// instruction set's kernel.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn tile_gemm_with(
    parts: impl Parts,
    w: &[Block],
    tq: &[[[i8; QK_K]; 4]],
    td: &[[f32; 4]],
    tb: &[[i16; 32]],
) -> [f32; 4] {
    use super::avx2::to_f32;
    use safe_arch::{
        cast_to_m128_from_m256, convert_to_m128_from_i32_m128i, extract_m128_from_m256,
        fused_mul_add_m128, load_unaligned_m128, mul_m128, set_splat_m128, sub_m128, zeroed_m128,
    };
    let mut acc = zeroed_m128();
    let mut acc_min = zeroed_m128();
    for (((b, aq), ad), bs) in w.iter().zip(tq).zip(td).zip(tb) {
        // Lane t: row t's integer over values 64j..64j+64 (below 2^24: exact in f32).
        let p = parts(&b.qs, b.scales, [&aq[0], &aq[1], &aq[2], &aq[3]]);
        let per64 = [p[0], p[1], p[2], p[3]].map(convert_to_m128_from_i32_m128i);
        let (m01, m23) = tile_mins(&b.mins, bs);
        let (m01, m23) = (to_f32(m01), to_f32(m23));
        let mins64 = [
            cast_to_m128_from_m256(m01),
            extract_m128_from_m256::<1>(m01),
            cast_to_m128_from_m256(m23),
            extract_m128_from_m256::<1>(m23),
        ];
        let da = load_unaligned_m128(ad);
        let scale = mul_m128(set_splat_m128(b.d), da);
        let scale_min = mul_m128(set_splat_m128(b.dmin), da);
        for j in 0..4 {
            acc = fused_mul_add_m128(per64[j], scale, acc);
            acc_min = fused_mul_add_m128(mins64[j], scale_min, acc_min);
        }
    }
    sub_m128(acc, acc_min).into()
}

/// The mins term of super-block `b` for four interleaved rows (`bs`: their 32-value sums as
/// `[j][row](low, high)`): lanes `[j][row]` of `min[2j] * bsum_lo + min[2j+1] * bsum_hi`,
/// exact, for j = 0, 1 and for j = 2, 3.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn tile_mins(mins: &[u8; 8], bs: &[i16; 32]) -> (super::avx2::m256i, super::avx2::m256i) {
    use super::avx2::{m256i, madd_i16};
    use safe_arch::{
        convert_to_u16_m128i_from_lower8_u8_m128i, set_i64_m128i, set_m128i_m256i,
        shuffle_av_i32_all_m256i,
    };
    // The mins as i16, so each i32 lane is a pair (min 2j, min 2j + 1): lane j, both halves.
    let m = convert_to_u16_m128i_from_lower8_u8_m128i(set_i64_m128i(0, i64::from_le_bytes(*mins)));
    let m = set_m128i_m256i(m, m);
    // Pair j for each of the four rows: j = 0, 1 in the first register, 2, 3 in the second.
    let pairs =
        |j: i32| shuffle_av_i32_all_m256i(m, m256i::from([j, j, j, j, j + 1, j + 1, j + 1, j + 1]));
    let (bs, _) = bs.as_chunks::<16>();
    (
        madd_i16(m256i::from(bs[0]), pairs(0)),
        madd_i16(m256i::from(bs[1]), pairs(2)),
    )
}

/// One weight row times a group of four gemv rows: `dot_tile`'s arithmetic
/// for `RowKernel::Gemv` (per super-block one exact integer for the scaled
/// products and one for the mins, each rounded once), with the four rows'
/// integer and float steps side by side (each lane the scalar code's
/// operations in its order).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
pub(crate) fn tile_gemv(
    w: &[Raw],
    tq: &[[[i8; QK_K]; 4]],
    td: &[[f32; 4]],
    tb: &[[i16; 32]],
) -> [f32; 4] {
    tile_gemv_with(super::avx2::q4_step, w, tq, td, tb)
}

/// [`tile_gemv`] with the integer step `step` (see [`tile_gemm_with`]).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn tile_gemv_with(
    step: impl Step,
    w: &[Raw],
    tq: &[[[i8; QK_K]; 4]],
    td: &[[f32; 4]],
    tb: &[[i16; 32]],
) -> [f32; 4] {
    use super::avx2::{add_i32_m256i, hsum_i32_4, load_i8, load_u8, m256i, nibbles};
    use safe_arch::{
        add_i32_m128i, cast_to_m128i_from_m256i, convert_to_m128_from_i32_m128i,
        extract_m128i_from_m256i, fused_mul_add_m128, load_unaligned_m128, m128i, mul_m128,
        set_splat_m128, sub_m128, zeroed_m128,
    };
    let mut acc = zeroed_m128();
    let mut acc_min = zeroed_m128();
    for (((b, aq), ad), bs) in w.iter().zip(tq).zip(td).zip(tb) {
        let (qs, _) = b.qs.as_chunks::<32>();
        let a: [&[[i8; 32]]; 4] = std::array::from_fn(|t| aq[t].as_chunks::<32>().0);
        // Row t's lanes over the whole super-block (each 64-value part below 2^24, the
        // total below 2^26: exact in i32).
        // Read from the stored block (a decode step's few groups would not pay for unpacking
        // each weight row first, as the prompt tiles do).
        let (scales, mins) = b.scales_mins();
        let scales = scales_i16(scales);
        let mut v = [m256i::default(); 4];
        for j in 0..4 {
            let (lo, hi) = nibbles(load_u8(&qs[j]));
            let (s_lo, s_hi) = (scale(scales, 2 * j), scale(scales, 2 * j + 1));
            for (t, v) in v.iter_mut().enumerate() {
                *v = step(
                    *v,
                    (lo, load_i8(&a[t][2 * j]), s_lo),
                    (hi, load_i8(&a[t][2 * j + 1]), s_hi),
                );
            }
        }
        let total = convert_to_m128_from_i32_m128i(m128i::from(hsum_i32_4(v)));
        // Lanes [j][row]: the four rows' mins over the super-block, summed over j.
        let (m01, m23) = tile_mins(&mins, bs);
        let m = add_i32_m256i(m01, m23);
        let min_total = convert_to_m128_from_i32_m128i(add_i32_m128i(
            cast_to_m128i_from_m256i(m),
            extract_m128i_from_m256i::<1>(m),
        ));
        let da = load_unaligned_m128(ad);
        let (d, dmin) = b.d_dmin();
        let scale = mul_m128(set_splat_m128(d), da);
        let scale_min = mul_m128(set_splat_m128(dmin), da);
        acc = fused_mul_add_m128(total, scale, acc);
        acc_min = fused_mul_add_m128(min_total, scale_min, acc_min);
    }
    sub_m128(acc, acc_min).into()
}

/// One activation row (`r`) times four weight rows with the gemv arithmetic: `dot_tile`'s
/// `RowKernel::Gemv` per weight row (one exact integer per super-block for the products and
/// one for the mins, each rounded once, then one FMA each into the row's accumulators).
///
/// The rows are walked one after the other, each from its first super-block to its last, so
/// the weights stream through memory in order: a decode row reads every weight once, and four
/// rows interleaved block by block (as this kernel did) are four short streams the hardware
/// prefetchers follow badly: on the AMD EPYC VM that ran decode at a third of llama.cpp's
/// speed. Every output is its own row's operations in their order, so the order of the rows
/// changes nothing.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
pub(crate) fn row_gemv4(
    w: [&[Raw]; 4],
    acts: &Q8KRows,
    a: &[i8],
    pair_sums: &[[i16; 8]],
    r: usize,
) -> [f32; 4] {
    row_gemv4_with(super::avx2::q4_step, w, acts, a, pair_sums, r)
}

/// [`row_gemv4`] with the integer step `step` (see [`tile_gemm_with`]).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn row_gemv4_with(
    step: impl Step,
    w: [&[Raw]; 4],
    acts: &Q8KRows,
    a: &[i8],
    pair_sums: &[[i16; 8]],
    r: usize,
) -> [f32; 4] {
    use super::avx2::{hsum_i32, hsum_i32_m128i, load_i8, load_u8, m256i, nibbles};
    use safe_arch::{
        convert_to_u16_m128i_from_lower8_u8_m128i, m128i, mul_i16_horizontal_add_m128i,
        set_i64_m128i,
    };
    let nb = w[0].len();
    let (a, _) = a.as_chunks::<32>();
    let a = &a[r * nb * 8..(r + 1) * nb * 8];
    let (ad, bsp) = (
        &acts.d[r * nb..(r + 1) * nb],
        &pair_sums[r * nb..(r + 1) * nb],
    );
    // A loop, not `map`: a closure would not inherit the VNNI sets' target features.
    let mut out = [0f32; 4];
    for (out, w) in out.iter_mut().zip(w) {
        let (mut acc, mut acc_min) = (0f32, 0f32);
        for ((b, q8), (&da, sums)) in w.iter().zip(a.chunks_exact(8)).zip(ad.iter().zip(bsp)) {
            let (qs, _) = b.qs.as_chunks::<32>();
            let (scales, mins) = b.scales_mins();
            let scales = scales_i16(scales);
            let mut v = m256i::default();
            for j in 0..4 {
                let (lo, hi) = nibbles(load_u8(&qs[j]));
                v = step(
                    v,
                    (lo, load_i8(&q8[2 * j]), scale(scales, 2 * j)),
                    (hi, load_i8(&q8[2 * j + 1]), scale(scales, 2 * j + 1)),
                );
            }
            // The super-block's products and its mins against the pair sums: exact integers.
            let total = hsum_i32(v);
            let mins = convert_to_u16_m128i_from_lower8_u8_m128i(set_i64_m128i(
                0,
                i64::from_le_bytes(mins),
            ));
            let min_total = hsum_i32_m128i(mul_i16_horizontal_add_m128i(mins, m128i::from(*sums)));
            let (d, dmin) = b.d_dmin();
            acc = (total as f32).mul_add(d * da, acc);
            acc_min = (min_total as f32).mul_add(dmin * da, acc_min);
        }
        *out = acc - acc_min;
    }
    out
}

/// Eight weight rows' super-blocks at one position, interleaved for the AVX-512 prompt kernel
/// that computes eight weight rows times four activation rows with every lane its own weight
/// row (no horizontal sums): 64-byte register `q[g]` holds values `8g..8g + 8` of the eight
/// rows, row `i` in bytes `8i..8i + 8` (so 32-bit lanes `2i` and `2i + 1` are its two groups
/// of four); `scales[k]` the sub-block scales in the same lanes; `mins[k]` the sub-block mins,
/// lane `i` row `i`; `d`, `dmin` the rows' scales.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[derive(Debug, Clone, Copy, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Rows8 {
    pub(crate) q: [[u64; 8]; 32],
    pub(crate) scales: [[i32; 16]; 8],
    pub(crate) mins: [[i32; 8]; 8],
    pub(crate) d: [f32; 8],
    pub(crate) dmin: [f32; 8],
}

/// Weight rows `rows` (eight, `nb` super-blocks each), interleaved onto the end of `into`.
///
/// One row after the other, each in memory order: the eight rows lie one after another in
/// the matrix, so the weights are read as one stream (a prompt's matmul reads them from memory
/// here, once); reading the eight rows' blocks side by side stalled on memory.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) fn interleave8(rows: [&[Raw]; 8], into: &mut Vec<Rows8>) {
    use super::avx2::{load_u8, nibbles};
    let nb = rows[0].len();
    let base = into.len();
    into.resize(base + nb, bytemuck::Zeroable::zeroed());
    let into = &mut into[base..];
    for (i, row) in rows.iter().enumerate() {
        for (raw, out) in row.iter().zip(into.iter_mut()) {
            let b = raw.unpack();
            // The row's 256 codes in value order: per 64 values, 32 low nibbles then 32 high;
            // group `g` of eight values into `q[g]`.
            let (qs, _) = b.qs.as_chunks::<32>();
            for (j, qs) in qs.iter().enumerate() {
                let (lo, hi) = nibbles(load_u8(qs));
                for (half, codes) in [lo, hi].into_iter().enumerate() {
                    let codes: [u64; 4] = bytemuck::cast(<[u8; 32]>::from(codes));
                    for (k, &c) in codes.iter().enumerate() {
                        out.q[8 * j + 4 * half + k][i] = c;
                    }
                }
            }
            for k in 0..8 {
                out.scales[k][2 * i] = i32::from(b.scales[k]);
                out.scales[k][2 * i + 1] = i32::from(b.scales[k]);
                out.mins[k][i] = i32::from(b.mins[k]);
            }
            out.d[i] = b.d;
            out.dmin[i] = b.dmin;
        }
    }
}
