//! BERT-family encoders: all-MiniLM-L6-v2 (a sentence-transformers folder) against an
//! independent numpy implementation, a tiny random-weight `bert` GGUF against llama.cpp's
//! embedding mode, batching, bounds and errors. One MiniLM load serves the whole file.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rbee_infer::InferError;
use rbee_infer::engine::{
    Backend, CandleBackend, Embeddings, EncodeRequest, GenerateRequest, LoadOptions, LoadedModel,
    Pooling, Prompt,
};
use rbee_infer::sampling::SamplingParams;
use rbee_infer::tokenizer::Tokenizer;

/// all-MiniLM-L6-v2, loaded once for every test here that only reads from it.
fn minilm() -> Option<Arc<dyn LoadedModel>> {
    static MODEL: OnceLock<Option<Arc<dyn LoadedModel>>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = embed_model()?;
            Some(CandleBackend.load(&dir, &LoadOptions::default()).unwrap())
        })
        .clone()
}

fn encode(model: &dyn LoadedModel, inputs: Vec<Prompt>, normalize: bool) -> Embeddings {
    model
        .encode(EncodeRequest {
            inputs,
            normalize,
            truncate: true,
        })
        .unwrap()
        .wait()
        .unwrap()
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(reference_dir().join(name)).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// 30 texts (unicode, code, an empty one, three that are cut at 256 tokens) through the real
/// model in one batch: the tokens equal the reference tokenizer's, and every vector is within
/// cosine 0.9999 of the numpy float64 forward pass (`scripts/reference/bert_reference.py`).
#[test]
fn minilm_matches_an_independent_numpy_bert() {
    let Some(model) = minilm() else {
        return;
    };
    let info = model.info();
    assert_eq!(info.architecture, "bert");
    assert_eq!(
        (info.embedding_length, info.context_length, info.pooling),
        (384, 256, Pooling::Mean)
    );
    assert!(info.declares_pooling && info.normalize && !info.generates && !info.matryoshka);
    let reference = json("minilm-corpus.json");
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 30);
    let tokenizer = Tokenizer::from_dir(&embed_model().unwrap()).unwrap();
    let texts: Vec<Prompt> = cases
        .iter()
        .map(|c| Prompt::Text(c["text"].as_str().unwrap().to_owned()))
        .collect();
    let got = encode(model.as_ref(), texts, true);
    let mut truncated = 0;
    let mut worst = 1.0f64;
    for (case, ours) in cases.iter().zip(&got.vectors) {
        let text = case["text"].as_str().unwrap();
        let want_ids = ids(&case["ids"]);
        assert_eq!(
            tokenizer.encode_input(text, Some(256)).unwrap(),
            want_ids,
            "tokens of {text:?}"
        );
        truncated += usize::from(want_ids.len() == 256);
        let cos = cosine(ours, &floats(&case["embedding"]));
        worst = worst.min(cos);
        assert!(cos >= 0.9999, "{text:?}: cosine {cos}");
        let norm: f64 = ours.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
        assert!((norm - 1.0).abs() < 1e-5, "{text:?}: |v|² = {norm}");
    }
    assert!(truncated >= 3, "the long texts are cut at 256 tokens");
    let tokens: usize = cases
        .iter()
        .map(|c| c["ids"].as_array().unwrap().len())
        .sum();
    assert_eq!(got.prompt_tokens, tokens);
    eprintln!("minilm vs numpy: worst cosine {worst:.9} over 30 texts");
}

/// An input's vector does not depend on what it was batched with: alone, in a batch of
/// 30 mixed lengths, or in another order, the vectors agree to 1e-6 per value (the GEMM may
/// block a different number of rows differently; nothing else in the pass mixes rows).
#[test]
fn an_inputs_vector_does_not_depend_on_its_batch() {
    let Some(model) = minilm() else {
        return;
    };
    let reference = json("minilm-corpus.json");
    let texts: Vec<Prompt> = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Prompt::Text(c["text"].as_str().unwrap().to_owned()))
        .collect();
    let together = encode(model.as_ref(), texts.clone(), false);
    let mut reversed_inputs = texts.clone();
    reversed_inputs.reverse();
    let mut reversed = encode(model.as_ref(), reversed_inputs, false).vectors;
    reversed.reverse();
    let mut worst = 0f32;
    for (i, text) in texts.iter().enumerate() {
        let alone = encode(model.as_ref(), vec![text.clone()], false);
        for other in [&together.vectors[i], &reversed[i]] {
            let diff = alone.vectors[0]
                .iter()
                .zip(other)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst = worst.max(diff);
            assert!(diff <= 1e-6, "input {i}: max |diff| {diff}");
        }
    }
    eprintln!("batched vs alone: max |diff| {worst:e}");
}

/// Requests sent at once from several threads are served together and each gets its own
/// answer, equal to what it gets alone.
#[test]
fn concurrent_requests_each_get_their_own_vectors() {
    let Some(model) = minilm() else {
        return;
    };
    let request = |i: usize| -> Vec<Prompt> {
        (0..=i % 4)
            .map(|j| Prompt::Text(format!("request {i} input {j}: bees and hives")))
            .collect()
    };
    let alone: Vec<Embeddings> = (0..8)
        .map(|i| encode(model.as_ref(), request(i), true))
        .collect();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let model = model.clone();
            std::thread::spawn(move || encode(model.as_ref(), request(i), true))
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let got = t.join().unwrap();
        assert_eq!(got.vectors.len(), alone[i].vectors.len());
        assert_eq!(got.prompt_tokens, alone[i].prompt_tokens);
        for (a, b) in got.vectors.iter().zip(&alone[i].vectors) {
            assert!(cosine(a, b) > 0.999_999, "request {i}");
        }
    }
}

#[test]
fn too_long_inputs_are_refused_unless_truncation_is_asked_for() {
    let Some(model) = minilm() else {
        return;
    };
    let long = "word ".repeat(400);
    let request = |truncate| EncodeRequest {
        inputs: vec![Prompt::Text("short".into()), Prompt::Text(long.clone())],
        normalize: true,
        truncate,
    };
    let err = model.encode(request(false)).unwrap().wait().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("input 1") && msg.contains("402") && msg.contains("256"),
        "{msg}"
    );
    assert_eq!(err.error_type(), "context_length_exceeded");
    let cut = model.encode(request(true)).unwrap().wait().unwrap();
    assert_eq!(cut.prompt_tokens, 3 + 256);
    // Token ids are used as given, cut to the limit when asked.
    let ids: Vec<u32> = (0..300).map(|i| 2000 + i).collect();
    let err = model
        .encode(EncodeRequest {
            inputs: vec![Prompt::Tokens(ids.clone())],
            normalize: true,
            truncate: false,
        })
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(err.to_string().contains("300"), "{err}");
    let err = model
        .encode(EncodeRequest {
            inputs: vec![Prompt::Tokens(vec![40_000])],
            normalize: true,
            truncate: true,
        })
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let cut = encode(model.as_ref(), vec![Prompt::Tokens(ids)], true);
    assert_eq!(cut.prompt_tokens, 256);
}

#[test]
fn an_encoder_refuses_to_generate_by_name() {
    let Some(model) = minilm() else {
        return;
    };
    let err = model
        .generate(GenerateRequest {
            prompt: Prompt::Text("hello".into()),
            params: SamplingParams::greedy(4),
        })
        .unwrap_err();
    assert!(matches!(err, InferError::EmbeddingOnly { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot generate"), "{err}");
    assert_eq!(err.error_type(), "invalid_request_error");
}

/// The queue is bounded: with one request running and `queue_capacity` waiting, the next is
/// refused at once; dropping the waiting ones frees the model.
#[test]
fn a_full_queue_refuses_at_once_and_dropped_requests_free_the_model() {
    let Some(dir) = embed_model() else {
        return;
    };
    let model = CandleBackend
        .load(
            &dir,
            &LoadOptions {
                queue_capacity: 1,
                max_sequences: 1,
                ..LoadOptions::default()
            },
        )
        .unwrap();
    let big = || EncodeRequest {
        inputs: (0..2048)
            .map(|i| Prompt::Text(format!("{i} ").repeat(150)))
            .collect(),
        normalize: true,
        truncate: true,
    };
    let running = model.encode(big()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while model.activity().live == 0 {
        assert!(Instant::now() < deadline, "{:?}", model.activity());
        std::thread::sleep(Duration::from_millis(5));
    }
    let waiting = model.encode(big()).unwrap();
    let err = model.encode(big()).unwrap_err();
    assert!(
        matches!(err, InferError::QueueFull { capacity: 1 }),
        "{err:?}"
    );
    assert_eq!(err.error_type(), "overloaded");
    drop(waiting);
    drop(running);
    wait_idle(model.as_ref(), 20);
    let ok = model
        .encode(EncodeRequest {
            inputs: vec![Prompt::Text("still serving".into())],
            normalize: true,
            truncate: false,
        })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(ok.vectors[0].len(), 384);
}

/// A tiny random-weight `bert` GGUF (WordPiece vocabulary, f32/f16/Q8_0 tensors, mean pooling)
/// against llama.cpp's embedding mode: the same tokens for every text, and vectors within
/// cosine 0.9999 (llama.cpp's GELU is the tanh approximation, ours the exact one).
#[test]
fn a_tiny_bert_gguf_matches_llama_cpp() {
    tiny_encoder_matches_llama_cpp("bert");
}

/// A tiny random-weight `nomic-bert` GGUF (nomic-embed-text-v1.5's shape: rotary positions with
/// base 1000 on a fused qkv, SwiGLU, no biases) against llama.cpp's embedding mode, as above.
#[test]
fn a_tiny_nomic_bert_gguf_matches_llama_cpp() {
    tiny_encoder_matches_llama_cpp("nomic-bert");
}

fn tiny_encoder_matches_llama_cpp(arch: &str) {
    let path = reference_dir().join(format!("tiny-{arch}-embed.gguf"));
    let reference = json(&format!("tiny-{arch}-embed.json"));
    let model = CandleBackend.load(&path, &LoadOptions::default()).unwrap();
    let info = model.info();
    assert_eq!(
        (info.architecture.as_str(), info.pooling),
        (arch, Pooling::Mean)
    );
    assert!(info.declares_pooling && !info.generates);
    let file = rbee_format::gguf::GgufFile::open(&path).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file.metadata).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<Prompt> = cases
        .iter()
        .map(|c| Prompt::Text(c["text"].as_str().unwrap().to_owned()))
        .collect();
    let from_text = encode(model.as_ref(), texts, false);
    for (case, ours) in cases.iter().zip(&from_text.vectors) {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tokenizer.encode_input(text, None).unwrap(),
            ids(&case["ids"]),
            "tokens of {text:?}"
        );
        let cos = cosine(ours, &floats(&case["embedding"]));
        assert!(cos >= 0.9999, "{arch} {text:?}: cosine {cos}");
    }
}

/// Decoder embedding inputs get the special tokens llama.cpp's embedding mode adds: BOS, and
/// EOS where the vocabulary appends one (Qwen3-Embedding's last-token pooling reads it).
#[test]
fn decoder_inputs_get_llama_cpps_special_tokens() {
    for arch in ["qwen3", "llama"] {
        let path = reference_dir().join(format!("tiny-{arch}-embed.gguf"));
        let file = rbee_format::gguf::GgufFile::open(&path).unwrap();
        let tokenizer = Tokenizer::from_gguf(&file.metadata).unwrap();
        let reference = json(&format!("tiny-{arch}-embed.json"));
        for case in reference["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tokenizer.encode_input(text, None).unwrap(),
                ids(&case["ids"]),
                "{arch}: {text:?}"
            );
        }
    }
}

/// Encoders llama.cpp knows that rbee's encoder does not run yet are refused by name, with what
/// does run; a broken `bert` GGUF names the tensor it lacks, before any weight is read.
#[test]
fn unsupported_and_broken_encoders_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let jina = dir.path().join("jina.gguf");
    rbee_format::gguf::GgufWriter::tiny_model("jina-bert-v2")
        .write_file(&jina)
        .unwrap();
    let err = CandleBackend
        .load(&jina, &LoadOptions::default())
        .unwrap_err();
    assert!(
        matches!(&err, InferError::UnsupportedArchitecture { architecture, .. } if architecture == "jina-bert-v2"),
        "{err:?}"
    );
    assert!(err.to_string().contains("`nomic-bert` model"), "{err}");
    // A `bert` GGUF without the encoder's tensors.
    let broken = dir.path().join("broken.gguf");
    rbee_format::gguf::GgufWriter::tiny_model("bert")
        .add("bert.attention.layer_norm_epsilon", 1e-12f32)
        .write_file(&broken)
        .unwrap();
    let err = CandleBackend
        .load(&broken, &LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("position_embd.weight"), "{err}");
    assert_eq!(err.error_type(), "model_error");
    let caps = CandleBackend
        .capabilities(&reference_dir().join("tiny-bert-embed.gguf"))
        .unwrap();
    assert!(caps.embeds && !caps.generates);
    let caps = CandleBackend
        .capabilities(&reference_dir().join("tiny-nomic-bert-embed.gguf"))
        .unwrap();
    assert!(caps.embeds && !caps.generates);
    // A nomic-bert GGUF with a decoder's tensors names the first encoder tensor it lacks.
    let gateless = dir.path().join("gateless.gguf");
    rbee_format::gguf::GgufWriter::tiny_model("nomic-bert")
        .add("nomic-bert.attention.layer_norm_epsilon", 1e-12f32)
        .write_file(&gateless)
        .unwrap();
    let err = CandleBackend
        .load(&gateless, &LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("token_embd_norm.weight"), "{err}");
    let caps = CandleBackend
        .capabilities(&reference_dir().join("tiny-qwen3-embed.gguf"))
        .unwrap();
    assert!(caps.embeds && caps.generates);
    let caps = CandleBackend
        .capabilities(&reference_dir().join("tiny-qwen3.gguf"))
        .unwrap();
    assert!(!caps.embeds && caps.generates);
}
