//! The swarm, its event loop, and the [`Client`] handle the node uses.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, Transport as _, gossipsub, identify,
    kad, mdns, noise, ping, tcp, yamux,
};
use rbee_proto::ContentId;
use rbee_proto::pool::{MAX_STATUS_SIZE, NodeStatus, POOL_TOPIC};
use tokio::sync::{mpsc, oneshot};

use crate::view::{Change, Peer, PoolView};
use crate::{NetError, PoolKey};

/// Commands queued to the event loop at most.
const COMMAND_QUEUE: usize = 256;
/// Events queued to the node at most; beyond it they are dropped (and logged).
const EVENT_QUEUE: usize = 256;
/// The most providers one lookup reports: more sources than any pull can use at once.
const MAX_PROVIDERS: usize = 64;
const KAD_PROTOCOL: &str = "/rbee/kad/1";
const IDENTIFY_PROTOCOL: &str = "/rbee/id/1";

/// Which transport the swarm runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP sockets: what nodes use.
    Tcp,
    /// In-process memory channels (`/memory/<n>` addresses): for tests of many swarms.
    Memory,
}

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub keypair: Keypair,
    pub pool_key: PoolKey,
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/7836`.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (and again while the node knows no one).
    pub bootstrap: Vec<Multiaddr>,
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    pub transport: Transport,
    /// How often the node's status is published when nothing changes. A peer silent for
    /// three intervals leaves the view.
    pub status_interval: Duration,
    /// The node dials peers it hears of (so requests reach them directly) until it has this
    /// many connections; beyond that, gossip still carries their statuses.
    pub max_dialed_peers: usize,
}

impl NetConfig {
    pub fn new(keypair: Keypair, pool_key: PoolKey) -> NetConfig {
        NetConfig {
            keypair,
            pool_key,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: true,
            transport: Transport::Tcp,
            status_interval: Duration::from_secs(1),
            max_dialed_peers: 64,
        }
    }
}

/// What the network tells the node.
#[derive(Debug, Clone)]
pub enum Event {
    Listening(Multiaddr),
    PeerJoined { peer: PeerId, name: String },
    PeerLeft { peer: PeerId, name: String },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

enum Command {
    Publish(Box<NodeStatus>),
    /// Each provider is sent once as the query finds it; the channel closes when it ends.
    FindProviders(ContentId, mpsc::Sender<PeerId>),
    Dial(Multiaddr, oneshot::Sender<Result<(), NetError>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
}

/// A cloneable handle to the network task.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    view: Arc<Mutex<PoolView>>,
    local: PeerId,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("local", &self.local)
            .finish()
    }
}

fn lock(view: &Mutex<PoolView>) -> MutexGuard<'_, PoolView> {
    // The view holds plain data; a panic elsewhere cannot leave it inconsistent.
    view.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Hands the node's current status to the network: published at once when it differs
    /// from the last one, and again every status interval.
    pub async fn publish_status(&self, status: NodeStatus) -> Result<(), NetError> {
        self.commands
            .send(Command::Publish(Box::new(status)))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Every peer in the view, sorted by name.
    pub fn peers(&self) -> Vec<Peer> {
        lock(&self.view).peers()
    }

    pub fn peer(&self, id: &PeerId) -> Option<Peer> {
        lock(&self.view).get(id).cloned()
    }

    /// Nodes that announced (Kademlia provider records) that they hold model `id`, this one
    /// left out. Reaches peers beyond the gossip view; empty when the query finds none.
    ///
    /// Returns when the query ends or after `within`, with what it found by then: a query
    /// that has to wait for an unreachable peer (a machine switched off, whose dial only
    /// times out) does not hold up the caller, and loses nothing it already found.
    pub async fn find_providers(
        &self,
        id: ContentId,
        within: Duration,
    ) -> Result<Vec<PeerId>, NetError> {
        let (tx, mut rx) = mpsc::channel(MAX_PROVIDERS);
        self.commands
            .send(Command::FindProviders(id, tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        let mut found = Vec::new();
        let _ = tokio::time::timeout(within, async {
            while let Some(peer) = rx.recv().await {
                found.push(peer);
            }
        })
        .await;
        Ok(found)
    }

    /// Dials an address (a bootstrap peer, say) and waits until the dial is under way.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial(addr, tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// The addresses the swarm listens on now.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::ListenAddrs(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Opens a stream of `protocol` to `peer`, connecting first if needed. A peer that does
    /// not speak the protocol (another version) is refused cleanly.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: &'static str,
    ) -> Result<libp2p::Stream, NetError> {
        let mut control = self.control.clone();
        control
            .open_stream(peer, StreamProtocol::new(protocol))
            .await
            .map_err(|e| match e {
                libp2p_stream::OpenStreamError::UnsupportedProtocol(p) => NetError::Unsupported {
                    peer,
                    protocol: p.to_string(),
                },
                other => NetError::Unreachable {
                    peer,
                    reason: other.to_string(),
                },
            })
    }

    /// Inbound streams of `protocol`; only one acceptor per protocol.
    pub fn accept(
        &self,
        protocol: &'static str,
    ) -> Result<libp2p_stream::IncomingStreams, NetError> {
        let mut control = self.control.clone();
        control
            .accept(StreamProtocol::new(protocol))
            .map_err(|e| NetError::Config(format!("{protocol}: {e}")))
    }
}

fn build_transport(
    keypair: &Keypair,
    pool_key: PoolKey,
    kind: Transport,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetError> {
    let noise = noise::Config::new(keypair).map_err(|e| NetError::Config(e.to_string()))?;
    let psk = pool_key.bytes();
    let timeout = Duration::from_secs(20);
    Ok(match kind {
        Transport::Tcp => tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| rbee_pnet::handshake(psk, socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(timeout)
            .boxed(),
        Transport::Memory => MemoryTransport::default()
            .and_then(move |socket, _| rbee_pnet::handshake(psk, socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(timeout)
            .boxed(),
    })
}

fn build_behaviour(key: &Keypair, config: &NetConfig) -> Result<Behaviour, NetError> {
    let local = key.public().to_peer_id();
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        // Every copy of a message is signature-checked; a sparser mesh than the default
        // (6/5/12) keeps that cost flat in pools of a hundred nodes.
        .mesh_n(4)
        .mesh_n_low(3)
        .mesh_n_high(8)
        .mesh_outbound_min(2)
        .gossip_lazy(4)
        .max_transmit_size(MAX_STATUS_SIZE)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .build()
        .map_err(|e| NetError::Config(format!("gossipsub: {e}")))?;
    let gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )
    .map_err(|e| NetError::Config(format!("gossipsub: {e}")))?;
    let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    // Provider records (who holds which model) are republished often enough that a node
    // joining a quiet pool finds them within minutes, and expire when their node is gone.
    kad_config
        .set_provider_publication_interval(Some(Duration::from_secs(300)))
        .set_provider_record_ttl(Some(Duration::from_secs(900)));
    let mut kad =
        kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_config);
    // A home lab has no public addresses to confirm; every node answers queries.
    kad.set_mode(Some(kad::Mode::Server));
    let mdns = if config.mdns && config.transport == Transport::Tcp {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), local)
                .map_err(|e| NetError::Config(format!("mDNS: {e}")))?,
        )
    } else {
        None
    };
    Ok(Behaviour {
        gossipsub,
        kad,
        identify: identify::Behaviour::new(identify::Config::new(
            IDENTIFY_PROTOCOL.into(),
            key.public(),
        )),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5))),
        mdns: mdns.into(),
        stream: libp2p_stream::Behaviour::new(),
    })
}

/// Builds the swarm, starts listening, and spawns its event loop on the current runtime.
pub fn spawn(config: NetConfig) -> Result<(Client, mpsc::Receiver<Event>), NetError> {
    let (client, events, event_loop) = EventLoop::new(config)?;
    tokio::spawn(event_loop.run());
    Ok((client, events))
}

/// Owns the swarm; runs until every [`Client`] is dropped.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    view: Arc<Mutex<PoolView>>,
    topic: gossipsub::IdentTopic,
    status: Option<NodeStatus>,
    last_publish: Option<Instant>,
    /// A publication is due at the next tick (a change or a newcomer arrived too soon after
    /// the last one: statuses are rate-limited to one per quarter interval).
    publish_due: bool,
    last_seq: u64,
    /// A Kademlia bootstrap ran since the first peer was identified.
    bootstrapped: bool,
    /// When each address last got a "different pool key?" warning.
    handshake_warnings: RateLimit,
    /// Models this node announces as a Kademlia provider (the shared ones it stores).
    providing: HashSet<ContentId>,
    /// Provider lookups under way: the peers found so far and who asked.
    finding: HashMap<kad::QueryId, (HashSet<PeerId>, mpsc::Sender<PeerId>)>,
    config: NetConfig,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("local", self.swarm.local_peer_id())
            .finish()
    }
}

impl EventLoop {
    pub fn new(config: NetConfig) -> Result<(Client, mpsc::Receiver<Event>, EventLoop), NetError> {
        let transport = build_transport(&config.keypair, config.pool_key, config.transport)?;
        let behaviour = build_behaviour(&config.keypair, &config)?;
        let mut swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
            .with_tokio()
            .with_other_transport(move |_| transport)
            .map_err(|e| -> NetError { match e {} })?
            .with_behaviour(move |_| behaviour)
            .map_err(|e| -> NetError { match e {} })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let topic = gossipsub::IdentTopic::new(POOL_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| NetError::Config(format!("gossipsub: {e}")))?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Config(format!("cannot listen on {addr}: {e}")))?;
        }
        for addr in &config.bootstrap {
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
            }
        }
        let local = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let view = Arc::new(Mutex::new(PoolView::default()));
        let client = Client {
            commands: cmd_tx,
            control,
            view: view.clone(),
            local,
        };
        let event_loop = EventLoop {
            swarm,
            commands: cmd_rx,
            events: ev_tx,
            view,
            topic,
            status: None,
            last_publish: None,
            publish_due: false,
            last_seq: 0,
            bootstrapped: false,
            providing: HashSet::new(),
            finding: HashMap::new(),
            handshake_warnings: RateLimit::new(HANDSHAKE_WARNING_EVERY),
            config,
        };
        Ok((client, ev_rx, event_loop))
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.status_interval / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(Duration::from_secs(10));
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        redial.tick().await;
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
                _ = redial.tick() => self.on_redial(),
            }
        }
        tracing::debug!("network event loop stopped");
    }

    fn emit(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            tracing::debug!("network event dropped: the node is not reading events");
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish(status) => {
                let changed = self
                    .status
                    .as_ref()
                    .is_none_or(|old| !same_except_seq(old, &status));
                self.provide(&status);
                self.status = Some(*status);
                if changed {
                    self.publish_soon();
                }
            }
            Command::FindProviders(id, reply) => {
                let key = kad::RecordKey::new(&id.to_hex());
                let query = self.swarm.behaviour_mut().kad.get_providers(key);
                self.finding.insert(query, (HashSet::new(), reply));
            }
            Command::Dial(addr, reply) => {
                let result = self
                    .swarm
                    .dial(addr.clone())
                    .map_err(|e| NetError::Config(format!("cannot dial {addr}: {e}")));
                let _ = reply.send(result);
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
        }
    }

    /// Announces the models of `status` that are shared as Kademlia provider records, and
    /// withdraws those no longer there. Records are republished by Kademlia itself.
    fn provide(&mut self, status: &NodeStatus) {
        let now: HashSet<ContentId> = status
            .on_disk
            .iter()
            .filter(|m| m.shared)
            .map(|m| m.content_id)
            .collect();
        let kad = &mut self.swarm.behaviour_mut().kad;
        for gone in self.providing.difference(&now) {
            kad.stop_providing(&kad::RecordKey::new(&gone.to_hex()));
        }
        for new in now.difference(&self.providing) {
            if let Err(e) = kad.start_providing(kad::RecordKey::new(&new.to_hex())) {
                tracing::warn!("cannot announce model {}: {e}", new.short());
            }
        }
        self.providing = now;
    }

    /// Announces every provided model again: after the first peer arrived, the records a
    /// lone node "published" reached nobody.
    fn reprovide(&mut self) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        for id in &self.providing {
            if let Err(e) = kad.start_providing(kad::RecordKey::new(&id.to_hex())) {
                tracing::debug!("cannot announce model {}: {e}", id.short());
            }
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = event
        else {
            return;
        };
        let kad::QueryResult::GetProviders(result) = result else {
            return;
        };
        let local = *self.swarm.local_peer_id();
        let Some((found, reply)) = self.finding.get_mut(&id) else {
            return;
        };
        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
            for peer in providers {
                if peer != local && found.len() < MAX_PROVIDERS && found.insert(peer) {
                    // Room is certain: at most MAX_PROVIDERS are ever sent.
                    let _ = reply.try_send(peer);
                }
            }
        }
        if step.last || reply.is_closed() {
            // Dropping the sender ends the caller's wait; a caller that gave up already
            // needs the query no more.
            self.finding.remove(&id);
            if !step.last
                && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id)
            {
                query.finish();
            }
        }
    }

    /// Publishes now unless the last status went out less than a quarter interval ago; then
    /// at the next tick. Bursts (many newcomers at once) cost one message, not one each.
    fn publish_soon(&mut self) {
        let gap = self.config.status_interval / 4;
        if self.last_publish.is_none_or(|t| t.elapsed() >= gap) {
            self.publish();
        } else {
            self.publish_due = true;
        }
    }

    fn publish(&mut self) {
        self.publish_due = false;
        let Some(status) = self.status.as_mut() else {
            return;
        };
        // Sequence numbers are wall-clock microseconds, so a restarted node (same identity)
        // is never mistaken for its older self.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.last_seq = now.max(self.last_seq + 1);
        status.seq = self.last_seq;
        self.last_publish = Some(Instant::now());
        let bytes = match rbee_proto::codec::encode(&*status) {
            Ok(b) => b,
            Err(e) => return tracing::error!("cannot encode this node's status: {e}"),
        };
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!("status not published: {e}"),
        }
    }

    fn on_tick(&mut self) {
        let interval = self.config.status_interval;
        if self.publish_due || self.last_publish.is_none_or(|t| t.elapsed() >= interval) {
            self.publish();
        }
        let gone = lock(&self.view).expire(Instant::now(), interval * 3);
        for peer in gone {
            tracing::info!(peer = %peer.id, name = %peer.status.name, "peer silent; left the pool view");
            self.emit(Event::PeerLeft {
                peer: peer.id,
                name: peer.status.name,
            });
        }
    }

    fn on_redial(&mut self) {
        if self.swarm.connected_peers().next().is_some() {
            if self.swarm.behaviour_mut().kad.bootstrap().is_err() {
                tracing::trace!("no kademlia peers yet");
            }
            return;
        }
        for addr in self.config.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, "bootstrap dial failed: {e}");
            }
        }
    }

    /// A bootstrap peer that accepts the TCP connection but fails the handshake almost always
    /// has another pool key; say so, instead of leaving the user with "no known peers".
    fn explain_bootstrap_failure(&mut self, error: &libp2p::swarm::DialError) {
        let libp2p::swarm::DialError::Transport(attempts) = error else {
            return;
        };
        for (addr, failure) in attempts {
            let bootstrap = self
                .config
                .bootstrap
                .iter()
                .any(|b| without_peer_id(b) == without_peer_id(addr));
            if !bootstrap || !handshake_failed(failure) {
                continue;
            }
            if self
                .handshake_warnings
                .due(without_peer_id(addr).to_string())
            {
                tracing::warn!(
                    %addr,
                    "cannot join the pool through this bootstrap peer: the connection failed during or before the encrypted handshake ({failure}). If the peer is up, it most likely uses a different pool key: compare the `pool` fingerprint of `rbee-node peers` on both nodes (this node's is {})",
                    self.config.pool_key.fingerprint()
                );
            }
        }
    }

    fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id()
            || self.swarm.is_connected(&peer)
            || self.swarm.connected_peers().count() >= self.config.max_dialed_peers
        {
            return;
        }
        let opts = DialOpts::peer_id(peer).addresses(addrs).build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, "dial failed: {e}");
        }
    }

    fn on_status(&mut self, source: PeerId, data: &[u8]) {
        let status = match NodeStatus::from_wire(data) {
            Ok(s) => s,
            Err(e) => return tracing::debug!(%source, "status ignored: {e}"),
        };
        let name = status.name.clone();
        let connected = self.swarm.is_connected(&source);
        let change = {
            let mut view = lock(&self.view);
            let change = view.apply(source, status, Instant::now());
            view.set_connected(&source, connected);
            change
        };
        if change == Change::Joined {
            tracing::info!(peer = %source, %name, "peer joined the pool view");
            self.emit(Event::PeerJoined { peer: source, name });
            // Requests may be forwarded to it: connect directly (addresses from Kademlia;
            // a lookup finds them when the routing table does not have them yet).
            if !self.swarm.is_connected(&source) {
                self.swarm.behaviour_mut().kad.get_closest_peers(source);
            }
            self.dial_peer(source, Vec::new());
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "pool listening");
                self.emit(Event::Listening(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                lock(&self.view).set_connected(&peer_id, true);
                if num_established.get() == 1 {
                    tracing::debug!(peer = %peer_id, "connected");
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                let removed = lock(&self.view).remove(&peer_id);
                if let Some(peer) = removed {
                    tracing::info!(peer = %peer_id, name = %peer.status.name, "peer disconnected; left the pool view");
                    self.emit(Event::PeerLeft {
                        peer: peer_id,
                        name: peer.status.name,
                    });
                }
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                // A node without the pool key ends here: pnet garbles the handshake.
                tracing::debug!(%send_back_addr, "incoming connection refused: {error}");
                if self.handshake_warnings.due(send_back_addr.to_string()) {
                    tracing::warn!(
                        from = %send_back_addr,
                        "a node failed the pool handshake: it has a different pool key, or none (this pool is {})",
                        self.config.pool_key.fingerprint()
                    );
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, "outgoing connection failed: {error}");
                self.explain_bootstrap_failure(&error);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => match event {
                gossipsub::Event::Message { message, .. } => {
                    if let Some(source) = message.source {
                        self.on_status(source, &message.data);
                    }
                }
                gossipsub::Event::Subscribed { peer_id, .. } => {
                    tracing::debug!(peer = %peer_id, "peer subscribed to the pool topic");
                    // A newcomer learns about us now, not an interval later.
                    self.publish_soon();
                }
                _ => {}
            },
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => lock(&self.view).set_rtt(&peer, rtt),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                // The first peer we know: ask it at once who else is in the pool, so peers
                // reached only through it become dialable now, not at the next redial tick.
                if !self.bootstrapped {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                    self.reprovide();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    tracing::debug!(%peer, "found on the LAN (mDNS)");
                    self.dial_peer(peer, addrs);
                }
            }
            _ => {}
        }
    }
}

fn same_except_seq(a: &NodeStatus, b: &NodeStatus) -> bool {
    let mut b = b.clone();
    b.seq = a.seq;
    *a == b
}

/// How often one address may be warned about a failed handshake (a bootstrap peer is redialled
/// every few seconds).
const HANDSHAKE_WARNING_EVERY: Duration = Duration::from_secs(60);
/// Addresses remembered for rate limiting; beyond this the oldest are forgotten.
const RATE_LIMIT_KEYS: usize = 256;

/// At most one `due` per key per interval, over a bounded set of keys.
#[derive(Debug)]
struct RateLimit {
    every: Duration,
    last: HashMap<String, Instant>,
}

impl RateLimit {
    fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: HashMap::new(),
        }
    }

    fn due(&mut self, key: String) -> bool {
        let now = Instant::now();
        if self.last.get(&key).is_some_and(|t| now - *t < self.every) {
            return false;
        }
        if self.last.len() >= RATE_LIMIT_KEYS {
            let every = self.every;
            self.last.retain(|_, t| now - *t < every);
            if self.last.len() >= RATE_LIMIT_KEYS {
                self.last.clear();
            }
        }
        self.last.insert(key, now);
        true
    }
}

fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}

/// False when the socket said nothing listens or there is no route: a different problem
/// than a peer that cannot complete the handshake. The transport's 20 s timeout counts as a
/// handshake failure, since with another key both sides often wait on noise until it ends.
fn handshake_failed(failure: &libp2p::TransportError<std::io::Error>) -> bool {
    use std::io::ErrorKind::*;
    let libp2p::TransportError::Other(io) = failure else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(io);
    while let Some(e) = cause {
        let Some(io) = e.downcast_ref::<std::io::Error>() else {
            cause = e.source();
            continue;
        };
        if matches!(
            io.kind(),
            ConnectionRefused | TimedOut | HostUnreachable | NetworkUnreachable | AddrNotAvailable
        ) {
            return false;
        }
        // An io::Error's `source` skips the error it wraps; `get_ref` is that error.
        cause = match io.get_ref() {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    true
}

#[cfg(test)]
mod rate_limit_tests {
    use super::*;

    #[test]
    fn one_warning_per_key_per_interval() {
        let mut r = RateLimit::new(Duration::from_secs(60));
        assert!(r.due("a".into()));
        assert!(!r.due("a".into()));
        assert!(r.due("b".into()));
        let mut fast = RateLimit::new(Duration::ZERO);
        assert!(fast.due("a".into()) && fast.due("a".into()));
        for i in 0..1000 {
            r.due(i.to_string());
        }
        assert!(r.last.len() <= RATE_LIMIT_KEYS);
    }

    #[test]
    fn refused_is_not_a_handshake_failure_but_a_reset_is() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!handshake_failed(&libp2p::TransportError::Other(refused)));
        let wrapped = std::io::Error::other(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(!handshake_failed(&libp2p::TransportError::Other(wrapped)));
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(handshake_failed(&libp2p::TransportError::Other(eof)));
    }
}
