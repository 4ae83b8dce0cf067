//! Building a [`Tokenizer`] from GGUF `tokenizer.ggml.*` metadata, following
//! llama.cpp's `llama_vocab::impl::load` step by step: defaults per vocabulary
//! type, key overrides, the attribute fix-ups it applies by token text, the
//! end-of-generation set, the special-token list and the output pieces.

use rbee_format::gguf::{Array, Metadata, Value};

use super::bpe::Bpe;
use super::byte_level;
use super::error::TokenizerError;
use super::gguf_meta::{read_attrs, token_id_key};
use super::pretokenize::{gpt2_fallback, pre_config};
use super::special::SpecialMatcher;
use super::spm::{SPACE_MARK, Spm};
use super::vocab::{ByteTable, Vocab, attr};
use super::{Engine, Inner, Tokenizer};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// Texts llama.cpp treats as end-of-generation whatever their type (and then
/// forces to control type).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle tokens llama.cpp recognises by text when their id key
/// is absent (forcing them to control type): (key, texts, is end-of-generation).
const FIM: &[(&str, &[&str], bool)] = &[
    (
        "tokenizer.ggml.fim_pre_token_id",
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
        false,
    ),
    (
        "tokenizer.ggml.fim_suf_token_id",
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
        false,
    ),
    (
        "tokenizer.ggml.fim_mid_token_id",
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
        false,
    ),
    (
        "tokenizer.ggml.fim_pad_token_id",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
        true,
    ),
    (
        "tokenizer.ggml.fim_rep_token_id",
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
        true,
    ),
    ("tokenizer.ggml.fim_sep_token_id", &["<|file_sep|>"], true),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Spm,
    Bpe,
}

pub(super) fn load(meta: &Metadata) -> Result<Tokenizer, TokenizerError> {
    let model = required_str(meta, KEY_MODEL)?;
    let kind = match model {
        "llama" => Kind::Spm,
        "gpt2" => Kind::Bpe,
        "bert" => return super::wpm::load(meta, required_str_array(meta, KEY_TOKENS)?),
        other => {
            return Err(TokenizerError::UnsupportedModel {
                model: other.to_owned(),
            });
        }
    };
    let pre = meta.get_str(KEY_PRE);

    // Defaults per vocabulary type, before keys override them: llama.cpp's,
    // odd as BOS = EOS = 11 for BPE is, so a file missing the keys behaves
    // the same here as there.
    let (mut bos, mut eos) = match kind {
        Kind::Spm => (Some(1u32), Some(2u32)),
        Kind::Bpe => (Some(11), Some(11)),
    };
    let mut add_space_prefix = kind == Kind::Spm;
    let mut add_bos = kind == Kind::Spm;
    let pre_cfg = match kind {
        Kind::Spm => None,
        Kind::Bpe => Some(match pre_config(pre) {
            Some(cfg) => {
                if pre.is_none() {
                    tracing::warn!(
                        "GGUF has no `{KEY_PRE}`; using llama.cpp's default pre-tokenizer, tokenization may be off"
                    );
                }
                cfg
            }
            None => {
                // llama.cpp refuses such a file; a close-enough tokenization
                // beats not running the model at all.
                tracing::warn!(
                    pre = pre.unwrap_or_default(),
                    "unknown `{KEY_PRE}`; falling back to the GPT-2 pre-tokenizer, tokenization may differ from llama.cpp"
                );
                gpt2_fallback()
            }
        }),
    };
    if let Some(cfg) = &pre_cfg {
        add_bos |= cfg.add_bos;
    }
    if let Some(v) = optional_bool(meta, KEY_ADD_SPACE_PREFIX)? {
        add_space_prefix = v;
    }

    // Token texts, scores and types.
    let tokens = required_str_array(meta, KEY_TOKENS)?;
    let n = tokens.len();
    let renamed: Vec<(usize, String)> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| t.is_empty())
        .map(|(i, _)| {
            tracing::warn!(id = i, "empty token text in GGUF vocabulary");
            (i, format!("[EMPTY_{i}]"))
        })
        .collect();
    let vocab = if renamed.is_empty() {
        Vocab::new(tokens.iter().map(String::as_str))?
    } else {
        let mut texts: Vec<&str> = tokens.iter().map(String::as_str).collect();
        for (i, t) in &renamed {
            texts[*i] = t;
        }
        Vocab::new(texts.into_iter())?
    };
    let scores = read_scores(meta, n)?;
    let mut attrs = read_attrs(meta, n)?;

    // Special token ids: an out-of-range default is dropped, an out-of-range
    // key keeps the default (both with a warning in llama.cpp).
    let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
    bos = in_range(bos);
    eos = in_range(eos);
    bos = token_id_key(meta, "tokenizer.ggml.bos_token_id", n)?.or(bos);
    eos = token_id_key(meta, "tokenizer.ggml.eos_token_id", n)?.or(eos);
    let mut eot = token_id_key(meta, "tokenizer.ggml.eot_token_id", n)?;
    let mut eom = token_id_key(meta, "tokenizer.ggml.eom_token_id", n)?;
    if let Some(v) = optional_bool(meta, KEY_ADD_BOS)? {
        add_bos = v;
    }
    // Appended by llama.cpp's `add_special` (an input to embed, never a prompt to continue).
    let add_eos = optional_bool(meta, KEY_ADD_EOS)?.unwrap_or(false) && eos.is_some();

    // Auto-detection by text, each forcing the token to control type.
    let find_first = |texts: &[&str]| -> Option<u32> {
        // llama.cpp walks a hash map, so with several candidates present its
        // pick is arbitrary; the lowest id is ours.
        texts.iter().filter_map(|t| vocab.get(t)).min()
    };
    if eot.is_none() {
        eot = find_first(&[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end_of_text|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "<｜end▁of▁sentence｜>",
            "<end_of_utterance>",
        ]);
        if let Some(id) = eot {
            force_control(id, &mut attrs);
        }
    }
    if eom.is_none() {
        eom = find_first(&["<|eom_id|>"]);
        if let Some(id) = eom {
            force_control(id, &mut attrs);
        }
    }
    let mut eog: Vec<u32> = Vec::new();
    for (key, texts, is_eog) in FIM {
        let mut id = token_id_key(meta, key, n)?;
        if id.is_none() {
            id = find_first(texts);
            if let Some(id) = id {
                force_control(id, &mut attrs);
            }
        }
        if let (Some(id), true) = (id, *is_eog) {
            eog.push(id);
        }
    }
    for text in EOG_TEXTS {
        if let Some(id) = vocab.get(text) {
            eog.push(id);
            force_control(id, &mut attrs);
        }
    }
    // gpt-oss: these must always be rendered.
    for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
        if let Some(id) = vocab.get(text) {
            attrs[id as usize] = attr::USER_DEFINED;
        }
    }
    eog.extend([eos, eot, eom].into_iter().flatten());
    // o200k_harmony / solar-open: there "<|end|>" ends a message, not the
    // generation.
    let has = |t: &str| vocab.get(t).is_some_and(|id| eog.contains(&id));
    if let Some(end) = vocab.get("<|end|>").filter(|id| eog.contains(id))
        && ((has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>")))
    {
        eog.retain(|&id| id != end);
        attrs[end as usize] = attr::USER_DEFINED;
    }
    let mut eos_ids: Vec<u32> = eos.into_iter().collect();
    eog.sort_unstable();
    eog.dedup();
    eos_ids.extend(eog.into_iter().filter(|&id| Some(id) != eos));

    // Special tokens for text splitting, then output pieces; both from the
    // attributes as they stand now, as in llama.cpp.
    let special_ids: Vec<u32> = (0..n as u32)
        .filter(|&id| {
            attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
        })
        .collect();
    let pieces = build_pieces(&vocab, &attrs, kind)?;

    // Phi-3: special tokens swallow the whitespace after them (llama.cpp sets
    // this by model name, after building its caches).
    let name = meta
        .get_str("general.name")
        .unwrap_or_default()
        .to_lowercase();
    if name.contains("phi-3") || name.contains("phi3") {
        for &id in &special_ids {
            attrs[id as usize] |= attr::RSTRIP;
        }
        if let Some(id) = vocab.get("</s>") {
            attrs[id as usize] |= attr::RSTRIP;
        }
        for t in ["<unk>", "<s>", "<|endoftext|>"] {
            if let Some(id) = vocab.get(t) {
                attrs[id as usize] &= !attr::RSTRIP;
            }
        }
    }
    let special = SpecialMatcher::new(&vocab, &attrs, special_ids);
    let n_special = special.len();

    let engine = match kind {
        Kind::Spm => Engine::Spm {
            spm: Box::new(Spm::new(&vocab, scores)),
            special,
            add_space_prefix,
        },
        Kind::Bpe => {
            let merges = match meta.get(KEY_MERGES) {
                None => {
                    return Err(TokenizerError::MissingKey { key: KEY_MERGES });
                }
                Some(v) => v.as_str_array().ok_or(TokenizerError::WrongType {
                    key: KEY_MERGES,
                    expected: "array of strings",
                    found: v.type_name(),
                })?,
            };
            Engine::Bpe {
                bpe: Box::new(Bpe::new(
                    &vocab,
                    merges,
                    &pre_cfg.unwrap_or_else(gpt2_fallback),
                )?),
                special,
            }
        }
    };
    tracing::debug!(
        model,
        pre = pre.unwrap_or_default(),
        n_tokens = n,
        n_special,
        ?bos,
        add_bos,
        add_space_prefix,
        ?eos_ids,
        "loaded GGUF tokenizer"
    );
    Ok(Tokenizer {
        inner: std::sync::Arc::new(Inner {
            vocab,
            pieces,
            engine,
            bos,
            add_bos,
            eos_ids,
            add_eos,
        }),
    })
}

/// llama.cpp's `token_to_piece(id, special = false)` for every token.
fn build_pieces(vocab: &Vocab, attrs: &[u16], kind: Kind) -> Result<ByteTable, TokenizerError> {
    let mut pieces = ByteTable::with_capacity(vocab.len(), vocab.len() * 6);
    let mut scratch = Vec::new();
    for id in 0..vocab.len() as u32 {
        let a = attrs[id as usize];
        let text = vocab.bytes(id).unwrap_or_default();
        if a & (attr::UNKNOWN | attr::CONTROL) != 0 {
            // Not rendered.
        } else if a & attr::USER_DEFINED != 0 {
            pieces.extend(text);
        } else if a & attr::NORMAL != 0 {
            match kind {
                Kind::Spm => unescape_whitespace(text, &mut pieces),
                Kind::Bpe => {
                    scratch.clear();
                    byte_level::decode_text(vocab.text(id).unwrap_or_default(), &mut scratch);
                    pieces.extend(&scratch);
                }
            }
        } else if a & attr::BYTE != 0 {
            pieces.push_byte(byte_token_value(vocab.text(id).unwrap_or_default()));
        }
        pieces.finish_entry()?;
    }
    Ok(pieces)
}

/// llama.cpp's `llama_unescape_whitespace`: "▁" (E2 96 81) becomes " ".
fn unescape_whitespace(text: &[u8], out: &mut ByteTable) {
    let mark = SPACE_MARK.as_bytes();
    let mut rest = text;
    while let Some(i) = rest.windows(mark.len()).position(|w| w == mark) {
        out.extend(&rest[..i]);
        out.push_byte(b' ');
        rest = &rest[i + mark.len()..];
    }
    out.extend(rest);
}

/// llama.cpp marks tokens it recognises by text (end of turn, FIM) as
/// control tokens, whatever the file says.
fn force_control(id: u32, attrs: &mut [u16]) {
    let a = &mut attrs[id as usize];
    if *a & attr::CONTROL == 0 {
        tracing::debug!(id, "control-looking token was not control-type; overriding");
        *a |= attr::CONTROL;
    }
}

fn byte_token_value(text: &str) -> u8 {
    let digits = text.get(3..5).unwrap_or_default();
    let mut v: u32 = 0;
    for c in digits.chars() {
        match c.to_digit(16) {
            Some(d) => v = v * 16 + d,
            None => break,
        }
    }
    v as u8
}

fn required_str<'m>(meta: &'m Metadata, key: &'static str) -> Result<&'m str, TokenizerError> {
    let v = meta.get(key).ok_or(TokenizerError::MissingKey { key })?;
    v.as_str().ok_or(TokenizerError::WrongType {
        key,
        expected: "string",
        found: v.type_name(),
    })
}

fn required_str_array<'m>(
    meta: &'m Metadata,
    key: &'static str,
) -> Result<&'m [String], TokenizerError> {
    let v = meta.get(key).ok_or(TokenizerError::MissingKey { key })?;
    v.as_str_array().ok_or(TokenizerError::WrongType {
        key,
        expected: "array of strings",
        found: v.type_name(),
    })
}

fn optional_bool(meta: &Metadata, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match meta.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or(TokenizerError::WrongType {
            key,
            expected: "bool",
            found: v.type_name(),
        }),
    }
}

fn read_scores(meta: &Metadata, n: usize) -> Result<Vec<f32>, TokenizerError> {
    let Some(v) = meta.get(KEY_SCORES) else {
        return Ok(vec![0.0; n]);
    };
    let scores: Vec<f32> = match v {
        Value::Array(Array::F32(s)) => s.get(..n).map(<[f32]>::to_vec),
        Value::Array(Array::I32(s)) => s.get(..n).map(|s| s.iter().map(|&x| x as f32).collect()),
        _ => {
            return Err(TokenizerError::WrongType {
                key: KEY_SCORES,
                expected: "array of f32 or i32",
                found: v.type_name(),
            });
        }
    }
    .ok_or(TokenizerError::LengthMismatch {
        key: KEY_SCORES,
        expected: n,
        found: v.as_array().map_or(0, Array::len),
    })?;
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_token_values() {
        assert_eq!(byte_token_value("<0x0A>"), 10);
        assert_eq!(byte_token_value("<0xFF>"), 255);
        assert_eq!(byte_token_value("<0xZ1>"), 0);
    }
}
