//! rbee-net: the libp2p side of a node.
//!
//! One swarm per node (TCP, pnet with the pool key, noise, yamux), polled by one
//! [`EventLoop`] task; the rest of the node talks to it through a cloneable [`Client`] and
//! hears about peers through [`Event`]s (the shape of rust-libp2p's file-sharing example).
//!
//! - Membership: a [`PoolKey`] (libp2p's pnet protocol, spoken by [`rbee_pnet`]): a node
//!   without it cannot finish a connection.
//! - Discovery: mDNS on the LAN, Kademlia from `--bootstrap` addresses beyond it.
//! - Pool view: every node publishes its [`NodeStatus`](rbee_proto::pool::NodeStatus) on a
//!   gossipsub topic at a steady interval and on change; peers silent for three intervals,
//!   or whose last connection closed, leave the view.
//! - Streams: versioned protocols (`/rbee/infer/2`, `/rbee/shard/1`) opened with
//!   [`Client::open_stream`] and accepted with [`Client::accept`]; [`frame`] puts
//!   size-capped messages on them.

pub mod frame;
mod identity;
mod swarm;
mod view;

pub use identity::{PoolKey, load_or_create_identity};
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
pub use swarm::{Client, Event, EventLoop, NetConfig, Transport, spawn};
pub use view::{Change, Peer, PoolView};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    BadPoolKey(String),
    #[error("{0}")]
    Io(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("peer {peer} does not speak {protocol} (a different rbee version?)")]
    Unsupported { peer: PeerId, protocol: String },
    #[error("cannot reach peer {peer}: {reason}")]
    Unreachable { peer: PeerId, reason: String },
    #[error("the network task has stopped")]
    Stopped,
    #[error("{0}")]
    Config(String),
}

impl From<std::io::Error> for NetError {
    fn from(e: std::io::Error) -> Self {
        NetError::Io(e.to_string())
    }
}
