//! The loaded Q6_K super-block and the AVX2 Q6_K tile kernels' bodies ([`super::q6_k`]
//! explains the arithmetic): each body written once over its integer steps, instantiated for
//! AVX2 here and for the VNNI sets in `vnni`, and called through `dispatch`, which picks the
//! set. They sit below both the matrix code and the dispatch, so neither depends on the
//! other through them.

use super::quantize::QK_K;

/// One Q6_K super-block as the prompt kernels read it: its scale, its sixteen sub-block scales
/// and its codes, one byte each (276 bytes; [`Packed`] is how a matrix stores it).
#[derive(Debug, Clone, Copy, bytemuck::Zeroable)]
pub(crate) struct Block {
    pub(crate) d: f32,
    pub(crate) scales: [i8; 16],
    /// Unsigned codes 0..=63 (value = d * scale * (code - 32)), permuted
    /// within each 32-value chunk as in `q8_0`: position `i` at
    /// `(i % 4) * 8 + i / 4`, so each lane's four codes line up.
    pub(crate) codes: [u8; QK_K],
}

/// One Q6_K super-block as a matrix stores it: [`Block`] with its 6-bit codes packed again
/// (212 bytes, ggml's 210 with the scale as f32). A decode row reads every weight byte once per
/// token, so its speed is the bytes: one byte a code made the Q6_K tensors 31% larger than the
/// file. The decode row kernel unpacks in registers ([`chunks`]); the prompt kernels, which use
/// each block for many rows, take it unpacked ([`Packed::unpack_into`]) once per weight row.
#[derive(Debug, Clone, Copy, bytemuck::Zeroable)]
pub(crate) struct Packed {
    pub(crate) d: f32,
    pub(crate) scales: [i8; 16],
    /// The codes' (in [`Block::codes`]' order) low four bits: byte `i` holds code `i` in its low
    /// nibble and code `i + 128` in its high one.
    low: [u8; 128],
    /// Their high two bits: byte `i` holds those of code `i + 64 s` at bits `2s..2s + 2`.
    high: [u8; 64],
}

impl Packed {
    pub(crate) fn pack(b: &Block) -> Packed {
        let c = &b.codes;
        Packed {
            d: b.d,
            scales: b.scales,
            low: std::array::from_fn(|i| (c[i] & 0x0f) | (c[i + 128] & 0x0f) << 4),
            high: std::array::from_fn(|i| {
                (0..4).fold(0, |h, s| h | ((c[i + 64 * s] >> 4) & 3) << (2 * s))
            }),
        }
    }

    /// Code `k` (0..=63), in [`Block::codes`]' order.
    pub(crate) fn code(&self, k: usize) -> u8 {
        let low = (self.low[k % 128] >> (4 * (k / 128))) & 0x0f;
        let high = (self.high[k % 64] >> (2 * (k / 64))) & 3;
        low | high << 4
    }

    /// The block with one byte a code.
    #[cfg(test)]
    pub(crate) fn unpack(&self) -> Block {
        let mut out = bytemuck::Zeroable::zeroed();
        self.unpack_into(&mut out);
        out
    }

    /// [`unpack`](Self::unpack) into `out` (in place: no 276-byte value to move).
    pub(crate) fn unpack_into(&self, out: &mut Block) {
        out.d = self.d;
        out.scales = self.scales;
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        for (out, c) in out.codes.chunks_exact_mut(32).zip(chunks(self)) {
            out.copy_from_slice(&<[u8; 32]>::from(c));
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
        for (k, out) in out.codes.iter_mut().enumerate() {
            *out = self.code(k);
        }
    }
}

/// An AVX register of integers.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) type Int = super::avx2::m256i;

/// The eight 32-code chunks of [`Block::codes`], unpacked from `p` in registers: per pair of
/// chunks `c` and `c + 4` one load of low nibbles, one of high bits, and seven logic ops.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn chunks(p: &Packed) -> [Int; 8] {
    use super::avx2::load_u8;
    use safe_arch::{
        bitand_m256i, bitor_m256i, set_splat_i8_m256i, shl_imm_u16_m256i, shr_imm_u16_m256i,
    };
    let (low, _) = p.low.as_chunks::<32>();
    let (high, _) = p.high.as_chunks::<32>();
    let nibble = set_splat_i8_m256i(0x0f);
    let top = set_splat_i8_m256i(0x30);
    let mut out = [Int::default(); 8];
    for c in 0..4 {
        let l = load_u8(&low[c]);
        let h = load_u8(&high[c % 2]);
        // Chunk c's high bits are slot c / 2 of each byte, chunk c + 4's slot c / 2 + 2: moved
        // to bits 4..6 (16-bit shifts; what crosses a byte is masked off).
        let (h_c, h_c4) = if c < 2 {
            (shl_imm_u16_m256i::<4>(h), h)
        } else {
            (shl_imm_u16_m256i::<2>(h), shr_imm_u16_m256i::<2>(h))
        };
        out[c] = bitor_m256i(bitand_m256i(l, nibble), bitand_m256i(h_c, top));
        out[c + 4] = bitor_m256i(
            bitand_m256i(shr_imm_u16_m256i::<4>(l), nibble),
            bitand_m256i(h_c4, top),
        );
    }
    out
}

/// Byte shuffles that spread the two scales of chunk `c` over its 32
/// values (ggml's `get_scale_shuffle`): scale `2c` for the low 16, `2c + 1`
/// for the high 16, before widening to i16.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) const SCALE_SHUFFLE: [[i8; 16]; 8] = {
    let mut out = [[0i8; 16]; 8];
    let mut c = 0;
    while c < 8 {
        let mut i = 0;
        while i < 16 {
            out[c][i] = (2 * c + i / 8) as i8;
            i += 1;
        }
        c += 1;
    }
    out
};

/// Byte shuffles for [`tile_totals`]: the four scales of chunks `2p` and `2p + 1` laid out
/// as `vpackssdw` lays out their lanes (per 128 bits four lanes of chunk `2p`, then four of
/// `2p + 1`; the low 128 bits hold each chunk's first 16 values, the high its last 16), before
/// widening to i16.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
const SCALE_PAIR_SHUFFLE: [[i8; 16]; 4] = {
    let mut out = [[0i8; 16]; 4];
    let mut p = 0;
    while p < 4 {
        let mut i = 0;
        while i < 16 {
            // i / 4: chunk 2p low, chunk 2p + 1 low, chunk 2p high, chunk 2p + 1 high.
            out[p][i] = (4 * p + [0, 2, 1, 3][i / 4]) as i8;
            i += 1;
        }
        p += 1;
    }
    out
};

/// Sums of four products in i32 lanes (`vpdpbusd`: `acc` plus unsigned bytes times signed
/// bytes, four to a lane).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) trait Dot4: Fn(Int, Int, Int) -> Int + Copy {}
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
impl<F: Fn(Int, Int, Int) -> Int + Copy> Dot4 for F {}

/// Sums of two products in i32 lanes (`vpdpwssd`: `acc` plus i16 pairs times i16 pairs).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) trait Dot2: Fn(Int, Int, Int) -> Int + Copy {}
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
impl<F: Fn(Int, Int, Int) -> Int + Copy> Dot2 for F {}

/// Lanes of one super-block `b` times each of four interleaved rows whose totals are what
/// [`tile_lanes`]' lanes total (not lane by lane, so only for [`tile_tiled_with`]), with the
/// VNNI dot products: per 32-value chunk one `vpdpbusd` (codes times activation codes, four
/// to a lane: at most 4 · 63 · 127, exact in i16), two chunks packed to i16 (`vpackssdw`),
/// and one `vpdpwssd` by their four scales into the row's lanes, which start at minus the
/// code offsets. Per two chunks and row: two `vpdpbusd`, a pack and a `vpdpwssd` (which LLVM,
/// tuning for no particular x86-64, emits as `vpmaddwd` + `vpaddd`) where ggml's steps take
/// four multiplies and two adds.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn tile_totals(
    dot4: impl Dot4,
    dot2: impl Dot2,
    b: &Block,
    aq: &[[i8; QK_K]; 4],
    bs: &[[i16; 16]; 4],
) -> [Int; 4] {
    use super::avx2::{load_i8, load_u8, m256i, madd_i16, sub_i32_m256i};
    use safe_arch::{
        convert_to_i16_m256i_from_i8_m128i, m128i, pack_i32_to_i16_m256i, shl_imm_u32_m256i,
        shuffle_av_i8z_all_m128i,
    };
    let (codes, _) = b.codes.as_chunks::<32>();
    let a: [&[[i8; 32]]; 4] = std::array::from_fn(|t| aq[t].as_chunks::<32>().0);
    let scales = m128i::from(b.scales);
    let wide = convert_to_i16_m256i_from_i8_m128i(scales);
    // As in tile_lanes: lanes start at minus the code offsets.
    let mut sums: [m256i; 4] = std::array::from_fn(|t| {
        sub_i32_m256i(
            m256i::default(),
            shl_imm_u32_m256i::<5>(madd_i16(m256i::from(bs[t]), wide)),
        )
    });
    for p in 0..4 {
        let sc = convert_to_i16_m256i_from_i8_m128i(shuffle_av_i8z_all_m128i(
            scales,
            m128i::from(SCALE_PAIR_SHUFFLE[p]),
        ));
        let (q0, q1) = (load_u8(&codes[2 * p]), load_u8(&codes[2 * p + 1]));
        for (sum, a) in sums.iter_mut().zip(&a) {
            let v0 = dot4(m256i::default(), q0, load_i8(&a[2 * p]));
            let v1 = dot4(m256i::default(), q1, load_i8(&a[2 * p + 1]));
            *sum = dot2(*sum, pack_i32_to_i16_m256i(v0, v1), sc);
        }
    }
    sums
}

/// The eight integer lanes of one super-block `b` times each of four interleaved rows
/// (`aq`, with 16-value sums `bs`): per 32-value chunk `vpmaddubsw` (codes times activation
/// codes) and `vpmaddwd` (times the chunk's two scales), minus the code offsets from one
/// `vpmaddwd` of the sums — what `dot_tile` computes per row.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn tile_lanes(b: &Block, aq: &[[i8; QK_K]; 4], bs: &[[i16; 16]; 4]) -> [Int; 4] {
    use super::avx2::{
        add_i32_m256i, load_i8, load_u8, m256i, madd_i16, mul_u8_i8_pairs, sub_i32_m256i,
    };
    use safe_arch::{
        convert_to_i16_m256i_from_i8_m128i, m128i, shl_imm_u32_m256i, shuffle_av_i8z_all_m128i,
    };
    let (codes, _) = b.codes.as_chunks::<32>();
    let a: [&[[i8; 32]]; 4] = std::array::from_fn(|t| aq[t].as_chunks::<32>().0);
    let scales = m128i::from(b.scales);
    let wide = convert_to_i16_m256i_from_i8_m128i(scales);
    // Lane l of row t starts at -32 * (scale[2l] * bsum[2l] + scale[2l+1] * bsum[2l+1]).
    let mut sums: [m256i; 4] = std::array::from_fn(|t| {
        sub_i32_m256i(
            m256i::default(),
            shl_imm_u32_m256i::<5>(madd_i16(m256i::from(bs[t]), wide)),
        )
    });
    for (c, q) in codes.iter().enumerate() {
        let sc = convert_to_i16_m256i_from_i8_m128i(shuffle_av_i8z_all_m128i(
            scales,
            m128i::from(SCALE_SHUFFLE[c]),
        ));
        let q = load_u8(q);
        for (sum, a) in sums.iter_mut().zip(&a) {
            *sum = add_i32_m256i(*sum, madd_i16(mul_u8_i8_pairs(q, load_i8(&a[c])), sc));
        }
    }
    sums
}

/// One weight row times a group of four rows with the tiled kernel's
/// arithmetic (`dot_tile` with `tiled`): per super-block and row the exact
/// integer `isum` (lanes of `vpmaddubsw` + `vpmaddwd`, minus the code
/// offsets from one `vpmaddwd` of the 16-value sums), then
/// `fma(d_w * isum, d_a, acc)` on four lanes at once.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
pub(crate) fn tile_tiled(
    w: &[Block],
    tq: &[[[i8; QK_K]; 4]],
    td: &[[f32; 4]],
    tb: &[[[i16; 16]; 4]],
) -> [f32; 4] {
    tile_tiled_with(tile_lanes, w, tq, td, tb)
}

/// Lanes of one super-block times four interleaved rows whose totals are the rows' exact
/// integers ([`tile_lanes`], or [`tile_totals`]): only totals reach [`tile_tiled_with`]'s
/// float steps.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) trait BlockLanes:
    Fn(&Block, &[[i8; QK_K]; 4], &[[i16; 16]; 4]) -> [Int; 4] + Copy
{
}
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
impl<F: Fn(&Block, &[[i8; QK_K]; 4], &[[i16; 16]; 4]) -> [Int; 4] + Copy> BlockLanes for F {}

/// [`tile_tiled`] with the block's integer lanes from `lanes`: inlined into each instruction
/// set's kernel.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn tile_tiled_with(
    lanes: impl BlockLanes,
    w: &[Block],
    tq: &[[[i8; QK_K]; 4]],
    td: &[[f32; 4]],
    tb: &[[[i16; 16]; 4]],
) -> [f32; 4] {
    use super::avx2::hsum_i32_4_f32;
    use safe_arch::{
        fused_mul_add_m128, load_unaligned_m128, mul_m128, set_splat_m128, zeroed_m128,
    };
    let mut acc = zeroed_m128();
    for (((b, aq), ad), bs) in w.iter().zip(tq).zip(td).zip(tb) {
        let isum = hsum_i32_4_f32(lanes(b, aq, bs));
        let dw_isum = mul_m128(set_splat_m128(b.d), isum);
        acc = fused_mul_add_m128(dw_isum, load_unaligned_m128(ad), acc);
    }
    acc.into()
}

/// One weight row times a group of four rows with vec_dot's arithmetic (`dot_tile`
/// without `tiled`): per super-block and row the eight integer lanes (as in [`tile_tiled`]),
/// each rounded once and added with one FMA by `d_a * d_w`; the caller sums each row's eight
/// accumulators with `hsum8`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
pub(crate) fn tile_vec_dot(
    w: &[Block],
    tq: &[[[i8; QK_K]; 4]],
    td: &[[f32; 4]],
    tb: &[[[i16; 16]; 4]],
) -> [[f32; 8]; 4] {
    tile_vec_dot_inlined(w, tq, td, tb)
}

/// [`tile_vec_dot`], inlined: into the AVX-512 set's copy (`super::vnni`), whose 32 vector
/// registers hold the four rows' accumulators and lanes that the AVX2 encoding's 16 spill.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn tile_vec_dot_inlined(
    w: &[Block],
    tq: &[[[i8; QK_K]; 4]],
    td: &[[f32; 4]],
    tb: &[[[i16; 16]; 4]],
) -> [[f32; 8]; 4] {
    use super::avx2::{fused_mul_add_m256, m256, set_splat_m256, to_f32, zeroed_m256};
    let mut acc: [m256; 4] = [zeroed_m256(); 4];
    for (((b, aq), ad), bs) in w.iter().zip(tq).zip(td).zip(tb) {
        let sums = tile_lanes(b, aq, bs);
        for t in 0..4 {
            let d = set_splat_m256(ad[t] * b.d);
            acc[t] = fused_mul_add_m256(d, to_f32(sums[t]), acc[t]);
        }
    }
    acc.map(|a| a.to_array())
}
