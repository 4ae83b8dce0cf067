//! Partial offload: a model's last layers on a device (the [`DeviceRuntime`]), the others, the
//! token embedding and the output projection on the CPU (the llama.cpp-exact [`Cpu`] runtime),
//! as llama.cpp's `-ngl N` splits a model that does not fit its GPU (it offloads the last `N`
//! layers; the output projection stays on the CPU until every layer is offloaded).
//!
//! Where a layer lives is decided once, at load, from its tensors' names (`blk.{i}.…`): its
//! matrices go to the side that owns layer `i`. Activations carry their side and move when an
//! operation needs them on the other (a matmul runs where its weights are, so the hidden state
//! crosses once into the device layers and once back out of them per step). Norm weights are
//! small and kept on both sides. A layer's KV cache takes the side of the first keys written to
//! it, which is that layer's side.
//!
//! What the split itself plans — how many layers fit a device's budget — is [`plan_offload`].

use std::ops::Range;

use candle_core::Tensor;

use super::{Cpu, DeviceKv, DeviceMatrix, DeviceRuntime, LayerKv, Origin, Runtime, Span};
use crate::model::attention::AttnShape;
use crate::model::config::Activation;
use crate::model::error::ModelError;
use crate::model::kv_cache::LayerCache;
use crate::model::linear::MultiLinear;
use crate::model::rope::Rope;
use crate::model::weights::{Blocks, TensorReader};

/// Layers `first_on_device..layers` on `device`, the rest on `cpu`.
#[derive(Debug, Clone)]
pub struct Split {
    cpu: Cpu,
    device: DeviceRuntime,
    first_on_device: usize,
    layers: usize,
}

impl Split {
    /// The last `on_device` of `layers` layers on `device` (all of them at most).
    pub fn new(device: DeviceRuntime, layers: usize, on_device: usize) -> Split {
        Split {
            cpu: Cpu,
            device,
            first_on_device: layers - on_device.min(layers),
            layers,
        }
    }

    /// Layers on the device.
    pub fn layers_on_device(&self) -> usize {
        self.layers - self.first_on_device
    }

    /// Whether the tensor `name` belongs on the device.
    fn on_device(&self, name: &str) -> bool {
        layer_of(name).is_some_and(|i| i >= self.first_on_device)
    }
}

/// The layer a tensor name (`blk.{i}.…`, or several joined by `+`) belongs to.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// A matrix on one side.
#[derive(Debug)]
pub enum SplitMatrix {
    Host(MultiLinear),
    Device(DeviceMatrix),
}

/// Activations on one side.
#[derive(Debug)]
pub enum SplitAct {
    Host(Vec<f32>),
    Device(Tensor),
}

/// A norm's weights on both sides (they are small; the device copy only with device layers).
#[derive(Debug)]
pub struct SplitVector {
    host: Vec<f32>,
    device: Option<Tensor>,
}

/// A layer's cache on its layer's side: which one is known at the first append.
#[derive(Debug, Clone)]
pub enum SplitKv {
    Unplaced { k_row: usize, v_row: usize },
    Host(LayerCache),
    Device(DeviceKv),
}

impl LayerKv for SplitKv {
    fn len(&self) -> usize {
        match self {
            SplitKv::Unplaced { .. } => 0,
            SplitKv::Host(kv) => kv.len(),
            SplitKv::Device(kv) => kv.len(),
        }
    }
    fn truncate(&mut self, len: usize) {
        match self {
            SplitKv::Unplaced { .. } => {}
            SplitKv::Host(kv) => LayerKv::truncate(kv, len),
            SplitKv::Device(kv) => kv.truncate(len),
        }
    }
    fn clear(&mut self) {
        match self {
            SplitKv::Unplaced { .. } => {}
            SplitKv::Host(kv) => LayerKv::clear(kv),
            SplitKv::Device(kv) => kv.clear(),
        }
    }
    fn bytes(&self) -> usize {
        match self {
            SplitKv::Unplaced { .. } => 0,
            SplitKv::Host(kv) => LayerKv::bytes(kv),
            SplitKv::Device(kv) => kv.bytes(),
        }
    }
}

impl Split {
    fn host(&self, x: &SplitAct) -> Result<Vec<f32>, ModelError> {
        match x {
            SplitAct::Host(v) => Ok(v.clone()),
            SplitAct::Device(t) => self.device.to_host(t.clone()),
        }
    }

    /// `x` on the device, `width` wide.
    fn dev(&self, x: &SplitAct, width: usize) -> Result<Tensor, ModelError> {
        match x {
            SplitAct::Device(t) => Ok(t.clone()),
            SplitAct::Host(v) => self.device.upload(v.clone(), v.len() / width.max(1), width),
        }
    }

    /// `y` on the side of `x`.
    fn beside(&self, x: &SplitAct, y: &SplitAct, width: usize) -> Result<SplitAct, ModelError> {
        Ok(match x {
            SplitAct::Host(_) => SplitAct::Host(self.host(y)?),
            SplitAct::Device(_) => SplitAct::Device(self.dev(y, width)?),
        })
    }
}

/// Width of a device activation's rows (its last dimension).
fn width_of(t: &Tensor) -> usize {
    t.dims().last().copied().unwrap_or(1)
}

impl Runtime for Split {
    type Act = SplitAct;
    type Matrix = SplitMatrix;
    type Vector = SplitVector;
    type Kv = SplitKv;

    fn describe(&self) -> String {
        format!(
            "{} layers of {} on {}, the rest on {}",
            self.layers_on_device(),
            self.layers,
            self.device.describe(),
            self.cpu.describe()
        )
    }

    fn load_matrix(
        &self,
        reader: &mut TensorReader<'_>,
        name: &str,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<SplitMatrix, ModelError> {
        if self.on_device(name) {
            Ok(SplitMatrix::Device(
                self.device.load_matrix(reader, name, rows, cols, bias)?,
            ))
        } else {
            Ok(SplitMatrix::Host(
                self.cpu.load_matrix(reader, name, rows, cols, bias)?,
            ))
        }
    }

    fn load_embedding(
        &self,
        reader: &mut TensorReader<'_>,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<SplitMatrix, ModelError> {
        Ok(SplitMatrix::Host(
            self.cpu.load_embedding(reader, name, rows, cols)?,
        ))
    }

    fn fused(&self, parts: Vec<(Blocks, Option<Vec<f32>>)>) -> Result<SplitMatrix, ModelError> {
        let device = parts.iter().all(|(b, _)| self.on_device(&b.name));
        if device {
            Ok(SplitMatrix::Device(self.device.fused(parts)?))
        } else {
            Ok(SplitMatrix::Host(self.cpu.fused(parts)?))
        }
    }

    fn vector(&self, values: Vec<f32>) -> Result<SplitVector, ModelError> {
        let device = if self.layers_on_device() > 0 {
            Some(self.device.vector(values.clone())?)
        } else {
            None
        };
        Ok(SplitVector {
            host: values,
            device,
        })
    }

    fn matrix_bytes(&self, m: &SplitMatrix) -> usize {
        match m {
            SplitMatrix::Host(m) => self.cpu.matrix_bytes(m),
            SplitMatrix::Device(m) => self.device.matrix_bytes(m),
        }
    }

    fn new_kv(&self, k_row: usize, v_row: usize) -> SplitKv {
        SplitKv::Unplaced { k_row, v_row }
    }

    fn embed(&self, m: &SplitMatrix, tokens: &[u32]) -> Result<SplitAct, ModelError> {
        match m {
            SplitMatrix::Host(m) => Ok(SplitAct::Host(self.cpu.embed(m, tokens)?)),
            SplitMatrix::Device(m) => Ok(SplitAct::Device(self.device.embed(m, tokens)?)),
        }
    }

    fn matmul(
        &self,
        m: &SplitMatrix,
        x: &SplitAct,
        origins: &[Origin],
    ) -> Result<SplitAct, ModelError> {
        match m {
            SplitMatrix::Host(m) => {
                let x = match x {
                    SplitAct::Host(v) => std::borrow::Cow::Borrowed(v),
                    SplitAct::Device(t) => std::borrow::Cow::Owned(self.device.to_host(t.clone())?),
                };
                Ok(SplitAct::Host(self.cpu.matmul(m, &x, origins)?))
            }
            SplitMatrix::Device(dm) => {
                let x = self.dev(x, dm.cols())?;
                Ok(SplitAct::Device(self.device.matmul(dm, &x, origins)?))
            }
        }
    }

    fn rms_norm(&self, x: &mut SplitAct, w: &SplitVector, eps: f32) -> Result<(), ModelError> {
        match x {
            SplitAct::Host(v) => self.cpu.rms_norm(v, &w.host, eps),
            SplitAct::Device(t) => {
                let w = w.device.as_ref().ok_or_else(|| {
                    ModelError::Unsupported("a norm on the device with no device copy".into())
                })?;
                self.device.rms_norm(t, w, eps)
            }
        }
    }

    fn scale(&self, x: &mut SplitAct, s: f32) -> Result<(), ModelError> {
        match x {
            SplitAct::Host(v) => self.cpu.scale(v, s),
            SplitAct::Device(t) => self.device.scale(t, s),
        }
    }

    fn add(&self, x: &mut SplitAct, y: &SplitAct) -> Result<(), ModelError> {
        let width = match x {
            SplitAct::Device(t) => width_of(t),
            SplitAct::Host(_) => 1,
        };
        let y = self.beside(x, y, width)?;
        match (x, &y) {
            (SplitAct::Host(a), SplitAct::Host(b)) => self.cpu.add(a, b),
            (SplitAct::Device(a), SplitAct::Device(b)) => self.device.add(a, b),
            _ => Err(ModelError::Unsupported("activations on two sides".into())),
        }
    }

    fn copy(&self, x: &SplitAct) -> Result<SplitAct, ModelError> {
        Ok(match x {
            SplitAct::Host(v) => SplitAct::Host(self.cpu.copy(v)?),
            SplitAct::Device(t) => SplitAct::Device(self.device.copy(t)?),
        })
    }

    fn gated(
        &self,
        gate_up: &SplitAct,
        ffn: usize,
        activation: Activation,
    ) -> Result<SplitAct, ModelError> {
        Ok(match gate_up {
            SplitAct::Host(v) => SplitAct::Host(self.cpu.gated(v, ffn, activation)?),
            SplitAct::Device(t) => SplitAct::Device(self.device.gated(t, ffn, activation)?),
        })
    }

    fn split_columns(&self, x: &SplitAct, widths: &[usize]) -> Result<Vec<SplitAct>, ModelError> {
        Ok(match x {
            SplitAct::Host(v) => self
                .cpu
                .split_columns(v, widths)?
                .into_iter()
                .map(SplitAct::Host)
                .collect(),
            SplitAct::Device(t) => self
                .device
                .split_columns(t, widths)?
                .into_iter()
                .map(SplitAct::Device)
                .collect(),
        })
    }

    fn gather_rows(
        &self,
        x: &SplitAct,
        width: usize,
        rows: &[usize],
    ) -> Result<SplitAct, ModelError> {
        Ok(match x {
            SplitAct::Host(v) => SplitAct::Host(self.cpu.gather_rows(v, width, rows)?),
            SplitAct::Device(t) => SplitAct::Device(self.device.gather_rows(t, width, rows)?),
        })
    }

    fn rope(
        &self,
        x: &mut SplitAct,
        rope: &Rope,
        n_heads: usize,
        head_dim: usize,
        spans: &[Span],
    ) -> Result<(), ModelError> {
        match x {
            SplitAct::Host(v) => self.cpu.rope(v, rope, n_heads, head_dim, spans),
            SplitAct::Device(t) => self.device.rope(t, rope, n_heads, head_dim, spans),
        }
    }

    fn append_kv(
        &self,
        kv: &mut SplitKv,
        k: &SplitAct,
        v: &SplitAct,
        rows: Range<usize>,
    ) -> Result<(), ModelError> {
        if let SplitKv::Unplaced { k_row, v_row } = *kv {
            *kv = match k {
                SplitAct::Host(_) => SplitKv::Host(self.cpu.new_kv(k_row, v_row)),
                SplitAct::Device(_) => SplitKv::Device(self.device.new_kv(k_row, v_row)),
            };
        }
        match kv {
            SplitKv::Host(cache) => {
                let (k, v) = (self.host(k)?, self.host(v)?);
                self.cpu.append_kv(cache, &k, &v, rows)
            }
            SplitKv::Device(cache) => {
                let (k, v) = (self.dev(k, cache.k_row())?, self.dev(v, cache.v_row())?);
                self.device.append_kv(cache, &k, &v, rows)
            }
            SplitKv::Unplaced { .. } => Err(ModelError::EmptyInput),
        }
    }

    fn attention(
        &self,
        q: &SplitAct,
        entries: &[(Span, &SplitKv)],
        shape: &AttnShape,
    ) -> Result<SplitAct, ModelError> {
        let on_device = entries
            .iter()
            .any(|(_, kv)| matches!(kv, SplitKv::Device(_)));
        let mixed = || ModelError::Unsupported("one layer's caches on two sides".into());
        if on_device {
            let caches = entries
                .iter()
                .map(|&(span, kv)| match kv {
                    SplitKv::Device(kv) => Ok((span, kv)),
                    _ => Err(mixed()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let q = self.dev(q, shape.n_heads * shape.head_dim)?;
            Ok(SplitAct::Device(self.device.attention(&q, &caches, shape)?))
        } else {
            let caches = entries
                .iter()
                .map(|&(span, kv)| match kv {
                    SplitKv::Host(kv) => Ok((span, kv)),
                    _ => Err(mixed()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let q = self.host(q)?;
            Ok(SplitAct::Host(self.cpu.attention(&q, &caches, shape)?))
        }
    }

    fn to_host(&self, x: SplitAct) -> Result<Vec<f32>, ModelError> {
        match x {
            SplitAct::Host(v) => Ok(v),
            SplitAct::Device(t) => self.device.to_host(t),
        }
    }
}

/// How many of a model's layers to put on a device with `budget` bytes free, llama.cpp's
/// `-ngl` chosen from memory: each offloaded layer costs its weights and its share of the KV
/// budget on the device (`layer_bytes[i]`: layer `i`'s weights; `kv_per_layer`: one layer's KV
/// cache at the model's KV budget; `overhead`: what the device needs whatever the split, e.g.
/// one step's activations). The last layers go first, as llama.cpp offloads them; at most
/// `cap` of them (a configured layer count). `None` when not even one layer fits (the model
/// stays on the CPU).
pub fn plan_offload(
    layer_bytes: &[u64],
    kv_per_layer: u64,
    overhead: u64,
    budget: u64,
    cap: usize,
) -> Option<usize> {
    let mut used = overhead;
    let mut n = 0;
    for &w in layer_bytes.iter().rev().take(cap) {
        let next = used.saturating_add(w).saturating_add(kv_per_layer);
        if next > budget {
            break;
        }
        used = next;
        n += 1;
    }
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_placed_by_their_tensor_names() {
        let s = Split::new(DeviceRuntime::new(candle_core::Device::Cpu, "cpu"), 4, 1);
        assert!(s.on_device("blk.3.attn_q.weight"));
        assert!(s.on_device("blk.3.attn_q.weight+blk.3.attn_k.weight"));
        assert!(!s.on_device("blk.2.ffn_down.weight"));
        assert!(!s.on_device("token_embd.weight"));
        assert!(!s.on_device("output.weight"));
        assert_eq!(s.layers_on_device(), 1);
        assert_eq!(
            Split::new(DeviceRuntime::new(candle_core::Device::Cpu, "c"), 4, 9).layers_on_device(),
            4,
            "never more than the model has"
        );
    }

    #[test]
    fn the_plan_offloads_the_last_layers_that_fit() {
        let layers = [100, 100, 100, 100];
        let all = usize::MAX;
        assert_eq!(plan_offload(&layers, 10, 50, 1000, all), Some(4), "all fit");
        assert_eq!(plan_offload(&layers, 10, 50, 50 + 3 * 110, all), Some(3));
        assert_eq!(
            plan_offload(&layers, 10, 50, 50 + 3 * 110 - 1, all),
            Some(2)
        );
        assert_eq!(
            plan_offload(&layers, 10, 50, 159, all),
            None,
            "not one layer"
        );
        assert_eq!(plan_offload(&[], 10, 0, 1000, all), None, "no layers");
        assert_eq!(
            plan_offload(&layers, 10, 50, 1000, 2),
            Some(2),
            "a configured cap"
        );
        assert_eq!(
            plan_offload(&layers, 10, 50, 50 + 110, 3),
            Some(1),
            "memory first"
        );
        assert_eq!(plan_offload(&layers, 10, 50, 1000, 0), None);
    }
}
