//! The device runtime: the forward pass on any candle [`Device`] — CUDA with `--features
//! cuda`, Metal with `--features metal`, and candle's CPU device, which is how it is tested on
//! machines without a GPU (`runtime_parity` in the tests below and `tests/device_runtime.rs`).
//!
//! Weights stay in their GGUF quantisation on the device (candle's `QMatMul`: its quantised
//! matmul kernels), the KV cache is f16 on the device, activations are f32 device tensors, and
//! every operation of a layer is a few candle tensor ops, so nothing here depends on which
//! device it is. The token-embedding lookup runs on the host, as llama.cpp's does (the table is
//! the largest tensor and a lookup reads a few rows of it); its rows are uploaded per step.
//!
//! This is not llama.cpp's CPU arithmetic (candle's kernels round differently and attention
//! runs in f32 over f16 keys and values), so the contract is the one GPU engines give: logits
//! within a stated tolerance of the CPU runtime and greedy top-1 agreement under teacher
//! forcing (docs/ARCHITECTURE.md, "Devices").

use std::ops::Range;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};

use super::{LayerKv, Origin, Runtime, Span};
use crate::model::attention::AttnShape;
use crate::model::config::{Activation, RopeStyle};
use crate::model::error::{CandleContext, ModelError};
use crate::model::linear::MultiLinear;
use crate::model::rope::Rope;
use crate::model::weights::{Blocks, TensorReader};

/// A candle device: weights, caches and activations live there.
#[derive(Debug, Clone)]
pub struct DeviceRuntime {
    device: Device,
    name: String,
}

impl DeviceRuntime {
    /// A runtime on `device`; `name` is how logs and status call it (`cuda:0`).
    pub fn new(device: Device, name: impl Into<String>) -> DeviceRuntime {
        DeviceRuntime {
            device,
            name: name.into(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub(super) fn upload(
        &self,
        values: Vec<f32>,
        rows: usize,
        width: usize,
    ) -> Result<Tensor, ModelError> {
        Tensor::from_vec(values, (rows, width), &self.device)
            .context(|| format!("uploading {rows}×{width} values to {}", self.name))
    }
}

/// A weight matrix on the device: its projections (consecutive ones of one quantisation
/// share one tensor), their summed biases, and for the token embedding a host copy.
#[derive(Debug)]
pub struct DeviceMatrix {
    parts: Vec<QMatMul>,
    bias: Option<Tensor>,
    cols: usize,
    bytes: usize,
    host: Option<MultiLinear>,
}

fn qmatmul(device: &Device, b: Blocks) -> Result<(QMatMul, usize), ModelError> {
    let name = b.name.clone();
    let (rows, cols, dtype) = (b.rows, b.cols, b.dtype);
    let storage = QStorage::from_data(b.candle_bytes()?, device, dtype)
        .context(|| format!("{name}: uploading its blocks"))?;
    let tensor = QTensor::new(storage, (rows, cols)).context(|| format!("{name}: its shape"))?;
    let bytes = tensor.storage_size_in_bytes();
    let m = QMatMul::from_qtensor(tensor).context(|| format!("{name}: its matmul"))?;
    Ok((m, bytes))
}

/// Projections of one input: runs of the same quantisation become one `rows × cols` tensor
/// (the blocks of a row never span rows, so stacking rows is concatenating bytes).
fn stack(parts: Vec<Blocks>) -> Vec<Blocks> {
    let mut out: Vec<Blocks> = Vec::new();
    for b in parts {
        match out.last_mut() {
            Some(last) if last.dtype == b.dtype && last.cols == b.cols => {
                last.rows += b.rows;
                let mut data = std::mem::replace(&mut last.data, Vec::new().into()).into_vec();
                data.extend_from_slice(&b.data);
                last.data = data.into();
                last.name = format!("{}+{}", last.name, b.name);
            }
            _ => out.push(b),
        }
    }
    out
}

/// One layer's keys and values of one sequence: `capacity` rows of f16, grown by doubling.
#[derive(Debug)]
pub struct DeviceKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    capacity: usize,
    k_row: usize,
    v_row: usize,
    device: Device,
}

impl DeviceMatrix {
    /// Input width.
    pub(super) fn cols(&self) -> usize {
        self.cols
    }
}

impl DeviceKv {
    /// Key values per position.
    pub(super) fn k_row(&self) -> usize {
        self.k_row
    }

    /// Value values per position.
    pub(super) fn v_row(&self) -> usize {
        self.v_row
    }

    fn reserve(&mut self, needed: usize) -> Result<(), ModelError> {
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed.next_power_of_two().max(16);
        let grow = |old: &Option<Tensor>, row: usize| -> Result<Tensor, ModelError> {
            let new = Tensor::zeros((capacity, row), DType::F16, &self.device)
                .context(|| format!("a KV cache of {capacity} positions"))?;
            if let Some(old) = old
                && self.len > 0
            {
                let kept = old.narrow(0, 0, self.len).context(|| "KV rows".into())?;
                new.slice_set(&kept, 0, 0)
                    .context(|| "copying the KV cache".into())?;
            }
            Ok(new)
        };
        self.k = Some(grow(&self.k, self.k_row)?);
        self.v = Some(grow(&self.v, self.v_row)?);
        self.capacity = capacity;
        Ok(())
    }

    /// Keys and values of positions `..len`, f32.
    fn view(&self) -> Result<(Tensor, Tensor), ModelError> {
        let part = |t: &Option<Tensor>| -> Result<Tensor, ModelError> {
            let t = t
                .as_ref()
                .ok_or_else(|| ModelError::Unsupported("attention over an empty cache".into()))?;
            t.narrow(0, 0, self.len)
                .and_then(|t| t.to_dtype(DType::F32))
                .context(|| "reading the KV cache".into())
        };
        Ok((part(&self.k)?, part(&self.v)?))
    }
}

impl Clone for DeviceKv {
    /// A copy of its own: the cache is written in place, so sharing storage would let two
    /// sequences overwrite each other.
    fn clone(&self) -> Self {
        let deep = |t: &Option<Tensor>| t.as_ref().and_then(|t| t.copy().ok());
        let (k, v) = (deep(&self.k), deep(&self.v));
        let ok = k.is_some() == self.k.is_some() && v.is_some() == self.v.is_some();
        DeviceKv {
            len: if ok { self.len } else { 0 },
            capacity: if ok { self.capacity } else { 0 },
            k: if ok { k } else { None },
            v: if ok { v } else { None },
            k_row: self.k_row,
            v_row: self.v_row,
            device: self.device.clone(),
        }
    }
}

impl LayerKv for DeviceKv {
    fn len(&self) -> usize {
        self.len
    }
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    fn clear(&mut self) {
        self.k = None;
        self.v = None;
        self.len = 0;
        self.capacity = 0;
    }
    fn bytes(&self) -> usize {
        self.capacity * (self.k_row + self.v_row) * 2
    }
}

/// `-inf` where a query row may not see a key: later positions, and outside the window.
fn causal_mask(span: &Span, keys: usize, window: Option<usize>) -> Vec<f32> {
    let mut mask = vec![0f32; span.rows * keys];
    for (i, row) in mask.chunks_exact_mut(keys).enumerate() {
        let pos = span.start + i;
        for (j, m) in row.iter_mut().enumerate() {
            let hidden = j > pos || window.is_some_and(|w| pos - j.min(pos) >= w);
            if hidden {
                *m = f32::NEG_INFINITY;
            }
        }
    }
    mask
}

impl Runtime for DeviceRuntime {
    type Act = Tensor;
    type Matrix = DeviceMatrix;
    type Vector = Tensor;
    type Kv = DeviceKv;

    fn describe(&self) -> String {
        format!("{} (candle kernels)", self.name)
    }

    fn load_matrix(
        &self,
        reader: &mut TensorReader<'_>,
        name: &str,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<DeviceMatrix, ModelError> {
        self.fused(vec![(reader.matrix(name, rows, cols)?, bias)])
    }

    fn load_embedding(
        &self,
        reader: &mut TensorReader<'_>,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<DeviceMatrix, ModelError> {
        let blocks = reader.matrix(name, rows, cols)?;
        let host = Blocks {
            name: blocks.name.clone(),
            dtype: blocks.dtype,
            rows,
            cols,
            data: blocks.data.clone(),
        };
        let mut m = self.fused(vec![(blocks, None)])?;
        m.host = Some(MultiLinear::new(vec![(host, None)])?);
        Ok(m)
    }

    fn fused(&self, parts: Vec<(Blocks, Option<Vec<f32>>)>) -> Result<DeviceMatrix, ModelError> {
        let cols = parts.first().map_or(0, |(b, _)| b.cols);
        let any_bias = parts.iter().any(|(_, b)| b.is_some());
        let mut bias = Vec::new();
        let mut blocks = Vec::with_capacity(parts.len());
        for (b, part_bias) in parts {
            if b.cols != cols {
                return Err(ModelError::Unsupported(format!(
                    "{}: fused projections must share their input width ({} ≠ {cols})",
                    b.name, b.cols
                )));
            }
            if any_bias {
                bias.extend(part_bias.unwrap_or_else(|| vec![0.0; b.rows]));
            }
            blocks.push(b);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for b in stack(blocks) {
            let (m, n) = qmatmul(&self.device, b)?;
            out.push(m);
            bytes += n;
        }
        let bias = if any_bias {
            let n = bias.len();
            bytes += n * 4;
            Some(self.upload(bias, 1, n)?)
        } else {
            None
        };
        Ok(DeviceMatrix {
            parts: out,
            bias,
            cols,
            bytes,
            host: None,
        })
    }

    fn vector(&self, values: Vec<f32>) -> Result<Tensor, ModelError> {
        let n = values.len();
        Tensor::from_vec(values, n, &self.device).context(|| "uploading a norm".into())
    }

    fn matrix_bytes(&self, m: &DeviceMatrix) -> usize {
        m.bytes
    }

    fn new_kv(&self, k_row: usize, v_row: usize) -> DeviceKv {
        DeviceKv {
            k: None,
            v: None,
            len: 0,
            capacity: 0,
            k_row,
            v_row,
            device: self.device.clone(),
        }
    }

    fn embed(&self, m: &DeviceMatrix, tokens: &[u32]) -> Result<Tensor, ModelError> {
        let host = m.host.as_ref().ok_or_else(|| {
            ModelError::Unsupported("embedding lookup on a matrix loaded without its table".into())
        })?;
        self.upload(host.embedding(tokens)?, tokens.len(), m.cols)
    }

    fn matmul(&self, m: &DeviceMatrix, x: &Tensor, _: &[Origin]) -> Result<Tensor, ModelError> {
        let x = x
            .reshape(((), m.cols))
            .and_then(|x| x.contiguous())
            .context(|| "matmul input".into())?;
        let outs = m
            .parts
            .iter()
            .map(|p| p.forward(&x))
            .collect::<candle_core::Result<Vec<_>>>()
            .context(|| "quantised matmul".into())?;
        let y = if outs.len() == 1 {
            outs.into_iter().next().ok_or(ModelError::EmptyInput)?
        } else {
            Tensor::cat(&outs, 1).context(|| "joining fused outputs".into())?
        };
        match &m.bias {
            Some(b) => y.broadcast_add(b).context(|| "bias".into()),
            None => Ok(y),
        }
    }

    fn rms_norm(&self, x: &mut Tensor, w: &Tensor, eps: f32) -> Result<(), ModelError> {
        let shape = x.shape().clone();
        let width = w.dim(0).context(|| "norm width".into())?;
        let rows = x.reshape(((), width)).context(|| "norm rows".into())?;
        let normed = rows
            .sqr()
            .and_then(|s| s.mean_keepdim(D::Minus1))
            .and_then(|m| m.affine(1.0, f64::from(eps)))
            .and_then(|m| m.sqrt())
            .and_then(|r| rows.broadcast_div(&r))
            .and_then(|n| n.broadcast_mul(w))
            .and_then(|n| n.reshape(shape))
            .context(|| "RMS norm".into())?;
        *x = normed;
        Ok(())
    }

    fn scale(&self, x: &mut Tensor, s: f32) -> Result<(), ModelError> {
        *x = x.affine(f64::from(s), 0.0).context(|| "scale".into())?;
        Ok(())
    }

    fn add(&self, x: &mut Tensor, y: &Tensor) -> Result<(), ModelError> {
        *x = (&*x + y).context(|| "residual add".into())?;
        Ok(())
    }

    fn copy(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        // Tensors are immutable; every operation here makes a new one.
        Ok(x.clone())
    }

    fn gated(
        &self,
        gate_up: &Tensor,
        ffn: usize,
        activation: Activation,
    ) -> Result<Tensor, ModelError> {
        let gate = gate_up.narrow(1, 0, ffn).context(|| "gate".into())?;
        let up = gate_up.narrow(1, ffn, ffn).context(|| "up".into())?;
        let act = match activation {
            Activation::Silu => gate.silu(),
            Activation::GeluTanh => gate.gelu(),
        }
        .context(|| "activation".into())?;
        (act * up).context(|| "gating".into())
    }

    fn split_columns(&self, x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>, ModelError> {
        let mut at = 0;
        widths
            .iter()
            .map(|&w| {
                let part = x
                    .narrow(1, at, w)
                    .and_then(|p| p.contiguous())
                    .context(|| "splitting columns".into());
                at += w;
                part
            })
            .collect()
    }

    fn gather_rows(&self, x: &Tensor, width: usize, rows: &[usize]) -> Result<Tensor, ModelError> {
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let ids = Tensor::from_vec(ids, rows.len(), &self.device).context(|| "row ids".into())?;
        x.reshape(((), width))
            .and_then(|x| x.index_select(&ids, 0))
            .context(|| "gathering rows".into())
    }

    fn rope(
        &self,
        x: &mut Tensor,
        rope: &Rope,
        n_heads: usize,
        head_dim: usize,
        spans: &[Span],
    ) -> Result<(), ModelError> {
        let half = rope.n_rot() / 2;
        if half == 0 {
            return Ok(());
        }
        let width = n_heads * head_dim;
        let all = x.reshape(((), width)).context(|| "RoPE input".into())?;
        let mut out = Vec::with_capacity(spans.len());
        let mut row = 0;
        for span in spans {
            let (cos, sin) = rope.table(span.start, span.rows);
            let cos = self.upload(cos.to_vec(), span.rows, half)?;
            let sin = self.upload(sin.to_vec(), span.rows, half)?;
            let rows = all
                .narrow(0, row, span.rows)
                .and_then(|r| r.reshape((span.rows, n_heads, head_dim)))
                .context(|| "RoPE rows".into())?;
            out.push(rotate(&rows, &cos, &sin, rope.style(), half, head_dim)?);
            row += span.rows;
        }
        *x = Tensor::cat(&out, 0)
            .and_then(|t| t.reshape(((), width)))
            .context(|| "RoPE output".into())?;
        Ok(())
    }

    fn append_kv(
        &self,
        kv: &mut DeviceKv,
        k: &Tensor,
        v: &Tensor,
        rows: Range<usize>,
    ) -> Result<(), ModelError> {
        let n = rows.len();
        kv.reserve(kv.len + n)?;
        let put = |dst: &Option<Tensor>, src: &Tensor, row: usize| -> Result<(), ModelError> {
            let rows = src
                .reshape(((), row))
                .and_then(|s| s.narrow(0, rows.start, n))
                .and_then(|s| s.to_dtype(DType::F16))
                .context(|| "KV rows".into())?;
            dst.as_ref()
                .ok_or(ModelError::EmptyInput)?
                .slice_set(&rows, 0, kv.len)
                .context(|| "appending to the KV cache".into())
        };
        put(&kv.k, k, kv.k_row)?;
        put(&kv.v, v, kv.v_row)?;
        kv.len += n;
        Ok(())
    }

    fn attention(
        &self,
        q: &Tensor,
        entries: &[(Span, &DeviceKv)],
        shape: &AttnShape,
    ) -> Result<Tensor, ModelError> {
        let (h, kvh, d, dv) = (
            shape.n_heads,
            shape.n_kv_heads,
            shape.head_dim,
            shape.head_dim_v,
        );
        let group = h / kvh.max(1);
        let q = q
            .reshape(((), h * d))
            .context(|| "attention queries".into())?;
        let mut out = Vec::with_capacity(entries.len());
        let mut row = 0;
        for &(span, kv) in entries {
            let n = span.rows;
            let keys = kv.len;
            let (k, v) = kv.view()?;
            let mask = self.upload(causal_mask(&span, keys, shape.window), n, keys)?;
            let o = (|| -> candle_core::Result<Tensor> {
                // Query heads sharing a KV head sit together: head i reads KV head i / group.
                // The queries and the probabilities are rounded to f16 as llama.cpp's CPU path
                // rounds them (its f16 K/V products convert the other operand): measured on the
                // demo model, it halves the top-1 disagreements with the CPU runtime.
                let qs = q
                    .narrow(0, row, n)?
                    .reshape((n, kvh, group, d))?
                    .permute((1, 2, 0, 3))?
                    .reshape((kvh, group * n, d))?
                    .to_dtype(DType::F16)?
                    .to_dtype(DType::F32)?
                    .contiguous()?;
                let k = k.reshape((keys, kvh, d))?.transpose(0, 1)?.contiguous()?;
                let v = v.reshape((keys, kvh, dv))?.transpose(0, 1)?.contiguous()?;
                let scores = qs
                    .matmul(&k.t()?)?
                    .affine(f64::from(shape.kq_scale), 0.0)?
                    .reshape((kvh, group, n, keys))?
                    .broadcast_add(&mask)?;
                let max = scores.max_keepdim(D::Minus1)?;
                let e = scores.broadcast_sub(&max)?.exp()?;
                let p = e
                    .broadcast_div(&e.sum_keepdim(D::Minus1)?)?
                    .to_dtype(DType::F16)?
                    .to_dtype(DType::F32)?;
                p.reshape((kvh, group * n, keys))?
                    .matmul(&v)?
                    .reshape((kvh, group, n, dv))?
                    .permute((2, 0, 1, 3))?
                    .reshape((n, h * dv))
            })()
            .context(|| "attention".into())?;
            out.push(o);
            row += n;
        }
        Tensor::cat(&out, 0).context(|| "attention output".into())
    }

    fn to_host(&self, x: Tensor) -> Result<Vec<f32>, ModelError> {
        x.flatten_all()
            .and_then(|x| x.to_vec1::<f32>())
            .context(|| format!("reading activations back from {}", self.name))
    }
}

/// RoPE on `rows` (`n × heads × head_dim`) with per-row `cos`/`sin` (`n × half`); dimensions
/// past `2 * half` pass through.
fn rotate(
    rows: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    style: RopeStyle,
    half: usize,
    head_dim: usize,
) -> Result<Tensor, ModelError> {
    (|| -> candle_core::Result<Tensor> {
        let (n, heads, _) = rows.dims3()?;
        let rot = rows.narrow(2, 0, 2 * half)?;
        let rotated = match style {
            RopeStyle::HalfSplit => {
                let cos = cos.reshape((n, 1, half))?;
                let sin = sin.reshape((n, 1, half))?;
                let x0 = rot.narrow(2, 0, half)?;
                let x1 = rot.narrow(2, half, half)?;
                let a = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
                let b = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
                Tensor::cat(&[a, b], 2)?
            }
            RopeStyle::Adjacent => {
                let pairs = rot.reshape((n, heads, half, 2))?;
                let cos = cos.reshape((n, 1, half, 1))?;
                let sin = sin.reshape((n, 1, half, 1))?;
                let x0 = pairs.narrow(3, 0, 1)?;
                let x1 = pairs.narrow(3, 1, 1)?;
                let a = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
                let b = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
                Tensor::cat(&[a, b], 3)?.reshape((n, heads, 2 * half))?
            }
        };
        if 2 * half == head_dim {
            Ok(rotated)
        } else {
            let rest = rows.narrow(2, 2 * half, head_dim - 2 * half)?;
            Tensor::cat(&[rotated, rest], 2)
        }
    })()
    .context(|| "RoPE".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_hides_later_positions_and_keys_outside_the_window() {
        let span = Span {
            rows: 2,
            start: 3,
            batch: 2,
        };
        let m = causal_mask(&span, 5, None);
        let visible = |row: &[f32]| row.iter().filter(|v| v.is_finite()).count();
        assert_eq!(visible(&m[..5]), 4, "position 3 sees keys 0..=3");
        assert_eq!(visible(&m[5..]), 5, "position 4 sees all five");
        let w = causal_mask(&span, 5, Some(2));
        assert_eq!(
            w[..5].iter().map(|v| v.is_finite()).collect::<Vec<_>>(),
            [false, false, true, true, false]
        );
    }

    /// A Q4_K matrix in place at an odd offset of its file (GGUF alignment 1) is copied before
    /// candle, which asserts its blocks' alignment, takes it: the load succeeds.
    #[test]
    fn a_matrix_at_an_odd_offset_of_its_file_loads() {
        use crate::model::kernels::test_blocks::{Rng, random_q4_k};
        use crate::model::linear::tests::odd_offset_gguf;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("odd.gguf");
        let header = odd_offset_gguf(&path, &random_q4_k(&mut Rng(5), 8), 8, 256);
        let mut reader = TensorReader::open(&path, &header).expect("reader");
        assert!(reader.in_place("a"));
        let rt = DeviceRuntime::new(Device::Cpu, "cpu");
        let m = rt
            .load_matrix(&mut reader, "a", 8, 256, None)
            .expect("loads");
        assert_eq!(rt.matrix_bytes(&m), 8 * 144);
    }

    #[test]
    fn a_cloned_cache_is_its_own() {
        let rt = DeviceRuntime::new(Device::Cpu, "cpu");
        let mut a = rt.new_kv(2, 2);
        let k = Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 2), &Device::Cpu).expect("k");
        rt.append_kv(&mut a, &k, &k, 0..2).expect("append");
        let b = a.clone();
        let k2 = Tensor::from_vec(vec![9f32; 4], (2, 2), &Device::Cpu).expect("k2");
        a.truncate(0);
        rt.append_kv(&mut a, &k2, &k2, 0..2).expect("overwrite");
        let (kb, _) = b.view().expect("b");
        assert_eq!(
            kb.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("b"),
            [1., 2., 3., 4.]
        );
        assert_eq!(b.len(), 2);
        assert!(a.bytes() >= 2 * 4 * 2);
    }

    #[test]
    fn the_cache_grows_and_keeps_what_it_held() {
        let rt = DeviceRuntime::new(Device::Cpu, "cpu");
        let mut kv = rt.new_kv(1, 1);
        for i in 0..40 {
            let t = Tensor::from_vec(vec![i as f32], (1, 1), &Device::Cpu).expect("t");
            rt.append_kv(&mut kv, &t, &t, 0..1).expect("append");
        }
        let (k, _) = kv.view().expect("view");
        let got = k.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("k");
        assert_eq!(got, (0..40).map(|i| i as f32).collect::<Vec<_>>());
        kv.clear();
        assert_eq!((kv.len(), kv.bytes()), (0, 0));
    }
}
