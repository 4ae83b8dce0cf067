//! Pool benchmark: time to first token through a peer vs. on the node itself, and
//! join-to-routable time, with real node processes on loopback.
//!
//! `cargo run --release -p rbee-tests --example bench_pool [-- requests]`
//!
//! Node B has the demo model loaded; node A has no model and forwards to B over
//! `/rbee/infer/1`. The same streamed request (greedy, 2 tokens) is sent alternately to B
//! directly and to A; time to first token is measured at the HTTP client.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use rbee_tests::{NodeProcess, free_port, http, import_demo, pool_key};
use serde_json::{Value, json};

fn ttft(node: &NodeProcess) -> Duration {
    let body = json!({"model": "demo", "messages": [{"role": "user", "content": "Say hi."}],
                      "max_tokens": 2, "temperature": 0, "stream": true});
    let start = Instant::now();
    let resp = http()
        .post(&node.url("/v1/chat/completions"))
        .send_json(body)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut line = String::new();
    let mut first = None;
    while reader.read_line(&mut line).unwrap() > 0 {
        if let Some(d) = line.trim_end().strip_prefix("data: ")
            && d != "[DONE]"
        {
            let v: Value = serde_json::from_str(d).unwrap();
            if first.is_none()
                && v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            {
                first = Some(start.elapsed());
            }
        }
        line.clear();
    }
    first.expect("no token came back")
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn main() {
    let requests: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::tempdir().unwrap();
    let key = &pool_key(tmp.path());
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    import_demo(&b_dir, "demo").expect("the demo model (scripts/fetch-demo-model)");
    std::fs::create_dir_all(&a_dir).unwrap();
    let a_p2p = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let a = NodeProcess::start(
        &a_dir,
        &[
            "--name",
            "a",
            "--pool-key",
            key,
            "--p2p-addr",
            &a_p2p,
            "--no-mdns",
        ],
    );

    // Join-to-routable: from starting B's process until A's view lists B with the model.
    let joined = Instant::now();
    let b_p2p = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let b = NodeProcess::start(
        &b_dir,
        &[
            "--name",
            "b",
            "--pool-key",
            key,
            "--p2p-addr",
            &b_p2p,
            "--no-mdns",
            "--bootstrap",
            &a_p2p,
        ],
    );
    let up = joined.elapsed();
    loop {
        let v = a.get_json("/v1/pool");
        let routable = v["peers"].as_array().unwrap().iter().any(|p| {
            p["name"] == "b"
                && p["status"]["on_disk"]
                    .as_array()
                    .is_some_and(|d| !d.is_empty())
        });
        if routable {
            break;
        }
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "B never became routable"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let routable = joined.elapsed();

    // Warm up: load the model on B, and the connection A→B.
    ttft(&b);
    ttft(&a);
    let (mut local, mut peer) = (Vec::new(), Vec::new());
    for _ in 0..requests {
        local.push(ttft(&b));
        peer.push(ttft(&a));
    }
    // Each request through A is paired with the request to B just before it: the median of
    // those differences is steadier than the difference of two medians.
    let mut paired: Vec<f64> = local
        .iter()
        .zip(&peer)
        .map(|(l, p)| (p.as_secs_f64() - l.as_secs_f64()) * 1000.0)
        .collect();
    paired.sort_by(f64::total_cmp);
    let paired_median = paired[paired.len() / 2];
    let (l50, l99, p50, p99) = (
        pct(&mut local, 0.5),
        pct(&mut local, 0.99),
        pct(&mut peer, 0.5),
        pct(&mut peer, 0.99),
    );
    println!(
        "join-to-routable: {:.0} ms (process start to API up {:.0} ms)",
        routable.as_secs_f64() * 1000.0,
        up.as_secs_f64() * 1000.0
    );
    println!("time to first token over {requests} requests, ms:");
    println!("{:<28}{:>10}{:>10}", "", "p50", "p99");
    println!("{:<28}{:>10.2}{:>10.2}", "on the node (B)", l50, l99);
    println!(
        "{:<28}{:>10.2}{:>10.2}",
        "through a peer (A -> B)", p50, p99
    );
    println!(
        "{:<28}{:>10.2}{:>10.2}",
        "added by the pool",
        p50 - l50,
        p99 - l99
    );
    println!("median of paired differences: {paired_median:.2} ms");
}
