//! Reading tensors out of a GGUF file (or a safetensors folder, see
//! `safetensors`) as ggml block bytes (which `linear`
//! turns into kernel matrices, or candle storage for the other types).
//!
//! The header comes from `rbee-format`, which has already checked that every
//! tensor lies inside the file, so here we only seek, read and convert. Two
//! conversions happen on the way in:
//!
//! - Q5_0 is repacked to Q8_0. A Q5_0 block is 32 five-bit values and one f16
//!   scale; widening the values to i8 with the same scale is lossless, and
//!   llama.cpp's Q5_0 and Q8_0 dot products round identically, so one kernel
//!   serves both.
//! - Small tensors (norms, biases) become plain `Vec<f32>`.
//!
//! Q4_K matrices are not converted at all: their kernels read ggml's blocks, so
//! [`TensorReader::matrix`] hands them out as ranges of the mapped file
//! ([`BlockData::Mapped`]), used in place for as long as the model is loaded, unless
//! `RBEE_MMAP=off` asks for copies (as llama.cpp's `--no-mmap`: for a file that may change
//! while it is loaded).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use candle_core::CpuStorage;
use candle_core::quantized::{GgmlDType, QuantizedType};
use rbee_format::gguf::{GgmlType, GgufFile, TensorInfo};

use super::error::{CandleContext, ModelError};
use super::mapped::{MappedFile, MappedRange};
use super::safetensors::{Layout, SafetensorsModel, permute_rows};

/// Bytes of one Q5_0 block and of one Q8_0 block (32 values each).
const Q5_0_BLOCK: usize = 22;
const Q8_0_BLOCK: usize = 34;

/// A model's tensor data open for reading: one GGUF file, or the files of a
/// safetensors folder (whose `layout` says which file holds which tensor), each mapped
/// (`mapped`) for as long as the model loads.
pub struct TensorReader<'a> {
    header: &'a GgufFile,
    files: Vec<Arc<MappedFile>>,
    layout: Option<&'a Layout>,
    /// Matrices in their kernel's layout are used in place ([`map_setting`]).
    in_place: bool,
}

/// What `RBEE_MMAP` (its value, None if unset) asks: whether weights in their kernel's layout
/// are used in place from the mapped file (the default) or copied into memory of their own.
pub(crate) fn map_setting(value: Option<&str>) -> Result<bool, ModelError> {
    match value.map(str::trim) {
        None | Some("" | "on" | "1" | "true") => Ok(true),
        Some("off" | "0" | "false") => Ok(false),
        Some(other) => Err(ModelError::Unsupported(format!(
            "RBEE_MMAP={other:?}: use \"on\" (weights used in place from the mapped file, the default) or \"off\" (copied into memory)"
        ))),
    }
}

fn in_place_setting() -> Result<bool, ModelError> {
    map_setting(std::env::var("RBEE_MMAP").ok().as_deref())
}

impl std::fmt::Debug for TensorReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<_> = self.files.iter().map(|f| f.path()).collect();
        f.debug_struct("TensorReader")
            .field("files", &files)
            .finish_non_exhaustive()
    }
}

/// One weight matrix as ggml block bytes: `rows` rows of `cols` values.
pub struct Blocks {
    pub name: String,
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub data: BlockData,
}

/// A matrix's ggml block bytes: converted (or copied) into memory, or in place in the mapped
/// model file.
#[derive(Debug, Clone)]
pub enum BlockData {
    Owned(Vec<u8>),
    Mapped(MappedRange),
}

impl std::ops::Deref for BlockData {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            BlockData::Owned(v) => v,
            BlockData::Mapped(r) => r.bytes(),
        }
    }
}

impl From<Vec<u8>> for BlockData {
    fn from(v: Vec<u8>) -> BlockData {
        BlockData::Owned(v)
    }
}

impl BlockData {
    /// The bytes in memory of their own (a copy when they are mapped).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            BlockData::Owned(v) => v,
            BlockData::Mapped(r) => r.bytes().to_vec(),
        }
    }
}

impl std::fmt::Debug for Blocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{}x{} {:?}]",
            self.name, self.rows, self.cols, self.dtype
        )
    }
}

impl Blocks {
    /// Candle's storage for these blocks.
    pub fn into_storage(self) -> Result<Box<dyn QuantizedType>, ModelError> {
        Ok(self.dtype.from_data(self.candle_bytes()?))
    }

    /// The bytes as candle takes them: candle reinterprets them as its blocks and asserts their
    /// alignment (2 for f16 scales, 4 for f32). Converted bytes (allocator memory) have it; bytes
    /// in place in a file whose GGUF alignment is smaller are copied first.
    pub fn candle_bytes(&self) -> Result<Cow<'_, [u8]>, ModelError> {
        let align = if self.dtype == GgmlDType::F32 { 4 } else { 2 };
        let aligned = |b: &[u8]| (b.as_ptr() as usize).is_multiple_of(align);
        let data = if aligned(&self.data) {
            Cow::Borrowed(&*self.data)
        } else {
            Cow::Owned(self.data.to_vec())
        };
        if !aligned(&data) {
            return Err(ModelError::Unsupported(format!(
                "{}: cannot get aligned memory for its blocks",
                self.name
            )));
        }
        Ok(data)
    }
}

impl<'a> TensorReader<'a> {
    pub fn open(path: &Path, header: &'a GgufFile) -> Result<Self, ModelError> {
        Ok(TensorReader {
            header,
            files: vec![open_file(path)?],
            layout: None,
            in_place: in_place_setting()?,
        })
    }

    /// The tensors of a safetensors folder, under their GGUF names.
    pub fn open_safetensors(model: &'a SafetensorsModel) -> Result<Self, ModelError> {
        Ok(TensorReader {
            header: model.header(),
            files: model
                .layout
                .files
                .iter()
                .map(|p| open_file(p))
                .collect::<Result<_, _>>()?,
            layout: Some(&model.layout),
            in_place: in_place_setting()?,
        })
    }

    pub fn info(&self, name: &str) -> Option<&'a TensorInfo> {
        self.header.tensor(name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.header.tensor(name).is_some()
            || self.layout.is_some_and(|l| l.generated.contains_key(name))
    }

    /// The file holding `info`'s bytes.
    fn file_for(&self, info: &TensorInfo) -> Result<&Arc<MappedFile>, ModelError> {
        let index = match self.layout {
            Some(l) => *l
                .file_of
                .get(&info.name)
                .ok_or_else(|| ModelError::MissingTensor(info.name.clone()))?,
            None => 0,
        };
        self.files
            .get(index)
            .ok_or_else(|| ModelError::MissingTensor(info.name.clone()))
    }

    /// Copies every matrix into memory of its own, as `RBEE_MMAP=off` does.
    #[cfg(test)]
    pub(crate) fn copy_all(&mut self) {
        self.in_place = false;
    }

    /// `info`'s bytes, in place in the mapped file.
    fn bytes_of(&self, info: &TensorInfo) -> Result<&[u8], ModelError> {
        let file = self.file_for(info)?;
        file.bytes(info.offset, info.size)
            .ok_or_else(|| ModelError::Io {
                path: file.path().to_owned(),
                tensor: info.name.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the tensor's bytes lie past the end of the file (was it truncated after it was checked?)",
                ),
            })
    }

    /// Heads whose rows must be permuted on the way in (safetensors llama q/k).
    fn permuted_heads(&self, name: &str) -> Option<usize> {
        self.layout.and_then(|l| l.permute.get(name).copied())
    }

    fn raw(&mut self, info: &TensorInfo) -> Result<Vec<u8>, ModelError> {
        if usize::try_from(info.size).is_err() {
            return Err(ModelError::Unsupported(format!(
                "{}: {} bytes do not fit in memory",
                info.name, info.size
            )));
        }
        let heads = self.permuted_heads(&info.name);
        let mut data = self.bytes_of(info)?.to_vec();
        self.file_for(info)?.release(info.offset, info.size);
        if let Some(heads) = heads {
            // A row is dims[0] values of a matrix (a bias has one value per row).
            let per_row = if info.dims.len() < 2 { 1 } else { info.dims[0] };
            let row_bytes = (per_row * info.dtype.type_size() / info.dtype.block_size()) as usize;
            data = permute_rows(&data, heads, row_bytes).ok_or_else(|| {
                ModelError::Unsupported(format!(
                    "{}: {} rows cannot be split into {heads} heads of pairs",
                    info.name,
                    data.len() / row_bytes.max(1)
                ))
            })?;
        }
        Ok(data)
    }

    /// Whether [`matrix`](Self::matrix) hands `name` out in place (a Q4_K matrix whose rows
    /// need no permuting).
    pub fn in_place(&self, name: &str) -> bool {
        self.in_place
            && self.info(name).is_some_and(|info| {
                info.dtype == GgmlType::Q4_K && self.permuted_heads(name).is_none()
            })
    }

    /// A 2-D weight stored as ggml `[cols, rows]`, checked against the expected shape; in place
    /// in the mapped file where [`in_place`](Self::in_place) says so.
    pub fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Blocks, ModelError> {
        let info = self
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        check_shape(info, &[cols as u64, rows as u64])?;
        let dtype = candle_dtype(info)?;
        if self.in_place(name) {
            // The bytes lie inside the file (else `bytes_of` says they lie past its end).
            self.bytes_of(info)?;
            let range = self
                .file_for(info)?
                .keep(info.offset, info.size)
                .ok_or_else(|| ModelError::Unsupported(format!("{name}: cannot map its bytes")))?;
            return Ok(Blocks {
                name: name.to_owned(),
                dtype,
                rows,
                cols,
                data: BlockData::Mapped(range),
            });
        }
        let mut data = self.raw(info)?;
        let mut dtype_out = dtype;
        if dtype == GgmlDType::Q5_0 {
            data = q5_0_to_q8_0(&data);
            dtype_out = GgmlDType::Q8_0;
        }
        Ok(Blocks {
            name: name.to_owned(),
            dtype: dtype_out,
            rows,
            cols,
            data: BlockData::Owned(data),
        })
    }

    /// Streams a 2-D weight (checked as in [`matrix`](Self::matrix)) to
    /// `sink` in chunks of whole blocks, Q5_0 already widened to Q8_0;
    /// returns the (widened) type.
    pub fn matrix_chunks(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        mut sink: impl FnMut(GgmlDType, &[u8]) -> Result<(), ModelError>,
    ) -> Result<GgmlDType, ModelError> {
        const CHUNK: u64 = 4 << 20;
        let info = self
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        check_shape(info, &[cols as u64, rows as u64])?;
        let dtype = candle_dtype(info)?;
        if self.permuted_heads(name).is_some() {
            // Rows move across the whole tensor: read it at once (q/k are small).
            sink(dtype, &self.raw(info)?)?;
            return Ok(dtype);
        }
        // Whole blocks at a time, so a Q5_0 widening never holds more than one chunk.
        let block = info.dtype.type_size() as usize;
        let step = (CHUNK as usize / block).max(1) * block;
        let file = self.file_for(info)?;
        let mut at = info.offset;
        for chunk in self.bytes_of(info)?.chunks(step) {
            if dtype == GgmlDType::Q5_0 {
                sink(GgmlDType::Q8_0, &q5_0_to_q8_0(chunk))?;
            } else {
                sink(dtype, chunk)?;
            }
            // Converted: its file pages need not count in this process's memory any more.
            file.release(at, chunk.len() as u64);
            at += chunk.len() as u64;
        }
        Ok(if dtype == GgmlDType::Q5_0 {
            GgmlDType::Q8_0
        } else {
            dtype
        })
    }

    /// A 1-D tensor of `len` values (norm weights, biases), as f32.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        if let Some(v) = self.layout.and_then(|l| l.generated.get(name)) {
            if v.len() != len {
                return Err(ModelError::TensorShape {
                    tensor: name.to_owned(),
                    found: vec![v.len() as u64],
                    expected: vec![len as u64],
                });
            }
            return Ok(v.clone());
        }
        let info = self
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        check_shape(info, &[len as u64])?;
        let dtype = candle_dtype(info)?;
        let data = self.raw(info)?;
        if dtype == GgmlDType::F32 {
            return Ok(data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect());
        }
        let storage = dtype.from_data(Cow::Owned(data));
        match storage
            .dequantize(len)
            .context(|| format!("dequantizing {name}"))?
        {
            CpuStorage::F32(v) => Ok(v),
            _ => Err(ModelError::Unsupported(format!(
                "{name}: dequantized to a non-f32 type"
            ))),
        }
    }

    pub fn optional_vector(
        &mut self,
        name: &str,
        len: usize,
    ) -> Result<Option<Vec<f32>>, ModelError> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Bytes a 2-D weight occupies once loaded into its kernel's layout (see
/// `kernels`): Q8_0 and Q5_0 as f32 scales plus i8 codes, Q4_K its file bytes (used in
/// place: page cache, but resident all the same), Q6_K its kernels' blocks, float types
/// widened to f32. 1-D tensors stay f32.
pub(crate) fn loaded_size(info: &TensorInfo) -> u64 {
    let n = info.n_elements();
    if info.dims.len() < 2 {
        return n * 4;
    }
    match info.dtype {
        GgmlType::Q8_0 | GgmlType::Q5_0 => n / 32 * 36,
        GgmlType::Q4_K => n / 256 * super::kernels::q4_k::LOADED_BLOCK_BYTES as u64,
        GgmlType::Q6_K => n / 256 * super::kernels::q6_k::LOADED_BLOCK_BYTES as u64,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => n * 4,
        _ => info.size,
    }
}

fn open_file(path: &Path) -> Result<Arc<MappedFile>, ModelError> {
    MappedFile::open(path)
        .map(Arc::new)
        .map_err(|source| ModelError::Io {
            path: path.to_owned(),
            tensor: String::new(),
            source,
        })
}

fn check_shape(info: &TensorInfo, expected: &[u64]) -> Result<(), ModelError> {
    if info.dims != expected {
        return Err(ModelError::TensorShape {
            tensor: info.name.clone(),
            found: info.dims.clone(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

/// The candle block type for a GGUF tensor type, for the types candle can compute with.
pub(crate) fn candle_dtype(info: &TensorInfo) -> Result<GgmlDType, ModelError> {
    Ok(match info.dtype {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        dtype => {
            return Err(ModelError::TensorType {
                tensor: info.name.clone(),
                dtype,
            });
        }
    })
}

/// Widens Q5_0 blocks to Q8_0 blocks with the same scale (lossless).
///
/// Q5_0 (ggml `block_q5_0`): f16 `d`, u32 `qh` (bit j = high bit of value j),
/// 16 bytes `qs` (value j in the low nibble of byte j, value j+16 in the high
/// nibble). Value = (5-bit code - 16) * d. Q8_0: f16 `d`, then 32 i8 values.
pub(crate) fn q5_0_to_q8_0(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / Q5_0_BLOCK * Q8_0_BLOCK);
    for block in src.chunks_exact(Q5_0_BLOCK) {
        let (d, rest) = block.split_at(2);
        let (qh, qs) = rest.split_at(4);
        let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        out.extend_from_slice(d);
        let code = |j: usize, nibble: u8| -> u8 {
            let high = ((qh >> j) & 1) as u8;
            // In -16..=15, stored as the i8's two's-complement byte.
            (nibble | (high << 4)).wrapping_sub(16)
        };
        for (j, &q) in qs.iter().enumerate() {
            out.push(code(j, q & 0x0f));
        }
        for (j, &q) in qs.iter().enumerate() {
            out.push(code(j + 16, q >> 4));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q5_0_repack_is_lossless() {
        // Quantise a ramp to Q5_0 with candle, repack, and compare dequantised values.
        let xs: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut q5 = GgmlDType::Q5_0.cpu_zeros(xs.len());
        q5.from_float(&xs);
        let q5_bytes: Vec<u8> = {
            // Round-trip through the public block-bytes view.
            let t = candle_core::quantized::QTensor::new(
                candle_core::quantized::QStorage::Cpu(q5),
                (xs.len(),),
            )
            .unwrap();
            t.data().unwrap().into_owned()
        };
        let q8 = GgmlDType::Q8_0.from_data(Cow::Owned(q5_0_to_q8_0(&q5_bytes)));
        let q5 = GgmlDType::Q5_0.from_data(Cow::Owned(q5_bytes));
        let a = q5.dequantize(xs.len()).unwrap();
        let b = q8.dequantize(xs.len()).unwrap();
        match (a, b) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => assert_eq!(a, b),
            _ => panic!("not f32"),
        }
    }
}
