//! A 200-node pool simulated over the real [`PoolView`] and route ranking: statuses spread
//! hop by hop over a random mesh (one hop per tick), nodes join over time, the pool splits in
//! two and heals, a tenth of it dies. After each phase every view must match the nodes really
//! reachable, and every route from every node must be valid. Time is simulated, so the test is
//! fast and exact; the real swarms are exercised in `routing_swarms.rs`.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rbee_net::{PeerId, PoolView};
use rbee_node::route::{Reason, Target, candidates};
use rbee_proto::ContentId;
use rbee_proto::pool::{DeviceStatus, DiskModel, LoadedModel, NodeStatus};

mod common;
use common::fetch_expected;

const N: usize = 200;
const MODELS: u8 = 25;
/// A status interval is 4 ticks; a peer silent for 3 intervals leaves the view.
const TICK: Duration = Duration::from_millis(250);
const INTERVAL_TICKS: u64 = 4;

struct Node {
    id: PeerId,
    status: NodeStatus,
    view: PoolView,
    alive: bool,
    group: u8,
}

struct Sim {
    nodes: Vec<Node>,
    edges: Vec<Vec<usize>>,
    tick: u64,
    base: Instant,
    partitioned: bool,
    /// Messages in flight: (deliver at tick, to, from, status).
    flight: VecDeque<(u64, usize, usize, NodeStatus)>,
    seen: HashSet<(usize, usize, u64)>,
}

/// A small deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn status(i: usize, rng: &mut Rng) -> NodeStatus {
    let id = |m: u8| ContentId::of(&[m]);
    let disk: Vec<u8> = (0..rng.below(3))
        .map(|_| (rng.below(MODELS as usize - 1)) as u8)
        .collect();
    let loaded: Vec<u8> = disk.iter().copied().filter(|_| rng.below(4) == 0).collect();
    let budget = 1000 + rng.below(1000) as u64;
    NodeStatus {
        name: format!("n{i:03}"),
        api_addr: None,
        seq: 0,
        devices: vec![DeviceStatus {
            name: "cpu".into(),
            budget_bytes: budget,
            used_bytes: 500,
        }],
        loaded: loaded
            .iter()
            .map(|m| LoadedModel {
                content_id: id(*m),
                device: "cpu".into(),
                queue: rng.below(6) as u32,
                queue_capacity: 4,
                busy: false,
                live: 0,
                max_live: 8,
            })
            .collect(),
        on_disk: disk
            .iter()
            .map(|m| DiskModel {
                content_id: id(*m),
                names: vec![format!("model-{m}")],
                source: None,
                size: 100 + rng.below(600) as u64,
                shared: true,
            })
            .collect(),
        tokens_per_sec: 0.0,
        presets: Vec::new(),
    }
}

impl Sim {
    fn now(&self) -> Instant {
        self.base + TICK * self.tick as u32
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        x.alive && y.alive && (!self.partitioned || x.group == y.group)
    }

    fn step(&mut self) {
        self.tick += 1;
        // Publish once per interval (nodes are staggered by index).
        for i in 0..N {
            if self.nodes[i].alive && (self.tick + i as u64).is_multiple_of(INTERVAL_TICKS) {
                self.nodes[i].status.seq = self.tick;
                let st = self.nodes[i].status.clone();
                for &j in &self.edges[i] {
                    self.flight.push_back((self.tick + 1, j, i, st.clone()));
                }
            }
        }
        // Deliver what is due; forward (gossip) what is new to the receiver.
        let now = self.now();
        while self.flight.front().is_some_and(|m| m.0 <= self.tick) {
            let (_, to, from, st) = self.flight.pop_front().unwrap();
            if !self.linked(to, from) {
                continue;
            }
            let origin = self
                .nodes
                .iter()
                .position(|n| n.status.name == st.name)
                .unwrap();
            if origin == to || !self.seen.insert((to, origin, st.seq)) {
                continue;
            }
            let id = self.nodes[origin].id;
            self.nodes[to].view.apply(id, st.clone(), now);
            for &j in &self.edges[to] {
                self.flight.push_back((self.tick + 1, j, to, st.clone()));
            }
        }
        for n in &mut self.nodes {
            n.view.expire(now, TICK * (3 * INTERVAL_TICKS) as u32);
        }
    }

    /// Nodes reachable from `i` over live links.
    fn reachable(&self, i: usize) -> HashSet<PeerId> {
        let mut seen = HashSet::from([i]);
        let mut queue = VecDeque::from([i]);
        while let Some(x) = queue.pop_front() {
            for &y in &self.edges[x] {
                if self.linked(x, y) && seen.insert(y) {
                    queue.push_back(y);
                }
            }
        }
        seen.remove(&i);
        seen.into_iter().map(|j| self.nodes[j].id).collect()
    }

    fn converged(&self) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.alive)
            .all(|(i, n)| {
                let view: HashSet<PeerId> = n.view.peers().iter().map(|p| p.id).collect();
                view == self.reachable(i)
            })
    }

    fn run_until_converged(&mut self, what: &str) -> Duration {
        let start = self.tick;
        while !self.converged() {
            self.step();
            assert!(
                self.tick - start < 400,
                "{what}: no convergence in 100 simulated seconds"
            );
        }
        let took = TICK * (self.tick - start) as u32;
        eprintln!("{what}: views converged after {took:?} of simulated time");
        took
    }

    fn check_routes(&self) -> (u32, Duration) {
        let truth: HashMap<PeerId, &NodeStatus> =
            self.nodes.iter().map(|n| (n.id, &n.status)).collect();
        let (mut count, mut spent) = (0u32, Duration::ZERO);
        for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            let reach = self.reachable(i);
            let peers = n.view.peers();
            for m in 0..MODELS {
                let name = format!("model-{m}");
                let t = Instant::now();
                let route = candidates(&name, None, Some(&n.status), &peers, |_| false);
                spent += t.elapsed();
                count += 1;
                let mine = |t: &Target| match t {
                    Target::Local => Some(n.status.clone()),
                    Target::Peer(p) => reach.contains(p).then(|| (*truth.get(p).unwrap()).clone()),
                };
                let id = ContentId::of(&[m]);
                for c in &route {
                    let s = mine(&c.target)
                        .unwrap_or_else(|| panic!("node {i} routes {name} to an unreachable node"));
                    match c.reason {
                        Reason::Loaded => assert!(
                            s.loaded(&id).is_some_and(LoadedModel::has_slot),
                            "{name}: {}",
                            s.name
                        ),
                        Reason::OnDisk | Reason::Busy => assert!(s.find_on_disk(&name).is_some()),
                        Reason::Fetch => assert!(s.find_on_disk(&name).is_none()),
                    }
                }
                let pool: Vec<NodeStatus> = std::iter::once(n.status.clone())
                    .chain(reach.iter().map(|p| (*truth.get(p).unwrap()).clone()))
                    .collect();
                let loaded_somewhere = pool
                    .iter()
                    .any(|s| s.loaded(&id).is_some_and(LoadedModel::has_slot));
                let first = route.first().map(|c| c.reason);
                assert_eq!(
                    loaded_somewhere,
                    first == Some(Reason::Loaded),
                    "node {i}, {name}: {route:?}"
                );
                let all: Vec<&NodeStatus> = pool.iter().collect();
                let fetch = fetch_expected(&all, &name, id);
                assert_eq!(
                    fetch,
                    first == Some(Reason::Fetch),
                    "node {i}, {name}: {route:?}"
                );
            }
        }
        (count, spent)
    }
}

#[test]
fn two_hundred_nodes_join_split_heal_and_lose_members_with_valid_routes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let nodes: Vec<Node> = (0..N)
        .map(|i| Node {
            id: PeerId::random(),
            status: status(i, &mut rng),
            view: PoolView::default(),
            alive: false,
            group: (i % 2) as u8,
        })
        .collect();
    // A random mesh of degree ~6 that stays connected within each half (a ring per half),
    // plus random links across.
    let mut edges = vec![Vec::new(); N];
    let link = |a: usize, b: usize, edges: &mut Vec<Vec<usize>>| {
        if a != b && !edges[a].contains(&b) {
            edges[a].push(b);
            edges[b].push(a);
        }
    };
    for i in 0..N {
        link(i, (i + 2) % N, &mut edges);
        for _ in 0..2 {
            link(i, rng.below(N), &mut edges);
        }
    }
    let mut sim = Sim {
        nodes,
        edges,
        tick: 0,
        base: Instant::now(),
        partitioned: false,
        flight: VecDeque::new(),
        seen: HashSet::new(),
    };

    // Join: ten nodes per tick until all are up.
    for i in 0..N {
        sim.nodes[i].alive = true;
        if i % 10 == 9 {
            sim.step();
        }
    }
    sim.run_until_converged("200 nodes joined");
    let (count, spent) = sim.check_routes();
    eprintln!(
        "{count} route decisions over ~200-node views: {:.1} µs each",
        spent.as_secs_f64() * 1e6 / f64::from(count)
    );

    sim.partitioned = true;
    sim.run_until_converged("split into two halves");
    sim.check_routes();

    sim.partitioned = false;
    sim.run_until_converged("healed");
    sim.check_routes();

    for i in (0..N).step_by(10) {
        sim.nodes[i].alive = false;
    }
    sim.run_until_converged("a tenth of the nodes died");
    sim.check_routes();
}
