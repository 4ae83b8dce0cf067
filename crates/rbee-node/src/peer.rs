//! What this node does for its peers: serves `/rbee/infer/2` and `/rbee/shard/1`, and
//! publishes its status. Each server runs under `tasks::supervise`.

pub mod infer;
pub mod shards;
pub mod status;
