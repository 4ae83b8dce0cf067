//! Partial offload: a model's last layers on one or several devices (each a
//! [`DeviceRuntime`]), the others, the token embedding and the output projection on the CPU
//! (the llama.cpp-exact [`Cpu`] runtime), as llama.cpp's `-ngl N` splits a model that does not
//! fit its GPU (it offloads the last `N` layers; the output projection stays on the CPU until
//! every layer is offloaded) and spreads the offloaded layers over several GPUs by layer.
//!
//! Where a layer lives is decided once, at load, from its tensors' names (`blk.{i}.…`): its
//! matrices go to the side that owns layer `i`. Activations carry their side and move when an
//! operation needs them elsewhere (a matmul runs where its weights are, so the hidden state
//! crosses once into each device's layers and once back out per step; between two devices it
//! goes through host memory). Norm weights are small and kept on every side. A layer's KV
//! cache takes the side of the first keys written to it, which is that layer's side.
//!
//! What the split itself plans — how many layers fit each device's budget — is
//! [`plan_offload_across`].

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

/// One device of a split and the layers it holds.
#[derive(Debug, Clone)]
struct Stage {
    runtime: DeviceRuntime,
    layers: Range<usize>,
}

/// Layers on devices (each device a consecutive range, together the model's last layers), the
/// rest on `cpu`.
#[derive(Debug, Clone)]
pub struct Split {
    cpu: Cpu,
    /// Primary first: the device that takes the model's last layers, then the ones before.
    stages: Vec<Stage>,
    layers: usize,
}

impl Split {
    /// The last `on_device` of `layers` layers on `device` (all of them at most).
    pub fn new(device: DeviceRuntime, layers: usize, on_device: usize) -> Split {
        Split::across(vec![(device, on_device)], layers)
    }

    /// A model spanning several devices: the first takes the last layers (its count of them),
    /// the next the layers before those, and so on; the CPU runs the layers left before them.
    /// Counts beyond the model's layers are cut; devices left with none take no part.
    pub fn across(devices: Vec<(DeviceRuntime, usize)>, layers: usize) -> Split {
        let mut end = layers;
        let mut stages = Vec::with_capacity(devices.len());
        for (runtime, n) in devices {
            let first = end - n.min(end);
            if first < end {
                stages.push(Stage {
                    runtime,
                    layers: first..end,
                });
            }
            end = first;
        }
        Split {
            cpu: Cpu,
            stages,
            layers,
        }
    }

    /// Layers on devices, all together.
    pub fn layers_on_device(&self) -> usize {
        self.stages.iter().map(|s| s.layers.len()).sum()
    }

    /// Each device's name and layer count, primary first.
    pub fn layers_per_device(&self) -> Vec<(String, usize)> {
        self.stages
            .iter()
            .map(|s| (s.runtime.describe(), s.layers.len()))
            .collect()
    }

    /// The stage the tensor `name` belongs on; `None`: the CPU.
    fn stage_of(&self, name: &str) -> Option<usize> {
        let layer = layer_of(name)?;
        self.stages.iter().position(|s| s.layers.contains(&layer))
    }

    fn device(&self, stage: usize) -> &DeviceRuntime {
        &self.stages[stage].runtime
    }
}

/// The layer a tensor name (`blk.{i}.…`, or several joined by `+`) belongs to.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// A matrix on one side (a device by its stage).
#[derive(Debug)]
pub enum SplitMatrix {
    Host(MultiLinear),
    Device(usize, DeviceMatrix),
}

/// Activations on one side.
#[derive(Debug)]
pub enum SplitAct {
    Host(Vec<f32>),
    Device(usize, Tensor),
}

/// A norm's weights on every side (they are small): the host's, and one copy per device.
#[derive(Debug)]
pub struct SplitVector {
    host: Vec<f32>,
    device: Vec<Tensor>,
}

/// A layer's cache on its layer's side: which one is known at the first append.
#[derive(Debug, Clone)]
pub enum SplitKv {
    Unplaced { k_row: usize, v_row: usize },
    Host(LayerCache),
    Device(usize, DeviceKv),
}

impl LayerKv for SplitKv {
    fn len(&self) -> usize {
        match self {
            SplitKv::Unplaced { .. } => 0,
            SplitKv::Host(kv) => kv.len(),
            SplitKv::Device(_, kv) => kv.len(),
        }
    }
    fn truncate(&mut self, len: usize) {
        match self {
            SplitKv::Unplaced { .. } => {}
            SplitKv::Host(kv) => LayerKv::truncate(kv, len),
            SplitKv::Device(_, kv) => kv.truncate(len),
        }
    }
    fn clear(&mut self) {
        match self {
            SplitKv::Unplaced { .. } => {}
            SplitKv::Host(kv) => LayerKv::clear(kv),
            SplitKv::Device(_, kv) => kv.clear(),
        }
    }
    fn bytes(&self) -> usize {
        match self {
            SplitKv::Unplaced { .. } => 0,
            SplitKv::Host(kv) => LayerKv::bytes(kv),
            SplitKv::Device(_, kv) => kv.bytes(),
        }
    }
}

impl Split {
    fn host(&self, x: &SplitAct) -> Result<Vec<f32>, ModelError> {
        match x {
            SplitAct::Host(v) => Ok(v.clone()),
            SplitAct::Device(s, t) => self.device(*s).to_host(t.clone()),
        }
    }

    /// `x` on stage `stage`'s device, `width` wide (from another device through the host).
    fn dev(&self, x: &SplitAct, stage: usize, width: usize) -> Result<Tensor, ModelError> {
        match x {
            SplitAct::Device(s, t) if *s == stage => Ok(t.clone()),
            _ => {
                let v = self.host(x)?;
                let rows = v.len() / width.max(1);
                self.device(stage).upload(v, rows, width)
            }
        }
    }

    /// `y` on the side of `x`.
    fn beside(&self, x: &SplitAct, y: &SplitAct, width: usize) -> Result<SplitAct, ModelError> {
        Ok(match x {
            SplitAct::Host(_) => SplitAct::Host(self.host(y)?),
            SplitAct::Device(s, _) => SplitAct::Device(*s, self.dev(y, *s, width)?),
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
        let mut devices = self.stages.iter();
        let Some(first) = devices.next() else {
            return format!(
                "0 layers of {} on a device, all on {}",
                self.layers,
                self.cpu.describe()
            );
        };
        let mut out = format!(
            "{} layers of {} on {}",
            first.layers.len(),
            self.layers,
            first.runtime.describe()
        );
        for s in devices {
            out.push_str(&format!(", {} on {}", s.layers.len(), s.runtime.describe()));
        }
        out.push_str(&format!(", the rest on {}", self.cpu.describe()));
        out
    }

    fn load_matrix(
        &self,
        reader: &mut TensorReader<'_>,
        name: &str,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<SplitMatrix, ModelError> {
        Ok(match self.stage_of(name) {
            Some(s) => SplitMatrix::Device(
                s,
                self.device(s).load_matrix(reader, name, rows, cols, bias)?,
            ),
            None => SplitMatrix::Host(self.cpu.load_matrix(reader, name, rows, cols, bias)?),
        })
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
        let stage = parts.first().and_then(|(b, _)| self.stage_of(&b.name));
        let together = parts.iter().all(|(b, _)| self.stage_of(&b.name) == stage);
        match stage {
            Some(s) if together => Ok(SplitMatrix::Device(s, self.device(s).fused(parts)?)),
            _ => Ok(SplitMatrix::Host(self.cpu.fused(parts)?)),
        }
    }

    fn vector(&self, values: Vec<f32>) -> Result<SplitVector, ModelError> {
        let device = self
            .stages
            .iter()
            .map(|s| s.runtime.vector(values.clone()))
            .collect::<Result<_, _>>()?;
        Ok(SplitVector {
            host: values,
            device,
        })
    }

    fn matrix_bytes(&self, m: &SplitMatrix) -> usize {
        match m {
            SplitMatrix::Host(m) => self.cpu.matrix_bytes(m),
            SplitMatrix::Device(s, m) => self.device(*s).matrix_bytes(m),
        }
    }

    fn matrix_mapped_bytes(&self, m: &SplitMatrix) -> usize {
        match m {
            SplitMatrix::Host(m) => self.cpu.matrix_mapped_bytes(m),
            SplitMatrix::Device(s, m) => self.device(*s).matrix_mapped_bytes(m),
        }
    }

    fn new_kv(&self, k_row: usize, v_row: usize) -> SplitKv {
        SplitKv::Unplaced { k_row, v_row }
    }

    fn embed(&self, m: &SplitMatrix, tokens: &[u32]) -> Result<SplitAct, ModelError> {
        match m {
            SplitMatrix::Host(m) => Ok(SplitAct::Host(self.cpu.embed(m, tokens)?)),
            SplitMatrix::Device(s, m) => {
                Ok(SplitAct::Device(*s, self.device(*s).embed(m, tokens)?))
            }
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
                    device => std::borrow::Cow::Owned(self.host(device)?),
                };
                Ok(SplitAct::Host(self.cpu.matmul(m, &x, origins)?))
            }
            SplitMatrix::Device(s, dm) => {
                let x = self.dev(x, *s, dm.cols())?;
                Ok(SplitAct::Device(
                    *s,
                    self.device(*s).matmul(dm, &x, origins)?,
                ))
            }
        }
    }

    fn rms_norm(&self, x: &mut SplitAct, w: &SplitVector, eps: f32) -> Result<(), ModelError> {
        match x {
            SplitAct::Host(v) => self.cpu.rms_norm(v, &w.host, eps),
            SplitAct::Device(s, t) => {
                let w = w.device.get(*s).ok_or_else(|| {
                    ModelError::Unsupported("a norm on a device with no copy there".into())
                })?;
                self.device(*s).rms_norm(t, w, eps)
            }
        }
    }

    fn scale(&self, x: &mut SplitAct, f: f32) -> Result<(), ModelError> {
        match x {
            SplitAct::Host(v) => self.cpu.scale(v, f),
            SplitAct::Device(s, t) => self.device(*s).scale(t, f),
        }
    }

    fn add(&self, x: &mut SplitAct, y: &SplitAct) -> Result<(), ModelError> {
        let width = match x {
            SplitAct::Device(_, t) => width_of(t),
            SplitAct::Host(_) => 1,
        };
        let y = self.beside(x, y, width)?;
        match (x, &y) {
            (SplitAct::Host(a), SplitAct::Host(b)) => self.cpu.add(a, b),
            (SplitAct::Device(s, a), SplitAct::Device(_, b)) => self.device(*s).add(a, b),
            _ => Err(ModelError::Unsupported("activations on two sides".into())),
        }
    }

    fn copy(&self, x: &SplitAct) -> Result<SplitAct, ModelError> {
        Ok(match x {
            SplitAct::Host(v) => SplitAct::Host(self.cpu.copy(v)?),
            SplitAct::Device(s, t) => SplitAct::Device(*s, self.device(*s).copy(t)?),
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
            SplitAct::Device(s, t) => {
                SplitAct::Device(*s, self.device(*s).gated(t, ffn, activation)?)
            }
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
            SplitAct::Device(s, t) => self
                .device(*s)
                .split_columns(t, widths)?
                .into_iter()
                .map(|t| SplitAct::Device(*s, t))
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
            SplitAct::Device(s, t) => {
                SplitAct::Device(*s, self.device(*s).gather_rows(t, width, rows)?)
            }
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
            SplitAct::Device(s, t) => self.device(*s).rope(t, rope, n_heads, head_dim, spans),
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
                SplitAct::Device(s, _) => SplitKv::Device(*s, self.device(*s).new_kv(k_row, v_row)),
            };
        }
        match kv {
            SplitKv::Host(cache) => {
                let (k, v) = (self.host(k)?, self.host(v)?);
                self.cpu.append_kv(cache, &k, &v, rows)
            }
            SplitKv::Device(s, cache) => {
                let (k, v) = (
                    self.dev(k, *s, cache.k_row())?,
                    self.dev(v, *s, cache.v_row())?,
                );
                self.device(*s).append_kv(cache, &k, &v, rows)
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
        let mixed = || ModelError::Unsupported("one layer's caches on two sides".into());
        let stage = entries.iter().find_map(|(_, kv)| match kv {
            SplitKv::Device(s, _) => Some(*s),
            _ => None,
        });
        if let Some(s) = stage {
            let caches = entries
                .iter()
                .map(|&(span, kv)| match kv {
                    SplitKv::Device(at, kv) if *at == s => Ok((span, kv)),
                    _ => Err(mixed()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let q = self.dev(q, s, shape.n_heads * shape.head_dim)?;
            Ok(SplitAct::Device(
                s,
                self.device(s).attention(&q, &caches, shape)?,
            ))
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
            SplitAct::Device(s, t) => self.device(s).to_host(t),
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
    let n = plan_offload_across(layer_bytes, kv_per_layer, overhead, &[budget], cap)[0];
    (n > 0).then_some(n)
}

/// [`plan_offload`] over several devices of one node (a model spanning GPUs by layers): the
/// first device takes as many of the last layers as fit its budget, the next as many of the
/// layers before those as fit its own, and so on; each device that takes a layer also needs
/// `overhead`. At most `cap` layers in all. Returns each device's layer count (0: none).
pub fn plan_offload_across(
    layer_bytes: &[u64],
    kv_per_layer: u64,
    overhead: u64,
    budgets: &[u64],
    cap: usize,
) -> Vec<usize> {
    let mut left = layer_bytes.iter().rev().take(cap).peekable();
    budgets
        .iter()
        .map(|&budget| {
            let mut used = overhead;
            let mut n = 0;
            while let Some(&&w) = left.peek() {
                let next = used.saturating_add(w).saturating_add(kv_per_layer);
                if next > budget {
                    break;
                }
                used = next;
                n += 1;
                left.next();
            }
            n
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_placed_by_their_tensor_names() {
        let s = Split::new(DeviceRuntime::new(candle_core::Device::Cpu, "cpu"), 4, 1);
        assert_eq!(s.stage_of("blk.3.attn_q.weight"), Some(0));
        assert_eq!(
            s.stage_of("blk.3.attn_q.weight+blk.3.attn_k.weight"),
            Some(0)
        );
        assert_eq!(s.stage_of("blk.2.ffn_down.weight"), None);
        assert_eq!(s.stage_of("token_embd.weight"), None);
        assert_eq!(s.stage_of("output.weight"), None);
        assert_eq!(s.layers_on_device(), 1);
        assert_eq!(
            Split::new(DeviceRuntime::new(candle_core::Device::Cpu, "c"), 4, 9).layers_on_device(),
            4,
            "never more than the model has"
        );
    }

    #[test]
    fn a_model_spans_several_devices_by_consecutive_layers() {
        let dev = |n: &str| DeviceRuntime::new(candle_core::Device::Cpu, n);
        let s = Split::across(vec![(dev("a"), 2), (dev("b"), 3)], 8);
        assert_eq!(s.stage_of("blk.7.attn_q.weight"), Some(0));
        assert_eq!(s.stage_of("blk.6.ffn_up.weight"), Some(0));
        assert_eq!(s.stage_of("blk.5.ffn_up.weight"), Some(1));
        assert_eq!(s.stage_of("blk.3.ffn_up.weight"), Some(1));
        assert_eq!(s.stage_of("blk.2.ffn_up.weight"), None);
        assert_eq!(s.stage_of("output.weight"), None);
        assert_eq!(s.layers_on_device(), 5);
        assert!(
            s.describe().starts_with(
                "2 layers of 8 on a (candle kernels), 3 on b (candle kernels), the rest on cpu"
            ),
            "{}",
            s.describe()
        );
        // More than the model has: the first takes what it can, the next what is left.
        let s = Split::across(vec![(dev("a"), 6), (dev("b"), 6), (dev("c"), 1)], 8);
        assert_eq!(
            s.layers_per_device(),
            [
                ("a (candle kernels)".to_string(), 6),
                ("b (candle kernels)".to_string(), 2)
            ]
        );
    }

    #[test]
    fn the_plan_fills_each_device_in_turn() {
        let layers = [100u64; 6];
        let all = usize::MAX;
        // Each device: 50 overhead + 110 per layer.
        assert_eq!(
            plan_offload_across(&layers, 10, 50, &[270, 380], all),
            [2, 3]
        );
        assert_eq!(
            plan_offload_across(&layers, 10, 50, &[10_000, 380], all),
            [6, 0]
        );
        assert_eq!(
            plan_offload_across(&layers, 10, 50, &[159, 270], all),
            [0, 2],
            "the first takes none"
        );
        assert_eq!(
            plan_offload_across(&layers, 10, 50, &[270, 380], 3),
            [2, 1],
            "a configured cap"
        );
        assert_eq!(
            plan_offload_across(&layers, 10, 50, &[], all),
            Vec::<usize>::new()
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
