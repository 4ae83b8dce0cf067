//! An encoder's weights, by their GGUF names (llama.cpp's `bert`/`nomic-bert` layout), from a GGUF file or
//! from a Hugging Face folder, as f32.
//!
//! Every tensor the encoder reads is listed with its shape and checked against the headers
//! before any data is read ([`Tensors::check`]), so a broken file fails fast naming the tensor.
//! Encoders are small (22M–335M parameters), so every type is widened to f32 at load: f16 and
//! bf16 exactly, quantised GGUF types by candle's dequantisation.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use rbee_format::gguf::GgufFile;
use rbee_format::safetensors::Dtype;

use super::super::error::{CandleContext, ModelError};
use super::super::safetensors::{Entry, invalid, read_headers};
use super::config::{EncoderConfig, Positions};

/// Where the bytes are.
enum Store {
    Gguf {
        path: PathBuf,
        reader: BufReader<File>,
        content: Box<gguf_file::Content>,
    },
    Folder {
        dir: PathBuf,
        files: Vec<PathBuf>,
        /// GGUF name → the safetensors entry holding it.
        entries: HashMap<String, Entry>,
    },
}

/// The tensors of one encoder, open for reading.
pub(crate) struct Tensors {
    store: Store,
    /// GGUF name → shape, row-major (outermost first).
    shapes: HashMap<String, Vec<usize>>,
}

impl std::fmt::Debug for Tensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensors")
            .field("tensors", &self.shapes.len())
            .finish_non_exhaustive()
    }
}

/// llama.cpp's GGUF name for a Hugging Face BERT tensor name (a `bert.` prefix and the old
/// `gamma`/`beta` norm names included); `None` for tensors the encoder does not read.
fn gguf_name(hf: &str) -> Option<String> {
    let hf = hf.strip_prefix("bert.").unwrap_or(hf);
    let hf = hf
        .strip_suffix(".gamma")
        .map(|s| format!("{s}.weight"))
        .or_else(|| hf.strip_suffix(".beta").map(|s| format!("{s}.bias")))
        .unwrap_or_else(|| hf.to_owned());
    let fixed = match hf.as_str() {
        "embeddings.word_embeddings.weight" => Some("token_embd.weight"),
        "embeddings.position_embeddings.weight" => Some("position_embd.weight"),
        "embeddings.token_type_embeddings.weight" => Some("token_types.weight"),
        "embeddings.LayerNorm.weight" => Some("token_embd_norm.weight"),
        "embeddings.LayerNorm.bias" => Some("token_embd_norm.bias"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_owned());
    }
    let rest = hf.strip_prefix("encoder.layer.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    let ours = match part {
        "attention.self.query" => "attn_q",
        "attention.self.key" => "attn_k",
        "attention.self.value" => "attn_v",
        "attention.output.dense" => "attn_output",
        "attention.output.LayerNorm" => "attn_output_norm",
        "intermediate.dense" => "ffn_up",
        "output.dense" => "ffn_down",
        "output.LayerNorm" => "layer_output_norm",
        _ => return None,
    };
    matches!(kind, "weight" | "bias").then(|| format!("blk.{layer}.{ours}.{kind}"))
}

impl Tensors {
    /// The tensors of a GGUF file the caller has opened and validated.
    pub fn gguf(path: &Path, header: &GgufFile) -> Result<Tensors, ModelError> {
        let io = |e: std::io::Error| ModelError::Io {
            path: path.to_owned(),
            tensor: "(header)".into(),
            source: e,
        };
        let mut reader = BufReader::new(File::open(path).map_err(io)?);
        let content = gguf_file::Content::read(&mut reader)
            .context(|| format!("reading {} for its tensors", path.display()))?;
        let shapes = header
            .tensors
            .iter()
            .map(|t| {
                let shape = t.dims.iter().rev().map(|&d| d as usize).collect();
                (t.name.clone(), shape)
            })
            .collect();
        Ok(Tensors {
            store: Store::Gguf {
                path: path.to_owned(),
                reader,
                content: Box::new(content),
            },
            shapes,
        })
    }

    /// The tensors of a folder's `*.safetensors` files, under their GGUF names. Tensors the
    /// encoder does not read (the pooler, position ids) are left out.
    pub fn folder(dir: &Path) -> Result<Tensors, ModelError> {
        let (files, by_hf_name) = read_headers(dir)?;
        let mut entries = HashMap::new();
        let mut shapes = HashMap::new();
        for (hf, entry) in by_hf_name {
            let Some(name) = gguf_name(&hf) else {
                continue;
            };
            if !matches!(entry.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(invalid(
                    dir,
                    format!(
                        "tensor {hf} is {}; rbee reads f32, f16 and bf16 weights",
                        entry.dtype
                    ),
                ));
            }
            shapes.insert(
                name.clone(),
                entry.shape.iter().map(|&d| d as usize).collect(),
            );
            if entries.insert(name.clone(), entry).is_some() {
                return Err(invalid(dir, format!("two tensors map to {name}")));
            }
        }
        Ok(Tensors {
            store: Store::Folder {
                dir: dir.to_owned(),
                files,
                entries,
            },
            shapes,
        })
    }

    /// Every tensor the encoder of `cfg` reads, with its shape and whether it must be there.
    /// Biases are optional, as llama.cpp has them (nomic-bert has none); a layer's attention
    /// projections are one fused `attn_qkv` or three.
    fn wanted(&self, cfg: &EncoderConfig) -> Vec<(String, Vec<usize>, bool)> {
        let (h, f) = (cfg.hidden, cfg.ffn);
        let mut out: Vec<(String, Vec<usize>, bool)> = vec![
            ("token_embd.weight".into(), vec![cfg.vocab, h], true),
            ("token_embd_norm.weight".into(), vec![h], true),
            ("token_embd_norm.bias".into(), vec![h], true),
        ];
        if cfg.position_kind == Positions::Absolute {
            out.insert(
                1,
                ("position_embd.weight".into(), vec![cfg.positions, h], true),
            );
        }
        let linear = |out: &mut Vec<(String, Vec<usize>, bool)>, name: String, rows, cols| {
            out.push((format!("{name}.weight"), vec![rows, cols], true));
            out.push((format!("{name}.bias"), vec![rows], false));
        };
        for i in 0..cfg.layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            if self.has(&p("attn_qkv.weight")) {
                linear(&mut out, p("attn_qkv"), 3 * h, h);
            } else {
                for name in ["attn_q", "attn_k", "attn_v"] {
                    linear(&mut out, p(name), h, h);
                }
            }
            linear(&mut out, p("attn_output"), h, h);
            linear(&mut out, p("ffn_up"), f, h);
            if cfg.gated_ffn {
                linear(&mut out, p("ffn_gate"), f, h);
            }
            linear(&mut out, p("ffn_down"), h, f);
            for norm in ["attn_output_norm", "layer_output_norm"] {
                out.push((p(&format!("{norm}.weight")), vec![h], true));
                out.push((p(&format!("{norm}.bias")), vec![h], true));
            }
        }
        out
    }

    /// Checks, from the headers alone, that every tensor `cfg` needs is there with its shape;
    /// returns the bytes they take as f32.
    pub fn check(&self, cfg: &EncoderConfig) -> Result<u64, ModelError> {
        let mut bytes = 0u64;
        for (name, expected, required) in self.wanted(cfg) {
            let Some(found) = self.shapes.get(&name) else {
                if required {
                    return Err(ModelError::MissingTensor(name));
                }
                continue;
            };
            // A position table may be longer than the positions used; never shorter.
            let ok = if name == "position_embd.weight" {
                found.len() == 2 && found[0] >= expected[0] && found[1] == expected[1]
            } else {
                *found == expected
            };
            if !ok {
                return Err(ModelError::TensorShape {
                    tensor: name,
                    found: found.iter().map(|&d| d as u64).collect(),
                    expected: expected.iter().map(|&d| d as u64).collect(),
                });
            }
            bytes += 4 * expected.iter().product::<usize>() as u64;
        }
        if let Some(types) = self.shapes.get("token_types.weight") {
            // Row 0 is what every input adds.
            if types.len() != 2 || types[0] == 0 || types[1] != cfg.hidden {
                return Err(ModelError::TensorShape {
                    tensor: "token_types.weight".into(),
                    found: types.iter().map(|&d| d as u64).collect(),
                    expected: vec![1, cfg.hidden as u64],
                });
            }
            bytes += 4 * types.iter().product::<usize>() as u64;
        }
        Ok(bytes)
    }

    /// Whether the model has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// Tensor `name` as f32, in its row-major shape.
    pub fn tensor(&mut self, name: &str) -> Result<Tensor, ModelError> {
        let shape = self
            .shapes
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?
            .clone();
        let ctx = || format!("reading tensor {name}");
        let t = match &mut self.store {
            Store::Gguf {
                reader, content, ..
            } => content
                .tensor(reader, name, &Device::Cpu)
                .context(ctx)?
                .dequantize(&Device::Cpu)
                .context(ctx)?,
            Store::Folder {
                dir,
                files,
                entries,
            } => {
                let entry = entries
                    .get(name)
                    .ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
                let path = &files[entry.file];
                let io = |source| ModelError::Io {
                    path: path.clone(),
                    tensor: name.to_owned(),
                    source,
                };
                let mut file = File::open(path).map_err(io)?;
                file.seek(SeekFrom::Start(entry.start)).map_err(io)?;
                let len = usize::try_from(entry.end - entry.start)
                    .map_err(|_| invalid(dir, format!("tensor {name} is too large")))?;
                let mut bytes = vec![0u8; len];
                file.read_exact(&mut bytes).map_err(io)?;
                let dtype = match entry.dtype {
                    Dtype::F16 => DType::F16,
                    Dtype::BF16 => DType::BF16,
                    _ => DType::F32,
                };
                Tensor::from_raw_buffer(&bytes, dtype, &shape, &Device::Cpu).context(ctx)?
            }
        };
        let t = t.to_dtype(DType::F32).context(ctx)?;
        if t.dims() != shape.as_slice() {
            // GGUF stores vectors as 1-d; anything else must match what the header said.
            return t.reshape(shape.as_slice()).context(ctx);
        }
        Ok(t)
    }

    /// Tensor `name` as a flat f32 vector.
    pub fn values(&mut self, name: &str) -> Result<Vec<f32>, ModelError> {
        let t = self.tensor(name)?;
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .context(|| format!("reading tensor {name}"))
    }

    /// Where the weights come from, for messages.
    pub fn origin(&self) -> &Path {
        match &self.store {
            Store::Gguf { path, .. } => path,
            Store::Folder { dir, .. } => dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gguf_name;

    #[test]
    fn hugging_face_names_map_to_llama_cpp_names() {
        for (hf, gguf) in [
            ("embeddings.word_embeddings.weight", "token_embd.weight"),
            ("bert.embeddings.LayerNorm.gamma", "token_embd_norm.weight"),
            (
                "encoder.layer.3.attention.self.key.bias",
                "blk.3.attn_k.bias",
            ),
            (
                "bert.encoder.layer.11.output.LayerNorm.beta",
                "blk.11.layer_output_norm.bias",
            ),
            (
                "encoder.layer.0.intermediate.dense.weight",
                "blk.0.ffn_up.weight",
            ),
        ] {
            assert_eq!(gguf_name(hf).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(gguf_name("pooler.dense.weight"), None);
        assert_eq!(gguf_name("embeddings.position_ids"), None);
    }
}
