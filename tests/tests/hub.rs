//! HuggingFace pulls and search against the hub double (`rbee_tests::hub_double`): file choice,
//! revisions, safetensors, split GGUFs, auth errors, resume, cancel, shared downloads,
//! integrity; then end to end through the real `rbee-node` binary.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rbee_format::gguf::{GgmlType, writer::GgufWriter};
use rbee_hub::{Hub, HubConfig, HubError, PlanKind};
use rbee_node::pull::{PullEvent, PullOutcome, from_hub};
use rbee_proto::{HfRef, ModelRef, ModelSource};
use rbee_store::Store;
use rbee_tests::hub_double::{COMMIT_A, COMMIT_B, DoubleFile, HubDouble, SearchEntry};
use rbee_tests::{NodeProcess, free_port, rbee_node_bin};

/// A valid tiny GGUF of about `floats * 4` bytes; `seed` makes distinct contents.
fn gguf(floats: usize, seed: u8) -> Vec<u8> {
    let mut w = GgufWriter::tiny_model("qwen3");
    let data: Vec<u8> = (0..floats * 4).map(|i| (i % 251) as u8 ^ seed).collect();
    w.add_tensor("extra.weight", &[floats as u64], GgmlType::F32, data);
    w.to_bytes().unwrap()
}

struct Env {
    _tmp: tempfile::TempDir,
    double: HubDouble,
    cache: PathBuf,
    store: Store,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hf/hub");
    let store = Store::open(tmp.path().join("data")).unwrap();
    Env {
        double: HubDouble::start(),
        cache,
        store,
        _tmp: tmp,
    }
}

impl Env {
    fn hub(&self, token: Option<&str>) -> Hub {
        Hub::new(HubConfig {
            endpoint: self.double.endpoint.clone(),
            token: token.map(str::to_string),
            cache_dir: self.cache.clone(),
        })
        .unwrap()
    }

    fn pull(&self, reference: &str) -> Result<PullOutcome, rbee_node::NodeError> {
        self.pull_with(&self.hub(None), reference, &|| false)
    }

    fn pull_with(
        &self,
        hub: &Hub,
        reference: &str,
        cancel: &(dyn Fn() -> bool + Sync),
    ) -> Result<PullOutcome, rbee_node::NodeError> {
        from_hub(&self.store, hub, &hf(reference), cancel, &mut |_| {})
    }

    fn catalog_len(&self) -> usize {
        self.store.list().unwrap().len()
    }
}

fn hf(s: &str) -> HfRef {
    match s.parse::<ModelRef>().unwrap() {
        ModelRef::HuggingFace(h) => h,
        other => panic!("{other} is not an HF ref"),
    }
}

fn source_of(store: &Store, out: &PullOutcome) -> ModelSource {
    store.load_manifest(&out.import.content_id).unwrap().source
}

#[test]
fn the_quant_is_chosen_across_naming_styles_and_recorded_as_the_source() {
    for (i, style) in ["m-Q4_K_M.gguf", "m-q4_k_m.gguf", "m.Q4_K_M.gguf"]
        .into_iter()
        .enumerate()
    {
        let e = env();
        let chosen = gguf(1000, i as u8);
        e.double.add(
            "org/m-GGUF",
            "main",
            COMMIT_A,
            vec![
                DoubleFile::lfs("m-Q8_0.gguf", gguf(3000, 1)),
                DoubleFile::lfs(style, chosen.clone()),
                DoubleFile::lfs("m-F16.gguf", gguf(5000, 2)),
                DoubleFile::lfs("m-Q2_K.gguf", gguf(500, 3)),
                DoubleFile::small("README.md", b"# m".to_vec()),
            ],
        );
        let out = e.pull("org/m-GGUF").unwrap();
        assert!(!out.import.already_present);
        assert_eq!(
            source_of(&e.store, &out),
            ModelSource::HuggingFace {
                repo: "org/m-GGUF".into(),
                revision: COMMIT_A.into(),
                file: Some(style.into()),
            }
        );
        assert_eq!(e.double.served(style), chosen.len() as u64, "{style}");
        for other in ["m-Q8_0.gguf", "m-F16.gguf", "m-Q2_K.gguf"] {
            assert_eq!(e.double.served(other), 0, "{other} must not be fetched");
        }
        // Findable by the reference it came from, and a second pull is local.
        let rec = e
            .store
            .resolve(&format!("org/m-GGUF:{style}").parse().unwrap())
            .unwrap();
        assert_eq!(rec.entry.content_id, out.import.content_id);
        let again = e.pull("org/m-GGUF").unwrap();
        assert!(again.import.already_present);
        assert_eq!(again.from, "local");
        assert_eq!(e.double.served(style), chosen.len() as u64);
    }
}

#[test]
fn an_explicit_file_and_a_revision() {
    let e = env();
    e.double.add(
        "org/r",
        "main",
        COMMIT_A,
        vec![
            DoubleFile::lfs("a-Q4_K_M.gguf", gguf(800, 1)),
            DoubleFile::lfs("a-Q8_0.gguf", gguf(900, 2)),
        ],
    );
    e.double.add(
        "org/r",
        "v2",
        COMMIT_B,
        vec![DoubleFile::lfs("b-Q5_0.gguf", gguf(700, 3))],
    );
    let out = e.pull("org/r:a-Q8_0.gguf").unwrap();
    assert!(matches!(source_of(&e.store, &out),
        ModelSource::HuggingFace { file: Some(f), revision, .. } if f == "a-Q8_0.gguf" && revision == COMMIT_A));
    assert_eq!(e.double.served("a-Q4_K_M.gguf"), 0);

    let out = e.pull("org/r@v2").unwrap();
    assert!(matches!(source_of(&e.store, &out),
        ModelSource::HuggingFace { file: Some(f), revision, .. } if f == "b-Q5_0.gguf" && revision == COMMIT_B));
    let reference = std::fs::read_to_string(e.cache.join("models--org--r/refs/v2")).unwrap();
    assert_eq!(reference, COMMIT_B);
    // The snapshot is HF's layout: a relative symlink into blobs/.
    let link = std::fs::read_link(
        e.cache
            .join(format!("models--org--r/snapshots/{COMMIT_B}/b-Q5_0.gguf")),
    );
    assert!(link.unwrap().starts_with("../../blobs"));
    assert_eq!(e.catalog_len(), 2);

    let err = e.pull("org/r:nope.gguf").unwrap_err().to_string();
    assert!(
        err.contains("no file `nope.gguf`") && err.contains("a-Q4_K_M.gguf"),
        "{err}"
    );
}

fn safetensors(tensors: &[(&str, &[u64])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<u64>() * 2;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.resize(out.len() + offset as usize, 7);
    out
}

#[test]
fn a_safetensors_repo_brings_its_side_files_and_the_shards_its_index_names() {
    let e = env();
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}});
    e.double.add(
        "org/tiny-qwen",
        "main",
        COMMIT_A,
        vec![
            DoubleFile::small(
                "config.json",
                br#"{"model_type":"qwen2","max_position_embeddings":4096}"#.to_vec(),
            ),
            DoubleFile::small("tokenizer.json", br#"{"model":{}}"#.to_vec()),
            DoubleFile::small("tokenizer_config.json", b"{}".to_vec()),
            DoubleFile::small("generation_config.json", b"{}".to_vec()),
            DoubleFile::small(
                "model.safetensors.index.json",
                index.to_string().into_bytes(),
            ),
            DoubleFile::lfs(
                "model-00001-of-00002.safetensors",
                safetensors(&[("a", &[4, 8])]),
            ),
            DoubleFile::lfs(
                "model-00002-of-00002.safetensors",
                safetensors(&[("b", &[8])]),
            ),
            DoubleFile::lfs(
                "consolidated.safetensors",
                safetensors(&[("a", &[4, 8]), ("b", &[8])]),
            ),
            DoubleFile::small("README.md", b"hi".to_vec()),
        ],
    );
    let out = e.pull("org/tiny-qwen").unwrap();
    let m = &out.import.manifest;
    assert_eq!(m.metadata.architecture, "qwen2");
    let names: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    for want in [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(!names.contains(&"consolidated.safetensors"));
    assert_eq!(e.double.served("consolidated.safetensors"), 0);
    // The model card comes along: its tags say whether an embedding model was trained for
    // shorter vectors (Matryoshka).
    assert!(names.contains(&"README.md"), "{names:?}");
    assert!(matches!(
        source_of(&e.store, &out),
        ModelSource::HuggingFace { file: None, .. }
    ));
}

#[test]
fn a_split_gguf_is_fetched_whole_then_refused_with_how_to_merge() {
    let e = env();
    let p1 = gguf(600, 1);
    let p2 = vec![9u8; 5000];
    e.double.add(
        "org/big",
        "main",
        COMMIT_A,
        vec![
            DoubleFile::lfs("big-Q4_K_M-00001-of-00002.gguf", p1.clone()),
            DoubleFile::lfs("big-Q4_K_M-00002-of-00002.gguf", p2.clone()),
            DoubleFile::lfs("big-Q8_0.gguf", gguf(900, 2)),
        ],
    );
    let plan = e.hub(None).resolve(&hf("org/big")).unwrap();
    assert_eq!(
        plan.kind,
        PlanKind::SplitGguf {
            first: "big-Q4_K_M-00001-of-00002.gguf".into(),
            parts: 2
        }
    );
    let err = e.pull("org/big").unwrap_err().to_string();
    assert!(
        err.contains("2-part split GGUF") && err.contains("llama-gguf-split --merge"),
        "{err}"
    );
    assert_eq!(
        e.double.served("big-Q4_K_M-00001-of-00002.gguf"),
        p1.len() as u64
    );
    assert_eq!(
        e.double.served("big-Q4_K_M-00002-of-00002.gguf"),
        p2.len() as u64
    );
    assert_eq!(e.double.served("big-Q8_0.gguf"), 0);
    assert_eq!(e.catalog_len(), 0);
}

#[test]
fn gated_private_missing_and_empty_repos_say_what_to_do() {
    let e = env();
    let file = gguf(500, 1);
    e.double.add(
        "org/gated",
        "main",
        COMMIT_A,
        vec![DoubleFile::lfs("g-Q4_K_M.gguf", file.clone())],
    );
    e.double.gate("org/gated", "hf_right");
    e.double.add(
        "org/docs",
        "main",
        COMMIT_A,
        vec![
            DoubleFile::small("README.md", b"x".to_vec()),
            DoubleFile::lfs("pytorch_model.bin", vec![1; 100]),
        ],
    );

    let err = e.pull("org/gated").unwrap_err().to_string();
    for want in [
        "org/gated",
        "401",
        "gated or private",
        "--hf-token",
        "HF_TOKEN",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    let err = e
        .pull_with(&e.hub(Some("hf_wrong")), "org/gated", &|| false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("403") && err.contains("a token was sent"),
        "{err}"
    );
    let out = e
        .pull_with(&e.hub(Some("hf_right")), "org/gated", &|| false)
        .unwrap();
    assert_eq!(out.import.manifest.total_size(), file.len() as u64);
    assert!(!e.double.token_leaked(), "the token reached the CDN");

    let err = e.pull("org/nope").unwrap_err();
    assert!(err.is_model_not_found() && err.status() == 404, "{err:?}");
    assert!(err.to_string().contains("no such repo"), "{err}");
    let err = e.pull("org/docs@v9").unwrap_err().to_string();
    assert!(err.contains("revision `v9`"), "{err}");
    let err = e.pull("org/docs").unwrap_err().to_string();
    assert!(
        err.contains("no usable model files")
            && err.contains("README.md")
            && err.contains("pytorch_model.bin"),
        "{err}"
    );
    assert_eq!(e.catalog_len(), 1);
}

#[test]
fn a_dropped_connection_resumes_and_only_the_rest_is_transferred() {
    let e = env();
    let file = gguf(100_000, 5);
    let size = file.len() as u64;
    e.double.add(
        "org/r",
        "main",
        COMMIT_A,
        vec![DoubleFile::lfs("r-Q4_K_M.gguf", file)],
    );
    e.double.drop_after("r-Q4_K_M.gguf", 150_000);
    let out = e.pull("org/r").unwrap();
    assert_eq!(out.import.manifest.total_size(), size);
    assert_eq!(
        e.double.served("r-Q4_K_M.gguf"),
        size,
        "bytes were sent twice"
    );
    assert_eq!(out.transferred, Some(size));
    let ranges: Vec<String> = e
        .double
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /cdn/"))
        .collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(ranges[1].ends_with("[bytes=150000-]"), "{ranges:?}");
}

#[test]
fn cancel_stops_mid_file_leaves_no_model_and_the_next_pull_resumes() {
    let e = env();
    let file = gguf(100_000, 6);
    let size = file.len() as u64;
    e.double.add(
        "org/r",
        "main",
        COMMIT_A,
        vec![DoubleFile::lfs("r-Q4_K_M.gguf", file.clone())],
    );
    let gate = e.double.pause_after("r-Q4_K_M.gguf", 65_536);
    let cancel = Arc::new(AtomicBool::new(false));
    let hub = e.hub(None);
    let result = std::thread::scope(|s| {
        let c = cancel.clone();
        let h = s.spawn(|| {
            let flag = cancel.clone();
            // Cancel once the first 64 KiB are on disk, while the hub is still sending.
            let mut events = move |ev: PullEvent| {
                if let PullEvent::Progress { done, .. } = ev
                    && done >= 65_536
                {
                    flag.store(true, Ordering::Relaxed);
                }
            };
            from_hub(
                &e.store,
                &hub,
                &hf("org/r"),
                &move || c.load(Ordering::Relaxed),
                &mut events,
            )
        });
        gate.wait_reached();
        while !cancel.load(Ordering::Relaxed) && !h.is_finished() {
            std::thread::yield_now();
        }
        gate.release();
        h.join().unwrap()
    });
    assert_eq!(result.unwrap_err().to_string(), "cancelled");
    assert_eq!(e.catalog_len(), 0);
    let sha = DoubleFile::lfs("x", file).sha256();
    let part = e.cache.join(format!("models--org--r/blobs/{sha}.part"));
    let kept = std::fs::metadata(&part).unwrap().len();
    assert_eq!(kept, 65_536);

    let out = e.pull("org/r").unwrap();
    assert_eq!(out.import.manifest.total_size(), size);
    assert_eq!(out.transferred, Some(size - kept));
    assert!(!part.exists());
}

#[test]
fn two_concurrent_pulls_of_one_model_share_one_download() {
    let e = env();
    let file = gguf(100_000, 7);
    let size = file.len() as u64;
    e.double.add(
        "org/r",
        "main",
        COMMIT_A,
        vec![DoubleFile::lfs("r-Q4_K_M.gguf", file)],
    );
    let gate = e.double.pause_after("r-Q4_K_M.gguf", 65_536);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| e.pull("org/r"));
        let b = s.spawn(|| e.pull("org/r"));
        gate.wait_reached();
        // Both pulls have listed the repo before the first transfer may go on.
        while e
            .double
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/models/"))
            .count()
            < 2
        {
            std::thread::yield_now();
        }
        gate.release();
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_eq!(a.import.content_id, b.import.content_id);
    assert_eq!(e.double.served("r-Q4_K_M.gguf"), size);
    assert_eq!(a.transferred.unwrap() + b.transferred.unwrap(), size);
    assert_eq!(e.catalog_len(), 1);
    assert_eq!(
        e.double
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /cdn/"))
            .count(),
        1
    );
}

#[test]
fn bytes_that_do_not_match_the_hubs_hash_are_discarded() {
    let e = env();
    let file = gguf(20_000, 8);
    let mut bad = file.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let f = DoubleFile::lfs("r-Q4_K_M.gguf", file);
    let sha = f.sha256();
    e.double.add("org/r", "main", COMMIT_A, vec![f]);
    e.double.corrupt("r-Q4_K_M.gguf", bad);
    let err = e.pull("org/r").unwrap_err().to_string();
    assert!(
        err.contains("integrity check failed") && err.contains(&sha),
        "{err}"
    );
    assert_eq!(e.catalog_len(), 0);
    let blobs = e.cache.join("models--org--r/blobs");
    assert!(!blobs.join(&sha).exists());
    assert!(!blobs.join(format!("{sha}.part")).exists());
    // The hub announcing another ETag than its listing: refused before any byte is fetched.
    let e2 = env();
    let f = DoubleFile::lfs("t-Q4_K_M.gguf", gguf(100, 3));
    e2.double.add("org/t", "main", COMMIT_A, vec![f]);
    e2.double.etag("t-Q4_K_M.gguf", &"0".repeat(64));
    let err = e2.pull("org/t").unwrap_err().to_string();
    assert!(err.contains("the repo changed during the pull"), "{err}");
    assert_eq!(e2.double.served("t-Q4_K_M.gguf"), 0);
    assert_eq!(e2.catalog_len(), 0);
    // Small files are checked against their git blob id the same way.
    let e = env();
    let f = DoubleFile::small("s-Q4_K_M.gguf", gguf(100, 1));
    e.double.add("org/s", "main", COMMIT_A, vec![f]);
    e.double.corrupt("s-Q4_K_M.gguf", gguf(100, 2));
    let err = e.pull("org/s").unwrap_err().to_string();
    assert!(err.contains("git blob sha1"), "{err}");
}

#[test]
fn search_sorts_by_downloads_and_filters_gguf() {
    let e = env();
    for (id, downloads, gguf) in [
        ("a/llama-GGUF", 10, true),
        ("b/llama", 500, false),
        ("c/llama-q", 50, true),
        ("d/other", 1000, true),
    ] {
        e.double.add_search(SearchEntry {
            id: id.into(),
            downloads,
            likes: downloads / 10,
            gguf,
        });
    }
    let hub = e.hub(None);
    let hits = hub.search("llama", false, 2).unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["b/llama", "c/llama-q"]);
    assert!(!hits[0].gguf && hits[1].gguf);
    assert_eq!(hits[0].likes, 50);
    let ids: Vec<String> = hub
        .search("llama", true, 10)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, ["c/llama-q", "a/llama-GGUF"]);
    assert!(matches!(
        hub.search(" ", false, 5),
        Err(HubError::Invalid(_))
    ));
}

// ---- end to end through the real binary --------------------------------------------------

fn cli(data: &Path, hf_home: &Path, endpoint: &str, api_port: u16, args: &[&str]) -> Output {
    Command::new(rbee_node_bin())
        .arg("--data-dir")
        .arg(data)
        .args(["--hf-endpoint", endpoint, "--hf-home"])
        .arg(hf_home)
        .args(args)
        .env("RBEE_API_ADDR", format!("127.0.0.1:{api_port}"))
        .env("XDG_CONFIG_HOME", data.join("no-config"))
        .env_remove("HF_TOKEN")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn ls_json(data: &Path) -> Vec<serde_json::Value> {
    let out = rbee_tests::rbee(data, &["models", "ls", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

#[test]
fn models_pull_through_a_running_node_and_in_process() {
    let double = HubDouble::start();
    let file = gguf(50_000, 9);
    double.add(
        "org/tiny-GGUF",
        "main",
        COMMIT_A,
        vec![
            DoubleFile::lfs("tiny.Q8_0.gguf", gguf(60_000, 1)),
            DoubleFile::lfs("tiny.Q4_K_M.gguf", file.clone()),
        ],
    );
    double.add(
        "org/slow",
        "main",
        COMMIT_B,
        vec![DoubleFile::lfs("slow-Q4_K_M.gguf", gguf(100_000, 3))],
    );
    double.add_search(SearchEntry {
        id: "org/tiny-GGUF".into(),
        downloads: 42,
        likes: 7,
        gguf: true,
    });
    let gate = double.pause_after("slow-Q4_K_M.gguf", 65_536);

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hf_home = tmp.path().join("hf");
    let hf_home_s = hf_home.to_str().unwrap();
    let node = NodeProcess::start(
        &data,
        &["--hf-endpoint", &double.endpoint, "--hf-home", hf_home_s],
    );
    let port: u16 = node.base.rsplit(':').next().unwrap().parse().unwrap();

    let out = cli(
        &data,
        &hf_home,
        &double.endpoint,
        port,
        &["models", "pull", "org/tiny-GGUF"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log_text()
    );
    assert!(stdout.contains("through the running node"), "{stdout}");
    let models = ls_json(&data);
    assert_eq!(models.len(), 1);
    assert_eq!(
        models[0]["source"],
        format!("hf:org/tiny-GGUF@{COMMIT_A}:tiny.Q4_K_M.gguf")
    );
    assert_eq!(models[0]["size"], file.len() as u64);
    assert_eq!(double.served("tiny.Q8_0.gguf"), 0);

    // The node's search route.
    let mut resp = agent()
        .get(&node.url("/v1/hub/search?q=tiny&gguf=true&limit=5"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value = resp.body_mut().read_json().unwrap();
    assert_eq!(v["data"][0]["id"], "org/tiny-GGUF");
    assert_eq!(v["data"][0]["downloads"], 42);
    assert_eq!(v["data"][0]["gguf"], true);

    // A pull job cancelled with DELETE mid-file: the stream ends in an error, no model.
    let mut resp = agent()
        .post(&node.url("/v1/jobs"))
        .send_json(serde_json::json!({"operation": "model_pull", "model": "org/slow"}))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let created: serde_json::Value = resp.body_mut().read_json().unwrap();
    let id = created["job_id"].as_str().unwrap().to_string();
    gate.wait_reached();
    // Mid-file for the node too: its job has seen the download start (resolving,
    // downloading, progress) before the cancel.
    let start = std::time::Instant::now();
    while node.get_json(&format!("/v1/jobs/{id}"))["events"]
        .as_u64()
        .unwrap()
        < 3
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{}",
            node.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let resp = agent()
        .delete(&node.url(&format!("/v1/jobs/{id}")))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    gate.release();
    let mut stream = agent()
        .get(&node.url(&format!("/v1/jobs/{id}/stream")))
        .call()
        .unwrap();
    let text = stream.body_mut().read_to_string().unwrap();
    assert!(
        text.contains("event: error") && text.contains("cancelled"),
        "{text}"
    );
    assert!(
        text.contains("\"phase\":\"downloading\"") && text.contains("event: progress"),
        "{text}"
    );
    assert_eq!(ls_json(&data).len(), 1);

    // Not an HF reference: refused up front.
    let mut resp = agent()
        .post(&node.url("/v1/jobs"))
        .send_json(serde_json::json!({"operation": "model_pull", "model": "demo"}))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(
        resp.body_mut()
            .read_to_string()
            .unwrap()
            .contains("HuggingFace reference")
    );
    drop(node);

    // Without a node: in this process, resuming the cancelled download, and search.
    let idle_port = free_port();
    let out = cli(
        &data,
        &hf_home,
        &double.endpoint,
        idle_port,
        &["models", "pull", "org/slow"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("in this process"), "{stdout}");
    assert_eq!(ls_json(&data).len(), 2);
    let out = cli(
        &data,
        &hf_home,
        &double.endpoint,
        idle_port,
        &["models", "search", "tiny", "--gguf"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("org/tiny-GGUF") && stdout.contains("yes"),
        "{stdout}"
    );
    let out = cli(
        &data,
        &hf_home,
        &double.endpoint,
        idle_port,
        &["models", "pull", "org/missing"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such repo"));
}

/// Starts `rbee-node models pull <model>`, waits for the hub to be mid-file, sends SIGINT,
/// lets the hub go on once the CLI says it is cancelling, and returns (success, stderr).
fn interrupted_pull(
    data: &Path,
    hf_home: &Path,
    double: &HubDouble,
    port: u16,
    model: &str,
    gate: &rbee_tests::hub_double::Gate,
) -> (bool, String) {
    use std::io::BufRead;
    let mut child = Command::new(rbee_node_bin())
        .arg("--data-dir")
        .arg(data)
        .args(["--hf-endpoint", &double.endpoint, "--hf-home"])
        .arg(hf_home)
        .args(["models", "pull", model])
        .env("RBEE_API_ADDR", format!("127.0.0.1:{port}"))
        .env("XDG_CONFIG_HOME", data.join("no-config"))
        .env_remove("HF_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    gate.wait_reached();
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut text = String::new();
    while !text.contains("cancelling") {
        if stderr.read_line(&mut text).unwrap() == 0 {
            break;
        }
    }
    gate.release();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    (status.success(), format!("{text}{rest}(exit: {status})"))
}

#[test]
fn ctrl_c_cancels_a_pull_in_process_and_through_a_node() {
    let double = HubDouble::start();
    double.add(
        "org/a",
        "main",
        COMMIT_A,
        vec![DoubleFile::lfs("a-Q4_K_M.gguf", gguf(100_000, 4))],
    );
    double.add(
        "org/b",
        "main",
        COMMIT_B,
        vec![DoubleFile::lfs("b-Q4_K_M.gguf", gguf(100_000, 5))],
    );
    let gate_a = double.pause_after("a-Q4_K_M.gguf", 65_536);
    let gate_b = double.pause_after("b-Q4_K_M.gguf", 65_536);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hf_home = tmp.path().join("hf");

    let (ok, stderr) = interrupted_pull(&data, &hf_home, &double, free_port(), "org/a", &gate_a);
    assert!(!ok && stderr.contains("error: cancelled"), "{stderr}");
    assert!(ls_json(&data).is_empty());

    let node = NodeProcess::start(
        &data,
        &[
            "--hf-endpoint",
            &double.endpoint,
            "--hf-home",
            hf_home.to_str().unwrap(),
        ],
    );
    let port: u16 = node.base.rsplit(':').next().unwrap().parse().unwrap();
    let (ok, stderr) = interrupted_pull(&data, &hf_home, &double, port, "org/b", &gate_b);
    assert!(
        !ok && stderr.contains("error: cancelled"),
        "{stderr}\n{}",
        node.log_text()
    );
    let jobs: serde_json::Value = agent()
        .get(&node.url("/v1/jobs"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(jobs["data"][0]["operation"], "model_pull");
    assert_eq!(jobs["data"][0]["status"], "cancelled");
    assert!(ls_json(&data).is_empty());
}
