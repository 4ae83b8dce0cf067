//! Regression tests for what a node reports and does while it serves: a streaming model is
//! busy (never evicted, never shown idle), and requests the API can refuse at once are refused
//! at once on every route.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rbee_tests::{NodeProcess, rbee, workspace_root};
use serde_json::{Value, json};

fn data_with_demo(tmp: &Path) -> Option<PathBuf> {
    let data = tmp.join("data");
    rbee_tests::import_demo(&data, "demo")?;
    Some(data)
}

fn post(node: &NodeProcess, path: &str, body: Value) -> (u16, Value) {
    let mut resp = rbee_tests::http()
        .post(&node.url(path))
        .send_json(body)
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn model_status(health: &Value, name: &str) -> Value {
    health["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {health}"))["status"]
        .clone()
}

fn metric(node: &NodeProcess, line_prefix: &str) -> Option<u64> {
    let text = rbee_tests::http()
        .get(&node.url("/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Before: idleness was inferred from `Arc` counts the generation path drops, so a streaming
/// model read `busy: false`, queue 0, and a second model's load evicted it mid-stream.
#[test]
fn a_streaming_model_is_busy_and_never_evicted() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = data_with_demo(tmp.path()) else {
        return;
    };
    let tiny = workspace_root().join("crates/rbee-infer/tests/reference/tiny-gemma3.gguf");
    let out = rbee(
        &data,
        &["models", "import", tiny.to_str().unwrap(), "--name", "tiny"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hi = |model: &str| json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    // Learn what each model needs, then give the node room for one at a time.
    let node = NodeProcess::start(&data, &["--context-length", "512"]);
    assert_eq!(post(&node, "/v1/chat/completions", hi("tiny")).0, 200);
    assert_eq!(post(&node, "/v1/chat/completions", hi("demo")).0, 200);
    let h = node.get_json("/health");
    let bytes = |name| model_status(&h, name)["bytes"].as_u64().unwrap();
    let budget = bytes("demo") + bytes("tiny") - 1;
    drop(node);
    let node = NodeProcess::start(
        &data,
        &[
            "--memory-budget",
            &budget.to_string(),
            "--context-length",
            "512",
        ],
    );

    let resp = rbee_tests::http()
        .post(&node.url("/v1/chat/completions"))
        .send_json(
            json!({"model": "demo", "stream": true, "max_tokens": 200, "temperature": 0,
                          "messages": [{"role": "user", "content": "Count to a thousand."}]}),
        )
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut line = String::new();
    let mut chunks = 0;
    while chunks < 3 && reader.read_line(&mut line).unwrap() > 0 {
        chunks += usize::from(line.starts_with("data: "));
        line.clear();
    }
    // Streaming: the engine's count says so in /health and /metrics.
    let demo = model_status(&node.get_json("/health"), "demo");
    assert_eq!(demo["state"], "loaded", "{demo}");
    assert_eq!(demo["busy"], true, "{demo}");
    assert_eq!(demo["live"], 1, "{demo}");
    assert_eq!(
        metric(&node, "rbee_live_sequences{model=\"demo\"}"),
        Some(1)
    );
    // Loading the other model would need the streaming one's memory: refused, not evicted.
    let (status, body) = post(&node, "/v1/chat/completions", hi("tiny"));
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("busy"),
        "{body}"
    );
    let demo = model_status(&node.get_json("/health"), "demo");
    assert_eq!(demo["state"], "loaded", "{demo}");

    // The stream still runs to its end.
    let mut finished = false;
    while reader.read_line(&mut line).unwrap() > 0 {
        if line.trim_end() == "data: [DONE]" {
            finished = true;
        }
        line.clear();
    }
    assert!(finished, "the stream did not finish");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let demo = model_status(&node.get_json("/health"), "demo");
        if demo["busy"] == false {
            assert_eq!(demo["live"], 0, "{demo}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still busy after the stream: {demo}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Idle now: the other model may take its place.
    assert_eq!(post(&node, "/v1/chat/completions", hi("tiny")).0, 200);

    // The tiny model supports less than the 512 tokens asked for: it says so, and what it got.
    let header = rbee_format::gguf::GgufFile::open(&tiny).unwrap();
    let own = header.metadata.get_u64("gemma3.context_length").unwrap() as usize;
    assert!(own < 512, "the fixture changed: {own}");
    let status = model_status(&node.get_json("/health"), "tiny");
    assert_eq!(status["context_length"], own, "{status}");
    let log = node.log_text();
    assert!(
        log.contains("a context of 512 tokens was asked for"),
        "{log}"
    );
}

/// A node short of memory for every batch slot at full context loads the model with a
/// smaller KV budget (fewer long sequences at once) instead of refusing it.
#[test]
fn the_kv_budget_shrinks_to_fit_the_memory_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = data_with_demo(tmp.path()) else {
        return;
    };
    let hi =
        json!({"model": "demo", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    // What the model takes with one and with two batch slots of 2048 positions.
    let bytes_with = |slots: &str| {
        let node = NodeProcess::start(
            &data,
            &["--context-length", "2048", "--max-sequences", slots],
        );
        assert_eq!(post(&node, "/v1/chat/completions", hi.clone()).0, 200);
        let status = model_status(&node.get_json("/health"), "demo");
        assert_eq!(
            status["kv_budget_tokens"].as_u64(),
            Some(2048 * slots.parse::<u64>().unwrap()),
            "{status}"
        );
        status["bytes"].as_u64().unwrap()
    };
    let one = bytes_with("1");
    let per_context = bytes_with("2") - one;
    // Room for the model and three and a half contexts of KV, not eight.
    let budget = one + 5 * per_context / 2;
    let node = NodeProcess::start(
        &data,
        &[
            "--context-length",
            "2048",
            "--memory-budget",
            &budget.to_string(),
        ],
    );
    let (status, body) = post(&node, "/v1/chat/completions", hi);
    assert_eq!(status, 200, "{body}\n{}", node.log_text());
    let demo = model_status(&node.get_json("/health"), "demo");
    let kv = demo["kv_budget_tokens"].as_u64().unwrap();
    assert_eq!(demo["max_live"], 8, "{demo}");
    assert!((3 * 2048..4 * 2048).contains(&kv), "{demo}");
    assert!(demo["bytes"].as_u64().unwrap() <= budget, "{demo}");
    assert!(node.log_text().contains("positions"), "{}", node.log_text());
    // The runtime it runs on, and its batch, in /health and in `rbee-node status`.
    let runtime = demo["runtime"].as_str().unwrap();
    assert!(
        runtime.starts_with("cpu (") && runtime.contains("threads"),
        "{demo}"
    );
    let out = std::process::Command::new(rbee_tests::rbee_node_bin())
        .arg("status")
        .env("RBEE_API_ADDR", node.base.trim_start_matches("http://"))
        .env("XDG_CONFIG_HOME", tmp.path().join("no-config"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("demo") && text.contains("of 8 sequences live") && text.contains(runtime),
        "{text}"
    );
}

/// Before: the jobs API answered 202 for input the OpenAI routes refuse at once and failed
/// later, and a job's summary did not say why it failed.
#[test]
fn jobs_refuse_bad_input_at_once_and_summaries_show_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let node = NodeProcess::start(&data, &[]);
    let refused = [
        json!({"operation": "infer", "model": "demo", "prompt": "x", "temperature": -1}),
        json!({"operation": "infer", "model": "demo"}),
        json!({"operation": "infer", "model": "demo", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}),
        json!({"operation": "infer", "model": "demo", "messages": []}),
        json!({"operation": "infer", "model": "demo", "messages": [{"role": "root", "content": "x"}]}),
        json!({"operation": "infer", "model": "./some/file.gguf", "prompt": "x"}),
        json!({"operation": "model_import", "source": "/nonexistent.gguf", "name": "../bad"}),
        json!({"operation": "model_import", "source": " "}),
        json!({"operation": "model_load", "model": ""}),
    ];
    for body in refused {
        let (status, answer) = post(&node, "/v1/jobs", body.clone());
        assert_eq!(status, 400, "{body} -> {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body} -> {answer}"
        );
    }
    assert!(
        node.get_json("/v1/jobs")["data"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a refused request left a job behind"
    );

    // A job that fails while running says why in its summary.
    let (status, v) = post(
        &node,
        "/v1/jobs",
        json!({"operation": "model_load", "model": "no-such-model"}),
    );
    assert_eq!(status, 202, "{v}");
    let id = v["job_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let summary = loop {
        let s = node.get_json(&format!("/v1/jobs/{id}"));
        if s["status"] != "running" {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(summary["status"], "failed", "{summary}");
    assert!(
        summary["error"].as_str().unwrap().contains("no-such-model"),
        "{summary}"
    );
    let listed = node.get_json("/v1/jobs");
    assert_eq!(listed["data"][0]["error"], summary["error"], "{listed}");
}
