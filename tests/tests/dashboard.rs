//! The dashboard in a real browser (Debian's chromium, driven by Playwright for Python:
//! `tests/python/dashboard.py`) against real node processes on loopback: three nodes shown
//! within 3 s, a fourth joining and a killed one leaving, a pull from a peer started from the
//! page with its progress, a streamed chat naming the serving node, and, with a token set, the
//! login field and the APIs refusing without it; a preset made, used from the chat, edited,
//! refused (an unknown base) and deleted from the Models view's editor. Screenshots go to
//! `target/dashboard-screenshots/`; the page's transfer size and first paint are printed.
//! `GET /` answers non-browsers as Ollama does.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rbee_format::gguf::{GgmlType, GgufWriter};
use rbee_tests::hub_double::{COMMIT_B, DoubleFile, HubDouble};
use rbee_tests::{
    Member, NodeProcess, http, import_demo, import_embed, import_model, pool_key,
    run_python_clients, test_python, workspace_root,
};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The python with Playwright, and chromium; None (skipped, said why) without them, except
/// in CI, where `scripts/test` installs both.
fn browser() -> Option<std::ffi::OsString> {
    let python = test_python()?;
    if !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no {CHROMIUM} in CI: scripts/test runs scripts/install-chromium"
        );
        eprintln!("SKIPPED: no {CHROMIUM} (scripts/install-chromium installs it)");
        return None;
    }
    Some(python)
}

fn screenshots() -> PathBuf {
    let dir = workspace_root().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn script() -> PathBuf {
    workspace_root().join("tests/python/dashboard.py")
}

#[test]
fn get_root_answers_ollama_clients_as_ollama_does_and_browsers_with_the_page() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&tmp.path().join("data"), &["--api-token", "s3cret"]);
    // A client that does not ask for HTML (Ollama's clients, curl), without the token.
    let mut resp = http().get(&node.url("/")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        resp.body_mut().read_to_string().unwrap(),
        "Ollama is running"
    );
    // A browser gets the page, which names its hashed assets; they are served gzipped when
    // asked, cached for good, and need no token (they carry no data).
    let mut resp = http()
        .get(&node.url("/"))
        .header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let page = resp.body_mut().read_to_string().unwrap();
    assert!(page.contains("<title>rbee</title>"), "{page}");
    let script = page
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert!(
        script.starts_with("/assets/app-") && script.ends_with(".js"),
        "{script}"
    );
    // Raw HTTP: the client library would unpack the gzip and hide the header.
    let head = raw_get(&node, &script, "Accept-Encoding: gzip, deflate, br\r\n");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("immutable"), "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    let head = raw_get(&node, &script, "");
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(
        http()
            .get(&node.url("/assets/app-nope.js"))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    // Every data route the page uses still needs the token.
    for path in [
        "/v1/pool",
        "/v1/pool/events",
        "/v1/activity",
        "/v1/jobs",
        "/v1/models",
    ] {
        let status = http()
            .get(&node.url(path))
            .call()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 401, "{path}");
    }
}

/// The status line and headers of `GET path` with `extra` request headers, lower-cased.
fn raw_get(node: &NodeProcess, path: &str, extra: &str) -> String {
    use std::io::Read;
    let addr = node.base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    String::from_utf8_lossy(&bytes[..end]).to_lowercase()
}

/// Runs a scenario of the script, answering its WANT lines; returns its METRIC lines.
fn drive(
    python: &std::ffi::OsStr,
    scenario: &str,
    url: &str,
    mut on_want: impl FnMut(&str),
) -> Vec<String> {
    let mut child = Command::new(python)
        .arg(script())
        .args([scenario, url])
        .arg(screenshots())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut metrics = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        eprintln!("dashboard.py: {line}");
        if let Some(want) = line.strip_prefix("WANT ") {
            on_want(want);
            writeln!(stdin, "DONE {want}").unwrap();
            stdin.flush().unwrap();
        } else if line.starts_with("METRIC ") {
            metrics.push(line);
        }
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "dashboard.py failed ({status}); see its output above"
    );
    metrics
}

#[test]
fn the_page_shows_the_pool_live_pulls_chats_and_lists_the_activity() {
    let Some(python) = browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let a = Member::start(tmp.path(), "node-a", &key, None, "", &[]);
    if import_demo(&a.data, "demo").is_none() {
        eprintln!("SKIPPED: RBEE_DEMO_MODEL not set");
        return;
    }
    let mut b = Some(Member::start(
        tmp.path(),
        "node-b",
        &key,
        Some(&a.p2p),
        "",
        &[],
    ));
    let c = Member::start(tmp.path(), "node-c", &key, Some(&a.p2p), "", &[]);
    if import_embed(&c.data, "minilm").is_none() {
        eprintln!("SKIPPED: RBEE_EMBED_MODEL not set");
        return;
    }
    // The page opens once node-c sees both peers (the 3 s are the page's, not the pool's).
    let formed = Instant::now();
    while c.node.get_json("/v1/pool")["peers"]
        .as_array()
        .unwrap()
        .len()
        < 2
    {
        assert!(
            formed.elapsed() < Duration::from_secs(30),
            "{}",
            c.node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut d = None;
    let metrics = drive(&python, "pool", &c.node.base, |want| match want {
        "join node-d" => {
            d = Some(Member::start(
                tmp.path(),
                "node-d",
                &key,
                Some(&a.p2p),
                "",
                &[],
            ));
        }
        "kill node-b" => drop(b.take()),
        other => panic!("dashboard.py asked for {other}"),
    });
    drop(d);
    for m in &metrics {
        eprintln!("{m}");
    }
    assert!(
        metrics
            .iter()
            .any(|m| m.starts_with("METRIC first_contentful_paint_ms"))
    );
}

#[test]
fn with_a_token_the_page_asks_for_it_and_the_apis_refuse_without_it() {
    if browser().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let secret = "dashboard-test-token-1";
    let node = NodeProcess::start(&tmp.path().join("data"), &["--api-token", secret]);
    let shots = screenshots();
    let args = [
        "token".as_ref(),
        node.base.as_ref(),
        secret.as_ref(),
        shots.as_os_str(),
    ];
    run_python_clients("dashboard.py", &args, &node);
}

#[test]
fn a_preset_is_made_chatted_with_edited_refused_and_deleted_from_the_page() {
    let Some(python) = browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    if import_demo(&data, "demo").is_none() {
        eprintln!("SKIPPED: RBEE_DEMO_MODEL not set");
        return;
    }
    let node = NodeProcess::start(&data, &["--name", "presetnode"]);
    let metrics = drive(&python, "preset", &node.base, |want| {
        panic!("dashboard.py asked for {want}:\n{}", node.log_text())
    });
    // The preset's system prompt reached the model: more prompt tokens than its base's.
    let tokens = metrics
        .iter()
        .find_map(|m| m.strip_prefix("METRIC prompt_tokens_base_preset "))
        .unwrap();
    let (base, preset) = tokens.split_once(' ').unwrap();
    assert!(
        preset.parse::<u64>().unwrap() > base.parse::<u64>().unwrap(),
        "{tokens}"
    );
    // The page deleted its preset; the base model it was made over is untouched.
    let tags = node.get_json("/api/tags");
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo:latest"], "{tags}");
}

#[test]
fn a_hub_pull_from_the_page_shows_its_progress_and_is_cancelled() {
    if browser().is_none() {
        return;
    }
    let double = HubDouble::start();
    let mut w = GgufWriter::tiny_model("qwen3");
    let floats = 100_000usize;
    let data: Vec<u8> = (0..floats * 4).map(|i| (i % 251) as u8).collect();
    w.add_tensor("extra.weight", &[floats as u64], GgmlType::F32, data);
    double.add(
        "org/slow",
        "main",
        COMMIT_B,
        vec![DoubleFile::lfs("slow-Q4_K_M.gguf", w.to_bytes().unwrap())],
    );
    let gate = double.pause_after("slow-Q4_K_M.gguf", 65_536);
    let tmp = tempfile::tempdir().unwrap();
    let hf_home = tmp.path().join("hf");
    let node = NodeProcess::start(
        &tmp.path().join("data"),
        &[
            "--hf-endpoint",
            &double.endpoint,
            "--hf-home",
            hf_home.to_str().unwrap(),
        ],
    );
    let shots = screenshots();
    let args = ["cancel".as_ref(), node.base.as_ref(), shots.as_os_str()];
    run_python_clients("dashboard.py", &args, &node);
    gate.release();
    // Cancelled: nothing was cataloged.
    let models = node.get_json("/health")["models"].clone();
    assert_eq!(models, serde_json::json!([]), "{models}");
}

#[test]
fn activity_lists_requests_with_node_tokens_and_errors_and_samples_the_history() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = workspace_root().join("crates/rbee-infer/tests/reference/tiny-qwen3.gguf");
    import_model(&data, &model, "tiny");
    let node = NodeProcess::start(&data, &["--name", "actnode"]);
    let chat = |extra: serde_json::Value| {
        let mut body = serde_json::json!({"model": "tiny", "max_tokens": 3, "seed": 1,
            "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let mut resp = http()
            .post(&node.url("/v1/chat/completions"))
            .send_json(body)
            .unwrap();
        let status = resp.status().as_u16();
        let _ = resp.body_mut().read_to_string().unwrap();
        status
    };
    assert_eq!(chat(serde_json::json!({})), 200);
    assert_eq!(chat(serde_json::json!({"stream": true})), 200);
    assert_eq!(
        chat(serde_json::json!({"stream": true, "stream_options": {"include_usage": true}})),
        200
    );
    assert_eq!(chat(serde_json::json!({"model": "no-such-model"})), 404);
    // A GET is not a model request and is not listed.
    let _ = node.get_json("/v1/models");
    std::thread::sleep(Duration::from_millis(2500));
    let a = node.get_json("/v1/activity");
    let reqs = a["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 4, "{a}");
    // Newest first.
    let (missing, with_usage, no_usage, plain) = (&reqs[0], &reqs[1], &reqs[2], &reqs[3]);
    for r in [with_usage, no_usage, plain] {
        assert_eq!(r["route"], "/v1/chat/completions", "{r}");
        assert_eq!(r["model"], "tiny", "{r}");
        assert_eq!(r["node"], "actnode", "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert!(r["error"].is_null(), "{r}");
        assert!(r["first_byte_ms"].as_u64().unwrap() <= r["duration_ms"].as_u64().unwrap());
    }
    assert_eq!(plain["completion_tokens"], 3, "{plain}");
    assert_eq!(with_usage["completion_tokens"], 3, "{with_usage}");
    assert!(no_usage["completion_tokens"].is_null(), "{no_usage}");
    assert_eq!(missing["status"], 404, "{missing}");
    assert_eq!(missing["model"], "no-such-model", "{missing}");
    let message = missing["error"].as_str().unwrap();
    assert!(message.contains("no-such-model"), "{message}");
    let errors = a["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{a}");
    assert_eq!(errors[0]["status"], 404);
    // The history has a sample with this node's memory budget.
    let history = a["history"].as_array().unwrap();
    assert!(!history.is_empty(), "{a}");
    assert!(history[0]["budget_bytes"].as_u64().unwrap() > 0, "{a}");
    // The pool stream sends the view at once, as GET /v1/pool answers it.
    let addr = node.base.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /v1/pool/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\n\n")
        || !String::from_utf8_lossy(&got).contains("event: pool")
    {
        use std::io::Read;
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("\"name\":\"actnode\""), "{text}");
}
