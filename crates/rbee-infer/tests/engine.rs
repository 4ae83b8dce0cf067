//! The engine end to end on the real demo model (Gemma 3 270M Q4_K_M): tokenizer, chat
//! template, model and sampler together against llama.cpp's greedy output, and the behaviours
//! a server relies on (stop sequences, limits, cancellation, a full queue, oversized prompts,
//! a broken file).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rbee_infer::InferError;
use rbee_infer::chat::ChatMessage;
use rbee_infer::engine::{
    Backend, CandleBackend, FinishReason, GenerateEvent, GenerateRequest, GenerationStats,
    LoadOptions, LoadedModel, Prompt,
};
use rbee_infer::sampling::SamplingParams;

fn shared_model() -> Option<Arc<dyn LoadedModel>> {
    static MODEL: OnceLock<Option<Arc<dyn LoadedModel>>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = demo_model()?;
            Some(CandleBackend.load(&path, &LoadOptions::default()).unwrap())
        })
        .clone()
}

#[derive(Debug)]
struct Outcome {
    prompt_tokens: usize,
    ids: Vec<u32>,
    text: String,
    stats: GenerationStats,
}

fn run(
    model: &dyn LoadedModel,
    prompt: Prompt,
    params: SamplingParams,
) -> Result<Outcome, InferError> {
    let generation = model.generate(GenerateRequest { prompt, params })?;
    let (mut prompt_tokens, mut ids, mut text) = (0, Vec::new(), String::new());
    for event in generation {
        match event {
            GenerateEvent::Started { prompt_tokens: n } => prompt_tokens = n,
            GenerateEvent::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            GenerateEvent::Text(t) => text.push_str(&t),
            GenerateEvent::Done(stats) => {
                return Ok(Outcome {
                    prompt_tokens,
                    ids,
                    text,
                    stats,
                });
            }
            GenerateEvent::Error(e) => return Err(e),
        }
    }
    panic!("generation ended without Done");
}

#[test]
fn greedy_output_matches_llama_cpp() {
    let Some(model) = shared_model() else { return };
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("reference/gemma3-270m-greedy.json")).unwrap();
    for case in reference["prompts"].as_array().unwrap() {
        let raw = case["prompt"].as_str().unwrap();
        let prompt = if case["kind"] == "chat" {
            let user = raw
                .split_once("user\n")
                .and_then(|(_, rest)| rest.split_once("<end_of_turn>"))
                .map(|(msg, _)| msg)
                .unwrap();
            Prompt::Chat(vec![ChatMessage::new("user", user)])
        } else {
            Prompt::Text(raw.to_string())
        };
        let want: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let margins: Vec<f64> = serde_json::from_value(case["top1_margins"].clone()).unwrap();
        let prompt_ids = case["prompt_ids"].as_array().unwrap().len();
        let mut params = SamplingParams::greedy(want.len());
        params.ignore_eos = true;
        let out = run(model.as_ref(), prompt, params).unwrap();
        assert_eq!(
            out.prompt_tokens, prompt_ids,
            "{raw:?}: prompt tokenized differently"
        );
        // Token-exact up to the first step where llama.cpp's own top two were within noise.
        let exact = margins.iter().position(|m| *m < 0.05).unwrap_or(want.len());
        assert_eq!(
            out.ids[..exact],
            want[..exact],
            "{raw:?}: greedy tokens differ from llama.cpp within the first {exact}"
        );
        if exact == want.len() {
            assert_eq!(out.text, case["text"].as_str().unwrap(), "{raw:?}");
        }
    }
}

#[test]
fn stop_sequences_and_max_tokens_end_generation() {
    let Some(model) = shared_model() else { return };
    let prompt = || Prompt::Text("def fibonacci(n):\n".into());
    let mut params = SamplingParams::greedy(32);
    params.stop = vec!["return".into()];
    let out = run(model.as_ref(), prompt(), params).unwrap();
    assert_eq!(out.stats.finish_reason, FinishReason::Stop);
    assert!(!out.text.contains("return"), "{:?}", out.text);

    let out = run(model.as_ref(), prompt(), SamplingParams::greedy(5)).unwrap();
    assert_eq!(
        (out.stats.completion_tokens, out.stats.finish_reason),
        (5, FinishReason::Length)
    );
}

#[test]
fn a_seed_reproduces_a_sampled_run() {
    let Some(model) = shared_model() else { return };
    let sample = |seed| {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            max_tokens: 24,
            ignore_eos: true,
            ..Default::default()
        };
        run(
            model.as_ref(),
            Prompt::Text("Once upon a time".into()),
            params,
        )
        .unwrap()
        .ids
    };
    assert_eq!(sample(7), sample(7));
    assert_ne!(sample(7), sample(8));
}

#[test]
fn dropping_the_stream_cancels_and_frees_the_model() {
    let Some(model) = shared_model() else { return };
    let mut params = SamplingParams::greedy(2000);
    params.ignore_eos = true;
    let mut generation = model
        .generate(GenerateRequest {
            prompt: Prompt::Text("Count: 1, 2, 3,".into()),
            params,
        })
        .unwrap();
    // Read a couple of tokens, then walk away.
    let mut seen = 0;
    for event in generation.by_ref() {
        if matches!(event, GenerateEvent::Token { .. }) {
            seen += 1;
            if seen == 2 {
                break;
            }
        }
    }
    drop(generation);
    // The model thread must be free again long before 2000 tokens could have been produced.
    let started = Instant::now();
    let out = run(
        model.as_ref(),
        Prompt::Text("Hi".into()),
        SamplingParams::greedy(2),
    )
    .unwrap();
    assert_eq!(out.stats.completion_tokens, 2);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn limits_are_refused_with_clear_errors() {
    let Some(path) = demo_model() else { return };
    // One batch slot: the second request waits, the third finds the queue full.
    let opts = LoadOptions {
        context_length: Some(32),
        queue_capacity: 1,
        max_sequences: 1,
        ..Default::default()
    };
    let model = CandleBackend.load(&path, &opts).unwrap();
    let long = "word ".repeat(100);
    let err = run(
        model.as_ref(),
        Prompt::Text(long),
        SamplingParams::greedy(4),
    )
    .unwrap_err();
    assert!(
        matches!(err, InferError::PromptTooLong { context: 32, .. }),
        "{err}"
    );
    assert_eq!(err.error_type(), "context_length_exceeded");

    // One running, one queued, the third is refused at once.
    let mut params = SamplingParams::greedy(20);
    params.ignore_eos = true;
    let req = || GenerateRequest {
        prompt: Prompt::Text("a".into()),
        params: params.clone(),
    };
    let first = model.generate(req()).unwrap();
    let mut first = first.peekable();
    assert!(first.peek().is_some(), "first request started");
    let _second = model.generate(req()).unwrap();
    let third = model.generate(req());
    assert!(
        matches!(third, Err(InferError::QueueFull { capacity: 1 })),
        "{third:?}"
    );
}

#[test]
fn a_broken_file_fails_fast_naming_the_problem() {
    let Some(path) = demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.gguf");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let started = Instant::now();
    let err = CandleBackend
        .load(&broken, &LoadOptions::default())
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let msg = err.to_string();
    assert!(msg.contains("extends past end of file"), "{msg}");
    assert_eq!(err.error_type(), "invalid_model");
}

/// GPU builds on a machine with a GPU: the model loads on the device runtime there and
/// answers (the check a lent GPU machine runs; skipped where there is no GPU).
#[cfg(any(feature = "cuda", feature = "metal"))]
#[test]
fn a_gpu_load_runs_on_the_device_runtime() {
    let device = if cfg!(feature = "cuda") {
        candle_core::Device::new_cuda(0)
    } else {
        candle_core::Device::new_metal(0)
    };
    let Ok(device) = device else {
        eprintln!("skipping: no GPU on this machine");
        return;
    };
    let Some(path) = demo_model() else { return };
    let opts = LoadOptions {
        device,
        ..LoadOptions::default()
    };
    let model = CandleBackend.load(&path, &opts).unwrap();
    assert!(
        model.info().runtime.contains("candle kernels"),
        "{}",
        model.info().runtime
    );
    let prompt = Prompt::Text("The capital of France is".into());
    let out = run(model.as_ref(), prompt, SamplingParams::greedy(8)).unwrap();
    assert_eq!(out.stats.completion_tokens, 8);
    assert!(!out.text.is_empty());
}

/// The loaded model names the kernel set it runs (what `/health` and `rbee-node status` show):
/// the best this CPU has, since no setting overrides it here.
#[test]
fn the_runtime_names_the_kernel_set_chosen_for_this_cpu() {
    let Some(model) = shared_model() else { return };
    let runtime = model.info().runtime.clone();
    #[cfg(target_arch = "x86_64")]
    let best = if is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
    {
        "avx512-vnni"
    } else if is_x86_feature_detected!("avxvnni") {
        "avx-vnni"
    } else {
        "avx2"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let best = "portable";
    let best = if cfg!(all(target_arch = "x86_64", target_feature = "avx2")) {
        best
    } else {
        "portable"
    };
    assert!(
        runtime.starts_with(&format!("cpu ({best} kernels, ")),
        "{runtime}"
    );
}

/// The device runtime on candle's CPU device, two batch slots: how the GPU path's engine tests
/// load.
fn device_runtime_on_the_cpu() -> LoadOptions {
    LoadOptions {
        device_runtime_on_cpu: true,
        max_sequences: 2,
        ..LoadOptions::default()
    }
}

/// The device runtime (what a GPU runs) through the whole engine on the CPU: batched
/// scheduling, caches, sampling. Two identical greedy requests batched together give the
/// same text, and a third after them reuses their prefix and agrees too.
#[test]
fn the_engine_runs_the_device_runtime_batched_on_the_cpu() {
    let Some(path) = demo_model() else { return };
    let opts = device_runtime_on_the_cpu();
    let model = CandleBackend.load(&path, &opts).unwrap();
    assert_eq!(
        model.info().runtime,
        "cpu (device runtime) (candle kernels)"
    );
    two_batched_greedy_requests_agree(&*model);
}

/// Two greedy requests queued before either is read (so they run in the same steps), then a
/// third after them (prefix reuse): all three give the same 8 tokens.
fn two_batched_greedy_requests_agree(model: &dyn LoadedModel) {
    let req = || GenerateRequest {
        prompt: Prompt::Text("The capital of France is".into()),
        params: SamplingParams::greedy(8),
    };
    let a = model.generate(req()).unwrap();
    let b = model.generate(req()).unwrap();
    let (ia, sa) = collect(a).unwrap();
    let (ib, _) = collect(b).unwrap();
    assert_eq!(ia.len(), 8, "{sa:?}");
    assert_eq!(ia, ib, "batched greedy sequences agree");
    let (ic, _) = collect(model.generate(req()).unwrap()).unwrap();
    assert_eq!(ic, ia, "after prefix reuse");
}

/// Partial offload: the last layers on the device runtime, the rest on the CPU's kernels, with
/// the split planned from a budget the way a GPU worker plans it from its free memory.
#[test]
fn the_engine_splits_a_model_that_does_not_fit_the_device() {
    let Some(path) = demo_model() else { return };
    let base = device_runtime_on_the_cpu();
    let whole = CandleBackend.estimate(&path, &base).unwrap();
    let all = rbee_infer::engine::device_layers_for(&path, &base, u64::MAX, usize::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(
        all.layers, 18,
        "Gemma 3 270M has 18 layers; all fit an unbounded device"
    );
    assert!(all.host_bytes < whole.total() && all.device_bytes < whole.total());
    assert_eq!(all.of, 18);
    let capped = rbee_infer::engine::device_layers_for(&path, &base, u64::MAX, 4)
        .unwrap()
        .unwrap();
    assert_eq!(capped.layers, 4, "a configured layer count caps the plan");
    assert!(capped.device_bytes < all.device_bytes && capped.host_bytes > all.host_bytes);
    assert_eq!(
        rbee_infer::engine::device_layers_for(&path, &base, 1 << 20, usize::MAX).unwrap(),
        None,
        "not one layer in 1 MiB"
    );
    let half_budget = (whole.weights + whole.kv_cache) / 3;
    let plan = rbee_infer::engine::device_layers_for(&path, &base, half_budget, usize::MAX)
        .unwrap()
        .unwrap();
    let n = plan.layers;
    assert!(
        n > 0 && n < 18,
        "a third of the model's memory holds some layers: {n}"
    );
    assert!(plan.device_bytes <= half_budget, "{plan:?}");
    assert!(
        plan.host_bytes > whole.weights / 2,
        "the embedding and most layers stay on the host: {plan:?}"
    );
    let model = CandleBackend
        .load(
            &path,
            &LoadOptions {
                device_layers: Some(n),
                ..base.clone()
            },
        )
        .unwrap();
    assert!(
        model
            .info()
            .runtime
            .starts_with(&format!("{n} layers of 18 on cpu (device runtime)")),
        "{}",
        model.info().runtime
    );
    two_batched_greedy_requests_agree(&*model);
}

/// A model spanning two devices by layers (several GPUs of one node): planned from both
/// budgets, loaded with the second device's layers before the first's, and batched.
#[test]
fn the_engine_spans_a_model_across_two_devices() {
    let Some(path) = demo_model() else { return };
    let base = device_runtime_on_the_cpu();
    let whole = CandleBackend.estimate(&path, &base).unwrap();
    let one = rbee_infer::engine::device_layers_for(&path, &base, whole.total() / 4, usize::MAX)
        .unwrap()
        .unwrap();
    let plan = rbee_infer::engine::device_layers_across(
        &path,
        &base,
        &[whole.total() / 4, whole.total() / 4],
        usize::MAX,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        plan.layers, one.layers,
        "the first device fills up as it would alone"
    );
    assert_eq!(plan.more.len(), 1);
    let second = plan.more[0];
    assert!(second.layers > 0, "{plan:?}");
    assert!(second.device_bytes <= whole.total() / 4, "{plan:?}");
    assert!(
        plan.host_bytes < one.host_bytes,
        "the host keeps less when a second device takes layers: {plan:?} vs {one:?}"
    );
    assert_eq!(
        rbee_infer::engine::device_layers_across(&path, &base, &[1 << 20, u64::MAX], usize::MAX)
            .unwrap(),
        None,
        "not one layer on the first device: no plan"
    );
    let capped =
        rbee_infer::engine::device_layers_across(&path, &base, &[u64::MAX, u64::MAX], 5).unwrap();
    assert_eq!(
        capped.map(|p| (p.layers, p.more[0].layers)),
        Some((5, 0)),
        "a configured count caps the layers on every device together"
    );
    let model = CandleBackend
        .load(
            &path,
            &LoadOptions {
                device_layers: Some(plan.layers),
                more_devices: vec![rbee_infer::engine::SpanDevice {
                    device: candle_core::Device::Cpu,
                    name: "second".into(),
                    layers: second.layers,
                }],
                ..base.clone()
            },
        )
        .unwrap();
    let runtime = &model.info().runtime;
    assert!(
        runtime.starts_with(&format!(
            "{} layers of 18 on cpu (device runtime)",
            plan.layers
        )) && runtime.contains(&format!(
            ", {} on second (candle kernels), the rest on cpu",
            second.layers
        )),
        "{runtime}"
    );
    two_batched_greedy_requests_agree(&*model);
}

#[test]
fn the_engine_counts_its_own_queued_and_live_sequences() {
    let Some(path) = demo_model() else { return };
    let opts = LoadOptions {
        max_sequences: 2,
        ..Default::default()
    };
    let model = CandleBackend.load(&path, &opts).unwrap();
    assert!(model.activity().is_idle());
    let mut params = SamplingParams::greedy(2000);
    params.ignore_eos = true;
    let req = || GenerateRequest {
        prompt: Prompt::Text("Count:".into()),
        params: params.clone(),
    };
    // The generation holds no handle on the model: only the engine can know it runs.
    let mut first = model.generate(req()).unwrap().peekable();
    assert!(first.peek().is_some(), "first request started");
    let mut second = model.generate(req()).unwrap().peekable();
    assert!(second.peek().is_some(), "second request joined the batch");
    let third = model.generate(req()).unwrap();
    let busy = model.activity();
    assert_eq!(
        (busy.live, busy.queued, busy.max_live),
        (2, 1, 2),
        "{busy:?}"
    );
    assert!(!busy.has_free_slot());
    drop(third);
    drop(second);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !model.activity().is_idle() {
        assert!(Instant::now() < deadline, "{:?}", model.activity());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_oversized_prompt_is_refused_without_tokenizing_all_of_it() {
    let Some(path) = demo_model() else { return };
    let opts = LoadOptions {
        context_length: Some(1024),
        ..Default::default()
    };
    let model = CandleBackend.load(&path, &opts).unwrap();
    // Far beyond anything a 1024-token context could hold: refused by its size.
    let huge = "word ".repeat(1 << 20);
    let err = run(
        model.as_ref(),
        Prompt::Text(huge),
        SamplingParams::greedy(1),
    )
    .unwrap_err();
    assert!(matches!(err, InferError::PromptTooLarge { .. }), "{err}");
    assert_eq!(err.error_type(), "context_length_exceeded");
    // Within the byte bound but too long: tokenizing stops once a prefix overflows.
    let long = "word ".repeat(10_000);
    let err = run(
        model.as_ref(),
        Prompt::Text(long),
        SamplingParams::greedy(1),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            InferError::PromptTooLong {
                context: 1024,
                counted_all: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("at least"), "{err}");
    // A prompt that fits is unaffected.
    let fits = run(
        model.as_ref(),
        Prompt::Text("word ".repeat(200)),
        SamplingParams::greedy(1),
    )
    .unwrap();
    assert!(fits.prompt_tokens > 100);
}

#[test]
fn a_model_with_nan_weights_fails_with_a_clear_error() {
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/tiny-gemma3.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("nan.gguf");
    let mut bytes = std::fs::read(&tiny).unwrap();
    let header = rbee_format::gguf::GgufFile::open(&tiny).unwrap();
    let norm = header
        .tensors
        .iter()
        .find(|t| t.name == "output_norm.weight")
        .unwrap();
    assert_eq!(norm.dtype, rbee_format::gguf::GgmlType::F32);
    let (start, end) = (norm.offset as usize, (norm.offset + norm.size) as usize);
    for chunk in bytes[start..end].chunks_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&broken, &bytes).unwrap();
    let model = CandleBackend
        .load(&broken, &LoadOptions::default())
        .unwrap();
    let err = run(
        model.as_ref(),
        Prompt::Text("hello".into()),
        SamplingParams::greedy(4),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            InferError::Model(rbee_infer::model::ModelError::NonFinite { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("non-finite"), "{err}");
}

/// A reference tiny model rewritten with `edit` applied to its header, at `dst`.
fn rewritten(
    arch: &str,
    dst: &std::path::Path,
    edit: impl FnOnce(&mut rbee_format::gguf::Metadata, &mut Vec<rbee_format::gguf::TensorInfo>),
) -> PathBuf {
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/reference/tiny-{arch}.gguf"));
    let header = rbee_format::gguf::GgufFile::open(&src).unwrap();
    let data = std::fs::read(&src).unwrap();
    let (mut metadata, mut tensors) = (header.metadata.clone(), header.tensors.clone());
    edit(&mut metadata, &mut tensors);
    let mut w = rbee_format::gguf::GgufWriter::new();
    for (k, v) in metadata.iter() {
        if k != "general.alignment" {
            w.add(k, v.clone());
        }
    }
    for t in &tensors {
        let bytes = data[t.offset as usize..(t.offset + t.size) as usize].to_vec();
        w.add_tensor(t.name.clone(), &t.dims, t.dtype, bytes);
    }
    w.write_file(dst).unwrap();
    dst.to_path_buf()
}

/// The store keeps any well-formed model (a peer's engine may run it); this engine refuses one
/// whose architecture it does not run, at once, naming the architecture and what it runs.
#[test]
fn a_well_formed_model_of_another_architecture_is_refused_naming_what_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mamba.gguf");
    rbee_format::gguf::GgufWriter::tiny_model("mamba")
        .write_file(&path)
        .unwrap();
    let opts = LoadOptions::default();
    let started = Instant::now();
    for err in [
        CandleBackend.estimate(&path, &opts).unwrap_err(),
        CandleBackend.load(&path, &opts).unwrap_err(),
    ] {
        assert!(
            matches!(&err, InferError::UnsupportedArchitecture { architecture, .. } if architecture == "mamba"),
            "{err:?}"
        );
        assert_eq!(err.error_type(), "unsupported_architecture");
        let msg = err.to_string();
        assert!(
            msg.contains("\"mamba\"")
                && msg.contains(&rbee_infer::SUPPORTED_ARCHITECTURES.join(", "))
                && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(1));

    // The same file under a name the engine runs gets past that check.
    let llama = tmp.path().join("llama.gguf");
    rbee_format::gguf::GgufWriter::tiny_model("llama")
        .write_file(&llama)
        .unwrap();
    let got = CandleBackend.estimate(&llama, &opts);
    assert!(
        !matches!(got, Err(InferError::UnsupportedArchitecture { .. })),
        "{got:?}"
    );
}

/// The format's validation is structure only; what this transformer reads beyond it is
/// checked by the engine from the header, before any weight is read.
#[test]
fn what_the_transformer_reads_is_checked_before_any_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LoadOptions::default();
    let estimate_err = |path: PathBuf| {
        let err = CandleBackend.estimate(&path, &opts).unwrap_err();
        assert_eq!(err.error_type(), "invalid_model", "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}: invalid model: ", path.display())),
            "{msg}"
        );
        msg
    };
    let dst = tmp.path().join("m.gguf");
    // Unchanged, the rewritten models are fine.
    for arch in ["qwen3", "phi3"] {
        CandleBackend
            .estimate(&rewritten(arch, &dst, |_, _| {}), &opts)
            .unwrap();
    }
    let drop_tensor = |name: &'static str| {
        move |_: &mut rbee_format::gguf::Metadata, t: &mut Vec<rbee_format::gguf::TensorInfo>| {
            t.retain(|t| t.name != name)
        }
    };
    let msg = estimate_err(rewritten(
        "qwen3",
        &dst,
        drop_tensor("blk.1.ffn_down.weight"),
    ));
    assert!(
        msg.ends_with("tensor blk.1.ffn_down.weight missing"),
        "{msg}"
    );
    let msg = estimate_err(rewritten(
        "qwen3",
        &dst,
        drop_tensor("blk.0.attn_norm.weight"),
    ));
    assert!(
        msg.ends_with("tensor blk.0.attn_norm.weight missing"),
        "{msg}"
    );
    let msg = estimate_err(rewritten(
        "phi3",
        &dst,
        drop_tensor("blk.1.attn_qkv.weight"),
    ));
    assert!(
        msg.ends_with("tensor blk.1.attn_q.weight (or blk.1.attn_qkv.weight) missing"),
        "{msg}"
    );
    for key in ["feed_forward_length", "attention.head_count"] {
        let msg = estimate_err(rewritten("phi3", &dst, |md, _| {
            md.remove(&format!("phi3.{key}"));
        }));
        assert!(msg.ends_with(&format!("phi3.{key} missing")), "{msg}");
    }
    let msg = estimate_err(rewritten("qwen3", &dst, |md, _| {
        md.insert("qwen3.feed_forward_length", "wide");
    }));
    assert!(
        msg.ends_with("qwen3.feed_forward_length has type string, expected an integer"),
        "{msg}"
    );
}
