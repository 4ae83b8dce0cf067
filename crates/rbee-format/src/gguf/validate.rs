//! Model-level checks: is this a well-formed model, and what is in it. Structure only: which
//! architectures run is the engine's list, not this crate's.

use std::collections::HashSet;

use crate::gguf::error::GgufError;
use crate::gguf::reader::GgufFile;
use crate::gguf::value::Value;

/// What [`validate`] learned about a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    /// `general.architecture`, whatever it is: whether it runs is for an engine to say.
    pub architecture: String,
    /// e.g. `"Q4_K_M"` from `general.file_type`, else the tensor type holding the most bytes.
    pub quantization: String,
    pub parameter_count: u64,
    pub context_length: u64,
    pub tokenizer_model: Option<String>,
    pub name: Option<String>,
}

/// Checks that `file` (already bounds-checked by the reader) is a well-formed model of any
/// architecture: it names its architecture and has the keys llama.cpp reads for every one
/// (`{arch}.block_count`, `.context_length`, `.embedding_length`), a vocabulary, the token
/// embedding, and tensors (`blk.{i}.*`) for every block it counts. An architecture no build of
/// rbee runs passes as well, so a store can keep and share it. Fails on the first problem,
/// naming it.
pub fn validate(file: &GgufFile) -> Result<ModelSummary, GgufError> {
    let md = &file.metadata;
    let arch = md.require("general.architecture", Value::as_str, "a string")?;
    let block_count_key = format!("{arch}.block_count");
    let block_count = md.require(&block_count_key, Value::as_u64, "an integer")?;
    let int = |suffix: &str| md.require(&format!("{arch}.{suffix}"), Value::as_u64, "an integer");
    let context_length = int("context_length")?;
    int("embedding_length")?;

    let tokenizer_model = md.require("tokenizer.ggml.model", Value::as_str, "a string")?;
    md.require(
        "tokenizer.ggml.tokens",
        Value::as_str_array,
        "an array of strings",
    )?;

    if file.tensor("token_embd.weight").is_none() {
        return Err(GgufError::MissingTensor {
            name: "token_embd.weight".into(),
        });
    }
    let blocks: HashSet<u64> = file
        .tensors
        .iter()
        .filter_map(|t| block_of(&t.name))
        .collect();
    // Stops at the first absent block, so a huge block_count costs nothing.
    if let Some(block) = (0..block_count).find(|i| !blocks.contains(i)) {
        return Err(GgufError::MissingBlock {
            key: block_count_key,
            blocks: block_count,
            block,
        });
    }

    let file_type = match md.get("general.file_type") {
        None => None,
        Some(_) => Some(md.require("general.file_type", Value::as_u64, "an integer")?),
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

/// The block a tensor belongs to: `i` for `blk.{i}.…`.
fn block_of(name: &str) -> Option<u64> {
    let (index, _) = name.strip_prefix("blk.")?.split_once('.')?;
    index.parse().ok()
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
