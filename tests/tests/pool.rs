//! Several real `rbee-node join` processes on 127.0.0.1, joined into one pool over real libp2p
//! sockets (bootstrap addresses; mDNS is off here, see scripts/test-mdns for namespaces):
//! requests reach the node that has the model, fail over when it dies, and a node without
//! the pool key is neither seen nor seeing.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use rbee_tests::{Member, NodeProcess, http, import_demo, pool_key, rbee};
use serde_json::{Value, json};

fn member(tmp: &Path, name: &str, key: &str, bootstrap: Option<&str>, extra: &[&str]) -> Member {
    Member::start(tmp, name, key, bootstrap, "", extra)
}

fn peer_names(node: &NodeProcess) -> Vec<String> {
    let v = node.get_json("/v1/pool");
    let mut names: Vec<String> = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Waits until `check` holds on the node's pool view, or fails with the view.
fn wait_for(node: &NodeProcess, what: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let v = node.get_json("/v1/pool");
        if check(&v) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what} did not happen within {secs}s; pool view: {v:#}\nlog:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn has_loaded(v: &Value, name: &str) -> bool {
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == name && !p["status"]["loaded"].as_array().unwrap().is_empty())
}

/// A greedy chat at `node`; returns (status, node that served it, content).
fn chat(node: &NodeProcess, stream: bool) -> (u16, String, String) {
    let body = json!({"model": "demo", "messages": [{"role": "user", "content": "Name a colour."}],
                      "max_tokens": 8, "temperature": 0, "stream": stream});
    let mut resp = http()
        .post(&node.url("/v1/chat/completions"))
        .send_json(body)
        .unwrap();
    let status = resp.status().as_u16();
    let served = resp
        .headers()
        .get("x-rbee-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.body_mut().read_to_string().unwrap();
    let content = if stream {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .inspect(|v| assert!(v.get("error").is_none(), "{v}"))
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    } else if status == 200 {
        let v: Value = serde_json::from_str(&text).unwrap();
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    } else {
        text
    };
    (status, served, content)
}

fn tokens_generated(node: &NodeProcess) -> u64 {
    let text = http()
        .get(&node.url("/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("rbee_tokens_generated_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rbee_tokens_generated_total in:\n{text}"))
}

#[test]
fn requests_reach_the_node_with_the_model_and_fail_over_when_it_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let (a_dir, b_dir, c_dir) = (
        tmp.path().join("node-a"),
        tmp.path().join("node-b"),
        tmp.path().join("node-c"),
    );
    // B and C have the model (B loads it at start); A has none.
    if import_demo(&b_dir, "demo").is_none() {
        return;
    }
    import_demo(&c_dir, "demo").unwrap();
    std::fs::create_dir_all(&a_dir).unwrap();
    let a = member(tmp.path(), "node-a", &key, None, &[]);
    let mut b = member(
        tmp.path(),
        "node-b",
        &key,
        Some(&a.p2p),
        &["--preload", "demo"],
    );
    let c = member(tmp.path(), "node-c", &key, Some(&a.p2p), &[]);

    let joined = wait_for(
        &a.node,
        "both peers in A's view with B's model loaded",
        30,
        |v| v["peers"].as_array().unwrap().len() == 2 && has_loaded(v, "node-b"),
    );
    eprintln!("pool of 3 formed and B's model visible at A after {joined:?}");
    assert_eq!(peer_names(&a.node), ["node-b", "node-c"]);
    // B and C learn about each other through A (gossip), not only about A.
    wait_for(&c.node, "C sees A and B", 30, |v| {
        v["peers"].as_array().unwrap().len() == 2
    });

    // A has no model: the request is served by B, which has it loaded, and the answer is
    // exactly what B gives when asked directly (greedy).
    let (status, served, via_a) = chat(&a.node, false);
    assert_eq!(status, 200, "{via_a}\nlog A:\n{}", a.node.log_text());
    assert_eq!(served, "node-b");
    let (_, served_direct, direct) = chat(&b.node, false);
    assert_eq!(served_direct, "node-b");
    assert_eq!(via_a, direct);
    assert!(!via_a.is_empty());
    // Tokens count where they were generated: on B (asked twice), not on A, which only
    // forwarded, so the pool view and /metrics tell a router the truth.
    assert_eq!(tokens_generated(&a.node), 0);
    assert!(tokens_generated(&b.node) >= 2, "B generated both answers");
    // Streaming through a peer: chunks arrive as server-sent events, same text.
    let (status, served, streamed) = chat(&a.node, true);
    assert_eq!((status, served.as_str()), (200, "node-b"));
    assert_eq!(streamed, direct);
    // The job API names the node too.
    let (job, _) = {
        let mut r = http()
            .post(&a.node.url("/v1/jobs"))
            .send_json(json!({"operation": "infer", "model": "demo", "prompt": "Hi", "max_tokens": 4, "temperature": 0}))
            .unwrap();
        (r.body_mut().read_json::<Value>().unwrap(), ())
    };
    let events = http()
        .get(&a.node.url(job["stream_url"].as_str().unwrap()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(events.contains("generating on node node-b"), "{events}");

    // B dies. The next request at A is served by C (which loads the model) at once: A
    // fails over before the first token, or already knows B is gone.
    b.node.child.kill().unwrap();
    b.node.child.wait().unwrap();
    let killed = Instant::now();
    let (status, served, after) = chat(&a.node, false);
    assert_eq!(status, 200, "{after}\nlog A:\n{}", a.node.log_text());
    assert_eq!(served, "node-c");
    assert_eq!(
        after, direct,
        "the same model gives the same greedy answer on C"
    );
    eprintln!(
        "request after killing B served by C {:?} after the kill",
        killed.elapsed()
    );
    assert!(killed.elapsed() < Duration::from_secs(30));
    wait_for(&a.node, "B leaves A's view", 10, |v| {
        v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "node-b")
    });
}

#[test]
fn a_node_without_the_pool_key_sees_nothing_and_is_seen_by_no_one() {
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let other_key = pool_key(tmp.path());
    assert_ne!(key, other_key);
    let a = member(tmp.path(), "node-a", &key, None, &[]);
    let b = member(tmp.path(), "node-b", &key, Some(&a.p2p), &[]);
    let outsider = member(tmp.path(), "outsider", &other_key, Some(&a.p2p), &[]);
    wait_for(&a.node, "A sees B", 30, |v| {
        v["peers"].as_array().unwrap().len() == 1
    });
    wait_for(&b.node, "B sees A", 30, |v| {
        v["peers"].as_array().unwrap().len() == 1
    });
    // Long enough for several status intervals and a bootstrap retry.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(peer_names(&a.node), ["node-b"]);
    assert_eq!(peer_names(&b.node), ["node-a"]);
    assert!(peer_names(&outsider.node).is_empty());
    let pools: Vec<Value> = [&a.node, &outsider.node]
        .iter()
        .map(|n| n.get_json("/v1/pool")["pool"].clone())
        .collect();
    assert_ne!(
        pools[0], pools[1],
        "different keys, different pool fingerprints"
    );
    // Both sides say why, instead of only "no known peers". With another key each side
    // reads noise, which can fail at once or only when the 20 s handshake timeout ends.
    let start = Instant::now();
    loop {
        let outsider_log = outsider.node.log_text();
        let a_log = a.node.log_text();
        let outsider_says = outsider_log.contains("most likely uses a different pool key");
        let a_says = a_log.contains("a node failed the pool handshake");
        if outsider_says && a_says {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no handshake warning (outsider: {outsider_says}, node-a: {a_says})\n\
             outsider log:\n{outsider_log}\nnode-a log:\n{a_log}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The outsider cannot use the pool's models either: a clear 404.
    let (status, _, body) = chat(&outsider.node, false);
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains(
            "no model `demo`: not on this node; none of the 0 peer(s) in the pool has it"
        ),
        "{body}"
    );
    assert!(body.contains("\"code\":\"model_not_found\""), "{body}");
}

#[test]
fn a_node_without_a_pool_key_runs_alone_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&tmp.path().join("solo"), &[]);
    let v = node.get_json("/v1/pool");
    assert!(v["pool"].is_null());
    assert!(v["message"].as_str().unwrap().contains("pool new"), "{v}");
    let out = rbee(&tmp.path().join("solo"), &["peers", "--help"]);
    assert!(out.status.success());
    let log = node.log_text();
    assert!(log.contains("runs alone"), "{log}");
}
