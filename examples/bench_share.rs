//! Model sharing benchmark: pull throughput between nodes on loopback next to a raw TCP copy
//! of the same bytes in the same run, and pull time from two rate-limited sources vs one.
//!
//! `cargo run --release -p rbee-tests --example bench_share [-- rate_MBps]`
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use rbee_tests::{Member, NodeProcess, demo_model, http, import_demo, pool_key};
use serde_json::{Value, json};

/// Sends the file over a loopback socket into a new file (fsynced), like a pull must.
fn raw_tcp_copy(src: &Path, dst: &Path) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let src = src.to_path_buf();
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut f = std::fs::File::open(src).unwrap();
        std::io::copy(&mut f, &mut s).unwrap();
    });
    let (mut conn, _) = listener.accept().unwrap();
    let mut out = std::fs::File::create(dst).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).unwrap();
    }
    out.sync_all().unwrap();
    sender.join().unwrap();
    start.elapsed()
}

struct Pool {
    key: String,
    tmp: tempfile::TempDir,
}

impl Pool {
    fn node(
        &self,
        name: &str,
        bootstrap: Option<&str>,
        config: &str,
        with_model: bool,
    ) -> (NodeProcess, String) {
        if with_model {
            import_demo(&self.tmp.path().join(name), "demo").unwrap();
        }
        let m = Member::start(self.tmp.path(), name, &self.key, bootstrap, config, &[]);
        (m.node, m.p2p)
    }
}

/// Pulls `demo` on `node` once `peers` peers list it; returns the pull's duration.
fn pull(node: &NodeProcess, peers: usize) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = node.get_json("/v1/pool");
        let holding = v["peers"].as_array().unwrap().iter().filter(|p| {
            p["status"]["on_disk"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
        });
        if holding.count() >= peers {
            break;
        }
        assert!(Instant::now() < deadline, "peers never listed the model");
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    let v: Value = http()
        .post(&node.url("/v1/jobs"))
        .send_json(json!({"operation": "model_pull", "model": "demo"}))
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let text = http()
        .get(&node.url(v["stream_url"].as_str().unwrap()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(text.contains("\"type\":\"done\""), "{text}");
    start.elapsed()
}

fn main() {
    let rate_mb: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let model = demo_model().expect("the demo model (scripts/fetch-demo-model)");
    let size = std::fs::metadata(&model).unwrap().len() as f64 / 1e6;
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());

    let raw = raw_tcp_copy(&model, &tmp.path().join("raw-copy"));

    // Unlimited: one source, one puller.
    let pool = Pool {
        key: key.clone(),
        tmp: tempfile::tempdir().unwrap(),
    };
    let (a, a_p2p) = pool.node("a", None, "", true);
    let (c, _) = pool.node("c", Some(&a_p2p), "", false);
    let one = pull(&c, 1);
    drop((a, c));

    // Rate-limited sources: one, then two.
    let limit = format!("max_upload_rate = {}\n", rate_mb * 1_000_000);
    let pool = Pool {
        key: key.clone(),
        tmp: tempfile::tempdir().unwrap(),
    };
    let (a, a_p2p) = pool.node("a", None, &limit, true);
    let (c, _) = pool.node("c", Some(&a_p2p), "", false);
    let limited_one = pull(&c, 1);
    drop((a, c));
    let pool = Pool {
        key,
        tmp: tempfile::tempdir().unwrap(),
    };
    let (a, a_p2p) = pool.node("a", None, &limit, true);
    let (b, _) = pool.node("b", Some(&a_p2p), &limit, true);
    let (c, _) = pool.node("c", Some(&a_p2p), "", false);
    let limited_two = pull(&c, 2);
    drop((a, b, c));

    let mbps = |d: Duration| size / d.as_secs_f64();
    println!("{size:.0} MB (the demo GGUF), loopback, fsynced at the receiver");
    println!("{:<44}{:>10}{:>12}", "", "seconds", "MB/s");
    println!(
        "{:<44}{:>10.2}{:>12.1}",
        "raw TCP copy (reference)",
        raw.as_secs_f64(),
        mbps(raw)
    );
    println!(
        "{:<44}{:>10.2}{:>12.1}",
        "rbee pull, 1 source",
        one.as_secs_f64(),
        mbps(one)
    );
    println!(
        "{:<44}{:>10.2}{:>12.1}",
        format!("rbee pull, 1 source at {rate_mb} MB/s"),
        limited_one.as_secs_f64(),
        mbps(limited_one)
    );
    println!(
        "{:<44}{:>10.2}{:>12.1}",
        format!("rbee pull, 2 sources at {rate_mb} MB/s each"),
        limited_two.as_secs_f64(),
        mbps(limited_two)
    );
    println!(
        "pull / raw copy: {:.2}x; two sources / one: {:.2}x faster",
        mbps(one) / mbps(raw),
        limited_one.as_secs_f64() / limited_two.as_secs_f64()
    );
}
