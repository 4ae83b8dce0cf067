//! ggml's vectorised `exp` and softmax sum, lane by lane.
//!
//! llama.cpp's CPU softmax (`ggml_vec_soft_max_f32`) evaluates `exp` with
//! `ggml_v_expf`, a polynomial approximation (within ~1.5 ulp of `expf`, but
//! not equal to it), on 8 values at a time, and adds each group's horizontal
//! sum into a double. Reproducing both is needed for llama.cpp's exact
//! attention weights.

use super::hsum8;

// The constants of ggml_v_expf (ARM optimized-routines), as bit patterns.
const SHIFT: u32 = 0x4b40_0000; // 0x1.8p23
const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
const C0: u32 = 0x3c07_2010; // 0x1.0e4020p-7
const C1: u32 = 0x3d2b_9f17; // 0x1.573e2ep-5
const C2: u32 = 0x3e2a_af33; // 0x1.555e66p-3
const C3: u32 = 0x3eff_fedb; // 0x1.fffdb6p-2
const C4: u32 = 0x3f7f_fff6; // 0x1.ffffecp-1

#[inline(always)]
fn f(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// One lane of `ggml_v_expf` (AVX2 + FMA version).
#[inline(always)]
pub(crate) fn v_expf(x: f32) -> f32 {
    let r = f(SHIFT);
    let z = x.mul_add(f(LOG2E), r);
    let n = z - r;
    // fnmadd(a, b, c) = c - a * b, fused.
    let b = (-n).mul_add(f(LN2_LO), (-n).mul_add(f(LN2_HI), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let c = n.abs() > 126.0;
    let u = b * b;
    let j = f(C0)
        .mul_add(b, f(C1))
        .mul_add(u, f(C2).mul_add(b, f(C3)))
        .mul_add(u, f(C4) * b);
    if !c {
        return j.mul_add(k, k);
    }
    // Large |x|: scale in two steps to avoid overflow, or flush.
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// `exp(scores[i] - max)` in place for the cells of a softmax row starting
/// at cell `first` (cells before it, and any `NEG_INFINITY` score, count as
/// exact zeros), returning ggml's sum: per aligned group of 8 cells, the f32
/// horizontal sum, accumulated in f64.
pub(crate) fn softmax_exp(scores: &mut [f32], first: usize, max: f32) -> f64 {
    let mut sum = 0f64;
    let mut lanes = [0f32; 8];
    let mut lane_used = false;
    for (i, s) in scores.iter_mut().enumerate() {
        let cell = first + i;
        *s = if *s == f32::NEG_INFINITY {
            0.0
        } else {
            v_expf(*s - max)
        };
        lanes[cell % 8] = *s;
        lane_used = true;
        if cell % 8 == 7 {
            sum += f64::from(hsum8(&lanes));
            lanes = [0.0; 8];
            lane_used = false;
        }
    }
    if lane_used {
        sum += f64::from(hsum8(&lanes));
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_exp() {
        for x in [
            -100.0f32, -20.0, -3.5, -1.0, -0.1, 0.0, 0.3, 2.0, 10.0, 80.0,
        ] {
            let want = x.exp();
            let got = v_expf(x);
            assert!((got - want).abs() <= want * 4e-7, "{x}: {got} vs {want}");
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(v_expf(-200.0), 0.0);
    }
}
