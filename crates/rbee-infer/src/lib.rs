//! rbee-infer: turns a validated model on disk into a stream of tokens.
//!
//! - [`tokenizer`]: tokenizer.json, or one built from GGUF metadata (SentencePiece and BPE).
//! - [`model`]: our transformer on candle-core for the decoder architectures in
//!   [`SUPPORTED_ARCHITECTURES`] (llama, qwen2, qwen3, gemma3, phi3), and the BERT encoder
//!   ([`model::bert`]) for the embedding-only architectures in [`ENCODER_ARCHITECTURES`]
//!   (bert): together, the lists of what runs.
//! - [`chat`]: chat templates (the model's own Jinja template, or a built-in one).
//! - [`constraint`]: constrained decoding (JSON, JSON schema, Lark grammars) with llguidance.
//! - [`tools`]: tool-call formats per template family, the grammar that forces a call,
//!   parsing calls and reasoning out of a reply.
//! - [`sampling`]: greedy, temperature, top-k/p, min-p, repetition penalty, seeds.
//! - [`engine`]: the [`Backend`](engine::Backend) trait and the candle backend, one thread per loaded model.

pub mod chat;
pub mod constraint;
pub mod devices;
pub mod engine;
mod error;
pub mod model;
pub mod sampling;
pub mod stream;
pub mod tokenizer;
pub mod tools;

pub use error::InferError;
pub use model::bert::ENCODER_ARCHITECTURES;
pub use model::config::SUPPORTED_ARCHITECTURES;
