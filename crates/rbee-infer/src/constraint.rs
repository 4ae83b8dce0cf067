//! Constrained decoding: a [`Constraint`] (JSON object, JSON schema, Lark grammar) compiled
//! with llguidance over this model's own token byte strings, one matcher per sequence.
//!
//! The scheduler asks a sequence's [`SeqConstraint`] for its mask before it samples (every
//! token the grammar cannot continue with gets a logit of −∞) and advances it with the token
//! it sampled. We write no grammar engine: llguidance's Earley parser and lexer compute the
//! mask; what is ours is the vocabulary it sees ([`Grammars::new`]): each token's output bytes
//! as [`Tokenizer::token_bytes`] gives them, and control tokens (empty output) under their
//! text behind llguidance's special-token marker byte, so a Lark grammar can name
//! `<|im_end|>` and nothing else produces it.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

pub use rbee_proto::generation::Constraint;

use crate::tokenizer::Tokenizer;

/// The token vocabulary as llguidance sees it.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        // Our tokenizer's merges are not the trie's greedy ones; llguidance then forces no
        // tokens itself (we only use its masks).
        false
    }
}

/// A model's grammar compiler: built once per loaded model (off its model thread, see
/// [`GrammarsCell`]), shared by all its sequences.
pub struct Grammars {
    factory: ParserFactory,
    eos: TokenId,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("eos", &self.eos).finish()
    }
}

impl Grammars {
    /// `vocab` is the number of logits the model gives (at least the tokenizer's vocabulary;
    /// padding rows have no bytes and are never allowed).
    pub fn new(tokenizer: &Tokenizer, vocab: usize) -> Result<Grammars, String> {
        let vocab = vocab.max(tokenizer.vocab_size());
        let eos = tokenizer.eos_ids().first().copied().unwrap_or(0);
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if !bytes.is_empty() {
                    return bytes.to_vec();
                }
                match tokenizer.id_to_token(id) {
                    Some(text) if !text.is_empty() => {
                        let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                        w.extend_from_slice(text.as_bytes());
                        w
                    }
                    _ => Vec::new(),
                }
            })
            .collect();
        let info = TokRxInfo {
            vocab_size: vocab as u32,
            tok_eos: eos,
            tok_bos: tokenizer.bos_id(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        let env: TokEnv = Arc::new(Vocabulary {
            trie: TokTrie::from(&info, &words),
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars { factory, eos })
    }

    /// Compiles `constraint` into a fresh matcher for one sequence. Errors name what is wrong
    /// with the schema or grammar.
    pub fn compile(&self, constraint: &Constraint) -> Result<SeqConstraint, String> {
        let grammar = match constraint {
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(compact_json(
                serde_json::json!({"type": "object"}),
            )),
            Constraint::JsonSchema(text) => {
                let schema: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| format!("the JSON schema is not valid JSON: {e}"))?;
                if !schema.is_object() {
                    return Err("the JSON schema must be an object".into());
                }
                TopLevelGrammar::from_json_schema(compact_json(schema))
            }
            Constraint::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
            Constraint::ToolCall { .. } => {
                return Err(
                    "a tool-call constraint is compiled with the model's chat template".into(),
                );
            }
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| format!("the output constraint does not compile: {e}"))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(format!("the output constraint does not compile: {e}"));
        }
        Ok(SeqConstraint {
            matcher,
            eos: self.eos,
            mask_secs: 0.0,
            masks: 0,
        })
    }
}

/// JSON written one way: `{"a": 1, "b": [2, 3]}` (Python's `json.dumps` separators), no
/// other whitespace. llguidance's default allows any whitespace between tokens, and a small
/// model then often writes newlines until `max_tokens` instead of closing the object. A
/// schema that says otherwise (its own `x-guidance`) keeps its choice.
pub fn compact_json(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

/// A model's [`Grammars`], built on a thread of its own when its first constrained request
/// arrives: building llguidance's token trie over a large vocabulary takes about a second
/// (1.07 s for Gemma 3's 262k tokens), which on the model thread would pause every sequence of
/// the model, and models that never see a constrained request never pay it. The scheduler
/// asks [`get`](Self::get) and lets a constrained request wait, without blocking anything
/// else, until it is there.
#[derive(Clone)]
pub struct GrammarsCell {
    inner: Arc<GrammarsInner>,
}

struct GrammarsInner {
    cell: std::sync::OnceLock<Result<Grammars, String>>,
    start: std::sync::Once,
    tokenizer: Tokenizer,
    vocab: usize,
}

impl std::fmt::Debug for GrammarsCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarsCell")
            .field("ready", &self.inner.cell.get().is_some())
            .finish()
    }
}

impl GrammarsCell {
    /// The compiler for `tokenizer` (and `vocab` logits), built on first use.
    pub fn new(tokenizer: Tokenizer, vocab: usize) -> GrammarsCell {
        GrammarsCell {
            inner: Arc::new(GrammarsInner {
                cell: std::sync::OnceLock::new(),
                start: std::sync::Once::new(),
                tokenizer,
                vocab,
            }),
        }
    }

    /// The compiler once built (or why it could not be); the first call starts the build on
    /// a thread of its own.
    pub fn get(&self) -> Option<&Result<Grammars, String>> {
        if let Some(built) = self.inner.cell.get() {
            return Some(built);
        }
        self.inner.start.call_once(|| {
            let inner = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name("rbee-grammar".into())
                .spawn(move || {
                    let started = std::time::Instant::now();
                    // A panic inside llguidance must not leave constrained requests waiting
                    // forever.
                    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        Grammars::new(&inner.tokenizer, inner.vocab)
                    }))
                    .unwrap_or_else(|_| Err("building the grammar vocabulary panicked".into()));
                    tracing::debug!(
                        secs = started.elapsed().as_secs_f64(),
                        ok = built.is_ok(),
                        "grammar vocabulary built"
                    );
                    let _ = inner.cell.set(built);
                });
            if let Err(e) = spawned {
                let _ = self.inner.cell.set(Err(format!(
                    "could not start the thread that builds the grammar vocabulary: {e}"
                )));
            }
        });
        self.inner.cell.get()
    }
}

/// One sequence's constraint: where its output is in the grammar.
pub struct SeqConstraint {
    matcher: Matcher,
    eos: TokenId,
    /// Time spent computing masks, and how many (for the benchmark's cost per token).
    pub mask_secs: f64,
    pub masks: u64,
}

impl std::fmt::Debug for SeqConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqConstraint")
            .field("masks", &self.masks)
            .finish()
    }
}

impl SeqConstraint {
    /// Sets the logit of every token the grammar does not allow next to −∞. Where the grammar
    /// may end, every id in `eos` (the model's end-of-generation tokens) stays allowed.
    pub fn mask(&mut self, logits: &mut [f32], eos: &[u32]) -> Result<(), String> {
        let start = std::time::Instant::now();
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())?;
        let can_end = mask.is_allowed(self.eos);
        let allowed = mask.num_set();
        // Touch as few logits as possible: keep the allowed few and fill the rest, or (inside
        // a free string, where nearly everything is allowed) knock out the disallowed few.
        let kept_eos: Vec<(usize, f32)> = if can_end {
            eos.iter()
                .filter_map(|&e| logits.get(e as usize).map(|&l| (e as usize, l)))
                .collect()
        } else {
            Vec::new()
        };
        if allowed < logits.len() / 2 {
            let mut keep = Vec::with_capacity(allowed);
            mask.iter_set_entries(|i| {
                if let Some(&l) = logits.get(i) {
                    keep.push((i, l));
                }
            });
            logits.fill(f32::NEG_INFINITY);
            for (i, l) in keep {
                logits[i] = l;
            }
        } else {
            let len = logits.len();
            mask.iter_unset_entries(|i| {
                if i < len {
                    logits[i] = f32::NEG_INFINITY;
                }
            });
            // Ids past the grammar's vocabulary (padding rows) are never allowed.
            if let Some(extra) = logits.get_mut(mask.len()..) {
                extra.fill(f32::NEG_INFINITY);
            }
        }
        let any = allowed > 0 || !kept_eos.is_empty();
        for (i, l) in kept_eos {
            logits[i] = l;
        }
        self.mask_secs += start.elapsed().as_secs_f64();
        self.masks += 1;
        if any {
            Ok(())
        } else {
            Err("the output constraint allows no token the model can produce here".into())
        }
    }

    /// Advances past the sampled `token` (not an end-of-generation token).
    pub fn advance(&mut self, token: u32) -> Result<(), String> {
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("the output constraint refused token {token}: {e}"))
    }

    /// The grammar is complete and allows nothing more.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}
