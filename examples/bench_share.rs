//! Model sharing benchmark: pull throughput between nodes on loopback next to a raw TCP copy
//! of the same bytes in the same run, and pull time from two rate-limited sources vs one.
//!
//! `cargo run --release -p rbee-tests --example bench_share [-- rate_MBps [big_MiB]]`
//!
//! Unlimited pulls and raw copies alternate over 3 rounds (best of each is printed), each
//! pull into a fresh node, for the demo GGUF and, when `big_MiB` > 0 (default 2048), a
//! generated GGUF of that size. Then the rate-limited pulls, one source vs two.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use rbee_tests::{
    Member, NodeProcess, demo_model, http, import_model, pool_key, write_random_gguf,
};
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
    fn new(key: &str) -> Pool {
        Pool {
            key: key.to_string(),
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// Starts node `name`, with `model` imported as `m` when given.
    fn node(
        &self,
        name: &str,
        bootstrap: Option<&str>,
        config: &str,
        model: Option<&Path>,
    ) -> (NodeProcess, String) {
        let m = Member::start(self.tmp.path(), name, &self.key, bootstrap, config, &[]);
        if let Some(model) = model {
            import_model(&m.data, model, "m");
        }
        (m.node, m.p2p)
    }
}

/// Pulls `m` on `node` once `peers` peers list it; returns the pull's duration.
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
        .send_json(json!({"operation": "model_pull", "model": "m"}))
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

/// Best of 3 alternating rounds of a raw copy and a pull of `model` (each into a fresh
/// node): (raw, pull).
fn unlimited(key: &str, model: &Path) -> (Duration, Duration) {
    let pool = Pool::new(key);
    let (_a, a_p2p) = pool.node("a", None, "", Some(model));
    let (mut raw, mut pulled) = (Duration::MAX, Duration::MAX);
    for round in 0..3 {
        raw = raw.min(raw_tcp_copy(
            model,
            &pool.tmp.path().join(format!("raw-{round}")),
        ));
        let (c, _) = pool.node(&format!("c{round}"), Some(&a_p2p), "", None);
        pulled = pulled.min(pull(&c, 1));
    }
    (raw, pulled)
}

fn row(label: &str, d: Duration, mb: f64) {
    println!(
        "{:<44}{:>10.2}{:>12.1}",
        label,
        d.as_secs_f64(),
        mb / d.as_secs_f64()
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rate_mb: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let big_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2048);
    let model = demo_model().expect("the demo model (scripts/fetch-demo-model)");
    let size = std::fs::metadata(&model).unwrap().len() as f64 / 1e6;
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());

    let (raw, one) = unlimited(&key, &model);
    let big = (big_mib > 0).then(|| {
        let path = tmp.path().join("big.gguf");
        write_random_gguf(&path, big_mib << 20);
        let mb = std::fs::metadata(&path).unwrap().len() as f64 / 1e6;
        (mb, unlimited(&key, &path))
    });

    // Rate-limited sources: one, then two.
    let limit = format!("max_upload_rate = {}\n", rate_mb * 1_000_000);
    let pool = Pool::new(&key);
    let (a, a_p2p) = pool.node("a", None, &limit, Some(&model));
    let (c, _) = pool.node("c", Some(&a_p2p), "", None);
    let limited_one = pull(&c, 1);
    drop((a, c));
    let pool = Pool::new(&key);
    let (a, a_p2p) = pool.node("a", None, &limit, Some(&model));
    let (b, _) = pool.node("b", Some(&a_p2p), &limit, Some(&model));
    let (c, _) = pool.node("c", Some(&a_p2p), "", None);
    let limited_two = pull(&c, 2);
    drop((a, b, c));

    println!("loopback, fsynced at the receiver; unlimited rows: best of 3 alternating rounds");
    println!("{:<44}{:>10}{:>12}", "", "seconds", "MB/s");
    println!("{size:.0} MB (the demo GGUF):");
    row("  raw TCP copy (reference)", raw, size);
    row("  rbee pull, 1 source", one, size);
    if let Some((mb, (raw, pulled))) = big {
        println!("{mb:.0} MB (generated GGUF):");
        row("  raw TCP copy (reference)", raw, mb);
        row("  rbee pull, 1 source", pulled, mb);
        println!(
            "  pull / raw copy: {:.2}x",
            raw.as_secs_f64() / pulled.as_secs_f64()
        );
    }
    println!("{size:.0} MB, rate-limited sources:");
    row(
        &format!("  rbee pull, 1 source at {rate_mb} MB/s"),
        limited_one,
        size,
    );
    row(
        &format!("  rbee pull, 2 sources at {rate_mb} MB/s each"),
        limited_two,
        size,
    );
    println!(
        "demo pull / raw copy: {:.2}x; two sources / one: {:.2}x faster",
        raw.as_secs_f64() / one.as_secs_f64(),
        limited_one.as_secs_f64() / limited_two.as_secs_f64()
    );
}
