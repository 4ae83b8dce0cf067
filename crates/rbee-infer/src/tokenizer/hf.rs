//! Building a [`Tokenizer`] from a Hugging Face model folder: `tokenizer.json`
//! run by the `tokenizers` crate, BOS/EOS from `tokenizer_config.json` and
//! `generation_config.json`.
//!
//! Encoding is the `tokenizers` pipeline without its post-processor (we add
//! BOS ourselves, like the GGUF path). The token table and per-token output
//! bytes are rebuilt in our own [`Vocab`]/[`ByteTable`] so that
//! `token_bytes`/`id_to_token` can hand out borrowed slices.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::byte_level;
use super::error::TokenizerError;
use super::spm::SPACE_MARK;
use super::vocab::{ByteTable, Vocab};
use super::{Engine, Inner, Tokenizer};

/// Special tokens that end a turn in common chat formats; each counts as EOS
/// when the model has it as a special added token.
const END_OF_TURN: &[&str] = &[
    "<end_of_turn>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<|end_of_text|>",
];

pub(super) fn load(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let path = dir.join("tokenizer.json");
    let mut tok =
        tokenizers::Tokenizer::from_file(&path).map_err(|source| TokenizerError::HfLoad {
            path: path.clone(),
            source,
        })?;
    // A tokenizer.json may pad every encoding to a fixed length and cut it (sentence-transformers
    // folders ship `"padding": {"Fixed": 128}` and `"truncation": {"max_length": 128}`): that
    // is batching for a Python caller, not tokenization. We cut inputs ourselves, to the
    // model's own limit, and never pad.
    tok.with_padding(None);
    tok.with_truncation(None)
        .map_err(|source| TokenizerError::HfLoad { path, source })?;
    let config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
    let generation = read_json_if_present(&dir.join("generation_config.json"))?;

    // Token texts by id. Ids missing from the map (rare) get a placeholder
    // that no text can contain, so the table stays dense and unique.
    let map = tok.get_vocab(true);
    let size = map.values().map(|&id| id as usize + 1).max().unwrap_or(0);
    let mut texts: Vec<Option<&str>> = vec![None; size];
    for (text, &id) in &map {
        texts[id as usize] = Some(text);
    }
    let holes: Vec<String> = (0..size)
        .map(|i| {
            if texts[i].is_none() {
                format!("\0rbee-missing-{i}")
            } else {
                String::new()
            }
        })
        .collect();
    let vocab = Vocab::new(
        texts
            .iter()
            .zip(&holes)
            .map(|(t, hole)| t.unwrap_or(hole.as_str())),
    )?;

    let added = tok.get_added_tokens_decoder();
    let decoders = decoder_types(&tok);
    let byte_level_decoder = decoders.iter().any(|t| t == "ByteLevel");
    let byte_fallback = decoders.iter().any(|t| t == "ByteFallback");
    let metaspace = decoders.iter().any(|t| t == "Metaspace" || t == "Replace");
    let mut pieces = ByteTable::with_capacity(size, size * 6);
    for (id, text) in texts.iter().enumerate() {
        let piece: Vec<u8> = match (added.get(&(id as u32)), text) {
            (Some(t), _) if t.special => Vec::new(),
            (Some(t), _) => t.content.as_bytes().to_vec(),
            (None, None) => Vec::new(),
            (None, Some(text)) => {
                model_token_bytes(text, byte_level_decoder, byte_fallback, metaspace)
            }
        };
        pieces.push(&piece)?;
    }

    let token_id = |v: Option<&Json>| -> Option<u32> {
        match v? {
            Json::String(s) => vocab.get(s),
            // An AddedToken written out as an object.
            Json::Object(o) => vocab.get(o.get("content")?.as_str()?),
            _ => None,
        }
    };
    let config_get = |k: &str| config.as_ref().and_then(|c| c.get(k));
    let generation_get = |k: &str| generation.as_ref().and_then(|c| c.get(k));
    let json_id = |v: &Json| {
        v.as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .filter(|&id| (id as usize) < size)
    };

    let bos = token_id(config_get("bos_token"))
        .or_else(|| generation_get("bos_token_id").and_then(json_id));
    let add_bos = match config_get("add_bos_token").and_then(Json::as_bool) {
        Some(v) => v,
        // No setting: see whether the post-processor puts BOS in front.
        None => bos.is_some_and(|bos| {
            tok.encode("", true)
                .is_ok_and(|e| e.get_ids().first() == Some(&bos))
        }),
    };

    let mut eos_ids: Vec<u32> = Vec::new();
    let mut push = |id: u32| {
        if !eos_ids.contains(&id) {
            eos_ids.push(id);
        }
    };
    if let Some(id) = token_id(config_get("eos_token")) {
        push(id);
    }
    match generation_get("eos_token_id") {
        Some(Json::Array(ids)) => ids.iter().filter_map(json_id).for_each(&mut push),
        Some(v) => json_id(v).into_iter().for_each(&mut push),
        None => {}
    }
    for text in END_OF_TURN {
        if let Some(id) = vocab.get(text)
            && added.get(&id).is_some_and(|t| t.special)
        {
            push(id);
        }
    }

    Ok(Tokenizer {
        inner: std::sync::Arc::new(Inner {
            vocab,
            pieces,
            engine: Engine::Hf(Box::new(tok)),
            bos,
            add_bos,
            eos_ids,
            add_eos: config_get("add_eos_token")
                .and_then(Json::as_bool)
                .unwrap_or(false),
        }),
    })
}

/// Output bytes of a model (not added) token, by what the decoder does.
fn model_token_bytes(
    text: &str,
    byte_level: bool,
    byte_fallback: bool,
    metaspace: bool,
) -> Vec<u8> {
    if byte_level {
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match byte_level::char_to_byte(c) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        return out;
    }
    if byte_fallback && let Some(b) = parse_byte_token(text) {
        return vec![b];
    }
    if metaspace {
        return text.replace(SPACE_MARK, " ").into_bytes();
    }
    text.as_bytes().to_vec()
}

/// `<0xXX>` → the byte.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Every decoder `type` in the tokenizer's decoder (recursing into sequences).
fn decoder_types(tok: &tokenizers::Tokenizer) -> Vec<String> {
    fn walk(v: &Json, out: &mut Vec<String>) {
        match v {
            Json::Object(o) => {
                if let Some(Json::String(t)) = o.get("type") {
                    out.push(t.clone());
                }
                o.values().for_each(|v| walk(v, out));
            }
            Json::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(d) = tok.get_decoder()
        && let Ok(v) = serde_json::to_value(d)
    {
        walk(&v, &mut out);
    }
    out
}

fn read_json_if_present(path: &Path) -> Result<Option<Json>, TokenizerError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenizerError::Io {
                path: PathBuf::from(path),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: PathBuf::from(path),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xfF>"), Some(255));
        assert_eq!(parse_byte_token("<0x0A"), None);
        assert_eq!(parse_byte_token("<0x0AB>"), None);
    }

    #[test]
    fn model_token_bytes_follow_the_decoder() {
        assert_eq!(model_token_bytes("Ġhi", true, false, false), b" hi");
        assert_eq!(model_token_bytes("▁hi", false, true, true), b" hi");
        assert_eq!(model_token_bytes("<0x0A>", false, true, true), b"\n");
        assert_eq!(model_token_bytes("##ing", false, false, false), b"##ing");
    }
}
