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
        out.q.extend(block.iter().map(|&v| round_to_code(v * id)));
    }
}

/// `y` (at most 127 in magnitude) rounded to the nearest integer, ties to even, as a code: by
/// adding 1.5 * 2^23, whose unit is 1, so that the sum's low bits are that integer (exact while
/// |y| < 2^22), clamped to 127 as ggml's `MIN(127, ...)` does. The saturating float-to-int cast
/// it replaces (`round_ties_even() as i8`) compiled to scalar NaN checks and did not vectorise.
#[inline(always)]
fn round_to_code(y: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    let rounded = (y + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32;
    rounded.min(127) as i8
}

/// Rows of activations quantised to Q8_K.
#[derive(Debug, Default)]
pub(crate) struct Q8KRows {
    pub d: Vec<f32>,
    pub q: Vec<i8>,
    /// Sums of each 16 codes.
    pub bsums: Vec<i32>,
}

/// Blocks one thread quantises at a time; bigger inputs (a prompt's rows) spread over the
/// pool, each block computed alone as on one thread.
const PARALLEL_BLOCKS: usize = 64;

pub(crate) fn quantize_q8_k(x: &[f32], out: &mut Q8KRows) {
    let blocks = x.len() / QK_K;
    out.d.clear();
    out.q.clear();
    out.bsums.clear();
    out.d.resize(blocks, 0.0);
    out.q.resize(blocks * QK_K, 0);
    out.bsums.resize(blocks * (QK_K / 16), 0);
    let each = |x: &[f32], d: &mut [f32], q: &mut [i8], bsums: &mut [i32]| {
        let (q, _) = q.as_chunks_mut::<QK_K>();
        let (bsums, _) = bsums.as_chunks_mut::<{ QK_K / 16 }>();
        for (((x, d), q), bsums) in x.chunks_exact(QK_K).zip(d).zip(q).zip(bsums) {
            *d = quantize_block_q8_k(x, q, bsums);
        }
    };
    if blocks < 2 * PARALLEL_BLOCKS || super::pool::threads() == 1 {
        each(x, &mut out.d, &mut out.q, &mut out.bsums);
        return;
    }
    let jobs: Vec<std::sync::Mutex<_>> = x
        .chunks(PARALLEL_BLOCKS * QK_K)
        .zip(out.d.chunks_mut(PARALLEL_BLOCKS))
        .zip(out.q.chunks_mut(PARALLEL_BLOCKS * QK_K))
        .zip(out.bsums.chunks_mut(PARALLEL_BLOCKS * (QK_K / 16)))
        .map(|(((x, d), q), bsums)| std::sync::Mutex::new((x, d, q, bsums)))
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(jobs.len(), |range| {
        for j in range {
            let mut guard = jobs[j].lock().unwrap_or_else(|e| e.into_inner());
            let (x, d, q, bsums) = &mut *guard;
            each(x, d, q, bsums);
        }
    });
}

/// One Q8_K block: its codes and 16-value sums, and its scale returned. ggml's
/// `quantize_row_q8_K_ref`, in passes that vectorise: the largest magnitude (eight lanes),
/// then the first value that has it (ggml's strict `>` keeps the first), the codes, the sums.
fn quantize_block_q8_k(x: &[f32], q: &mut [i8; QK_K], bsums: &mut [i32; QK_K / 16]) -> f32 {
    let mut lanes = [0f32; 8];
    for c in x.chunks_exact(8) {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
    if amax == 0.0 {
        q.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round_to_code(iscale * v);
    }
    for (s, c) in bsums.iter_mut().zip(q.chunks_exact(16)) {
        *s = c.iter().map(|&q| i32::from(q)).sum::<i32>();
    }
    1.0 / iscale
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

    /// A prompt's rows, quantised over the pool, are each row quantised alone.
    #[test]
    fn q8_k_of_many_rows_is_each_row_alone() {
        let cols = 1536;
        let x: Vec<f32> = (0..40 * cols)
            .map(|i| ((i * 7919) % 2003) as f32 / 97.0 - 10.0)
            .collect();
        let mut all = Q8KRows::default();
        quantize_q8_k(&x, &mut all);
        let nb = cols / QK_K;
        for (r, row) in x.chunks_exact(cols).enumerate() {
            let mut one = Q8KRows::default();
            quantize_q8_k(row, &mut one);
            assert_eq!(one.q, all.q[r * cols..(r + 1) * cols], "row {r}");
            assert_eq!(one.d, all.d[r * nb..(r + 1) * nb], "row {r}");
            assert_eq!(
                one.bsums,
                all.bsums[r * nb * 16..(r + 1) * nb * 16],
                "row {r}"
            );
        }
    }

    /// Q8_0 codes rounded by [`round_to_code`] are the scalar steps'
    /// (`round_ties_even() as i8`) block by block: ties, zeros, extreme magnitudes.
    #[test]
    fn q8_0_codes_are_the_scalar_steps() {
        let mut x: Vec<f32> = (0..300 * QK8_0 * 8)
            .map(|i| ((i * 7919) % 2003) as f32 / 97.0 - 10.0)
            .collect();
        x[..QK8_0].fill(0.0);
        x[QK8_0..2 * QK8_0].iter_mut().for_each(|v| *v *= 1e-30);
        x[2 * QK8_0..3 * QK8_0].iter_mut().for_each(|v| *v *= 1e30);
        // The largest magnitude 254 makes the scale 0.5 a unit: odd values land on ties.
        for (i, v) in x[3 * QK8_0..4 * QK8_0].iter_mut().enumerate() {
            *v = if i == 0 { 254.0 } else { 2.0 * i as f32 - 31.0 };
        }
        let mut q = Q8_0Rows::default();
        quantize_q8_0(&x, &mut q);
        for (b, block) in x.chunks_exact(QK8_0).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let want: Vec<i8> = block
                .iter()
                .map(|&v| (v * id).round_ties_even() as i8)
                .collect();
            assert_eq!(&q.q[b * QK8_0..(b + 1) * QK8_0], &want[..], "block {b}");
            assert_eq!(
                q.d[b].to_bits(),
                round_f16(amax / 127.0).to_bits(),
                "block {b}"
            );
        }
    }

    /// ggml's `quantize_row_q8_K_ref`, as written there.
    fn ggml_q8_k(x: &[f32]) -> (f32, Vec<i8>, Vec<i32>) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            return (0.0, vec![0; QK_K], vec![0; QK_K / 16]);
        }
        let iscale = -127.0 / max;
        let q: Vec<i8> = x
            .iter()
            .map(|&v| ((iscale * v).round_ties_even() as i32).min(127) as i8)
            .collect();
        let sums = q
            .chunks(16)
            .map(|c| c.iter().map(|&v| i32::from(v)).sum())
            .collect();
        (1.0 / iscale, q, sums)
    }

    /// Blocks with ties for the largest magnitude (either sign first), an all-zero block and
    /// plain values quantise exactly as ggml's reference loop does.
    #[test]
    fn q8_k_blocks_are_ggmls() {
        let mut x: Vec<f32> = (0..8 * QK_K)
            .map(|i| ((i * 7919) % 2003) as f32 / 97.0 - 10.0)
            .collect();
        x[3] = 25.0;
        x[9] = -25.0;
        x[QK_K + 4] = -30.0;
        x[QK_K + 200] = 30.0;
        x[2 * QK_K..3 * QK_K].fill(0.0);
        x[4 * QK_K + 5] = 0.5;
        x[4 * QK_K + 6] = -0.5;
        // Tiny and huge magnitudes (the scale's extremes).
        x[5 * QK_K..6 * QK_K].iter_mut().for_each(|v| *v *= 1e-30);
        x[6 * QK_K..7 * QK_K].iter_mut().for_each(|v| *v *= 1e30);
        let mut q = Q8KRows::default();
        quantize_q8_k(&x, &mut q);
        for (b, block) in x.chunks_exact(QK_K).enumerate() {
            let (d, codes, sums) = ggml_q8_k(block);
            assert_eq!(q.d[b].to_bits(), d.to_bits(), "block {b}");
            assert_eq!(&q.q[b * QK_K..(b + 1) * QK_K], &codes[..], "block {b}");
            assert_eq!(&q.bsums[b * 16..(b + 1) * 16], &sums[..], "block {b}");
        }
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
