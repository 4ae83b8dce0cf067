//! The Ollama-style CLI habits on the real binary and the demo model: `rbee-node run` as an
//! interactive chat (history, `/set`, `/clear`, `"""`), through a running node and in its own
//! process, and `rbee-node ps` / `rbee-node stop`.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rbee_tests::{NodeProcess, demo_model, import_demo, rbee_node_bin};

/// Runs `rbee-node <args>` against the node at `api` (if any), `stdin` piped in.
fn cli(data: &Path, api: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(rbee_node_bin());
    cmd.arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .env("XDG_CONFIG_HOME", data.join("no-config"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match api {
        Some(a) => cmd.env("RBEE_API_ADDR", a),
        // A port nothing listens on: no node answers, so the command works alone.
        None => cmd.env(
            "RBEE_API_ADDR",
            format!("127.0.0.1:{}", rbee_tests::free_port()),
        ),
    };
    let mut child = cmd.spawn().expect("spawning rbee-node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The prompt sizes of each answer, from `--verbose`'s "N tokens (prompt P) …" lines.
fn prompt_sizes(stderr: &str) -> Vec<usize> {
    stderr
        .lines()
        .filter_map(|l| l.split("(prompt ").nth(1)?.split(')').next()?.parse().ok())
        .collect()
}

#[test]
fn run_is_a_chat_with_history_through_the_node_and_ps_and_stop_manage_its_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    if import_demo(&data, "demo").is_none() {
        return;
    }
    let node = NodeProcess::start(&data, &[]);
    let api = node.base.trim_start_matches("http://").to_string();

    let script = "/set parameter temperature 0\n/set parameter num_predict 6\n\
                  Name a colour.\n\"\"\"And now\nname a fruit.\"\"\"\n/show parameters\n\
                  /clear\nName a colour.\n/set system Answer in French.\nName a colour.\n/nope\n/bye\n\
                  this line is never read\n";
    let out = cli(&data, Some(&api), &["run", "demo", "--verbose"], script);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "run failed: {stderr}");
    assert!(
        stdout.contains("Set parameter 'temperature' to '0'."),
        "{stdout}"
    );
    assert!(
        stdout.contains("num_predict 6"),
        "/show parameters: {stdout}"
    );
    assert!(stdout.contains("Cleared the conversation."), "{stdout}");
    assert!(stderr.contains("Unknown command '/nope'"), "{stderr}");
    assert!(
        stderr.contains("served by node"),
        "answered by the node: {stderr}"
    );
    let sizes = prompt_sizes(&stderr);
    assert_eq!(sizes.len(), 4, "four answers, /bye ends the chat: {stderr}");
    // The second turn carries the first question and answer; /clear forgets them, so the
    // same question costs what it did first; the system message adds to the prompt.
    assert!(sizes[1] > sizes[0] + 6, "history is sent: {sizes:?}");
    assert_eq!(sizes[2], sizes[0], "/clear forgets the history: {sizes:?}");
    assert!(sizes[3] > sizes[2], "/set system is sent: {sizes:?}");

    let ps = cli(&data, Some(&api), &["ps"], "");
    let listed = text(&ps.stdout);
    assert!(ps.status.success(), "{}", text(&ps.stderr));
    assert!(
        listed.lines().any(|l| l.starts_with("demo ")),
        "ps lists the loaded model: {listed}"
    );
    let stop = cli(&data, Some(&api), &["stop", "demo"], "");
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert_eq!(text(&stop.stdout).trim(), "stopped demo");
    let ps = text(&cli(&data, Some(&api), &["ps"], "").stdout);
    assert!(!ps.lines().any(|l| l.starts_with("demo ")), "{ps}");
    let again = cli(&data, Some(&api), &["stop", "demo"], "");
    assert_eq!(text(&again.stdout).trim(), "demo was not loaded");
    let missing = cli(&data, Some(&api), &["stop", "no-such-model"], "");
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("no-such-model"),
        "{}",
        text(&missing.stderr)
    );
    drop(node);
}

#[test]
fn run_without_a_node_loads_the_model_in_process_and_answers_one_prompt() {
    let Some(model) = demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let path = model.to_str().unwrap();
    let args = [
        "run",
        path,
        "Say hello.",
        "--temperature",
        "0",
        "--max-tokens",
        "5",
        "--verbose",
    ];
    let out = cli(&data, None, &args, "");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no node is running"), "{stderr}");
    assert!(stderr.contains("in this process"), "{stderr}");
    assert!(!text(&out.stdout).trim().is_empty(), "an answer");
    // Piped text is part of the one prompt: it changes what the model sees.
    let piped = cli(&data, None, &args, "Some more context here.\n");
    let (a, b) = (prompt_sizes(&stderr), prompt_sizes(&text(&piped.stderr)));
    assert!(b[0] > a[0], "stdin appended to the prompt: {a:?} {b:?}");
    // No node and `ps` is a clear error.
    let ps = cli(&data, None, &["ps"], "");
    assert!(!ps.status.success());
    assert!(
        text(&ps.stderr).contains("no node answers"),
        "{}",
        text(&ps.stderr)
    );
}
