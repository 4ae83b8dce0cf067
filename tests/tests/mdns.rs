//! mDNS discovery between real node processes in separate network namespaces joined by a
//! bridge (made here, removed afterwards). Needs root and `ip`; elsewhere it prints why it
//! is skipped. No bootstrap addresses: the nodes find each other by multicast alone; then a
//! chat request is routed across the bridge and a model is pulled across it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbee_tests::{demo_model, http, import_demo, rbee, rbee_node_bin};
use serde_json::{Value, json};

const TOKEN: &str = "mdns-test-token";

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    assert!(ip(args), "ip {}", args.join(" "));
}

/// Namespaces, a bridge and node processes; all removed on drop.
struct Lab {
    tag: u32,
    subnet: String,
    namespaces: Vec<String>,
    nodes: Vec<Child>,
}

impl Lab {
    fn new(count: u32) -> Option<Lab> {
        let tag = std::process::id() % 10_000;
        let mut lab = Lab {
            tag,
            subnet: format!("10.77.{}", tag % 250),
            namespaces: Vec::new(),
            nodes: Vec::new(),
        };
        let bridge = lab.bridge();
        if !ip(&[
            "link",
            "add",
            &bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]) {
            return None;
        }
        must(&[
            "addr",
            "add",
            &format!("{}.254/24", lab.subnet),
            "dev",
            &bridge,
        ]);
        must(&["link", "set", &bridge, "up"]);
        for i in 1..=count {
            let ns = format!("rbee-{tag}-{i}");
            let (host, inner) = (format!("rb{tag}h{i}"), format!("rb{tag}n{i}"));
            must(&["netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            must(&["link", "add", &host, "type", "veth", "peer", "name", &inner]);
            must(&["link", "set", &inner, "netns", &ns]);
            must(&["link", "set", &host, "master", &bridge]);
            must(&["link", "set", &host, "up"]);
            let addr = format!("{}.{i}/24", lab.subnet);
            for cmd in [
                vec!["addr", "add", addr.as_str(), "dev", inner.as_str()],
                vec!["link", "set", inner.as_str(), "up"],
                vec!["link", "set", "lo", "up"],
                vec!["route", "add", "224.0.0.0/4", "dev", inner.as_str()],
            ] {
                let mut full = vec!["-n", ns.as_str()];
                full.extend(cmd);
                must(&full);
            }
        }
        Some(lab)
    }

    fn bridge(&self) -> String {
        format!("rbee-br{}", self.tag)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}.{i}", self.subnet)
    }

    fn start(&mut self, i: usize, data: &Path, key: &str, log: &Path) {
        let api = format!("{}:7835", self.addr(i));
        let p2p = format!("/ip4/{}/tcp/7836", self.addr(i));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[i - 1]])
            .arg(rbee_node_bin())
            .arg("--data-dir")
            .arg(data)
            .args([
                "join",
                "--api-addr",
                &api,
                "--api-token",
                TOKEN,
                "--pool-key",
                key,
            ])
            .args(["--p2p-addr", &p2p, "--name", &format!("lan-{i}")])
            .env(
                "RUST_LOG",
                std::env::var("RBEE_TEST_LOG")
                    .unwrap_or_else(|_| "info,rbee_node::pull::pool=debug,rbee_node::peer::shards=debug,libp2p_stream=debug".into()),
            )
            .env("XDG_CONFIG_HOME", data.join("no-config"))
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        self.nodes.push(child);
    }

    fn get(&self, i: usize, path: &str) -> Option<Value> {
        http()
            .get(&format!("http://{}:7835{path}", self.addr(i)))
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .ok()?
            .body_mut()
            .read_json()
            .ok()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            ip(&["netns", "del", ns]);
        }
        ip(&["link", "del", &self.bridge()]);
    }
}

#[test]
fn nodes_in_separate_namespaces_find_each_other_by_mdns() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root {
        eprintln!("SKIPPED: mDNS test needs root to make network namespaces");
        return;
    }
    let Some(mut lab) = Lab::new(3) else {
        eprintln!("SKIPPED: cannot create a bridge here (ip link add … type bridge failed)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let key = String::from_utf8(rbee(&tmp.path().join("k"), &["pool", "new"]).stdout).unwrap();
    let have_model = import_demo(&tmp.path().join("n2"), "demo").is_some();
    for i in 1..=3 {
        let data = tmp.path().join(format!("n{i}"));
        std::fs::create_dir_all(&data).unwrap();
        lab.start(i, &data, key.trim(), &tmp.path().join(format!("n{i}.log")));
    }
    let start = Instant::now();
    let logs = || {
        (1..=3)
            .map(|i| {
                std::fs::read_to_string(tmp.path().join(format!("n{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    loop {
        let counts: Vec<usize> = (1..=3)
            .map(|i| {
                lab.get(i, "/v1/pool")
                    .map_or(0, |v| v["peers"].as_array().map_or(0, Vec::len))
            })
            .collect();
        if counts.iter().all(|c| *c == 2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "views {counts:?} after 60 s; logs:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "3 nodes in 3 namespaces found each other by mDNS in {:?}",
        start.elapsed()
    );
    if !have_model {
        return;
    }
    // A request at node 1 runs on node 2, the only one with the model.
    let mut resp = http()
        .post(&format!("http://{}:7835/v1/chat/completions", lab.addr(1)))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send_json(json!({"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{}", logs());
    assert_eq!(resp.headers().get("x-rbee-node").unwrap(), "lan-2");
    let v: Value = resp.body_mut().read_json().unwrap();
    assert!(v["choices"][0]["message"]["content"].is_string());

    // Node 3 pulls the model from node 2 across the bridge: a real interface, the peer
    // found by multicast alone. The bytes must be the original's.
    let auth = format!("Bearer {TOKEN}");
    let pull = || {
        let job: Value = http()
            .post(&format!("http://{}:7835/v1/jobs", lab.addr(3)))
            .header("Authorization", &auth)
            .send_json(json!({"operation": "model_pull", "model": "demo"}))
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let url = job["stream_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{job}"));
        let events = http()
            .get(&format!("http://{}:7835{url}", lab.addr(3)))
            .header("Authorization", &auth)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let last: Value = events
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .next_back()
            .unwrap_or_else(|| panic!("no events: {events}"));
        (events, last)
    };
    // A failed pull keeps its verified shards and says to run it again; this once, do so
    // (the first attempt failed once in CI with its only source dropped after 3 shards;
    // the logs below are at debug for the pull to show why if it happens again).
    let (mut events, mut done) = pull();
    if done["type"] != "done" {
        eprintln!("first pull failed, resuming it: {done}\n{}", logs());
        (events, done) = pull();
    }
    assert_eq!(done["type"], "done", "{events}\n{}", logs());
    assert_eq!(done["result"]["source"], "pool", "{done}");
    let cid = done["result"]["content_id"].as_str().unwrap();
    let view = tmp.path().join("n3").join("views").join(cid);
    let pulled = std::fs::read_dir(&view)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let hash = |p: &Path| {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(p).unwrap()).unwrap();
        h.finalize()
    };
    assert_eq!(hash(&pulled), hash(&demo_model().unwrap()));
}
