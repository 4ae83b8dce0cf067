//! Model sharing between real node processes on loopback: a model stored on two nodes is
//! pulled by a third from both at once, verified; a source that dies mid-pull, a source that
//! sends corrupt bytes (and is left out of later pulls), and a puller killed mid-pull and
//! restarted all end in a complete, byte-identical model.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rbee_tests::{
    Member, NodeProcess, demo_model, http, import_demo, import_model, pool_key, rbee,
    write_random_gguf,
};
use serde_json::{Value, json};

/// A node in the pool; `config` is written as its config file (TOML).
fn member(tmp: &Path, name: &str, key: &str, bootstrap: Option<&str>, config: &str) -> Member {
    Member::start(tmp, name, key, bootstrap, config, &[])
}

fn sees(node: &NodeProcess, peers: usize) {
    rbee_tests::wait_for_peers(node, peers);
}

/// Starts a `model_pull` job; returns its stream URL.
fn start_pull(node: &NodeProcess, model: &str) -> String {
    let v: Value = http()
        .post(&node.url("/v1/jobs"))
        .send_json(json!({"operation": "model_pull", "model": model}))
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    v["stream_url"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_string()
}

/// Follows a job to its end: (all event data lines, the final event).
fn follow(node: &NodeProcess, url: &str) -> (String, Value) {
    let text = http()
        .get(&node.url(url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let last = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .next_back()
        .unwrap();
    (text, last)
}

/// BLAKE3 of a whole file.
fn blake3_file(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).unwrap())
        .unwrap();
    hasher.finalize().to_hex().to_string()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The one file of a single-file model's view.
fn pulled_file(data: &Path, cid: &str) -> PathBuf {
    let mut files = std::fs::read_dir(data.join("views").join(cid)).unwrap();
    files.next().unwrap().unwrap().path()
}

/// Sends `sig` (`-STOP`, `-CONT`) to a node's process. A stopped node is a suspended
/// machine: its connections stay open and it answers nothing.
fn signal(node: &NodeProcess, sig: &str) {
    let pid = node.child.id().to_string();
    let status = Command::new("kill").args([sig, &pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// A pull job's end: `done`, with the model in `data` byte-identical to `model`.
fn assert_pulled(data: &Path, model: &Path, events: &str, last: &Value, log: &str) {
    assert_eq!(last["type"], "done", "{events}\n{log}");
    let cid = last["result"]["content_id"].as_str().unwrap();
    assert_eq!(sha256(&pulled_file(data, cid)), sha256(model));
}

fn served_shards(node: &NodeProcess) -> u64 {
    let text = http()
        .get(&node.url("/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("rbee_shards_served_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn a_model_on_two_nodes_is_pulled_from_both_verified_and_identical() {
    let Some(model) = demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let a = member(tmp.path(), "src-a", &key, None, "");
    let b = member(tmp.path(), "src-b", &key, Some(&a.p2p), "");
    import_demo(&a.data, "demo").unwrap();
    import_demo(&b.data, "demo").unwrap();
    let c = member(tmp.path(), "puller", &key, Some(&a.p2p), "");
    sees(&c.node, 2);
    let started = Instant::now();
    let (events, last) = follow(&c.node, &start_pull(&c.node, "demo"));
    assert_eq!(last["type"], "done", "{events}\n{}", c.node.log_text());
    eprintln!("pulled 253 MB from two peers in {:?}", started.elapsed());
    let result = &last["result"];
    assert_eq!(result["source"], "pool");
    assert!(events.contains("from 2 peer(s)"), "{events}");
    assert!(events.contains("\"type\":\"progress\""), "{events}");
    // Progress names the peers the pull fetches from.
    assert!(
        events.contains("\"peers\":[\"src-a\",\"src-b\"]"),
        "{events}"
    );
    // Same content id (BLAKE3 over the manifest of shard hashes) and same sha256 as the source.
    let cid = result["content_id"].as_str().unwrap();
    let list = rbee(&a.data, &["models", "ls", "--json"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(cid));
    assert_eq!(sha256(&pulled_file(&c.data, cid)), sha256(&model));
    // Both sources served shards.
    let (sa, sb) = (served_shards(&a.node), served_shards(&b.node));
    assert!(sa > 0 && sb > 0, "served: a {sa}, b {sb}");
    // The pulled model answers requests on the puller itself.
    let mut resp = http()
        .post(&c.node.url("/v1/completions"))
        .send_json(
            json!({"model": "demo", "prompt": "The sky is", "max_tokens": 4, "temperature": 0}),
        )
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers().get("x-rbee-node").unwrap(), "puller");
    let _: Value = resp.body_mut().read_json().unwrap();
    // A second pull is a no-op.
    let (_, again) = follow(&c.node, &start_pull(&c.node, "demo"));
    assert_eq!(again["result"]["already_present"], true, "{again}");
}

#[test]
fn a_corrupt_source_is_dropped_a_dead_source_is_survived_and_a_killed_puller_resumes() {
    let Some(model) = demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    // Sources slowed to 30 MB/s each so the pull takes seconds; `liar` flips a bit in every
    // shard it sends.
    let slow = "max_upload_rate = 30000000\n";
    let a = member(tmp.path(), "honest", &key, None, slow);
    let liar = member(
        tmp.path(),
        "liar",
        &key,
        Some(&a.p2p),
        &format!("{slow}fault_corrupt_uploads = true\n"),
    );
    let mut b = member(tmp.path(), "doomed", &key, Some(&a.p2p), slow);
    for m in [&a, &liar, &b] {
        import_demo(&m.data, "demo").unwrap();
    }
    let mut c = member(tmp.path(), "puller", &key, Some(&a.p2p), "");
    sees(&c.node, 3);

    // Kill the puller once it has recorded verified shards (the store checkpoints every 16),
    // then restart it on the same data dir.
    let _ = start_pull(&c.node, "demo");
    let recorded = || {
        std::fs::read_dir(c.data.join("partial"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("verified").exists())
    };
    let start = Instant::now();
    while !recorded() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress recorded:\n{}",
            c.node.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.node.child.kill().unwrap();
    c.node.child.wait().unwrap();
    let partial = c.data.join("partial");
    assert!(
        partial.read_dir().unwrap().next().is_some(),
        "a partial pull should be on disk"
    );
    let ls = rbee(&c.data, &["models", "ls"]);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("demo"),
        "nothing partial in the catalog"
    );
    let c = member(tmp.path(), "puller", &key, Some(&a.p2p), "");
    sees(&c.node, 3);

    // Resume; kill `doomed` while the pull runs.
    let url = start_pull(&c.node, "demo");
    std::thread::sleep(Duration::from_millis(800));
    b.node.child.kill().unwrap();
    b.node.child.wait().unwrap();
    let (events, last) = follow(&c.node, &url);
    assert_eq!(last["type"], "done", "{events}\n{}", c.node.log_text());
    // Resumed: the second pull started with shards already verified.
    let resumed = events
        .lines()
        .find(|l| l.contains("already verified"))
        .unwrap_or_else(|| panic!("{events}"));
    assert!(!resumed.contains("(0 already verified)"), "{resumed}");
    let log = c.node.log_text();
    assert!(log.contains("peer sent a corrupt shard"), "{log}");
    let cid = last["result"]["content_id"].as_str().unwrap();
    assert_eq!(sha256(&pulled_file(&c.data, cid)), sha256(&model));
    assert!(
        c.data.join("partial").read_dir().unwrap().next().is_none(),
        "partial dir cleaned up"
    );

    // The liar stays distrusted: with the model removed, a new pull uses only `honest`...
    let remove = |node: &NodeProcess| {
        let url = http()
            .post(&node.url("/v1/jobs"))
            .send_json(json!({"operation": "model_remove", "model": "demo"}))
            .unwrap()
            .body_mut()
            .read_json::<Value>()
            .unwrap()["stream_url"]
            .as_str()
            .unwrap()
            .to_string();
        let (events, last) = follow(node, &url);
        assert_eq!(last["type"], "done", "{events}");
    };
    remove(&c.node);
    let (events, last) = follow(&c.node, &start_pull(&c.node, "demo"));
    assert_eq!(last["type"], "done", "{events}");
    // (The phase lists the sources; `doomed`'s Kademlia record may outlive it, unnamed.)
    let sources = events
        .lines()
        .find(|l| l.contains("already verified) from"))
        .unwrap_or_else(|| panic!("{events}"));
    assert!(
        sources.contains("honest") && !sources.contains("liar"),
        "the liar should be left out: {sources}"
    );
    // ...and once `honest` is gone too, the pull fails naming the liar rather than trusting it.
    remove(&c.node);
    drop(a);
    let start = Instant::now();
    while c.node.get_json("/v1/pool")["peers"]
        .as_array()
        .unwrap()
        .len()
        > 1
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "honest never left the view"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (events, last) = follow(&c.node, &start_pull(&c.node, "demo"));
    assert_eq!(last["type"], "error", "{events}");
    let error = last["message"].as_str().unwrap_or_default();
    assert!(
        error.contains("liar") && error.contains("corrupt"),
        "{last}"
    );
}

/// Routing uses sharing: the only node holding the model has too little memory to load it, so
/// a request sent to it goes to the roomiest node, which pulls the model from the holder,
/// loads it and serves the request; the caller's job shows the phases on that node.
#[test]
fn a_request_no_node_can_run_is_pulled_loaded_and_served_by_the_roomiest() {
    let Some(model) = demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    // 64 MiB: far below what the 253 MB model needs.
    let holder = member(
        tmp.path(),
        "holder",
        &key,
        None,
        "memory_budget = 67108864\n",
    );
    import_demo(&holder.data, "demo").unwrap();
    let roomy = member(tmp.path(), "roomy", &key, Some(&holder.p2p), "");
    sees(&holder.node, 1);
    let started = Instant::now();
    let v: Value = http()
        .post(&holder.node.url("/v1/jobs"))
        .send_json(
            json!({"operation": "infer", "model": "demo", "prompt": "The sky is",
                          "max_tokens": 4, "temperature": 0}),
        )
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let (events, last) = follow(&holder.node, v["stream_url"].as_str().unwrap());
    assert_eq!(
        last["type"],
        "done",
        "{events}\n--- holder\n{}\n--- roomy\n{}",
        holder.node.log_text(),
        roomy.node.log_text()
    );
    assert_eq!(last["result"]["node"], "roomy", "{last}");
    assert!(
        !last["result"]["text"].as_str().unwrap().is_empty(),
        "{last}"
    );
    // The phases of the pull on the roomy node reached the caller's job.
    assert!(events.contains("on node roomy: pulling"), "{events}");
    assert!(events.contains("\"peers\":[\"holder\"]"), "{events}");
    eprintln!(
        "pulled, loaded and answered through the pool in {:?}",
        started.elapsed()
    );
    // The roomy node lists the request as a job of its own, and keeps the model,
    // byte-identical.
    let jobs = roomy.node.get_json("/v1/jobs");
    let served = jobs["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["operation"] == "infer")
        .unwrap_or_else(|| panic!("{jobs}"))
        .clone();
    assert_eq!(served["status"], "done", "{served}");
    let list = rbee(&roomy.data, &["models", "ls", "--json"]);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    let cid = listed
        .as_array()
        .and_then(|m| m.first())
        .and_then(|m| m["content_id"].as_str())
        .unwrap_or_else(|| panic!("{listed}"))
        .to_string();
    assert_eq!(sha256(&pulled_file(&roomy.data, &cid)), sha256(&model));
    assert!(served_shards(&holder.node) > 0);
    // A chat sent to the holder now goes straight to the model on the roomy node.
    let mut resp = http()
        .post(&holder.node.url("/v1/completions"))
        .send_json(
            json!({"model": "demo", "prompt": "The sky is", "max_tokens": 4, "temperature": 0}),
        )
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers().get("x-rbee-node").unwrap(), "roomy");
    let _: Value = resp.body_mut().read_json().unwrap();
}

/// Throughput-sized: a generated 2 GiB model stored on two nodes is pulled by a third from
/// both at once; the pulled file's BLAKE3 and sha256 equal the source's.
#[test]
fn a_multi_gib_model_is_pulled_from_two_nodes_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big.gguf");
    write_random_gguf(&src, 2 << 30);
    let key = pool_key(tmp.path());
    let a = member(tmp.path(), "src-a", &key, None, "");
    let b = member(tmp.path(), "src-b", &key, Some(&a.p2p), "");
    for m in [&a, &b] {
        import_model(&m.data, &src, "big");
    }
    let c = member(tmp.path(), "puller", &key, Some(&a.p2p), "");
    sees(&c.node, 2);
    let started = Instant::now();
    let (events, last) = follow(&c.node, &start_pull(&c.node, "big"));
    let took = started.elapsed();
    assert_eq!(last["type"], "done", "{events}\n{}", c.node.log_text());
    let size = std::fs::metadata(&src).unwrap().len();
    eprintln!(
        "pulled {:.2} GB from two peers in {took:?} ({:.0} MB/s, debug build)",
        size as f64 / 1e9,
        size as f64 / 1e6 / took.as_secs_f64()
    );
    assert!(events.contains("from 2 peer(s)"), "{events}");
    let cid = last["result"]["content_id"].as_str().unwrap();
    let pulled = pulled_file(&c.data, cid);
    assert_eq!(std::fs::metadata(&pulled).unwrap().len(), size);
    assert_eq!(blake3_file(&pulled), blake3_file(&src));
    assert_eq!(sha256(&pulled), sha256(&src));
    let (sa, sb) = (served_shards(&a.node), served_shards(&b.node));
    assert!(sa > 0 && sb > 0, "served: a {sa}, b {sb}");
}

/// A source at its upload limit answers "busy"; pullers wait and ask again instead of
/// dropping it: two nodes pulling from one single-upload source at once both finish.
#[test]
fn two_pullers_share_a_source_at_its_upload_limit() {
    let Some(model) = demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let a = member(tmp.path(), "src", &key, None, "max_uploads = 1\n");
    import_demo(&a.data, "demo").unwrap();
    let c = member(tmp.path(), "c", &key, Some(&a.p2p), "");
    let d = member(tmp.path(), "d", &key, Some(&a.p2p), "");
    sees(&c.node, 2);
    sees(&d.node, 2);
    let (url_c, url_d) = (start_pull(&c.node, "demo"), start_pull(&d.node, "demo"));
    let ((events_c, last_c), (events_d, last_d)) = std::thread::scope(|s| {
        let c_job = s.spawn(|| follow(&c.node, &url_c));
        let d_job = s.spawn(|| follow(&d.node, &url_d));
        (c_job.join().unwrap(), d_job.join().unwrap())
    });
    assert_eq!(last_c["type"], "done", "{events_c}");
    assert_eq!(last_d["type"], "done", "{events_d}");
    for (m, last) in [(&c, &last_c), (&d, &last_d)] {
        let cid = last["result"]["content_id"].as_str().unwrap();
        assert_eq!(sha256(&pulled_file(&m.data, cid)), sha256(&model));
    }
}

/// A peer that stops answering (a machine gone to sleep: its connection stays open, its
/// process does nothing) must not hold up a pull from the peers that do answer. Kademlia's
/// provider lookup asks every peer; before, a pull waited 3 s for it whenever one was frozen.
#[test]
fn a_frozen_peer_does_not_hold_up_a_pull() {
    let Some(model) = demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let a = member(tmp.path(), "a", &key, None, "");
    import_demo(&a.data, "demo").unwrap();
    let b = member(tmp.path(), "b", &key, Some(&a.p2p), "");
    let c = member(tmp.path(), "c", &key, Some(&a.p2p), "");
    sees(&c.node, 2);
    signal(&b.node, "-STOP");
    let url = start_pull(&c.node, "demo");
    let mut body = http().get(&c.node.url(&url)).call().unwrap();
    let reader = std::io::BufReader::new(body.body_mut().as_reader());
    let (mut asking, mut pulling, mut last) = (None, None, Value::Null);
    for line in std::io::BufRead::lines(reader) {
        let line = line.unwrap();
        let Some(event) = line
            .strip_prefix("data: ")
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
        else {
            continue;
        };
        let phase = event["phase"].as_str().unwrap_or_default();
        if phase == "asking the pool" {
            asking = Some(Instant::now());
        } else if phase.starts_with("pulling") {
            pulling.get_or_insert_with(Instant::now);
        }
        last = event;
    }
    signal(&b.node, "-CONT");
    assert_pulled(&c.data, &model, "", &last, &c.node.log_text());
    let waited = pulling.unwrap() - asking.unwrap();
    eprintln!("from asking the pool to pulling, with a frozen peer: {waited:?}");
    assert!(
        waited < Duration::from_secs(2),
        "the frozen peer held the pull up for {waited:?}"
    );
}

/// A source that freezes mid-pull (a machine suspended: its connection stays open, nothing
/// comes) holds shards in flight. The other source takes them over in the endgame, and the
/// pull ends when every shard is in, without waiting for the frozen one's timeouts.
#[test]
fn a_source_that_freezes_mid_pull_does_not_hold_it_up() {
    let Some(model) = demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let slow = "max_upload_rate = 40000000\n";
    let a = member(tmp.path(), "steady", &key, None, slow);
    let b = member(tmp.path(), "sleepy", &key, Some(&a.p2p), slow);
    for m in [&a, &b] {
        import_demo(&m.data, "demo").unwrap();
    }
    let c = member(tmp.path(), "puller", &key, Some(&a.p2p), "");
    sees(&c.node, 2);
    let start = Instant::now();
    let url = start_pull(&c.node, "demo");
    std::thread::sleep(Duration::from_millis(1500));
    signal(&b.node, "-STOP");
    let (events, last) = follow(&c.node, &url);
    let took = start.elapsed();
    signal(&b.node, "-CONT");
    assert_pulled(&c.data, &model, &events, &last, &c.node.log_text());
    eprintln!("pull with a source frozen after 1.5 s: {took:?}");
    // `steady` alone needs about 6 s for the rest at 40 MB/s; a fetch from a frozen peer
    // times out only after 60 s.
    assert!(
        took < Duration::from_secs(40),
        "the frozen source held the pull up: {took:?}"
    );
}

/// Holders frozen before the pull starts (still in the view, connections open) must not
/// stall it: the manifest is asked of the next source after a moment's silence, and the
/// shards their workers hold are raced by the live one.
#[test]
fn holders_frozen_before_the_pull_do_not_stall_it() {
    let Some(model) = demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let live = member(tmp.path(), "live", &key, None, "");
    let frozen: Vec<Member> = (0..2)
        .map(|i| member(tmp.path(), &format!("frozen{i}"), &key, Some(&live.p2p), ""))
        .collect();
    for m in frozen.iter().chain([&live]) {
        import_demo(&m.data, "demo").unwrap();
    }
    let c = member(tmp.path(), "puller", &key, Some(&live.p2p), "");
    sees(&c.node, 3);
    let all = |sig: &str| frozen.iter().for_each(|m| signal(&m.node, sig));
    all("-STOP");
    let start = Instant::now();
    let (events, last) = follow(&c.node, &start_pull(&c.node, "demo"));
    let took = start.elapsed();
    all("-CONT");
    assert_pulled(&c.data, &model, &events, &last, &c.node.log_text());
    eprintln!("pull with two of three holders frozen: {took:?}");
    // A manifest request to a frozen peer times out after 30 s; asking the next source
    // after 1.5 s of silence brings the manifest in a few seconds at most.
    assert!(
        took < Duration::from_secs(20),
        "frozen holders stalled the pull: {took:?}"
    );
}

/// A puller that freezes mid-pull (a laptop suspended: its connection stays open, it reads
/// nothing) must not keep the source's upload slot: another node's pull of the same model
/// from that source still completes.
#[test]
fn a_frozen_puller_does_not_keep_the_upload_slot() {
    let Some(model) = demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let src = member(tmp.path(), "src", &key, None, "max_uploads = 1\n");
    import_demo(&src.data, "demo").unwrap();
    let sleepy = member(tmp.path(), "sleepy", &key, Some(&src.p2p), "");
    let d = member(tmp.path(), "d", &key, Some(&src.p2p), "");
    sees(&sleepy.node, 2);
    sees(&d.node, 2);
    let _ = start_pull(&sleepy.node, "demo");
    // Freeze it while shards are flowing to it.
    let start = Instant::now();
    while served_shards(&src.node) < 3 {
        assert!(start.elapsed() < Duration::from_secs(30), "no shard served");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&sleepy.node, "-STOP");
    let start = Instant::now();
    let (events, last) = follow(&d.node, &start_pull(&d.node, "demo"));
    let took = start.elapsed();
    signal(&sleepy.node, "-CONT");
    assert_pulled(&d.data, &model, &events, &last, &src.node.log_text());
    eprintln!("pull next to a frozen puller on a one-slot source: {took:?}");
    // The source gives up on a write after 20 s; before, the slot stayed taken for good
    // (this pull hung until the HTTP client's timeout).
    assert!(took < Duration::from_secs(60), "{took:?}");
}
