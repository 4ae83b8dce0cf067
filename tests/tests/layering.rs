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

/// Library code may use `unsafe` only where an issue allowed it (mapping model files, the
/// kernels' instruction-set dispatch) and every `unsafe` block there says why it is sound in a
/// `SAFETY:` comment right above it. Test files are exempt (the fuzz tests' counting allocator).
#[test]
fn unsafe_code_lives_only_in_the_audited_modules() {
    const ALLOWED: &[&str] = &[
        "crates/rbee-infer/src/model/mapped.rs",
        "crates/rbee-infer/src/model/kernels/dispatch.rs",
    ];
    let root = rbee_tests::workspace_root();
    let mut sources = Vec::new();
    let mut stack = vec![root.join("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("tests") && !path.ends_with("target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push(path);
            }
        }
    }
    assert!(sources.len() > 50, "found only {} sources", sources.len());
    let mut allowed_seen = 0;
    for path in sources {
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let allows = text.contains("allow(unsafe_code)");
        let allowed = ALLOWED.contains(&rel.as_str());
        assert!(
            !allows || allowed,
            "{rel} allows unsafe code; only {ALLOWED:?} may"
        );
        if !allowed {
            continue;
        }
        allowed_seen += 1;
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !code.contains("unsafe {") && !code.contains("unsafe{") {
                continue;
            }
            // The nearest comment block above the statement must contain SAFETY:.
            let above = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("//"))
                .any(|l| l.contains("SAFETY:"));
            assert!(
                above,
                "{rel}:{}: an unsafe block without a SAFETY: comment above it",
                i + 1
            );
        }
    }
    assert_eq!(
        allowed_seen,
        ALLOWED.len(),
        "an audited module moved: update ALLOWED"
    );
}
