//! The model thread: continuous batching over one loaded model.
//!
//! Each loop admits waiting requests while there is a free sequence slot and KV budget, then
//! runs one step: the next prompt chunk of every sequence still reading its prompt and one
//! decode token for every sequence generating, all in one
//! [`Transformer::forward_batch`](crate::model::Transformer::forward_batch) call, so every
//! weight block is read once per step for all of them. Each sequence samples with its own
//! parameters and seed and streams on its own channel; one that finishes, is cancelled or whose
//! reader went away leaves before the next step.
//!
//! **Exactness.** Batching never changes a sequence's tokens: prompt chunks always start at
//! the sequence's own chunk boundaries (never cut to fit a step), and every row is computed
//! with the arithmetic of its own sequence's batch (see `linear::Origin`).
//!
//! **KV budget.** Admission reserves a sequence's worst case, `min(prompt + max_tokens,
//! context)` positions, against the model's budget of positions; a request that does not fit
//! waits (first come, first served) until running ones finish, and the bounded queue behind it
//! answers `QueueFull` when full. Finished sequences keep their cache, counted against the same
//! budget, for **prefix reuse**: a new prompt that starts with at least [`MIN_PREFIX_REUSE`]
//! tokens of a kept cache (a shared system prompt, the next turn of a chat) continues from it
//! instead of recomputing them; kept caches are evicted least recently used first when room is
//! needed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use super::{Counters, Embeddings, EncodeJob, GenerateEvent, GenerateJob, Job, Pooling};
use crate::chat::ChatTemplate;
use crate::constraint::{GrammarsCell, SeqConstraint};
use crate::error::InferError;
use crate::model::{MAX_BATCH, Output, Runtime, SeqCache, SeqStep, Transformer};
use crate::sampling::Sampler;
use crate::stream::TextStream;
use crate::tokenizer::Tokenizer;
use rbee_proto::generation::{
    ChatOptions, Constraint, FinishReason, GenerationStats, Prompt, TokenLogprob, TopLogprob,
};

/// Prompt tokens per chunk: a sequence's prompt is always cut at multiples of this from where
/// its computation starts, whatever else runs in the step, so its results do not depend on the
/// batch (llama.cpp's default `n_ubatch`).
pub(crate) const PREFILL_CHUNK: usize = MAX_BATCH;
/// Prompt bytes per token of context beyond which a prompt is refused without tokenizing it.
/// No vocabulary we run averages anywhere near this over a whole prompt (text runs 3-5 bytes
/// per token), so only input that could never fit is refused.
pub(super) const MAX_PROMPT_BYTES_PER_TOKEN: usize = 64;
/// Bytes per context token tokenized first: when that prefix alone overflows the context, the
/// rest is never tokenized (a 4 MiB prompt costs seconds of the model thread otherwise).
const PROBE_BYTES_PER_TOKEN: usize = 6;
/// Shortest shared prefix worth reusing: below it recomputing costs less than it saves, and a
/// chat template's few opening tokens would otherwise tie every prompt to another's cache.
pub const MIN_PREFIX_REUSE: usize = 32;
/// Events a sequence holds back while its reader is slow; it does not step until they are
/// delivered, so one slow reader never stalls the others.
const MAX_PENDING_EVENTS: usize = 4;

/// Limits of one model's scheduler.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub context: usize,
    pub max_sequences: usize,
    /// KV positions for all sequences, live and kept.
    pub kv_budget: usize,
    /// Tokens one step computes at most (at least one prompt chunk always runs).
    pub max_step_tokens: usize,
    pub prefix_reuse: bool,
}

/// Prompt text to tokens, with the model's tokenizer and template.
pub(crate) struct Prep {
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub context: usize,
    pub vocab: usize,
    /// The grammar compiler over this vocabulary, built off this thread when the first
    /// constrained request comes.
    pub grammars: GrammarsCell,
}

impl Prep {
    /// The request can be prepared now: it has no constraint, or the grammar compiler is
    /// built (or failed to build, which [`constraint`](Self::constraint) reports).
    fn grammar_ready(&self, params: &crate::sampling::SamplingParams) -> bool {
        params.constraint.is_none() || self.grammars.get().is_some()
    }

    /// A fresh matcher for a request's constraint, if it has one (once
    /// [`grammar_ready`](Self::grammar_ready)).
    fn constraint(
        &self,
        params: &crate::sampling::SamplingParams,
    ) -> Result<Option<SeqConstraint>, InferError> {
        let Some(constraint) = &params.constraint else {
            return Ok(None);
        };
        // A required tool call becomes a grammar in this model's own call format.
        let lark;
        let constraint = match constraint {
            Constraint::ToolCall { only } => {
                let format = self.template.tool_format;
                let marker = self.tokenizer.token_to_id("[TOOL_CALLS]");
                lark = Constraint::Lark(
                    crate::tools::tool_call_grammar(
                        format,
                        &params.chat.tools,
                        only.as_deref(),
                        marker,
                    )
                    .map_err(InferError::InvalidRequest)?,
                );
                &lark
            }
            other => other,
        };
        let grammars = self
            .grammars
            .get()
            .ok_or_else(|| {
                InferError::InvalidRequest(
                    "constrained decoding: the grammar vocabulary is still being built".into(),
                )
            })?
            .as_ref()
            .map_err(|e| InferError::InvalidRequest(format!("constrained decoding: {e}")))?;
        grammars
            .compile(constraint)
            .map(Some)
            .map_err(InferError::InvalidRequest)
    }

    /// Prompt text to token ids, with BOS added once: not when the template already wrote it.
    fn prompt_tokens(&self, prompt: &Prompt, chat: &ChatOptions) -> Result<Vec<u32>, InferError> {
        let text = match prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(messages) => self.template.render_with(messages, chat, true)?,
            Prompt::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab) {
                    return Err(InferError::InvalidRequest(format!(
                        "prompt token id {bad} is out of range for a vocabulary of {}",
                        self.vocab
                    )));
                }
                return Ok(ids.clone());
            }
        };
        let add_bos = self.adds_bos(&text);
        self.check_prompt_size(&text, add_bos)?;
        Ok(self.tokenizer.encode(&text, add_bos)?)
    }

    /// An input to embed as tokens, with the special tokens the model puts around an input
    /// (BOS, and EOS where the vocabulary appends one, as llama.cpp's embedding mode does).
    /// With `truncate`, text longer than the context could ever hold is cut before tokenizing
    /// and its tokens are cut to the context, the closing special token kept; token ids are
    /// cut by the caller.
    fn input_tokens(&self, input: &Prompt, truncate: bool) -> Result<Vec<u32>, InferError> {
        match input {
            Prompt::Text(text) if truncate => {
                let mut cut = text
                    .len()
                    .min(self.context.saturating_mul(MAX_PROMPT_BYTES_PER_TOKEN));
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                Ok(self
                    .tokenizer
                    .encode_input(&text[..cut], Some(self.context))?)
            }
            Prompt::Text(text) => {
                self.check_prompt_size(text, self.tokenizer.add_bos_default())?;
                Ok(self.tokenizer.encode_input(text, None)?)
            }
            other => self.prompt_tokens(other, &ChatOptions::default()),
        }
    }

    /// BOS goes first unless the tokenizer does not add one or the text already starts with it.
    fn adds_bos(&self, text: &str) -> bool {
        let bos_text = self
            .tokenizer
            .bos_id()
            .and_then(|id| self.tokenizer.id_to_token(id));
        let has_bos = bos_text.is_some_and(|b| !b.is_empty() && text.starts_with(b));
        self.tokenizer.add_bos_default() && !has_bos
    }

    /// Refuses a prompt that cannot fit before paying for its whole tokenization: by its size
    /// in bytes, then by tokenizing a prefix cut at a space (a token boundary for every
    /// tokenizer we run) and stopping once that prefix alone overflows the context.
    fn check_prompt_size(&self, text: &str, add_bos: bool) -> Result<(), InferError> {
        let limit = self.context.saturating_mul(MAX_PROMPT_BYTES_PER_TOKEN);
        if text.len() > limit {
            return Err(InferError::PromptTooLarge {
                bytes: text.len(),
                limit,
                context: self.context,
            });
        }
        let probe = self.context.saturating_mul(PROBE_BYTES_PER_TOKEN);
        if text.len() <= probe {
            return Ok(());
        }
        let mut cut = probe;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let Some(space) = text[..cut].rfind(char::is_whitespace) else {
            return Ok(());
        };
        let counted = self.tokenizer.encode(&text[..space], add_bos)?.len();
        if counted >= self.context {
            return Err(InferError::PromptTooLong {
                tokens: counted,
                context: self.context,
                counted_all: false,
            });
        }
        Ok(())
    }
}

/// A request tokenized and checked, waiting for a slot and KV room.
struct Ready {
    tokens: Vec<u32>,
    constraint: Option<SeqConstraint>,
    /// Positions reserved: `min(prompt + max_tokens, context)`.
    reserve: usize,
    job: GenerateJob,
}

/// A finished sequence's cache, kept for prefix reuse.
struct Kept<R: Runtime> {
    /// The tokens whose keys and values `cache` holds, in order.
    tokens: Vec<u32>,
    cache: SeqCache<R>,
    last_used: u64,
}

/// A live sequence.
struct Seq<R: Runtime> {
    events: SyncSender<GenerateEvent>,
    cancel: Arc<AtomicBool>,
    sampler: Sampler,
    /// The output constraint's matcher, if the request has one.
    constraint: Option<SeqConstraint>,
    stream: TextStream,
    eos: Vec<u32>,
    cache: SeqCache<R>,
    /// Prompt, then every generated token.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose keys and values are in `cache`.
    computed: usize,
    /// Where this sequence's prompt computation started (after a reused prefix): its chunks
    /// are cut at multiples of [`PREFILL_CHUNK`] from here.
    chunk_origin: usize,
    cached_tokens: usize,
    reserve: usize,
    budget: usize,
    produced: usize,
    /// Events not yet taken by a slow reader.
    pending: VecDeque<GenerateEvent>,
    /// Set once `Done` or `Error` is queued: the sequence only waits for delivery.
    finished: bool,
    admitted: Instant,
    prefill_secs: f64,
    decode_started: Option<Instant>,
}

impl<R: Runtime> Seq<R> {
    /// Queues an event for the reader; false when the reader is gone.
    fn emit(&mut self, event: GenerateEvent) -> bool {
        self.pending.push_back(event);
        self.flush()
    }

    /// Delivers held events while the reader takes them; false when the reader is gone.
    fn flush(&mut self) -> bool {
        while let Some(event) = self.pending.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.pending.push_front(event);
                    return true;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        true
    }

    fn runnable(&self) -> bool {
        !self.finished && self.pending.len() < MAX_PENDING_EVENTS
    }

    /// This step's tokens: the next prompt chunk, or the last token to decode from.
    fn next_input(&self) -> (usize, usize) {
        if self.computed < self.prompt_len {
            let into = self.computed - self.chunk_origin;
            let end = (self.chunk_origin + (into / PREFILL_CHUNK + 1) * PREFILL_CHUNK)
                .min(self.prompt_len);
            (self.computed, end)
        } else {
            (self.tokens.len() - 1, self.tokens.len())
        }
    }

    fn finish(&mut self, finish_reason: FinishReason) {
        let tail = self.stream.finish();
        if !tail.is_empty() {
            self.pending.push_back(GenerateEvent::Text(tail));
        }
        let stats = GenerationStats {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.produced,
            finish_reason,
            prefill_secs: self.prefill_secs,
            decode_secs: self
                .decode_started
                .map_or(0.0, |t| t.elapsed().as_secs_f64()),
            cached_tokens: self.cached_tokens,
            mask_secs: self.constraint.as_ref().map_or(0.0, |c| c.mask_secs),
        };
        self.pending.push_back(GenerateEvent::Done(stats));
        self.finished = true;
        self.flush();
    }

    fn fail(&mut self, e: InferError) {
        self.pending.clear();
        self.pending.push_back(GenerateEvent::Error(e));
        self.finished = true;
        self.flush();
    }
}

pub(crate) struct Scheduler<R: Runtime> {
    pub model: Transformer<R>,
    pub prep: Prep,
    pub limits: Limits,
    pub inbox: Receiver<Job>,
    pub counters: Arc<Counters>,
    pub pooling: Pooling,
    waiting: Option<Ready>,
    /// Constrained requests that came before the grammar compiler was built, in order; they
    /// wait here while everything else runs (at most `max_sequences` of them, after which the
    /// queue is left to hold the rest).
    grammar_wait: VecDeque<GenerateJob>,
    live: Vec<Seq<R>>,
    kept: Vec<Kept<R>>,
    /// The encode request being worked on, and the next one (FIFO with generations).
    encoding: Option<Encode<R>>,
    encode_waiting: Option<EncodeJob>,
    /// The last step left the decode rows out for a finishing prompt.
    held_decode: bool,
    tick: u64,
}

impl<R: Runtime> Scheduler<R> {
    pub fn new(
        model: Transformer<R>,
        prep: Prep,
        limits: Limits,
        inbox: Receiver<Job>,
        counters: Arc<Counters>,
        pooling: Pooling,
    ) -> Scheduler<R> {
        Scheduler {
            model,
            prep,
            limits,
            inbox,
            counters,
            pooling,
            waiting: None,
            grammar_wait: VecDeque::new(),
            live: Vec::new(),
            kept: Vec::new(),
            encoding: None,
            encode_waiting: None,
            held_decode: false,
            tick: 0,
        }
    }

    /// Nothing running and nothing waiting.
    fn idle(&self) -> bool {
        self.live.is_empty()
            && self.waiting.is_none()
            && self.encoding.is_none()
            && self.encode_waiting.is_none()
            && self.grammar_wait.is_empty()
    }

    /// Only constrained requests waiting for the grammar compiler: nothing to step.
    fn only_grammar_wait(&self) -> bool {
        self.live.is_empty()
            && self.waiting.is_none()
            && self.encoding.is_none()
            && self.encode_waiting.is_none()
            && !self.grammar_wait.is_empty()
    }

    /// Runs until every handle to the model is gone and nothing is left to do.
    pub fn run(mut self) {
        loop {
            if self.idle() {
                match self.inbox.recv() {
                    Ok(job) => self.take(job),
                    Err(_) => return,
                }
            } else if self.only_grammar_wait() {
                // Waiting for the grammar compiler: new requests are taken as they come.
                match self.inbox.recv_timeout(Duration::from_millis(5)) {
                    Ok(job) => self.take(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                }
            }
            self.admit();
            self.reap();
            if !self.step() {
                // Nothing could run: every live sequence waits on a slow reader.
                std::thread::sleep(Duration::from_millis(1));
            }
            self.reap();
        }
    }

    /// Positions reserved by live sequences and inputs being encoded, plus those held by kept
    /// caches.
    fn used(&self) -> usize {
        self.live.iter().map(|s| s.reserve).sum::<usize>()
            + self.encoding.as_ref().map_or(0, Encode::reserved)
            + self.kept.iter().map(|k| k.tokens.len()).sum::<usize>()
    }

    /// Evicts kept caches, least recently used first, until `need` more positions fit the
    /// budget or none is left; true when they fit.
    fn make_room(&mut self, need: usize) -> bool {
        while self.used() + need > self.limits.kv_budget && !self.kept.is_empty() {
            let lru = (0..self.kept.len())
                .min_by_key(|&i| self.kept[i].last_used)
                .unwrap_or(0);
            self.kept.swap_remove(lru);
        }
        self.used() + need <= self.limits.kv_budget
    }

    fn publish(&self) {
        let encoding = usize::from(self.encoding.is_some());
        self.counters
            .live
            .store(self.live.len() + encoding, Ordering::SeqCst);
    }

    /// Admits the waiting request, then more from the queue, while they fit.
    fn admit(&mut self) {
        if let Some(ready) = self.waiting.take() {
            self.try_start(ready);
        }
        if self.encoding.is_none()
            && let Some(job) = self.encode_waiting.take()
        {
            self.start_encode(job);
        }
        self.release_grammar_wait();
        while self.waiting.is_none()
            && self.encode_waiting.is_none()
            && self.live.len() < self.limits.max_sequences
            && self.grammar_wait.len() < self.limits.max_sequences
        {
            match self.inbox.try_recv() {
                Ok(job) => self.take(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        self.fill_encode();
    }

    /// Constrained requests whose grammar compiler is now built go on, in order, while there is
    /// room; cancelled ones leave.
    fn release_grammar_wait(&mut self) {
        let counters = &self.counters;
        self.grammar_wait.retain(|job| {
            let cancelled = job.cancel.load(Ordering::Relaxed);
            if cancelled {
                counters.queued.fetch_sub(1, Ordering::SeqCst);
            }
            !cancelled
        });
        if self.grammar_wait.is_empty() || self.prep.grammars.get().is_none() {
            return;
        }
        while self.waiting.is_none() && self.live.len() < self.limits.max_sequences {
            let Some(job) = self.grammar_wait.pop_front() else {
                return;
            };
            self.take_generate(job);
        }
    }

    /// A job off the queue: started, or left waiting its turn.
    fn take(&mut self, job: Job) {
        if job.cancelled() {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        match job {
            Job::Generate(job) => self.take_generate(job),
            Job::Encode(job) if self.encoding.is_none() => self.start_encode(job),
            Job::Encode(job) => self.encode_waiting = Some(job),
        }
    }

    /// A generation off the queue: tokenized and checked, then started or left waiting.
    fn take_generate(&mut self, job: GenerateJob) {
        if !self.prep.grammar_ready(&job.request.params) {
            // Its grammar needs the compiler still being built: it waits, the others run.
            self.grammar_wait.push_back(job);
            return;
        }
        match self.ready(&job) {
            Ok((tokens, reserve)) => match self.prep.constraint(&job.request.params) {
                Ok(constraint) => self.try_start(Ready {
                    tokens,
                    constraint,
                    reserve,
                    job,
                }),
                Err(e) => {
                    self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                    let _ = job.events.try_send(GenerateEvent::Error(e));
                }
            },
            Err(e) => {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                let _ = job.events.try_send(GenerateEvent::Error(e));
            }
        }
    }

    fn ready(&self, job: &GenerateJob) -> Result<(Vec<u32>, usize), InferError> {
        let tokens = self
            .prep
            .prompt_tokens(&job.request.prompt, &job.request.params.chat)?;
        let context = self.limits.context;
        if tokens.is_empty() {
            return Err(InferError::InvalidRequest("the prompt is empty".into()));
        }
        if tokens.len() >= context {
            return Err(InferError::PromptTooLong {
                tokens: tokens.len(),
                context,
                counted_all: true,
            });
        }
        let reserve = tokens
            .len()
            .saturating_add(job.request.params.max_tokens)
            .min(context);
        Ok((tokens, reserve))
    }

    /// Starts `ready` if a slot and its KV reservation are free (evicting kept caches, least
    /// recently used first); otherwise it waits, ahead of the queue.
    fn try_start(&mut self, ready: Ready) {
        if ready.job.cancel.load(Ordering::Relaxed) {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if self.live.len() >= self.limits.max_sequences {
            self.waiting = Some(ready);
            return;
        }
        // The kept cache sharing the longest prefix, taken out so eviction spares it.
        let reuse = self
            .limits
            .prefix_reuse
            .then(|| self.best_prefix(&ready.tokens))
            .flatten();
        let (mut kept, reused) = match reuse {
            Some((i, common)) => (Some(self.kept.swap_remove(i)), common),
            None => (None, 0),
        };
        if !self.make_room(ready.reserve) {
            // Put the reusable cache back as it was; it is still worth keeping.
            if let Some(kept) = kept.take() {
                self.kept.push(kept);
            }
            self.waiting = Some(ready);
            return;
        }
        let mut cache = kept.map_or_else(|| self.model.new_cache(), |k| k.cache);
        cache.truncate(reused);
        let Ready {
            tokens,
            constraint,
            reserve,
            job,
        } = ready;
        let params = job.request.params;
        let prompt_len = tokens.len();
        let seq = Seq {
            events: job.events,
            cancel: job.cancel,
            eos: if params.ignore_eos {
                Vec::new()
            } else {
                self.prep.tokenizer.eos_ids().to_vec()
            },
            stream: TextStream::new(params.stop.clone()),
            budget: params.max_tokens.min(self.limits.context - prompt_len),
            sampler: Sampler::new(params),
            constraint,
            cache,
            tokens,
            prompt_len,
            computed: reused,
            chunk_origin: reused,
            cached_tokens: reused,
            reserve,
            produced: 0,
            pending: VecDeque::new(),
            finished: false,
            admitted: Instant::now(),
            prefill_secs: 0.0,
            decode_started: None,
        };
        // Counted live before it stops counting as queued, so that the model never looks idle
        // in between; and both before the reader hears it started. A reader already gone is
        // reaped before the next step.
        self.live.push(seq);
        self.publish();
        self.counters.queued.fetch_sub(1, Ordering::SeqCst);
        if let Some(seq) = self.live.last_mut() {
            seq.emit(GenerateEvent::Started {
                prompt_tokens: prompt_len,
            });
        }
    }

    /// The kept cache with the longest common prefix with `tokens`, if it is long enough;
    /// the prefix is capped so that at least the last prompt token is computed (its logits
    /// start the generation).
    fn best_prefix(&self, tokens: &[u32]) -> Option<(usize, usize)> {
        let (i, common) = self
            .kept
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let common = k
                    .tokens
                    .iter()
                    .zip(tokens)
                    .take_while(|(a, b)| a == b)
                    .count();
                (i, common.min(tokens.len() - 1))
            })
            .max_by_key(|&(_, common)| common)?;
        (common >= MIN_PREFIX_REUSE).then_some((i, common))
    }

    /// Ends cancelled sequences and removes the ones whose end was delivered (or whose reader
    /// is gone), keeping their caches for prefix reuse.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            let seq = &mut self.live[i];
            let alive = seq.flush();
            if alive && !seq.finished && seq.cancel.load(Ordering::Relaxed) {
                seq.finish(FinishReason::Cancelled);
            }
            let seq = &self.live[i];
            if !alive || (seq.finished && seq.pending.is_empty()) {
                let seq = self.live.swap_remove(i);
                self.keep(seq);
            } else {
                i += 1;
            }
        }
        self.publish();
    }

    fn keep(&mut self, seq: Seq<R>) {
        if !self.limits.prefix_reuse || seq.computed < MIN_PREFIX_REUSE {
            return;
        }
        let mut tokens = seq.tokens;
        tokens.truncate(seq.computed);
        self.tick += 1;
        self.kept.push(Kept {
            tokens,
            cache: seq.cache,
            last_used: self.tick,
        });
        // Kept caches never crowd out live reservations: trim to the budget now.
        self.make_room(0);
    }

    /// An encode request becomes the one being worked on: its inputs tokenized and checked.
    fn start_encode(&mut self, job: EncodeJob) {
        self.counters.queued.fetch_sub(1, Ordering::SeqCst);
        if job.cancel.load(Ordering::Relaxed) {
            return;
        }
        match self.encode_inputs(&job) {
            Ok(inputs) => {
                self.encoding = Some(Encode::new(job, inputs, self.pooling));
                self.publish();
            }
            Err(e) => {
                let _ = job.reply.try_send(Err(e));
            }
        }
    }

    fn encode_inputs(&self, job: &EncodeJob) -> Result<Vec<Vec<u32>>, InferError> {
        let context = self.limits.context;
        let mut inputs = Vec::with_capacity(job.request.inputs.len());
        for (i, input) in job.request.inputs.iter().enumerate() {
            let at = |e: InferError| InferError::Input {
                index: i,
                source: Box::new(e),
            };
            let mut tokens = self
                .prep
                .input_tokens(input, job.request.truncate)
                .map_err(at)?;
            if tokens.is_empty() {
                return Err(at(InferError::InvalidRequest(
                    "it has no tokens (this model adds none to an empty text)".into(),
                )));
            }
            if tokens.len() > context {
                if !job.request.truncate {
                    return Err(at(InferError::PromptTooLong {
                        tokens: tokens.len(),
                        context,
                        counted_all: true,
                    }));
                }
                tokens.truncate(context);
            }
            inputs.push(tokens);
        }
        Ok(inputs)
    }

    /// Starts inputs of the encode request while slots and KV room allow (one always, when
    /// nothing else holds the budget), and ends the request when all are done or it was
    /// cancelled.
    fn fill_encode(&mut self) {
        let Some(enc) = &self.encoding else {
            return;
        };
        if enc.cancel.load(Ordering::Relaxed) {
            self.encoding = None;
            self.publish();
            return;
        }
        loop {
            let Some(enc) = &self.encoding else {
                return;
            };
            if enc.done() {
                if let Some(enc) = self.encoding.take() {
                    enc.reply();
                }
                self.publish();
                return;
            }
            let Some(need) = enc.next_len() else {
                return;
            };
            if enc.active.len() >= self.limits.max_sequences || !self.make_room(need) {
                return;
            }
            let cache = self.model.new_cache();
            if let Some(enc) = &mut self.encoding {
                enc.start_next(cache);
            }
        }
    }

    /// One batched forward step; false when no sequence could run.
    fn step(&mut self) -> bool {
        // A decode row (one token) for every generating sequence, prompt chunks while the step
        // has room, then chunks of inputs being encoded; one chunk always runs so that long
        // prompts progress.
        let decode: Vec<(Target, usize, usize)> = self
            .live
            .iter()
            .enumerate()
            .filter(|(_, seq)| seq.runnable() && seq.computed >= seq.prompt_len)
            .map(|(i, seq)| (Target::Live(i), seq.tokens.len() - 1, seq.tokens.len()))
            .collect();
        let mut chosen: Vec<(Target, usize, usize)> = Vec::new();
        let mut tokens = decode.len();
        let mut chunks = 0;
        let prompt_chunks = self
            .live
            .iter()
            .enumerate()
            .filter(|(_, seq)| seq.runnable() && seq.computed < seq.prompt_len)
            .map(|(i, seq)| {
                let (a, b) = seq.next_input();
                (Target::Live(i), a, b)
            });
        let encode_chunks = self.encoding.iter().flat_map(|enc| {
            enc.active.iter().enumerate().map(|(j, input)| {
                let (a, b) = input.next_chunk(enc.inputs[input.index].len());
                (Target::Encode(j), a, b)
            })
        });
        for (target, a, b) in prompt_chunks.chain(encode_chunks) {
            if chunks > 0 && tokens + (b - a) > self.limits.max_step_tokens {
                continue;
            }
            chosen.push((target, a, b));
            tokens += b - a;
            chunks += 1;
        }
        // A step that ends some prompt leaves the decode rows to the next one: the newcomer's
        // first token comes a decode step sooner, and the decoders' next token comes no later
        // than a step holding both would have given it. Never twice in a row, so a stream of
        // arrivals cannot stall the decoders.
        let finishes_prompt = chosen.iter().any(
            |&(target, _, b)| matches!(target, Target::Live(i) if b == self.live[i].prompt_len),
        );
        let hold = finishes_prompt && !decode.is_empty() && !self.held_decode;
        self.held_decode = hold;
        if !hold {
            chosen.extend(decode);
        }
        if chosen.is_empty() {
            return false;
        }
        let results = {
            let mut steps: Vec<SeqStep<'_, R>> = Vec::with_capacity(chosen.len());
            let mut live: Vec<Option<&mut Seq<R>>> = self.live.iter_mut().map(Some).collect();
            let (inputs, mut active): (&[Vec<u32>], Vec<Option<&mut EncodeInput<R>>>) =
                match &mut self.encoding {
                    Some(enc) => (&enc.inputs, enc.active.iter_mut().map(Some).collect()),
                    None => (&[], Vec::new()),
                };
            for &(target, a, b) in &chosen {
                let step = match target {
                    Target::Live(i) => live[i].take().map(|seq| SeqStep {
                        cache: &mut seq.cache,
                        tokens: &seq.tokens[a..b],
                        start: a,
                        output: if b >= seq.prompt_len {
                            Output::Logits
                        } else {
                            Output::Nothing
                        },
                    }),
                    Target::Encode(j) => active[j].take().map(|input| SeqStep {
                        cache: &mut input.cache,
                        tokens: &inputs[input.index][a..b],
                        start: a,
                        output: Output::Hidden,
                    }),
                };
                steps.extend(step);
            }
            match self.model.forward_batch(&mut steps) {
                Ok(r) => r.into_iter().map(Ok).collect::<Vec<_>>(),
                // Find whose input failed: each entry again on its own (entries rewind their
                // cache to their start, and a row's result does not depend on the others).
                Err(_) => steps
                    .iter_mut()
                    .map(|s| {
                        self.model
                            .forward_batch(std::slice::from_mut(s))
                            .map(|mut r| r.pop().flatten())
                    })
                    .collect(),
            }
        };
        let hidden = self.model.config().hidden_size;
        for (&(target, a, b), result) in chosen.iter().zip(results) {
            match target {
                Target::Live(i) => {
                    let seq = &mut self.live[i];
                    match result {
                        Ok(logits) => {
                            seq.computed = b;
                            if let Some(mut logits) = logits {
                                if a < seq.prompt_len {
                                    seq.prefill_secs = seq.admitted.elapsed().as_secs_f64();
                                    seq.decode_started = Some(Instant::now());
                                }
                                sample(seq, &mut logits, &self.prep.tokenizer);
                            }
                        }
                        Err(e) => seq.fail(InferError::Model(e)),
                    }
                }
                Target::Encode(j) => {
                    let Some(enc) = &mut self.encoding else {
                        continue;
                    };
                    match result {
                        Ok(Some(rows)) => enc.absorb(j, a, b, &rows, hidden),
                        Ok(None) => {
                            enc.failed = Some(InferError::InvalidRequest(
                                "the model returned no hidden states".into(),
                            ))
                        }
                        Err(e) => enc.failed = Some(InferError::Model(e)),
                    }
                }
            }
        }
        if let Some(enc) = &mut self.encoding {
            enc.retire();
        }
        true
    }
}

/// Whose entry a step's slot is.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// `live[i]`, a generation.
    Live(usize),
    /// `encoding.active[j]`, an input being encoded.
    Encode(usize),
}

/// An input being encoded: its cache while its chunks run, and the pooled vector so far.
struct EncodeInput<R: Runtime> {
    index: usize,
    cache: SeqCache<R>,
    computed: usize,
    /// Mean: the sum of rows so far; cls: the first row; last: the latest row.
    pooled: Vec<f32>,
}

impl<R: Runtime> EncodeInput<R> {
    /// The next chunk, cut at multiples of [`PREFILL_CHUNK`] from position 0 whatever the
    /// batch, so the vector does not depend on what else runs.
    fn next_chunk(&self, len: usize) -> (usize, usize) {
        let a = self.computed;
        (a, (a + PREFILL_CHUNK).min(len))
    }
}

/// An encode request being worked on: inputs start as slots and KV room allow, each runs its
/// chunks (batched with everything else in the step) and is pooled as its rows arrive.
struct Encode<R: Runtime> {
    reply: SyncSender<Result<Embeddings, InferError>>,
    cancel: Arc<AtomicBool>,
    normalize: bool,
    pooling: Pooling,
    inputs: Vec<Vec<u32>>,
    vectors: Vec<Option<Vec<f32>>>,
    /// The next input not started.
    next: usize,
    active: Vec<EncodeInput<R>>,
    failed: Option<InferError>,
}

impl<R: Runtime> Encode<R> {
    fn new(job: EncodeJob, inputs: Vec<Vec<u32>>, pooling: Pooling) -> Encode<R> {
        Encode {
            reply: job.reply,
            cancel: job.cancel,
            normalize: job.request.normalize,
            pooling,
            vectors: vec![None; inputs.len()],
            inputs,
            next: 0,
            active: Vec::new(),
            failed: None,
        }
    }

    /// KV positions the active inputs hold (each its whole length, reserved at start).
    fn reserved(&self) -> usize {
        self.active.iter().map(|a| self.inputs[a.index].len()).sum()
    }

    /// Length of the next input to start, if any is left.
    fn next_len(&self) -> Option<usize> {
        self.inputs.get(self.next).map(Vec::len)
    }

    fn start_next(&mut self, cache: SeqCache<R>) {
        self.active.push(EncodeInput {
            index: self.next,
            cache,
            computed: 0,
            pooled: Vec::new(),
        });
        self.next += 1;
    }

    fn done(&self) -> bool {
        self.failed.is_some() || (self.next == self.inputs.len() && self.active.is_empty())
    }

    /// Pools the hidden rows of positions `a..b` of active input `j`.
    fn absorb(&mut self, j: usize, a: usize, b: usize, rows: &[f32], hidden: usize) {
        let input = &mut self.active[j];
        input.computed = b;
        match self.pooling {
            Pooling::Mean => {
                if input.pooled.is_empty() {
                    input.pooled = vec![0.0; hidden];
                }
                for row in rows.chunks_exact(hidden) {
                    input
                        .pooled
                        .iter_mut()
                        .zip(row)
                        .for_each(|(acc, v)| *acc += v);
                }
            }
            Pooling::Cls => {
                if a == 0 {
                    input.pooled = rows[..hidden].to_vec();
                }
            }
            Pooling::Last => input.pooled = rows[rows.len() - hidden..].to_vec(),
        }
    }

    /// Moves inputs whose every token ran into `vectors`.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            let len = self.inputs[self.active[i].index].len();
            if self.active[i].computed < len {
                i += 1;
                continue;
            }
            let input = self.active.swap_remove(i);
            let mut v = input.pooled;
            if self.pooling == Pooling::Mean {
                let n = len as f32;
                v.iter_mut().for_each(|x| *x /= n);
            }
            if self.normalize {
                normalize(&mut v);
            }
            self.vectors[input.index] = Some(v);
        }
    }

    /// Sends the result (or the failure) to the caller.
    fn reply(self) {
        let result = match self.failed {
            Some(e) => Err(e),
            None => Ok(Embeddings {
                prompt_tokens: self.inputs.iter().map(Vec::len).sum(),
                vectors: self.vectors.into_iter().flatten().collect(),
            }),
        };
        let _ = self.reply.try_send(result);
    }
}

/// Scales `v` to unit Euclidean length (the sum of squares in f64, as llama.cpp's
/// `common_embd_normalize` does); a zero vector stays zero.
pub(super) fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Picks a sequence's next token from its logits and streams it, or ends the sequence. A
/// constrained sequence's logits are masked by its own matcher first (each sequence of a step
/// has its own constraint or none), and the matcher advances with the sampled token.
fn sample<R: Runtime>(seq: &mut Seq<R>, logits: &mut [f32], tokenizer: &Tokenizer) {
    if seq.cancel.load(Ordering::Relaxed) {
        return seq.finish(FinishReason::Cancelled);
    }
    // The tokens that may end a constrained output: the sequence's end-of-generation tokens
    // (the model's own even when `ignore_eos` left the list empty, so a grammar can finish).
    let eos: &[u32] = if seq.eos.is_empty() {
        tokenizer.eos_ids()
    } else {
        &seq.eos
    };
    if let Some(c) = &mut seq.constraint
        && let Err(e) = c.mask(logits, eos)
    {
        return seq.fail(InferError::InvalidRequest(e));
    }
    let logprob_of = seq
        .sampler
        .params()
        .logprobs
        .map(|top| Logprobs::of(logits, top));
    let next = seq.sampler.sample(logits, &seq.tokens);
    if seq.eos.contains(&next) {
        return seq.finish(FinishReason::Stop);
    }
    if let Some(c) = &mut seq.constraint
        && let Err(e) = c.advance(next)
    {
        return seq.fail(InferError::InvalidRequest(e));
    }
    seq.produced += 1;
    seq.tokens.push(next);
    let step = seq.stream.push(tokenizer.token_bytes(next));
    let logprob = logprob_of.map(|l| l.token(next, tokenizer));
    if !seq.emit(GenerateEvent::Token {
        id: next,
        text: step.text,
        logprob,
    }) {
        // The reader is gone: nobody wants the rest.
        seq.finished = true;
        return;
    }
    let grammar_done = seq.constraint.as_ref().is_some_and(SeqConstraint::is_done);
    if step.stopped || grammar_done {
        seq.finish(FinishReason::Stop);
    } else if seq.produced >= seq.budget {
        seq.finish(FinishReason::Length);
    }
}

/// One step's log-probabilities, taken from the (masked) logits before the sampler's penalties
/// and temperature change them: OpenAI's `logprobs` are the model's distribution.
struct Logprobs {
    /// log(sum(exp(logits))), with the maximum taken out for stability.
    log_norm: f32,
    logits: Vec<f32>,
    top: Vec<(u32, f32)>,
}

impl Logprobs {
    fn of(logits: &[f32], top: u8) -> Logprobs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
        let log_norm = max + sum.ln() as f32;
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(usize::from(top) + 1);
        if top > 0 {
            for (i, &l) in logits.iter().enumerate() {
                if l == f32::NEG_INFINITY {
                    continue;
                }
                if best.len() < usize::from(top) || l > best[best.len() - 1].1 {
                    let at = best.partition_point(|&(_, b)| b >= l);
                    best.insert(at, (i as u32, l));
                    best.truncate(usize::from(top));
                }
            }
        }
        Logprobs {
            log_norm,
            logits: logits.to_vec(),
            top: best,
        }
    }

    fn token(&self, id: u32, tokenizer: &Tokenizer) -> TokenLogprob {
        let logit = self
            .logits
            .get(id as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        TokenLogprob {
            bytes: tokenizer.token_bytes(id).to_vec(),
            logprob: logit - self.log_norm,
            top: self
                .top
                .iter()
                .map(|&(t, l)| TopLogprob {
                    bytes: tokenizer.token_bytes(t).to_vec(),
                    logprob: l - self.log_norm,
                })
                .collect(),
        }
    }
}
