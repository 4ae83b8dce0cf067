//! Ollama's API on a real pool of two node processes serving the demo model (Gemma 3 270M):
//! the official `ollama` Python client, unmodified (`tests/python/ollama_client.py`: pull from
//! the peer with progress, list, show, chat streamed and not, generate, ps, copy, delete,
//! keep_alive 0), and a replay of Home Assistant's Ollama integration's requests as raw JSON.
#![allow(clippy::unwrap_used)]

use rbee_tests::{Member, NodeProcess, http, import_demo, pool_key, rbee};
use serde_json::{Value, json};

/// POSTs `body`; the status and every NDJSON object of the answer (one for `stream: false`).
fn post(node: &NodeProcess, path: &str, body: &Value) -> (u16, Vec<Value>, String) {
    let mut resp = http().post(&node.url(path)).send_json(body).unwrap();
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.body_mut().read_to_string().unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (status, lines, kind)
}

/// `body` answered as one object.
fn once_off(body: &Value) -> Value {
    let mut b = body.clone();
    b["stream"] = json!(false);
    b
}

/// Home Assistant's conversation agent (`homeassistant/components/ollama`) calls
/// `AsyncClient.chat(model, messages, tools, stream=True, keep_alive="-1s",
/// options={"num_ctx": 8192}, think=…, format=…)`; the client drops unset fields. These are
/// the bodies it sends.
fn home_assistant(node: &NodeProcess, model: &str) {
    let messages = json!([
        {"role": "system", "content": "You are a voice assistant for Home Assistant.\nAnswer questions about the world truthfully.\nAnswer in plain text. Keep it simple and to the point.\nCurrent time is 18:04:11. Today's date is 2026-12-06."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"}
    ]);
    let body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "keep_alive": "-1s",
        "options": {"num_ctx": 8192, "num_predict": 16, "temperature": 0},
    });
    let (status, lines, kind) = post(node, "/api/chat", &body);
    assert_eq!(status, 200, "{lines:?}\n{}", node.log_text());
    assert_eq!(kind, "application/x-ndjson");
    let (last, pieces) = lines.split_last().unwrap();
    assert!(!pieces.is_empty(), "{lines:?}");
    for p in pieces {
        assert_eq!(p["done"], false, "{p}");
        assert_eq!(p["message"]["role"], "assistant", "{p}");
        assert!(p["message"]["content"].is_string(), "{p}");
        assert_eq!(p["model"], model, "{p}");
        assert!(p["created_at"].as_str().unwrap().ends_with('Z'), "{p}");
    }
    assert_eq!(last["done"], true, "{last}");
    assert!(matches!(
        last["done_reason"].as_str(),
        Some("stop" | "length")
    ));
    for field in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(last[field].is_u64(), "{field}: {last}");
    }
    let answer: String = pieces
        .iter()
        .map(|p| p["message"]["content"].as_str().unwrap())
        .collect();
    assert!(!answer.trim().is_empty(), "{lines:?}");
    // num_ctx 8192 is within this model's trained context: no clamp; keep_alive -1 keeps it.
    let ps = node.get_json("/api/ps");
    assert!(
        ps["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == format!("{model}:latest")),
        "{ps}"
    );

    // With HA's device-control tools: a well-formed stream whose reply is text or calls of
    // the offered tool, with the arguments as objects (HA reads them as a dict).
    let mut with_tools = body.clone();
    with_tools["tools"] = json!([{"type": "function", "function": {
        "name": "HassTurnOn",
        "description": "Turns on/opens/presses a device or entity",
        "parameters": {"type": "object", "properties": {
            "name": {"type": "string"}, "area": {"type": "string"},
            "domain": {"type": "array", "items": {"type": "string", "enum": ["light", "switch"]}}},
            "required": []}}}]);
    let (status, lines, _) = post(node, "/api/chat", &with_tools);
    assert_eq!(status, 200, "{lines:?}");
    assert_eq!(lines.last().unwrap()["done"], true, "{lines:?}");
    for l in &lines {
        assert!(l["message"]["content"].is_string(), "{l}");
        for call in l["message"]["tool_calls"].as_array().into_iter().flatten() {
            assert_eq!(call["function"]["name"], "HassTurnOn", "{l}");
            assert!(call["function"]["arguments"].is_object(), "{l}");
        }
    }
    // HA's AI tasks send a JSON schema as `format`: the answer is JSON that fits it.
    let mut with_format = body.clone();
    with_format["stream"] = json!(false);
    with_format["format"] = json!({"type": "object",
        "properties": {"capital": {"type": "string"}}, "required": ["capital"],
        "additionalProperties": false});
    with_format["options"]["num_predict"] = json!(64);
    let (status, lines, _) = post(node, "/api/chat", &with_format);
    assert_eq!(status, 200, "{lines:?}");
    assert_eq!(
        lines[0]["done_reason"], "stop",
        "the grammar ends it: {lines:?}"
    );
    let content = lines[0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(content)
        .unwrap_or_else(|e| panic!("`format` answer is not JSON ({e}): {content}"));
    assert!(parsed["capital"].is_string(), "{parsed}");
    // `think` reaches the template as its switch; a value that is neither is refused by name.
    let mut thinking = once_off(&body);
    thinking["think"] = json!(false);
    let (status, lines, _) = post(node, "/api/chat", &thinking);
    assert_eq!(status, 200, "{lines:?}");
    thinking["think"] = json!("maybe");
    let (status, lines, _) = post(node, "/api/chat", &thinking);
    assert_eq!(status, 400, "{lines:?}");
    assert!(
        lines[0]["error"].as_str().unwrap().contains("`think`"),
        "{lines:?}"
    );

    // Not streaming: one object.
    let mut once = body.clone();
    once["stream"] = json!(false);
    let (status, lines, _) = post(node, "/api/chat", &once);
    assert_eq!(status, 200, "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["message"]["content"], answer.as_str(), "{lines:?}");
}

#[test]
fn the_ollama_client_and_home_assistant_get_well_formed_answers_from_a_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    let a_data = tmp.path().join("a");
    if import_demo(&a_data, "gemma").is_none() {
        return;
    }
    let a = Member::start(tmp.path(), "a", &key, None, "", &[]);
    let b = Member::start(tmp.path(), "b", &key, Some(&a.p2p), "", &[]);
    rbee_tests::wait_for_peers(&b.node, 1);

    // Errors are Ollama's shape.
    let (status, lines, _) = post(
        &b.node,
        "/api/chat",
        &json!({"model": "gemma", "messages": [{"role": "user", "content": "hi"}],
            "options": {"mirostat": 2}}),
    );
    assert_eq!(status, 400, "{lines:?}");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("options.mirostat"),
        "{lines:?}"
    );

    let url = b.node.url("");
    rbee_tests::run_python_clients(
        "ollama_client.py",
        &[url.as_ref(), "gemma".as_ref()],
        &b.node,
    );
    // After the client's run (which needs the model to run on b, not on a's loaded copy).
    home_assistant(&a.node, "gemma");
}

/// `models create/show/ls/export` from the command line, and the preset used by name on the
/// OpenAI route of a node.
#[test]
fn a_modelfile_preset_from_the_cli_is_shown_exported_and_served() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    if import_demo(&data, "gemma").is_none() {
        return;
    }
    let modelfile = tmp.path().join("Modelfile");
    std::fs::write(
        &modelfile,
        "# a pirate\nFROM gemma:latest\nSYSTEM \"\"\"You are a pirate.\nAnswer as one.\"\"\"\nPARAMETER temperature 0\nPARAMETER stop \"###\"\nPARAMETER stop END\nMESSAGE user Who are you?\nMESSAGE assistant \"Arr, a pirate!\"\nLICENSE MIT\n",
    )
    .unwrap();
    let ok = |args: &[&str]| {
        let out = rbee(&data, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let file = modelfile.to_str().unwrap();
    ok(&["models", "create", "pirate", "-f", file]);
    let shown = ok(&["models", "show", "pirate"]);
    assert!(shown.contains("FROM gemma"), "{shown}");
    assert!(
        shown.contains("SYSTEM \"\"\"You are a pirate.\nAnswer as one.\"\"\""),
        "{shown}"
    );
    assert!(
        shown.contains("PARAMETER stop \"###\"") && shown.contains("PARAMETER stop \"END\""),
        "{shown}"
    );
    assert!(
        shown.contains("MESSAGE assistant \"Arr, a pirate!\""),
        "{shown}"
    );
    let listed = ok(&["models", "ls"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("pirate") && l.contains("preset over gemma")),
        "{listed}"
    );

    // Export: the GGUF, whole, and a Modelfile over it that reads back the same.
    let out = tmp.path().join("export");
    ok(&["models", "export", "pirate", out.to_str().unwrap()]);
    let exported = std::fs::read_to_string(out.join("Modelfile")).unwrap();
    let parsed = rbee_node::preset::parse(&exported).unwrap();
    assert_eq!(parsed.from, "./gemma.gguf");
    assert_eq!(
        parsed.system.as_deref(),
        Some("You are a pirate.\nAnswer as one.")
    );
    assert_eq!(parsed.parameters["stop"], json!(["###", "END"]));
    assert_eq!(parsed.messages.len(), 2);
    assert_eq!(
        std::fs::metadata(out.join("gemma.gguf")).unwrap().len(),
        std::fs::metadata(rbee_tests::demo_model().unwrap())
            .unwrap()
            .len()
    );

    // Bad Modelfiles: refused with the line, nothing stored.
    std::fs::write(&modelfile, "FROM gemma\nSYSTEM hi\nADAPTER ./lora.gguf\n").unwrap();
    let out = rbee(&data, &["models", "create", "bad", "-f", file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 3") && err.contains("ADAPTER"),
        "{err}"
    );
    std::fs::write(&modelfile, "FROM gemma\nPARAMETER mirostat 2\n").unwrap();
    let out = rbee(&data, &["models", "create", "bad", "-f", file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mirostat"), "{err}");
    assert!(!ok(&["models", "ls"]).contains("bad"));

    // Served by name on the OpenAI route: the preset's system prompt and example messages
    // are read (more prompt tokens than the base), and its parameters apply (greedy: the
    // same answer twice).
    let node = NodeProcess::start(&data, &[]);
    let ask = |model: &str| {
        let (status, lines, _) = post(
            &node,
            "/v1/chat/completions",
            &json!({"model": model, "max_tokens": 6, "seed": 3,
                "messages": [{"role": "user", "content": "Name a colour."}]}),
        );
        assert_eq!(status, 200, "{lines:?}");
        lines[0].clone()
    };
    let base = ask("gemma");
    let pirate = ask("pirate");
    assert!(
        pirate["usage"]["prompt_tokens"].as_u64().unwrap()
            > base["usage"]["prompt_tokens"].as_u64().unwrap() + 15,
        "{pirate}\n{base}"
    );
    assert_eq!(
        ask("pirate")["choices"][0]["message"]["content"],
        pirate["choices"][0]["message"]["content"],
        "temperature 0 from the preset"
    );
    ok(&["models", "rm", "pirate"]);
    assert!(!ok(&["models", "ls"]).contains("pirate"));
}

/// `models import ollama:<name>` keeps the Ollama model's system prompt, parameters,
/// messages and Go template as a preset over its GGUF.
#[test]
fn an_ollama_import_keeps_its_settings_as_a_preset() {
    let Some(gguf) = rbee_tests::demo_model() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ollama = tmp.path().join("ollama");
    let blobs = ollama.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = |byte: &str, bytes: &[u8]| {
        let hex = byte.repeat(32);
        std::fs::write(blobs.join(format!("sha256-{hex}")), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let model_hex = "ab".repeat(32);
    std::fs::hard_link(&gguf, blobs.join(format!("sha256-{model_hex}")))
        .or_else(|_| std::fs::copy(&gguf, blobs.join(format!("sha256-{model_hex}"))).map(|_| ()))
        .unwrap();
    let system = layer("01", b"You are a pirate.");
    let params = layer(
        "02",
        br#"{"stop": ["<end_of_turn>"], "temperature": 0.3, "mirostat": 2}"#,
    );
    let template = layer("03", b"{{ .System }} {{ .Prompt }}");
    let messages = layer("04", br#"[{"role": "user", "content": "Ahoy?"}]"#);
    let manifest = json!({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{model_hex}")},
        {"mediaType": "application/vnd.ollama.image.system", "digest": system},
        {"mediaType": "application/vnd.ollama.image.params", "digest": params},
        {"mediaType": "application/vnd.ollama.image.template", "digest": template},
        {"mediaType": "application/vnd.ollama.image.messages", "digest": messages},
    ]});
    let dir = ollama.join("manifests/registry.ollama.ai/library/pirate");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("latest"), manifest.to_string()).unwrap();

    let data = tmp.path().join("data");
    let run = |args: &[&str]| {
        std::process::Command::new(rbee_tests::rbee_node_bin())
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .env("OLLAMA_MODELS", &ollama)
            .env("XDG_CONFIG_HOME", tmp.path().join("no-config"))
            .output()
            .unwrap()
    };
    let out = run(&["models", "import", "ollama:pirate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("`mirostat`") && !err.contains("template is not kept"),
        "{err}"
    );
    let shown = String::from_utf8(run(&["models", "show", "pirate"]).stdout).unwrap();
    assert!(shown.contains("FROM pirate-gguf"), "{shown}");
    assert!(shown.contains("SYSTEM \"You are a pirate.\""), "{shown}");
    assert!(
        shown.contains("PARAMETER stop \"<end_of_turn>\"")
            && shown.contains("PARAMETER temperature 0.3")
            && !shown.contains("mirostat"),
        "{shown}"
    );
    assert!(shown.contains("MESSAGE user \"Ahoy?\""), "{shown}");
    assert!(
        shown.contains("TEMPLATE \"{{ .System }} {{ .Prompt }}\""),
        "{shown}"
    );
    let listed = String::from_utf8(run(&["models", "ls"]).stdout).unwrap();
    assert!(listed.contains("pirate-gguf"), "{listed}");
}

/// `options.num_ctx` per request: the model is loaded (or reloaded when idle) with a context
/// that fits it; beyond the model's trained context it is clamped, and the log says so.
#[test]
fn num_ctx_loads_the_model_with_a_context_that_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    if import_demo(&data, "gemma").is_none() {
        return;
    }
    let node = NodeProcess::start(&data, &["--context-length", "512", "--max-sequences", "2"]);
    let context = |num_ctx: Option<u64>| {
        let mut body = json!({"model": "gemma", "stream": false,
            "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_predict": 2, "temperature": 0}});
        if let Some(n) = num_ctx {
            body["options"]["num_ctx"] = json!(n);
        }
        let (status, lines, _) = post(&node, "/api/chat", &body);
        assert_eq!(status, 200, "{lines:?}");
        node.get_json("/api/ps")["models"][0]["context_length"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(context(None), 512, "the configured context");
    assert_eq!(
        context(Some(256)),
        512,
        "a smaller num_ctx reuses the loaded model"
    );
    assert_eq!(
        context(Some(2048)),
        2048,
        "reloaded with a larger context: {}",
        node.log_text()
    );
    assert_eq!(
        context(Some(1_000_000)),
        32768,
        "clamped to the trained context"
    );
    assert!(node.log_text().contains("clamped"), "{}", node.log_text());
    assert_eq!(context(None), 32768, "kept until its memory is needed");
}

/// Waits until `node`'s pool view lists a peer sharing the preset `name`.
fn wait_for_shared_preset(node: &NodeProcess, name: &str) {
    let start = std::time::Instant::now();
    loop {
        let pool = node.get_json("/v1/pool");
        let listed = pool["peers"].as_array().unwrap().iter().any(|p| {
            p["status"]["presets"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x["name"] == name))
        });
        if listed {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no peer lists preset {name}: {pool}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The `/api/tags` entry named `name`, if listed.
fn tagged(node: &NodeProcess, name: &str) -> Option<Value> {
    node.get_json("/api/tags")["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

/// A preset made on one node is a model of the pool: a node that never saw its Modelfile
/// serves it by name (the definition fetched from the peer, checked against the content id
/// the peer's status lists, and kept), lists and shows it with the same digest, and
/// `/api/pull` of the preset on a third node brings its base model along.
#[test]
fn a_preset_made_on_one_node_is_served_listed_and_pulled_by_name_on_others() {
    let tmp = tempfile::tempdir().unwrap();
    let key = pool_key(tmp.path());
    if import_demo(&tmp.path().join("a"), "gemma").is_none() {
        return;
    }
    let a = Member::start(tmp.path(), "a", &key, None, "", &[]);
    let (status, lines, _) = post(
        &a.node,
        "/api/create",
        &json!({"model": "pirate", "from": "gemma", "stream": false,
            "system": "You are a pirate. Answer every question as a pirate would, in one sentence.",
            "parameters": {"temperature": 0, "num_predict": 5}}),
    );
    assert_eq!(status, 200, "{lines:?}");
    let made = tagged(&a.node, "pirate:latest").unwrap();

    let b = Member::start(tmp.path(), "b", &key, Some(&a.p2p), "", &[]);
    rbee_tests::wait_for_peers(&b.node, 1);
    assert!(tagged(&b.node, "pirate:latest").is_none());
    wait_for_shared_preset(&b.node, "pirate");

    // First asked for on the OpenAI route, as Ollama's clients spell it (`:latest`): the peer's
    // preset applies (its num_predict caps an answer that asked for no limit).
    let (status, lines, _) = post(
        &b.node,
        "/v1/chat/completions",
        &json!({"model": "pirate:latest",
            "messages": [{"role": "user", "content": "Who are you?"}]}),
    );
    assert_eq!(status, 200, "{lines:?}\n{}", b.node.log_text());
    let tokens = lines[0]["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(tokens <= 5, "{lines:?}");

    let ask = |model: &str, options: Value| {
        let (status, lines, _) = post(
            &b.node,
            "/api/chat",
            &json!({"model": model, "stream": false, "options": options,
                "messages": [{"role": "user", "content": "Who are you?"}]}),
        );
        assert_eq!(status, 200, "{lines:?}\n{}", b.node.log_text());
        lines[0].clone()
    };
    // No num_predict in the request: the preset's applies.
    let pirate = ask("pirate", json!({}));
    let base = ask("gemma", json!({"num_predict": 5}));
    // The preset's SYSTEM is in the prompt, its num_predict caps the answer.
    assert!(
        pirate["prompt_eval_count"].as_u64().unwrap()
            > base["prompt_eval_count"].as_u64().unwrap() + 10,
        "{pirate}\n{base}"
    );
    assert!(pirate["eval_count"].as_u64().unwrap() <= 5, "{pirate}");
    assert_eq!(pirate["model"], "pirate", "{pirate}");

    // Kept on b: listed with the same definition (digest), shown with its system prompt.
    let kept = tagged(&b.node, "pirate:latest").unwrap_or_else(|| {
        panic!(
            "b does not list the preset: {}",
            b.node.get_json("/api/tags")
        )
    });
    assert_eq!(kept["digest"], made["digest"], "{kept}\n{made}");
    let (status, shown, _) = post(&b.node, "/api/show", &json!({"model": "pirate"}));
    assert_eq!(status, 200, "{shown:?}");
    assert!(
        shown[0]["system"].as_str().unwrap().contains("a pirate"),
        "{shown:?}"
    );

    // `/api/pull` of the preset on a third node: the definition and the base's weights.
    let c = Member::start(tmp.path(), "c", &key, Some(&a.p2p), "", &[]);
    rbee_tests::wait_for_peers(&c.node, 2);
    wait_for_shared_preset(&c.node, "pirate");
    let (status, lines, _) = post(
        &c.node,
        "/api/pull",
        &json!({"model": "pirate", "stream": false}),
    );
    assert_eq!(status, 200, "{lines:?}\n{}", c.node.log_text());
    assert_eq!(lines[0]["status"], "success", "{lines:?}");
    let pulled = tagged(&c.node, "pirate:latest").unwrap();
    assert_eq!(pulled["digest"], made["digest"]);
    let base_on_c = tagged(&c.node, "gemma:latest")
        .unwrap_or_else(|| panic!("{}", c.node.get_json("/api/tags")));
    let base_on_a = tagged(&a.node, "gemma:latest").unwrap();
    assert_eq!(base_on_c["digest"], base_on_a["digest"]);

    // A name no peer shares is still a clear 404.
    let (status, lines, _) = post(
        &c.node,
        "/api/chat",
        &json!({"model": "parrot", "stream": false,
            "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 404, "{lines:?}");
}
