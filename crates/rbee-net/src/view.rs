//! The pool view: the latest status of every peer heard from, and when it was heard.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rbee_proto::pool::NodeStatus;

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

/// What changed when a status or a disconnect was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Joined,
    Updated,
    Stale,
}

/// Departed peers remembered (with their last sequence number), so that a late copy of an
/// old status still travelling through the gossip mesh cannot bring a dead peer back.
const MAX_DEPARTED: usize = 4096;

#[derive(Debug, Default)]
pub struct PoolView {
    peers: HashMap<PeerId, Peer>,
    departed: HashMap<PeerId, u64>,
}

impl PoolView {
    /// Records a status heard from `id`. A status older than the one held is ignored.
    pub fn apply(&mut self, id: PeerId, status: NodeStatus, now: Instant) -> Change {
        if self.departed.get(&id).is_some_and(|seq| status.seq <= *seq) {
            return Change::Stale;
        }
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
        let peer = self.peers.remove(id)?;
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.clear();
        }
        self.departed.insert(*id, peer.status.seq);
        Some(peer)
    }

    /// Removes peers silent for longer than `timeout`; returns them.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<Peer> {
        let gone: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| now.saturating_duration_since(p.last_seen) > timeout)
            .map(|p| p.id)
            .collect();
        gone.iter().filter_map(|id| self.remove(id)).collect()
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
            presets: Vec::new(),
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
        // A late copy of a departed peer's old status does not bring it back; a newer one
        // (it restarted) does.
        assert_eq!(v.apply(a, status("a2", 3), t1), Change::Stale);
        assert_eq!(v.apply(a, status("a3", 4), t1), Change::Joined);
    }
}
