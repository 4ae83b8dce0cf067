//! Devices on real node processes: a worker per device, placement across them, per-device
//! status, and routing by free GPU memory across a pool. With no GPU here, the GPUs are
//! simulated (`--devices sim:N=SIZE`: announced and budgeted as GPUs, computed by the device
//! runtime on the CPU — the code a CUDA GPU runs).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rbee_tests::{Member, NodeProcess, http, import_demo, pool_key, rbee};
use serde_json::{Value, json};

fn health(node: &NodeProcess) -> Value {
    node.get_json("/health")
}

fn device<'a>(h: &'a Value, name: &str) -> &'a Value {
    h["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == name)
        .unwrap_or_else(|| panic!("no device {name} in {h:#}"))
}

fn model_state<'a>(h: &'a Value, name: &str) -> &'a Value {
    &h["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no model {name} in {h:#}"))["status"]
}

/// A greedy chat; returns (status, serving node, body).
fn chat(node: &NodeProcess, model: &str) -> (u16, String, String) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "Name a colour."}],
                      "max_tokens": 4, "temperature": 0});
    let mut resp = http()
        .post(&node.url("/v1/chat/completions"))
        .send_json(body)
        .unwrap();
    let served = resp
        .headers()
        .get("x-rbee-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (
        resp.status().as_u16(),
        served,
        resp.body_mut().read_to_string().unwrap(),
    )
}

/// Unloads `model` now (Ollama's `keep_alive: 0`).
fn unload(node: &NodeProcess, model: &str) {
    let resp = http()
        .post(&node.url("/api/generate"))
        .send_json(json!({"model": model, "keep_alive": 0}))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// What `rbee-node status` prints about the running `node`.
fn status_text(node: &NodeProcess, data: &std::path::Path) -> String {
    let out = std::process::Command::new(rbee_tests::rbee_node_bin())
        .args(["--data-dir", data.to_str().unwrap(), "status"])
        .env("RBEE_API_ADDR", node.base.trim_start_matches("http://"))
        .env("XDG_CONFIG_HOME", data.join("no-config"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_model_goes_to_the_gpu_with_room_is_split_when_too_big_and_goes_to_the_cpu_when_no_layer_fits()
{
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    if import_demo(&data, "demo").is_none() {
        return;
    }
    let tiny =
        rbee_tests::workspace_root().join("crates/rbee-infer/tests/reference/tiny-qwen3.gguf");
    let out = rbee(
        &data,
        &["models", "import", tiny.to_str().unwrap(), "--name", "tiny"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A KV budget of one context keeps the demo well inside the GPU (by default the worker
    // would grow its KV budget to fill the device).
    let node = NodeProcess::start(
        &data,
        &[
            "--devices",
            "sim:0=700MiB,cpu",
            "--kv-budget-tokens",
            "4096",
        ],
    );
    let h = health(&node);
    assert_eq!(device(&h, "sim:0")["kind"], "gpu");
    assert_eq!(device(&h, "sim:0")["budget_bytes"], 700u64 << 20);
    assert_eq!(device(&h, "cpu")["kind"], "cpu");

    // The demo fits the simulated GPU: it goes there, on the device runtime.
    let (status, _, body) = chat(&node, "demo");
    assert_eq!(status, 200, "{body}");
    let h = health(&node);
    let s = model_state(&h, "demo");
    assert_eq!(s["device"], "sim:0", "{h:#}");
    assert_eq!(
        s["runtime"], "sim:0 (candle kernels)",
        "the device runtime: {s}"
    );
    let gpu = device(&h, "sim:0");
    assert!(gpu["used_bytes"].as_u64().unwrap() > 0);
    assert_eq!(gpu["models"], json!(["demo"]));

    // A second model that fits beside it goes to the GPU too.
    let (status, _, body) = chat(&node, "tiny");
    assert_eq!(status, 200, "{body}");
    let h = health(&node);
    assert_eq!(model_state(&h, "tiny")["device"], "sim:0", "{h:#}");
    drop(node);

    // A GPU too small for the whole demo: its last layers go there and the rest runs on the
    // CPU (partial offload), the CPU's budget charged with that rest.
    let node = NodeProcess::start(&data, &["--devices", "sim:0=128MiB,cpu"]);
    let (status, _, body) = chat(&node, "demo");
    assert_eq!(status, 200, "{body}");
    let h = health(&node);
    let s = model_state(&h, "demo");
    assert_eq!(s["device"], "sim:0", "{h:#}");
    let runtime = s["runtime"].as_str().unwrap();
    let layers: usize = runtime
        .split(" layers of 18 on ")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a split runtime: {runtime}"));
    assert!((1..18).contains(&layers), "{runtime}");
    assert!(runtime.contains("the rest on cpu"), "{runtime}");
    let host_bytes = s["host_bytes"].as_u64().unwrap();
    assert!(
        host_bytes > 100 << 20,
        "the embedding and the other layers: {s}"
    );
    let gpu = device(&h, "sim:0");
    assert!(gpu["used_bytes"].as_u64().unwrap() <= 128 << 20, "{gpu}");
    assert!(
        device(&h, "cpu")["used_bytes"].as_u64().unwrap() >= host_bytes,
        "the host part counts on the CPU: {h:#}"
    );
    // Unloaded, it gives both back.
    unload(&node, "demo");
    let h = health(&node);
    assert_eq!(device(&h, "cpu")["used_bytes"], 0, "{h:#}");
    assert_eq!(device(&h, "sim:0")["used_bytes"], 0, "{h:#}");
    drop(node);

    // A layer count configured for the model (`gpu_layers`) splits it even on a GPU that
    // would hold it whole.
    let node = NodeProcess::start_with_env(
        &data,
        &[
            "--devices",
            "sim:0=700MiB,cpu",
            "--kv-budget-tokens",
            "4096",
        ],
        &[("RBEE_GPU_LAYERS", "demo=3")],
    );
    let (status, _, body) = chat(&node, "demo");
    assert_eq!(status, 200, "{body}");
    let h = health(&node);
    let s = model_state(&h, "demo");
    assert_eq!(s["device"], "sim:0", "{h:#}");
    assert!(
        s["runtime"]
            .as_str()
            .unwrap()
            .starts_with("3 layers of 18 on "),
        "{s}"
    );
    drop(node);

    // A GPU too small for even one layer: the model runs on the CPU, the GPU stays empty.
    let node = NodeProcess::start(&data, &["--devices", "sim:0=32MiB,cpu"]);
    let (status, _, body) = chat(&node, "demo");
    assert_eq!(status, 200, "{body}");
    let h = health(&node);
    assert_eq!(model_state(&h, "demo")["device"], "cpu", "{h:#}");
    assert_eq!(device(&h, "sim:0")["used_bytes"], 0);
    // `rbee-node status` lists both devices.
    let text = status_text(&node, &data);
    assert!(text.contains("device sim:0"), "{text}");
    assert!(text.contains("device cpu"), "{text}");
}

/// A model too large for either of two GPUs spans both by layers (llama.cpp's layer split
/// over several GPUs): the roomiest takes its last layers, the other the layers before them,
/// the CPU the rest; each device's memory counts its part, and unloading gives all back.
#[test]
fn a_model_too_large_for_one_gpu_spans_two() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    if import_demo(&data, "demo").is_none() {
        return;
    }
    let node = NodeProcess::start(&data, &["--devices", "sim:0=128MiB,sim:1=96MiB,cpu"]);
    let (status, _, body) = chat(&node, "demo");
    assert_eq!(status, 200, "{body}");
    let h = health(&node);
    let s = model_state(&h, "demo");
    assert_eq!(
        s["device"], "sim:0",
        "the GPU with the most free memory: {h:#}"
    );
    let runtime = s["runtime"].as_str().unwrap();
    let count = |text: &str| -> usize {
        text.trim()
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a layer count in `{text}` ({runtime})"))
    };
    let (first, rest) = runtime
        .split_once(" layers of 18 on ")
        .unwrap_or_else(|| panic!("a split runtime: {runtime}"));
    let first = count(first);
    let second = rest
        .split(", ")
        .find(|part| part.contains(" on sim:1"))
        .map(count)
        .unwrap_or_else(|| panic!("layers on sim:1: {runtime}"));
    assert!(
        first >= 1 && second >= 1 && first + second < 18,
        "{runtime}"
    );
    assert!(
        runtime.ends_with("the rest on cpu") || runtime.contains("the rest on cpu ("),
        "{runtime}"
    );
    for (name, budget) in [("sim:0", 128u64 << 20), ("sim:1", 96 << 20)] {
        let used = device(&h, name)["used_bytes"].as_u64().unwrap();
        assert!(used > 0 && used <= budget, "{name}: {h:#}");
    }
    // sim:1 loaded no model of its own: it holds a part of sim:0's, and says so.
    assert_eq!(device(&h, "sim:1")["models"], json!([]), "{h:#}");
    for holder in ["sim:1", "cpu"] {
        let parts = device(&h, holder)["parts"].as_array().unwrap().clone();
        assert_eq!(parts.len(), 1, "{holder}: {h:#}");
        assert_eq!(parts[0]["model"], "demo");
        assert_eq!(parts[0]["held_by"], "sim:0");
        assert!(parts[0]["bytes"].as_u64().unwrap() > 0);
    }
    let text = status_text(&node, &data);
    assert!(text.contains("of demo (loaded by sim:0)"), "{text}");
    let host_bytes = s["host_bytes"].as_u64().unwrap();
    assert!(
        device(&h, "cpu")["used_bytes"].as_u64().unwrap() >= host_bytes && host_bytes > 0,
        "{h:#}"
    );
    // Unloaded, every device gets its memory back.
    unload(&node, "demo");
    let h = health(&node);
    for name in ["sim:0", "sim:1", "cpu"] {
        assert_eq!(device(&h, name)["used_bytes"], 0, "{name}: {h:#}");
        assert_eq!(device(&h, name)["parts"], json!([]), "{name}: {h:#}");
    }
}

#[test]
fn bad_device_lists_are_refused_at_start_with_what_a_device_is() {
    let tmp = tempfile::tempdir().unwrap();
    let out = rbee(
        &tmp.path().join("data"),
        &["join", "--api-addr", "127.0.0.1:0", "--devices", "gpu0"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown device `gpu0`"), "{err}");
    assert!(err.contains("sim:N=SIZE"), "{err}");
}

/// Two nodes hold the model; neither has it loaded. The one with a (simulated) GPU with room
/// serves it, whichever node the request reaches.
#[test]
fn the_pool_routes_to_the_node_with_a_gpu_that_has_room() {
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let (a_dir, b_dir) = (tmp.path().join("cpu-node"), tmp.path().join("gpu-node"));
    if import_demo(&a_dir, "demo").is_none() {
        return;
    }
    import_demo(&b_dir, "demo").unwrap();
    let a = Member::start(
        tmp.path(),
        "cpu-node",
        &key,
        None,
        "",
        &["--devices", "cpu"],
    );
    let b = Member::start(
        tmp.path(),
        "gpu-node",
        &key,
        Some(&a.p2p),
        "",
        &["--devices", "sim:0=1GiB,cpu"],
    );
    // A sees B's GPU in its pool view.
    let start = Instant::now();
    loop {
        let v = a.node.get_json("/v1/pool");
        let sees_gpu = v["peers"].as_array().unwrap().iter().any(|p| {
            p["name"] == "gpu-node"
                && p["status"]["devices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["name"] == "sim:0")
        });
        if sees_gpu {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "pool view: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `rbee-node peers` on the CPU node lists the peer's devices with their free memory.
    let out = std::process::Command::new(rbee_tests::rbee_node_bin())
        .args(["--data-dir", a.data.to_str().unwrap(), "peers"])
        .env("RBEE_API_ADDR", a.node.base.trim_start_matches("http://"))
        .env("XDG_CONFIG_HOME", a.data.join("no-config"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("gpu-node"))
        .unwrap_or("");
    assert!(line.contains("sim:0 1.0 GiB free"), "{text}");
    assert!(line.contains("cpu "), "{text}");
    let (status, served, body) = chat(&a.node, "demo");
    assert_eq!(status, 200, "{body}");
    assert_eq!(served, "gpu-node", "served by the node with GPU room");
    let h = health(&b.node);
    assert_eq!(model_state(&h, "demo")["device"], "sim:0", "{h:#}");
    // The CPU-only node loaded nothing.
    let h = health(&a.node);
    assert_eq!(model_state(&h, "demo")["state"], "on_disk", "{h:#}");
}
