//! The OpenAI surface's details that clients parse, over plain HTTP to a real node serving
//! a real (tiny) GGUF: stream chunks (one id, the right `object`, `usage: null` until the
//! usage chunk), `x-request-id`, error bodies everywhere (unknown routes included) with a
//! string-or-null `code`, and generations without `max_tokens` that run to the context.
//! The official clients' view is `tests/python/openai_client.py` (run by `node.rs`).
#![allow(clippy::unwrap_used)]

use rbee_node::api_types::{ChatChunk, Completion, ErrorBody};
use rbee_tests::{NodeProcess, http, import_model, workspace_root};
use serde_json::{Value, json};

fn node(context: &str) -> (tempfile::TempDir, NodeProcess) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = workspace_root().join("crates/rbee-infer/tests/reference/tiny-qwen3.gguf");
    import_model(&data, &model, "tiny");
    let node = NodeProcess::start(&data, &["--context-length", context]);
    (tmp, node)
}

fn post(node: &NodeProcess, path: &str, body: &Value) -> (u16, String, Option<String>) {
    let mut resp = http()
        .post(&node.url(path))
        .header("x-request-id", "client-chose-this-1")
        .send_json(body)
        .unwrap();
    let id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap(), id)
}

fn events(sse: &str) -> Vec<&str> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

#[test]
fn streams_carry_one_id_the_right_object_and_null_usage_until_the_end() {
    let (_tmp, node) = node("256");
    for (path, body, object) in [
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
            "chat.completion.chunk",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "Once upon"}),
            "text_completion",
        ),
    ] {
        let mut body = body;
        body["stream"] = json!(true);
        body["max_tokens"] = json!(5);
        body["seed"] = json!(1);
        body["stream_options"] = json!({"include_usage": true});
        let (status, sse, request_id) = post(&node, path, &body);
        assert_eq!(status, 200, "{sse}");
        assert_eq!(request_id.as_deref(), Some("client-chose-this-1"));
        let data = events(&sse);
        assert_eq!(data.last(), Some(&"[DONE]"), "{sse}");
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let (last, rest) = chunks.split_last().unwrap();
        for c in rest {
            assert_eq!(c["object"], object, "{c}");
            assert!(
                c.as_object().unwrap().contains_key("usage") && c["usage"].is_null(),
                "{c}"
            );
            assert_eq!(c["id"], last["id"], "every chunk has the stream's id");
        }
        assert_eq!(last["object"], object, "{last}");
        assert_eq!(last["choices"], json!([]), "{last}");
        assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        // The typed structs the CLI reads parse every chunk.
        for d in &data[..data.len() - 1] {
            if path == "/v1/chat/completions" {
                serde_json::from_str::<ChatChunk>(d).unwrap();
            } else {
                serde_json::from_str::<Completion>(d).unwrap();
            }
        }
    }
}

#[test]
fn without_max_tokens_a_generation_runs_to_the_end_of_the_context() {
    // The tiny model's context is 256 tokens (a longer `--context-length` is clamped to
    // it): an answer without `max_tokens` ends there or at end-of-sequence, not at a
    // default (that no default applies is a unit test of the handler's parameters).
    let (_tmp, node) = node("256");
    let (status, body, _) = post(
        &node,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "Once upon", "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    let c: Completion = serde_json::from_str(&body).unwrap();
    let usage = c.usage.unwrap();
    match c.choices[0].finish_reason.as_deref() {
        Some("length") => assert_eq!(usage.total_tokens, 256, "{usage:?}"),
        other => assert_eq!(other, Some("stop"), "{body}"),
    }
}

#[test]
fn every_error_has_the_openai_shape_with_a_string_or_null_code() {
    let (_tmp, node) = node("64");
    let cases = [
        (
            // A chat model asked for embeddings: a 400 that says so, before any load.
            "/v1/embeddings",
            json!({"model": "tiny", "input": "x"}),
            400,
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}),
            404,
            Some("model_not_found"),
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "word ".repeat(300)}),
            400,
            Some("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "hi", "suffix": "there"}),
            400,
            None,
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": vec!["a"; 17]}),
            400,
            None,
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, text, request_id) = post(&node, path, &body);
        assert_eq!(got, status, "{path}: {text}");
        assert!(request_id.is_some(), "{path}: no x-request-id");
        let e: ErrorBody = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{path}: not an error body ({err}): {text}"));
        assert!(!e.error.message.is_empty());
        assert_eq!(e.error.code.as_deref(), code, "{path}: {text}");
    }
    // A node makes an id when the client sends none (or an unusable one).
    let resp = http().get(&node.url("/v1/models/ghost")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let id = resp
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(id.starts_with("req-"), "{id}");
    let card: Value = http()
        .get(&node.url("/v1/models/tiny"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(
        (&card["id"], &card["object"]),
        (&json!("tiny"), &json!("model"))
    );
}
