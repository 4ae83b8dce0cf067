//! IEEE half-precision conversions in safe, branch-light Rust.
//!
//! llama.cpp keeps the KV cache in f16 and rounds attention's queries and
//! probabilities (and F16 weights' activations) to f16 before multiplying.
//! Matching its greedy output token for token means rounding at the same
//! places, so these helpers must be exact (round to nearest, ties to even,
//! subnormals included) and cheap enough for attention's inner loops.

/// f32 → f16 bits, round to nearest even (F. Giesen's `float_to_half_fast3_rtne`).
#[inline(always)]
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    const F16_MAX: u32 = (127 + 16) << 23;
    const DENORM_MAGIC: u32 = ((127 - 15) + (23 - 10) + 1) << 23;
    let bits = x.to_bits();
    let sign = bits & 0x8000_0000;
    let abs = bits ^ sign;
    let out = if abs >= F16_MAX {
        // Overflow to infinity; NaN stays a (quiet) NaN.
        if abs > 0x7f80_0000 { 0x7e00 } else { 0x7c00 }
    } else if abs < (113 << 23) {
        // Subnormal result: let the FPU round by adding a magic number whose
        // ulp is the f16 subnormal step.
        let f = f32::from_bits(abs) + f32::from_bits(DENORM_MAGIC);
        f.to_bits().wrapping_sub(DENORM_MAGIC)
    } else {
        let mant_odd = (abs >> 13) & 1;
        let rebiased = abs.wrapping_add(((15u32.wrapping_sub(127)) << 23).wrapping_add(0xfff));
        rebiased.wrapping_add(mant_odd) >> 13
    };
    (out | (sign >> 16)) as u16
}

/// f16 bits → f32 (exact); infinities and NaNs never occur in a model's cache.
///
/// Normal values rebias the exponent with an integer add; zeros and subnormals are their
/// mantissa times 2^-24 (an integer conversion and a multiply by a normal constant). No step
/// ever touches an f32 subnormal: multiplying one (the obvious `bits << 13` times 2^112)
/// takes a microcode assist of ~100 cycles, and attention rounds every tiny softmax
/// probability through here.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    const REBIAS: u32 = (127 - 15) << 23;
    const TWO_POW_MINUS_24: f32 = f32::from_bits((127 - 24) << 23);
    let h = u32::from(h);
    let magnitude = h & 0x7fff;
    let value = if magnitude < 0x400 {
        magnitude as f32 * TWO_POW_MINUS_24
    } else {
        f32::from_bits((magnitude << 13) + REBIAS)
    };
    f32::from_bits(value.to_bits() | ((h & 0x8000) << 16))
}

/// `x` rounded to the nearest f16 value, as an f32.
#[inline(always)]
pub(crate) fn round_f16(x: f32) -> f32 {
    f16_to_f32(f32_to_f16(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values_round_trip() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            6.103_515_6e-5,
            5.960_464_5e-8,
            0.333_251_95,
        ] {
            assert_eq!(round_f16(x).to_bits(), x.to_bits(), "{x}");
        }
    }

    #[test]
    fn rounds_to_nearest_even() {
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties go to the even 1.
        assert_eq!(round_f16(1.0 + 2f32.powi(-11)), 1.0);
        // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9: even is the latter.
        assert_eq!(round_f16(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2f32.powi(-9));
        assert_eq!(
            round_f16(1.0 + 2f32.powi(-11) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-10)
        );
        // Subnormal halfway case: 1.5 * 2^-24 rounds to the even 2 * 2^-24.
        assert_eq!(round_f16(1.5 * 2f32.powi(-24)), 2.0 * 2f32.powi(-24));
        assert_eq!(round_f16(0.5 * 2f32.powi(-24)), 0.0);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_f16(-1e6), 0xfc00);
    }

    #[test]
    fn every_f16_decodes_to_its_exact_value() {
        for h in 0..=u16::MAX {
            if (h >> 10) & 0x1f == 0x1f {
                continue; // inf / NaN
            }
            let (sign, exponent, mantissa) = (h >> 15, i32::from((h >> 10) & 0x1f), h & 0x3ff);
            let value = if exponent == 0 {
                f64::from(mantissa) * 2f64.powi(-24)
            } else {
                (1.0 + f64::from(mantissa) / 1024.0) * 2f64.powi(exponent - 15)
            };
            let want = if sign == 1 { -value } else { value };
            let got = f16_to_f32(h);
            assert_eq!(f64::from(got), want, "{h:#06x}");
            assert_eq!(got.is_sign_negative(), sign == 1, "{h:#06x}");
        }
    }

    #[test]
    fn every_f16_decodes_and_re_encodes() {
        for h in 0..=u16::MAX {
            let exponent = (h >> 10) & 0x1f;
            if exponent == 0x1f {
                continue; // inf / NaN
            }
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#06x}");
        }
    }
}
