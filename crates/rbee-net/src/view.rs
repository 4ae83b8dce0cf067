//! The pool view: the latest status of every peer heard from, and when it was heard.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rbee_proto::pool::NodeStatus;
use serde::Serialize;

/// A peer as this node sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: PeerId,
    pub status: NodeStatus,
    pub last_seen: Instant,
    /// There is a direct connection now.
    pub connected: bool,
    /// Round-trip time of the last ping, when there is a direct connection.
    pub rtt: Option<Duration>,
}

/// The JSON shape of a peer for `GET /v1/pool` and `rbee-node peers`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerSummary {
    pub peer_id: String,
    pub name: String,
    pub api_addr: Option<String>,
    pub last_seen_ms: u64,
    pub connected: bool,
    pub rtt_ms: Option<f64>,
    pub status: NodeStatus,
}

impl Peer {
    pub fn summary(&self) -> PeerSummary {
        PeerSummary {
            peer_id: self.id.to_string(),
            name: self.status.name.clone(),
            api_addr: self.status.api_addr.clone(),
            last_seen_ms: self.last_seen.elapsed().as_millis() as u64,
            connected: self.connected,
            rtt_ms: self.rtt.map(|d| d.as_secs_f64() * 1000.0),
            status: self.status.clone(),
        }
    }
}

/// What changed when a status or a disconnect was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Joined,
    Updated,
    Stale,
}

#[derive(Debug, Default)]
pub struct PoolView {
    peers: HashMap<PeerId, Peer>,
}

impl PoolView {
    /// Records a status heard from `id`. A status older than the one held is ignored.
    pub fn apply(&mut self, id: PeerId, status: NodeStatus, now: Instant) -> Change {
        match self.peers.get_mut(&id) {
            Some(p) if status.seq < p.status.seq => Change::Stale,
            Some(p) => {
                p.status = status;
                p.last_seen = now;
                Change::Updated
            }
            None => {
                self.peers.insert(
                    id,
                    Peer {
                        id,
                        status,
                        last_seen: now,
                        connected: false,
                        rtt: None,
                    },
                );
                Change::Joined
            }
        }
    }

    pub fn set_connected(&mut self, id: &PeerId, connected: bool) {
        if let Some(p) = self.peers.get_mut(id) {
            p.connected = connected;
        }
    }

    pub fn set_rtt(&mut self, id: &PeerId, rtt: Duration) {
        if let Some(p) = self.peers.get_mut(id) {
            p.rtt = Some(rtt);
        }
    }

    /// Removes a peer at once (its last connection closed).
    pub fn remove(&mut self, id: &PeerId) -> Option<Peer> {
        self.peers.remove(id)
    }

    /// Removes peers silent for longer than `timeout`; returns them.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<Peer> {
        let gone: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| now.saturating_duration_since(p.last_seen) > timeout)
            .map(|p| p.id)
            .collect();
        gone.iter().filter_map(|id| self.peers.remove(id)).collect()
    }

    pub fn peers(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = self.peers.values().cloned().collect();
        v.sort_by(|a, b| a.status.name.cmp(&b.status.name).then(a.id.cmp(&b.id)));
        v
    }

    pub fn get(&self, id: &PeerId) -> Option<&Peer> {
        self.peers.get(id)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, seq: u64) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            api_addr: None,
            seq,
            devices: vec![],
            loaded: vec![],
            on_disk: vec![],
            tokens_per_sec: 0.0,
        }
    }

    #[test]
    fn newer_statuses_win_and_silent_peers_expire() {
        let mut v = PoolView::default();
        let a = PeerId::random();
        let t0 = Instant::now();
        assert_eq!(v.apply(a, status("a", 2), t0), Change::Joined);
        assert_eq!(v.apply(a, status("old", 1), t0), Change::Stale);
        assert_eq!(v.get(&a).unwrap().status.name, "a");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(v.apply(a, status("a2", 3), t1), Change::Updated);
        let b = PeerId::random();
        v.apply(b, status("b", 1), t0);
        let gone = v.expire(t0 + Duration::from_millis(3500), Duration::from_secs(3));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, b);
        assert_eq!(v.len(), 1);
        assert!(v.remove(&a).is_some());
        assert!(v.is_empty());
    }
}
