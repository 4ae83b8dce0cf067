//! HTTP bodies, paths and queries for every route of a real `rbee-node join` serving a real
//! (tiny) GGUF: a corpus of valid requests per route, mutated as JSON (each value swapped
//! for hostile ones: wrong types, extremes, huge strings, deep nesting, unknown fields,
//! missing fields) and as bytes (truncations, flipped bytes, garbage), with fixed seeds.
//!
//! What a client relies on, for every case: an answer within the timeout (no hang); never
//! a 500 (a 503 "busy" is fine); an error is the JSON error shape with a message; a 200
//! stream ends with `[DONE]` or an error event. Afterwards the node still serves a normal
//! chat and its log has no panic.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use rbee_tests::{NodeProcess, XorShift, import_model, workspace_root};
use serde_json::{Value, json};

fn tiny_model() -> PathBuf {
    workspace_root().join("crates/rbee-infer/tests/reference/tiny-qwen3.gguf")
}

/// A tiny BERT encoder (embeddings only).
fn tiny_encoder() -> PathBuf {
    workspace_root().join("crates/rbee-infer/tests/reference/tiny-bert-embed.gguf")
}

fn hostile(rng: &mut XorShift) -> Value {
    match rng.below(16) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(0),
        4 => json!(u64::MAX),
        5 => json!(i64::MIN),
        6 => json!(1e308),
        7 => json!(-0.0),
        8 => json!(""),
        9 => json!("x".repeat(64 << 10)),
        10 => json!("\u{0}\u{202e}💥\u{fffd}"),
        11 => json!([]),
        12 => json!({}),
        13 => {
            // Deeper than serde_json's recursion limit.
            let mut v = json!(1);
            for _ in 0..200 {
                v = json!([v]);
            }
            v
        }
        14 => json!(vec![json!({"role": "user", "content": "hi"}); 2000]),
        _ => json!(0.5),
    }
}

/// Every value's path in `v` (object keys and array indices), the root included.
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(k.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(i.to_string());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, key| match v {
        Value::Object(m) => m.get_mut(key).unwrap(),
        Value::Array(a) => &mut a[key.parse::<usize>().unwrap()],
        _ => unreachable!("paths only lead into containers"),
    })
}

fn mutate_json(rng: &mut XorShift, base: &Value) -> Value {
    let mut v = base.clone();
    for _ in 0..=rng.below(2) {
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        let path = all[rng.below(all.len())].clone();
        match rng.below(4) {
            // Remove a field (or an element).
            0 if !path.is_empty() => {
                let (last, parent) = path.split_last().unwrap();
                match at(&mut v, parent) {
                    Value::Object(m) => {
                        m.remove(last);
                    }
                    Value::Array(a) => {
                        a.remove(last.parse::<usize>().unwrap());
                    }
                    _ => {}
                }
            }
            // A field nobody asked for.
            1 => {
                if let Value::Object(m) = at(&mut v, &path) {
                    m.insert("frobnicate".into(), hostile(rng));
                }
            }
            _ => *at(&mut v, &path) = hostile(rng),
        }
    }
    v
}

fn mutate_bytes(rng: &mut XorShift, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    match rng.below(4) {
        0 => b.truncate(rng.below(b.len())),
        1 => {
            let i = rng.below(b.len());
            b[i] = (rng.next_u64() & 0xff) as u8;
        }
        2 => {
            let i = rng.below(b.len());
            b.splice(i..i, [0xff, 0xfe, b'"', b'\\', b'{', 0x00]);
        }
        _ => b = b"\x00\x01garbage".to_vec(),
    }
    b
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Checks one answer; returns its status.
fn judge(what: &str, status: u16, body: &str, stream: bool) -> u16 {
    assert!(
        status < 500 || status == 503,
        "{what}: {status} {}",
        &body[..body.len().min(500)]
    );
    if status >= 400 {
        let v: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: {status} error body is not JSON ({e}): {body}"));
        // OpenAI's shape, or Ollama's (`{"error": "…"}`) on its `/api/*` routes.
        let message = v["error"]["message"]
            .as_str()
            .or(v["error"].as_str())
            .unwrap_or_default();
        assert!(
            !message.is_empty(),
            "{what}: {status} without a message: {body}"
        );
    } else if stream && body.starts_with("data:") {
        let last = body.trim_end().lines().last().unwrap_or_default();
        assert!(
            last == "data: [DONE]" || body.contains("\"error\""),
            "{what}: a stream that ends neither with [DONE] nor an error: …{}",
            &body[body.len().saturating_sub(300)..]
        );
    }
    status
}

fn post(node: &NodeProcess, path: &str, body: &[u8]) -> (u16, String) {
    let mut resp = agent()
        .post(&node.url(path))
        .header("content-type", "application/json")
        .send(body)
        .unwrap_or_else(|e| panic!("POST {path}: no answer: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_else(|e| panic!("POST {path}: body cut off: {e}"));
    (status, text)
}

fn call(node: &NodeProcess, method: &str, path: &str) -> (u16, String) {
    let url = node.url(path);
    let a = agent();
    let resp = match method {
        "DELETE" => a.delete(&url).call(),
        _ => a.get(&url).call(),
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

fn corpus() -> Vec<(&'static str, Value)> {
    let chat =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6});
    vec![
        ("/v1/chat/completions", chat.clone()),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "stream": true, "max_tokens": 6, "temperature": 0.8,
                   "top_p": 0.9, "seed": 3, "stop": ["\n"], "stream_options": {"include_usage": true},
                   "messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": [{"type": "text", "text": "hello"}]}]}),
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "Once upon", "max_tokens": 6, "seed": 1}),
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "Once upon", "max_tokens": 6, "stream": true}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "tiny-bert", "input": ["hello world", "the bees"]}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "tiny-bert", "input": [[2, 110, 3]], "encoding_format": "base64",
                   "dimensions": 64}),
        ),
        (
            "/api/embed",
            json!({"model": "tiny-bert", "input": "hello world", "truncate": true,
                   "keep_alive": "5m"}),
        ),
        (
            "/api/embeddings",
            json!({"model": "tiny-bert", "prompt": "hello"}),
        ),
        (
            "/api/chat",
            json!({"model": "tiny:latest", "messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "hi"}], "stream": false, "keep_alive": "-1s",
                   "options": {"num_predict": 6, "temperature": 0.5, "stop": ["\n"], "num_ctx": 8192}}),
        ),
        (
            "/api/chat",
            json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                   "options": {"num_predict": 4, "seed": 2}}),
        ),
        (
            "/api/generate",
            json!({"model": "tiny", "prompt": "Once upon", "raw": true, "stream": false,
                   "options": {"num_predict": 4, "top_k": 5}}),
        ),
        ("/api/show", json!({"model": "tiny:latest"})),
        ("/api/pull", json!({"model": "tiny", "stream": false})),
        (
            "/api/copy",
            json!({"source": "tiny", "destination": "tiny-copy:v1"}),
        ),
        (
            "/api/create",
            json!({"model": "brief", "from": "tiny", "system": "Be brief.",
                   "parameters": {"temperature": 0.2, "stop": ["###"]},
                   "messages": [{"role": "user", "content": "hi"}], "stream": false}),
        ),
        (
            "/v1/jobs",
            json!({"operation": "infer", "model": "tiny", "prompt": "hi", "max_tokens": 4}),
        ),
        (
            "/v1/jobs",
            json!({"operation": "infer", "model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/jobs",
            json!({"operation": "model_load", "model": "tiny"}),
        ),
        (
            "/v1/jobs",
            json!({"operation": "model_import", "source": "/nonexistent/m.gguf", "name": "m"}),
        ),
        (
            "/v1/jobs",
            json!({"operation": "model_pull", "model": "org/repo"}),
        ),
        (
            "/v1/jobs",
            json!({"operation": "model_remove", "model": "ghost"}),
        ),
    ]
}

#[test]
fn every_route_answers_hostile_input_with_a_clear_error_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    import_model(&data, &tiny_model(), "tiny");
    import_model(&data, &tiny_encoder(), "tiny-bert");
    let node = NodeProcess::start(&data, &["--context-length", "128"]);
    let mut rng = XorShift(0x0ddb_a112_0260);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();

    for (path, base) in corpus() {
        let stream = base["stream"] == json!(true);
        let (status, body) = post(&node, path, base.to_string().as_bytes());
        assert!(
            status < 300,
            "the corpus is valid: {path} {base} -> {status} {body}"
        );
        for i in 0..80 {
            let (body_bytes, kind) = if i % 4 == 3 {
                (mutate_bytes(&mut rng, base.to_string().as_bytes()), "bytes")
            } else {
                (
                    mutate_json(&mut rng, &base).to_string().into_bytes(),
                    "json",
                )
            };
            let (status, text) = post(&node, path, &body_bytes);
            let what = format!(
                "POST {path} ({kind} mutation {i}: {})",
                String::from_utf8_lossy(&body_bytes[..body_bytes.len().min(300)])
            );
            *statuses
                .entry(judge(&what, status, &text, stream))
                .or_default() += 1;
        }
    }

    // Paths and queries: ids and search terms of every shape.
    let odd = [
        "",
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        "%F0%9F%92%A5",
        "%ZZ",
        "a%20b",
        &"x".repeat(8000),
    ];
    for s in odd {
        for (method, path) in [
            ("GET", format!("/v1/jobs/{s}")),
            ("DELETE", format!("/v1/jobs/{s}")),
            ("GET", format!("/v1/jobs/{s}/stream")),
            ("GET", format!("/v1/hub/search?q={s}&limit={s}")),
            (
                "GET",
                format!("/v1/hub/search?limit=99999999999999999999&q={s}"),
            ),
            ("GET", format!("/v1/models?{s}")),
            ("GET", format!("/{s}")),
        ] {
            let (status, text) = call(&node, method, &path);
            let what = format!("{method} {}", &path[..path.len().min(120)]);
            *statuses
                .entry(judge(&what, status, &text, false))
                .or_default() += 1;
        }
    }
    println!("statuses over all cases: {statuses:?}");
    assert!(
        statuses.keys().any(|s| *s >= 400),
        "no case was refused: the mutations do not reach the checks"
    );

    // Still serving, and nothing panicked on the way.
    let (status, body) = post(
        &node,
        "/v1/chat/completions",
        corpus()[0].1.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let log = node.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
