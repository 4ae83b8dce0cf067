//! The CPU runtime: host memory and the llama.cpp-exact kernels (`linear`, `attention`,
//! `rope`, `ops`, `kv_cache`).

use std::ops::Range;

use super::{LayerKv, Origin, Runtime, Span};
use crate::model::attention::{AttnShape, attention_many};
use crate::model::config::Activation;
use crate::model::error::ModelError;
use crate::model::kernels::{dispatch, pool};
use crate::model::kv_cache::LayerCache;
use crate::model::linear::{Linear, MultiLinear};
use crate::model::ops;
use crate::model::rope::Rope;
use crate::model::weights::{Blocks, TensorReader};

/// The CPU: activations are `Vec<f32>`, weights the kernels' own layouts, KV caches f16.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

impl LayerKv for LayerCache {
    fn len(&self) -> usize {
        LayerCache::len(self)
    }
    fn truncate(&mut self, len: usize) {
        LayerCache::truncate(self, len);
    }
    fn clear(&mut self) {
        LayerCache::clear(self);
    }
    fn bytes(&self) -> usize {
        LayerCache::bytes(self)
    }
}

/// The kernel set the matmuls use, chosen at run time ([`dispatch`]).
fn kernel_set() -> &'static str {
    dispatch::active().set().name()
}

impl Runtime for Cpu {
    type Act = Vec<f32>;
    type Matrix = MultiLinear;
    type Vector = Vec<f32>;
    type Kv = LayerCache;

    fn describe(&self) -> String {
        format!(
            "cpu ({} kernels, {} threads)",
            kernel_set(),
            pool::threads()
        )
    }

    fn load_matrix(
        &self,
        reader: &mut TensorReader<'_>,
        name: &str,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<MultiLinear, ModelError> {
        // A kernel set the setting names but this CPU lacks refuses the load, with the reason.
        dispatch::chosen().map_err(ModelError::Unsupported)?;
        Ok(MultiLinear::single(Linear::load(
            reader, name, rows, cols, bias,
        )?))
    }

    fn fused(&self, parts: Vec<(Blocks, Option<Vec<f32>>)>) -> Result<MultiLinear, ModelError> {
        MultiLinear::new(parts)
    }

    fn vector(&self, values: Vec<f32>) -> Result<Vec<f32>, ModelError> {
        Ok(values)
    }

    fn matrix_bytes(&self, m: &MultiLinear) -> usize {
        m.weight_bytes()
    }

    fn matrix_mapped_bytes(&self, m: &MultiLinear) -> usize {
        m.mapped_bytes()
    }

    fn new_kv(&self, k_row: usize, v_row: usize) -> LayerCache {
        LayerCache::new(k_row, v_row)
    }

    fn embed(&self, m: &MultiLinear, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        m.embedding(tokens)
    }

    fn matmul(
        &self,
        m: &MultiLinear,
        x: &Vec<f32>,
        origins: &[Origin],
    ) -> Result<Vec<f32>, ModelError> {
        m.forward(x, origins)
    }

    fn rms_norm(&self, x: &mut Vec<f32>, w: &Vec<f32>, eps: f32) -> Result<(), ModelError> {
        ops::rms_norm(x, w, eps);
        Ok(())
    }

    fn scale(&self, x: &mut Vec<f32>, s: f32) -> Result<(), ModelError> {
        ops::scale(x, s);
        Ok(())
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<(), ModelError> {
        ops::add_assign(x, y);
        Ok(())
    }

    fn copy(&self, x: &Vec<f32>) -> Result<Vec<f32>, ModelError> {
        Ok(x.clone())
    }

    fn gated(
        &self,
        gate_up: &Vec<f32>,
        ffn: usize,
        activation: Activation,
    ) -> Result<Vec<f32>, ModelError> {
        Ok(ops::gated_activation(gate_up, ffn, activation))
    }

    fn split_columns(&self, x: &Vec<f32>, widths: &[usize]) -> Result<Vec<Vec<f32>>, ModelError> {
        let width: usize = widths.iter().sum();
        let rows = x.len().checked_div(width).unwrap_or(0);
        let mut parts: Vec<Vec<f32>> = widths
            .iter()
            .map(|w| Vec::with_capacity(rows * w))
            .collect();
        for row in x.chunks_exact(width) {
            let mut col = 0;
            for (part, &w) in parts.iter_mut().zip(widths) {
                part.extend_from_slice(&row[col..col + w]);
                col += w;
            }
        }
        Ok(parts)
    }

    fn gather_rows(
        &self,
        x: &Vec<f32>,
        width: usize,
        rows: &[usize],
    ) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::with_capacity(rows.len() * width);
        for &r in rows {
            out.extend_from_slice(&x[r * width..(r + 1) * width]);
        }
        Ok(out)
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        rope: &Rope,
        n_heads: usize,
        head_dim: usize,
        spans: &[Span],
    ) -> Result<(), ModelError> {
        let width = n_heads * head_dim;
        let mut row = 0;
        for span in spans {
            let rows = &mut x[row * width..(row + span.rows) * width];
            rope.apply(rows, n_heads, head_dim, span.start);
            row += span.rows;
        }
        Ok(())
    }

    fn append_kv(
        &self,
        kv: &mut LayerCache,
        k: &Vec<f32>,
        v: &Vec<f32>,
        rows: Range<usize>,
    ) -> Result<(), ModelError> {
        let (kw, vw) = (kv.k_row(), kv.v_row());
        kv.append(
            &k[rows.start * kw..rows.end * kw],
            &v[rows.start * vw..rows.end * vw],
        );
        Ok(())
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        entries: &[(Span, &LayerCache)],
        shape: &AttnShape,
    ) -> Result<Vec<f32>, ModelError> {
        let entries: Vec<_> = entries
            .iter()
            .map(|&(span, kv)| (span.rows, span.start, span.batch, kv))
            .collect();
        Ok(attention_many(q, &entries, shape))
    }

    fn to_host(&self, x: Vec<f32>) -> Result<Vec<f32>, ModelError> {
        Ok(x)
    }
}
