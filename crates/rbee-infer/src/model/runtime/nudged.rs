//! The noise floor of runtime agreement: the CPU runtime with one rounding changed.
//!
//! Any engine that is not bit-exact with llama.cpp's CPU arithmetic (a GPU's kernels, the
//! device runtime) differs from it by roundings, and a model with near-ties amplifies them:
//! activations are quantised to 8 bits before every matmul, so a last-bit difference flips a
//! rounding step and travels on. How far apart two *equally correct* computations land is
//! measured by [`Nudged`]: the llama.cpp-exact [`Cpu`] runtime with the lowest mantissa bit of
//! one in `every` RMS-norm outputs flipped (a relative change of 6·10⁻⁸, the size of one
//! reordered sum). The device runtime's agreement with the CPU runtime is judged against the
//! nudged runtime's (`tests/device_runtime.rs`, docs/ARCHITECTURE.md "Fidelity contract").

use std::ops::Range;

use super::{Cpu, Origin, Runtime, Span};
use crate::model::attention::AttnShape;
use crate::model::config::Activation;
use crate::model::error::ModelError;
use crate::model::kv_cache::LayerCache;
use crate::model::linear::MultiLinear;
use crate::model::rope::Rope;
use crate::model::weights::{Blocks, TensorReader};

/// [`Cpu`], with every `every`-th value of each RMS norm's output one bit off.
#[derive(Debug, Clone, Copy)]
pub struct Nudged {
    every: usize,
}

impl Nudged {
    /// One value in `every` (at least 1) of each norm's output nudged.
    pub fn new(every: usize) -> Nudged {
        Nudged {
            every: every.max(1),
        }
    }
}

/// Flips the lowest mantissa bit of every `every`-th value.
fn nudge(x: &mut [f32], every: usize) {
    for v in x.iter_mut().step_by(every) {
        *v = f32::from_bits(v.to_bits() ^ 1);
    }
}

impl Runtime for Nudged {
    type Act = Vec<f32>;
    type Matrix = MultiLinear;
    type Vector = Vec<f32>;
    type Kv = LayerCache;

    fn describe(&self) -> String {
        format!("{} nudged (1 bit in {})", Cpu.describe(), self.every)
    }
    fn load_matrix(
        &self,
        reader: &mut TensorReader<'_>,
        name: &str,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<MultiLinear, ModelError> {
        Cpu.load_matrix(reader, name, rows, cols, bias)
    }
    fn fused(&self, parts: Vec<(Blocks, Option<Vec<f32>>)>) -> Result<MultiLinear, ModelError> {
        Cpu.fused(parts)
    }
    fn vector(&self, values: Vec<f32>) -> Result<Vec<f32>, ModelError> {
        Cpu.vector(values)
    }
    fn matrix_bytes(&self, m: &MultiLinear) -> usize {
        Cpu.matrix_bytes(m)
    }
    fn matrix_mapped_bytes(&self, m: &MultiLinear) -> usize {
        Cpu.matrix_mapped_bytes(m)
    }
    fn new_kv(&self, k_row: usize, v_row: usize) -> LayerCache {
        Cpu.new_kv(k_row, v_row)
    }
    fn embed(&self, m: &MultiLinear, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        Cpu.embed(m, tokens)
    }
    fn matmul(
        &self,
        m: &MultiLinear,
        x: &Vec<f32>,
        origins: &[Origin],
    ) -> Result<Vec<f32>, ModelError> {
        Cpu.matmul(m, x, origins)
    }
    fn rms_norm(&self, x: &mut Vec<f32>, w: &Vec<f32>, eps: f32) -> Result<(), ModelError> {
        Cpu.rms_norm(x, w, eps)?;
        nudge(x, self.every);
        Ok(())
    }
    fn scale(&self, x: &mut Vec<f32>, s: f32) -> Result<(), ModelError> {
        Cpu.scale(x, s)
    }
    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<(), ModelError> {
        Cpu.add(x, y)
    }
    fn copy(&self, x: &Vec<f32>) -> Result<Vec<f32>, ModelError> {
        Cpu.copy(x)
    }
    fn gated(
        &self,
        gate_up: &Vec<f32>,
        ffn: usize,
        activation: Activation,
    ) -> Result<Vec<f32>, ModelError> {
        Cpu.gated(gate_up, ffn, activation)
    }
    fn split_columns(&self, x: &Vec<f32>, widths: &[usize]) -> Result<Vec<Vec<f32>>, ModelError> {
        Cpu.split_columns(x, widths)
    }
    fn gather_rows(
        &self,
        x: &Vec<f32>,
        width: usize,
        rows: &[usize],
    ) -> Result<Vec<f32>, ModelError> {
        Cpu.gather_rows(x, width, rows)
    }
    fn rope(
        &self,
        x: &mut Vec<f32>,
        rope: &Rope,
        n_heads: usize,
        head_dim: usize,
        spans: &[Span],
    ) -> Result<(), ModelError> {
        Cpu.rope(x, rope, n_heads, head_dim, spans)
    }
    fn append_kv(
        &self,
        kv: &mut LayerCache,
        k: &Vec<f32>,
        v: &Vec<f32>,
        rows: Range<usize>,
    ) -> Result<(), ModelError> {
        Cpu.append_kv(kv, k, v, rows)
    }
    fn attention(
        &self,
        q: &Vec<f32>,
        entries: &[(Span, &LayerCache)],
        shape: &AttnShape,
    ) -> Result<Vec<f32>, ModelError> {
        Cpu.attention(q, entries, shape)
    }
    fn to_host(&self, x: Vec<f32>) -> Result<Vec<f32>, ModelError> {
        Cpu.to_host(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudge_changes_one_value_in_every_by_one_bit() {
        let mut x = vec![1.0f32, 2.0, -3.0, 0.5, 7.0];
        nudge(&mut x, 2);
        assert_ne!(x[0], 1.0);
        assert!((x[0] - 1.0).abs() <= f32::EPSILON);
        assert_eq!(x[1], 2.0);
        assert_ne!(x[2], -3.0);
        assert!((x[2] + 3.0).abs() <= 3.0 * f32::EPSILON);
        assert_eq!((x[3], x[4] != 7.0), (0.5, true));
    }
}
