//! The tokenizer on small hand-made vocabularies, where every expected id can
//! be worked out by hand from llama.cpp's rules: GGUF metadata for the
//! SentencePiece ("llama") and byte-level BPE ("gpt2") paths, and a
//! `tokenizer.json` folder.
#![allow(clippy::unwrap_used)]

use rbee_format::gguf::{Array, Metadata, Value};
use rbee_infer::tokenizer::{Tokenizer, TokenizerError};

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER: i32 = 4;
const BYTE: i32 = 6;

/// A Gemma-like SentencePiece vocabulary: specials, "\n" user-defined, 256
/// byte tokens, then pieces with descending scores.
fn spm_meta(add_space_prefix: Option<bool>) -> Metadata {
    let mut tokens: Vec<(String, f32, i32)> = vec![
        ("<pad>".into(), -1000.0, CONTROL),
        ("<eos>".into(), -1000.0, CONTROL),
        ("<bos>".into(), -1000.0, CONTROL),
        ("<unk>".into(), -1000.0, UNKNOWN),
        ("<start_of_turn>".into(), -1000.0, CONTROL),
        ("<end_of_turn>".into(), -1000.0, CONTROL),
        ("\n".into(), -1000.0, USER),
    ];
    for b in 0..=255u8 {
        tokens.push((format!("<0x{b:02X}>"), 0.0, BYTE));
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "u", "s", "he", "ll", "llo", "hello", "▁hello",
        "▁w", "or", "ld", "▁wor", "▁world", "user", "us", "er", "▁▁", "中",
    ];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push(((*p).into(), -(i as f32) - 1.0, NORMAL));
    }
    let mut m = Metadata::new();
    m.insert("general.name", "test");
    m.insert("tokenizer.ggml.model", "llama");
    m.insert(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(tokens.iter().map(|t| t.0.clone()).collect())),
    );
    m.insert(
        "tokenizer.ggml.scores",
        tokens.iter().map(|t| t.1).collect::<Vec<f32>>(),
    );
    m.insert(
        "tokenizer.ggml.token_type",
        tokens.iter().map(|t| t.2).collect::<Vec<i32>>(),
    );
    m.insert("tokenizer.ggml.bos_token_id", 2u32);
    m.insert("tokenizer.ggml.eos_token_id", 1u32);
    m.insert("tokenizer.ggml.unknown_token_id", 3u32);
    m.insert("tokenizer.ggml.add_bos_token", true);
    if let Some(v) = add_space_prefix {
        m.insert("tokenizer.ggml.add_space_prefix", v);
    }
    m
}

fn texts(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| tok.id_to_token(id).unwrap().to_string())
        .collect()
}

fn enc(tok: &Tokenizer, text: &str) -> Vec<String> {
    texts(tok, &tok.encode(text, false).unwrap())
}

#[test]
fn spm_without_space_prefix() {
    let tok = Tokenizer::from_gguf(&spm_meta(Some(false))).unwrap();
    assert_eq!(enc(&tok, "hello world"), ["hello", "▁world"]);
    assert_eq!(enc(&tok, " hello"), ["▁hello"]);
    assert_eq!(enc(&tok, ""), Vec::<String>::new());
    assert_eq!(enc(&tok, "  "), ["▁▁"]);
    assert_eq!(enc(&tok, "   "), ["▁▁", "▁"]);
    assert_eq!(tok.bos_id(), Some(2));
    assert!(tok.add_bos_default());
    assert_eq!(tok.encode("", true).unwrap(), [2]);
    assert_eq!(
        texts(&tok, &tok.encode("hello", true).unwrap()),
        ["<bos>", "hello"]
    );
}

#[test]
fn spm_space_prefix_defaults_on_and_follows_special_tokens() {
    // llama.cpp's default for "llama" vocabularies is a space prefix, added to
    // the first text and to every text right after a special token.
    for meta in [spm_meta(None), spm_meta(Some(true))] {
        let tok = Tokenizer::from_gguf(&meta).unwrap();
        assert_eq!(enc(&tok, "hello world"), ["▁hello", "▁world"]);
        assert_eq!(
            enc(&tok, "<start_of_turn>user\nhello"),
            ["<start_of_turn>", "▁", "user", "\n", "▁hello"]
        );
        assert_eq!(enc(&tok, " "), ["▁▁"]);
    }
}

#[test]
fn spm_special_tokens_in_text() {
    let tok = Tokenizer::from_gguf(&spm_meta(Some(false))).unwrap();
    assert_eq!(
        enc(&tok, "<start_of_turn>user\nhello<end_of_turn>\n"),
        [
            "<start_of_turn>",
            "user",
            "\n",
            "hello",
            "<end_of_turn>",
            "\n"
        ]
    );
    // An incomplete special token is ordinary text (here: bytes).
    assert_eq!(enc(&tok, "<eos")[0], "<0x3C>");
    assert_eq!(enc(&tok, "<bos>hello"), ["<bos>", "hello"]);
    assert_eq!(enc(&tok, "<unk>"), ["<unk>"]);
}

#[test]
fn spm_byte_fallback_for_unknown_characters() {
    let tok = Tokenizer::from_gguf(&spm_meta(Some(false))).unwrap();
    assert_eq!(
        enc(&tok, "中😀"),
        ["中", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    );
    assert_eq!(enc(&tok, "\t"), ["<0x09>"]);
    let ids = tok.encode("中😀 hello\n", false).unwrap();
    assert_eq!(tok.decode(&ids), "中😀 hello\n");
}

#[test]
fn spm_pieces_and_eos() {
    let tok = Tokenizer::from_gguf(&spm_meta(Some(false))).unwrap();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    assert_eq!(tok.token_bytes(id("▁world")), b" world");
    assert_eq!(tok.token_bytes(id("<0x0A>")), b"\n");
    assert_eq!(tok.token_bytes(id("<0xF0>")), [0xF0]);
    assert_eq!(tok.token_bytes(id("<end_of_turn>")), b"");
    assert_eq!(tok.token_bytes(id("<unk>")), b"");
    assert_eq!(tok.token_bytes(id("\n")), b"\n");
    assert_eq!(tok.token_bytes(9_999_999), b"");
    // Half an emoji is not valid UTF-8 on its own; decode replaces it.
    assert_eq!(tok.decode(&[id("<0xF0>"), id("hello")]), "\u{FFFD}hello");
    // EOS first, then <end_of_turn>, which llama.cpp also stops on.
    assert_eq!(tok.eos_ids(), [1, id("<end_of_turn>")]);
    assert_eq!(tok.vocab_size(), 7 + 256 + 25);
}

/// A byte-level BPE vocabulary, Qwen2 style.
fn bpe_meta(pre: &str) -> Metadata {
    let mut tokens: Vec<String> = Vec::new();
    // The 256 byte characters (GPT-2 table) first.
    let mut n = 0u32;
    for b in 0u32..256 {
        let keeps = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if keeps {
            b
        } else {
            n += 1;
            255 + n
        };
        tokens.push(char::from_u32(cp).unwrap().to_string());
    }
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "Ġ Ġ",
    ];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    tokens.extend(["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from));
    let n_tokens = tokens.len();
    let mut types = vec![NORMAL; n_tokens];
    types[n_tokens - 3..].fill(CONTROL);
    let mut m = Metadata::new();
    m.insert("tokenizer.ggml.model", "gpt2");
    m.insert("tokenizer.ggml.pre", pre);
    m.insert("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
    m.insert("tokenizer.ggml.token_type", types);
    m.insert("tokenizer.ggml.merges", merges.to_vec());
    m.insert("tokenizer.ggml.bos_token_id", (n_tokens - 3) as u32);
    m.insert("tokenizer.ggml.eos_token_id", (n_tokens - 1) as u32);
    m.insert("tokenizer.ggml.add_bos_token", false);
    m
}

#[test]
fn bpe_qwen2_style() {
    let tok = Tokenizer::from_gguf(&bpe_meta("qwen2")).unwrap();
    assert_eq!(enc(&tok, "hello world"), ["hello", "Ġworld"]);
    assert_eq!(
        enc(&tok, "<|im_start|>hello<|im_end|>\n"),
        ["<|im_start|>", "hello", "<|im_end|>", "Ċ"]
    );
    assert_eq!(enc(&tok, "é1"), ["Ã", "©", "1"]);
    assert_eq!(enc(&tok, ""), Vec::<String>::new());
    assert_eq!(enc(&tok, "   "), ["ĠĠ", "Ġ"]);
    assert!(!tok.add_bos_default());
    // add_bos asks for BOS and the model has one.
    assert_eq!(tok.encode("h", true).unwrap()[0], tok.bos_id().unwrap());

    let ids = tok.encode("héllo wörld 😀\n", false).unwrap();
    assert_eq!(tok.decode(&ids), "héllo wörld 😀\n");
    let id = |t: &str| tok.token_to_id(t).unwrap();
    assert_eq!(tok.token_bytes(id("Ġworld")), b" world");
    assert_eq!(tok.token_bytes(id("<|im_end|>")), b"");
    // <|im_end|> (eos) and <|endoftext|>, which llama.cpp also stops on.
    assert_eq!(tok.eos_ids(), [id("<|im_end|>"), id("<|endoftext|>")]);
}

#[test]
fn bpe_unknown_pre_falls_back_to_gpt2() {
    let tok = Tokenizer::from_gguf(&bpe_meta("no-such-pre")).unwrap();
    assert_eq!(enc(&tok, "hello world"), ["hello", "Ġworld"]);
}

#[test]
fn load_errors_name_the_problem() {
    let mut m = spm_meta(None);
    m.insert("tokenizer.ggml.model", "t5");
    assert!(matches!(
        Tokenizer::from_gguf(&m),
        Err(TokenizerError::UnsupportedModel { .. })
    ));

    let mut m = spm_meta(None);
    m.remove("tokenizer.ggml.tokens");
    let err = Tokenizer::from_gguf(&m).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");

    let mut m = spm_meta(None);
    m.insert("tokenizer.ggml.scores", vec![0f32; 3]);
    assert!(matches!(
        Tokenizer::from_gguf(&m),
        Err(TokenizerError::LengthMismatch { .. })
    ));

    let mut m = bpe_meta("qwen2");
    m.remove("tokenizer.ggml.merges");
    assert!(matches!(
        Tokenizer::from_gguf(&m),
        Err(TokenizerError::MissingKey { .. })
    ));

    let mut m = spm_meta(None);
    m.insert("tokenizer.ggml.tokens", vec!["a", "b", "a"]);
    m.insert("tokenizer.ggml.scores", vec![0f32; 3]);
    m.insert("tokenizer.ggml.token_type", vec![1i32; 3]);
    assert!(matches!(
        Tokenizer::from_gguf(&m),
        Err(TokenizerError::DuplicateToken { .. })
    ));
}

#[test]
fn from_dir_reads_tokenizer_json_and_configs() {
    let dir = tempfile::tempdir().unwrap();
    // A byte-level BPE tokenizer.json: "h e" "l l" "he ll" "hell o" merges.
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["h", "e", "l", "o", "Ġ", "w", "he", "ll", "hell", "hello"]
        .iter()
        .enumerate()
    {
        vocab.insert((*t).to_string(), serde_json::json!(i));
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 10, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 11, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 12, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": ["h e", "l l", "he ll", "hell o"]
        }
    });
    std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": {"content": "<s>"}, "eos_token": "<|im_end|>", "add_bos_token": true}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [11, 10]}"#,
    )
    .unwrap();

    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.vocab_size(), 13);
    assert_eq!(tok.encode("<|im_start|>hello", true).unwrap(), [12, 10, 9]);
    assert_eq!(tok.bos_id(), Some(12));
    assert!(tok.add_bos_default());
    assert_eq!(tok.eos_ids(), [11, 10]);
    assert_eq!(tok.token_bytes(4), b" ");
    assert_eq!(tok.token_bytes(11), b"");
    assert_eq!(tok.decode(&[10, 9, 4]), "hello ");
    assert_eq!(tok.id_to_token(9), Some("hello"));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(11));

    // Without configs: no BOS, only the named end-of-turn tokens.
    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    std::fs::remove_file(dir.path().join("generation_config.json")).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.bos_id(), None);
    assert!(!tok.add_bos_default());
    assert_eq!(tok.encode("hello", true).unwrap(), [9]);
    assert_eq!(tok.eos_ids(), [11]);

    let err = Tokenizer::from_dir(&dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

mod round_trip {
    use super::*;
    use proptest::prelude::*;

    // No '<' or '[' so that random text cannot spell a control token, whose
    // piece is empty by design.
    const ALPHABET: &str = "helowrdus \n\t中文😀é.,!?0123456789\u{a0}";

    fn text() -> impl Strategy<Value = String> {
        text_from(ALPHABET)
    }

    fn text_from(alphabet: &str) -> impl Strategy<Value = String> {
        let chars: Vec<char> = alphabet.chars().collect();
        proptest::collection::vec(proptest::sample::select(chars), 0..40)
            .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn spm_decode_inverts_encode(s in text()) {
            let tok = Tokenizer::from_gguf(&spm_meta(Some(false))).unwrap();
            let ids = tok.encode(&s, false).unwrap();
            prop_assert_eq!(tok.decode(&ids), s);
        }

        #[test]
        // SentencePiece cannot round-trip a literal "▁" (it reads as a space,
        // in llama.cpp too); byte-level BPE can.
        fn bpe_decode_inverts_encode(s in text_from("helowrd \n\t中😀é.,!?019\u{2581}\u{a0}")) {
            let tok = Tokenizer::from_gguf(&bpe_meta("qwen2")).unwrap();
            let ids = tok.encode(&s, false).unwrap();
            prop_assert_eq!(tok.decode(&ids), s);
        }

        #[test]
        fn any_text_encodes(s in "\\PC*") {
            for meta in [spm_meta(None), bpe_meta("llama-bpe"), bpe_meta("deepseek-llm")] {
                let tok = Tokenizer::from_gguf(&meta).unwrap();
                let ids = tok.encode(&s, true).unwrap();
                prop_assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            }
        }
    }
}
