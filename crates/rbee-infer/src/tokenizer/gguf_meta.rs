//! GGUF tokenizer metadata that every vocabulary kind reads (`gguf` for BPE and SentencePiece,
//! `wpm` for WordPiece): token types and special-token ids.

use rbee_format::gguf::{Array, Metadata, Value};

use super::error::TokenizerError;
use super::vocab::attr;

const KEY_TYPES: &str = "tokenizer.ggml.token_type";

/// A token id key: `None` if absent; a warning and `None` (keep the default)
/// if out of range, as llama.cpp.
pub(super) fn token_id_key(
    meta: &Metadata,
    key: &'static str,
    n: usize,
) -> Result<Option<u32>, TokenizerError> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    let id = v.as_u64().ok_or(TokenizerError::WrongType {
        key,
        expected: "non-negative integer",
        found: v.type_name(),
    })?;
    if id >= n as u64 {
        tracing::warn!(
            key,
            id,
            vocab_size = n,
            "special token id out of range; ignored"
        );
        return Ok(None);
    }
    Ok(Some(id as u32))
}

pub(super) fn read_attrs(meta: &Metadata, n: usize) -> Result<Vec<u16>, TokenizerError> {
    let Some(v) = meta.get(KEY_TYPES) else {
        return Ok(vec![attr::NORMAL; n]);
    };
    let Value::Array(Array::I32(types)) = v else {
        return Err(TokenizerError::WrongType {
            key: KEY_TYPES,
            expected: "array of i32",
            found: v.type_name(),
        });
    };
    let types = types.get(..n).ok_or(TokenizerError::LengthMismatch {
        key: KEY_TYPES,
        expected: n,
        found: types.len(),
    })?;
    Ok(types.iter().map(|&t| attr::from_gguf_type(t)).collect())
}
