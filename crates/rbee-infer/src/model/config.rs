//! [`ModelConfig`]: the hyperparameters of one model, read from GGUF metadata.
//!
//! The supported architectures ([`SUPPORTED_ARCHITECTURES`]) share one transformer; what differs is
//! captured here as data (rope style, activation, norms, scales, sliding
//! window), each choice taken from llama.cpp's graph for that architecture
//! so our output matches it.

use std::collections::HashSet;

use rbee_format::gguf::{GgufError, GgufFile, Value};

use super::error::ModelError;

/// Declares [`Arch`], its names and [`SUPPORTED_ARCHITECTURES`] from one table, so the list of
/// what runs and the enum the transformer matches on cannot drift apart.
macro_rules! architectures {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// An architecture this engine runs (`general.architecture`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Arch {
            $($(#[$doc])* $variant,)+
        }

        impl Arch {
            /// Every architecture, in the order of [`SUPPORTED_ARCHITECTURES`].
            pub const ALL: &'static [Arch] = &[$(Arch::$variant),+];

            /// Its `general.architecture` name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Arch::$variant => $name,)+
                }
            }
        }

        /// The `general.architecture` names this engine runs: the one list of what runs. The
        /// model formats (`rbee-format`) and the store accept any well-formed model; loading
        /// one of another architecture fails naming this list.
        pub const SUPPORTED_ARCHITECTURES: &[&str] = &[$($name),+];
    };
}

architectures! {
    /// Llama 1/2/3 and Mistral.
    Llama => "llama",
    Qwen2 => "qwen2",
    Qwen3 => "qwen3",
    Gemma3 => "gemma3",
    Phi3 => "phi3",
}

impl Arch {
    /// The architecture named `name`, or an error naming it and what runs.
    pub fn parse(name: &str) -> Result<Arch, ModelError> {
        Arch::ALL
            .iter()
            .copied()
            .find(|a| a.name() == name)
            .ok_or_else(|| ModelError::UnsupportedArchitecture {
                architecture: name.to_owned(),
                runs: format!(
                    "it runs: {} (generation), {} (embeddings)",
                    SUPPORTED_ARCHITECTURES.join(", "),
                    ENCODER_ARCHITECTURES.join(", ")
                ),
            })
    }
}

/// What the transformer reads beyond a well-formed file (which `rbee_format::gguf::validate`
/// checks for any architecture), from the header alone so a file it cannot load fails before
/// any weight is read: the feed-forward width and head count, and in every block the attention
/// norm, the query projection (or the fused `attn_qkv`) and the FFN down projection.
pub fn check_transformer_header(file: &GgufFile, arch: Arch) -> Result<(), GgufError> {
    let md = &file.metadata;
    let arch = arch.name();
    let int = |suffix: &str| md.require(&format!("{arch}.{suffix}"), Value::as_u64, "an integer");
    let block_count = int("block_count")?;
    int("feed_forward_length")?;
    int("attention.head_count")?;
    let names: HashSet<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    let need = |name: String| {
        if names.contains(name.as_str()) {
            Ok(())
        } else {
            Err(GgufError::MissingTensor { name })
        }
    };
    // Stops at the first missing block, so a huge block_count costs nothing.
    for i in 0..block_count {
        need(format!("blk.{i}.attn_norm.weight"))?;
        let (q, qkv) = (
            format!("blk.{i}.attn_q.weight"),
            format!("blk.{i}.attn_qkv.weight"),
        );
        if !names.contains(q.as_str()) && !names.contains(qkv.as_str()) {
            return Err(GgufError::MissingTensor {
                name: format!("{q} (or {qkv})"),
            });
        }
        need(format!("blk.{i}.ffn_down.weight"))?;
    }
    Ok(())
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): ggml's `LLAMA_ROPE_TYPE_NORM`, used for
    /// llama, whose GGUF converter permutes q/k weights to suit it.
    Adjacent,
    /// Pairs (i, i + n_rot/2): ggml's `LLAMA_ROPE_TYPE_NEOX`.
    HalfSplit,
}

/// The gated feed-forward activation applied to the gate projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up`.
    Silu,
    /// GeGLU with the tanh approximation of GELU: `gelu_tanh(gate) * up`.
    GeluTanh,
}

/// RoPE frequencies for one family of layers.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub freq_base: f32,
    /// Linear position scaling: `1 / rope.scaling.factor` (1 when unscaled).
    pub freq_scale: f32,
}

/// Hyperparameters of a model. Field names follow the engine's vocabulary;
/// comments name the GGUF key each comes from (`{arch}.` prefix omitted).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelConfig {
    /// `general.architecture`.
    pub architecture: String,
    pub arch: Arch,
    /// Rows of `token_embd.weight`.
    pub vocab_size: usize,
    /// `embedding_length`.
    pub hidden_size: usize,
    /// `block_count`.
    pub n_layers: usize,
    /// `attention.head_count`.
    pub n_heads: usize,
    /// `attention.head_count_kv` (defaults to `n_heads`).
    pub n_kv_heads: usize,
    /// `attention.key_length` (defaults to `hidden_size / n_heads`).
    pub head_dim: usize,
    /// `attention.value_length` (defaults to `head_dim`).
    pub head_dim_v: usize,
    /// `feed_forward_length`.
    pub ffn_size: usize,
    /// `context_length`: the longest sequence the model was trained for.
    pub context_length: usize,
    /// `attention.layer_norm_rms_epsilon`.
    pub rms_eps: f32,
    /// `rope.dimension_count` (defaults to `head_dim`): leading dims rotated per head.
    pub n_rot: usize,
    pub rope_style: RopeStyle,
    /// RoPE for full-attention layers (`rope.freq_base`, default 10000).
    pub rope: RopeParams,
    /// RoPE for sliding-window layers (gemma3: base 10000, unscaled).
    pub rope_local: RopeParams,
    /// `attention.sliding_window`, for the layers in `sliding_layers`.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses the sliding window and `rope_local`.
    pub sliding_layers: Vec<bool>,
    pub activation: Activation,
    /// Multiplier on token embeddings (gemma3: `sqrt(hidden_size)`).
    pub embedding_scale: Option<f32>,
    /// Multiplier applied to queries after RoPE (gemma3, phi3 scale there).
    pub query_scale: f32,
    /// Multiplier on q·k inside attention (1 when `query_scale` does the job).
    pub kq_scale: f32,
    /// gemma3: RMS norms after attention and after the FFN, before the residual adds.
    pub post_norms: bool,
    /// qwen3, gemma3: per-head RMS norms on q and k before RoPE.
    pub qk_norm: bool,
}

impl ModelConfig {
    /// Reads the configuration from a parsed GGUF header.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ModelError> {
        let md = &file.metadata;
        let architecture = md
            .get_str("general.architecture")
            .ok_or_else(|| missing("general.architecture"))?
            .to_owned();
        let arch = Arch::parse(&architecture)?;
        let key = |k: &str| format!("{architecture}.{k}");
        let req_usize = |k: &str| -> Result<usize, ModelError> {
            let full = key(k);
            let v = md.get_u64(&full).ok_or_else(|| missing(&full))?;
            positive(&full, v)
        };
        let opt_usize = |k: &str| -> Result<Option<usize>, ModelError> {
            let full = key(k);
            match md.get(&full) {
                None => Ok(None),
                Some(v) => {
                    let v = v.as_u64().ok_or_else(|| ModelError::BadMetadata {
                        key: full.clone(),
                        value: format!("{v:?}"),
                        reason:
                            "expected one unsigned integer (per-layer arrays are not supported)"
                                .into(),
                    })?;
                    positive(&full, v).map(Some)
                }
            }
        };
        let opt_f32 = |k: &str| md.get_f32(&key(k));

        let hidden_size = req_usize("embedding_length")?;
        let n_layers = req_usize("block_count")?;
        let n_heads = req_usize("attention.head_count")?;
        let n_kv_heads = opt_usize("attention.head_count_kv")?.unwrap_or(n_heads);
        let ffn_size = req_usize("feed_forward_length")?;
        let context_length = req_usize("context_length")?;
        let head_dim = opt_usize("attention.key_length")?.unwrap_or(hidden_size / n_heads);
        let head_dim_v = opt_usize("attention.value_length")?.unwrap_or(head_dim);
        let n_rot = opt_usize("rope.dimension_count")?.unwrap_or(head_dim);
        let rms_eps = opt_f32("attention.layer_norm_rms_epsilon")
            .ok_or_else(|| missing(&key("attention.layer_norm_rms_epsilon")))?;
        if n_heads % n_kv_heads != 0 {
            return Err(bad(
                &key("attention.head_count_kv"),
                n_kv_heads,
                format!("does not divide head_count {n_heads}"),
            ));
        }
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(bad(
                &key("rope.dimension_count"),
                n_rot,
                format!("must be even and at most the head size {head_dim}"),
            ));
        }
        if head_dim != head_dim_v && arch != Arch::Gemma3 {
            // Only exercised by architectures we do not support yet; keep the
            // check so a surprising file fails loudly rather than mis-shaping.
            return Err(ModelError::Unsupported(format!(
                "key length {head_dim} != value length {head_dim_v}"
            )));
        }
        let vocab_size = file
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?
            as usize;

        let freq_base = opt_f32("rope.freq_base").unwrap_or(10_000.0);
        let freq_scale = rope_freq_scale(file, &architecture)?;
        let rope = RopeParams {
            freq_base,
            freq_scale,
        };

        let head_scale = 1.0 / (head_dim as f32).sqrt();
        let mut config = ModelConfig {
            architecture: architecture.clone(),
            arch,
            vocab_size,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            head_dim_v,
            ffn_size,
            context_length,
            rms_eps,
            n_rot,
            rope_style: RopeStyle::HalfSplit,
            rope: rope.clone(),
            rope_local: rope,
            sliding_window: None,
            sliding_layers: vec![false; n_layers],
            activation: Activation::Silu,
            embedding_scale: None,
            query_scale: 1.0,
            kq_scale: head_scale,
            post_norms: false,
            qk_norm: false,
        };
        match arch {
            Arch::Llama => {
                config.rope_style = RopeStyle::Adjacent;
                // llama.cpp: kq_scale = attention.scale when set (granite), else 1/sqrt(head_dim).
                if let Some(scale) = opt_f32("attention.scale").filter(|s| *s != 0.0) {
                    config.kq_scale = scale;
                }
            }
            Arch::Qwen2 => {}
            Arch::Qwen3 => config.qk_norm = true,
            Arch::Phi3 => {
                // llama.cpp scales Q by 1/sqrt(head_dim) and calls attention with scale 1.
                config.query_scale = head_scale;
                config.kq_scale = 1.0;
                // phi3's sliding window is disabled in llama.cpp (see its phi3.cpp), so we ignore it too.
            }
            Arch::Gemma3 => {
                config.qk_norm = true;
                config.post_norms = true;
                config.activation = Activation::GeluTanh;
                config.embedding_scale = Some((hidden_size as f32).sqrt());
                // llama.cpp: f_attention_scale, applied to Q; the 27B (62 layers)
                // uses hidden/heads instead of the head size.
                config.query_scale = if n_layers == 62 {
                    1.0 / ((hidden_size / n_heads) as f32).sqrt()
                } else {
                    head_scale
                };
                config.kq_scale = 1.0;
                // Every 6th layer is global (llama.cpp `set_swa_pattern(6)`), the
                // rest slide over `sliding_window` positions with RoPE base 10000.
                let window = opt_usize("attention.sliding_window")?;
                if let Some(window) = window {
                    config.sliding_window = Some(window);
                    config.sliding_layers = (0..n_layers).map(|il| (il + 1) % 6 != 0).collect();
                    config.rope_local = RopeParams {
                        freq_base: opt_f32("rope.freq_base_swa").unwrap_or(10_000.0),
                        freq_scale: 1.0,
                    };
                }
            }
        }
        Ok(config)
    }

    /// Query heads sharing one KV head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Width of the K (and V) projection: `n_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn kv_dim_v(&self) -> usize {
        self.n_kv_heads * self.head_dim_v
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

/// `1 / rope.scaling.factor` for linear scaling; scaling schemes we do not
/// implement are refused rather than silently producing wrong text.
fn rope_freq_scale(file: &GgufFile, arch: &str) -> Result<f32, ModelError> {
    let md = &file.metadata;
    let type_key = format!("{arch}.rope.scaling.type");
    let kind = md.get_str(&type_key).unwrap_or("linear");
    match kind {
        "none" => return Ok(1.0),
        "linear" => {}
        other => {
            return Err(ModelError::Unsupported(format!(
                "{type_key} = {other:?}: only unscaled and linear RoPE are implemented"
            )));
        }
    }
    for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        if file.tensor(name).is_some() || file.tensor(&format!("blk.0.{name}")).is_some() {
            return Err(ModelError::Unsupported(format!(
                "{name}: LongRoPE (128k-context Phi-3) is not implemented"
            )));
        }
    }
    let factor = md
        .get_f32(&format!("{arch}.rope.scaling.factor"))
        .or_else(|| md.get_f32(&format!("{arch}.rope.scale_linear")))
        .unwrap_or(0.0);
    Ok(if factor == 0.0 { 1.0 } else { 1.0 / factor })
}

fn missing(key: &str) -> ModelError {
    ModelError::MissingMetadata {
        key: key.to_owned(),
    }
}

fn bad(key: &str, value: impl ToString, reason: String) -> ModelError {
    ModelError::BadMetadata {
        key: key.to_owned(),
        value: value.to_string(),
        reason,
    }
}

fn positive(key: &str, v: u64) -> Result<usize, ModelError> {
    match usize::try_from(v) {
        Ok(n) if n > 0 && n <= 1 << 31 => Ok(n),
        _ => Err(bad(key, v, "must be between 1 and 2^31".into())),
    }
}

/// `general.architecture` names of the encoders this engine runs (embeddings only). The
/// decoders are [`SUPPORTED_ARCHITECTURES`].
pub const ENCODER_ARCHITECTURES: &[&str] = &["bert", "nomic-bert"];

/// config.json `model_type`s of the encoder folders this engine runs.
pub const ENCODER_MODEL_TYPES: &[&str] = &["bert"];

/// How an input's embedding is pooled from the final hidden states of its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over every token.
    Mean,
    /// The first token (BERT's `[CLS]`).
    Cls,
    /// The last token (decoder embedding models: it has seen the whole input).
    Last,
}

impl Pooling {
    /// llama.cpp's `{arch}.pooling_type`: 1 mean, 2 cls, 3 last; 0 (none) and 4 (rank) are
    /// not embeddings of the whole input.
    pub fn from_gguf(value: u64) -> Option<Pooling> {
        match value {
            1 => Some(Pooling::Mean),
            2 => Some(Pooling::Cls),
            3 => Some(Pooling::Last),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_parses_to_its_arch_and_back() {
        assert_eq!(SUPPORTED_ARCHITECTURES.len(), Arch::ALL.len());
        for (&name, &arch) in SUPPORTED_ARCHITECTURES.iter().zip(Arch::ALL) {
            assert_eq!(Arch::parse(name).unwrap(), arch, "{name}");
            assert_eq!(arch.name(), name);
        }
        let mut unique = SUPPORTED_ARCHITECTURES.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            SUPPORTED_ARCHITECTURES.len(),
            "a name is listed twice"
        );
    }

    #[test]
    fn an_unlisted_name_is_refused_naming_what_runs() {
        for name in ["mamba", "Llama", "", "llama "] {
            let err = Arch::parse(name).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "architecture {name:?} is not one this engine runs (it runs: llama, qwen2, qwen3, gemma3, phi3 (generation), bert, nomic-bert (embeddings))"
                )
            );
        }
    }
}
