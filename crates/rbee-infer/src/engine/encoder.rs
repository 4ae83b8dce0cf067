//! The model thread of an encoder (BERT-family, embeddings only).
//!
//! Requests wait in a bounded queue ([`LoadOptions::queue_capacity`]: full means
//! [`InferError::QueueFull`]). The thread works on up to [`LoadOptions::max_sequences`] requests
//! at once and runs their inputs in **packed batches**: each step takes whole inputs from the
//! requests in turn (one from each, round and round, so a small request is not stuck behind a
//! large one) until the step holds [`MAX_ENCODE_STEP_TOKENS`] tokens, runs one forward pass
//! over all of them, and pools each input's rows into its vector. A request is answered when
//! its last input is done; a cancelled one (its [`Encoding`] dropped) leaves before the next
//! step. An input's vector does not depend on the batch it ran in (see `model::bert`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

use super::{
    Activity, Counters, Embeddings, EncodeRequest, Encoding, GenerateRequest, Generation,
    LoadOptions, LoadedModel, MAX_ENCODE_INPUTS, MemoryEstimate, ModelInfo, Pooling,
    scheduler::normalize,
};
use crate::error::InferError;
use crate::model::bert::{Bert, BertSource};
use crate::tokenizer::Tokenizer;
use rbee_proto::generation::Prompt;

/// Tokens one packed step holds at most (one input always runs): large enough that the
/// matmuls run at full speed, small enough to bound a step's activations (≈ 110 MB for a
/// 384-wide model, 290 MB for a 1024-wide one).
pub const MAX_ENCODE_STEP_TOKENS: usize = 8192;

/// Memory an encoder needs: its weights (f32) and one step's activations.
pub(crate) fn estimate(source: &BertSource) -> MemoryEstimate {
    MemoryEstimate {
        weights: source.weight_bytes(),
        kv_cache: Bert::step_bytes(source.config(), MAX_ENCODE_STEP_TOKENS),
        kv_tokens: 0,
        kv_bytes_per_token: 0,
    }
}

/// Starts the model thread of a loaded encoder.
pub(crate) fn start(
    bert: Bert,
    tokenizer: Tokenizer,
    mut info: ModelInfo,
    opts: &LoadOptions,
) -> Result<Arc<dyn LoadedModel>, InferError> {
    let capacity = opts.queue_capacity.max(1);
    let (jobs, inbox) = sync_channel::<Job>(capacity);
    let counters = Arc::new(Counters::default());
    info.max_sequences = opts.max_sequences.max(1);
    let worker = Worker {
        bert,
        tokenizer,
        inbox,
        counters: counters.clone(),
        max_requests: info.max_sequences,
        pooling: info.pooling,
        active: VecDeque::new(),
        turn: 0,
    };
    std::thread::Builder::new()
        .name(format!("rbee-encoder-{}", info.architecture))
        .spawn(move || worker.run())
        .map_err(InferError::Thread)?;
    Ok(Arc::new(EncoderModel {
        info,
        jobs,
        capacity,
        counters,
    }))
}

#[derive(Debug)]
struct EncoderModel {
    info: ModelInfo,
    jobs: SyncSender<Job>,
    capacity: usize,
    counters: Arc<Counters>,
}

struct Job {
    request: EncodeRequest,
    reply: SyncSender<Result<Embeddings, InferError>>,
    cancel: Arc<AtomicBool>,
}

impl LoadedModel for EncoderModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(&self, _request: GenerateRequest) -> Result<Generation, InferError> {
        Err(InferError::EmbeddingOnly {
            architecture: self.info.architecture.clone(),
        })
    }

    fn encode(&self, request: EncodeRequest) -> Result<Encoding, InferError> {
        check_request(&request)?;
        let (reply, result) = sync_channel(1);
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            request,
            reply,
            cancel: cancel.clone(),
        };
        super::submit(&self.jobs, &self.counters, self.capacity, job)?;
        Ok(Encoding { result, cancel })
    }

    fn activity(&self) -> Activity {
        self.counters.activity(self.info.max_sequences)
    }
}

/// What every encode request must be, checked before it is queued.
pub(super) fn check_request(request: &EncodeRequest) -> Result<(), InferError> {
    if request.inputs.is_empty() {
        return Err(InferError::InvalidRequest("no inputs to embed".into()));
    }
    if request.inputs.len() > MAX_ENCODE_INPUTS {
        return Err(InferError::InvalidRequest(format!(
            "{} inputs in one request; at most {MAX_ENCODE_INPUTS}",
            request.inputs.len()
        )));
    }
    if request.inputs.iter().any(|p| matches!(p, Prompt::Chat(_))) {
        return Err(InferError::InvalidRequest(
            "chat messages cannot be embedded: give text or token ids".into(),
        ));
    }
    Ok(())
}

/// A request being worked on.
struct Active {
    reply: SyncSender<Result<Embeddings, InferError>>,
    cancel: Arc<AtomicBool>,
    normalize: bool,
    inputs: Vec<Vec<u32>>,
    vectors: Vec<Vec<f32>>,
}

impl Active {
    fn done(&self) -> bool {
        self.vectors.len() == self.inputs.len()
    }
}

struct Worker {
    bert: Bert,
    tokenizer: Tokenizer,
    inbox: Receiver<Job>,
    counters: Arc<Counters>,
    max_requests: usize,
    pooling: Pooling,
    active: VecDeque<Active>,
    /// Which request's input the next step takes first (round robin).
    turn: usize,
}

impl Worker {
    fn run(mut self) {
        loop {
            if self.active.is_empty() {
                match self.inbox.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            while self.active.len() < self.max_requests {
                match self.inbox.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.active.retain(|a| !a.cancel.load(Ordering::Relaxed));
            self.publish();
            if !self.active.is_empty() {
                self.step();
            }
        }
    }

    fn publish(&self) {
        self.counters
            .live
            .store(self.active.len(), Ordering::SeqCst);
    }

    /// Tokenizes a request's inputs; answers at once when one cannot run.
    fn admit(&mut self, job: Job) {
        // Counted live before it stops counting as queued: the model never looks idle between.
        self.counters
            .live
            .store(self.active.len() + 1, Ordering::SeqCst);
        self.counters.queued.fetch_sub(1, Ordering::SeqCst);
        if job.cancel.load(Ordering::Relaxed) {
            return self.publish();
        }
        match self.tokenize(&job.request) {
            Ok(inputs) => self.active.push_back(Active {
                reply: job.reply,
                cancel: job.cancel,
                normalize: job.request.normalize,
                vectors: Vec::with_capacity(inputs.len()),
                inputs,
            }),
            Err(e) => {
                let _ = job.reply.try_send(Err(e));
            }
        }
        self.publish();
    }

    fn tokenize(&self, request: &EncodeRequest) -> Result<Vec<Vec<u32>>, InferError> {
        let cfg = self.bert.config();
        let max = cfg.max_tokens;
        let cut = request.truncate.then_some(max);
        let mut out = Vec::with_capacity(request.inputs.len());
        for (i, input) in request.inputs.iter().enumerate() {
            let at = |e: InferError| InferError::Input {
                index: i,
                source: Box::new(e),
            };
            let mut tokens = match input {
                Prompt::Text(text) => {
                    // Far more text than `max` tokens could hold is cut (when allowed) or
                    // refused before it is tokenized.
                    let limit = max.saturating_mul(super::scheduler::MAX_PROMPT_BYTES_PER_TOKEN);
                    let text = if text.len() > limit {
                        if !request.truncate {
                            return Err(at(InferError::PromptTooLarge {
                                bytes: text.len(),
                                limit,
                                context: max,
                            }));
                        }
                        let mut end = limit;
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        &text[..end]
                    } else {
                        text.as_str()
                    };
                    self.tokenizer
                        .encode_input(text, cut)
                        .map_err(|e| at(e.into()))?
                }
                Prompt::Tokens(ids) => {
                    if let Some(bad) = ids.iter().find(|&&id| id as usize >= cfg.vocab) {
                        return Err(at(InferError::InvalidRequest(format!(
                            "token id {bad} is out of range for a vocabulary of {}",
                            cfg.vocab
                        ))));
                    }
                    ids.clone()
                }
                Prompt::Chat(_) => {
                    return Err(at(InferError::InvalidRequest(
                        "chat messages cannot be embedded".into(),
                    )));
                }
            };
            if tokens.is_empty() {
                return Err(at(InferError::InvalidRequest("it has no tokens".into())));
            }
            if tokens.len() > max {
                if !request.truncate {
                    return Err(at(InferError::PromptTooLong {
                        tokens: tokens.len(),
                        context: max,
                        counted_all: true,
                    }));
                }
                tokens.truncate(max);
            }
            out.push(tokens);
        }
        Ok(out)
    }

    /// Picks the inputs of the next step: `(request, input)` pairs, round robin over the
    /// active requests, whole inputs only, at least one.
    fn pick(&mut self) -> Vec<(usize, usize)> {
        let n = self.active.len();
        let mut next: Vec<usize> = self.active.iter().map(|a| a.vectors.len()).collect();
        let mut picked = Vec::new();
        let mut tokens = 0;
        let mut idle_rounds = 0;
        let mut r = self.turn % n;
        while idle_rounds < n {
            let a = &self.active[r];
            match a.inputs.get(next[r]) {
                Some(input)
                    if picked.is_empty() || tokens + input.len() <= MAX_ENCODE_STEP_TOKENS =>
                {
                    tokens += input.len();
                    picked.push((r, next[r]));
                    next[r] += 1;
                    idle_rounds = 0;
                }
                Some(_) => break,
                None => idle_rounds += 1,
            }
            r = (r + 1) % n;
        }
        self.turn = r;
        picked
    }

    fn step(&mut self) {
        let picked = self.pick();
        let inputs: Vec<&[u32]> = picked
            .iter()
            .map(|&(r, i)| self.active[r].inputs[i].as_slice())
            .collect();
        let h = self.bert.config().hidden;
        // One result per picked input: its rows. When the packed pass fails (an input whose
        // activations overflow), each input runs alone, so only the requests whose own input
        // failed fail.
        let results: Vec<Result<Vec<f32>, crate::model::ModelError>> =
            match self.bert.forward(&inputs) {
                Ok(rows) => {
                    let mut at = 0;
                    inputs
                        .iter()
                        .map(|input| {
                            let part = rows[at * h..(at + input.len()) * h].to_vec();
                            at += input.len();
                            Ok(part)
                        })
                        .collect()
                }
                Err(_) if inputs.len() > 1 => inputs
                    .iter()
                    .map(|input| self.bert.forward(&[input]))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
        let mut failed = Vec::new();
        for (&(r, i), result) in picked.iter().zip(results) {
            if failed.contains(&r) {
                continue;
            }
            let a = &mut self.active[r];
            match result {
                Ok(rows) => {
                    let mut v = pool(&rows, h, self.pooling);
                    if a.normalize {
                        normalize(&mut v);
                    }
                    debug_assert_eq!(a.vectors.len(), i);
                    a.vectors.push(v);
                }
                Err(e) => {
                    tracing::warn!(input = i, "an input failed to encode: {e}");
                    let _ = a.reply.try_send(Err(InferError::Model(e)));
                    failed.push(r);
                }
            }
        }
        failed.sort_unstable();
        for &r in failed.iter().rev() {
            self.active.remove(r);
        }
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].done() {
                if let Some(a) = self.active.remove(i) {
                    let prompt_tokens = a.inputs.iter().map(Vec::len).sum();
                    let _ = a.reply.try_send(Ok(Embeddings {
                        vectors: a.vectors,
                        prompt_tokens,
                    }));
                }
            } else {
                i += 1;
            }
        }
        self.publish();
    }
}

/// One input's vector from its final hidden states (`rows` of `h` values).
fn pool(rows: &[f32], h: usize, pooling: Pooling) -> Vec<f32> {
    let n = rows.len() / h;
    match pooling {
        Pooling::Cls => rows[..h].to_vec(),
        Pooling::Last => rows[(n - 1) * h..].to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0f64; h];
            for row in rows.chunks_exact(h) {
                sum.iter_mut()
                    .zip(row)
                    .for_each(|(s, &v)| *s += f64::from(v));
            }
            sum.into_iter().map(|s| (s / n as f64) as f32).collect()
        }
    }
}

/// What [`super::Backend::load`] builds for an encoder: its [`ModelInfo`].
pub(crate) fn info(
    source: &BertSource,
    path: std::path::PathBuf,
    started: std::time::Instant,
) -> ModelInfo {
    let cfg = source.config();
    ModelInfo {
        path,
        architecture: cfg.architecture.clone(),
        context_length: cfg.max_tokens,
        vocab_size: cfg.vocab,
        memory: estimate(source),
        max_sequences: 0,
        kv_budget_tokens: 0,
        load_secs: started.elapsed().as_secs_f64(),
        runtime: format!(
            "cpu (f32 gemm, {} threads)",
            candle_core::utils::get_num_threads()
        ),
        model_chat_template: false,
        embedding_length: cfg.hidden,
        pooling: cfg.pooling,
        declares_pooling: cfg.declares_pooling,
        generates: false,
        normalize: cfg.normalize,
        matryoshka: cfg.matryoshka,
    }
}
