//! A node's model store: content-addressed files, a crash-safe catalog, and imports.
//!
//! Layout under the data dir (see `docs/STORE.md` for the reasoning):
//!
//! ```text
//! blobs/<blob id>         one immutable file per distinct model file (mmap-able as is)
//! manifests/<cid>         the encoded manifest of every cataloged model
//! views/<cid>/<file name> hard links to blobs, named as the loader expects
//! partial/<cid>/          pulls in progress: part files plus a verified-shard record
//! tmp/                    imports in flight; anything here after a crash is garbage
//! quarantine/<cid>        damaged manifests moved aside, with `<cid>.reason`
//! catalog.json            names, aliases, pins, last-used stamps (replaced atomically)
//! verified.json           what each blob looked like when last verified (see verify_for_load)
//! node.lock               held by the node running on this data dir (pid, API address)
//! ```
//!
//! Ordering makes it crash-safe: blobs, view and manifest are durable before the catalog names
//! the model, and the catalog forgets a model before its files are deleted.
//!
//! ```no_run
//! use rbee_store::{Store, ImportSource};
//! let store = Store::open(rbee_store::default_data_dir()?)?;
//! let outcome = store.import(&ImportSource::parse("./model.gguf")?, &mut |_| {})?;
//! println!("{} {}", outcome.name, outcome.content_id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod catalog;
mod error;
mod fsutil;
mod import;
mod nodelock;
mod outcome;
mod partial;
mod recover;
/// The GGUF file choice lives in `rbee-proto` (the hub client needs it too); re-exported here.
pub use rbee_proto::quant;
mod store;
mod verified;

pub use catalog::{CatalogEntry, ModelRecord};
pub use error::StoreError;
pub use import::{ImportSource, OllamaSettings};
pub use nodelock::NodeLock;
pub use outcome::{DamagedModel, ImportOutcome, RebuildReport};
pub use partial::PartialModel;
pub use recover::Listing;
pub use store::{
    GcReport, Progress, ShardLocation, Store, VerifyReport, default_data_dir, hf_cache_dir,
    ollama_models_dir,
};
pub use verified::LoadCheck;
