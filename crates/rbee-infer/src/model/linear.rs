//! Quantised linear layers: `y = x · Wᵀ (+ b)` on candle's CPU kernels.
//!
//! Like llama.cpp, the kernels quantise each activation row to the weight's
//! "vec-dot" type (Q8_0 for the 32-value block types, Q8_K for the k-quants,
//! f16 for f16 weights) and take integer dot products, so results agree with
//! llama.cpp up to float summation order. Two kernels are used:
//!
//! - candle's QTensor op for Q4_K and Q6_K: it repacks these into AVX-512 VNNI
//!   tiles on first use (and falls back to the plain kernel where it cannot),
//!   with the same Q8_K activations llama.cpp uses.
//! - `k_quants::matmul` directly for everything else. We avoid the QTensor op
//!   for Q8_0 because its tiled path quantises activations to Q8_K rather than
//!   llama.cpp's Q8_0, which changes results.
//!
//! Projections that read the same input (q/k/v, gate/up) are fused into one
//! matrix when their block types agree: one activation quantisation and one
//! pass of the thread pool instead of three, with identical results.

use candle_core::quantized::{GgmlDType, QStorage, QTensor, QuantizedType};
use candle_core::{CpuStorage, Device, Tensor};

use super::error::{CandleContext, ModelError};
use super::weights::Blocks;

enum Kernel {
    Plain(Box<dyn QuantizedType>),
    Packed(QTensor),
}

/// One weight matrix of `n` output rows over `k` inputs, plus an optional bias.
pub(crate) struct Linear {
    name: String,
    dtype: GgmlDType,
    n: usize,
    k: usize,
    kernel: Kernel,
    bias: Option<Vec<f32>>,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Linear({} {}x{} {:?})",
            self.name, self.n, self.k, self.dtype
        )
    }
}

impl Linear {
    pub fn new(blocks: Blocks, bias: Option<Vec<f32>>) -> Result<Linear, ModelError> {
        let (name, dtype, n, k) = (blocks.name.clone(), blocks.dtype, blocks.rows, blocks.cols);
        if let Some(b) = &bias
            && b.len() != n
        {
            return Err(ModelError::Unsupported(format!(
                "{name}: bias has {} values for {n} outputs",
                b.len()
            )));
        }
        let storage = blocks.into_storage()?;
        let kernel = if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) {
            Kernel::Packed(
                QTensor::new(QStorage::Cpu(storage), (n, k))
                    .context(|| format!("wrapping {name}"))?,
            )
        } else {
            Kernel::Plain(storage)
        };
        Ok(Linear {
            name,
            dtype,
            n,
            k,
            kernel,
            bias,
        })
    }

    /// Stacks matrices with the same input width and block type row-wise, so
    /// one matmul computes all of them; `None` if their types differ.
    pub fn fuse(parts: Vec<(Blocks, Option<Vec<f32>>)>) -> Result<Option<Linear>, ModelError> {
        let Some((first, _)) = parts.first() else {
            return Ok(None);
        };
        let (dtype, k) = (first.dtype, first.cols);
        if parts.iter().any(|(b, _)| b.dtype != dtype || b.cols != k) {
            return Ok(None);
        }
        let any_bias = parts.iter().any(|(_, b)| b.is_some());
        let mut name = Vec::new();
        let mut rows = 0;
        let mut data = Vec::new();
        let mut bias = Vec::new();
        for (blocks, b) in parts {
            name.push(blocks.name);
            rows += blocks.rows;
            data.extend_from_slice(&blocks.data);
            if any_bias {
                bias.extend(b.unwrap_or_else(|| vec![0.0; blocks.rows]));
            }
        }
        let blocks = Blocks {
            name: name.join("+"),
            dtype,
            rows,
            cols: k,
            data,
        };
        Linear::new(blocks, any_bias.then_some(bias)).map(Some)
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Bytes of weight storage.
    pub fn weight_bytes(&self) -> usize {
        match &self.kernel {
            Kernel::Plain(s) => s.storage_size_in_bytes(),
            Kernel::Packed(t) => t.storage_size_in_bytes(),
        }
    }

    /// Rows `ids` of the matrix, dequantised: an embedding lookup.
    pub fn embedding(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let ctx = || format!("embedding lookup in {}", self.name);
        match &self.kernel {
            Kernel::Plain(storage) => match storage.embedding(ids, self.n, self.k).context(ctx)? {
                CpuStorage::F32(v) => Ok(v),
                _ => Err(ModelError::Unsupported(format!(
                    "{}: rows did not dequantise to f32",
                    self.name
                ))),
            },
            Kernel::Packed(qtensor) => Tensor::from_slice(ids, ids.len(), &Device::Cpu)
                .and_then(|ids| qtensor.embedding(&ids))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .context(ctx),
        }
    }

    /// `x` is `m` rows of `k` values; returns `m` rows of `n` values.
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>, ModelError> {
        debug_assert_eq!(x.len(), m * self.k);
        let mut y = match &self.kernel {
            Kernel::Plain(storage) => {
                let mut y = vec![0f32; m * self.n];
                storage
                    .matmul_t((m, self.k, self.n), x, &mut y)
                    .context(|| format!("matmul with {}", self.name))?;
                y
            }
            Kernel::Packed(qtensor) => {
                let ctx = || format!("matmul with {}", self.name);
                Tensor::from_slice(x, (m, self.k), &Device::Cpu)
                    .and_then(|t| t.apply_op1_no_bwd(qtensor))
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .context(ctx)?
            }
        };
        if let Some(bias) = &self.bias {
            for row in y.chunks_exact_mut(self.n) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
        Ok(y)
    }
}

/// Several projections of the same input, computed fused when possible.
/// The output row is the concatenation of the parts' outputs.
#[derive(Debug)]
pub(crate) struct MultiLinear {
    parts: Vec<Linear>,
    widths: Vec<usize>,
}

impl MultiLinear {
    pub fn new(parts: Vec<(Blocks, Option<Vec<f32>>)>) -> Result<MultiLinear, ModelError> {
        let widths: Vec<usize> = parts.iter().map(|(b, _)| b.rows).collect();
        let same_type = parts.windows(2).all(|w| w[0].0.dtype == w[1].0.dtype);
        let parts = if same_type {
            Linear::fuse(parts)?.into_iter().collect()
        } else {
            parts
                .into_iter()
                .map(|(blocks, bias)| Linear::new(blocks, bias))
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(MultiLinear { parts, widths })
    }

    pub fn weight_bytes(&self) -> usize {
        self.parts.iter().map(Linear::weight_bytes).sum()
    }

    /// `m` rows in, `m` rows of `sum(widths)` out.
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>, ModelError> {
        if let [single] = self.parts.as_slice() {
            return single.forward(x, m);
        }
        let total: usize = self.widths.iter().sum();
        let mut out = vec![0f32; m * total];
        let mut col = 0;
        for part in &self.parts {
            let n = part.out_dim();
            let y = part.forward(x, m)?;
            for (dst, src) in out.chunks_exact_mut(total).zip(y.chunks_exact(n)) {
                dst[col..col + n].copy_from_slice(src);
            }
            col += n;
        }
        Ok(out)
    }
}
