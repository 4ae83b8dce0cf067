//! The real `rbee-node` binary on a throwaway data dir: the models commands as a user runs
//! them, and crash safety when an import is killed at any moment.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rbee_format::gguf::{GgmlType, writer::GgufWriter};
use rbee_tests::{rbee, rbee_node_bin};

fn write_gguf(path: &Path, arch: &str, floats: usize) {
    let mut w = GgufWriter::tiny_model(arch);
    let data: Vec<u8> = (0..floats * 4).map(|i| (i % 253) as u8).collect();
    w.add_tensor("extra.weight", &[floats as u64], GgmlType::F32, data);
    w.write_file(path).unwrap();
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ls_json(data: &Path) -> Vec<serde_json::Value> {
    let out = rbee(data, &["models", "ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

#[test]
fn models_commands_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("tiny-Q4_K_M.gguf");
    write_gguf(&src, "qwen3", 1 << 20);

    let out = rbee(
        &data,
        &["models", "import", src.to_str().unwrap(), "--name", "tiny"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("imported tiny ("),
        "{}",
        stdout(&out)
    );

    let again = rbee(&data, &["models", "import", src.to_str().unwrap()]);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("already present: tiny"),
        "{}",
        stdout(&again)
    );
    // The same bytes under another name: refused, the name clients use is kept.
    let renamed = rbee(
        &data,
        &["models", "import", src.to_str().unwrap(), "--name", "other"],
    );
    assert!(!renamed.status.success());
    assert!(
        stderr(&renamed).contains("rbee-node models alias tiny other"),
        "{}",
        stderr(&renamed)
    );
    // An invalid name fails and catalogs nothing.
    let bad = rbee(
        &data,
        &[
            "models",
            "import",
            src.to_str().unwrap(),
            "--name",
            "../bad",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("not a valid model name"),
        "{}",
        stderr(&bad)
    );

    let models = ls_json(&data);
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["name"], "tiny");
    assert_eq!(models[0]["architecture"], "qwen3");
    let path = PathBuf::from(models[0]["path"].as_str().unwrap());
    assert_eq!(fs::read(path).unwrap(), fs::read(&src).unwrap());

    let out = rbee(&data, &["models", "alias", "tiny", "small"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = rbee(&data, &["models", "show", "small"]);
    assert!(
        stdout(&out).contains("architecture:  qwen3"),
        "{}",
        stdout(&out)
    );
    let out = rbee(&data, &["models", "verify"]);
    assert!(
        out.status.success() && stdout(&out).starts_with("ok"),
        "{}",
        stdout(&out)
    );

    let out = rbee(&data, &["models", "rm", "small"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ls_json(&data).is_empty());
}

#[test]
fn errors_are_one_clear_line_and_a_failure_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let bad = tmp.path().join("bad.gguf");
    fs::write(&bad, b"GGUF\x03\x00\x00\x00").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["models", "import", bad.to_str().unwrap()], "invalid GGUF"),
        (
            &["models", "import", "/does/not/exist.gguf"],
            "/does/not/exist.gguf",
        ),
        (
            &["models", "show", "nothing-here"],
            "no model `nothing-here`",
        ),
        (&["models", "show", "org/"], "accepted forms"),
    ];
    for (args, needle) in cases {
        let out = rbee(&data, args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

/// Kills `models import` at points spread over its whole run. After every kill the catalog has
/// either the complete, verified model or nothing, and gc leaves no stray files.
#[test]
fn a_killed_import_never_leaves_a_half_model() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big.gguf");
    write_gguf(&src, "llama", 48 << 20); // 192 MiB
    let src_arg = src.to_str().unwrap();

    // How long does an uninterrupted import take here?
    let probe = tmp.path().join("probe");
    let started = Instant::now();
    assert!(
        rbee(&probe, &["models", "import", src_arg])
            .status
            .success()
    );
    let full = started.elapsed();

    let mut outcomes = (0, 0);
    for step in 1..=8u32 {
        let data = tmp.path().join(format!("data{step}"));
        fs::create_dir_all(&data).unwrap();
        let mut child = Command::new(rbee_node_bin())
            .arg("--data-dir")
            .arg(&data)
            .args(["models", "import", src_arg])
            .spawn()
            .unwrap();
        // Wait until the import is under way (its temp file exists), then let it run a little
        // longer each step, so the kills spread from "just started" to "about to commit".
        let started = Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(30) {
            let busy = fs::read_dir(data.join("tmp")).is_ok_and(|mut d| d.next().is_some());
            if busy || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(full.mul_f64(f64::from(step - 1) / 10.0));
        let _ = child.kill();
        let _ = child.wait();

        let models = ls_json(&data);
        match models.len() {
            0 => outcomes.0 += 1,
            1 => {
                outcomes.1 += 1;
                let v = rbee(&data, &["models", "verify"]);
                assert!(
                    v.status.success(),
                    "step {step}: cataloged model fails verify: {}",
                    stdout(&v)
                );
            }
            n => panic!("step {step}: {n} models after one import"),
        }
        assert!(rbee(&data, &["models", "gc"]).status.success());
        let leftovers: Vec<_> = ["tmp", "views", "manifests", "blobs"]
            .iter()
            .flat_map(|d| {
                fs::read_dir(data.join(d))
                    .unwrap()
                    .map(|e| e.unwrap().path())
            })
            .collect();
        let expected = if models.is_empty() { 0 } else { 3 }; // one blob, one view, one manifest
        assert_eq!(leftovers.len(), expected, "step {step}: {leftovers:?}");
    }
    eprintln!(
        "import of 192 MiB took {full:?}; killed runs: {} left nothing, {} completed",
        outcomes.0, outcomes.1
    );
    assert!(
        outcomes.0 > 0,
        "no kill landed mid-import; the test proved nothing"
    );
}

/// A second node on a data dir that a node runs on is refused at once, naming the first.
#[test]
fn a_second_node_on_the_same_data_dir_is_refused_naming_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let first = rbee_tests::NodeProcess::start(&data, &[]);
    let port = rbee_tests::free_port();
    let mut second = Command::new(rbee_node_bin())
        .arg("--data-dir")
        .arg(&data)
        .args(["join", "--api-addr", &format!("127.0.0.1:{port}")])
        .env("XDG_CONFIG_HOME", data.join("no-config"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second node on the same data dir kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = second.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!status.success());
    let pid = format!("pid {}", first.child.id());
    assert!(
        err.contains(&pid) && err.contains(&first.base) && err.contains("already running"),
        "{err}"
    );
    // Reading commands still work while the node runs.
    let out = rbee(&data, &["models", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The catalog's damage as a user meets it: a lost catalog.json and `models gc` (which used
/// to delete every model), then a corrupt manifest (which used to fail every listing with an
/// error that named no file and repeated itself).
#[test]
fn a_lost_catalog_and_a_corrupt_manifest_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for (i, name) in ["one", "two"].into_iter().enumerate() {
        let src = tmp.path().join(format!("{name}.gguf"));
        write_gguf(&src, "llama", 1000 + i * 100);
        let out = rbee(&data, &["models", "import", src.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    fs::remove_file(data.join("catalog.json")).unwrap();
    let out = rbee(&data, &["models", "gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("removed 0 paths"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("rebuilt it from the manifests"),
        "{}",
        stderr(&out)
    );
    let names: Vec<String> = ls_json(&data)
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["one", "two"]);

    let id = ls_json(&data)[0]["content_id"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = data.join("manifests").join(&id);
    let mut bytes = fs::read(&manifest).unwrap();
    bytes.truncate(bytes.len() / 2);
    fs::write(&manifest, bytes).unwrap();
    let out = rbee(&data, &["models", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("two"), "{}", stdout(&out));
    assert!(stdout(&out).contains("DAMAGED"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&manifest.display().to_string()),
        "{}",
        stderr(&out)
    );
    let out = rbee(&data, &["models", "show", "one"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("quarantine") && err.contains("models rm one"),
        "{err}"
    );
    assert_eq!(err.matches("malformed").count(), 1, "{err}");
    let out = rbee(&data, &["models", "verify"]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("DAMAGED  one"), "{}", stdout(&out));
    assert!(stdout(&out).contains("ok       two"), "{}", stdout(&out));
}
