//! Linear layers `y = x · Wᵀ (+ b)` over quantised weights.
//!
//! The weight types llama.cpp-exact kernels exist for (Q8_0, Q5_0 widened to
//! Q8_0 at load, Q4_K, Q6_K, F32, F16, BF16; see [`kernels`](super::kernels))
//! use them; the others (Q4_0, Q4_1, Q5_1, Q2_K, Q3_K, Q5_K) fall back to
//! candle's kernels, which compute the same products but round differently
//! from llama.cpp (close, not bit-exact).
//!
//! Projections that read the same input (q/k/v, gate/up) are fused into one
//! matrix when their types agree: one activation quantisation and one pass
//! of the thread pool instead of three, with identical results, because
//! every output column is computed independently.

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};

use super::error::{CandleContext, ModelError};
use super::kernels::RowKernel;
use super::kernels::float::{FloatKind, FloatMatrix};
use super::kernels::q4_k::Q4KMatrix;
use super::kernels::q6_k::Q6KMatrix;
use super::kernels::q8_0::Q8_0Matrix;
use super::weights::{BlockData, Blocks, TensorReader};

/// Where one activation row sits in the batch llama.cpp would run it in: row `row` of a
/// batch of `batch` rows, of sequence `seq`. Some kernels round differently by that place
/// (see [`RowKernel`]); a batched step hands rows of several sequences to one matmul, and
/// each row is computed as its own batch would compute it, so a sequence's results never
/// depend on which others share the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub row: u32,
    pub batch: u32,
    pub seq: u32,
}

impl Origin {
    /// The rows of one batch of `n` rows of sequence `seq`, in order.
    pub fn batch(seq: u32, n: usize) -> impl Iterator<Item = Origin> {
        let batch = n as u32;
        (0..batch).map(move |row| Origin { row, batch, seq })
    }

    /// One row computed alone.
    pub fn single(seq: u32) -> Origin {
        Origin {
            row: 0,
            batch: 1,
            seq,
        }
    }

    fn kernel(&self) -> RowKernel {
        RowKernel::for_row(self.row as usize, self.batch as usize)
    }
}

/// Runs `run(rows_x, m, key)` once per distinct `key(origin)`, on the rows with that key, and
/// puts each result row back in its place: one call (no copies) when every row agrees.
/// Rows with the same key share the weight reads of their call.
fn by_class<K: PartialEq + Copy>(
    x: &[f32],
    k: usize,
    n: usize,
    origins: &[Origin],
    key: impl Fn(&Origin) -> K,
    mut run: impl FnMut(&[f32], usize, K) -> Result<Vec<f32>, ModelError>,
) -> Result<Vec<f32>, ModelError> {
    let Some(first) = origins.first().map(&key) else {
        return Ok(Vec::new());
    };
    if origins.iter().all(|o| key(o) == first) {
        return run(x, origins.len(), first);
    }
    let mut out = vec![0f32; origins.len() * n];
    let mut done = vec![false; origins.len()];
    for i in 0..origins.len() {
        if done[i] {
            continue;
        }
        let class = key(&origins[i]);
        let members: Vec<usize> = (i..origins.len())
            .filter(|&j| !done[j] && key(&origins[j]) == class)
            .collect();
        let mut xs = Vec::with_capacity(members.len() * k);
        for &j in &members {
            xs.extend_from_slice(&x[j * k..(j + 1) * k]);
            done[j] = true;
        }
        let y = run(&xs, members.len(), class)?;
        for (t, &j) in members.iter().enumerate() {
            out[j * n..(j + 1) * n].copy_from_slice(&y[t * n..(t + 1) * n]);
        }
    }
    Ok(out)
}

/// The mapped ranges of `parts` when every one is a Q4_K matrix in place in a mapped file
/// (the Q4_K kernels read ggml's blocks, so these need no copy).
fn in_place_parts(parts: &[&Blocks]) -> Option<Vec<super::mapped::MappedRange>> {
    parts
        .iter()
        .map(|b| match &b.data {
            BlockData::Mapped(r) if b.dtype == GgmlDType::Q4K => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// [`in_place_parts`] of one matrix, as a kernel matrix (an error if its bytes are not whole
/// rows of its shape).
fn in_place(b: &Blocks) -> Option<Result<Q4KMatrix, ModelError>> {
    let ranges = in_place_parts(&[b])?;
    Some(
        Q4KMatrix::mapped(ranges, b.rows, b.cols)
            .ok_or_else(|| shape_error(&b.name, b.dtype, b.rows, b.cols)),
    )
}

enum Kernel {
    Q8_0(Q8_0Matrix),
    Q4K(Q4KMatrix),
    Q6K(Q6KMatrix),
    Float(FloatMatrix),
    /// candle's kernels for the remaining types.
    Candle(QTensor),
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

/// A kernel matrix being filled from ggml block bytes, possibly in chunks.
enum Builder {
    Q8_0(Q8_0Matrix),
    Q4K(Q4KMatrix),
    Q6K(Q6KMatrix),
    Float(FloatMatrix),
    /// Bytes for candle's kernels, collected whole.
    Raw(Vec<u8>),
}

impl Builder {
    fn new(dtype: GgmlDType, n: usize, k: usize) -> Option<Builder> {
        Some(match dtype {
            GgmlDType::Q8_0 => Builder::Q8_0(Q8_0Matrix::empty(n, k)?),
            GgmlDType::Q4K => Builder::Q4K(Q4KMatrix::empty(n, k)?),
            GgmlDType::Q6K => Builder::Q6K(Q6KMatrix::empty(n, k)?),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                let kind = match dtype {
                    GgmlDType::F32 => FloatKind::F32,
                    GgmlDType::F16 => FloatKind::F16,
                    _ => FloatKind::Bf16,
                };
                Builder::Float(FloatMatrix {
                    rows: n,
                    cols: k,
                    kind,
                    w: Vec::with_capacity(n * k),
                })
            }
            _ => Builder::Raw(Vec::new()),
        })
    }

    /// Appends whole blocks; false if they do not fit the shape.
    fn push(&mut self, data: &[u8], dtype: GgmlDType) -> bool {
        match self {
            Builder::Q8_0(m) => m.push(data),
            Builder::Q4K(m) => m.push(data),
            Builder::Q6K(m) => m.push(data),
            Builder::Float(m) => {
                m.w.extend(widen_floats(dtype, data));
                m.w.len() <= m.rows * m.cols
            }
            Builder::Raw(v) => {
                v.extend_from_slice(data);
                true
            }
        }
    }

    fn finish(self, name: &str, dtype: GgmlDType, n: usize, k: usize) -> Option<Kernel> {
        Some(match self {
            Builder::Q8_0(m) => Kernel::Q8_0(m.is_complete().then_some(m)?),
            Builder::Q4K(m) => Kernel::Q4K(m.is_complete().then_some(m)?),
            Builder::Q6K(m) => Kernel::Q6K(m.is_complete().then_some(m)?),
            Builder::Float(m) => Kernel::Float((m.w.len() == n * k).then_some(m)?),
            Builder::Raw(data) => {
                let blocks = Blocks {
                    name: name.to_owned(),
                    dtype,
                    rows: n,
                    cols: k,
                    data: data.into(),
                };
                let expected = n * k / dtype.block_size() * dtype.type_size();
                if blocks.data.len() != expected {
                    return None;
                }
                let storage = blocks.into_storage().ok()?;
                Kernel::Candle(QTensor::new(QStorage::Cpu(storage), (n, k)).ok()?)
            }
        })
    }
}

impl Linear {
    pub fn new(blocks: Blocks, bias: Option<Vec<f32>>) -> Result<Linear, ModelError> {
        let (n, k, dtype) = (blocks.rows, blocks.cols, blocks.dtype);
        if let Some(m) = in_place(&blocks) {
            return Linear::finish(blocks.name, dtype, n, k, Builder::Q4K(m?), bias);
        }
        let mut builder =
            Builder::new(dtype, n, k).ok_or_else(|| shape_error(&blocks.name, dtype, n, k))?;
        if !builder.push(&blocks.data, dtype) {
            return Err(shape_error(&blocks.name, dtype, n, k));
        }
        Linear::finish(blocks.name, dtype, n, k, builder, bias)
    }

    /// Reads weight `name` (`rows × cols`) from the file chunk by chunk,
    /// converting as it goes, so a large matrix (the embedding) never sits in
    /// memory twice; a matrix the reader hands out in place is used in place.
    pub fn load(
        reader: &mut TensorReader<'_>,
        name: &str,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Linear, ModelError> {
        if reader.in_place(name) {
            return Linear::new(reader.matrix(name, rows, cols)?, bias);
        }
        let mut builder = None;
        let mut fits = true;
        let dtype = reader.matrix_chunks(name, rows, cols, |dtype, chunk| {
            let b = match &mut builder {
                Some(b) => b,
                None => builder.insert(
                    Builder::new(dtype, rows, cols)
                        .ok_or_else(|| shape_error(name, dtype, rows, cols))?,
                ),
            };
            fits &= b.push(chunk, dtype);
            Ok(())
        })?;
        let builder = match builder {
            Some(b) if fits => b,
            _ => return Err(shape_error(name, dtype, rows, cols)),
        };
        Linear::finish(name.to_owned(), dtype, rows, cols, builder, bias)
    }

    fn finish(
        name: String,
        dtype: GgmlDType,
        n: usize,
        k: usize,
        builder: Builder,
        bias: Option<Vec<f32>>,
    ) -> Result<Linear, ModelError> {
        if let Some(b) = &bias
            && b.len() != n
        {
            return Err(ModelError::Unsupported(format!(
                "{name}: bias has {} values for {n} outputs",
                b.len()
            )));
        }
        let kernel = builder
            .finish(&name, dtype, n, k)
            .ok_or_else(|| shape_error(&name, dtype, n, k))?;
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
        let blocks: Vec<&Blocks> = parts.iter().map(|(b, _)| b).collect();
        let mapped = in_place_parts(&blocks);
        let mut names = Vec::new();
        let mut rows = 0;
        let mut data = Vec::new();
        let mut bias = Vec::new();
        for (blocks, b) in parts {
            names.push(blocks.name);
            rows += blocks.rows;
            if mapped.is_none() {
                data.extend_from_slice(&blocks.data);
            }
            if any_bias {
                bias.extend(b.unwrap_or_else(|| vec![0.0; blocks.rows]));
            }
        }
        let bias = any_bias.then_some(bias);
        if let Some(ranges) = mapped {
            let m = Q4KMatrix::mapped(ranges, rows, k)
                .ok_or_else(|| shape_error(&names.join("+"), dtype, rows, k))?;
            return Linear::finish(names.join("+"), dtype, rows, k, Builder::Q4K(m), bias)
                .map(Some);
        }
        let blocks = Blocks {
            name: names.join("+"),
            dtype,
            rows,
            cols: k,
            data: BlockData::Owned(data),
        };
        Linear::new(blocks, bias).map(Some)
    }

    /// Whether the weights are used in place from the mapped model file.
    pub fn is_mapped(&self) -> bool {
        matches!(&self.kernel, Kernel::Q4K(m) if m.is_mapped())
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Bytes of weight storage.
    pub fn weight_bytes(&self) -> usize {
        match &self.kernel {
            Kernel::Q8_0(m) => m.bytes(),
            Kernel::Q4K(m) => m.bytes(),
            Kernel::Q6K(m) => m.bytes(),
            Kernel::Float(m) => m.bytes(),
            Kernel::Candle(t) => t.storage_size_in_bytes(),
        }
    }

    /// Rows `ids` of the matrix, dequantised: an embedding lookup.
    pub fn embedding(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::with_capacity(ids.len() * self.k);
        for &id in ids {
            let r = id as usize;
            match &self.kernel {
                Kernel::Q8_0(m) => m.row(r, &mut out),
                Kernel::Q4K(m) => m.row(r, &mut out),
                Kernel::Q6K(m) => m.row(r, &mut out),
                Kernel::Float(m) => m.row(r, &mut out),
                Kernel::Candle(qtensor) => {
                    let row = Tensor::from_slice(&[id], 1, &Device::Cpu)
                        .and_then(|ids| qtensor.embedding(&ids))
                        .and_then(|t| t.flatten_all())
                        .and_then(|t| t.to_vec1::<f32>())
                        .context(|| format!("embedding lookup in {}", self.name))?;
                    out.extend(row);
                }
            }
        }
        Ok(out)
    }

    /// `x` holds one row of `k` values per origin; returns as many rows of `n`.
    pub fn forward(&self, x: &[f32], origins: &[Origin]) -> Result<Vec<f32>, ModelError> {
        let m = origins.len();
        debug_assert_eq!(x.len(), m * self.k);
        let (k, n) = (self.k, self.n);
        let mut y = match &self.kernel {
            // Row-independent arithmetic: every row in one call.
            Kernel::Q8_0(w) => w.matmul(x, m),
            Kernel::Q4K(w) => {
                // Each row gets its own kernel; rows for the 4-row gemm first, so they tile.
                let kernels: Vec<RowKernel> = origins.iter().map(Origin::kernel).collect();
                let mut order: Vec<usize> = (0..m).collect();
                order.sort_by_key(|&i| kernels[i] != RowKernel::Gemm);
                if order.iter().enumerate().all(|(a, &b)| a == b) {
                    w.matmul(x, m, &kernels)
                } else {
                    let mut xs = Vec::with_capacity(x.len());
                    let sorted: Vec<RowKernel> = order.iter().map(|&i| kernels[i]).collect();
                    for &i in &order {
                        xs.extend_from_slice(&x[i * k..(i + 1) * k]);
                    }
                    let ys = w.matmul(&xs, m, &sorted);
                    let mut y = vec![0f32; m * n];
                    for (t, &i) in order.iter().enumerate() {
                        y[i * n..(i + 1) * n].copy_from_slice(&ys[t * n..(t + 1) * n]);
                    }
                    y
                }
            }
            Kernel::Q6K(w) => by_class(
                x,
                k,
                n,
                origins,
                |o| o.batch >= 8,
                |x, m, tiled| Ok(w.matmul(x, m, tiled)),
            )?,
            Kernel::Float(w) => by_class(
                x,
                k,
                n,
                origins,
                |o| o.batch > 1,
                |x, m, batched| Ok(w.matmul(x, m, batched)),
            )?,
            // candle's kernels make no promise about rows: one call per sequence.
            Kernel::Candle(qtensor) => by_class(
                x,
                k,
                n,
                origins,
                |o| o.seq,
                |x, m, _| {
                    Tensor::from_slice(x, (m, k), &Device::Cpu)
                        .and_then(|t| t.apply_op1_no_bwd(qtensor))
                        .and_then(|t| t.flatten_all())
                        .and_then(|t| t.to_vec1::<f32>())
                        .context(|| format!("matmul with {}", self.name))
                },
            )?,
        };
        if let Some(bias) = &self.bias {
            for row in y.chunks_exact_mut(self.n) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
        Ok(y)
    }
}

fn shape_error(name: &str, dtype: GgmlDType, n: usize, k: usize) -> ModelError {
    ModelError::Unsupported(format!(
        "{name}: {dtype:?} data does not match its shape {n}x{k}"
    ))
}

fn widen_floats(dtype: GgmlDType, data: &[u8]) -> Vec<f32> {
    match dtype {
        GgmlDType::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlDType::F16 => data
            .chunks_exact(2)
            .map(|b| super::f16::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        _ => data
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
    }
}

/// Several projections of the same input, computed fused when possible.
/// The output row is the concatenation of the parts' outputs.
#[derive(Debug)]
pub struct MultiLinear {
    parts: Vec<Linear>,
    widths: Vec<usize>,
}

impl MultiLinear {
    pub fn new(parts: Vec<(Blocks, Option<Vec<f32>>)>) -> Result<MultiLinear, ModelError> {
        let widths: Vec<usize> = parts.iter().map(|(b, _)| b.rows).collect();
        if parts.len() == 1 {
            let parts = parts
                .into_iter()
                .map(|(blocks, bias)| Linear::new(blocks, bias))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(MultiLinear { parts, widths });
        }
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

    /// One matrix on its own.
    pub(crate) fn single(linear: Linear) -> MultiLinear {
        MultiLinear {
            widths: vec![linear.out_dim()],
            parts: vec![linear],
        }
    }

    pub fn weight_bytes(&self) -> usize {
        self.parts.iter().map(Linear::weight_bytes).sum()
    }

    /// Of [`weight_bytes`](Self::weight_bytes), those used in place from the mapped file.
    pub fn mapped_bytes(&self) -> usize {
        self.parts
            .iter()
            .filter(|p| p.is_mapped())
            .map(Linear::weight_bytes)
            .sum()
    }

    /// Rows `ids` of a single matrix, dequantised: an embedding lookup.
    pub fn embedding(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        match self.parts.as_slice() {
            [single] => single.embedding(ids),
            _ => Err(ModelError::Unsupported(
                "an embedding lookup in fused projections".into(),
            )),
        }
    }

    /// One row per origin in, as many rows of `sum(widths)` out.
    pub fn forward(&self, x: &[f32], origins: &[Origin]) -> Result<Vec<f32>, ModelError> {
        if let [single] = self.parts.as_slice() {
            return single.forward(x, origins);
        }
        let m = origins.len();
        let total: usize = self.widths.iter().sum();
        let mut out = vec![0f32; m * total];
        let mut col = 0;
        for part in &self.parts {
            let n = part.out_dim();
            let y = part.forward(x, origins)?;
            for (dst, src) in out.chunks_exact_mut(total).zip(y.chunks_exact(n)) {
                dst[col..col + n].copy_from_slice(src);
            }
            col += n;
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use rbee_format::gguf::{GgmlType, GgufFile, GgufWriter};

    use super::*;
    use crate::model::kernels::test_blocks::{Rng, random_q4_k};

    fn outputs(m: &MultiLinear, x: &[f32], rows: usize) -> Vec<Vec<u32>> {
        // A prompt's rows (the gemm rounding) and a decode row (the gemv rounding).
        let prompt = m.forward(x, &Origin::batch(0, rows).collect::<Vec<_>>());
        let decode = m.forward(&x[..x.len() / rows], &[Origin::single(1)]);
        [prompt.unwrap(), decode.unwrap()]
            .iter()
            .map(|y| y.iter().map(|v| v.to_bits()).collect())
            .collect()
    }

    /// Q4_K matrices are used in place from the mapped file, alone and stacked from parts that
    /// lie apart in it, and compute exactly what a copy of the same blocks computes; they keep
    /// working after the reader is gone and the file is unlinked (a store evicting a loaded
    /// model).
    #[test]
    fn q4_k_weights_are_used_in_place_and_compute_what_a_copy_does() {
        let (cols, rows_a, rows_b, m) = (512, 24, 40, 5);
        let mut rng = Rng(29);
        let a = random_q4_k(&mut rng, rows_a * cols / 256);
        let b = random_q4_k(&mut rng, rows_b * cols / 256);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let mut w = GgufWriter::new();
        w.add_tensor(
            "a",
            &[cols as u64, rows_a as u64],
            GgmlType::Q4_K,
            a.clone(),
        )
        .add_tensor("pad", &[7], GgmlType::F32, vec![0u8; 28])
        .add_tensor(
            "b",
            &[cols as u64, rows_b as u64],
            GgmlType::Q4_K,
            b.clone(),
        );
        w.write_file(&path).unwrap();
        let header = GgufFile::open(&path).unwrap();
        let mut reader = TensorReader::open(&path, &header).unwrap();
        assert!(reader.in_place("a") && !reader.in_place("pad"));

        let single =
            MultiLinear::single(Linear::load(&mut reader, "a", rows_a, cols, None).unwrap());
        let bias: Vec<f32> = (0..rows_b).map(|i| i as f32 / 8.0).collect();
        let fused = MultiLinear::new(vec![
            (reader.matrix("a", rows_a, cols).unwrap(), None),
            (
                reader.matrix("b", rows_b, cols).unwrap(),
                Some(bias.clone()),
            ),
        ])
        .unwrap();
        drop(reader);
        for (mapped, bytes) in [
            (&single, single.weight_bytes()),
            (&fused, fused.weight_bytes()),
        ] {
            assert_eq!(mapped.mapped_bytes(), bytes, "{mapped:?} is not in place");
        }
        assert_eq!(single.weight_bytes(), a.len());
        assert_eq!(fused.weight_bytes(), a.len() + b.len());

        let owned = |name: &str, rows, data: &[u8]| Blocks {
            name: name.into(),
            dtype: GgmlDType::Q4K,
            rows,
            cols,
            data: data.to_vec().into(),
        };
        let single_copy = MultiLinear::new(vec![(owned("a", rows_a, &a), None)]).unwrap();
        let fused_copy = MultiLinear::new(vec![
            (owned("a", rows_a, &a), None),
            (owned("b", rows_b, &b), Some(bias)),
        ])
        .unwrap();
        assert_eq!(single_copy.mapped_bytes(), 0);
        assert_eq!(fused_copy.mapped_bytes(), 0);

        std::fs::remove_file(&path).unwrap();
        let x: Vec<f32> = (0..m * cols).map(|_| 2.0 * rng.float()).collect();
        assert_eq!(outputs(&single, &x, m), outputs(&single_copy, &x, m));
        assert_eq!(outputs(&fused, &x, m), outputs(&fused_copy, &x, m));
        // Rows of the second part come from the second range (not the first again).
        let y = fused.forward(&x[..cols], &[Origin::single(0)]).unwrap();
        let y_a = single.forward(&x[..cols], &[Origin::single(0)]).unwrap();
        assert_eq!(&y[..rows_a], &y_a[..]);
        assert_ne!(&y[rows_a..2 * rows_a], &y_a[..]);
        assert_eq!(
            single.embedding(&[3, 0, 23]).unwrap(),
            single_copy.embedding(&[3, 0, 23]).unwrap()
        );
    }

    /// A file whose GGUF alignment is 1 can put a Q4_K matrix at an odd offset: it is used in
    /// place all the same (the kernels read bytes, not aligned words) and computes what a copy
    /// does.
    #[test]
    fn a_q4_k_matrix_at_an_odd_offset_is_used_in_place() {
        let (rows, cols) = (8, 256);
        let a = random_q4_k(&mut Rng(11), rows);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.gguf");
        let header = odd_offset_gguf(&path, &a, rows as u64, cols as u64);
        let mut reader = TensorReader::open(&path, &header).unwrap();
        let mapped = MultiLinear::single(Linear::load(&mut reader, "a", rows, cols, None).unwrap());
        assert_eq!(mapped.mapped_bytes(), a.len());
        let copy = MultiLinear::new(vec![(
            Blocks {
                name: "a".into(),
                dtype: GgmlDType::Q4K,
                rows,
                cols,
                data: a.clone().into(),
            },
            None,
        )])
        .unwrap();
        let x: Vec<f32> = (0..4 * cols).map(|i| (i % 13) as f32 / 6.0 - 1.0).collect();
        assert_eq!(outputs(&mapped, &x, 4), outputs(&copy, &x, 4));
    }

    /// A GGUF (alignment 1) holding Q4_K matrix "a" (`data`, `rows × cols`) at an odd offset.
    pub(crate) fn odd_offset_gguf(
        path: &std::path::Path,
        data: &[u8],
        rows: u64,
        cols: u64,
    ) -> GgufFile {
        for pad in 0..2 {
            let mut w = GgufWriter::new();
            w.set_alignment(1)
                .add("general.name", "x".repeat(pad + 1).as_str())
                .add_tensor("a", &[cols, rows], GgmlType::Q4_K, data.to_vec());
            w.write_file(path).unwrap();
            let header = GgufFile::open(path).unwrap();
            if header.tensor("a").unwrap().offset % 2 == 1 {
                return header;
            }
        }
        unreachable!("one more byte of header moves the data by one");
    }

    /// `RBEE_MMAP=off` copies the same matrices into memory of their own; anything but on/off
    /// is refused with the values it takes.
    #[test]
    fn the_mapping_setting_copies_weights_or_is_refused() {
        let cols = 256;
        let a = random_q4_k(&mut Rng(3), 8);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let mut w = GgufWriter::new();
        w.add_tensor("a", &[cols, 8], GgmlType::Q4_K, a.clone());
        w.write_file(&path).unwrap();
        let header = GgufFile::open(&path).unwrap();
        let mut reader = TensorReader::open(&path, &header).unwrap();
        reader.copy_all();
        assert!(!reader.in_place("a"));
        let copied = MultiLinear::single(Linear::load(&mut reader, "a", 8, 256, None).unwrap());
        assert_eq!((copied.weight_bytes(), copied.mapped_bytes()), (a.len(), 0));

        use crate::model::weights::map_setting;
        for (value, want) in [
            (None, true),
            (Some("on"), true),
            (Some(" off "), false),
            (Some("0"), false),
        ] {
            assert_eq!(map_setting(value).unwrap(), want, "{value:?}");
        }
        let err = map_setting(Some("no")).unwrap_err().to_string();
        assert!(
            err.contains("RBEE_MMAP=\"no\"") && err.contains("\"off\""),
            "{err}"
        );
    }
}
