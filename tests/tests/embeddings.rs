//! Embeddings through real `rbee-node join` processes: OpenAI's `/v1/embeddings` and Ollama's
//! `/api/embed` and `/api/embeddings` on all-MiniLM-L6-v2 (with the unmodified openai,
//! langchain-openai and ollama Python clients), the 400s for a model that cannot do what is
//! asked, a full queue, and a request routed to the pool peer that holds the model.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use rbee_tests::{Member, NodeProcess, http, import_demo, import_embed, pool_key, workspace_root};
use serde_json::{Value, json};

fn reference() -> Value {
    let path = workspace_root().join("crates/rbee-infer/tests/reference/minilm-corpus.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// POSTs `body`; the status, the JSON answer, the serving node and `Retry-After`.
fn post(node: &NodeProcess, path: &str, body: Value) -> (u16, Value, String, Option<String>) {
    let mut resp = http().post(&node.url(path)).send_json(body).unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (served, retry) = (
        header("x-rbee-node").unwrap_or_default(),
        header("retry-after"),
    );
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, served, retry)
}

fn error_message(v: &Value) -> String {
    match &v["error"] {
        Value::String(s) => s.clone(),
        e => e["message"].as_str().unwrap_or_default().to_string(),
    }
}

#[test]
fn embedding_endpoints_serve_minilm_and_refuse_what_a_model_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    if import_embed(&data, "minilm").is_none() || import_demo(&data, "demo").is_none() {
        return;
    }
    let node = NodeProcess::start(&data, &[]);
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    let (text, want) = (
        cases[0]["text"].as_str().unwrap(),
        floats(&cases[0]["embedding"]),
    );

    // /v1/models says which models embed.
    let models = node.get_json("/v1/models");
    let caps = |id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["capabilities"].clone())
            .unwrap()
    };
    assert_eq!(caps("minilm"), json!(["embedding"]));
    assert_eq!(caps("demo"), json!(["completion"]));

    let (status, v, served, _) = post(
        &node,
        "/v1/embeddings",
        json!({"model": "minilm", "input": text}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(!served.is_empty(), "x-rbee-node names the node");
    assert_eq!(
        (v["object"].as_str(), v["model"].as_str()),
        (Some("list"), Some("minilm"))
    );
    let got = floats(&v["data"][0]["embedding"]);
    assert_eq!(got.len(), 384);
    assert!(cosine(&got, &want) >= 0.9999, "{}", cosine(&got, &want));
    let tokens = cases[0]["ids"].as_array().unwrap().len();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": tokens, "total_tokens": tokens})
    );

    // base64: the same f32 values, little-endian.
    let (_, b, _, _) = post(
        &node,
        "/v1/embeddings",
        json!({"model": "minilm", "input": [text, "second"], "encoding_format": "base64"}),
    );
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // JSON carries each f32 in its shortest form, which reads back as the same f32.
    let as_f32: Vec<f32> = got.iter().map(|&x| x as f32).collect();
    assert_eq!(decoded, as_f32);
    assert_eq!(b["data"][1]["index"], 1);

    // OpenAI refuses an input longer than the model takes; Ollama cuts it unless told not to.
    let long = cases
        .iter()
        .find(|c| c["ids"].as_array().unwrap().len() == 256)
        .unwrap();
    let long_text = long["text"].as_str().unwrap();
    let (status, v, _, _) = post(
        &node,
        "/v1/embeddings",
        json!({"model": "minilm", "input": long_text}),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (status, v, _, _) = post(
        &node,
        "/api/embed",
        json!({"model": "minilm", "input": [long_text]}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(cosine(&floats(&v["embeddings"][0]), &floats(&long["embedding"])) >= 0.9999);
    assert_eq!(v["prompt_eval_count"], 256);
    let (status, v, _, _) = post(
        &node,
        "/api/embed",
        json!({"model": "minilm", "input": long_text, "truncate": false}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].is_string(), "Ollama's error shape: {v}");
    let (status, v, _, _) = post(
        &node,
        "/api/embeddings",
        json!({"model": "minilm", "prompt": text}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(cosine(&floats(&v["embedding"]), &want) >= 0.9999);

    // What a model cannot do is a 400 naming the model, and costs no load.
    let (status, v, _, _) = post(
        &node,
        "/v1/chat/completions",
        json!({"model": "minilm", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 400, "{v}");
    let msg = error_message(&v);
    assert!(
        msg.contains("minilm") && msg.contains("embedding model"),
        "{msg}"
    );
    let (status, v, _, _) = post(
        &node,
        "/v1/embeddings",
        json!({"model": "demo", "input": "hi"}),
    );
    assert_eq!(status, 400, "{v}");
    let msg = error_message(&v);
    assert!(msg.contains("demo") && msg.contains("pooling"), "{msg}");
    let (status, v, _, _) = post(&node, "/api/embed", json!({"model": "demo", "input": "hi"}));
    assert_eq!(status, 400, "{v}");
    let health = node.get_json("/health");
    let demo = health["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "demo")
        .unwrap();
    assert_eq!(demo["status"]["state"], "on_disk", "{health:#}");

    // Fields: `dimensions` only where the model trained for it, unknown ones named.
    let (status, v, _, _) = post(
        &node,
        "/v1/embeddings",
        json!({"model": "minilm", "input": "x", "dimensions": 384}),
    );
    assert_eq!(status, 200, "the full length is always fine: {v}");
    for (body, field) in [
        (
            json!({"model": "minilm", "input": "x", "dimensions": 128}),
            "dimensions",
        ),
        (
            json!({"model": "minilm", "input": "x", "normalize": false}),
            "normalize",
        ),
        (
            json!({"model": "minilm", "input": "x", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (json!({"model": "minilm", "input": []}), "input"),
    ] {
        let (status, v, _, _) = post(&node, "/v1/embeddings", body.clone());
        assert_eq!(status, 400, "{body}: {v}");
        assert!(error_message(&v).contains(field), "{body}: {v}");
    }
    for (body, field) in [
        (
            json!({"model": "minilm", "input": "x", "options": {"temperature": 0}}),
            "options.temperature",
        ),
        (
            json!({"model": "minilm", "input": "x", "format": "json"}),
            "format",
        ),
    ] {
        let (status, v, _, _) = post(&node, "/api/embed", body.clone());
        assert_eq!(status, 400, "{body}: {v}");
        assert!(error_message(&v).contains(field), "{body}: {v}");
    }

    // The real clients, unmodified.
    let url = node.url("");
    let corpus = workspace_root().join("crates/rbee-infer/tests/reference/minilm-corpus.json");
    rbee_tests::run_python_clients(
        "embed_clients.py",
        &[url.as_ref(), "minilm".as_ref(), corpus.as_os_str()],
        &node,
    );
}

/// With one request running and one waiting, the next is a 503 with `Retry-After`, as for
/// generation; the running and waiting ones still finish.
#[test]
fn a_full_embedding_queue_answers_503_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    if import_embed(&data, "minilm").is_none() {
        return;
    }
    let node = NodeProcess::start(&data, &["--queue-capacity", "1", "--max-sequences", "1"]);
    let warm = post(
        &node,
        "/v1/embeddings",
        json!({"model": "minilm", "input": "warm up"}),
    );
    assert_eq!(warm.0, 200, "{}", warm.1);
    let many: Vec<String> = (0..100).map(|i| format!("{i} bees ").repeat(120)).collect();
    let busy = |node: &NodeProcess| node.get_json("/health")["models"][0]["status"].clone();
    std::thread::scope(|s| {
        let running = s.spawn(|| {
            post(
                &node,
                "/api/embed",
                json!({"model": "minilm", "input": many}),
            )
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while busy(&node)["live"] != 1 {
            assert!(Instant::now() < deadline, "{}", busy(&node));
            std::thread::sleep(Duration::from_millis(20));
        }
        let queued = s.spawn(|| {
            post(
                &node,
                "/v1/embeddings",
                json!({"model": "minilm", "input": "queued"}),
            )
        });
        while busy(&node)["queue"] != 1 {
            assert!(Instant::now() < deadline, "{}", busy(&node));
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, v, _, retry) = post(
            &node,
            "/v1/embeddings",
            json!({"model": "minilm", "input": "one too many"}),
        );
        assert_eq!(status, 503, "{v}");
        assert!(retry.is_some(), "no Retry-After");
        assert!(error_message(&v).contains("queue is full"), "{v}");
        let (status, v, _, _) = running.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(v["embeddings"].as_array().unwrap().len(), 100);
        assert_eq!(queued.join().unwrap().0, 200);
    });
}

fn member(tmp: &Path, name: &str, key: &str, bootstrap: Option<&str>, extra: &[&str]) -> Member {
    Member::start(tmp, name, key, bootstrap, "", extra)
}

/// Node A has no model, node B has all-MiniLM-L6-v2: an embedding request at A is served by B
/// over `/rbee/embed/1`, with the vectors B gives when asked directly.
#[test]
fn an_embedding_request_reaches_the_peer_that_holds_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    if import_embed(&tmp.path().join("node-b"), "minilm").is_none() {
        return;
    }
    std::fs::create_dir_all(tmp.path().join("node-a")).unwrap();
    let a = member(tmp.path(), "node-a", &key, None, &[]);
    let b = member(
        tmp.path(),
        "node-b",
        &key,
        Some(&a.p2p),
        &["--preload", "minilm"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = a.node.get_json("/v1/pool");
        let loaded_at_b = view["peers"].as_array().unwrap().iter().any(|p| {
            p["name"] == "node-b" && !p["status"]["loaded"].as_array().unwrap().is_empty()
        });
        if loaded_at_b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's model never showed at A: {view:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let inputs = json!(["The bees returned to the hive.", "A man is eating food."]);
    let (status, via_a, served, _) = post(
        &a.node,
        "/v1/embeddings",
        json!({"model": "minilm", "input": inputs}),
    );
    assert_eq!(status, 200, "{via_a}\nlog A:\n{}", a.node.log_text());
    assert_eq!(served, "node-b");
    let (_, direct, served, _) = post(
        &b.node,
        "/v1/embeddings",
        json!({"model": "minilm", "input": inputs}),
    );
    assert_eq!(served, "node-b");
    assert_eq!(
        via_a["data"], direct["data"],
        "the same vectors, bit for bit"
    );
    assert_eq!(via_a["usage"], direct["usage"]);
    // Ollama's route goes the same way; the peer's refusal keeps its status.
    let (status, v, served, _) = post(
        &a.node,
        "/api/embed",
        json!({"model": "minilm", "input": "hive"}),
    );
    assert_eq!((status, served.as_str()), (200, "node-b"), "{v}");
    let (status, v, _, _) = post(
        &a.node,
        "/v1/embeddings",
        json!({"model": "minilm", "input": "x", "dimensions": 16}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(error_message(&v).contains("Matryoshka"), "{v}");
    let (status, v, _, _) = post(
        &a.node,
        "/v1/chat/completions",
        json!({"model": "minilm", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 400, "{v}");
}
