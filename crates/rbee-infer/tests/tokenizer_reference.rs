//! Our tokenizer against llama.cpp's, on reference vectors that
//! `scripts/reference/make_reference.py` recorded from llama.cpp:
//!
//! - `gemma3-270m-tokenizer.json`: a corpus of tricky strings tokenized by the
//!   real Gemma 3 270M vocabulary (needs the demo model: `RBEE_DEMO_MODEL` or
//!   the default cache path; skipped with a message when it is absent).
//! - `tiny-<arch>.gguf` + `tiny-<arch>.json`: small SentencePiece and
//!   byte-level BPE vocabularies in real GGUF files; always run.
//!
//! Ids must match exactly. Pieces are compared as llama.cpp recorded them,
//! `token_to_piece(id, special = true)`: for control and unknown tokens that is
//! the token text (our `token_bytes` renders them empty, like `special = false`),
//! for everything else it must equal `token_bytes`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use rbee_infer::tokenizer::Tokenizer;
use serde_json::Value;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reference file {} missing: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u8::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

fn demo_model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RBEE_DEMO_MODEL") {
        return Some(PathBuf::from(p));
    }
    let cache = match std::env::var_os("RBEE_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("XDG_CACHE_HOME") {
            Some(d) => PathBuf::from(d).join("rbee"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/rbee"),
        },
    };
    Some(cache.join("demo-model/gemma-3-270m-q4_k_m.gguf"))
}

/// Loads a GGUF's tokenizer, printing how long the header read and the
/// tokenizer build took.
fn load(path: &Path) -> Tokenizer {
    let t0 = Instant::now();
    let file = rbee_format::gguf::GgufFile::open(path).unwrap();
    let t1 = Instant::now();
    let tok = Tokenizer::from_gguf(&file.metadata).unwrap();
    let t2 = Instant::now();
    eprintln!(
        "{}: GGUF header {:.1} ms, Tokenizer::from_gguf {:.1} ms ({} tokens)",
        path.file_name().unwrap().to_string_lossy(),
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3,
        tok.vocab_size()
    );
    tok
}

/// Whether llama.cpp renders `id` empty with `special = false`: what we can
/// tell from outside is that our piece is empty while the token text is not.
fn is_hidden(tok: &Tokenizer, id: u32) -> bool {
    tok.token_bytes(id).is_empty() && !tok.id_to_token(id).unwrap_or_default().is_empty()
}

/// Checks ids and pieces of one case; returns a description of the mismatch.
fn check_case(
    tok: &Tokenizer,
    text: &str,
    add_bos: bool,
    want_ids: &[u32],
    want_pieces: &[Vec<u8>],
) -> Option<String> {
    let got = match tok.encode(text, add_bos) {
        Ok(ids) => ids,
        Err(e) => return Some(format!("{text:?}: encode failed: {e}")),
    };
    if got != want_ids {
        let show = |ids: &[u32]| -> Vec<String> {
            ids.iter()
                .map(|&id| format!("{id}:{:?}", tok.id_to_token(id).unwrap_or("?")))
                .collect()
        };
        return Some(format!(
            "{text:?} (add_bos={add_bos}):\n   ours  {:?}\n   llama {:?}",
            show(&got),
            show(want_ids)
        ));
    }
    for (&id, want) in want_ids.iter().zip(want_pieces) {
        let ours: &[u8] = if is_hidden(tok, id) {
            tok.id_to_token(id).unwrap().as_bytes()
        } else {
            tok.token_bytes(id)
        };
        if ours != want.as_slice() {
            return Some(format!(
                "{text:?}: piece of {id} is {:?}, llama.cpp says {:?}",
                String::from_utf8_lossy(ours),
                String::from_utf8_lossy(want)
            ));
        }
    }
    None
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

#[test]
fn gemma3_corpus_matches_llama_cpp() {
    let Some(model) = demo_model_path().filter(|p| p.exists()) else {
        eprintln!(
            "SKIPPED gemma3_corpus_matches_llama_cpp: demo model not found (set RBEE_DEMO_MODEL or run scripts/fetch-demo-model)"
        );
        return;
    };
    let reference = read_json(&reference_dir().join("gemma3-270m-tokenizer.json"));
    let tok = load(&model);

    assert_eq!(
        tok.vocab_size() as u64,
        reference["vocab_size"].as_u64().unwrap()
    );
    assert_eq!(tok.bos_id().map(u64::from), reference["bos_id"].as_u64());
    assert_eq!(
        tok.add_bos_default(),
        reference["add_bos"].as_bool().unwrap()
    );
    assert_eq!(
        sorted(tok.eos_ids().to_vec()),
        sorted(ids_of(&reference["eog_ids"]))
    );
    assert_eq!(
        tok.eos_ids().first().map(|&i| u64::from(i)),
        reference["eos_id"].as_u64()
    );
    for (name, id) in reference["named_token_ids"].as_object().unwrap() {
        assert_eq!(
            tok.token_to_id(name).map(u64::from),
            id.as_u64(),
            "{name:?}"
        );
    }

    let cases = reference["cases"].as_array().unwrap();
    let (mut checked, mut skipped) = (0, 0);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let add_bos = case["add_bos"].as_bool().unwrap();
        if !case["special"].as_bool().unwrap() {
            // parse_special = false: not something our API offers.
            eprintln!("not checked (parse_special=false case): {text:?}");
            skipped += 1;
            continue;
        }
        checked += 1;
        let ids = ids_of(&case["ids"]);
        let pieces: Vec<Vec<u8>> = case["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .map(bytes_of)
            .collect();
        if let Some(f) = check_case(&tok, text, add_bos, &ids, &pieces) {
            failures.push(f);
            continue;
        }
        // Gemma has no space prefix and no space clean-up, so llama.cpp's
        // detokenize is exactly the pieces joined.
        let decoded = bytes_of(&case["decoded"]);
        let ours: Vec<u8> = ids
            .iter()
            .flat_map(|&id| tok.token_bytes(id).to_vec())
            .collect();
        if ours != decoded {
            failures.push(format!(
                "{text:?}: decoded {:?}, llama.cpp {:?}",
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&decoded)
            ));
        }
    }
    eprintln!(
        "gemma3 corpus: {} of {checked} cases match llama.cpp exactly ({skipped} not applicable)",
        checked - failures.len()
    );
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

#[test]
fn tiny_vocabularies_match_llama_cpp() {
    // Every architecture the engine runs has a tiny reference vocabulary.
    for &arch in rbee_infer::SUPPORTED_ARCHITECTURES {
        let reference = read_json(&reference_dir().join(format!("tiny-{arch}.json")));
        let tok = load(&reference_dir().join(format!("tiny-{arch}.gguf")));

        assert_eq!(
            tok.vocab_size() as u64,
            reference["vocab_size"].as_u64().unwrap(),
            "{arch}"
        );
        assert_eq!(
            tok.bos_id().map(u64::from),
            reference["bos_id"].as_u64(),
            "{arch} bos"
        );
        assert_eq!(
            tok.add_bos_default(),
            reference["add_bos"].as_bool().unwrap(),
            "{arch} add_bos"
        );
        assert_eq!(
            sorted(tok.eos_ids().to_vec()),
            sorted(ids_of(&reference["eog_ids"])),
            "{arch} eog"
        );

        let mut failures = Vec::new();
        let prompt = reference["prompt"].as_str().unwrap();
        let pieces: Vec<Vec<u8>> = reference["prompt_pieces"]
            .as_array()
            .unwrap()
            .iter()
            .map(bytes_of)
            .collect();
        failures.extend(check_case(
            &tok,
            prompt,
            tok.add_bos_default(),
            &ids_of(&reference["prompt_ids"]),
            &pieces,
        ));
        let cases = reference["tokenizer_cases"].as_array().unwrap();
        for case in cases {
            let pieces: Vec<Vec<u8>> = case["pieces"]
                .as_array()
                .unwrap()
                .iter()
                .map(bytes_of)
                .collect();
            failures.extend(check_case(
                &tok,
                case["text"].as_str().unwrap(),
                false,
                &ids_of(&case["ids"]),
                &pieces,
            ));
        }
        eprintln!(
            "tiny-{arch}: {} of {} cases match",
            cases.len() + 1 - failures.len(),
            cases.len() + 1
        );
        assert!(
            failures.is_empty(),
            "tiny-{arch} mismatches:\n{}",
            failures.join("\n")
        );
    }
}

#[test]
fn gemma3_encodes_a_2kb_prompt_quickly() {
    let Some(model) = demo_model_path().filter(|p| p.exists()) else {
        eprintln!("SKIPPED gemma3_encodes_a_2kb_prompt_quickly: demo model not found");
        return;
    };
    let tok = load(&model);
    let unit = "<start_of_turn>user\nExplain, in detail, how a café in Zürich prices 12 flat whites \
                (日本語 too) 😀 and why.<end_of_turn>\n<start_of_turn>model\nSure! Here it is:\n\n";
    let prompt = unit.repeat(2048 / unit.len() + 1);
    let prompt = &prompt[..prompt
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i >= 2048)
        .unwrap()];
    let ids = tok.encode(prompt, true).unwrap();
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(tok.encode(std::hint::black_box(prompt), true).unwrap());
    }
    let per = t.elapsed().as_secs_f64() * 1e3 / f64::from(rounds);
    eprintln!(
        "encode of a {} byte prompt ({} tokens): {per:.2} ms",
        prompt.len(),
        ids.len()
    );
    // Control tokens render empty; everything else round-trips (Gemma adds
    // no space prefix).
    let plain = prompt
        .replace("<start_of_turn>", "")
        .replace("<end_of_turn>", "");
    assert_eq!(tok.decode(&ids[1..]), plain);
}
