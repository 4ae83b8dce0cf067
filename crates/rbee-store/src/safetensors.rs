//! Header checks for safetensors files: an 8-byte little-endian header length, a JSON table of
//! tensors, and data offsets that must stay inside the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::error::{IoContext, StoreError};

/// safetensors itself refuses headers over 100 MB.
const MAX_HEADER: u64 = 100 << 20;

#[derive(Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// What one file contributes to the model summary.
#[derive(Debug, Default)]
pub(crate) struct SafetensorsSummary {
    pub parameters: u64,
    /// Bytes per dtype name, to find the dominant one.
    pub bytes_by_dtype: BTreeMap<String, u64>,
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

pub(crate) fn check_file(path: &Path) -> Result<SafetensorsSummary, StoreError> {
    let bad = |reason: String| StoreError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).ctx("open", path)?;
    let file_size = file.metadata().ctx("stat", path)?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| bad("file is shorter than the 8-byte header length".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER || header_len > file_size.saturating_sub(8) {
        return Err(bad(format!(
            "header length {header_len} is larger than the file ({file_size} bytes) or the 100 MB limit"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).ctx("read", path)?;
    let table: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let data_len = file_size - 8 - header_len;
    let mut summary = SafetensorsSummary::default();
    for (name, value) in table {
        if name == "__metadata__" {
            continue;
        }
        let t: TensorEntry =
            serde_json::from_value(value).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        let size = dtype_size(&t.dtype)
            .ok_or_else(|| bad(format!("tensor `{name}` has unknown dtype {}", t.dtype)))?;
        let elems = t
            .shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| bad(format!("tensor `{name}` shape overflows")))?;
        let [start, end] = t.data_offsets;
        let expected = elems
            .checked_mul(size)
            .ok_or_else(|| bad(format!("tensor `{name}` size overflows")))?;
        if start > end || end > data_len || end - start != expected {
            return Err(bad(format!(
                "tensor `{name}` data {start}..{end} does not fit {elems} {} values inside the {data_len}-byte data section",
                t.dtype
            )));
        }
        summary.parameters += elems;
        *summary.bytes_by_dtype.entry(t.dtype).or_default() += expected;
    }
    Ok(summary)
}
