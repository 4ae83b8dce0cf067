//! Model sharing benchmark: pull throughput between nodes on loopback next to a raw TCP copy
//! of the same bytes in the same run, and pull time from two rate-limited sources vs one.
//!
//! `cargo run --release -p rbee-tests --example bench_share [-- rate_MBps [big_MiB [lan_Mbit]]]`
//!
//! Unlimited pulls and copies alternate over 3 rounds (best of each is printed), each pull
//! into a fresh node, for the demo GGUF and, when `big_MiB` > 0 (default 2048), a generated
//! GGUF of that size. The copies: a raw TCP copy (the reference) and a copy through the
//! same two cipher layers a pool connection has (pnet + noise), which shows what the
//! encryption alone costs. Then the rate-limited pulls, one source vs two.
//!
//! As root, and when `lan_Mbit` > 0 (default 2500, i.e. 2.5 GbE), the demo GGUF is also
//! copied and pulled across a link shaped like a home LAN: the source node runs in a new
//! network namespace joined to this one by a veth pair with `tc tbf` at that rate each
//! way (made here, removed afterwards).
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

/// The same copy through the two cipher layers every pool connection has — pnet with a
/// pool key, then noise — and nothing else: no multiplexer, no shard protocol, no hashing.
/// The gap between this and the raw copy is what the encryption the pool requires costs;
/// the gap between this and a pull is rbee's own overhead.
fn encrypted_tcp_copy(src: &Path, dst: &Path) -> Duration {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
    use libp2p::{identity::Keypair, noise};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let key = [7u8; 32];
        let start = Instant::now();
        let src = src.to_path_buf();
        let sender = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let s = rbee_pnet::handshake(key, tcp.compat()).await.unwrap();
            let noise = noise::Config::new(&Keypair::generate_ed25519()).unwrap();
            let (_, mut s) = noise.upgrade_outbound(s, "/noise").await.unwrap();
            let mut f = std::fs::File::open(src).unwrap();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
            s.close().await.unwrap();
        });
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let s = rbee_pnet::handshake(key, tcp.compat()).await.unwrap();
        let noise = noise::Config::new(&Keypair::generate_ed25519()).unwrap();
        let (_, mut s) = noise.upgrade_inbound(s, "/noise").await.unwrap();
        let mut out = std::fs::File::create(dst).unwrap();
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).unwrap();
        }
        out.sync_all().unwrap();
        sender.await.unwrap();
        start.elapsed()
    })
}

/// A network namespace joined to this one by a veth pair, each direction shaped to `mbit`
/// with `tc tbf`: a home LAN link between two machines. Removed on drop.
struct Link {
    ns: String,
    veth: String,
    /// This side's address, and the namespace's.
    here: &'static str,
    there: &'static str,
}

impl Link {
    fn new(mbit: u64) -> Result<Link, String> {
        let tag = std::process::id() % 100_000;
        let link = Link {
            ns: format!("rbee-bench-{tag}"),
            veth: format!("rbb{tag}a"),
            here: "10.231.77.1",
            there: "10.231.77.2",
        };
        let inner = format!("rbb{tag}b");
        let rate = format!("{mbit}mbit");
        let shape = |dev: &str| -> Vec<String> {
            [
                "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst", "1mb",
            ]
            .into_iter()
            .chain(["latency", "10ms"])
            .map(str::to_string)
            .collect()
        };
        let run = |args: Vec<String>| -> Result<(), String> {
            let out = std::process::Command::new(&args[0])
                .args(&args[1..])
                .output()
                .map_err(|e| format!("{}: {e}", args[0]))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`{}`: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let words = |t: &str| t.split(' ').map(str::to_string).collect::<Vec<_>>();
        let ns = &link.ns;
        let netns = |mut args: Vec<String>| {
            let mut all = words(&format!("ip netns exec {ns}"));
            all.append(&mut args);
            all
        };
        run(words(&format!("ip netns add {ns}")))?;
        run(words(&format!(
            "ip link add {} type veth peer name {inner}",
            link.veth
        )))?;
        run(words(&format!("ip link set {inner} netns {ns}")))?;
        run(words(&format!(
            "ip addr add {}/30 dev {}",
            link.here, link.veth
        )))?;
        run(words(&format!("ip link set {} up", link.veth)))?;
        run(netns(words(&format!(
            "ip addr add {}/30 dev {inner}",
            link.there
        ))))?;
        run(netns(words(&format!("ip link set {inner} up"))))?;
        run(netns(words("ip link set lo up")))?;
        run(shape(&link.veth))?;
        run(netns(shape(&inner)))?;
        Ok(link)
    }

    /// `program args` to run inside the namespace.
    fn command(&self, program: &Path) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `bench_share --send ADDR FILE`, run inside the link's namespace: the raw copy's sender.
fn send(addr: &str, file: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut f = std::fs::File::open(file).unwrap();
    std::io::copy(&mut f, &mut s).unwrap();
}

/// Raw copies and pulls of `model` across `link` (best of 3 alternating rounds): the source
/// node runs in the link's namespace, the puller here. (raw, pull).
fn across(link: &Link, key: &str, model: &Path) -> (Duration, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("source");
    std::fs::create_dir_all(&data).unwrap();
    import_model(&data, model, "m");
    let source_p2p = format!("/ip4/{}/tcp/{}", link.there, rbee_tests::free_port());
    let log = std::fs::File::create(tmp.path().join("source.log")).unwrap();
    let mut source = link.command(rbee_tests::rbee_node_bin());
    source
        .arg("--data-dir")
        .arg(&data)
        .args(["join", "--name", "source", "--pool-key", key, "--no-mdns"])
        .args(["--p2p-addr", &source_p2p, "--api-addr"])
        .arg(format!("127.0.0.1:{}", rbee_tests::free_port()))
        .env("XDG_CONFIG_HOME", data.join("no-config"))
        .stderr(log);
    let mut source = source.spawn().unwrap();
    let (mut raw, mut pulled) = (Duration::MAX, Duration::MAX);
    let me = std::env::current_exe().unwrap();
    for round in 0..3 {
        let listener = TcpListener::bind((link.here, 0)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut sender = link.command(&me);
        sender.arg("--send").arg(&addr).arg(model);
        let mut sender = sender.spawn().unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let start = Instant::now();
        let path = tmp.path().join(format!("copy-{round}"));
        let mut out = std::fs::File::create(&path).unwrap();
        std::io::copy(&mut conn, &mut out).unwrap();
        out.sync_all().unwrap();
        raw = raw.min(start.elapsed());
        assert!(sender.wait().unwrap().success());
        std::fs::remove_file(&path).unwrap();

        let dir = tmp.path().join(format!("puller-{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        let p2p = format!("/ip4/{}/tcp/{}", link.here, rbee_tests::free_port());
        let node = NodeProcess::start(
            &dir,
            &[
                "--name",
                "puller",
                "--pool-key",
                key,
                "--p2p-addr",
                &p2p,
                "--no-mdns",
                "--bootstrap",
                &source_p2p,
            ],
        );
        pulled = pulled.min(pull(&node, 1));
    }
    let _ = source.kill();
    let _ = source.wait();
    (raw, pulled)
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

/// Best of 3 alternating rounds of `model`'s copies and pulls (each pull into a fresh node).
struct Unlimited {
    raw: Duration,
    encrypted: Duration,
    pulled: Duration,
}

fn unlimited(key: &str, model: &Path) -> Unlimited {
    let pool = Pool::new(key);
    let (_a, a_p2p) = pool.node("a", None, "", Some(model));
    let mut best = Unlimited {
        raw: Duration::MAX,
        encrypted: Duration::MAX,
        pulled: Duration::MAX,
    };
    for round in 0..3 {
        let copy = pool.tmp.path().join(format!("copy-{round}"));
        best.raw = best.raw.min(raw_tcp_copy(model, &copy));
        std::fs::remove_file(&copy).unwrap();
        best.encrypted = best.encrypted.min(encrypted_tcp_copy(model, &copy));
        std::fs::remove_file(&copy).unwrap();
        let (c, _) = pool.node(&format!("c{round}"), Some(&a_p2p), "", None);
        best.pulled = best.pulled.min(pull(&c, 1));
    }
    best
}

/// The rows of one file's unlimited runs and its ratios.
fn report(label: &str, mb: f64, u: &Unlimited) {
    println!("{mb:.0} MB ({label}):");
    row("  raw TCP copy (reference)", u.raw, mb);
    row("  TCP copy through pnet + noise", u.encrypted, mb);
    row("  rbee pull, 1 source", u.pulled, mb);
    println!(
        "  pull / raw copy: {:.2}x; pull / encrypted copy: {:.2}x",
        u.raw.as_secs_f64() / u.pulled.as_secs_f64(),
        u.encrypted.as_secs_f64() / u.pulled.as_secs_f64()
    );
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
    if std::env::args().nth(1).as_deref() == Some("--send") {
        let rest: Vec<String> = args.skip(1).collect();
        return send(&rest[0], &rest[1]);
    }
    let rate_mb: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let big_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2048);
    let lan_mbit: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2500);
    let model = demo_model().expect("the demo model (scripts/fetch-demo-model)");
    let size = std::fs::metadata(&model).unwrap().len() as f64 / 1e6;
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());

    let demo = unlimited(&key, &model);
    let big = (big_mib > 0).then(|| {
        let path = tmp.path().join("big.gguf");
        write_random_gguf(&path, big_mib << 20);
        let mb = std::fs::metadata(&path).unwrap().len() as f64 / 1e6;
        (mb, unlimited(&key, &path))
    });

    let lan = (lan_mbit > 0).then(|| match Link::new(lan_mbit) {
        Ok(link) => Some(across(&link, &key, &model)),
        Err(e) => {
            eprintln!("skipping the LAN-shaped runs (they need root and `ip`, `tc`): {e}");
            None
        }
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
    report("the demo GGUF", size, &demo);
    if let Some((mb, big)) = &big {
        report("generated GGUF", *mb, big);
    }
    if let Some(Some((raw, pulled))) = lan {
        println!("{size:.0} MB across a {lan_mbit} Mbit/s link (veth + tc tbf, two namespaces):");
        row("  raw TCP copy (reference)", raw, size);
        row("  rbee pull, 1 source", pulled, size);
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
        "  two sources / one: {:.2}x faster",
        limited_one.as_secs_f64() / limited_two.as_secs_f64()
    );
}
