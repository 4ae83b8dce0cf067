//! The encode path on the real demo model: each input's final hidden states pooled into one
//! vector, run in the same batched steps as generations without changing either.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::{
    Backend, CandleBackend, Embeddings, EncodeRequest, GenerateRequest, LoadOptions, LoadedModel,
    Pooling, Prompt,
};
use rbee_infer::model::{Output, SeqStep, Transformer};
use rbee_infer::sampling::SamplingParams;

fn load(opts: LoadOptions) -> Option<Arc<dyn LoadedModel>> {
    Some(CandleBackend.load(&demo_model()?, &opts).unwrap())
}

fn texts() -> Vec<String> {
    vec![
        "The bees returned to the hive before the storm.".into(),
        "fn main() { println!(\"hello\"); }".into(),
        "café 中文 😀 — unicode survives the tokenizer".into(),
        "a".into(),
        // Longer than one 512-token chunk: encoded over several steps.
        (0..200).map(|i| format!("item {i}; ")).collect(),
    ]
}

fn encode(model: &dyn LoadedModel, inputs: Vec<Prompt>, normalize: bool) -> Embeddings {
    model
        .encode(EncodeRequest {
            inputs,
            normalize,
            truncate: false,
        })
        .unwrap()
        .wait()
        .unwrap()
}

fn as_prompts(texts: &[String]) -> Vec<Prompt> {
    texts.iter().cloned().map(Prompt::Text).collect()
}

#[test]
fn inputs_encoded_together_equal_each_encoded_alone() {
    let Some(model) = load(LoadOptions::default()) else {
        return;
    };
    let info = model.info();
    assert_eq!(info.pooling, Pooling::Last, "no pooling_type: last token");
    assert!(!info.declares_pooling);
    assert_eq!(info.embedding_length, 640);
    let texts = texts();
    let together = encode(model.as_ref(), as_prompts(&texts), true);
    assert_eq!(together.vectors.len(), texts.len());
    let mut tokens = 0;
    for (i, text) in texts.iter().enumerate() {
        let alone = encode(model.as_ref(), as_prompts(std::slice::from_ref(text)), true);
        tokens += alone.prompt_tokens;
        assert_eq!(
            together.vectors[i], alone.vectors[0],
            "input {i} depends on what it was batched with"
        );
        let v = &alone.vectors[0];
        assert_eq!(v.len(), 640);
        let norm: f64 = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "input {i}: norm {norm}");
    }
    assert_eq!(together.prompt_tokens, tokens);
    assert!(tokens > 512 + 5, "the long input spans chunks: {tokens}");
    // Different texts, different vectors.
    assert!(together.vectors.windows(2).all(|w| w[0] != w[1]));
}

#[test]
fn the_vector_is_the_last_tokens_final_hidden_state() {
    let Some(path) = demo_model() else {
        return;
    };
    let model = load(LoadOptions::default()).unwrap();
    let ids: Vec<u32> = vec![2, 818, 5279, 529, 14522, 573, 506, 236761];
    let got = encode(model.as_ref(), vec![Prompt::Tokens(ids.clone())], false);
    // The same rows straight from the transformer, next to an entry that wants logits: the
    // hidden rows do not depend on it, and its logits do not depend on them.
    let mut t = Transformer::load_gguf(&path, &Device::Cpu).unwrap();
    let (mut a, mut b, mut c) = (t.new_cache(), t.new_cache(), t.new_cache());
    let alone_logits = {
        let mut step = [SeqStep {
            cache: &mut c,
            tokens: &ids[..5],
            start: 0,
            output: Output::Logits,
        }];
        t.forward_batch(&mut step).unwrap().pop().flatten().unwrap()
    };
    let mut steps = [
        SeqStep {
            cache: &mut a,
            tokens: &ids,
            start: 0,
            output: Output::Hidden,
        },
        SeqStep {
            cache: &mut b,
            tokens: &ids[..5],
            start: 0,
            output: Output::Logits,
        },
    ];
    let out = t.forward_batch(&mut steps).unwrap();
    let hidden = out[0].as_ref().unwrap();
    assert_eq!(hidden.len(), ids.len() * 640, "every token's hidden state");
    assert_eq!(&hidden[hidden.len() - 640..], &got.vectors[0][..]);
    assert_eq!(out[1].as_ref().unwrap(), &alone_logits);
    assert_eq!(a.len(), ids.len());
}

#[test]
fn encoding_while_others_generate_changes_neither() {
    let Some(model) = load(LoadOptions {
        prefix_reuse: false,
        ..LoadOptions::default()
    }) else {
        return;
    };
    let request = |i: u64| {
        let mut params = SamplingParams {
            temperature: 0.8,
            seed: Some(7 + i),
            max_tokens: 24,
            ..SamplingParams::default()
        };
        params.ignore_eos = true;
        GenerateRequest {
            prompt: Prompt::Text(format!("Story number {i}: once upon a time")),
            params,
        }
    };
    let alone: Vec<Vec<u32>> = (0..3)
        .map(|i| collect(model.generate(request(i)).unwrap()).unwrap().0)
        .collect();
    let texts = texts();
    let vectors_alone = encode(model.as_ref(), as_prompts(&texts), true);
    let running: Vec<_> = (0..3)
        .map(|i| model.generate(request(i)).unwrap())
        .collect();
    let encoding = model
        .encode(EncodeRequest {
            inputs: as_prompts(&texts),
            normalize: true,
            truncate: false,
        })
        .unwrap();
    let outputs: Vec<Vec<u32>> = running.into_iter().map(|g| collect(g).unwrap().0).collect();
    assert_eq!(outputs, alone, "an encode request changed the generations");
    assert_eq!(encoding.wait().unwrap(), vectors_alone);
}

#[test]
fn an_input_longer_than_the_context_is_refused_or_cut_as_asked() {
    let Some(model) = load(LoadOptions {
        context_length: Some(64),
        ..LoadOptions::default()
    }) else {
        return;
    };
    let long: Vec<u32> = (0..100).map(|i| 1000 + i).collect();
    let request = |truncate| EncodeRequest {
        inputs: vec![Prompt::Tokens(vec![2, 100]), Prompt::Tokens(long.clone())],
        normalize: true,
        truncate,
    };
    let err = model.encode(request(false)).unwrap().wait().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("input 1") && msg.contains("100") && msg.contains("64"),
        "{msg}"
    );
    assert_eq!(err.error_type(), "context_length_exceeded");
    let cut = model.encode(request(true)).unwrap().wait().unwrap();
    let first_64 = encode(
        model.as_ref(),
        vec![
            Prompt::Tokens(vec![2, 100]),
            Prompt::Tokens(long[..64].to_vec()),
        ],
        true,
    );
    assert_eq!(cut, first_64);
    assert_eq!(cut.prompt_tokens, 66);
}

#[test]
fn bad_encode_requests_are_clear_errors() {
    let Some(model) = load(LoadOptions::default()) else {
        return;
    };
    let request = |inputs| EncodeRequest {
        inputs,
        normalize: true,
        truncate: false,
    };
    let err = model.encode(request(vec![])).unwrap_err();
    assert!(err.to_string().contains("no inputs"), "{err}");
    let chat = Prompt::Chat(vec![ChatMessage::new("user", "hi")]);
    let err = model.encode(request(vec![chat])).unwrap_err();
    assert!(err.to_string().contains("chat messages"), "{err}");
    let vocab = model.info().vocab_size as u32;
    let err = model
        .encode(request(vec![
            Prompt::Text("fine".into()),
            Prompt::Tokens(vec![vocab]),
        ]))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        err.to_string().contains("input 1") && err.to_string().contains("out of range"),
        "{err}"
    );
    let err = model
        .encode(request(vec![Prompt::Tokens(vec![])]))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(err.to_string().contains("no tokens"), "{err}");
    // The model still serves.
    assert_eq!(
        encode(model.as_ref(), vec![Prompt::Text("ok".into())], true)
            .vectors
            .len(),
        1
    );
}

#[test]
fn a_dropped_encode_request_stops_and_frees_the_model() {
    let Some(model) = load(LoadOptions::default()) else {
        return;
    };
    let many: Vec<Prompt> = (0..200)
        .map(|i| Prompt::Text(format!("{i} ").repeat(120)))
        .collect();
    let encoding = model
        .encode(EncodeRequest {
            inputs: many,
            normalize: false,
            truncate: false,
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(model.activity().live, 1, "{:?}", model.activity());
    drop(encoding);
    let started = Instant::now();
    let (ids, _) = collect(
        model
            .generate(GenerateRequest {
                prompt: Prompt::Text("Hello".into()),
                params: SamplingParams::greedy(4),
            })
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ids.len(), 4);
    // 200 inputs of ~240 tokens would take far longer than this on two cores.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    wait_idle(model.as_ref(), 10);
}

/// Tiny random-weight models with a `pooling_type` (qwen3: last token, llama: mean), against
/// llama.cpp's embedding mode on the same token ids (`scripts/reference/make_reference.py
/// --only embed`): pooled, unnormalised vectors.
#[test]
fn pooled_embeddings_of_tiny_models_match_llama_cpp() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
    for (arch, pooling) in [("qwen3", Pooling::Last), ("llama", Pooling::Mean)] {
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("tiny-{arch}-embed.json"))).unwrap(),
        )
        .unwrap();
        let model = CandleBackend
            .load(
                &dir.join(format!("tiny-{arch}-embed.gguf")),
                &LoadOptions::default(),
            )
            .unwrap();
        assert_eq!(model.info().pooling, pooling, "{arch}");
        assert!(model.info().declares_pooling, "{arch}");
        let cases = json["cases"].as_array().unwrap();
        let inputs: Vec<Prompt> = cases
            .iter()
            .map(|c| {
                Prompt::Tokens(
                    c["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as u32)
                        .collect(),
                )
            })
            .collect();
        let got = encode(model.as_ref(), inputs, false);
        for (case, ours) in cases.iter().zip(&got.vectors) {
            let want: Vec<f32> = case["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let cos = cosine(ours, &want);
            let max_diff = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // Last-token pooling reads one row of the same arithmetic: bit for bit. Mean
            // pooling sums the rows in another order than llama.cpp's matmul: last bits.
            if pooling == Pooling::Last {
                assert_eq!(ours, &want, "{arch} {:?}", case["text"]);
            }
            assert!(
                cos >= 0.9999 && max_diff < 1e-5,
                "{arch} {:?}: cosine {cos}, max |diff| {max_diff}",
                case["text"]
            );
        }
    }
}
