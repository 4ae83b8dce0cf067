//! Text ↔ token ids, matching llama.cpp token for token.
//!
//! A [`Tokenizer`] comes from one of two places:
//!
//! - **GGUF metadata** ([`Tokenizer::from_gguf`]): the vocabulary the model
//!   file carries. `tokenizer.ggml.model = "llama"` is SentencePiece-style BPE
//!   over scores (Gemma, Llama 2, Mistral, Phi-3); `"gpt2"` is byte-level BPE
//!   over ranked merges with a regex pre-tokenizer picked by
//!   `tokenizer.ggml.pre` (Qwen2/3, Llama 3). Both are implemented here as
//!   llama.cpp implements them (`llama-vocab.cpp`), because what a model was
//!   trained and evaluated on in the GGUF world is llama.cpp's tokenization,
//!   quirks included: the defaults for missing keys, which tokens count as
//!   end-of-generation, special tokens found in the text longest first,
//!   the space prefix after every special token, byte fallback. Running the
//!   algorithms over the vocabulary directly (rather than deriving a merge
//!   list for a `tokenizers` BPE model; `spm.rs` says why) also makes loading cheap:
//!   a 262k-token vocabulary builds in about 20 ms, so no cache file is
//!   needed (see [`Tokenizer::from_gguf`]).
//! - **A model folder** ([`Tokenizer::from_dir`]): `tokenizer.json` run by the
//!   `tokenizers` crate, with `tokenizer_config.json` and
//!   `generation_config.json` for BOS/EOS. There is no llama.cpp to match
//!   there; Hugging Face's tokenizer is the reference.
//!
//! Either way the token table is ours (`vocab.rs`), so [`Tokenizer::token_bytes`]
//! is a slice into a table built at load: the bytes llama.cpp's
//! `token_to_piece(id, special = false)` gives, which is what streaming output
//! needs (a token may end in the middle of a UTF-8 character).

mod bpe;
mod byte_level;
mod error;
mod gguf;
mod gguf_meta;
mod hash;
mod hf;
mod pretokenize;
mod special;
mod spm;
mod vocab;
mod wpm;

use std::path::Path;
use std::sync::Arc;

pub use error::TokenizerError;

use special::{Fragment, SpecialMatcher};
use vocab::{ByteTable, Vocab};

/// A loaded tokenizer. Cheap to clone (one `Arc`), and `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    vocab: Vocab,
    /// Output bytes of each token (see [`Tokenizer::token_bytes`]).
    pieces: ByteTable,
    engine: Engine,
    bos: Option<u32>,
    add_bos: bool,
    /// End-of-generation ids, the main EOS first.
    eos_ids: Vec<u32>,
    /// The main EOS ends an input to embed (`tokenizer.ggml.add_eos_token`; `[SEP]` for
    /// WordPiece). Never appended to a prompt to continue.
    add_eos: bool,
}

enum Engine {
    /// SentencePiece-style BPE from GGUF.
    Spm {
        spm: Box<spm::Spm>,
        special: SpecialMatcher,
        add_space_prefix: bool,
    },
    /// Byte-level BPE from GGUF.
    Bpe {
        bpe: Box<bpe::Bpe>,
        special: SpecialMatcher,
    },
    /// `tokenizer.json`.
    Hf(Box<tokenizers::Tokenizer>),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner.engine {
            Engine::Spm { .. } => "gguf-spm",
            Engine::Bpe { .. } => "gguf-bpe",
            Engine::Hf(_) => "tokenizers",
        };
        f.debug_struct("Tokenizer")
            .field("kind", &kind)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.inner.bos)
            .field("add_bos", &self.inner.add_bos)
            .field("eos_ids", &self.inner.eos_ids)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*` keys),
    /// reproducing llama.cpp's `llama_vocab::load`.
    ///
    /// Cost, measured on the 262,144-token Gemma 3 vocabulary with our crate
    /// optimised: about 22 ms (47 ms on a cold first call), about 270 ms in an
    /// unoptimised dev build. That is small next to reading the model, so
    /// there is deliberately no cache file. `tests/tokenizer_reference.rs`
    /// prints the figure on every run.
    pub fn from_gguf(meta: &rbee_format::gguf::Metadata) -> Result<Tokenizer, TokenizerError> {
        gguf::load(meta)
    }

    /// Loads `dir/tokenizer.json`, with BOS/EOS settings from
    /// `dir/tokenizer_config.json` and `dir/generation_config.json` when present.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        hf::load(dir)
    }

    /// Token ids of `text`. Special tokens written in the text (control,
    /// user-defined, e.g. `<start_of_turn>`) become their ids, as llama.cpp's
    /// `tokenize(text, add_special, parse_special = true)`. BOS is prepended
    /// when `add_bos` is set and the model has a BOS token; EOS is never
    /// appended (a prompt for generation must not end in one, even for the
    /// rare model whose `add_eos_token` is set).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let inner = &*self.inner;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && let Some(bos) = inner.bos {
            out.push(bos);
        }
        match &inner.engine {
            Engine::Spm {
                spm,
                special,
                add_space_prefix,
            } => {
                // llama.cpp prefixes a space to the first text fragment and
                // to every fragment that follows a special token.
                let mut prev_special = true;
                let mut buf = String::new();
                for fragment in special.partition(text) {
                    match fragment {
                        Fragment::Text(t) => {
                            buf.clear();
                            if *add_space_prefix && prev_special {
                                buf.push_str(spm::SPACE_MARK);
                            }
                            spm::escape_whitespace(t, &mut buf);
                            spm.encode(&inner.vocab, &buf, &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Engine::Bpe { bpe, special } => {
                for fragment in special.partition(text) {
                    match fragment {
                        Fragment::Text(t) => bpe.encode(&inner.vocab, t, &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Engine::Hf(tok) => {
                let enc = tok
                    .encode(text, false)
                    .map_err(|source| TokenizerError::HfEncode { source })?;
                out.extend_from_slice(enc.get_ids());
            }
        }
        Ok(out)
    }

    /// Token ids of `text` as one input to embed: the model's special tokens around it (BOS or
    /// `[CLS]` first, and EOS or `[SEP]` last when the model appends one), as llama.cpp's
    /// `add_special` or a `tokenizer.json`'s post-processor add them. With `max`, the text's
    /// own tokens are cut so that the whole input has at most `max` tokens (the special ones
    /// are kept), as Hugging Face's truncation does.
    pub fn encode_input(&self, text: &str, max: Option<usize>) -> Result<Vec<u32>, TokenizerError> {
        let inner = &*self.inner;
        if let Engine::Hf(tok) = &inner.engine
            && let Some(post) = tok.get_post_processor()
        {
            use tokenizers::PostProcessor;
            let hf = |source| TokenizerError::HfEncode { source };
            let mut enc = tok.encode(text, false).map_err(hf)?;
            if let Some(max) = max {
                let room = max.saturating_sub(post.added_tokens(false));
                if enc.len() > room {
                    enc.truncate(room, 0, tokenizers::TruncationDirection::Right);
                }
            }
            return Ok(tok
                .post_process(enc, None, true)
                .map_err(hf)?
                .get_ids()
                .to_vec());
        }
        let bos = inner.bos.filter(|_| inner.add_bos);
        let eos = inner.eos_ids.first().copied().filter(|_| inner.add_eos);
        let mut out = self.encode(text, false)?;
        if let Some(max) = max {
            let room = max.saturating_sub(usize::from(bos.is_some()) + usize::from(eos.is_some()));
            out.truncate(room);
        }
        if let Some(bos) = bos {
            out.insert(0, bos);
        }
        out.extend(eos);
        Ok(out)
    }

    /// The bytes token `id` adds to the output text, as llama.cpp's
    /// `token_to_piece(id, special = false)`: "▁" is a space, `<0x0A>` is that
    /// one byte, byte-level characters are their bytes, control and unknown
    /// tokens are empty, user-defined tokens are their text. Empty for an id
    /// outside the vocabulary. A piece need not be valid UTF-8 on its own.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.inner.pieces.get(id as usize).unwrap_or_default()
    }

    /// The text of `ids`: their [`token_bytes`](Self::token_bytes) joined,
    /// then read as UTF-8 with invalid sequences replaced by U+FFFD. Nothing
    /// is stripped or cleaned up, so this is what streaming the pieces one by
    /// one prints (llama.cpp's `llama_detokenize` would also drop the leading
    /// space of a space-prefixed model's first token and, for some BPE
    /// models, tidy spaces before punctuation).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id));
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }

    /// Whether the model wants BOS at the start of a prompt
    /// (`tokenizer.ggml.add_bos_token`, or `add_bos_token` in
    /// `tokenizer_config.json`, or llama.cpp's default for the vocabulary type).
    pub fn add_bos_default(&self) -> bool {
        self.inner.add_bos
    }

    /// Tokens that end generation: EOS first, then end-of-turn tokens
    /// (`<end_of_turn>`, `<|im_end|>`, `<|eot_id|>`, ...) as llama.cpp's
    /// `special_eog_ids` lists them.
    pub fn eos_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.vocab.get(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.inner.vocab.text(id)
    }

    /// Number of token ids (the embedding rows the model needs).
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn tokenizer_is_send_sync_clone() {
        assert_send_sync::<Tokenizer>();
    }
}
