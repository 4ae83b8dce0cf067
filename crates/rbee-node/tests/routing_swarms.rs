//! Real swarms in one process over libp2p's memory transport (with pnet, noise and yamux, as
//! between nodes): membership by key, the gossiped view, streams, Kademlia provider records,
//! and a 40-node pool that forms, splits, heals and loses members while every route stays
//! valid (the 100+ node check is the simulation in `sim.rs`).
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use rbee_net::{Client, Multiaddr, NetConfig, PeerId, PoolKey, Transport};
use rbee_node::route::{Reason, Target, candidates};
use rbee_proto::ContentId;
use rbee_proto::pool::{DeviceStatus, DiskModel, LoadedModel, NodeStatus};

mod common;
use common::fetch_expected;

fn addr(n: u64) -> Multiaddr {
    format!("/memory/{n}").parse().unwrap()
}

/// A process-unique block of memory-transport ports per test.
fn ports(count: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = 10_000 + u64::from(std::process::id() % 1000) * 100_000;
    base + NEXT.fetch_add(count, Ordering::Relaxed)
}

fn node(key: PoolKey, port: u64, bootstrap: Option<u64>, interval_ms: u64) -> Client {
    let mut config = NetConfig::new(libp2p_keypair(), key);
    config.transport = Transport::Memory;
    config.mdns = false;
    config.listen = vec![addr(port)];
    config.bootstrap = bootstrap.map(addr).into_iter().collect();
    config.status_interval = Duration::from_millis(interval_ms);
    config.max_dialed_peers = 8;
    let (client, _events) = rbee_net::spawn(config).unwrap();
    client
}

fn libp2p_keypair() -> libp2p::identity::Keypair {
    libp2p::identity::Keypair::generate_ed25519()
}

fn status(name: &str, loaded: &[u8], disk: &[u8], free: u64) -> NodeStatus {
    let id = |m: &u8| ContentId::of(&[*m]);
    NodeStatus {
        name: name.into(),
        api_addr: None,
        seq: 0,
        devices: vec![DeviceStatus {
            name: "cpu".into(),
            budget_bytes: free + 1000,
            used_bytes: 1000,
        }],
        loaded: loaded
            .iter()
            .map(|m| LoadedModel {
                content_id: id(m),
                device: "cpu".into(),
                queue: 0,
                queue_capacity: 4,
                busy: false,
                live: 0,
                max_live: 8,
            })
            .collect(),
        on_disk: disk
            .iter()
            .map(|m| DiskModel {
                content_id: id(m),
                names: vec![format!("model-{m}")],
                source: None,
                size: 100,
                shared: true,
            })
            .collect(),
        tokens_per_sec: 0.0,
        presets: Vec::new(),
    }
}

async fn wait_until(what: &str, secs: u64, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_each_other_outsiders_see_nothing_and_streams_work() {
    let key = PoolKey::generate().unwrap();
    let p = ports(4);
    let a = node(key, p, None, 200);
    let b = node(key, p + 1, Some(p), 200);
    let c = node(key, p + 2, Some(p), 200);
    let outsider = node(PoolKey::generate().unwrap(), p + 3, Some(p), 200);
    for (client, name) in [(&a, "a"), (&b, "b"), (&c, "c"), (&outsider, "x")] {
        client
            .publish_status(status(name, &[], &[1], 5000))
            .await
            .unwrap();
    }
    let took = wait_until("a, b and c see each other", 20, || {
        [&a, &b, &c].iter().all(|n| n.peers().len() == 2)
    })
    .await;
    eprintln!("3 members converged in {took:?}");
    // b learned about c through gossip although both only bootstrapped to a.
    let names: Vec<String> = b.peers().iter().map(|p| p.status.name.clone()).collect();
    assert_eq!(names, ["a", "c"]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(outsider.peers().is_empty());
    assert!(a.peers().iter().all(|p| p.status.name != "x"));

    // A stream protocol both speak: echo over a real yamux stream.
    let mut incoming = b.accept("/rbee/test-echo/1").unwrap();
    tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.close().await.unwrap();
        }
    });
    let mut s = a
        .open_stream(b.local_peer_id(), "/rbee/test-echo/1")
        .await
        .unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello");
    // A version the peer does not speak is refused cleanly, naming the protocol.
    let err = a
        .open_stream(b.local_peer_id(), "/rbee/test-echo/2")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/rbee/test-echo/2"), "{err}");
    // The outsider cannot open anything to a member.
    assert!(
        outsider
            .open_stream(a.local_peer_id(), "/rbee/test-echo/1")
            .await
            .is_err()
    );

    // A member that stops leaves every view.
    let c_id = c.local_peer_id();
    drop(c);
    let gone = wait_until("c leaves the views", 10, || {
        a.peers().iter().all(|p| p.id != c_id) && b.peers().iter().all(|p| p.id != c_id)
    })
    .await;
    eprintln!("a stopped member left the views after {gone:?}");
}

/// Ground truth for the routing check: what each node really has.
struct Truth {
    statuses: HashMap<PeerId, NodeStatus>,
}

impl Truth {
    fn loaded_anywhere(&self, m: u8) -> bool {
        let id = ContentId::of(&[m]);
        self.statuses
            .values()
            .any(|s| s.loaded(&id).is_some_and(LoadedModel::has_slot))
    }

    fn valid(
        &self,
        from: PeerId,
        m: u8,
        route: &[rbee_node::route::Candidate],
    ) -> Result<(), String> {
        let id = ContentId::of(&[m]);
        let Some(first) = route.first() else {
            return Err("no candidate at all".into());
        };
        let holder = |t: &Target| match t {
            Target::Local => self.statuses.get(&from),
            Target::Peer(p) => self.statuses.get(p),
        };
        for c in route {
            let s = holder(&c.target).ok_or("a candidate that is not in the pool")?;
            match c.reason {
                Reason::Loaded if s.loaded(&id).is_none_or(|l| !l.has_slot()) => {
                    return Err(format!("{} claimed loaded but is not", s.name));
                }
                Reason::OnDisk | Reason::Busy
                    if s.find_on_disk(&format!("model-{m}")).is_none() =>
                {
                    return Err(format!("{} claimed to have it but does not", s.name));
                }
                Reason::Fetch if s.find_on_disk(&format!("model-{m}")).is_some() => {
                    return Err(format!("{} asked to fetch what it holds", s.name));
                }
                _ => {}
            }
        }
        if self.loaded_anywhere(m) && first.reason != Reason::Loaded {
            return Err(format!(
                "model {m} is loaded somewhere but the route starts with {:?}",
                first.reason
            ));
        }
        let all: Vec<&NodeStatus> = self.statuses.values().collect();
        let fetch = fetch_expected(&all, &format!("model-{m}"), id);
        if fetch != (first.reason == Reason::Fetch) {
            return Err(format!("fetch decision wrong for model {m}"));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_real_swarms_form_split_heal_and_shrink_with_valid_routes() {
    // 40 real swarms: every copy of every gossiped status is signature-checked, and 100
    // swarms in one process on two shared cores fall behind (see docs/BENCHMARKS.md); the
    // 200-node simulation below checks the view and routing logic at scale.
    const N: usize = 40;
    const INTERVAL_MS: u64 = 2000;
    let key = PoolKey::generate().unwrap();
    let p = ports(N as u64);
    // Two halves, each bootstrapping to its own first node: a partition from the start.
    let started = Instant::now();
    let mut nodes = Vec::new();
    let mut truth = Truth {
        statuses: HashMap::new(),
    };
    for i in 0..N {
        let boot = if i < N / 2 { 0 } else { N / 2 };
        let client = node(
            key,
            p + i as u64,
            (i != boot).then_some(p + boot as u64),
            INTERVAL_MS,
        );
        // Models 0..20: node i has model i%20 on disk, every 7th node has it loaded; model
        // 99 exists nowhere.
        let m = (i % 20) as u8;
        let loaded: &[u8] = if i % 7 == 0 { &[m] } else { &[] };
        let st = status(&format!("n{i:03}"), loaded, &[m], (i as u64 * 37) % 1000);
        client.publish_status(st.clone()).await.unwrap();
        truth.statuses.insert(client.local_peer_id(), st);
        nodes.push(client);
    }
    let split = wait_until("each half converges on its own", 60, || {
        nodes.iter().all(|n| n.peers().len() == N / 2 - 1)
    })
    .await;
    eprintln!(
        "two partitions of {} converged {split:?} after the last node started ({:?} in all)",
        N / 2,
        started.elapsed()
    );
    // Still partitioned: nobody sees across. (Only that is asserted: under load a status
    // can arrive late enough for a peer to drop out of a view for a moment, which is not
    // what this checks.)
    tokio::time::sleep(Duration::from_millis(2 * INTERVAL_MS)).await;
    let first_half: HashSet<PeerId> = nodes[..N / 2].iter().map(|n| n.local_peer_id()).collect();
    for (i, n) in nodes.iter().enumerate() {
        let mine = i < N / 2;
        let across = n
            .peers()
            .iter()
            .filter(|p| first_half.contains(&p.id) != mine)
            .count();
        assert_eq!(across, 0, "node {i} sees {across} peers of the other half");
    }

    // Heal: one link between the halves; the whole pool converges.
    nodes[0].dial(addr(p + (N / 2) as u64)).await.unwrap();
    let healed = wait_until("the healed pool converges", 60, || {
        nodes.iter().all(|n| n.peers().len() == N - 1)
    })
    .await;
    eprintln!("healed: {N} nodes see each other {healed:?} after one link joined the halves");

    // Every node routes every model validly from its own view.
    let mut decisions = 0u32;
    let mut spent = Duration::ZERO;
    for (i, n) in nodes.iter().enumerate() {
        let me = n.local_peer_id();
        let local = truth.statuses.get(&me).unwrap().clone();
        let peers = n.peers();
        for m in (0..20u8).chain([99]) {
            let t = Instant::now();
            let route = candidates(&format!("model-{m}"), None, Some(&local), &peers, |_| false);
            spent += t.elapsed();
            decisions += 1;
            if let Err(e) = truth.valid(me, m, &route) {
                panic!("node {i}, model {m}: {e}: {route:?}");
            }
        }
    }
    eprintln!(
        "{decisions} route decisions over a {N}-node view: {:.1} µs each",
        spent.as_secs_f64() * 1e6 / f64::from(decisions)
    );

    // Ten nodes leave; the rest drop them from their views.
    let leaving: Vec<PeerId> = nodes.drain(N - 10..).map(|c| c.local_peer_id()).collect();
    for id in &leaving {
        truth.statuses.remove(id);
    }
    let shrunk = wait_until("the leavers leave every view", 30, || {
        nodes.iter().all(|n| {
            n.peers().iter().all(|p| !leaving.contains(&p.id)) && n.peers().len() == N - 11
        })
    })
    .await;
    eprintln!(
        "10 nodes left; the other {} views agreed after {shrunk:?}",
        N - 10
    );
    for n in &nodes {
        let me = n.local_peer_id();
        let local = truth.statuses.get(&me).unwrap().clone();
        for m in 0..20u8 {
            let route = candidates(
                &format!("model-{m}"),
                None,
                Some(&local),
                &n.peers(),
                |_| false,
            );
            truth.valid(me, m, &route).unwrap();
        }
    }
}

/// A node announces the models it stores as Kademlia provider records; a node that reached
/// the pool through a chain of bootstraps finds who holds a model by its content id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_records_name_the_nodes_that_hold_a_model() {
    let key = PoolKey::generate().unwrap();
    let p = ports(4);
    let a = node(key, p, None, 500);
    let b = node(key, p + 1, Some(p), 500);
    let c = node(key, p + 2, Some(p + 1), 500);
    let d = node(key, p + 3, Some(p + 2), 500);
    for (n, name) in [(&b, "b"), (&c, "c"), (&d, "d")] {
        n.publish_status(status(name, &[], &[], 10)).await.unwrap();
    }
    a.publish_status(status("a", &[], &[7], 10)).await.unwrap();
    wait_until("the chain forms one pool", 30, || {
        [&a, &b, &c, &d].iter().all(|n| n.peers().len() == 3)
    })
    .await;
    let model = ContentId::of(&[7]);
    let start = Instant::now();
    let mut found = Vec::new();
    while start.elapsed() < Duration::from_secs(20) {
        found = d
            .find_providers(model, Duration::from_secs(5))
            .await
            .unwrap();
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(found, vec![a.local_peer_id()]);
    eprintln!(
        "provider of a model found from the far end in {:?}",
        start.elapsed()
    );
    assert!(
        d.find_providers(ContentId::of(&[8]), Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty()
    );
}
