//! Activation quantisation, as ggml does it before a quantised matmul.
//!
//! - Q8_0 (for Q8_0/Q5_0/Q4_0 weights): ggml's AVX2 `quantize_row_q8_0`:
//!   scale `amax / 127` stored as f16, values `round_even(x * (127 / amax))`.
//!   (candle computes `x * (1 / d)` and rounds half away from zero, which
//!   gives different integers for a few values per row.)
//! - Q8_K (for k-quant weights): ggml's `quantize_row_q8_K_ref`: scale from the
//!   signed extreme (`-127 / max`), values rounded half to even, f32 scale,
//!   plus per-16 sums.

use crate::model::f16::round_f16;

pub(crate) const QK8_0: usize = 32;
pub(crate) const QK_K: usize = 256;

/// Rows of activations quantised to Q8_0: `d[row * nb + b]` is the block
/// scale (the f16 value, widened), `q[row * k + i]` the codes.
#[derive(Debug, Default)]
pub(crate) struct Q8_0Rows {
    pub d: Vec<f32>,
    pub q: Vec<i8>,
}

pub(crate) fn quantize_q8_0(x: &[f32], out: &mut Q8_0Rows) {
    out.d.clear();
    out.q.clear();
    out.d.reserve(x.len() / QK8_0);
    out.q.reserve(x.len());
    for block in x.chunks_exact(QK8_0) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        out.d.push(round_f16(amax / 127.0));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        out.q
            .extend(block.iter().map(|&v| (v * id).round_ties_even() as i8));
    }
}

/// Rows of activations quantised to Q8_K.
#[derive(Debug, Default)]
pub(crate) struct Q8KRows {
    pub d: Vec<f32>,
    pub q: Vec<i8>,
    /// Sums of each 16 codes.
    pub bsums: Vec<i32>,
}

pub(crate) fn quantize_q8_k(x: &[f32], out: &mut Q8KRows) {
    out.d.clear();
    out.q.clear();
    out.bsums.clear();
    for block in x.chunks_exact(QK_K) {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in block {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            out.d.push(0.0);
            out.q.extend(std::iter::repeat_n(0i8, QK_K));
            out.bsums.extend(std::iter::repeat_n(0i32, QK_K / 16));
            continue;
        }
        let iscale = -127.0 / max;
        let start = out.q.len();
        out.q.extend(
            block
                .iter()
                .map(|&v| (iscale * v).round_ties_even().min(127.0) as i8),
        );
        out.bsums.extend(
            out.q[start..]
                .chunks_exact(16)
                .map(|c| c.iter().map(|&q| i32::from(q)).sum::<i32>()),
        );
        out.d.push(1.0 / iscale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_maps_the_extreme_to_127_and_rounds_ties_to_even() {
        let mut x = vec![0f32; 32];
        x[0] = -127.0;
        x[1] = 0.5;
        x[2] = 1.5;
        x[3] = 2.5;
        let mut q = Q8_0Rows::default();
        quantize_q8_0(&x, &mut q);
        assert_eq!(&q.q[..4], &[-127, 0, 2, 2]);
        assert_eq!(q.d[0], 1.0);
    }

    #[test]
    fn q8_k_uses_the_signed_extreme() {
        let mut x = vec![0.5f32; 256];
        x[7] = -4.0;
        let mut q = Q8KRows::default();
        quantize_q8_k(&x, &mut q);
        assert_eq!(q.q[7], -127);
        assert_eq!(q.q[0], 16);
        assert_eq!(q.bsums[0], 16 * 15 - 127);
        assert_eq!(q.d[0], 1.0 / 31.75);
    }
}
