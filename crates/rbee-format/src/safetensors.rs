//! The structure of a safetensors file: an 8-byte little-endian header length, a JSON table of
//! tensors (plus an optional `__metadata__` object of strings), then the data section.
//!
//! [`SafetensorsHeader::open`] / [`SafetensorsHeader::read`] parse and check the table without
//! reading any tensor data. A header that passes is what the format promises: every dtype is
//! known, every shape's byte size is computed with checked arithmetic and equals its
//! `data_offsets` range, every range lies inside the data section, and the ranges tile the data
//! section exactly, with no overlap and no gap (the format forbids holes, so a file cannot hide
//! a second payload). What the tensors mean, and whether an engine can run them, is not checked
//! here.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The largest header accepted, in bytes: the limit of the reference implementation.
pub const MAX_HEADER_LEN: u64 = 100 << 20;
/// The most dimensions one tensor may have (torch's own limit is 64).
pub const MAX_DIMS: usize = 64;

/// The key of the table's free-form string metadata.
const METADATA_KEY: &str = "__metadata__";

/// Anything that can be wrong with a safetensors file's structure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SafetensorsError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("file is shorter than the 8-byte header length")]
    TooShort,
    #[error(
        "header length {header_len} is larger than the file ({file_size} bytes) or the 100 MB limit"
    )]
    HeaderLength { header_len: u64, file_size: u64 },
    #[error("truncated file: the {header_len}-byte header ends after {read} bytes")]
    Truncated { header_len: u64, read: u64 },
    /// Not JSON, not an object, or a value of the wrong shape; `reason` names the tensor.
    #[error("invalid header: {reason}")]
    BadHeader { reason: String },
    #[error("duplicate tensor name `{tensor}`")]
    DuplicateTensor { tensor: String },
    #[error("tensor `{tensor}` has unknown dtype {dtype:?}")]
    UnknownDtype { tensor: String, dtype: String },
    #[error("tensor `{tensor}` shape {shape:?} overflows")]
    SizeOverflow { tensor: String, shape: Vec<u64> },
    #[error(
        "tensor `{tensor}` data {start}..{end} does not fit {elements} {dtype} values inside the {data_len}-byte data section"
    )]
    DoesNotFit {
        tensor: String,
        start: u64,
        end: u64,
        elements: u64,
        dtype: Dtype,
        data_len: u64,
    },
    #[error("tensors `{first}` and `{second}` overlap")]
    Overlap { first: String, second: String },
    #[error(
        "bytes {start}..{end} of the {data_len}-byte data section belong to no tensor (the format allows no holes)"
    )]
    Gap { start: u64, end: u64, data_len: u64 },
}

/// A tensor element type of the safetensors format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E4M3,
    F8E5M2,
    U16,
    I16,
    F16,
    BF16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl Dtype {
    const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
        Dtype::U16,
        Dtype::I16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::U32,
        Dtype::I32,
        Dtype::F32,
        Dtype::U64,
        Dtype::I64,
        Dtype::F64,
    ];

    /// The name the header uses, e.g. `"BF16"`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::U16 => "U16",
            Dtype::I16 => "I16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::U32 => "U32",
            Dtype::I32 => "I32",
            Dtype::F32 => "F32",
            Dtype::U64 => "U64",
            Dtype::I64 => "I64",
            Dtype::F64 => "F64",
        }
    }

    /// The dtype a header names, if it is one this crate knows.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of the table, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub dtype: Dtype,
    /// Row-major, outermost dimension first (as torch writes it).
    pub shape: Vec<u64>,
    /// `[start, end)` of its bytes, relative to the start of the data section.
    pub data_offsets: [u64; 2],
}

impl TensorEntry {
    /// Elements: the product of the shape (1 for a scalar).
    pub fn n_elements(&self) -> u64 {
        // A header that was read has checked this product; saturating keeps a hand-built entry
        // from panicking.
        self.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// Bytes of data.
    pub fn size(&self) -> u64 {
        self.data_offsets[1].saturating_sub(self.data_offsets[0])
    }
}

/// A safetensors file's header, checked against the file's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Every tensor, in the order of its data.
    pub tensors: Vec<(String, TensorEntry)>,
    /// `__metadata__` (empty when absent).
    pub metadata: BTreeMap<String, String>,
    /// Absolute file offset of the data section: `8 + header length`.
    pub data_offset: u64,
    pub file_size: u64,
}

impl SafetensorsHeader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<SafetensorsHeader, SafetensorsError> {
        let open_err = |source| SafetensorsError::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let file_size = file.metadata().map_err(open_err)?.len();
        SafetensorsHeader::read(BufReader::new(file), file_size)
    }

    /// Reads the header from `reader`, positioned at the start of a file of `file_size` bytes.
    /// Memory grows with the bytes actually read, never with what a length field claims.
    pub fn read(
        mut reader: impl Read,
        file_size: u64,
    ) -> Result<SafetensorsHeader, SafetensorsError> {
        let mut len = [0u8; 8];
        reader.read_exact(&mut len).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SafetensorsError::TooShort,
            _ => SafetensorsError::Io(e),
        })?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER_LEN || header_len > file_size.saturating_sub(8) {
            return Err(SafetensorsError::HeaderLength {
                header_len,
                file_size,
            });
        }
        let mut json = Vec::new();
        reader.take(header_len).read_to_end(&mut json)?;
        if json.len() as u64 != header_len {
            return Err(SafetensorsError::Truncated {
                header_len,
                read: json.len() as u64,
            });
        }
        let table = parse_table(&json)?;
        // header_len <= file_size - 8 was checked above.
        let data_offset = 8 + header_len;
        check(table, data_offset, file_size)
    }

    /// The entry of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// `[start, end)` of `entry`'s bytes in the file.
    pub fn file_range(&self, entry: &TensorEntry) -> [u64; 2] {
        // Within the file size for a header that was read; saturating for a hand-built entry.
        entry
            .data_offsets
            .map(|o| self.data_offset.saturating_add(o))
    }
}

/// A tensor as the JSON states it, before any check.
#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    #[serde(deserialize_with = "bounded_shape")]
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

#[derive(Default)]
struct Table {
    tensors: Vec<(String, RawEntry)>,
    metadata: Option<BTreeMap<String, String>>,
}

fn parse_table(json: &[u8]) -> Result<Table, SafetensorsError> {
    let mut current = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed = TableSeed {
        current: &mut current,
    }
    .deserialize(&mut de)
    .and_then(|table| de.end().map(|()| table));
    parsed.map_err(|e| SafetensorsError::BadHeader {
        reason: match current {
            Some(key) if key == METADATA_KEY => format!("{METADATA_KEY}: {e}"),
            Some(key) => format!("tensor `{key}`: {e}"),
            None => e.to_string(),
        },
    })
}

/// Reads the table in file order, noting which key is being read so an error can name it
/// (serde's own error carries the position only).
struct TableSeed<'a> {
    current: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for TableSeed<'_> {
    type Value = Table;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Table, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TableSeed<'_> {
    type Value = Table;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of tensors")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Table, A::Error> {
        let mut table = Table::default();
        while let Some(key) = map.next_key::<String>()? {
            let key = self.current.insert(key);
            if key == METADATA_KEY {
                if table.metadata.is_some() {
                    return Err(de::Error::custom("appears twice"));
                }
                table.metadata = Some(map.next_value()?);
            } else {
                let entry = map.next_value()?;
                table.tensors.push((key.clone(), entry));
            }
            *self.current = None;
        }
        Ok(table)
    }
}

/// A shape: a list of sizes, refused past [`MAX_DIMS`] before it can grow.
fn bounded_shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    struct Shape;
    impl<'de> Visitor<'de> for Shape {
        type Value = Vec<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {MAX_DIMS} sizes")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u64>, A::Error> {
            let mut dims = Vec::new();
            while let Some(d) = seq.next_element()? {
                if dims.len() == MAX_DIMS {
                    return Err(de::Error::custom(format_args!(
                        "shape has more than {MAX_DIMS} dimensions"
                    )));
                }
                dims.push(d);
            }
            Ok(dims)
        }
    }
    d.deserialize_seq(Shape)
}

/// Checks every entry against the data section `data_offset..file_size`.
fn check(
    table: Table,
    data_offset: u64,
    file_size: u64,
) -> Result<SafetensorsHeader, SafetensorsError> {
    let data_len = file_size - data_offset;
    let mut names = HashSet::with_capacity(table.tensors.len());
    let mut tensors = Vec::with_capacity(table.tensors.len());
    for (name, raw) in table.tensors {
        if !names.insert(name.clone()) {
            return Err(SafetensorsError::DuplicateTensor { tensor: name });
        }
        let Some(dtype) = Dtype::from_name(&raw.dtype) else {
            return Err(SafetensorsError::UnknownDtype {
                tensor: name,
                dtype: raw.dtype,
            });
        };
        let elements = raw.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let size = elements.and_then(|n| n.checked_mul(dtype.size()));
        let (Some(elements), Some(size)) = (elements, size) else {
            return Err(SafetensorsError::SizeOverflow {
                tensor: name,
                shape: raw.shape,
            });
        };
        let [start, end] = raw.data_offsets;
        if start > end || end > data_len || end - start != size {
            return Err(SafetensorsError::DoesNotFit {
                tensor: name,
                start,
                end,
                elements,
                dtype,
                data_len,
            });
        }
        tensors.push((
            name,
            TensorEntry {
                dtype,
                shape: raw.shape,
                data_offsets: raw.data_offsets,
            },
        ));
    }
    tensors.sort_by_key(|(_, t)| t.data_offsets);
    let mut covered = 0u64;
    let mut previous: Option<&str> = None;
    for (name, t) in &tensors {
        let [start, end] = t.data_offsets;
        if start < covered {
            return Err(SafetensorsError::Overlap {
                first: previous.unwrap_or_default().to_owned(),
                second: name.clone(),
            });
        }
        if start > covered {
            return Err(SafetensorsError::Gap {
                start: covered,
                end: start,
                data_len,
            });
        }
        covered = end;
        previous = Some(name);
    }
    if covered != data_len {
        return Err(SafetensorsError::Gap {
            start: covered,
            end: data_len,
            data_len,
        });
    }
    Ok(SafetensorsHeader {
        tensors,
        metadata: table.metadata.unwrap_or_default(),
        data_offset,
        file_size,
    })
}
