//! Tensor infos and the layout checks that keep every tensor inside the file.

use std::collections::HashSet;

use crate::gguf::error::GgufError;
use crate::gguf::types::GgmlType;

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (fastest-varying).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Absolute offset of the tensor data in the file.
    pub offset: u64,
    /// Size of the tensor data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements (checked not to overflow when the file was read).
    pub fn n_elements(&self) -> u64 {
        n_elements(&self.dims).unwrap_or(u64::MAX)
    }
}

/// Element count, `None` past `i64::MAX` (ggml counts elements in `int64_t`).
fn n_elements(dims: &[u64]) -> Option<u64> {
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| i64::try_from(n).is_ok())
}

/// Turns file-relative offsets into absolute ones, fills in sizes, and rejects
/// duplicate names, misalignment, partial blocks, overflow, data past the end
/// of the file and overlap.
pub(crate) fn place(
    tensors: &mut [TensorInfo],
    data_offset: u64,
    alignment: u64,
    file_size: u64,
) -> Result<(), GgufError> {
    let mut names = HashSet::new();
    for t in tensors.iter() {
        if !names.insert(t.name.as_str()) {
            return Err(GgufError::DuplicateTensor {
                tensor: t.name.clone(),
            });
        }
    }
    for t in tensors.iter_mut() {
        if t.offset % alignment != 0 {
            return Err(GgufError::Misaligned {
                tensor: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let overflow = || GgufError::DimsOverflow {
            tensor: t.name.clone(),
            dims: t.dims.clone(),
        };
        let elements = n_elements(&t.dims).ok_or_else(overflow)?;
        let ne0 = t.dims.first().copied().unwrap_or(1);
        let block = t.dtype.block_size();
        if ne0 % block != 0 {
            return Err(GgufError::PartialBlock {
                tensor: t.name.clone(),
                ne0,
                dtype: t.dtype,
                block_size: block,
            });
        }
        let size = (elements / block)
            .checked_mul(t.dtype.type_size())
            .ok_or_else(overflow)?;
        let offset = data_offset.saturating_add(t.offset);
        if offset.checked_add(size).is_none_or(|end| end > file_size) {
            return Err(GgufError::PastEndOfFile {
                tensor: t.name.clone(),
                offset,
                size,
                file_size,
            });
        }
        t.offset = offset;
        t.size = size;
    }
    // Sorting by (offset, size) puts empty tensors first, so they never "overlap".
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| (t.offset, t.size));
    for pair in order.windows(2) {
        if let [a, b] = pair
            && a.offset + a.size > b.offset
        {
            return Err(GgufError::Overlap {
                first: a.name.clone(),
                second: b.name.clone(),
            });
        }
    }
    Ok(())
}
