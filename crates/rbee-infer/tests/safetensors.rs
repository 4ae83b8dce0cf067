//! Safetensors folders (config.json + tokenizer.json + *.safetensors) load
//! into the same transformer as GGUF: a tiny random-weight llama and qwen2
//! are written both ways with the same weights (the GGUF with llama's q/k
//! rows permuted, as llama.cpp's converter writes them) and must give
//! identical logits and greedy tokens; broken folders fail naming the problem.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use rbee_format::gguf::{GgmlType, GgufWriter};
use rbee_infer::InferError;
use rbee_infer::engine::{
    Backend, CandleBackend, GenerateEvent, GenerateRequest, LoadOptions, Prompt,
};
use rbee_infer::model::{SafetensorsModel, Transformer};
use rbee_infer::sampling::SamplingParams;
use serde_json::json;

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 64;
const VOCAB: usize = 48;
const LAYERS: usize = 2;

/// xorshift64*: deterministic weights without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    fn bytes(self, values: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::Bf16 => values
                .iter()
                .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
                .collect(),
        }
    }
}

/// One tensor in HF layout: shape `[out, in]` (or `[len]`), row-major values.
struct Tensor {
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// A random llama or qwen2 model's tensors under their HF names.
fn random_model(arch: &str, tied: bool, seed: u64) -> BTreeMap<String, Tensor> {
    let mut rng = Rng(seed);
    let mut t = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let values = (0..n).map(|_| offset + rng.next() * scale).collect();
        t.insert(name, Tensor { shape, values });
    };
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    add(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        1.0,
        0.0,
    );
    add("model.norm.weight".into(), vec![HIDDEN], 0.2, 1.0);
    if !tied {
        add("lm_head.weight".into(), vec![VOCAB, HIDDEN], 0.5, 0.0);
    }
    for il in 0..LAYERS {
        let n = |s: &str| format!("model.layers.{il}.{s}");
        add(n("input_layernorm.weight"), vec![HIDDEN], 0.2, 1.0);
        add(n("post_attention_layernorm.weight"), vec![HIDDEN], 0.2, 1.0);
        add(n("self_attn.q_proj.weight"), vec![q, HIDDEN], 0.4, 0.0);
        add(n("self_attn.k_proj.weight"), vec![kv, HIDDEN], 0.4, 0.0);
        add(n("self_attn.v_proj.weight"), vec![kv, HIDDEN], 0.4, 0.0);
        if arch == "qwen2" {
            add(n("self_attn.q_proj.bias"), vec![q], 0.3, 0.0);
            add(n("self_attn.k_proj.bias"), vec![kv], 0.3, 0.0);
            add(n("self_attn.v_proj.bias"), vec![kv], 0.3, 0.0);
        }
        add(n("self_attn.o_proj.weight"), vec![HIDDEN, q], 0.3, 0.0);
        add(n("mlp.gate_proj.weight"), vec![FFN, HIDDEN], 0.3, 0.0);
        add(n("mlp.up_proj.weight"), vec![FFN, HIDDEN], 0.3, 0.0);
        add(n("mlp.down_proj.weight"), vec![HIDDEN, FFN], 0.3, 0.0);
    }
    t
}

/// llama.cpp converter's `permute`: HF rotates head halves, GGUF adjacent pairs.
fn permute(values: &[f32], heads: usize, row: usize) -> Vec<f32> {
    let rows = values.len() / row;
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(values.len());
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * 2 * half + j * half + i;
                out.extend_from_slice(&values[src * row..(src + 1) * row]);
            }
        }
    }
    out
}

fn gguf_name(hf: &str) -> String {
    let direct = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = direct.iter().find(|(h, _)| *h == hf) {
        return (*g).to_owned();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (il, part) = rest.split_once('.').unwrap();
    let part = [
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ]
    .iter()
    .fold(part.to_owned(), |p, (h, g)| p.replace(h, g));
    format!("blk.{il}.{part}")
}

fn write_gguf(path: &Path, arch: &str, model: &BTreeMap<String, Tensor>, dtype: Dtype) {
    let mut w = GgufWriter::new();
    w.add("general.architecture", arch)
        .add(format!("{arch}.context_length"), 128u32)
        .add(format!("{arch}.embedding_length"), HIDDEN as u32)
        .add(format!("{arch}.block_count"), LAYERS as u32)
        .add(format!("{arch}.feed_forward_length"), FFN as u32)
        .add(format!("{arch}.attention.head_count"), HEADS as u32)
        .add(format!("{arch}.attention.head_count_kv"), KV_HEADS as u32)
        .add(format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-6f32)
        .add(format!("{arch}.rope.freq_base"), 10_000f32);
    for (name, t) in model {
        let gguf = gguf_name(name);
        let row = if t.shape.len() == 2 { t.shape[1] } else { 1 };
        let values = match (arch, gguf.rsplit('.').nth(1)) {
            ("llama", Some("attn_q")) => permute(&t.values, HEADS, row),
            ("llama", Some("attn_k")) => permute(&t.values, KV_HEADS, row),
            _ => t.values.clone(),
        };
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        // Norms stay f32, as llama.cpp's converter keeps them.
        let (ty, bytes) = if dtype == Dtype::Bf16 && t.shape.len() == 2 {
            (GgmlType::BF16, Dtype::Bf16.bytes(&values))
        } else {
            (GgmlType::F32, Dtype::F32.bytes(&values))
        };
        w.add_tensor(gguf, &dims, ty, bytes);
    }
    w.write_file(path).unwrap();
}

/// Writes one safetensors file holding `names` from `model`.
fn write_safetensors(
    path: &Path,
    model: &BTreeMap<String, Tensor>,
    names: &[&String],
    dtype: Dtype,
) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for name in names {
        let t = &model[*name];
        let dt = if dtype == Dtype::Bf16 && t.shape.len() == 2 {
            Dtype::Bf16
        } else {
            Dtype::F32
        };
        let bytes = dt.bytes(&t.values);
        header.insert(
            (*name).clone(),
            json!({
                "dtype": if dt == Dtype::Bf16 { "BF16" } else { "F32" },
                "shape": t.shape,
                "data_offsets": [data.len(), data.len() + bytes.len()],
            }),
        );
        data.extend(bytes);
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut header = serde_json::to_vec(&header).unwrap();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

/// A model folder as transformers saves it; `shards` > 1 adds an index.
fn write_folder(
    dir: &Path,
    arch: &str,
    tied: bool,
    model: &BTreeMap<String, Tensor>,
    dtype: Dtype,
    shards: usize,
) {
    std::fs::create_dir_all(dir).unwrap();
    let class = if arch == "qwen2" {
        "Qwen2ForCausalLM"
    } else {
        "LlamaForCausalLM"
    };
    let config = json!({
        "architectures": [class],
        "model_type": arch,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "tie_word_embeddings": tied,
        "vocab_size": VOCAB,
        "torch_dtype": if dtype == Dtype::Bf16 { "bfloat16" } else { "float32" },
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..VOCAB).map(|i| (format!("t{i}"), json!(i))).collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 0, "content": "t0", "single_word": false, "lstrip": false, "rstrip": false,
             "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t1"},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({
            "bos_token": "t0",
            "add_bos_token": true,
            "chat_template": "{% for m in messages %}{{ m['content'] }} {% endfor %}",
        })
        .to_string(),
    )
    .unwrap();
    let names: Vec<&String> = model.keys().collect();
    if shards == 1 {
        write_safetensors(&dir.join("model.safetensors"), model, &names, dtype);
        return;
    }
    let per = names.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
        write_safetensors(&dir.join(&file), model, chunk, dtype);
        for name in chunk {
            weight_map.insert((*name).clone(), json!(file));
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Logits after the prompt, and `steps` greedy tokens.
fn run(model: &mut Transformer, prompt: &[u32], steps: usize) -> (Vec<f32>, Vec<u32>) {
    let mut cache = model.new_cache();
    let first = model
        .forward(&mut cache, prompt, 0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut logits = first.clone();
    let mut tokens = Vec::new();
    for i in 0..steps {
        let next = argmax(&logits);
        tokens.push(next);
        logits = model
            .forward(&mut cache, &[next], prompt.len() + i)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
    }
    (first, tokens)
}

const PROMPT: [u32; 6] = [0, 5, 17, 3, 42, 9];

struct Pair {
    _tmp: tempfile::TempDir,
    gguf: PathBuf,
    folder: PathBuf,
}

fn pair(arch: &str, tied: bool, dtype: Dtype, shards: usize, seed: u64) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let model = random_model(arch, tied, seed);
    let gguf = tmp.path().join("model.gguf");
    write_gguf(&gguf, arch, &model, dtype);
    let folder = tmp.path().join(format!("tiny-{arch}"));
    write_folder(&folder, arch, tied, &model, dtype, shards);
    Pair {
        _tmp: tmp,
        gguf,
        folder,
    }
}

fn assert_same_model(p: &Pair) {
    let mut from_gguf = Transformer::load_gguf(&p.gguf, &Device::Cpu).unwrap();
    let opened = SafetensorsModel::open(&p.folder).unwrap();
    let mut from_folder = Transformer::load_safetensors(&opened, &Device::Cpu).unwrap();
    assert_eq!(from_gguf.config(), from_folder.config());
    let (logits_a, tokens_a) = run(&mut from_gguf, &PROMPT, 12);
    let (logits_b, tokens_b) = run(&mut from_folder, &PROMPT, 12);
    // The same weights through the same kernels: bit for bit the same.
    assert_eq!(logits_a, logits_b);
    assert_eq!(tokens_a, tokens_b);
    // A model that ignores its input would pass the above; this one does not.
    let distinct: std::collections::HashSet<_> = tokens_a.iter().collect();
    assert!(distinct.len() > 1, "degenerate greedy run {tokens_a:?}");
}

#[test]
fn llama_folder_matches_its_gguf() {
    assert_same_model(&pair("llama", false, Dtype::F32, 1, 1));
}

#[test]
fn qwen2_sharded_bf16_folder_matches_its_gguf() {
    assert_same_model(&pair("qwen2", true, Dtype::Bf16, 3, 2));
}

#[test]
fn llama_without_the_permutation_would_differ() {
    // Guards the test above: q/k in HF order, read as if already permuted, change the logits.
    let p = pair("llama", false, Dtype::F32, 1, 1);
    let mut from_folder =
        Transformer::load_safetensors(&SafetensorsModel::open(&p.folder).unwrap(), &Device::Cpu)
            .unwrap();
    let (logits, _) = run(&mut from_folder, &PROMPT, 0);
    // The same weights with q/k left in HF order in the GGUF.
    let mut hf_order = random_model("llama", false, 1);
    for (name, t) in hf_order.iter_mut() {
        let row = if t.shape.len() == 2 { t.shape[1] } else { 1 };
        if name.ends_with("q_proj.weight") {
            t.values = inverse_permute(&t.values, HEADS, row);
        } else if name.ends_with("k_proj.weight") {
            t.values = inverse_permute(&t.values, KV_HEADS, row);
        }
    }
    let unpermuted = p.gguf.with_file_name("unpermuted.gguf");
    write_gguf(&unpermuted, "llama", &hf_order, Dtype::F32);
    let mut plain = Transformer::load_gguf(&unpermuted, &Device::Cpu).unwrap();
    let (other, _) = run(&mut plain, &PROMPT, 0);
    assert_ne!(logits, other);
}

/// Undoes [`permute`], so that `write_gguf`'s permutation leaves HF order in the file.
fn inverse_permute(values: &[f32], heads: usize, row: usize) -> Vec<f32> {
    let rows = values.len() / row;
    let half = rows / heads / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = h * 2 * half + j * half + i;
                let src = h * 2 * half + 2 * i + j;
                out[src * row..(src + 1) * row]
                    .copy_from_slice(&values[dst * row..(dst + 1) * row]);
            }
        }
    }
    out
}

fn greedy_through_engine(path: &Path, prompt: Prompt, n: usize) -> Vec<u32> {
    let loaded = CandleBackend.load(path, &LoadOptions::default()).unwrap();
    let mut params = SamplingParams::greedy(n);
    params.ignore_eos = true;
    let generation = loaded.generate(GenerateRequest { prompt, params }).unwrap();
    let mut ids = Vec::new();
    for event in generation {
        match event {
            GenerateEvent::Token { id, .. } => ids.push(id),
            GenerateEvent::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    ids
}

#[test]
fn the_backend_serves_a_folder_like_the_node_passes_it() {
    let p = pair("llama", false, Dtype::F32, 2, 3);
    let mut reference = Transformer::load_gguf(&p.gguf, &Device::Cpu).unwrap();
    let (_, expected) = run(&mut reference, &PROMPT, 6);
    // The store's primary file (the first shard), and the view folder itself.
    let first_shard = p.folder.join("model-00001-of-00002.safetensors");
    for path in [&first_shard, &p.folder] {
        let estimate = CandleBackend
            .estimate(path, &LoadOptions::default())
            .unwrap();
        assert!(
            estimate.weights > 0 && estimate.kv_cache > 0,
            "{estimate:?}"
        );
        let got = greedy_through_engine(path, Prompt::Tokens(PROMPT.to_vec()), 6);
        assert_eq!(got, expected, "{}", path.display());
    }
    // Text goes through tokenizer.json, with BOS (t0) from tokenizer_config.json.
    let text: String = PROMPT[1..].iter().map(|i| format!("t{i} ")).collect();
    let got = greedy_through_engine(&p.folder, Prompt::Text(text), 6);
    assert_eq!(got, expected);
    let loaded = CandleBackend
        .load(&p.folder, &LoadOptions::default())
        .unwrap();
    assert!(loaded.info().model_chat_template);
    assert_eq!(loaded.info().architecture, "llama");
    let bad = loaded
        .generate(GenerateRequest {
            prompt: Prompt::Tokens(vec![1, VOCAB as u32]),
            params: SamplingParams::greedy(1),
        })
        .unwrap()
        .find_map(|e| match e {
            GenerateEvent::Error(e) => Some(e.to_string()),
            _ => None,
        })
        .unwrap();
    assert!(bad.contains("out of range"), "{bad}");
}

fn open_err(dir: &Path) -> String {
    let direct = SafetensorsModel::open(dir).unwrap_err().to_string();
    let through_backend = CandleBackend
        .load(dir, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        through_backend.contains(&direct),
        "{through_backend} / {direct}"
    );
    direct
}

#[test]
fn a_missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = random_model("qwen2", true, 4);
    model.remove("model.layers.1.mlp.up_proj.weight");
    write_folder(tmp.path(), "qwen2", true, &model, Dtype::F32, 1);
    let err = open_err(tmp.path());
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
    assert!(err.contains("missing"), "{err}");

    // qwen2 needs its attention biases; an untied llama its lm_head.
    let mut model = random_model("qwen2", true, 4);
    model.remove("model.layers.0.self_attn.k_proj.bias");
    write_folder(tmp.path(), "qwen2", true, &model, Dtype::F32, 1);
    let err = open_err(tmp.path());
    assert!(
        err.contains("model.layers.0.self_attn.k_proj.bias"),
        "{err}"
    );
    let mut model = random_model("llama", false, 4);
    model.remove("lm_head.weight");
    write_folder(tmp.path(), "llama", false, &model, Dtype::F32, 1);
    assert!(open_err(tmp.path()).contains("lm_head.weight"));
}

#[test]
fn inconsistent_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = random_model("llama", false, 5);
    let t = model
        .get_mut("model.layers.0.self_attn.v_proj.weight")
        .unwrap();
    t.shape = vec![HIDDEN, HIDDEN];
    t.values.resize(HIDDEN * HIDDEN, 0.0);
    write_folder(tmp.path(), "llama", false, &model, Dtype::F32, 1);
    let err = open_err(tmp.path());
    assert!(
        err.contains("model.layers.0.self_attn.v_proj.weight"),
        "{err}"
    );
    assert!(err.contains("shape"), "{err}");

    // An index naming a file that lacks the tensor.
    let model = random_model("llama", false, 5);
    write_folder(tmp.path(), "llama", false, &model, Dtype::F32, 2);
    let index_path = tmp.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["weight_map"]["model.norm.weight"] = json!("model-00001-of-00002.safetensors");
    index["weight_map"]["lm_head.weight"] = json!("model-00002-of-00002.safetensors");
    std::fs::write(&index_path, index.to_string()).unwrap();
    let err = open_err(tmp.path());
    assert!(
        err.contains("model.norm.weight") || err.contains("lm_head.weight"),
        "{err}"
    );
}

#[test]
fn unknown_architectures_are_refused_with_the_supported_list() {
    let tmp = tempfile::tempdir().unwrap();
    let model = random_model("llama", false, 6);
    write_folder(tmp.path(), "llama", false, &model, Dtype::F32, 1);
    let config_path = tmp.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["model_type"] = json!("gpt_neox");
    config["architectures"] = json!(["GPTNeoXForCausalLM"]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = open_err(tmp.path());
    assert!(err.contains("gpt_neox"), "{err}");
    assert!(err.contains("llama, mistral, qwen2"), "{err}");
    // The backend says what kind of refusal it is, on the estimate (what a node asks first)
    // as on the load.
    let opts = LoadOptions::default();
    for err in [
        CandleBackend.estimate(tmp.path(), &opts).unwrap_err(),
        CandleBackend.load(tmp.path(), &opts).unwrap_err(),
    ] {
        assert!(
            matches!(&err, InferError::UnsupportedArchitecture { architecture, .. } if architecture == "gpt_neox"),
            "{err}"
        );
        assert_eq!(err.error_type(), "unsupported_architecture");
    }
    // Without model_type, the classes named are what is refused.
    config.as_object_mut().unwrap().remove("model_type");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = open_err(tmp.path());
    assert!(
        err.contains("\"GPTNeoXForCausalLM\"") && err.contains("llama, mistral, qwen2"),
        "{err}"
    );
}

/// Every way a safetensors header can lie, for the engine's loader (`SafetensorsModel::open`,
/// then the backend's load): `Ok` or an error, never a panic. (The header parser it shares with
/// the store is fuzzed in `crates/rbee-format/tests/fuzz.rs`; the store's import runs these
/// cases too, in `crates/rbee-store/tests/store.rs`.)
#[test]
fn damaged_safetensors_headers_are_refused_by_the_loader() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("m");
    let model = random_model("llama", true, 9);
    write_folder(&folder, "llama", true, &model, Dtype::F32, 1);
    let file = folder.join("model.safetensors");
    let good = std::fs::read(&file).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&good[8..8 + header_len]).unwrap();
    let data = &good[8 + header_len..];

    let with_header = |h: &[u8]| {
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h);
        out.extend_from_slice(data);
        out
    };
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // The length field lies.
    for len in [
        0,
        1,
        7,
        header_len as u64 - 1,
        header_len as u64 + 1,
        good.len() as u64 - 8,
        good.len() as u64,
        (100 << 20) + 1,
        u64::MAX,
    ] {
        let mut v = good.clone();
        v[..8].copy_from_slice(&len.to_le_bytes());
        cases.push(v);
    }
    // Cut anywhere in the length or the header, and just after it.
    for cut in (0..8 + header_len + 16).step_by(13) {
        cases.push(good[..cut].to_vec());
    }
    // Structural bytes dropped into the header.
    for i in (8..8 + header_len).step_by(37) {
        for b in [b'"', b'{', b']', b',', b'9', b'-', 0xff, 0x00] {
            let mut v = good.clone();
            v[i] = b;
            cases.push(v);
        }
    }
    // Values that lie: offsets out of the file or reversed, shapes that overflow or do
    // not match the bytes, dtypes that do not exist, metadata of the wrong type.
    let name = model.keys().next().unwrap().clone();
    let lies = [
        ("data_offsets", json!([0u64, u64::MAX])),
        ("data_offsets", json!([u64::MAX - 1, u64::MAX])),
        ("data_offsets", json!([10, 5])),
        ("data_offsets", json!([-1, 5])),
        ("data_offsets", json!([0])),
        ("shape", json!([u64::MAX, 2])),
        ("shape", json!([1u64 << 32, 1u64 << 32])),
        ("shape", json!([])),
        ("shape", json!([0])),
        ("shape", json!("32")),
        ("dtype", json!("F128")),
        ("dtype", json!("")),
        ("dtype", json!(5)),
    ];
    for (field, value) in lies {
        let mut h = header.clone();
        h[&name][field] = value;
        cases.push(with_header(&serde_json::to_vec(&h).unwrap()));
    }
    for extra in [
        json!({"__metadata__": [1, 2]}),
        json!({"": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}),
        json!({"dup": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}),
    ] {
        let mut h = header.clone();
        h.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        cases.push(with_header(&serde_json::to_vec(&h).unwrap()));
    }
    cases.push(with_header(b"[]"));
    cases.push(with_header(b"null"));
    cases.push(with_header(&b"[".repeat(10_000)));

    let mut refused = 0;
    for (i, bytes) in cases.iter().enumerate() {
        std::fs::write(&file, bytes).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            let opened = SafetensorsModel::open(&folder).is_ok();
            let loaded = CandleBackend.load(&folder, &LoadOptions::default()).is_ok();
            (opened, loaded)
        });
        let (opened, loaded) = outcome.unwrap_or_else(|_| {
            panic!("case {i} panicked: {:02x?}", &bytes[..bytes.len().min(80)])
        });
        // The backend never runs what the loader refused.
        assert!(
            opened || !loaded,
            "case {i}: loaded a folder that does not open"
        );
        refused += usize::from(!opened);
    }
    assert!(
        refused > cases.len() / 2,
        "only {refused} of {} refused",
        cases.len()
    );
}
