//! Safe AVX2 building blocks (through `safe_arch`) for the integer parts of
//! the quantised kernels, compiled when the crate is built with AVX2 (as
//! `.cargo/config.toml` does on x86-64); other targets use the portable
//! kernels. These are ggml's own integer steps (`vpmaddubsw`, `vpmaddwd`),
//! and since integer sums are exact in any order they give exactly the
//! lanes the portable f32 formulation gives.

pub(crate) use safe_arch::m256i;
use safe_arch::{
    abs_i8_m256i, add_horizontal_i32_m256i, add_i32_m128i, bitand_m256i, cast_to_m128i_from_m256i,
    convert_to_m256_from_i32_m256i, extract_m128i_from_m256i, load_unaligned_m256i,
    mul_i16_horizontal_add_m256i, mul_u8i8_add_horizontal_saturating_m256i, set_splat_i8_m256i,
    set_splat_i16_m256i, shr_imm_u16_m256i, sign_apply_i8_m256i,
};
pub(crate) use safe_arch::{
    add_i32_m256i, fused_mul_add_m256, m256, set_splat_m256, sub_i32_m256i, zeroed_m256,
};

#[inline(always)]
pub(crate) fn load_i8(b: &[i8; 32]) -> m256i {
    load_unaligned_m256i(b)
}

#[inline(always)]
pub(crate) fn load_u8(b: &[u8; 32]) -> m256i {
    m256i::from(*b)
}

/// `|w|` for [`dot_i8`], computed once per weight block.
#[inline(always)]
pub(crate) fn abs_i8(w: m256i) -> m256i {
    abs_i8_m256i(w)
}

/// ggml's `mul_sum_i8_pairs`: eight i32 lanes, lane `l` the sum of the
/// products of bytes `4l..4l + 4` of `w` and `a` (`aw` is `|w|`). Exact
/// while `|a| <= 127` (activation codes are), so no pair saturates.
#[inline(always)]
pub(crate) fn dot_i8(aw: m256i, w: m256i, a: m256i) -> m256i {
    let p16 = mul_u8i8_add_horizontal_saturating_m256i(aw, sign_apply_i8_m256i(a, w));
    mul_i16_horizontal_add_m256i(p16, set_splat_i16_m256i(1))
}

/// Unsigned codes (below 64) times signed activation codes, summed in
/// pairs to i16 (exact: at most 2 * 63 * 127).
#[inline(always)]
pub(crate) fn mul_u8_i8_pairs(u: m256i, a: m256i) -> m256i {
    mul_u8i8_add_horizontal_saturating_m256i(u, a)
}

/// i16 pairs times i16 scales, summed in pairs to i32.
#[inline(always)]
pub(crate) fn madd_i16(p: m256i, scales: m256i) -> m256i {
    mul_i16_horizontal_add_m256i(p, scales)
}

/// The Q4_K integer step: `acc` plus eight i32 lanes totalling
/// `s_lo * (lo · a_lo) + s_hi * (hi · a_hi)` (nibbles times activation codes, 32 each, times
/// the sub-block scales, given in every i16 lane), as ggml computes it.
#[inline(always)]
pub(crate) fn q4_step(
    acc: m256i,
    (lo, a_lo, s_lo): (m256i, m256i, m256i),
    (hi, a_hi, s_hi): (m256i, m256i, m256i),
) -> m256i {
    add_i32_m256i(
        acc,
        add_i32_m256i(
            madd_i16(mul_u8_i8_pairs(lo, a_lo), s_lo),
            madd_i16(mul_u8_i8_pairs(hi, a_hi), s_hi),
        ),
    )
}

#[inline(always)]
pub(crate) fn splat_i16(v: i16) -> m256i {
    set_splat_i16_m256i(v)
}

/// Low and high nibbles of 32 bytes.
#[inline(always)]
pub(crate) fn nibbles(q: m256i) -> (m256i, m256i) {
    let mask = set_splat_i8_m256i(0x0f);
    (
        bitand_m256i(q, mask),
        bitand_m256i(shr_imm_u16_m256i::<4>(q), mask),
    )
}

#[inline(always)]
pub(crate) fn to_f32(v: m256i) -> m256 {
    convert_to_m256_from_i32_m256i(v)
}

/// The lane totals of four i32 vectors (exact integers).
#[inline(always)]
pub(crate) fn hsum_i32_4(v: [m256i; 4]) -> [i32; 4] {
    let h = add_horizontal_i32_m256i(
        add_horizontal_i32_m256i(v[0], v[1]),
        add_horizontal_i32_m256i(v[2], v[3]),
    );
    let s = add_i32_m128i(
        cast_to_m128i_from_m256i(h),
        extract_m128i_from_m256i::<1>(h),
    );
    <[i32; 4]>::from(s)
}

/// The total of the eight i32 lanes (exact).
#[inline(always)]
pub(crate) fn hsum_i32(v: m256i) -> i32 {
    hsum_i32_m128i(add_i32_m128i(
        cast_to_m128i_from_m256i(v),
        extract_m128i_from_m256i::<1>(v),
    ))
}

/// The total of four i32 lanes (exact), in registers.
#[inline(always)]
pub(crate) fn hsum_i32_m128i(s: safe_arch::m128i) -> i32 {
    let s = add_i32_m128i(s, safe_arch::unpack_high_i64_m128i(s, s));
    let s = add_i32_m128i(s, safe_arch::shuffle_ai_f32_all_m128i::<0b01>(s));
    safe_arch::get_i32_from_m128i_s(s)
}

/// [`super::hsum8`] on a register: ggml's `hsum_float_8`, the same adds in
/// the same order (high half plus low half, then pairs, then the last two).
#[inline(always)]
pub(crate) fn hsum8(x: m256) -> f32 {
    let r = safe_arch::add_m128(
        safe_arch::extract_m128_from_m256::<1>(x),
        safe_arch::cast_to_m128_from_m256(x),
    );
    let t: [f32; 4] = safe_arch::add_m128(r, safe_arch::move_high_low_m128(r, r)).into();
    t[0] + t[1]
}

/// [`hsum_i32_4`] converted to f32 (`cvtdq2ps`: exact below 2^24, else
/// rounded once to nearest, as `i32 as f32`).
#[inline(always)]
pub(crate) fn hsum_i32_4_f32(v: [m256i; 4]) -> safe_arch::m128 {
    let h = add_horizontal_i32_m256i(
        add_horizontal_i32_m256i(v[0], v[1]),
        add_horizontal_i32_m256i(v[2], v[3]),
    );
    safe_arch::convert_to_m128_from_i32_m128i(add_i32_m128i(
        cast_to_m128i_from_m256i(h),
        extract_m128i_from_m256i::<1>(h),
    ))
}
