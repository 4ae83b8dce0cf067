//! The [`Backend`] trait and its candle implementation.
//!
//! A loaded model lives on its own OS thread, never on an async executor: the thread owns the
//! weights, the per-sequence KV caches and the tokenizer, takes requests from a bounded queue
//! and runs up to [`LoadOptions::max_sequences`] of them at once, batched step by step (see
//! `scheduler`). Tokens flow back over a bounded channel per request; dropping the
//! [`Generation`] (a client that went away) or calling [`Generation::cancel`] stops the work
//! at the next step.

mod encoder;
mod scheduler;

pub use crate::model::config::Pooling;
pub use encoder::MAX_ENCODE_STEP_TOKENS;
pub use scheduler::MIN_PREFIX_REUSE;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use candle_core::Device;

use crate::chat::{ChatTemplate, builtin_template};
use crate::error::InferError;
use crate::model::bert::{self, BertSource};
use crate::model::config::check_transformer_header;
use crate::model::{
    Arch, Cpu, DeviceRuntime, ModelError, Runtime, SafetensorsModel, Split, Transformer,
};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;
use rbee_format::gguf::{self, GgufFile};
pub use rbee_proto::generation::{
    Constraint, FinishReason, GenerationStats, Prompt, TokenLogprob, TopLogprob,
};

/// Context used when the caller does not ask for one: enough for chat, small enough that the
/// KV cache of a small model stays in the hundreds of megabytes.
pub const DEFAULT_CONTEXT: usize = 4096;
/// Events buffered between the model thread and a slow reader; beyond it the sequence pauses
/// (the others go on).
const EVENT_BUFFER: usize = 64;
/// Sequences a model runs at once unless told otherwise.
pub const DEFAULT_MAX_SEQUENCES: usize = 8;
/// Tokens one batched step computes at most: decode rows plus prompt chunks (one chunk always
/// runs). Bounds a step's activation memory and how long a long prompt holds up decoding.
pub const MAX_STEP_TOKENS: usize = 2 * scheduler::PREFILL_CHUNK;
/// Inputs one encode request may carry (OpenAI's own limit for `/v1/embeddings`).
pub const MAX_ENCODE_INPUTS: usize = 2048;

/// Where and how big to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Tokens of context (prompt + output); capped at the model's own limit.
    pub context_length: Option<usize>,
    pub device: Device,
    /// Generation requests that may wait while the running ones fill every slot.
    pub queue_capacity: usize,
    /// Sequences generated at once, batched (each step decodes one token for all of them).
    pub max_sequences: usize,
    /// KV cache positions for all sequences together, live and kept for prefix reuse;
    /// `None`: `max_sequences × context`, so every slot can run a full context. Never below
    /// one context.
    pub kv_budget_tokens: Option<usize>,
    /// Keep finished sequences' caches to reuse shared prompt prefixes.
    pub prefix_reuse: bool,
    /// Run on the device runtime (candle's kernels, what a GPU runs) even on the CPU: how the
    /// GPU path is tested and compared on machines without one. Off: the CPU runs its own
    /// llama.cpp-exact kernels.
    pub device_runtime_on_cpu: bool,
    /// Layers on the device when it runs the device runtime (a GPU, or the CPU with
    /// `device_runtime_on_cpu`): `None`, the whole model; `Some(n)` splits it — its last `n`
    /// layers on the device, the others, the token embedding and the output projection on the
    /// CPU's own kernels (partial offload, llama.cpp's `-ngl`; [`device_layers_for`] plans it
    /// from a budget).
    pub device_layers: Option<usize>,
    /// With `device_layers`: more devices of this node that take layers too (a model spanning
    /// several GPUs by layers). The first takes the layers just before `device`'s, the next the
    /// ones before those; the CPU runs what is left ([`device_layers_across`] plans it).
    pub more_devices: Vec<SpanDevice>,
    /// How logs and status call `device` when it runs the device runtime (a simulated GPU's
    /// `sim:0`); `None`: named from the device (`cuda:0`, `cpu (device runtime)`).
    pub device_name: Option<String>,
}

/// A further device of a split model ([`LoadOptions::more_devices`]).
#[derive(Debug, Clone)]
pub struct SpanDevice {
    pub device: Device,
    /// How logs and status call it (`cuda:1`).
    pub name: String,
    pub layers: usize,
}

impl LoadOptions {
    /// The KV budget in positions for a model loaded with `context`.
    pub fn kv_budget(&self, context: usize) -> usize {
        self.kv_budget_tokens
            .unwrap_or(self.max_sequences.max(1).saturating_mul(context))
            .max(context)
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            context_length: None,
            device: Device::Cpu,
            queue_capacity: 16,
            max_sequences: DEFAULT_MAX_SEQUENCES,
            kv_budget_tokens: None,
            prefix_reuse: true,
            device_runtime_on_cpu: false,
            device_layers: None,
            more_devices: Vec::new(),
            device_name: None,
        }
    }
}

/// Memory a model needs before it is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    /// The whole KV budget (every sequence slot), plus tables and one step's activations.
    pub kv_cache: u64,
    /// Positions in the KV budget, and what each costs: a caller short of memory can ask for
    /// a smaller budget (`LoadOptions::kv_budget_tokens`).
    pub kv_tokens: usize,
    pub kv_bytes_per_token: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache
    }
}

/// What a loaded model is.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub architecture: String,
    pub context_length: usize,
    pub vocab_size: usize,
    pub memory: MemoryEstimate,
    /// Sequences it generates at once.
    pub max_sequences: usize,
    /// KV positions for all of them together.
    pub kv_budget_tokens: usize,
    pub load_secs: f64,
    /// The runtime it runs on: device and kernel set (`cpu (avx512-vnni kernels, 2 threads)`).
    pub runtime: String,
    /// The model's own chat template is used (false: our built-in one).
    pub model_chat_template: bool,
    /// Values per embedding ([`LoadedModel::encode`]): the hidden size.
    pub embedding_length: usize,
    /// How [`LoadedModel::encode`] pools: the model's own `pooling_type`, else the last
    /// token (what decoder embedding models use).
    pub pooling: Pooling,
    /// The file names a pooling (it was made for embeddings).
    pub declares_pooling: bool,
    /// It generates text (a decoder); an encoder only embeds.
    pub generates: bool,
    /// Its vectors are scaled to unit length unless asked otherwise: the model's own
    /// configuration (a sentence-transformers `Normalize` module), else true.
    pub normalize: bool,
    /// It declares Matryoshka training: a prefix of its vector, renormalised, is an embedding
    /// too (OpenAI's `dimensions`).
    pub matryoshka: bool,
}

/// Inputs to embed, each on its own: one vector per input, in order.
#[derive(Debug, Clone)]
pub struct EncodeRequest {
    /// Text (tokenized as a prompt, BOS as the model adds it) or token ids; not chat.
    pub inputs: Vec<Prompt>,
    /// Scale each vector to unit length (Euclidean).
    pub normalize: bool,
    /// Cut an input longer than the context to the context instead of refusing it.
    pub truncate: bool,
}

/// The vectors of an [`EncodeRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One per input, in order, each [`ModelInfo::embedding_length`] values.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of all inputs together (after truncation).
    pub prompt_tokens: usize,
}

/// An encode request in flight: [`Encoding::wait`] for its vectors. Dropping it cancels.
#[derive(Debug)]
pub struct Encoding {
    result: Receiver<Result<Embeddings, InferError>>,
    cancel: Arc<AtomicBool>,
}

impl Encoding {
    /// A flag that cancels this request when set, for a caller that hands the waiting on.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Blocks until every input is encoded.
    pub fn wait(self) -> Result<Embeddings, InferError> {
        self.result.recv().unwrap_or(Err(InferError::Unloaded))
    }
}

impl Drop for Encoding {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
}

/// One step of a generation, in order: `Started`, any number of `Token`s, maybe a `Text`, then
/// `Done` or `Error`.
#[derive(Debug)]
pub enum GenerateEvent {
    Started {
        prompt_tokens: usize,
    },
    /// `text` is valid UTF-8 and may be empty (bytes held back until a character completes).
    Token {
        id: u32,
        text: String,
        /// The token's log-probability (and the top alternatives) when the request asked.
        logprob: Option<TokenLogprob>,
    },
    /// Text released at the end without a new token (bytes that were held back).
    Text(String),
    Done(GenerationStats),
    Error(InferError),
}

/// A running generation: iterate it for events. Dropping it cancels the work.
#[derive(Debug)]
pub struct Generation {
    events: Receiver<GenerateEvent>,
    cancel: Arc<AtomicBool>,
}

impl Generation {
    /// Asks the model thread to stop at the next token; a `Done` with `Cancelled` follows.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// A flag that cancels this generation when set, for a caller that hands the iterator on.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

impl Iterator for Generation {
    type Item = GenerateEvent;
    fn next(&mut self) -> Option<GenerateEvent> {
        self.events.recv().ok()
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// What a model on disk can do, known from its headers alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// It generates text (a decoder).
    pub generates: bool,
    /// It makes embeddings: an encoder, or a decoder whose file names a pooling (made for
    /// embeddings, such as Qwen3-Embedding).
    pub embeds: bool,
}

/// Something that can load models and run them.
pub trait Backend: Send + Sync {
    /// Validates the file and says what the model can do, without reading any weight.
    fn capabilities(&self, path: &Path) -> Result<Capabilities, InferError>;
    /// Validates the file and says how much memory loading it with `opts` takes.
    fn estimate(&self, path: &Path, opts: &LoadOptions) -> Result<MemoryEstimate, InferError>;
    /// How to split the model at `path` over devices with `budgets` bytes (the first is the
    /// device it is loaded on, the others further devices of the node; at most `cap` layers on
    /// them in all) and the host ([`device_layers_across`]); `None`: this model cannot be split
    /// (an encoder), or not one layer fits the first device.
    fn plan_offload(
        &self,
        path: &Path,
        opts: &LoadOptions,
        budgets: &[u64],
        cap: usize,
    ) -> Result<Option<OffloadPlan>, InferError>;
    /// Validates, then loads. Fails fast (before reading weights) on an invalid file.
    fn load(&self, path: &Path, opts: &LoadOptions) -> Result<Arc<dyn LoadedModel>, InferError>;
}

/// What a loaded model is doing right now, as its engine counts it (not inferred from who
/// holds a handle): the worker's eviction, the pool view and `/metrics` read this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Requests accepted and waiting for the model thread.
    pub queued: usize,
    /// Sequences the model thread is working on (prefill or decode).
    pub live: usize,
    /// Sequences it runs at once: below this a new request joins the batch at once.
    pub max_live: usize,
}

impl Activity {
    pub fn is_idle(&self) -> bool {
        self.queued == 0 && self.live == 0
    }

    /// A request sent now would start at the next step rather than wait.
    pub fn has_free_slot(&self) -> bool {
        self.queued == 0 && self.live < self.max_live
    }
}

/// A model ready to generate.
pub trait LoadedModel: Send + Sync + std::fmt::Debug {
    fn info(&self) -> &ModelInfo;
    /// Queues a request; fails at once with `QueueFull` when the queue is full.
    fn generate(&self, request: GenerateRequest) -> Result<Generation, InferError>;
    /// Queues inputs to embed: each input's final hidden states, pooled
    /// ([`ModelInfo::pooling`]). They run in the same batched steps as generations.
    fn encode(&self, request: EncodeRequest) -> Result<Encoding, InferError>;
    /// The engine's own count of waiting and running requests.
    fn activity(&self) -> Activity;
}

/// The counters behind [`Activity`], shared by the model handle and its thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    queued: AtomicUsize,
    live: AtomicUsize,
}

impl Counters {
    /// What a model thread reports: its queue, its live sequences, and the most it runs.
    fn activity(&self, max_live: usize) -> Activity {
        Activity {
            queued: self.queued.load(Ordering::SeqCst),
            live: self.live.load(Ordering::SeqCst),
            max_live,
        }
    }
}

/// The candle backend: CPU always, CUDA/Metal when built with those features.
#[derive(Debug, Default, Clone)]
pub struct CandleBackend;

/// A GGUF file, opened and checked before any weight is read: well-formed, of an
/// architecture this engine runs, with what its model reads.
enum Validated {
    Decoder(GgufFile),
    Encoder(Box<BertSource>, GgufFile),
}

fn validated(path: &Path) -> Result<Validated, InferError> {
    let invalid = |source| InferError::Invalid {
        path: path.to_path_buf(),
        source,
    };
    let file = GgufFile::open(path).map_err(invalid)?;
    let summary = gguf::validate(&file).map_err(invalid)?;
    if bert::ENCODER_ARCHITECTURES.contains(&summary.architecture.as_str()) {
        let source = BertSource::gguf(path, &file).map_err(|e| at(path, e))?;
        return Ok(Validated::Encoder(Box::new(source), file));
    }
    if let Some(why) = bert::not_yet(&summary.architecture) {
        return Err(InferError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture: summary.architecture,
            runs: why.into(),
        });
    }
    let arch = Arch::parse(&summary.architecture).map_err(|e| at(path, e))?;
    check_transformer_header(&file, arch).map_err(invalid)?;
    Ok(Validated::Decoder(file))
}

/// A model error about the file at `path`: an architecture this engine does not run is the
/// caller's choice of model, so it gets its own variant; the rest are model errors.
fn at(path: &Path, e: ModelError) -> InferError {
    match e {
        ModelError::UnsupportedArchitecture { architecture, runs } => {
            InferError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                architecture,
                runs,
            }
        }
        e => InferError::Model(e),
    }
}

/// A model on disk, opened and checked (headers only; no weights read yet).
enum Opened {
    Gguf {
        path: PathBuf,
        file: GgufFile,
    },
    /// A Hugging Face folder: config.json, tokenizer.json, *.safetensors.
    Safetensors(SafetensorsModel),
}

/// What a path holds: a decoder (generation, and embeddings where it pools), or an encoder
/// (embeddings only).
enum Found {
    Decoder(Opened),
    Encoder(OpenedEncoder),
}

/// An encoder, from a GGUF or a folder, checked (headers only).
struct OpenedEncoder {
    /// The file or folder.
    path: PathBuf,
    source: Box<BertSource>,
    /// Where its tokenizer comes from: the GGUF's vocabulary, or the folder's tokenizer.json.
    gguf: Option<GgufFile>,
}

impl OpenedEncoder {
    fn tokenizer(&self) -> Result<Tokenizer, InferError> {
        Ok(match &self.gguf {
            Some(file) => Tokenizer::from_gguf(&file.metadata)?,
            None => Tokenizer::from_dir(&self.path)?,
        })
    }
}

/// Whether the folder's config.json names an encoder `model_type`.
fn is_encoder_folder(dir: &Path) -> bool {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| c.get("model_type")?.as_str().map(str::to_owned))
        .is_some_and(|m| bert::ENCODER_MODEL_TYPES.contains(&m.as_str()))
}

impl Opened {
    /// `path` is a GGUF file, a safetensors file of a model folder (the store's primary
    /// file), or a folder holding either (the store's view).
    fn open(path: &Path) -> Result<Found, InferError> {
        let unsupported = |reason: String| InferError::Unsupported {
            path: path.to_path_buf(),
            reason,
        };
        let safetensors = |dir: &Path| -> Result<Found, InferError> {
            if is_encoder_folder(dir) {
                return Ok(Found::Encoder(OpenedEncoder {
                    path: dir.to_path_buf(),
                    source: Box::new(BertSource::folder(dir).map_err(|e| at(dir, e))?),
                    gguf: None,
                }));
            }
            Ok(Found::Decoder(Opened::Safetensors(
                SafetensorsModel::open(dir).map_err(|e| at(dir, e))?,
            )))
        };
        let gguf = |path: &Path| -> Result<Found, InferError> {
            Ok(match validated(path)? {
                Validated::Decoder(file) => Found::Decoder(Opened::Gguf {
                    path: path.to_path_buf(),
                    file,
                }),
                Validated::Encoder(source, file) => Found::Encoder(OpenedEncoder {
                    path: path.to_path_buf(),
                    source,
                    gguf: Some(file),
                }),
            })
        };
        if !path.is_dir() {
            if path.extension().is_some_and(|x| x == "safetensors") {
                let dir = path
                    .parent()
                    .ok_or_else(|| unsupported("a safetensors file outside any folder".into()))?;
                return safetensors(dir);
            }
            return gguf(path);
        }
        let entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| unsupported(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        if let Some(file) = entries
            .iter()
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
        {
            return gguf(file);
        }
        if entries.iter().any(|p| p.ends_with("config.json")) {
            return safetensors(path);
        }
        Err(unsupported(
            "no .gguf file and no config.json (a safetensors model) in this folder".into(),
        ))
    }

    /// The header: the GGUF's own, or the one a conversion of the folder would have.
    fn header(&self) -> &GgufFile {
        match self {
            Opened::Gguf { file, .. } => file,
            Opened::Safetensors(m) => m.header(),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Opened::Gguf { path, .. } => path,
            Opened::Safetensors(m) => m.dir(),
        }
    }

    fn tokenizer(&self) -> Result<Tokenizer, InferError> {
        Ok(match self {
            Opened::Gguf { file, .. } => Tokenizer::from_gguf(&file.metadata)?,
            Opened::Safetensors(m) => Tokenizer::from_dir(m.dir())?,
        })
    }

    fn load<R: Runtime>(&self, runtime: R) -> Result<Transformer<R>, InferError> {
        Ok(match self {
            Opened::Gguf { path, .. } => Transformer::load_gguf_on(runtime, path)?,
            Opened::Safetensors(m) => Transformer::load_safetensors_on(runtime, m)?,
        })
    }
}

fn estimate_of(
    file: &GgufFile,
    context: usize,
    opts: &LoadOptions,
) -> Result<MemoryEstimate, InferError> {
    let weights: u64 = file.tensors.iter().map(|t| t.size).sum();
    let kv_tokens = opts.kv_budget(context);
    let total = Transformer::estimate_memory_for(file, context, kv_tokens, MAX_STEP_TOKENS)?;
    Ok(MemoryEstimate {
        weights,
        kv_cache: total.saturating_sub(weights),
        kv_tokens,
        kv_bytes_per_token: Transformer::kv_bytes_per_token(file)?,
    })
}

fn context_for(file: &GgufFile, opts: &LoadOptions) -> usize {
    let arch = file.architecture().unwrap_or_default();
    let model_ctx = file
        .metadata
        .get_u64(&format!("{arch}.context_length"))
        .unwrap_or(DEFAULT_CONTEXT as u64) as usize;
    opts.context_length
        .unwrap_or(DEFAULT_CONTEXT)
        .min(model_ctx)
        .max(16)
}

impl Backend for CandleBackend {
    fn capabilities(&self, path: &Path) -> Result<Capabilities, InferError> {
        Ok(match Opened::open(path)? {
            Found::Encoder(_) => Capabilities {
                generates: false,
                embeds: true,
            },
            Found::Decoder(opened) => {
                let file = opened.header();
                let arch = file.architecture().unwrap_or_default();
                Capabilities {
                    generates: true,
                    embeds: file
                        .metadata
                        .get_u64(&format!("{arch}.pooling_type"))
                        .and_then(Pooling::from_gguf)
                        .is_some(),
                }
            }
        })
    }

    fn plan_offload(
        &self,
        path: &Path,
        opts: &LoadOptions,
        budgets: &[u64],
        cap: usize,
    ) -> Result<Option<OffloadPlan>, InferError> {
        device_layers_across(path, opts, budgets, cap)
    }

    fn estimate(&self, path: &Path, opts: &LoadOptions) -> Result<MemoryEstimate, InferError> {
        let opened = match Opened::open(path)? {
            Found::Decoder(opened) => opened,
            Found::Encoder(encoder) => return Ok(encoder::estimate(&encoder.source)),
        };
        let file = opened.header();
        estimate_of(file, context_for(file, opts), opts)
    }

    fn load(&self, path: &Path, opts: &LoadOptions) -> Result<Arc<dyn LoadedModel>, InferError> {
        let started = Instant::now();
        let opened = match Opened::open(path)? {
            Found::Decoder(opened) => opened,
            Found::Encoder(encoder) => return load_encoder(encoder, opts, started),
        };
        let file = opened.header();
        let layers = crate::model::config::ModelConfig::from_gguf(file)
            .map_err(InferError::from)?
            .n_layers;
        let runtime = runtime_for(&opts.device, opts, layers);
        let path = opened.path().to_path_buf();
        let context = context_for(file, opts);
        if let Some(wanted) = opts.context_length.filter(|&c| c > context) {
            tracing::warn!(
                path = %path.display(),
                "a context of {wanted} tokens was asked for; this model supports {context}, so it is loaded with {context}"
            );
        }
        // The header read and validated above serves the estimate too: no second pass.
        let memory = estimate_of(file, context, opts)?;
        let tokenizer = opened.tokenizer()?;
        let template = chat_template(file, &tokenizer)?;
        let arch = file.architecture().unwrap_or_default();
        let pooling = file
            .metadata
            .get_u64(&format!("{arch}.pooling_type"))
            .and_then(Pooling::from_gguf);
        let decoder = Decoder {
            opened,
            path,
            context,
            memory,
            tokenizer,
            template,
            pooling,
            started,
        };
        match runtime {
            Picked::Cpu(cpu) => decoder.start(cpu, opts),
            Picked::Device(device) => decoder.start(device, opts),
            Picked::Split(split) => decoder.start(split, opts),
        }
    }
}

/// A decoder opened and checked, ready to load on a runtime.
struct Decoder {
    opened: Opened,
    path: PathBuf,
    context: usize,
    memory: MemoryEstimate,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    pooling: Option<Pooling>,
    started: Instant,
}

impl Decoder {
    /// Loads the weights on `runtime` and starts the model thread.
    fn start<R: Runtime>(
        self,
        runtime: R,
        opts: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>, InferError> {
        let Decoder {
            opened,
            path,
            context,
            memory,
            tokenizer,
            template,
            pooling,
            started,
        } = self;
        let model = opened.load(runtime)?;
        // Weights in the kernels' memory, and of them those used in place from the mapped file.
        let (weights_mib, mapped_mib) = (
            model.memory_in_use() >> 20,
            model.mapped_weight_bytes() >> 20,
        );
        let max_sequences = opts.max_sequences.max(1);
        let kv_budget = opts.kv_budget(context);
        let info = ModelInfo {
            path: path.clone(),
            architecture: model.config().architecture.clone(),
            context_length: context,
            vocab_size: model.config().vocab_size,
            memory,
            max_sequences,
            kv_budget_tokens: kv_budget,
            load_secs: started.elapsed().as_secs_f64(),
            runtime: model.runtime().describe(),
            model_chat_template: template.from_model,
            embedding_length: model.config().hidden_size,
            pooling: pooling.unwrap_or(Pooling::Last),
            declares_pooling: pooling.is_some(),
            generates: true,
            normalize: true,
            matryoshka: false,
        };
        let (jobs, inbox) = sync_channel::<Job>(opts.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let vocab = model.config().vocab_size;
        let prep = scheduler::Prep {
            // Built off the model thread when the first constrained request comes, so that it
            // never pauses the model's other sequences.
            grammars: crate::constraint::GrammarsCell::new(tokenizer.clone(), vocab),
            tokenizer,
            template,
            context,
            vocab,
        };
        let limits = scheduler::Limits {
            context,
            max_sequences,
            kv_budget,
            max_step_tokens: MAX_STEP_TOKENS,
            prefix_reuse: opts.prefix_reuse,
        };
        let scheduler =
            scheduler::Scheduler::new(model, prep, limits, inbox, counters.clone(), info.pooling);
        std::thread::Builder::new()
            .name(format!("rbee-model-{}", info.architecture))
            .spawn(move || scheduler.run())
            .map_err(InferError::Thread)?;
        tracing::info!(path = %path.display(), secs = info.load_secs, runtime = info.runtime, max_sequences, kv_budget, weights_mib, mapped_mib, "model loaded");
        Ok(Arc::new(CandleModel {
            info,
            jobs,
            capacity: opts.queue_capacity.max(1),
            counters,
        }))
    }
}

/// Loads an encoder's weights and starts its model thread.
fn load_encoder(
    encoder: OpenedEncoder,
    opts: &LoadOptions,
    started: Instant,
) -> Result<Arc<dyn LoadedModel>, InferError> {
    let tokenizer = encoder.tokenizer()?;
    let path = encoder.path.clone();
    if opts.context_length.is_some() {
        tracing::debug!(path = %path.display(), "an encoder runs inputs of its own maximum length; the context length asked for does not apply");
    }
    let source = *encoder.source;
    let info_at_load = encoder::info(&source, path.clone(), started);
    let bert = source.load().map_err(|e| at(&path, e))?;
    let info = ModelInfo {
        load_secs: started.elapsed().as_secs_f64(),
        ..info_at_load
    };
    tracing::info!(path = %path.display(), secs = info.load_secs, runtime = info.runtime, pooling = info.pooling.name(), "encoder loaded");
    encoder::start(bert, tokenizer, info, opts)
}

/// The runtime a load runs on.
enum Picked {
    Cpu(Cpu),
    Device(DeviceRuntime),
    Split(Split),
}

/// The runtime that serves `device` for a model of `layers` layers: the one place a device's
/// runtime is chosen. The CPU runs the llama.cpp-exact kernels (or, asked to, the device
/// runtime on candle's CPU device); a GPU runs the device runtime, for the whole model or, with
/// `device_layers`, for that many of its last layers with the CPU's kernels for the rest.
fn runtime_for(device: &Device, opts: &LoadOptions, layers: usize) -> Picked {
    if matches!(device, Device::Cpu) && !opts.device_runtime_on_cpu {
        return Picked::Cpu(Cpu);
    }
    let name = opts
        .device_name
        .clone()
        .unwrap_or_else(|| match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
            candle_core::DeviceLocation::Cpu => "cpu (device runtime)".to_string(),
        });
    let device = DeviceRuntime::new(device.clone(), name);
    match opts.device_layers {
        Some(n) => {
            let mut devices = vec![(device, n)];
            devices.extend(opts.more_devices.iter().map(|d| {
                (
                    DeviceRuntime::new(d.device.clone(), d.name.clone()),
                    d.layers,
                )
            }));
            Picked::Split(Split::across(devices, layers))
        }
        None => Picked::Device(device),
    }
}

/// Partial offload's plan for the model at `path` on a device with `budget` bytes free: how
/// many of its last layers (at most `cap`) fit there with their share of the KV budget `opts`
/// sets (the rest, the embedding and the output projection then run on the CPU), and the
/// memory each side needs. `None` when not one layer fits; a model that fits whole needs no
/// plan (compare its [`Backend::estimate`] with the budget first).
pub fn device_layers_for(
    path: &Path,
    opts: &LoadOptions,
    budget: u64,
    cap: usize,
) -> Result<Option<OffloadPlan>, InferError> {
    device_layers_across(path, opts, &[budget], cap)
}

/// [`device_layers_for`] over several devices of one node (`budgets`: the first device's,
/// then further ones'): the first takes as many of the last layers as fit, the next as many
/// of the layers before those, and so on (at most `cap` in all); the CPU runs the rest.
/// `None` when not one layer fits the first device.
pub fn device_layers_across(
    path: &Path,
    opts: &LoadOptions,
    budgets: &[u64],
    cap: usize,
) -> Result<Option<OffloadPlan>, InferError> {
    let opened = match Opened::open(path)? {
        Found::Decoder(opened) => opened,
        Found::Encoder(_) => return Ok(None),
    };
    let file = opened.header();
    let context = context_for(file, opts);
    let whole = estimate_of(file, context, opts)?;
    let (of, shares) = Transformer::device_layers_across(
        file,
        opts.kv_budget(context),
        MAX_STEP_TOKENS,
        budgets,
        cap,
    )?;
    let mut shares = shares.into_iter();
    let Some(first) = shares.next().filter(|s| s.layers > 0) else {
        return Ok(None);
    };
    let more: Vec<DevicePart> = shares
        .map(|s| DevicePart {
            layers: s.layers,
            device_bytes: s.device_bytes,
            moved: s.moved,
        })
        .collect();
    let moved = first.moved + more.iter().map(|p| p.moved).sum::<u64>();
    // The host keeps everything that does not move, one step's activations included.
    Ok(Some(OffloadPlan {
        layers: first.layers,
        of,
        device_bytes: first.device_bytes,
        more,
        host_bytes: whole.total().saturating_sub(moved),
    }))
}

/// How a model too large for a device is split (see [`device_layers_across`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadPlan {
    /// Layers on the device (its last ones): [`LoadOptions::device_layers`].
    pub layers: usize,
    /// Layers the model has (all of them on devices: the embedding and output projection
    /// still stay on the CPU).
    pub of: usize,
    /// What they take on the device: weights, their KV share and one step's activations.
    pub device_bytes: u64,
    /// The further devices' parts, in the order of their budgets (`layers == 0`: none there).
    pub more: Vec<DevicePart>,
    /// What the rest takes in host memory.
    pub host_bytes: u64,
}

impl OffloadPlan {
    /// Layers on devices, all together.
    pub fn device_layers(&self) -> usize {
        self.layers + self.more.iter().map(|p| p.layers).sum::<usize>()
    }
}

/// A further device's part of a split ([`OffloadPlan::more`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePart {
    pub layers: usize,
    /// Its layers' weights and KV share, and one step's activations.
    pub device_bytes: u64,
    /// Of those, what leaves the host.
    pub moved: u64,
}

fn chat_template(file: &GgufFile, tokenizer: &Tokenizer) -> Result<ChatTemplate, InferError> {
    let text_of = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
            .to_string()
    };
    let bos = text_of(tokenizer.bos_id());
    let eos = text_of(tokenizer.eos_ids().first().copied());
    if let Some(src) = file.metadata.get_str("tokenizer.chat_template") {
        match ChatTemplate::new(src, &bos, &eos, true) {
            Ok(t) => return Ok(t),
            Err(e) => tracing::warn!(
                "the model's chat template is unusable ({e}); using the built-in one"
            ),
        }
    }
    let arch = file.architecture().unwrap_or_default();
    let builtin = builtin_template(arch, |t| tokenizer.token_to_id(t).is_some());
    Ok(ChatTemplate::new(builtin, &bos, &eos, false)?)
}

#[derive(Debug)]
struct CandleModel {
    info: ModelInfo,
    jobs: SyncSender<Job>,
    capacity: usize,
    counters: Arc<Counters>,
}

impl LoadedModel for CandleModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(&self, request: GenerateRequest) -> Result<Generation, InferError> {
        request
            .params
            .validate()
            .map_err(InferError::InvalidRequest)?;
        let (events, rx) = sync_channel(EVENT_BUFFER);
        let cancel = Arc::new(AtomicBool::new(false));
        self.submit(Job::Generate(GenerateJob {
            request,
            events,
            cancel: cancel.clone(),
        }))?;
        Ok(Generation { events: rx, cancel })
    }

    fn encode(&self, request: EncodeRequest) -> Result<Encoding, InferError> {
        encoder::check_request(&request)?;
        let (reply, result) = sync_channel(1);
        let cancel = Arc::new(AtomicBool::new(false));
        self.submit(Job::Encode(EncodeJob {
            request,
            reply,
            cancel: cancel.clone(),
        }))?;
        Ok(Encoding { result, cancel })
    }

    fn activity(&self) -> Activity {
        self.counters.activity(self.info.max_sequences)
    }
}

impl CandleModel {
    /// Queues a job for the model thread; fails at once when the queue is full.
    fn submit(&self, job: Job) -> Result<(), InferError> {
        submit(&self.jobs, &self.counters, self.capacity, job)
    }
}

/// Queues `job` for a model thread, counted as queued; fails at once when the queue is full.
fn submit<J>(
    jobs: &SyncSender<J>,
    counters: &Counters,
    capacity: usize,
    job: J,
) -> Result<(), InferError> {
    // Counted before the send, so the thread's decrement can never come first.
    counters.queued.fetch_add(1, Ordering::SeqCst);
    let sent = jobs.try_send(job);
    if sent.is_err() {
        counters.queued.fetch_sub(1, Ordering::SeqCst);
    }
    match sent {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err(InferError::QueueFull { capacity }),
        Err(TrySendError::Disconnected(_)) => Err(InferError::Unloaded),
    }
}

/// Work for the model thread.
enum Job {
    Generate(GenerateJob),
    Encode(EncodeJob),
}

impl Job {
    fn cancelled(&self) -> bool {
        match self {
            Job::Generate(j) => j.cancel.load(Ordering::Relaxed),
            Job::Encode(j) => j.cancel.load(Ordering::Relaxed),
        }
    }
}

struct GenerateJob {
    request: GenerateRequest,
    events: SyncSender<GenerateEvent>,
    cancel: Arc<AtomicBool>,
}

struct EncodeJob {
    request: EncodeRequest,
    reply: SyncSender<Result<Embeddings, InferError>>,
    cancel: Arc<AtomicBool>,
}
