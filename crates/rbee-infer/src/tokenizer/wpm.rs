//! WordPiece vocabularies from GGUF (`tokenizer.ggml.model = "bert"`): BERT-family encoders as
//! llama.cpp's converter writes them.
//!
//! The converter stores a word-initial piece `foo` as `▁foo` and a continuation `##foo` as
//! `foo` (and `[CLS]`-style tokens as they are). Undoing that gives back the model's original
//! WordPiece vocabulary, which runs through the `tokenizers` crate's BERT pipeline: clean-up,
//! CJK characters split out, lower-casing with accents stripped, splitting at whitespace and
//! punctuation, then greedy longest-match WordPiece (a word with no match is `[UNK]`). That is
//! the tokenizer the model was trained with, and what llama.cpp's WPM tokenizer approximates
//! (llama.cpp also lower-cases every WPM vocabulary and strips accents by mapping each
//! character to its first NFD code point; it has no 100-character word limit). On the test
//! corpora the two give the same ids (`tests/encoder.rs`).
//!
//! `[CLS]` goes first and `[SEP]` last ([`Tokenizer::encode_input`]), as llama.cpp's
//! `add_special` does for WPM.

use std::str::FromStr;

use rbee_format::gguf::Metadata;
use serde_json::{Map, Value as Json, json};

use super::error::TokenizerError;
use super::spm::SPACE_MARK;
use super::vocab::{ByteTable, Vocab, attr};
use super::{Engine, Inner, Tokenizer};

/// The longest word WordPiece splits; longer ones are `[UNK]` (BERT's own limit).
const MAX_WORD_CHARS: usize = 100;

pub(super) fn load(meta: &Metadata, tokens: &[String]) -> Result<Tokenizer, TokenizerError> {
    let n = tokens.len();
    let vocab = Vocab::new(tokens.iter().map(String::as_str))?;
    let attrs = super::gguf_meta::read_attrs(meta, n)?;
    let id_key = |key, default: u32| -> Result<Option<u32>, TokenizerError> {
        Ok(super::gguf_meta::token_id_key(meta, key, n)?
            .or(Some(default))
            .filter(|&id| (id as usize) < n))
    };
    // llama.cpp's WPM defaults: [CLS] 101 opens (as BOS), [SEP] 102 closes, [UNK] 100.
    let cls = match super::gguf_meta::token_id_key(meta, "tokenizer.ggml.bos_token_id", n)? {
        Some(id) => Some(id),
        None => id_key("tokenizer.ggml.cls_token_id", 101)?,
    };
    let sep = id_key("tokenizer.ggml.seperator_token_id", 102)?;
    let unk = id_key("tokenizer.ggml.unknown_token_id", 100)?;

    let mut pieces = ByteTable::with_capacity(n, n * 6);
    let mut map = Map::with_capacity(n);
    for (id, text) in tokens.iter().enumerate() {
        let control = attrs[id] & (attr::CONTROL | attr::UNKNOWN) != 0;
        let original = if let Some(word) = text.strip_prefix(SPACE_MARK) {
            pieces.push(format!(" {word}").as_bytes())?;
            word.to_owned()
        } else if control || (text.starts_with('[') && text.ends_with(']')) {
            pieces.push(if control { b"" } else { text.as_bytes() })?;
            text.clone()
        } else {
            pieces.push(text.as_bytes())?;
            format!("##{text}")
        };
        // The first id wins, as in the original vocab.txt order.
        map.entry(original).or_insert(Json::from(id));
    }
    let unk_text = unk
        .and_then(|id| tokens.get(id as usize))
        .cloned()
        .unwrap_or_else(|| "[UNK]".into());
    // Built as the tokenizer.json of a BERT model would state it.
    let spec = json!({
        "version": "1.0",
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
            "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "model": {"type": "WordPiece", "unk_token": unk_text, "continuing_subword_prefix": "##",
            "max_input_chars_per_word": MAX_WORD_CHARS, "vocab": map},
    });
    let tok = tokenizers::Tokenizer::from_str(&spec.to_string())
        .map_err(|source| TokenizerError::HfBuild { source })?;
    tracing::debug!(
        n_tokens = n,
        ?cls,
        ?sep,
        ?unk,
        "loaded GGUF WordPiece tokenizer"
    );
    Ok(Tokenizer {
        inner: std::sync::Arc::new(Inner {
            vocab,
            pieces,
            engine: Engine::Hf(Box::new(tok)),
            bos: cls,
            add_bos: cls.is_some(),
            eos_ids: sep.into_iter().collect(),
            add_eos: sep.is_some(),
        }),
    })
}
