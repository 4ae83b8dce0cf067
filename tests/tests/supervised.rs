//! The node's supervised tasks come back after a panic, between real node processes on
//! loopback: the shard server, the infer server and the status publisher of one node, and a
//! pull on another, are each made to panic (the `fault_kill_tasks` hook) and the pool still
//! shares, serves and pulls — the pull resuming into a byte-identical model.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rbee_tests::{
    Member, NodeProcess, http, import_model, pool_key, workspace_root, write_random_gguf,
};
use serde_json::{Value, json};

/// `POST /v1/tasks/{name}/kill`: the names it reached.
fn kill(node: &NodeProcess, name: &str) -> Vec<String> {
    let path = format!("/v1/tasks/{}/kill", name.replace(' ', "%20"));
    let v: Value = http()
        .post(&node.url(&path))
        .send_empty()
        .unwrap_or_else(|e| panic!("kill {name}: {e}\n{}", node.log_text()))
        .body_mut()
        .read_json()
        .unwrap();
    v["killed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

/// The supervised tasks running on `node`: (name, restarts).
fn tasks(node: &NodeProcess) -> Vec<(String, u64)> {
    node.get_json("/v1/tasks")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["restarts"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn wait_until(node: &NodeProcess, what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} did not happen within 30 s:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn restarts(node: &NodeProcess, name: &str) -> Option<u64> {
    tasks(node)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, r)| r)
}

fn sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn killed_peer_servers_status_publisher_and_pulls_come_back() {
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    // The source holds a large model (served slowly, so a pull is still running when it is
    // killed) and a tiny runnable one, loaded, for forwarded requests.
    let big = tmp.path().join("big.gguf");
    write_random_gguf(&big, 48 << 20);
    let tiny = workspace_root().join("crates/rbee-infer/tests/reference/tiny-qwen3.gguf");
    let src_data = tmp.path().join("src");
    import_model(&src_data, &big, "big");
    import_model(&src_data, &tiny, "tiny");
    let src = Member::start(
        tmp.path(),
        "src",
        &key,
        None,
        "fault_kill_tasks = true\nmax_upload_rate = 12000000\npreload = [\"tiny\"]\n",
        &[],
    );
    let puller = Member::start(
        tmp.path(),
        "puller",
        &key,
        Some(&src.p2p),
        "fault_kill_tasks = true\n",
        &[],
    );
    let (a, b) = (&src.node, &puller.node);
    for name in ["infer server", "shard server", "status publisher"] {
        assert_eq!(restarts(a, name), Some(0), "{:?}", tasks(a));
    }

    // Each of the source's servers panics and is restarted.
    for name in ["shard server", "infer server", "status publisher"] {
        assert_eq!(kill(a, name), vec![name.to_string()]);
        wait_until(a, &format!("a restart of the {name}"), || {
            restarts(a, name) == Some(1)
        });
    }
    assert!(
        a.log_text().contains("the shard server panicked"),
        "{}",
        a.log_text()
    );
    let unknown = http()
        .post(&a.url("/v1/tasks/nothing/kill"))
        .send_empty()
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);

    // The restarted status publisher still tells the pool what the source holds and has
    // loaded...
    wait_until(b, "the source's status, with its loaded model", || {
        b.get_json("/v1/pool")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| {
                p["name"] == "src"
                    && p["status"]["loaded"]
                        .as_array()
                        .is_some_and(|l| !l.is_empty())
            })
    });
    // ...the restarted infer server runs requests forwarded to it...
    let mut resp = http()
        .post(&b.url("/v1/completions"))
        .send_json(json!({"model": "tiny", "prompt": "one two", "max_tokens": 4, "temperature": 0}))
        .unwrap();
    let served = resp.headers().get("x-rbee-node").cloned();
    let done: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(
        served.as_ref().and_then(|v| v.to_str().ok()),
        Some("src"),
        "{done}\n{}\nsource:\n{}",
        b.log_text(),
        a.log_text()
    );
    assert_eq!(done["usage"]["completion_tokens"], 4, "{done}");

    // ...and the restarted shard server serves a pull, which is itself killed mid-way: it
    // is restarted, resumes from its verified shards, and ends with the whole model.
    let created: Value = http()
        .post(&b.url("/v1/jobs"))
        .send_json(json!({"operation": "model_pull", "model": "big"}))
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let job = created["job_id"].as_str().unwrap().to_string();
    let pull_task = format!("pull {job}");
    // Phases (asking the pool, pulling from src), then progress: shards are arriving.
    wait_until(b, "shards arriving", || {
        let j = b.get_json(&format!("/v1/jobs/{job}"));
        assert_eq!(j["status"], "running", "{j}");
        j["events"].as_u64().unwrap() >= 4
    });
    assert_eq!(kill(b, "pull"), vec![pull_task.clone()]);
    let stream = http()
        .get(&b.url(&format!("/v1/jobs/{job}/stream")))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let last: Value = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .next_back()
        .unwrap();
    assert_eq!(last["type"], "done", "{stream}\n{}", b.log_text());
    assert!(
        b.log_text().contains(&format!("the {pull_task} panicked")),
        "{}",
        b.log_text()
    );
    let cid = last["result"]["content_id"].as_str().unwrap();
    let mut files = std::fs::read_dir(puller.data.join("views").join(cid)).unwrap();
    let pulled = files.next().unwrap().unwrap().path();
    assert_eq!(sha256(&pulled), sha256(&big));
    assert!(
        tasks(b).iter().all(|(n, _)| !n.starts_with("pull ")),
        "{:?}",
        tasks(b)
    );
}
