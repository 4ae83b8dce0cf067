//! Shared by the swarm tests and the simulation: the routing rules, stated independently of
//! `rbee_node::route`, to check its decisions against.

use rbee_proto::ContentId;
use rbee_proto::pool::NodeStatus;

/// Whether a route must start with a fetch: nobody can run the model now (loaded with a
/// free slot, or on disk with memory to load it), and either nobody holds it or a node that
/// does not hold it has room for it.
pub fn fetch_expected(pool: &[&NodeStatus], name: &str, id: ContentId) -> bool {
    let size = pool
        .iter()
        .filter_map(|s| s.find_on_disk(name))
        .map(|d| d.size)
        .max();
    let runnable = pool.iter().any(|s| match s.loaded(&id) {
        Some(l) => l.has_slot(),
        None => size.is_some_and(|z| s.find_on_disk(name).is_some() && s.max_free_bytes() >= z),
    });
    match size {
        _ if runnable => false,
        None => true,
        Some(z) => pool
            .iter()
            .any(|s| s.find_on_disk(name).is_none() && s.max_free_bytes() >= z),
    }
}
