//! Helpers shared by the multi-process integration tests: find (or build) the real `rbee-node`
//! binary, and run it against a throwaway data dir.

pub mod hub_double;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of the `rbee-node` binary of this build profile, built once per test process so the
/// tests never run a stale binary.
pub fn rbee_node_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--quiet",
            "-p",
            "rbee-cli",
            "--bin",
            "rbee-node",
        ]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        // Cargo sets the test crate's CARGO_PKG_*/CARGO_MANIFEST_* for this process; build
        // scripts that watch them (ring's does) would otherwise rebuild on every test run.
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str()
                && (k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_MANIFEST_")
                    || k == "CARGO_CRATE_NAME"
                    || k == "CARGO_PRIMARY_PACKAGE")
            {
                cmd.env_remove(k);
            }
        }
        let status = cmd.status().expect("running cargo build for rbee-node");
        assert!(status.success(), "building rbee-node failed");
        // Test executables live in target/<profile>/deps; the binary one level up.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary is in target/<profile>/deps");
        profile_dir.join("rbee-node")
    })
}

/// Runs `rbee-node --data-dir <data> <args…>` to completion.
pub fn rbee(data: &Path, args: &[&str]) -> Output {
    Command::new(rbee_node_bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("spawning rbee-node")
}

/// A model the test scripts fetch into the cache: `$var`, else `~/.cache/rbee/<cached>`, when
/// `present` says it is there. None (with a printed reason) when absent outside CI; in CI a
/// missing model is a failure, since `scripts/test` fetches it.
fn cached_model(
    var: &str,
    cached: &str,
    present: fn(&Path) -> bool,
    script: &str,
) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rbee").join(cached))
        })
        .filter(|p| present(p));
    if path.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{cached} missing in CI: scripts/test should have fetched it"
        );
        eprintln!("SKIPPED: {cached} not found (run {script})");
    }
    path
}

/// The demo model (Gemma 3 270M Q4_K_M), fetched by `scripts/fetch-demo-model`.
pub fn demo_model() -> Option<PathBuf> {
    cached_model(
        "RBEE_DEMO_MODEL",
        "demo-model/gemma-3-270m-q4_k_m.gguf",
        Path::is_file,
        "scripts/fetch-demo-model",
    )
}

/// The embedding model (all-MiniLM-L6-v2, a sentence-transformers folder), fetched by
/// `scripts/fetch-embed-model`.
pub fn embed_model() -> Option<PathBuf> {
    cached_model(
        "RBEE_EMBED_MODEL",
        "embed-model/all-MiniLM-L6-v2",
        |p| p.join("model.safetensors").is_file(),
        "scripts/fetch-embed-model",
    )
}

/// Imports the embedding model into `data` as `name`; None (skipped) when it is absent.
pub fn import_embed(data: &Path, name: &str) -> Option<()> {
    import_model(data, &embed_model()?, name);
    Some(())
}

/// The python of the venv with the official clients (`scripts/test-venv`, exported by
/// `scripts/test` as `RBEE_TEST_PYTHON`); None (with a printed reason) outside CI without it.
pub fn test_python() -> Option<std::ffi::OsString> {
    let python = std::env::var_os("RBEE_TEST_PYTHON");
    if python.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "RBEE_TEST_PYTHON unset in CI: scripts/test sets it"
        );
        eprintln!("SKIPPED: RBEE_TEST_PYTHON not set (scripts/test sets it up)");
    }
    python
}

/// Runs `tests/python/<script>` with the clients' python and `args`, failing with its output
/// and the node's log when it fails; false (skipped) without the venv.
pub fn run_python_clients(script: &str, args: &[&std::ffi::OsStr], node: &NodeProcess) -> bool {
    let Some(python) = test_python() else {
        return false;
    };
    let out = Command::new(python)
        .arg(workspace_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log_text()
    );
    true
}

/// A free TCP port on loopback (bound, read, released), never the same one twice in this
/// process: tests run in parallel, and the kernel readily hands a just-released port to the
/// next caller, so two nodes could otherwise be told the same port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A running `rbee-node join`, killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    pub child: std::process::Child,
    pub base: String,
    pub log: PathBuf,
}

impl NodeProcess {
    /// Starts a node on a free loopback port over `data` and waits until `/health` answers.
    pub fn start(data: &Path, extra: &[&str]) -> NodeProcess {
        Self::start_with_env(data, extra, &[])
    }

    /// [`NodeProcess::start`] with extra environment variables.
    pub fn start_with_env(data: &Path, extra: &[&str], envs: &[(&str, &str)]) -> NodeProcess {
        let port = free_port();
        let log = data.with_extension(format!("node-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("node log");
        let child = Command::new(rbee_node_bin())
            .arg("--data-dir")
            .arg(data)
            .args(["join", "--api-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RBEE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("XDG_CONFIG_HOME", data.join("no-config"))
            .envs(envs.iter().copied())
            .stderr(log_file)
            .spawn()
            .expect("spawning rbee-node join");
        let node = NodeProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // Any HTTP answer (a 401 from a node with a token too) means it is up.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut node = node;
        while std::time::Instant::now() < deadline {
            // Our process must be the one answering: a node that failed to start must not be
            // mistaken for another one on the same port.
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!(
                    "node exited ({status}) before answering; log:\n{}",
                    node.log_text()
                );
            }
            if agent.get(&format!("{}/health", node.base)).call().is_ok() {
                return node;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("node did not come up; log:\n{}", node.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for tests: statuses are values, not errors; generous timeout.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .build()
        .into()
}

/// Imports the demo model into `data` as `name`; None (skipped) when the model is absent.
pub fn import_demo(data: &Path, name: &str) -> Option<()> {
    import_model(data, &demo_model()?, name);
    Some(())
}

/// Imports the model file `model` into the store at `data` as `name` (through the CLI).
pub fn import_model(data: &Path, model: &Path, name: &str) {
    let model = model.to_str().expect("a UTF-8 path");
    let out = rbee(data, &["models", "import", model, "--name", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a valid GGUF of about `bytes` whose one tensor is pseudo-random (so nothing
/// compresses): a large model for transfer tests and benchmarks.
pub fn write_random_gguf(path: &Path, bytes: u64) {
    let words = bytes / 8;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = Vec::with_capacity((words * 8) as usize);
    for _ in 0..words {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    let mut w = rbee_format::gguf::GgufWriter::tiny_model("llama");
    w.add_tensor(
        "big.weight",
        &[words * 2],
        rbee_format::gguf::GgmlType::F32,
        data,
    );
    w.write_file(path).expect("writing the generated GGUF");
}

impl NodeProcess {
    /// `GET path` as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        http()
            .get(&self.url(path))
            .call()
            .expect("GET")
            .body_mut()
            .read_json()
            .expect("a JSON body")
    }
}

/// Waits (up to 30 s) until `node` sees `peers` peers, then a moment more for their statuses
/// (with the models on disk) to arrive.
pub fn wait_for_peers(node: &NodeProcess, peers: usize) {
    let start = std::time::Instant::now();
    while node.get_json("/v1/pool")["peers"]
        .as_array()
        .map_or(0, Vec::len)
        < peers
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "pool did not form:\n{}",
            node.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
}

/// A fresh pool key from the real CLI (`rbee-node pool new`).
pub fn pool_key(scratch: &Path) -> String {
    let out = rbee(&scratch.join("keygen"), &["pool", "new"]);
    assert!(out.status.success(), "pool new failed");
    let key = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_string();
    assert_eq!(key.len(), 64, "{key}");
    key
}

/// A `rbee-node join` in a pool on loopback: its own p2p port, no mDNS.
#[derive(Debug)]
pub struct Member {
    pub node: NodeProcess,
    /// Its p2p address, to bootstrap others from.
    pub p2p: String,
    pub data: PathBuf,
}

impl Member {
    /// Starts node `name` over `<dir>/<name>` with the config file text `config`, joined to
    /// `bootstrap` if given; `extra` are more `join` flags.
    pub fn start(
        dir: &Path,
        name: &str,
        key: &str,
        bootstrap: Option<&str>,
        config: &str,
        extra: &[&str],
    ) -> Member {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).expect("data dir");
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).expect("config file");
        let p2p = format!("/ip4/127.0.0.1/tcp/{}", free_port());
        let config_arg = config_path.to_str().expect("UTF-8 path");
        let mut args = vec![
            "--config",
            config_arg,
            "--name",
            name,
            "--pool-key",
            key,
            "--p2p-addr",
            &p2p,
            "--no-mdns",
        ];
        if let Some(b) = bootstrap {
            args.extend(["--bootstrap", b]);
        }
        args.extend(extra);
        let node = NodeProcess::start(&data, &args);
        Member { node, p2p, data }
    }
}

/// A small deterministic generator (xorshift64) for the fuzz tests: fixed seeds, so every
/// run sees the same cases.
#[derive(Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}
