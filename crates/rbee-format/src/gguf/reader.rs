//! Header parsing. Every count and length read from the file is checked
//! against the bytes left and an absolute cap before it is trusted, and nothing
//! is pre-sized from a file count: buffers grow only as bytes actually arrive,
//! so even a caller that overstates `file_size` cannot trigger a huge allocation.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::gguf::error::GgufError;
use crate::gguf::tensor::{self, TensorInfo};
use crate::gguf::types::GgmlType;
use crate::gguf::value::*;

/// Longest metadata key, in bytes.
pub const MAX_KEY_LEN: u64 = 65_535;
/// Longest string value (chat templates are the big ones, a few KiB), in bytes.
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// Most elements in one array (vocabularies are ~10^5 to 10^6).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Deepest array nesting; real files use 1.
pub const MAX_ARRAY_DEPTH: u32 = 4;
/// Most metadata entries.
pub const MAX_METADATA_ENTRIES: u64 = 1 << 20;
/// Most tensors (large MoE models have a few thousand).
pub const MAX_TENSORS: u64 = 1 << 20;
/// Longest tensor name, in bytes (ggml itself allows 63).
pub const MAX_TENSOR_NAME_LEN: u64 = 1024;
/// Most dimensions per tensor (ggml uses 4).
pub const MAX_DIMS: u32 = 8;
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

const MAGIC: [u8; 4] = *b"GGUF";
/// Smallest metadata entry: key length, empty key, type, 1-byte value.
const MIN_ENTRY: u64 = 8 + 4 + 1;
/// Smallest tensor info: name length, empty name, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 8 + 4 + 8;

type Result<T> = std::result::Result<T, GgufError>;

/// A parsed GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: Metadata,
    /// In file order; offsets are absolute and every tensor lies inside the file.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    pub alignment: u64,
    pub file_size: u64,
}

impl GgufFile {
    /// Parses the header of the file at `path`; tensor data is not read.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let open_err = |source| GgufError::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        Self::read(BufReader::new(file), size)
    }

    /// Parses a header from the start of `r`. `file_size` must be the length
    /// of the whole file: all bounds checks are against it.
    pub fn read<R: Read + Seek>(mut r: R, file_size: u64) -> Result<GgufFile> {
        r.seek(SeekFrom::Start(0))?;
        parse(Src {
            r,
            pos: 0,
            size: file_size,
            ctx: String::new(),
        })
    }

    /// `general.architecture`, e.g. `"llama"`.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// A bounds-checked little-endian cursor. `ctx` names what is being read, for
/// truncation errors.
struct Src<R> {
    r: R,
    pos: u64,
    size: u64,
    ctx: String,
}

impl<R: Read> Src<R> {
    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn ensure(&self, needed: u64, what: impl FnOnce() -> String) -> Result<()> {
        let remaining = self.remaining();
        if needed > remaining {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos,
                needed,
                remaining,
            });
        }
        Ok(())
    }

    /// `count` items of at least `min` bytes each must fit in what is left.
    fn ensure_count(&self, count: u64, min: u64, what: &str) -> Result<()> {
        self.ensure(count.saturating_mul(min), || format!("{count} {what}"))
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let n = N as u64;
        self.ensure(n, || self.ctx.clone())?;
        let mut buf = [0; N];
        self.r.read_exact(&mut buf)?;
        self.pos += n;
        Ok(buf)
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        self.ensure(n, || self.ctx.clone())?;
        let mut buf = Vec::new();
        // read_to_end grows with the data, so a lying file_size cannot make us
        // allocate more than the stream really holds.
        (&mut self.r).take(n).read_to_end(&mut buf)?;
        if buf.len() as u64 != n {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        self.pos += n;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32> {
        self.fixed().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64> {
        self.fixed().map(u64::from_le_bytes)
    }

    fn string(&mut self, limit: u64, what: impl Fn() -> String) -> Result<String> {
        let len = self.u64()?;
        if len > limit {
            return Err(GgufError::LimitExceeded {
                what: format!("{} length", what()),
                value: len,
                limit,
            });
        }
        String::from_utf8(self.bytes(len)?).map_err(|_| GgufError::InvalidUtf8 { what: what() })
    }

    /// `count` little-endian values of `N` bytes each.
    fn prims<const N: usize, T>(&mut self, count: u64, f: fn([u8; N]) -> T) -> Result<Vec<T>> {
        // Saturating: an impossible size simply fails the bounds check.
        let bytes = self.bytes(count.saturating_mul(N as u64))?;
        Ok(bytes.as_chunks::<N>().0.iter().map(|c| f(*c)).collect())
    }
}

fn parse<R: Read>(mut src: Src<R>) -> Result<GgufFile> {
    src.ctx = "magic".into();
    let magic = src.fixed::<4>()?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    src.ctx = "version".into();
    let version = match src.u32()? {
        v @ (2 | 3) => v,
        // A big-endian writer stores the version byte-swapped.
        v if v & 0xffff == 0 && (1..=3).contains(&v.swap_bytes()) => {
            return Err(GgufError::BigEndian);
        }
        v => return Err(GgufError::UnsupportedVersion { version: v }),
    };
    src.ctx = "tensor count".into();
    let n_tensors = capped(src.u64()?, MAX_TENSORS, "tensor count")?;
    src.ctx = "metadata entry count".into();
    let n_entries = capped(src.u64()?, MAX_METADATA_ENTRIES, "metadata entry count")?;

    src.ensure_count(n_entries, MIN_ENTRY, "metadata entries")?;
    let mut metadata = Metadata::new();
    for i in 0..n_entries {
        src.ctx = format!("metadata entry #{i}");
        let key = src.string(MAX_KEY_LEN, || format!("key of metadata entry #{i}"))?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        src.ctx = format!("value of {key}");
        let type_id = src.u32()?;
        let value = read_value(&mut src, type_id, &key)?;
        metadata.insert(key, value);
    }

    src.ensure_count(n_tensors, MIN_TENSOR_INFO, "tensor infos")?;
    let mut tensors = Vec::new();
    for i in 0..n_tensors {
        src.ctx = format!("tensor info #{i}");
        let name = src.string(MAX_TENSOR_NAME_LEN, || format!("name of tensor #{i}"))?;
        src.ctx = format!("tensor info {name}");
        let n_dims = src.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::BadDims {
                tensor: name,
                n_dims,
            });
        }
        let dims = (0..n_dims).map(|_| src.u64()).collect::<Result<Vec<_>>>()?;
        let type_id = src.u32()?;
        let Some(dtype) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownTensorType {
                tensor: name,
                type_id,
            });
        };
        let offset = src.u64()?;
        tensors.push(TensorInfo {
            name,
            dims,
            dtype,
            offset,
            size: 0,
        });
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => v.as_u64().ok_or_else(|| GgufError::WrongType {
            key: "general.alignment".into(),
            found: v.type_name(),
            expected: "an unsigned integer",
        })?,
    };
    if !alignment.is_power_of_two() {
        return Err(GgufError::BadAlignment { value: alignment });
    }
    let data_offset = src
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or(GgufError::BadAlignment { value: alignment })?;
    tensor::place(&mut tensors, data_offset, alignment, src.size)?;
    Ok(GgufFile {
        version,
        metadata,
        tensors,
        data_offset,
        alignment,
        file_size: src.size,
    })
}

fn capped(value: u64, limit: u64, what: &str) -> Result<u64> {
    if value > limit {
        return Err(GgufError::LimitExceeded {
            what: what.into(),
            value,
            limit,
        });
    }
    Ok(value)
}

fn read_value<R: Read>(src: &mut Src<R>, type_id: u32, key: &str) -> Result<Value> {
    Ok(match type_id {
        T_U8 => Value::U8(u8::from_le_bytes(src.fixed()?)),
        T_I8 => Value::I8(i8::from_le_bytes(src.fixed()?)),
        T_U16 => Value::U16(u16::from_le_bytes(src.fixed()?)),
        T_I16 => Value::I16(i16::from_le_bytes(src.fixed()?)),
        T_U32 => Value::U32(u32::from_le_bytes(src.fixed()?)),
        T_I32 => Value::I32(i32::from_le_bytes(src.fixed()?)),
        T_F32 => Value::F32(f32::from_le_bytes(src.fixed()?)),
        T_BOOL => Value::Bool(src.fixed::<1>()? != [0]),
        T_STRING => Value::String(src.string(MAX_STRING_LEN, || format!("value of {key}"))?),
        T_ARRAY => Value::Array(read_array(src, key, 1)?),
        T_U64 => Value::U64(u64::from_le_bytes(src.fixed()?)),
        T_I64 => Value::I64(i64::from_le_bytes(src.fixed()?)),
        T_F64 => Value::F64(f64::from_le_bytes(src.fixed()?)),
        _ => {
            return Err(GgufError::UnknownValueType {
                key: key.into(),
                type_id,
            });
        }
    })
}

fn read_array<R: Read>(src: &mut Src<R>, key: &str, depth: u32) -> Result<Array> {
    if depth > MAX_ARRAY_DEPTH {
        let what = format!("array nesting depth of {key}");
        return Err(GgufError::LimitExceeded {
            what,
            value: depth.into(),
            limit: MAX_ARRAY_DEPTH.into(),
        });
    }
    let elem = src.u32()?;
    let count = capped(src.u64()?, MAX_ARRAY_LEN, &format!("array length of {key}"))?;
    let min = match elem {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 | T_STRING => 8,
        T_ARRAY => 4 + 8,
        _ => {
            return Err(GgufError::UnknownValueType {
                key: format!("{key}[]"),
                type_id: elem,
            });
        }
    };
    src.ensure_count(count, min, &format!("elements of {key}"))?;
    Ok(match elem {
        T_U8 => Array::U8(src.bytes(count)?),
        T_I8 => Array::I8(src.prims(count, i8::from_le_bytes)?),
        T_BOOL => Array::Bool(src.bytes(count)?.into_iter().map(|b| b != 0).collect()),
        T_U16 => Array::U16(src.prims(count, u16::from_le_bytes)?),
        T_I16 => Array::I16(src.prims(count, i16::from_le_bytes)?),
        T_U32 => Array::U32(src.prims(count, u32::from_le_bytes)?),
        T_I32 => Array::I32(src.prims(count, i32::from_le_bytes)?),
        T_F32 => Array::F32(src.prims(count, f32::from_le_bytes)?),
        T_U64 => Array::U64(src.prims(count, u64::from_le_bytes)?),
        T_I64 => Array::I64(src.prims(count, i64::from_le_bytes)?),
        T_F64 => Array::F64(src.prims(count, f64::from_le_bytes)?),
        T_STRING => Array::String(
            (0..count)
                .map(|j| src.string(MAX_STRING_LEN, || format!("{key}[{j}]")))
                .collect::<Result<_>>()?,
        ),
        _ => Array::Array(
            (0..count)
                .map(|_| read_array(src, key, depth + 1))
                .collect::<Result<_>>()?,
        ),
    })
}
