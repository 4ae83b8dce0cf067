//! rbee-format: the structure of the model files rbee stores, shares and loads.
//!
//! - [`gguf`]: GGUF (v2/v3) reading, validation, and a small writer for fixtures.
//! - [`safetensors`]: the header of a safetensors file, checked against the file.
//!
//! Structure only: a file that passes is well-formed, whatever its architecture. Which
//! architectures a build can run is the engine's list (`rbee_infer::SUPPORTED_ARCHITECTURES`),
//! so the store can import and share a model that only some peers run.
//!
//! Model files arrive from users and untrusted peers, so every reader here treats each count,
//! length and offset as hostile: each is checked against the bytes left in the file and against
//! an absolute cap before it drives an allocation, all arithmetic is checked, and bad input is
//! an error, never a panic.

pub mod gguf;
pub mod safetensors;
