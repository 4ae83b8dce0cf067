//! The crate dependency order from docs/ARCHITECTURE.md, checked over `cargo metadata`: a crate
//! may use crates of a lower layer only, never one beside or above it.

use std::collections::HashMap;
use std::process::Command;

/// Lower number = lower layer. A new rbee crate must be placed here deliberately.
const LAYERS: &[(&str, u32)] = &[
    ("rbee-proto", 0),
    ("rbee-format", 0),
    ("rbee-pnet", 0),
    ("rbee-store", 1),
    ("rbee-net", 1),
    ("rbee-infer", 1),
    ("rbee-hub", 1),
    ("rbee-node", 2),
    ("rbee-cli", 3),
    ("rbee-tests", 4),
];

#[test]
fn dependencies_only_point_down() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(rbee_tests::workspace_root())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let layers: HashMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut violations = Vec::new();
    let packages = meta["packages"].as_array().expect("packages");
    assert!(packages.len() >= LAYERS.len(), "workspace lost crates");
    for pkg in packages {
        let name = pkg["name"].as_str().unwrap_or_default();
        let Some(&layer) = layers.get(name) else {
            violations.push(format!(
                "{name} has no layer: add it to LAYERS and docs/ARCHITECTURE.md"
            ));
            continue;
        };
        for dep in pkg["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            if !dep_name.starts_with("rbee-") {
                continue;
            }
            match layers.get(dep_name) {
                Some(&l) if l < layer => {}
                Some(&l) => violations.push(format!(
                    "{name} (layer {layer}) depends on {dep_name} (layer {l}): only lower layers are allowed"
                )),
                None => violations.push(format!("{name} depends on unknown crate {dep_name}")),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependency order broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_rule_catches_a_sideways_edge() {
    // The check above must be able to fail: store -> net is sideways (both layer 1).
    let layers: HashMap<&str, u32> = LAYERS.iter().copied().collect();
    assert!(layers["rbee-net"] >= layers["rbee-store"]);
    assert!(layers["rbee-proto"] < layers["rbee-store"]);
}
