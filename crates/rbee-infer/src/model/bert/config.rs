//! [`EncoderConfig`]: an encoder's shape and how its vectors are made, from a GGUF header
//! (llama.cpp's `bert.*` keys) or from a sentence-transformers folder (`config.json`,
//! `modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`, the model card).

use std::path::Path;

use rbee_format::gguf::{GgufFile, Value};
use serde_json::Value as Json;

use super::super::config::Pooling;
pub use super::super::config::{ENCODER_ARCHITECTURES, ENCODER_MODEL_TYPES};
use super::super::error::ModelError;
use super::super::safetensors::{invalid, read_json};

/// Encoders llama.cpp knows that this engine does not run yet, with why: refused by name
/// rather than as an unknown architecture.
const NOT_YET: &[(&str, &str)] = &[
    (
        "jina-bert-v2",
        "jina-bert-v2 (ALiBi positions) is not implemented by rbee's encoder yet; a `bert` or `nomic-bert` model runs",
    ),
    (
        "nomic-bert-moe",
        "nomic-bert-moe is not implemented by rbee's encoder yet; a `bert` or `nomic-bert` model (e.g. nomic-embed-text-v1.5) runs",
    ),
    (
        "modern-bert",
        "modern-bert is not implemented by rbee's encoder yet; a `bert` or `nomic-bert` model runs",
    ),
];

/// Why an encoder architecture llama.cpp knows is refused here, if it is one.
pub(crate) fn not_yet(architecture: &str) -> Option<&'static str> {
    NOT_YET
        .iter()
        .find(|(a, _)| *a == architecture)
        .map(|(_, why)| *why)
}

/// How an encoder's tokens get their positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Positions {
    /// A learned `position_embd` row added to each token's embedding (BERT).
    Absolute,
    /// Rotary embedding of queries and keys in every layer, pairs `(i, i + dims/2)` (ggml's
    /// NEOX style), with this base and over the first `dims` values of each head (nomic-bert).
    Rotary { freq_base: f32, dims: usize },
}

/// An encoder: its shape, and how an input's token states become its vector.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub architecture: String,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    /// Rows of the position embeddings (or, with rotary positions, the trained context): no
    /// input may be longer.
    pub positions: usize,
    /// How a token knows its position: BERT's learned table added to the embeddings, or
    /// nomic-bert's rotary embedding of queries and keys.
    pub position_kind: Positions,
    /// The feed-forward block: BERT's `gelu(x·up)·down` with biases, or nomic-bert's
    /// `(silu(x·gate) ⊙ x·up)·down`.
    pub gated_ffn: bool,
    pub eps: f32,
    /// Tokens of one input at most (special tokens included): sentence-transformers'
    /// `max_seq_length` when the folder gives one, else the positions.
    pub max_tokens: usize,
    pub pooling: Pooling,
    /// The model states its pooling (a GGUF `pooling_type`, a `1_Pooling/config.json`).
    pub declares_pooling: bool,
    /// Vectors are scaled to unit length by default (a `Normalize` module in modules.json; always
    /// for GGUF, as llama.cpp's server and Ollama do).
    pub normalize: bool,
    /// The model card says it was trained with Matryoshka loss: a prefix of its vector is an
    /// embedding too (OpenAI's `dimensions`).
    pub matryoshka: bool,
}

impl EncoderConfig {
    /// From a GGUF header whose architecture is one of [`ENCODER_ARCHITECTURES`].
    pub fn from_gguf(file: &GgufFile) -> Result<EncoderConfig, ModelError> {
        let md = &file.metadata;
        let arch = file.architecture().unwrap_or_default().to_owned();
        let int = |suffix: &str| -> Result<usize, ModelError> {
            let key = format!("{arch}.{suffix}");
            md.get(&key)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or(ModelError::MissingMetadata { key })
        };
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let eps_key = format!("{arch}.attention.layer_norm_epsilon");
        let eps = md
            .get_f32(&eps_key)
            .ok_or(ModelError::MissingMetadata { key: eps_key })?;
        let vocab = file
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?
            as usize;
        let positions = int("context_length")?;
        let nomic = arch == "nomic-bert";
        let position_kind = if nomic {
            // llama.cpp's defaults when a key is absent: base 10000, the whole head.
            let head_dim = hidden.checked_div(heads).unwrap_or(0);
            let dims = md
                .get_u64(&format!("{arch}.rope.dimension_count"))
                .map_or(head_dim, |d| d as usize);
            if dims == 0 || dims > head_dim || dims % 2 == 1 {
                return Err(ModelError::BadMetadata {
                    key: format!("{arch}.rope.dimension_count"),
                    value: dims.to_string(),
                    reason: format!("must be even and at most the head size {head_dim}"),
                });
            }
            let base_key = format!("{arch}.rope.freq_base");
            let freq_base = md.get_f32(&base_key).unwrap_or(10_000.0);
            if !(freq_base.is_finite() && freq_base > 1.0) {
                return Err(ModelError::BadMetadata {
                    key: base_key,
                    value: freq_base.to_string(),
                    reason: "a rotary base must be a number above 1".into(),
                });
            }
            Positions::Rotary { freq_base, dims }
        } else {
            Positions::Absolute
        };
        let pooling_key = format!("{arch}.pooling_type");
        let pooling = match md.get_u64(&pooling_key) {
            None => None,
            Some(v) => Some(
                Pooling::from_gguf(v).ok_or_else(|| ModelError::BadMetadata {
                    key: pooling_key,
                    value: v.to_string(),
                    reason: "an embedding needs mean (1), cls (2) or last (3) pooling".into(),
                })?,
            ),
        };
        let cfg = EncoderConfig {
            vocab,
            hidden,
            layers: int("block_count")?,
            heads,
            ffn: int("feed_forward_length")?,
            positions,
            position_kind,
            gated_ffn: nomic,
            eps,
            max_tokens: positions,
            // llama.cpp's converter always writes a pooling type; mean is what BERT
            // sentence encoders without one use (sentence-transformers' default).
            pooling: pooling.unwrap_or(Pooling::Mean),
            declares_pooling: pooling.is_some(),
            normalize: true,
            matryoshka: false,
            architecture: arch,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// From a Hugging Face folder whose config.json `model_type` is one of
    /// [`ENCODER_MODEL_TYPES`], with the sentence-transformers files beside it.
    pub fn from_folder(dir: &Path) -> Result<EncoderConfig, ModelError> {
        let bad = |reason: String| invalid(dir, reason);
        let config = read_json(&dir.join("config.json"))?;
        let int = |key: &str| -> Result<usize, ModelError> {
            config
                .get(key)
                .and_then(Json::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad(format!("config.json has no integer `{key}`")))
        };
        match config.get("hidden_act").and_then(Json::as_str) {
            None | Some("gelu") => {}
            Some(other) => {
                return Err(bad(format!(
                    "config.json hidden_act {other:?}: rbee's BERT encoder computes the exact (erf) GELU, `gelu`"
                )));
            }
        }
        match config.get("position_embedding_type").and_then(Json::as_str) {
            None | Some("absolute") => {}
            Some(other) => {
                return Err(bad(format!(
                    "config.json position_embedding_type {other:?}: rbee's BERT encoder runs absolute positions"
                )));
            }
        }
        let positions = int("max_position_embeddings")?;
        let modules = Modules::read(dir)?;
        let max_tokens = match dir.join("sentence_bert_config.json") {
            p if p.is_file() => read_json(&p)?
                .get("max_seq_length")
                .and_then(Json::as_u64)
                .map_or(positions, |n| (n as usize).min(positions)),
            _ => positions,
        };
        let cfg = EncoderConfig {
            architecture: "bert".into(),
            vocab: int("vocab_size")?,
            hidden: int("hidden_size")?,
            layers: int("num_hidden_layers")?,
            heads: int("num_attention_heads")?,
            ffn: int("intermediate_size")?,
            positions,
            position_kind: Positions::Absolute,
            gated_ffn: false,
            eps: config
                .get("layer_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(1e-12) as f32,
            max_tokens,
            pooling: modules.pooling.unwrap_or(Pooling::Mean),
            declares_pooling: modules.pooling.is_some(),
            normalize: modules.normalize,
            matryoshka: matryoshka_card(dir),
        };
        cfg.check().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ModelError> {
        let bad = |what: &str, value: usize| ModelError::BadMetadata {
            key: what.into(),
            value: value.to_string(),
            reason: "out of range".into(),
        };
        // Bounds that keep every buffer the forward pass allocates sane.
        if self.hidden == 0 || self.hidden > 1 << 14 {
            return Err(bad("hidden size", self.hidden));
        }
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return Err(ModelError::BadMetadata {
                key: "attention heads".into(),
                value: self.heads.to_string(),
                reason: format!("must divide the hidden size {}", self.hidden),
            });
        }
        if self.layers == 0 || self.layers > 256 {
            return Err(bad("layers", self.layers));
        }
        if self.ffn == 0 || self.ffn > 1 << 16 {
            return Err(bad("feed-forward size", self.ffn));
        }
        if self.positions < 2 || self.positions > 1 << 16 {
            return Err(bad("positions", self.positions));
        }
        if self.vocab == 0 {
            return Err(bad("vocabulary", self.vocab));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(ModelError::BadMetadata {
                key: "layer norm epsilon".into(),
                value: self.eps.to_string(),
                reason: "must be a positive number".into(),
            });
        }
        Ok(())
    }
}

/// What a sentence-transformers `modules.json` puts after the transformer.
struct Modules {
    pooling: Option<Pooling>,
    normalize: bool,
}

impl Modules {
    /// Reads `modules.json` and the pooling module's config. A folder without `modules.json`
    /// is a plain transformers model: no pooling stated, no normalisation. Modules that would
    /// change the vector (a Dense projection, max pooling) are refused by name rather than
    /// skipped.
    fn read(dir: &Path) -> Result<Modules, ModelError> {
        let bad = |reason: String| invalid(dir, reason);
        let path = dir.join("modules.json");
        if !path.is_file() {
            return Ok(Modules {
                pooling: None,
                normalize: false,
            });
        }
        let list = read_json(&path)?;
        let list = list
            .as_array()
            .ok_or_else(|| bad("modules.json is not a list".into()))?;
        let mut out = Modules {
            pooling: None,
            normalize: false,
        };
        for module in list {
            let kind = module.get("type").and_then(Json::as_str).unwrap_or("");
            let kind = kind.rsplit('.').next().unwrap_or(kind);
            let sub = module.get("path").and_then(Json::as_str).unwrap_or("");
            match kind {
                "Transformer" => {}
                "Normalize" => out.normalize = true,
                "Pooling" => {
                    if sub.contains("..") || sub.starts_with('/') {
                        return Err(bad(format!("modules.json: pooling path {sub:?}")));
                    }
                    out.pooling = Some(pooling_config(&dir.join(sub).join("config.json"))?);
                }
                other => {
                    return Err(bad(format!(
                        "modules.json has a {other} module ({sub}); rbee runs Transformer, Pooling and Normalize modules"
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// `1_Pooling/config.json`: one of mean, CLS or last-token pooling.
fn pooling_config(path: &Path) -> Result<Pooling, ModelError> {
    let cfg = read_json(path)?;
    let on = |key: &str| cfg.get(key).and_then(Json::as_bool).unwrap_or(false);
    let modes: Vec<(&str, Pooling)> = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_lasttoken", Pooling::Last),
    ]
    .into_iter()
    .filter(|(key, _)| on(key))
    .collect();
    let unsupported: Vec<&str> = [
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
    ]
    .into_iter()
    .filter(|key| on(key))
    .collect();
    match (modes.as_slice(), unsupported.as_slice()) {
        ([(_, pooling)], []) => Ok(*pooling),
        (_, [first, ..]) => Err(invalid(
            path,
            format!("{first} is set; rbee pools by mean, CLS or last token"),
        )),
        _ => Err(invalid(
            path,
            "exactly one of pooling_mode_mean_tokens, pooling_mode_cls_token, pooling_mode_lasttoken must be true".into(),
        )),
    }
}

/// Whether the model card (`README.md`'s YAML front matter) tags the model as trained with
/// Matryoshka loss (`matryoshka`, or sentence-transformers' `loss:MatryoshkaLoss`).
fn matryoshka_card(dir: &Path) -> bool {
    let Ok(card) = std::fs::read_to_string(dir.join("README.md")) else {
        return false;
    };
    let Some(front) = card
        .strip_prefix("---")
        .and_then(|rest| rest.split("\n---").next())
    else {
        return false;
    };
    front.lines().any(|line| {
        let tag = line
            .trim()
            .trim_start_matches('-')
            .trim()
            .to_ascii_lowercase();
        tag == "matryoshka" || tag == "loss:matryoshkaloss"
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const CONFIG: &str = r#"{"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 64,
        "vocab_size": 10, "hidden_act": "gelu", "layer_norm_eps": 1e-12}"#;
    const MODULES: &str = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn sentence_transformers_files_decide_pooling_normalisation_and_length() {
        let dir = folder(&[
            ("config.json", CONFIG),
            ("modules.json", MODULES),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
            ),
            ("sentence_bert_config.json", r#"{"max_seq_length": 32}"#),
            (
                "README.md",
                "---\ntags:\n- sentence-transformers\n- loss:MatryoshkaLoss\n---\n# card\n",
            ),
        ]);
        let cfg = EncoderConfig::from_folder(dir.path()).unwrap();
        assert_eq!(
            (
                cfg.pooling,
                cfg.declares_pooling,
                cfg.normalize,
                cfg.max_tokens
            ),
            (Pooling::Cls, true, true, 32)
        );
        assert!(cfg.matryoshka);
        assert_eq!((cfg.hidden, cfg.heads, cfg.positions), (8, 2, 64));
    }

    #[test]
    fn a_plain_bert_folder_states_nothing_and_unsupported_modules_are_refused() {
        let dir = folder(&[("config.json", CONFIG)]);
        let cfg = EncoderConfig::from_folder(dir.path()).unwrap();
        assert_eq!(
            (
                cfg.pooling,
                cfg.declares_pooling,
                cfg.normalize,
                cfg.matryoshka
            ),
            (Pooling::Mean, false, false, false)
        );
        assert_eq!(cfg.max_tokens, 64);

        let dense = MODULES.replace("Normalize\"}]", "Normalize\"}, {\"idx\": 3, \"name\": \"3\", \"path\": \"3_Dense\", \"type\": \"sentence_transformers.models.Dense\"}]");
        let dir = folder(&[
            ("config.json", CONFIG),
            ("modules.json", &dense),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_mean_tokens": true}"#,
            ),
        ]);
        let err = EncoderConfig::from_folder(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("Dense"), "{err}");

        let dir = folder(&[
            ("config.json", CONFIG),
            ("modules.json", MODULES),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_max_tokens": true}"#,
            ),
        ]);
        let err = EncoderConfig::from_folder(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("pooling_mode_max_tokens"), "{err}");

        let tanh = CONFIG.replace("\"gelu\"", "\"gelu_new\"");
        let dir = folder(&[("config.json", &tanh)]);
        let err = EncoderConfig::from_folder(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("gelu_new"), "{err}");
    }
}
