//! Hugging Face model folders: `config.json` + `*.safetensors` (optionally
//! sharded with `model.safetensors.index.json`), for the llama (and Mistral)
//! and qwen2 architectures, with f32, f16 or bf16 weights.
//!
//! The folder is described as the GGUF header llama.cpp's converter
//! (`convert_hf_to_gguf.py`) would write for it: the same metadata keys and
//! tensor names, ggml dimension order, and for llama the same q/k row
//! permutation (HF rotates the two halves of a head, GGUF adjacent pairs).
//! Everything downstream ([`ModelConfig`], the memory estimate, the loader,
//! the chat template lookup) then works unchanged, and a folder gives the same
//! logits as the GGUF converted from it.
//!
//! Everything is checked when the folder is opened, before any weight is
//! read: the architecture, every tensor's presence, shape and type, and (by
//! `rbee_format::safetensors`, the header parser the store uses too) that
//! every tensor lies inside its file. Errors name the tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rbee_format::gguf::{GgmlType, GgufFile, Metadata, TensorInfo};
use rbee_format::safetensors::{Dtype, SafetensorsHeader};
use serde_json::Value as Json;

use super::config::Arch;
use super::error::ModelError;

/// `model_type`s of config.json we load, and the architecture each runs as: the subset of
/// [`Arch`] whose Hugging Face layout this conversion knows.
const MODEL_TYPES: &[(&str, Arch)] = &[
    ("llama", Arch::Llama),
    ("mistral", Arch::Llama),
    ("qwen2", Arch::Qwen2),
];

/// config.json `architectures` classes, for a config without `model_type`.
const CLASSES: &[(&str, Arch)] = &[
    ("LlamaForCausalLM", Arch::Llama),
    ("MistralForCausalLM", Arch::Llama),
    ("Qwen2ForCausalLM", Arch::Qwen2),
];

/// A safetensors model folder, opened and checked.
#[derive(Debug)]
pub struct SafetensorsModel {
    dir: PathBuf,
    header: GgufFile,
    pub(crate) layout: Layout,
}

/// Where each tensor's bytes are, and what to do to them on the way in.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    pub files: Vec<PathBuf>,
    /// GGUF tensor name → index into `files` (offsets are in the header's `TensorInfo`).
    pub file_of: HashMap<String, usize>,
    /// GGUF tensor name → heads whose rows are permuted HF → GGUF order (llama q/k).
    pub permute: HashMap<String, usize>,
    /// Tensors computed from config.json rather than read (llama 3's `rope_freqs.weight`).
    pub generated: HashMap<String, Vec<f32>>,
}

/// One tensor of a safetensors header.
pub(crate) struct Entry {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

impl SafetensorsModel {
    /// Opens and checks the folder `dir`.
    pub fn open(dir: &Path) -> Result<SafetensorsModel, ModelError> {
        let bad = |reason: String| invalid(dir, reason);
        let config = read_json(&dir.join("config.json"))?;
        let arch = architecture(&config)?;
        let arch_name = arch.name();
        let tokenizer_config = match dir.join("tokenizer_config.json") {
            p if p.is_file() => Some(read_json(&p)?),
            _ => None,
        };
        let (files, entries) = read_headers(dir)?;
        let cfg = HfConfig::read(dir, &config)?;

        let mut md = Metadata::new();
        let key = |k: &str| format!("{arch_name}.{k}");
        md.insert("general.architecture", arch_name);
        if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
            md.insert("general.name", name);
        }
        md.insert(key("context_length"), cfg.context as u32);
        md.insert(key("embedding_length"), cfg.hidden as u32);
        md.insert(key("block_count"), cfg.layers as u32);
        md.insert(key("feed_forward_length"), cfg.ffn as u32);
        md.insert(key("attention.head_count"), cfg.heads as u32);
        md.insert(key("attention.head_count_kv"), cfg.kv_heads as u32);
        md.insert(key("attention.key_length"), cfg.head_dim as u32);
        md.insert(key("attention.value_length"), cfg.head_dim as u32);
        md.insert(key("attention.layer_norm_rms_epsilon"), cfg.rms_eps);
        md.insert(key("rope.freq_base"), cfg.rope_theta);
        let mut generated = HashMap::new();
        match &cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear(factor) => {
                md.insert(key("rope.scaling.type"), "linear");
                md.insert(key("rope.scaling.factor"), *factor);
            }
            RopeScaling::Llama3(factors) => {
                generated.insert("rope_freqs.weight".to_owned(), factors.clone());
            }
        }
        if let Some(template) = tokenizer_config.as_ref().and_then(chat_template) {
            md.insert("tokenizer.chat_template", template);
        }

        // Expected tensors: (HF name, GGUF name, HF shape [out, in] or [len], required).
        let (h, hd) = (cfg.hidden as u64, cfg.head_dim as u64);
        let q = cfg.heads as u64 * hd;
        let kv = cfg.kv_heads as u64 * hd;
        let ffn = cfg.ffn as u64;
        let vocab = entries
            .get("model.embed_tokens.weight")
            .and_then(|e| e.shape.first().copied())
            .ok_or_else(|| bad("tensor model.embed_tokens.weight is missing".into()))?;
        let mut wanted: Vec<(String, String, Vec<u64>, bool)> = vec![
            (
                "model.embed_tokens.weight".into(),
                "token_embd.weight".into(),
                vec![vocab, h],
                true,
            ),
            (
                "model.norm.weight".into(),
                "output_norm.weight".into(),
                vec![h],
                true,
            ),
            (
                "lm_head.weight".into(),
                "output.weight".into(),
                vec![vocab, h],
                !cfg.tie_embeddings,
            ),
        ];
        let qwen2 = arch == Arch::Qwen2;
        for il in 0..cfg.layers {
            let hf = |t: &str| format!("model.layers.{il}.{t}");
            let gg = |t: &str| format!("blk.{il}.{t}");
            let mut add = |hf_name: &str, gg_name: &str, shape: Vec<u64>, required: bool| {
                wanted.push((hf(hf_name), gg(gg_name), shape, required));
            };
            add("input_layernorm.weight", "attn_norm.weight", vec![h], true);
            add("self_attn.q_proj.weight", "attn_q.weight", vec![q, h], true);
            add(
                "self_attn.k_proj.weight",
                "attn_k.weight",
                vec![kv, h],
                true,
            );
            add(
                "self_attn.v_proj.weight",
                "attn_v.weight",
                vec![kv, h],
                true,
            );
            // qwen2 always has q/k/v biases; llama only with `attention_bias`.
            add("self_attn.q_proj.bias", "attn_q.bias", vec![q], qwen2);
            add("self_attn.k_proj.bias", "attn_k.bias", vec![kv], qwen2);
            add("self_attn.v_proj.bias", "attn_v.bias", vec![kv], qwen2);
            add(
                "self_attn.o_proj.weight",
                "attn_output.weight",
                vec![h, q],
                true,
            );
            add("self_attn.o_proj.bias", "attn_output.bias", vec![h], false);
            add(
                "post_attention_layernorm.weight",
                "ffn_norm.weight",
                vec![h],
                true,
            );
            add(
                "mlp.gate_proj.weight",
                "ffn_gate.weight",
                vec![ffn, h],
                true,
            );
            add("mlp.up_proj.weight", "ffn_up.weight", vec![ffn, h], true);
            add(
                "mlp.down_proj.weight",
                "ffn_down.weight",
                vec![h, ffn],
                true,
            );
        }

        let mut tensors = Vec::with_capacity(wanted.len());
        let mut layout = Layout {
            files,
            generated,
            ..Layout::default()
        };
        for (hf_name, gg_name, shape, required) in wanted {
            let Some(e) = entries.get(&hf_name) else {
                if required {
                    return Err(bad(format!(
                        "tensor {hf_name} is missing from the safetensors files"
                    )));
                }
                continue;
            };
            if e.shape != shape {
                return Err(bad(format!(
                    "tensor {hf_name} has shape {:?}, expected {shape:?} from config.json",
                    e.shape
                )));
            }
            let dtype = match e.dtype {
                Dtype::F32 => GgmlType::F32,
                Dtype::F16 => GgmlType::F16,
                Dtype::BF16 => GgmlType::BF16,
                other => {
                    return Err(bad(format!(
                        "tensor {hf_name} has dtype {other}; supported are F32, F16 and BF16"
                    )));
                }
            };
            if arch == Arch::Llama
                && (gg_name.ends_with("attn_q.weight") || gg_name.ends_with("attn_q.bias"))
            {
                layout.permute.insert(gg_name.clone(), cfg.heads);
            }
            if arch == Arch::Llama
                && (gg_name.ends_with("attn_k.weight") || gg_name.ends_with("attn_k.bias"))
            {
                layout.permute.insert(gg_name.clone(), cfg.kv_heads);
            }
            layout.file_of.insert(gg_name.clone(), e.file);
            tensors.push(TensorInfo {
                name: gg_name,
                dims: shape.iter().rev().copied().collect(),
                dtype,
                offset: e.start,
                size: e.end - e.start,
            });
        }
        let header = GgufFile {
            version: 3,
            metadata: md,
            tensors,
            data_offset: 0,
            alignment: 1,
            file_size: 0,
        };
        Ok(SafetensorsModel {
            dir: dir.to_owned(),
            header,
            layout,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder as the GGUF header its conversion would have: metadata keys
    /// (including `tokenizer.chat_template` from tokenizer_config.json) and
    /// tensors under GGUF names with their types and sizes. Tensor offsets
    /// point into the safetensors files, not into any GGUF file.
    pub fn header(&self) -> &GgufFile {
        &self.header
    }
}

/// The architecture config.json's `model_type` (or, without one, its `architectures`) runs as.
fn architecture(config: &Json) -> Result<Arch, ModelError> {
    let model_types = MODEL_TYPES
        .iter()
        .map(|(m, _)| *m)
        .collect::<Vec<_>>()
        .join(", ");
    let refused = |architecture: String| ModelError::UnsupportedArchitecture {
        architecture,
        runs: format!(
            "from a safetensors folder it runs config.json model_type {model_types} (generation), {} (embeddings)",
            super::config::ENCODER_MODEL_TYPES.join(", ")
        ),
    };
    if let Some(m) = config.get("model_type").and_then(Json::as_str) {
        return MODEL_TYPES
            .iter()
            .find(|(name, _)| *name == m)
            .map(|(_, arch)| *arch)
            .ok_or_else(|| refused(m.to_owned()));
    }
    let classes: Vec<&str> = config
        .get("architectures")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    classes
        .iter()
        .find_map(|c| CLASSES.iter().find(|(name, _)| name == c).map(|(_, a)| *a))
        .ok_or_else(|| {
            refused(if classes.is_empty() {
                "(config.json names none)".to_owned()
            } else {
                classes.join(", ")
            })
        })
}

enum RopeScaling {
    None,
    Linear(f32),
    /// Per-pair frequency divisors, as llama.cpp's `rope_freqs.weight`.
    Llama3(Vec<f32>),
}

/// The hyperparameters config.json gives.
struct HfConfig {
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    context: usize,
    rms_eps: f32,
    rope_theta: f32,
    rope_scaling: RopeScaling,
    tie_embeddings: bool,
}

impl HfConfig {
    fn read(dir: &Path, c: &Json) -> Result<HfConfig, ModelError> {
        let bad = |key: &str, reason: &str| invalid(dir, format!("config.json {key} {reason}"));
        let count = |key: &str| -> Result<Option<usize>, ModelError> {
            match c.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if n > 0 && n <= 1 << 31 => Ok(Some(n as usize)),
                    _ => Err(bad(key, &format!("= {v} is not a positive integer"))),
                },
            }
        };
        let req = |key: &str| count(key)?.ok_or_else(|| bad(key, "is missing"));
        let float = |key: &str, default: f64| -> Result<f32, ModelError> {
            match c.get(key) {
                None | Some(Json::Null) => Ok(default as f32),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .map(|x| x as f32)
                    .ok_or_else(|| bad(key, &format!("= {v} is not a positive number"))),
            }
        };
        let hidden = req("hidden_size")?;
        let heads = req("num_attention_heads")?;
        let kv_heads = count("num_key_value_heads")?.unwrap_or(heads);
        let head_dim = match count("head_dim")? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(bad(
                    "hidden_size",
                    "is not a multiple of num_attention_heads",
                ));
            }
        };
        if heads % kv_heads != 0 {
            return Err(bad(
                "num_key_value_heads",
                "does not divide num_attention_heads",
            ));
        }
        if head_dim % 2 != 0 {
            return Err(bad("head_dim", "must be even for RoPE"));
        }
        let rope_theta = float("rope_theta", 10_000.0)?;
        let rope_scaling = match c.get("rope_scaling") {
            None | Some(Json::Null) => RopeScaling::None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Json::as_str)
                    .unwrap_or("");
                let num =
                    |k: &str, default: f64| s.get(k).and_then(Json::as_f64).unwrap_or(default);
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear(num("factor", 1.0) as f32),
                    "llama3" => RopeScaling::Llama3(llama3_rope_factors(
                        rope_theta,
                        head_dim,
                        num("factor", 8.0),
                        num("low_freq_factor", 1.0),
                        num("high_freq_factor", 4.0),
                        num("original_max_position_embeddings", 8192.0),
                    )),
                    other => {
                        return Err(bad(
                            "rope_scaling",
                            &format!(
                                "type {other:?} is not implemented (default, linear and llama3 are)"
                            ),
                        ));
                    }
                }
            }
        };
        Ok(HfConfig {
            hidden,
            layers: req("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            ffn: req("intermediate_size")?,
            context: count("max_position_embeddings")?.unwrap_or(4096),
            rms_eps: float("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            tie_embeddings: c
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
        })
    }
}

/// llama.cpp converter's `rope_freqs` for Llama 3.1+ RoPE scaling.
fn llama3_rope_factors(
    base: f32,
    dim: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    old_context: f64,
) -> Vec<f32> {
    let low_wavelen = old_context / low_freq_factor;
    let high_wavelen = old_context / high_freq_factor;
    (0..dim / 2)
        .map(|i| {
            // The converter computes the frequencies in f32 (torch).
            let freq = 1.0 / base.powf((2 * i) as f32 / dim as f32);
            let wavelen = 2.0 * std::f64::consts::PI / f64::from(freq);
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_context / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// tokenizer_config.json's `chat_template`: a string, or a list of named
/// templates of which we take `default`.
fn chat_template(config: &Json) -> Option<String> {
    match config.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

pub(crate) fn invalid(dir: &Path, reason: String) -> ModelError {
    ModelError::Safetensors {
        path: dir.to_owned(),
        reason,
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Json, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::Safetensors {
        path: path.to_owned(),
        reason: format!("cannot read: {e}"),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ModelError::Safetensors {
        path: path.to_owned(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// The safetensors files of the folder (from the index when there is one)
/// and every tensor in them, by HF name.
pub(crate) fn read_headers(
    dir: &Path,
) -> Result<(Vec<PathBuf>, BTreeMap<String, Entry>), ModelError> {
    let bad = |reason: String| invalid(dir, reason);
    let index_path = dir.join("model.safetensors.index.json");
    let index: Option<BTreeMap<String, String>> = if index_path.is_file() {
        let index = read_json(&index_path)?;
        let map = index
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| bad("model.safetensors.index.json has no weight_map object".into()))?;
        let mut out = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                bad(format!(
                    "model.safetensors.index.json maps {tensor} to a non-string"
                ))
            })?;
            out.insert(tensor.clone(), file.to_owned());
        }
        Some(out)
    } else {
        None
    };
    let mut names: Vec<String> = match &index {
        Some(map) => map.values().cloned().collect(),
        None => std::fs::read_dir(dir)
            .map_err(|e| bad(format!("cannot list the folder: {e}")))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".safetensors"))
            .collect(),
    };
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(bad("no *.safetensors files".into()));
    }
    let mut files = Vec::with_capacity(names.len());
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        if name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(bad(format!(
                "safetensors file name {name:?} is not a plain file name"
            )));
        }
        let path = dir.join(name);
        for (tensor, mut e) in read_header(&path)? {
            e.file = i;
            if let Some(map) = &index
                && map.get(&tensor) != Some(name)
            {
                // The index decides which file a tensor comes from.
                continue;
            }
            if entries.insert(tensor.clone(), e).is_some() {
                return Err(bad(format!(
                    "tensor {tensor} appears in more than one file"
                )));
            }
        }
        files.push(path);
    }
    if let Some(map) = &index {
        for (tensor, file) in map {
            if !entries.contains_key(tensor) {
                return Err(bad(format!(
                    "tensor {tensor} is listed in model.safetensors.index.json under {file} but is not in that file"
                )));
            }
        }
    }
    Ok((files, entries))
}

/// One file's tensor table, every range checked against the file size by the shared parser.
fn read_header(path: &Path) -> Result<Vec<(String, Entry)>, ModelError> {
    let header = SafetensorsHeader::open(path).map_err(|e| ModelError::Safetensors {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(header
        .tensors
        .iter()
        .map(|(name, t)| {
            let [start, end] = header.file_range(t);
            let entry = Entry {
                file: 0,
                dtype: t.dtype,
                shape: t.shape.clone(),
                start,
                end,
            };
            (name.clone(), entry)
        })
        .collect())
}

/// Reorders the rows of a q or k projection (or its bias) from HF's layout to
/// GGUF's, as llama.cpp's converter does for llama: within each head, row
/// `j * half + i` moves to `2 * i + j` (`reshape(heads, 2, half, …).swapaxes(1, 2)`).
pub(crate) fn permute_rows(data: &[u8], heads: usize, row_bytes: usize) -> Option<Vec<u8>> {
    if heads == 0 || row_bytes == 0 || !data.len().is_multiple_of(row_bytes) {
        return None;
    }
    let rows = data.len() / row_bytes;
    if !rows.is_multiple_of(2 * heads) {
        return None;
    }
    let head_rows = rows / heads;
    let half = head_rows / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_rows + j * half + i;
                out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_the_converter() {
        // One head of 4 rows (1 byte each): HF [a0 a1 b0 b1] -> GGUF [a0 b0 a1 b1].
        assert_eq!(permute_rows(&[0, 1, 2, 3], 1, 1).unwrap(), vec![0, 2, 1, 3]);
        // Two heads, rows of 2 bytes.
        let data: Vec<u8> = (0..16).collect();
        let out = permute_rows(&data, 2, 2).unwrap();
        assert_eq!(
            out,
            vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
        );
        assert!(permute_rows(&[0, 1, 2], 1, 1).is_none());
    }

    #[test]
    fn llama3_factors_follow_the_converter() {
        // Llama 3.1 8B: theta 500000, head 128, factor 8, low 1, high 4, 8192.
        let f = llama3_rope_factors(500_000.0, 128, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
    }
}
