//! Helpers shared by the multi-process integration tests: find (or build) the real `rbee-node`
//! binary, and run it against a throwaway data dir.

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
