//! Where a request for a model should run, from this node's own status and its pool view.
//!
//! Order (the first that exists wins; the rest are failover candidates):
//! 1. nodes with the model loaded on a GPU whose running batch has a free slot (as good as
//!    idle: the request joins the next step) — lowest latency first;
//! 2. nodes with it on disk and a GPU with room to load it — most free GPU memory first;
//! 3. the other nodes with it loaded and a free queue slot (on the CPU, or a GPU with a full
//!    batch) — first those whose batch has a free slot, then shortest queue; lowest latency
//!    among equals;
//! 4. nodes with it on disk and enough free memory (any device) to load it — most free first;
//! 5. nodes with it loaded but a full queue (they answer "busy", with a retry time);
//! 6. when none of those can run it now, the node with the most free memory (and room for
//!    it) fetches it from a node that holds it — ahead of full queues and of holders that
//!    would have to evict; when no node holds it at all, that node is the only candidate.
//!
//! Peers the caller wants avoided (recent failures) are left out.

use std::time::Duration;

use rbee_net::{Peer, PeerId};
use rbee_proto::ContentId;
use rbee_proto::pool::{DiskModel, NodeStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Local,
    Peer(PeerId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Loaded,
    OnDisk,
    Busy,
    /// Nobody can run the model now; this node has the most memory to fetch and load it.
    Fetch,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub target: Target,
    pub node: String,
    pub reason: Reason,
    /// The model's content id on that node (unknown for [`Reason::Fetch`]).
    pub content_id: Option<ContentId>,
}

struct Entry<'a> {
    target: Target,
    status: &'a NodeStatus,
    rtt: Duration,
}

fn has_model<'a>(
    status: &'a NodeStatus,
    reference: &str,
    known: Option<ContentId>,
) -> Option<&'a DiskModel> {
    status
        .on_disk
        .iter()
        .find(|m| Some(m.content_id) == known || m.matches(reference))
}

/// Ranks every node that could serve `reference`. `known` is the content id the local
/// catalog resolved it to, when it did (peers may know the model under other names).
pub fn candidates(
    reference: &str,
    known: Option<ContentId>,
    local: Option<&NodeStatus>,
    peers: &[Peer],
    avoid: impl Fn(&PeerId) -> bool,
) -> Vec<Candidate> {
    let mut nodes: Vec<Entry<'_>> = Vec::with_capacity(peers.len() + 1);
    if let Some(status) = local {
        nodes.push(Entry {
            target: Target::Local,
            status,
            rtt: Duration::ZERO,
        });
    }
    nodes.extend(peers.iter().filter(|p| !avoid(&p.id)).map(|p| Entry {
        target: Target::Peer(p.id),
        status: &p.status,
        rtt: p.rtt.unwrap_or(Duration::from_millis(50)),
    }));

    let mut gpu_ready = Vec::new();
    let mut gpu_room = Vec::new();
    let mut loaded = Vec::new();
    let mut on_disk = Vec::new();
    let mut busy = Vec::new();
    for n in &nodes {
        let Some(model) = has_model(n.status, reference, known) else {
            continue;
        };
        let candidate = |reason| Candidate {
            target: n.target,
            node: n.status.name.clone(),
            reason,
            content_id: Some(model.content_id),
        };
        match n.status.loaded(&model.content_id) {
            Some(l) if l.device != "cpu" && l.has_free_batch_slot() => {
                gpu_ready.push((n.rtt, candidate(Reason::Loaded)))
            }
            Some(l) if l.has_slot() => {
                loaded.push(((wait_rank(l), n.rtt), candidate(Reason::Loaded)))
            }
            Some(l) => busy.push(((l.queue, n.rtt), candidate(Reason::Busy))),
            None if n.status.max_gpu_free_bytes() >= model.size => gpu_room.push((
                std::cmp::Reverse(n.status.max_gpu_free_bytes()),
                candidate(Reason::OnDisk),
            )),
            None if n.status.max_free_bytes() >= model.size => on_disk.push((
                std::cmp::Reverse(n.status.max_free_bytes()),
                candidate(Reason::OnDisk),
            )),
            // On disk but too little free memory now: the node evicts idle models when asked,
            // so it stays a (last) candidate.
            None => busy.push(((u32::MAX, n.rtt), candidate(Reason::OnDisk))),
        }
    }
    gpu_ready.sort_by_key(|x| x.0);
    gpu_room.sort_by_key(|x| x.0);
    loaded.sort_by_key(|x| x.0);
    on_disk.sort_by_key(|x| x.0);
    busy.sort_by_key(|x| x.0);
    // Nobody can run it now: the node with the most free memory that does not hold it, if it
    // has room for it, fetches it from a node that does (ahead of full queues and of holders
    // that would have to evict). When nobody holds it, fetching is a last resort.
    let size = nodes
        .iter()
        .filter_map(|n| has_model(n.status, reference, known))
        .map(|m| m.size)
        .max();
    let fetch =
        if gpu_ready.is_empty() && gpu_room.is_empty() && loaded.is_empty() && on_disk.is_empty() {
            nodes
                .iter()
                .filter(|n| has_model(n.status, reference, known).is_none())
                .max_by_key(|n| n.status.max_free_bytes())
                .filter(|n| size.is_none_or(|s| n.status.max_free_bytes() >= s))
                .map(|n| Candidate {
                    target: n.target,
                    node: n.status.name.clone(),
                    reason: Reason::Fetch,
                    content_id: None,
                })
        } else {
            None
        };
    let held = size.is_some();
    let mut out: Vec<Candidate> = gpu_ready
        .into_iter()
        .map(|x| x.1)
        .chain(gpu_room.into_iter().map(|x| x.1))
        .chain(loaded.into_iter().map(|x| x.1))
        .chain(on_disk.into_iter().map(|x| x.1))
        .chain(fetch.clone().filter(|_| held))
        .chain(busy.into_iter().map(|x| x.1))
        .collect();
    if out.is_empty() {
        out.extend(fetch);
    }
    out
}

/// Whether a node in the pool holds `reference` on disk, so a [`Reason::Fetch`] can succeed.
pub fn held_in_pool(reference: &str, known: Option<ContentId>, peers: &[Peer]) -> bool {
    peers
        .iter()
        .any(|p| has_model(&p.status, reference, known).is_some_and(|m| m.shared))
}

/// How long a request sent to this loaded model waits before it starts, in requests: none
/// when its batch has a free slot, otherwise those queued ahead of it plus the batch itself.
fn wait_rank(l: &rbee_proto::pool::LoadedModel) -> u32 {
    if l.has_free_batch_slot() {
        0
    } else {
        l.queue.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_proto::pool::{DeviceStatus, LoadedModel};
    use std::time::Instant;

    fn node(name: &str, free: u64, disk: &[(&str, u64)], loaded: &[(&str, u32)]) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            api_addr: None,
            seq: 1,
            devices: vec![DeviceStatus {
                name: "cpu".into(),
                budget_bytes: free + 100,
                used_bytes: 100,
            }],
            loaded: loaded
                .iter()
                .map(|(m, q)| LoadedModel {
                    content_id: ContentId::of(m.as_bytes()),
                    device: "cpu".into(),
                    queue: *q,
                    queue_capacity: 4,
                    busy: *q > 0,
                    // One batch slot: a model with anything queued is busy.
                    live: u32::from(*q > 0),
                    max_live: 1,
                })
                .collect(),
            on_disk: disk
                .iter()
                .map(|(m, size)| DiskModel {
                    content_id: ContentId::of(m.as_bytes()),
                    names: vec![m.to_string()],
                    source: None,
                    size: *size,
                    shared: true,
                })
                .collect(),
            tokens_per_sec: 0.0,
            presets: Vec::new(),
        }
    }

    fn peer(status: NodeStatus, rtt_ms: u64) -> Peer {
        Peer {
            id: PeerId::random(),
            status,
            last_seen: Instant::now(),
            connected: true,
            rtt: Some(Duration::from_millis(rtt_ms)),
        }
    }

    fn names(c: &[Candidate]) -> Vec<(&str, Reason)> {
        c.iter().map(|c| (c.node.as_str(), c.reason)).collect()
    }

    /// `node` with a GPU of `gpu_free` bytes free besides its CPU, the model `m` loaded on
    /// `on` (if any) with `live` of 2 batch slots busy.
    fn gpu_node(name: &str, gpu_free: u64, on: Option<(&str, u32)>) -> NodeStatus {
        let mut n = node(name, 50, &[("m", 10)], &[]);
        n.devices.push(DeviceStatus {
            name: "cuda:0".into(),
            budget_bytes: gpu_free + 1,
            used_bytes: 1,
        });
        if let Some((device, live)) = on {
            n.loaded.push(LoadedModel {
                content_id: ContentId::of(b"m"),
                device: device.into(),
                queue: 0,
                queue_capacity: 4,
                busy: live > 0,
                live,
                max_live: 2,
            });
        }
        n
    }

    #[test]
    fn a_gpu_with_the_model_beats_a_gpu_with_room_beats_the_cpu() {
        let peers = vec![
            peer(gpu_node("cpu-loaded", 0, Some(("cpu", 0))), 1),
            peer(gpu_node("gpu-room-small", 20, None), 1),
            peer(gpu_node("gpu-room-big", 40, None), 1),
            peer(gpu_node("gpu-loaded-far", 0, Some(("cuda:0", 1))), 9),
            peer(gpu_node("gpu-loaded-full-batch", 0, Some(("cuda:0", 2))), 1),
            peer(gpu_node("gpu-too-small", 5, None), 1),
        ];
        let c = candidates("m", None, None, &peers, |_| false);
        assert_eq!(
            names(&c),
            vec![
                ("gpu-loaded-far", Reason::Loaded),
                ("gpu-room-big", Reason::OnDisk),
                ("gpu-room-small", Reason::OnDisk),
                ("cpu-loaded", Reason::Loaded),
                ("gpu-loaded-full-batch", Reason::Loaded),
                ("gpu-too-small", Reason::OnDisk),
            ]
        );
    }

    #[test]
    fn loaded_with_a_slot_beats_on_disk_and_queues_then_latency_order() {
        let local = node("local", 1000, &[("m", 10)], &[]);
        let peers = vec![
            peer(node("far", 0, &[("m", 10)], &[("m", 0)]), 9),
            peer(node("near", 0, &[("m", 10)], &[("m", 0)]), 1),
            peer(node("queued", 0, &[("m", 10)], &[("m", 2)]), 1),
            peer(node("full", 0, &[("m", 10)], &[("m", 4)]), 1),
            peer(node("other", 5000, &[("x", 10)], &[]), 1),
        ];
        let c = candidates("m", None, Some(&local), &peers, |_| false);
        assert_eq!(
            names(&c),
            vec![
                ("near", Reason::Loaded),
                ("far", Reason::Loaded),
                ("queued", Reason::Loaded),
                ("local", Reason::OnDisk),
                ("full", Reason::Busy),
            ]
        );
        // Avoided peers are skipped.
        let near = peers[1].id;
        let c = candidates("m", None, Some(&local), &peers, |p| *p == near);
        assert_eq!(c[0].node, "far");
    }

    #[test]
    fn a_free_batch_slot_ranks_as_idle_and_a_full_batch_after_it() {
        let local = node("local", 0, &[], &[]);
        let batching = |name: &str, queue: u32, live: u32, rtt: u64| {
            let mut n = node(name, 0, &[("m", 10)], &[("m", 0)]);
            n.loaded[0].queue = queue;
            n.loaded[0].live = live;
            n.loaded[0].max_live = 8;
            n.loaded[0].busy = live > 0;
            peer(n, rtt)
        };
        let peers = vec![
            batching("idle-far", 0, 0, 9),
            batching("full-batch", 0, 8, 1),
            batching("joining-near", 0, 5, 1),
            batching("queued", 2, 8, 1),
        ];
        let c = candidates("m", None, Some(&local), &peers, |_| false);
        assert_eq!(
            names(&c),
            vec![
                ("joining-near", Reason::Loaded),
                ("idle-far", Reason::Loaded),
                ("full-batch", Reason::Loaded),
                ("queued", Reason::Loaded),
            ]
        );
    }

    #[test]
    fn on_disk_prefers_free_memory_and_nobody_means_fetch_on_the_roomiest() {
        let local = node("local", 50, &[], &[]);
        let peers = vec![
            peer(node("small", 20, &[("m", 10)], &[]), 1),
            peer(node("big", 900, &[("m", 10)], &[]), 1),
            peer(node("tight", 5, &[("m", 10)], &[]), 1),
            peer(node("roomy", 5000, &[], &[]), 1),
        ];
        let c = candidates("m", None, Some(&local), &peers, |_| false);
        assert_eq!(
            names(&c),
            vec![
                ("big", Reason::OnDisk),
                ("small", Reason::OnDisk),
                ("tight", Reason::OnDisk)
            ]
        );
        let c = candidates("unknown", None, Some(&local), &peers, |_| false);
        assert_eq!(names(&c), vec![("roomy", Reason::Fetch)]);
        // Matched by content id even under another name.
        let id = ContentId::of(b"m");
        let c = candidates("my-alias", Some(id), Some(&local), &peers, |_| false);
        assert_eq!(c.len(), 3);
        assert!(c.iter().all(|c| c.content_id == Some(id)));
    }

    #[test]
    fn when_holders_cannot_run_it_the_roomiest_other_node_fetches_it_first() {
        // The only holders: one out of memory, one with a full queue.
        let local = node("local", 50, &[], &[]);
        let peers = vec![
            peer(node("cramped", 5, &[("m", 100)], &[]), 1),
            peer(node("full", 0, &[("m", 100)], &[("m", 4)]), 1),
            peer(node("roomy", 5000, &[], &[]), 1),
            peer(node("roomiest", 9000, &[("x", 1)], &[]), 1),
        ];
        let c = candidates("m", None, Some(&local), &peers, |_| false);
        assert_eq!(
            names(&c),
            vec![
                ("roomiest", Reason::Fetch),
                ("full", Reason::Busy),
                ("cramped", Reason::OnDisk),
            ]
        );
        assert!(held_in_pool("m", None, &peers));
        assert!(!held_in_pool("nothing", None, &peers));
        // Nobody with room for a 100 000-byte model: no fetch, the holders stay.
        let peers = vec![
            peer(node("cramped", 5, &[("m", 100_000)], &[]), 1),
            peer(node("small", 500, &[], &[]), 1),
        ];
        let c = candidates("m", None, Some(&local), &peers, |_| false);
        assert_eq!(names(&c), vec![("cramped", Reason::OnDisk)]);
    }
}
