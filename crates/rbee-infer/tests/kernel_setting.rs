//! `RBEE_KERNELS` naming a kernel set that this build or CPU cannot run refuses the load with
//! the reason, instead of running another set than the one asked for. This file is its own
//! process, so the setting is made before anything reads it.
#![allow(clippy::unwrap_used, unsafe_code)]

mod common;
use common::*;

use rbee_infer::engine::{Backend, CandleBackend, LoadOptions};

#[test]
fn a_kernel_set_that_cannot_run_refuses_the_load_with_the_reason() {
    let Some(path) = demo_model() else { return };
    // Builds with the AVX2 baseline lack the portable kernels; portable builds lack AVX2's.
    let (set, why) = if cfg!(all(target_arch = "x86_64", target_feature = "avx2")) {
        ("portable", "scripts/test-portable")
    } else {
        ("avx2", "built without AVX2")
    };
    // SAFETY: the only test in this process, run before any thread reads the environment.
    unsafe { std::env::set_var("RBEE_KERNELS", set) };
    let Err(err) = CandleBackend.load(&path, &LoadOptions::default()) else {
        panic!("a load with kernel set {set}, which cannot run here, succeeded");
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("RBEE_KERNELS={set}")) && msg.contains(why),
        "{msg}"
    );
}
