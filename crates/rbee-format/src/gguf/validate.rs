//! Model-level checks: is this a file rbee can run, and what is in it.

use std::collections::HashSet;

use crate::gguf::error::GgufError;
use crate::gguf::reader::GgufFile;
use crate::gguf::value::{Metadata, Value};

pub use crate::gguf::arch::SUPPORTED_ARCHITECTURES;

/// What [`validate`] learned about a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    pub architecture: String,
    /// e.g. `"Q4_K_M"` from `general.file_type`, else the tensor type holding the most bytes.
    pub quantization: String,
    pub parameter_count: u64,
    pub context_length: u64,
    pub tokenizer_model: Option<String>,
    pub name: Option<String>,
}

/// Checks that `file` (already bounds-checked by the reader) is a supported
/// model with the keys, tokenizer and tensors every loader needs. Fails on the
/// first problem, naming it.
pub fn validate(file: &GgufFile) -> Result<ModelSummary, GgufError> {
    let md = &file.metadata;
    let arch = require(md, "general.architecture", Value::as_str, "a string")?;
    if !SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(GgufError::UnsupportedArchitecture { arch: arch.into() });
    }
    let int = |suffix: &str| require(md, &format!("{arch}.{suffix}"), Value::as_u64, "an integer");
    let block_count = int("block_count")?;
    let context_length = int("context_length")?;
    int("embedding_length")?;
    int("feed_forward_length")?;
    int("attention.head_count")?;

    let tokenizer_model = require(md, "tokenizer.ggml.model", Value::as_str, "a string")?;
    require(
        md,
        "tokenizer.ggml.tokens",
        Value::as_str_array,
        "an array of strings",
    )?;

    let names: HashSet<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    let need = |name: String| {
        if names.contains(name.as_str()) {
            Ok(())
        } else {
            Err(GgufError::MissingTensor { name })
        }
    };
    need("token_embd.weight".into())?;
    // Stops at the first missing block, so a huge block_count costs nothing.
    for i in 0..block_count {
        need(format!("blk.{i}.attn_norm.weight"))?;
        let (q, qkv) = (
            format!("blk.{i}.attn_q.weight"),
            format!("blk.{i}.attn_qkv.weight"),
        );
        if !names.contains(q.as_str()) && !names.contains(qkv.as_str()) {
            return Err(GgufError::MissingTensor {
                name: format!("{q} (or {qkv})"),
            });
        }
        need(format!("blk.{i}.ffn_down.weight"))?;
    }

    let file_type = match md.get("general.file_type") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| wrong_type("general.file_type", v, "an integer"))?,
        ),
    };
    let quantization = match file_type.and_then(file_type_name) {
        Some(name) => name.to_owned(),
        None => dominant_type(file),
    };
    Ok(ModelSummary {
        architecture: arch.into(),
        quantization,
        parameter_count: file
            .tensors
            .iter()
            .fold(0, |n, t| n.saturating_add(t.n_elements())),
        context_length,
        tokenizer_model: Some(tokenizer_model.into()),
        name: md.get_str("general.name").map(str::to_owned),
    })
}

fn require<'a, T>(
    md: &'a Metadata,
    key: &str,
    get: fn(&'a Value) -> Option<T>,
    expected: &'static str,
) -> Result<T, GgufError> {
    let v = md
        .get(key)
        .ok_or_else(|| GgufError::MissingKey { key: key.into() })?;
    get(v).ok_or_else(|| wrong_type(key, v, expected))
}

fn wrong_type(key: &str, v: &Value, expected: &'static str) -> GgufError {
    GgufError::WrongType {
        key: key.into(),
        found: v.describe(),
        expected,
    }
}

/// The tensor type holding the most bytes; ties go to the lower type id.
fn dominant_type(file: &GgufFile) -> String {
    let mut by_type: Vec<(crate::gguf::GgmlType, u64)> = Vec::new();
    for t in &file.tensors {
        match by_type.iter_mut().find(|(ty, _)| *ty == t.dtype) {
            Some((_, bytes)) => *bytes = bytes.saturating_add(t.size),
            None => by_type.push((t.dtype, t.size)),
        }
    }
    by_type
        .into_iter()
        .max_by_key(|&(ty, bytes)| (bytes, std::cmp::Reverse(ty.id())))
        .map_or_else(|| "unknown".into(), |(ty, _)| ty.name().into())
}

/// Name of a llama.cpp `LLAMA_FTYPE` (`general.file_type`) id.
pub fn file_type_name(id: u64) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        _ => return None,
    })
}
