//! Element-wise and normalisation kernels on row-major f32 buffers, written
//! to reproduce ggml's CPU arithmetic (see each function for the ggml op it
//! mirrors), since greedy decoding amplifies even last-bit differences.

use std::sync::OnceLock;

use super::config::Activation;
use super::f16::{f16_to_f32, f32_to_f16};
use super::kernels::expf::v_expf;

/// RMS-normalises each `dim`-wide row in place and multiplies by `weight`.
///
/// ggml's `rms_norm` sums squares in double, takes `1/sqrt(mean + eps)` in
/// f32 and scales; the weight is a separate f32 `mul`.
pub(crate) fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    for row in x.chunks_exact_mut(dim) {
        let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
        let mean = (sum / dim as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = (*v * scale) * w;
        }
    }
}

/// `acc += x`, element-wise.
pub(crate) fn add_assign(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

/// Values of a prompt's gated activation beyond which its rows spread over the pool (each row
/// as alone: element-wise).
const PARALLEL_GATED: usize = 1 << 16;

/// The gated activation on rows of `[gate | up]` (each `ffn` wide); returns
/// `m` rows of `ffn` values.
pub(crate) fn gated_activation(gate_up: &[f32], ffn: usize, activation: Activation) -> Vec<f32> {
    let mut out = vec![0f32; gate_up.len() / 2];
    let parallel = out.len() >= PARALLEL_GATED;
    super::kernels::pool::par_jobs(&mut out, ffn, parallel, |r, out| {
        let (gate, up) = gate_up[2 * ffn * r..2 * ffn * (r + 1)].split_at(ffn);
        match activation {
            Activation::Silu => {
                // ggml_vec_swiglu_f32: vectorised exp on groups of 8, libm expf on the tail.
                let split = ffn - ffn % 8;
                for ((o, &g), &u) in out.iter_mut().zip(&gate[..split]).zip(&up[..split]) {
                    *o = g / (1.0 + v_expf(0.0 - g)) * u;
                }
                for ((o, &g), &u) in out[split..]
                    .iter_mut()
                    .zip(&gate[split..])
                    .zip(&up[split..])
                {
                    *o = silu(g) * u;
                }
            }
            Activation::GeluTanh => {
                let table = gelu_table();
                for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    *o = gelu_via_table(table, g) * u;
                }
            }
        }
    });
    out
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// ggml's `gelu_f32`, the tanh approximation, with the one multiply-add GCC
/// fuses (`1 + A*x*x`).
fn gelu_tanh(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044_715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh())
}

/// ggml computes GELU on CPU through a 64K-entry table indexed by the input
/// rounded to f16 (`GGML_GELU_FP16`), returning f16 values; inputs beyond ±10
/// bypass it. We reproduce the table rather than evaluate GELU exactly.
fn gelu_via_table(table: &[f32], x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table[usize::from(f32_to_f16(x))]
    }
}

fn gelu_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|h| f16_to_f32(f32_to_f16(gelu_tanh(f16_to_f32(h)))))
            .collect()
    })
}

/// Dequantised embedding rows scaled by `scale` (gemma's `sqrt(hidden)`).
pub(crate) fn scale(x: &mut [f32], s: f32) {
    x.iter_mut().for_each(|v| *v *= s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_weight_gives_unit_rms() {
        let mut x = vec![1.0, -2.0, 3.0, -4.0, 0.5, 0.5, 0.5, 0.5];
        rms_norm(&mut x, &[1.0; 4], 0.0);
        for row in x.chunks(4) {
            let ms: f32 = row.iter().map(|v| v * v).sum::<f32>() / 4.0;
            assert!((ms - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn gelu_table_matches_formula_to_f16_precision() {
        let table = gelu_table();
        for x in [-9.0f32, -3.0, -0.5, 0.0, 0.001, 0.7, 2.0, 9.5] {
            let exact = gelu_tanh(x);
            let got = gelu_via_table(table, x);
            assert!(
                (got - exact).abs() <= 2e-3 * exact.abs().max(1e-2),
                "{x}: {got} vs {exact}"
            );
        }
        assert_eq!(gelu_via_table(table, 12.0), 12.0);
        assert_eq!(gelu_via_table(table, -12.0), 0.0);
    }

    /// A prompt's rows, spread over the pool, are each row computed alone.
    #[test]
    fn gated_activation_of_many_rows_is_each_row_alone() {
        let ffn = 1000;
        let x: Vec<f32> = (0..100 * 2 * ffn)
            .map(|i| ((i * 7919) % 2003) as f32 / 97.0 - 10.0)
            .collect();
        for activation in [Activation::Silu, Activation::GeluTanh] {
            let all = gated_activation(&x, ffn, activation);
            assert_eq!(all.len(), 100 * ffn);
            for (r, row) in x.chunks_exact(2 * ffn).enumerate() {
                let one = gated_activation(row, ffn, activation);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&one), bits(&all[r * ffn..(r + 1) * ffn]), "row {r}");
            }
        }
    }

    #[test]
    fn gated_activation_splits_gate_then_up() {
        let out = gated_activation(&[1.0, 2.0, 3.0, 4.0], 2, Activation::Silu);
        assert!((out[0] - silu(1.0) * 3.0).abs() < 1e-6);
        assert!((out[1] - silu(2.0) * 4.0).abs() < 1e-6);
    }
}
