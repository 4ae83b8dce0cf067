//! A small GGUF writer, mainly for test fixtures here and in other crates.
//!
//! It writes exactly what it is given: duplicate keys, inconsistent dims or
//! short tensor data are not rejected, so tests can build broken files too.
//! Read the result back with [`GgufFile::read`](crate::gguf::GgufFile::read) to check it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::gguf::error::GgufError;
use crate::gguf::types::GgmlType;
use crate::gguf::value::{Array, Value};

/// Builder for a GGUF file; see the module docs.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty version-3 file with the default alignment (32).
    pub fn new() -> Self {
        Self {
            version: 3,
            alignment: crate::gguf::DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// A writer holding `path`'s metadata (less `general.alignment` and the keys in `drop`)
    /// and tensors, to write a variant of a model: a fixture with another chat template or
    /// context length.
    pub fn copy_of(path: &Path, drop: &[&str]) -> Result<Self, GgufError> {
        let file = crate::gguf::GgufFile::open(path)?;
        let data = std::fs::read(path)?;
        let mut w = Self::new();
        for (k, v) in file.metadata.iter() {
            if k != "general.alignment" && !drop.contains(&k) {
                w.add(k, v.clone());
            }
        }
        for t in &file.tensors {
            let bytes = usize::try_from(t.offset)
                .ok()
                .zip(usize::try_from(t.offset + t.size).ok())
                .and_then(|(a, b)| data.get(a..b))
                .ok_or_else(|| GgufError::PastEndOfFile {
                    tensor: t.name.clone(),
                    offset: t.offset,
                    size: t.size,
                    file_size: data.len() as u64,
                })?;
            w.add_tensor(t.name.clone(), &t.dims, t.dtype, bytes.to_vec());
        }
        Ok(w)
    }

    /// The version field to write (the reader accepts 2 and 3).
    pub fn set_version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Pads tensor data to `alignment` and records it as `general.alignment`.
    pub fn set_alignment(&mut self, alignment: u32) -> &mut Self {
        self.alignment = alignment.into();
        self.add("general.alignment", alignment)
    }

    /// Appends a metadata entry (duplicates are written as given).
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Appends a tensor; `data` is written verbatim at the next aligned offset.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        dtype: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.tensors
            .push((name.into(), dims.to_vec(), dtype, data.into()));
        self
    }

    /// Writes the file; returns the number of bytes written.
    pub fn write_to<W: Write>(&self, mut w: W) -> Result<u64, GgufError> {
        let align = self.alignment;
        if !align.is_power_of_two() {
            return Err(GgufError::BadAlignment { value: align });
        }
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut end = 0u64;
        for (name, dims, dtype, data) in &self.tensors {
            let offset = end.next_multiple_of(align);
            end = offset + data.len() as u64;
            offsets.push(offset);
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            dims.iter()
                .for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&dtype.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        let data_start = (out.len() as u64).next_multiple_of(align);
        pad_to(&mut out, data_start);
        for ((.., data), offset) in self.tensors.iter().zip(offsets) {
            pad_to(&mut out, data_start + offset);
            out.extend_from_slice(data);
        }
        w.write_all(&out)?;
        w.flush()?;
        Ok(out.len() as u64)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Creates (or truncates) `path` and writes the file to it.
    pub fn write_file(&self, path: &Path) -> Result<u64, GgufError> {
        let file = File::create(path).map_err(|source| GgufError::Open {
            path: path.to_owned(),
            source,
        })?;
        self.write_to(BufWriter::new(file))
    }

    /// A minimal model that passes [`validate`](crate::gguf::validate) for `arch`:
    /// 2 blocks, embedding 8, feed-forward 16, 4 tokens, zeroed F32 tensors.
    /// phi3 gets the fused `attn_qkv` tensor, the others `attn_q/k/v`.
    pub fn tiny_model(arch: &str) -> GgufWriter {
        const BLOCKS: u32 = 2;
        const EMBD: u64 = 8;
        const FF: u64 = 16;
        let tokens = vec!["<unk>", "<s>", "</s>", "a"];
        let mut w = GgufWriter::new();
        w.add("general.architecture", arch)
            .add("general.name", format!("tiny-{arch}"))
            .add("general.file_type", 0u32)
            .add(format!("{arch}.block_count"), BLOCKS)
            .add(format!("{arch}.context_length"), 128u32)
            .add(format!("{arch}.embedding_length"), EMBD as u32)
            .add(format!("{arch}.feed_forward_length"), FF as u32)
            .add(format!("{arch}.attention.head_count"), 2u32)
            .add(format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5f32)
            .add("tokenizer.ggml.model", "llama")
            .add("tokenizer.ggml.scores", vec![0f32; tokens.len()])
            .add("tokenizer.ggml.tokens", tokens.clone());
        let mut f32_tensor = |name: String, dims: &[u64]| {
            let bytes = dims.iter().product::<u64>() * 4;
            w.add_tensor(name, dims, GgmlType::F32, vec![0u8; bytes as usize]);
        };
        f32_tensor("token_embd.weight".into(), &[EMBD, tokens.len() as u64]);
        f32_tensor("output_norm.weight".into(), &[EMBD]);
        for i in 0..BLOCKS {
            f32_tensor(format!("blk.{i}.attn_norm.weight"), &[EMBD]);
            if arch == "phi3" {
                f32_tensor(format!("blk.{i}.attn_qkv.weight"), &[EMBD, 3 * EMBD]);
            } else {
                for p in ["q", "k", "v"] {
                    f32_tensor(format!("blk.{i}.attn_{p}.weight"), &[EMBD, EMBD]);
                }
            }
            f32_tensor(format!("blk.{i}.ffn_down.weight"), &[FF, EMBD]);
        }
        w
    }
}

fn pad_to(out: &mut Vec<u8>, len: u64) {
    out.resize(len as usize, 0);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.elem_type_id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            $v.iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => le!(v),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F64(v) => le!(v),
    }
}
