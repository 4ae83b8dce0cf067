//! Which instruction set the quantised kernels use, chosen once at run time: the second
//! module of the workspace's libraries allowed `unsafe` code (`tests/tests/layering.rs` keeps
//! it so, beside `model/mapped.rs`).
//!
//! The CPU's features are detected at the first use (`is_x86_feature_detected!`) and the best
//! kernel set it supports is taken, unless `RBEE_KERNELS` names one (`avx512-vnni`,
//! `avx-vnni`, `avx2`, `portable`); a set the CPU or this build lacks is refused when a model
//! loads, with the reason. The choice shows in the load log and in the runtime's description
//! (`/health`, `rbee-node status`).
//!
//! Kernels for an instruction set beyond the build's baseline are `#[target_feature]`
//! functions ([`super::vnni`]); calling one is `unsafe` because running it on a CPU without
//! the feature is undefined behaviour. Every such call is here, behind a [`Kernels`] value,
//! which exists only for a set [`Kernels::new`] found the CPU to support: that is the
//! invariant each `SAFETY:` comment below relies on.
//!
//! What the sets compute is the same to the bit: the VNNI kernels replace the integer steps
//! only (`vpdpbusd` instead of `vpmaddubsw` + `vpmaddwd`), which are exact in any order, and
//! keep every float step of the AVX2 kernels in its order (tests below check each path this
//! CPU supports against the AVX2 one).

#![allow(unsafe_code)]

use std::sync::OnceLock;

/// A kernel set, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSet {
    /// Plain Rust the compiler vectorises for the build's target (only in builds without the
    /// AVX2 baseline: `scripts/test-portable`).
    Portable,
    /// AVX2 + FMA + F16C: ggml's own integer steps (the build's baseline on x86-64).
    Avx2,
    /// AVX2 with the 256-bit VNNI dot products (`avxvnni`: Alder Lake, Sapphire Rapids, Zen 5).
    AvxVnni,
    /// AVX-512 F/BW/VL with VNNI: the VNNI dot products through their AVX-512VL encoding
    /// (Ice Lake, Sapphire Rapids, Zen 4).
    Avx512Vnni,
}

impl KernelSet {
    /// Every set, best first.
    pub const ALL: [KernelSet; 4] = [
        KernelSet::Avx512Vnni,
        KernelSet::AvxVnni,
        KernelSet::Avx2,
        KernelSet::Portable,
    ];

    /// The name `RBEE_KERNELS` takes and the status shows.
    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Portable => "portable",
            KernelSet::Avx2 => "avx2",
            KernelSet::AvxVnni => "avx-vnni",
            KernelSet::Avx512Vnni => "avx512-vnni",
        }
    }

    pub fn parse(name: &str) -> Option<KernelSet> {
        KernelSet::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Why this set cannot run here (this CPU or this build lacks it), or None if it can.
    pub fn missing(self) -> Option<String> {
        let avx2_build = cfg!(all(target_arch = "x86_64", target_feature = "avx2"));
        match self {
            KernelSet::Portable if avx2_build => Some(
                "this binary was built with AVX2 as its baseline (.cargo/config.toml); the \
                 portable kernels are in builds without it (scripts/test-portable)"
                    .into(),
            ),
            KernelSet::Portable => None,
            _ if !avx2_build => Some(format!(
                "this binary was built without AVX2; the {} kernels are in x86-64 builds \
                 with it (.cargo/config.toml)",
                self.name()
            )),
            _ => {
                let lacking = self.lacking();
                (!lacking.is_empty()).then(|| {
                    format!(
                        "this CPU lacks {} (kernel sets it supports: {})",
                        lacking.join(", "),
                        supported_names()
                    )
                })
            }
        }
    }

    /// The CPU features the set's kernels are compiled for.
    fn features(self) -> &'static [&'static str] {
        match self {
            KernelSet::Portable => &[],
            KernelSet::Avx2 => &["avx2", "fma", "f16c"],
            KernelSet::AvxVnni => &["avx2", "fma", "f16c", "avxvnni"],
            KernelSet::Avx512Vnni => &[
                "avx2",
                "fma",
                "f16c",
                "avx512f",
                "avx512bw",
                "avx512vl",
                "avx512vnni",
            ],
        }
    }
}

/// Whether the CPU has feature `f` (one of [`KernelSet::features`]).
#[cfg(target_arch = "x86_64")]
fn cpu_has(f: &str) -> bool {
    match f {
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("fma"),
        "f16c" => is_x86_feature_detected!("f16c"),
        "avxvnni" => is_x86_feature_detected!("avxvnni"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512bw" => is_x86_feature_detected!("avx512bw"),
        "avx512vl" => is_x86_feature_detected!("avx512vl"),
        "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has(_: &str) -> bool {
    false
}

impl KernelSet {
    /// The CPU features this set needs that the CPU lacks.
    fn lacking(self) -> Vec<&'static str> {
        self.features()
            .iter()
            .copied()
            .filter(|f| !cpu_has(f))
            .collect()
    }

    /// Whether this build and CPU run it: [`missing`](Self::missing) without the message (which
    /// lists the sets that do run, so it cannot ask `missing` itself).
    fn runs_here(self) -> bool {
        let avx2_build = cfg!(all(target_arch = "x86_64", target_feature = "avx2"));
        match self {
            KernelSet::Portable => !avx2_build,
            _ => avx2_build && self.lacking().is_empty(),
        }
    }
}

fn supported_names() -> String {
    KernelSet::ALL
        .into_iter()
        .filter(|s| s.runs_here())
        .map(KernelSet::name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A kernel set this CPU and build can run: the proof the `unsafe` calls below rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kernels(KernelSet);

impl Kernels {
    /// `set` if it can run here (see [`KernelSet::missing`]).
    pub fn new(set: KernelSet) -> Result<Kernels, String> {
        match set.missing() {
            None => Ok(Kernels(set)),
            Some(why) => Err(format!("kernel set {} cannot run: {why}", set.name())),
        }
    }

    /// The best set this CPU and build support.
    pub fn best() -> Kernels {
        KernelSet::ALL
            .into_iter()
            .find_map(|s| Kernels::new(s).ok())
            // Every build runs one of Avx2 (x86-64 with the baseline) or Portable (others).
            .unwrap_or(Kernels(KernelSet::Portable))
    }

    pub fn set(self) -> KernelSet {
        self.0
    }

    /// What a setting (`RBEE_KERNELS`'s value, None if unset) chooses.
    pub fn from_setting(setting: Option<&str>) -> Result<Kernels, String> {
        let Some(name) = setting.filter(|s| !s.trim().is_empty()) else {
            return Ok(Kernels::best());
        };
        let set = KernelSet::parse(name).ok_or_else(|| {
            format!(
                "RBEE_KERNELS={name:?} names no kernel set; use one of {} (this CPU: {})",
                KernelSet::ALL.map(KernelSet::name).join(", "),
                supported_names()
            )
        })?;
        Kernels::new(set).map_err(|e| format!("RBEE_KERNELS={name}: {e}"))
    }
}

/// The kernel set of this process: `RBEE_KERNELS`, else the best the CPU supports; an error
/// if the setting names a set that cannot run (models refuse to load with it).
pub(crate) fn chosen() -> Result<Kernels, String> {
    static CHOSEN: OnceLock<Result<Kernels, String>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let chosen = Kernels::from_setting(std::env::var("RBEE_KERNELS").ok().as_deref());
            match &chosen {
                Ok(k) => tracing::info!(kernels = k.set().name(), "CPU kernel set"),
                Err(e) => tracing::error!("{e}"),
            }
            chosen
        })
        .clone()
}

/// The kernels matmuls run: [`chosen`], or the best set if the setting was refused (no model
/// loads then, so no matmul runs with it).
pub(crate) fn active() -> Kernels {
    chosen().unwrap_or_else(|_| Kernels::best())
}

// The dispatched kernels. Each takes what its AVX2 twin takes; `k` picks the instruction set.

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod x86 {
    use super::super::q4_k_tiles::Block;
    use super::super::vnni::{avx512, avxvnni};
    use super::super::{q4_k_tiles, q6_k_tiles, q8_0_tiles};
    use super::{KernelSet, Kernels};
    use crate::model::kernels::quantize::{Q8KRows, QK_K, QK8_0};

    /// Q8_0: one weight row times `T` activation rows, the eight lanes of each.
    pub(crate) fn q8_0_dot_tile<const T: usize>(
        k: Kernels,
        wq: &[i8],
        wd: &[f32],
        rows: [(&[i8], &[f32]); T],
    ) -> [[f32; 8]; T] {
        match k.0 {
            // SAFETY: `k` holds Avx512Vnni only if `Kernels::new` saw this CPU report every
            // feature `avx512::q8_0_dot_tile` is compiled for.
            KernelSet::Avx512Vnni => unsafe { avx512::q8_0_dot_tile(wq, wd, rows) },
            // SAFETY: as above, for AvxVnni and `avxvnni::q8_0_dot_tile`'s features.
            KernelSet::AvxVnni => unsafe { avxvnni::q8_0_dot_tile(wq, wd, rows) },
            _ => q8_0_tiles::dot_tile(wq, wd, rows),
        }
    }

    /// Q8_0: four interleaved activation rows times one weight row.
    pub(crate) fn q8_0_tile_4x1(
        k: Kernels,
        wq: &[i8],
        wd: &[f32],
        tq: &[[[i8; QK8_0]; 4]],
        td: &[[f32; 4]],
    ) -> [f32; 4] {
        match k.0 {
            // SAFETY: `k` holds Avx512Vnni only if `Kernels::new` saw this CPU report every
            // feature `avx512::q8_0_tile_4x1` is compiled for.
            KernelSet::Avx512Vnni => unsafe { avx512::q8_0_tile_4x1(wq, wd, tq, td) },
            // SAFETY: as above, for AvxVnni and `avxvnni::q8_0_tile_4x1`'s features.
            KernelSet::AvxVnni => unsafe { avxvnni::q8_0_tile_4x1(wq, wd, tq, td) },
            _ => q8_0_tiles::tile_4x1(wq, wd, tq, td),
        }
    }

    /// Q8_0: four interleaved activation rows times two weight rows.
    #[allow(clippy::type_complexity)]
    pub(crate) fn q8_0_tile_4x2(
        k: Kernels,
        w0: (&[i8], &[f32]),
        w1: (&[i8], &[f32]),
        tq: &[[[i8; QK8_0]; 4]],
        td: &[[f32; 4]],
    ) -> [[f32; 2]; 4] {
        match k.0 {
            // SAFETY: `k` holds Avx512Vnni only if `Kernels::new` saw this CPU report every
            // feature `avx512::q8_0_tile_4x2` is compiled for.
            KernelSet::Avx512Vnni => unsafe { avx512::q8_0_tile_4x2(w0, w1, tq, td) },
            // SAFETY: as above, for AvxVnni and `avxvnni::q8_0_tile_4x2`'s features.
            KernelSet::AvxVnni => unsafe { avxvnni::q8_0_tile_4x2(w0, w1, tq, td) },
            _ => q8_0_tiles::tile_4x2(w0, w1, tq, td),
        }
    }

    /// Q4_K: one weight row times a group of four gemm rows.
    pub(crate) fn q4_k_tile_gemm(
        k: Kernels,
        w: &[Block],
        tq: &[[[i8; QK_K]; 4]],
        td: &[[f32; 4]],
        tb: &[[i16; 32]],
    ) -> [f32; 4] {
        match k.0 {
            // SAFETY: `k` holds Avx512Vnni only if `Kernels::new` saw this CPU report every
            // feature `avx512::q4_k_tile_gemm` is compiled for.
            KernelSet::Avx512Vnni => unsafe { avx512::q4_k_tile_gemm(w, tq, td, tb) },
            // SAFETY: as above, for AvxVnni and `avxvnni::q4_k_tile_gemm`'s features.
            KernelSet::AvxVnni => unsafe { avxvnni::q4_k_tile_gemm(w, tq, td, tb) },
            _ => q4_k_tiles::tile_gemm(w, tq, td, tb),
        }
    }

    /// Q4_K: eight interleaved weight rows times a group of four gemm (or `gemv`) rows, on
    /// the sets that have that kernel (`None` on the others: they take [`q4_k_tile_gemm`] and
    /// [`q4_k_tile_gemv`] row by row).
    pub(crate) fn q4_k_tile8(
        k: Kernels,
        gemv: bool,
        w: &[q4_k_tiles::Rows8],
        tq: &[[[i8; QK_K]; 4]],
        td: &[[f32; 4]],
        tb: &[[i16; 32]],
    ) -> Option<[[f32; 8]; 4]> {
        if k.0 != KernelSet::Avx512Vnni {
            return None;
        }
        Some(if gemv {
            // SAFETY: `k` holds Avx512Vnni only if `Kernels::new` saw this CPU report every
            // feature `avx512::q4_k_tile8` is compiled for.
            unsafe { avx512::q4_k_tile8::<true>(w, tq, td, tb) }
        } else {
            // SAFETY: as above: the same function, the other rounding.
            unsafe { avx512::q4_k_tile8::<false>(w, tq, td, tb) }
        })
    }

    /// Whether `k` has [`q4_k_tile8`].
    pub(crate) fn q4_k_has_tile8(k: Kernels) -> bool {
        k.0 == KernelSet::Avx512Vnni
    }

    /// Q4_K: one weight row times a group of four gemv rows.
    pub(crate) fn q4_k_tile_gemv(
        k: Kernels,
        w: &[q4_k_tiles::Raw],
        tq: &[[[i8; QK_K]; 4]],
        td: &[[f32; 4]],
        tb: &[[i16; 32]],
    ) -> [f32; 4] {
        match k.0 {
            // SAFETY: `k` holds Avx512Vnni only if `Kernels::new` saw this CPU report every
            // feature `avx512::q4_k_tile_gemv` is compiled for.
            KernelSet::Avx512Vnni => unsafe { avx512::q4_k_tile_gemv(w, tq, td, tb) },
            // SAFETY: as above, for AvxVnni and `avxvnni::q4_k_tile_gemv`'s features.
            KernelSet::AvxVnni => unsafe { avxvnni::q4_k_tile_gemv(w, tq, td, tb) },
            _ => q4_k_tiles::tile_gemv(w, tq, td, tb),
        }
    }

    /// Q4_K: one activation row times four weight rows (decode).
    pub(crate) fn q4_k_row_gemv4(
        k: Kernels,
        w: [&[q4_k_tiles::Raw]; 4],
        acts: &Q8KRows,
        a: &[i8],
        pair_sums: &[[i16; 8]],
        r: usize,
    ) -> [f32; 4] {
        match k.0 {
            // SAFETY: `k` holds Avx512Vnni only if `Kernels::new` saw this CPU report every
            // feature `avx512::q4_k_row_gemv4` is compiled for.
            KernelSet::Avx512Vnni => unsafe { avx512::q4_k_row_gemv4(w, acts, a, pair_sums, r) },
            // SAFETY: as above, for AvxVnni and `avxvnni::q4_k_row_gemv4`'s features.
            KernelSet::AvxVnni => unsafe { avxvnni::q4_k_row_gemv4(w, acts, a, pair_sums, r) },
            _ => q4_k_tiles::row_gemv4(w, acts, a, pair_sums, r),
        }
    }

    /// Q6_K: one weight row times a group of four rows, the tiled kernel's rounding.
    pub(crate) fn q6_k_tile_tiled(
        k: Kernels,
        w: &[q6_k_tiles::Block],
        tq: &[[[i8; QK_K]; 4]],
        td: &[[f32; 4]],
        tb: &[[[i16; 16]; 4]],
    ) -> [f32; 4] {
        match k.0 {
            // SAFETY: `k` holds Avx512Vnni only if `Kernels::new` saw this CPU report every
            // feature `avx512::q6_k_tile_tiled` is compiled for.
            KernelSet::Avx512Vnni => unsafe { avx512::q6_k_tile_tiled(w, tq, td, tb) },
            // SAFETY: as above, for AvxVnni and `avxvnni::q6_k_tile_tiled`'s features.
            KernelSet::AvxVnni => unsafe { avxvnni::q6_k_tile_tiled(w, tq, td, tb) },
            _ => q6_k_tiles::tile_tiled(w, tq, td, tb),
        }
    }

    /// Q6_K: one weight row times a group of four rows, vec_dot's rounding (eight lanes each).
    pub(crate) fn q6_k_tile_vec_dot(
        k: Kernels,
        w: &[q6_k_tiles::Block],
        tq: &[[[i8; QK_K]; 4]],
        td: &[[f32; 4]],
        tb: &[[[i16; 16]; 4]],
    ) -> [[f32; 8]; 4] {
        match k.0 {
            // SAFETY: `k` holds Avx512Vnni only if `Kernels::new` saw this CPU report every
            // feature `avx512::q6_k_tile_vec_dot` is compiled for.
            KernelSet::Avx512Vnni => unsafe { avx512::q6_k_tile_vec_dot(w, tq, td, tb) },
            // The VEX encoding has no more registers than AVX2's: the same code.
            _ => q6_k_tiles::tile_vec_dot(w, tq, td, tb),
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) use x86::*;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_picks_a_supported_set_and_refuses_the_others_by_name() {
        assert_eq!(Kernels::from_setting(None).unwrap(), Kernels::best());
        assert_eq!(Kernels::from_setting(Some(" ")).unwrap(), Kernels::best());
        for set in KernelSet::ALL {
            assert_eq!(KernelSet::parse(set.name()), Some(set));
            match (set.missing(), Kernels::from_setting(Some(set.name()))) {
                (None, Ok(k)) => assert_eq!(k.set(), set),
                (Some(why), Err(e)) => {
                    assert!(e.contains(set.name()) && e.contains(&why), "{e}");
                }
                (m, r) => panic!("{set:?}: missing {m:?} but setting gave {r:?}"),
            }
        }
        let e = Kernels::from_setting(Some("sse9")).unwrap_err();
        assert!(e.contains("sse9") && e.contains("avx512-vnni"), "{e}");
        // The best set is one that can run, and no better one can.
        let best = Kernels::best().set();
        assert!(best.missing().is_none());
        for set in KernelSet::ALL.iter().take_while(|&&s| s != best) {
            assert!(
                set.missing().is_some(),
                "{set:?} runs but {best:?} was taken"
            );
        }
    }

    /// Every set answers whether it runs here, and a set that does not says which ones do (a
    /// CPU lacking one set's features once sent this into endless recursion: AVX-512 VNNI
    /// without AVX-VNNI).
    #[test]
    fn every_set_says_whether_it_runs_and_names_the_ones_that_do() {
        let runs = supported_names();
        assert!(!runs.is_empty(), "some set always runs");
        for set in KernelSet::ALL {
            match set.missing() {
                None => assert!(set.runs_here() && runs.contains(set.name()), "{set:?}"),
                Some(why) => {
                    assert!(!set.runs_here(), "{set:?}");
                    assert!(!why.is_empty(), "{set:?}");
                    if why.contains("this CPU lacks") {
                        assert!(why.contains(&runs), "{set:?}: {why}");
                    }
                }
            }
        }
    }

    /// On an x86-64 AVX2 build, detection agrees with the CPU's own report.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[test]
    fn detection_follows_the_cpu() {
        assert!(KernelSet::Avx2.missing().is_none());
        assert!(KernelSet::Portable.missing().is_some());
        let vnni512 = is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw");
        assert_eq!(KernelSet::Avx512Vnni.missing().is_none(), vnni512);
        assert_eq!(
            KernelSet::AvxVnni.missing().is_none(),
            is_x86_feature_detected!("avxvnni")
        );
    }

    /// Every kernel set this CPU runs computes, for every path a matmul takes (decode rows,
    /// prompt tiles, gemm and gemv rounding, leftover rows and weight rows), the AVX2
    /// kernels' outputs bit for bit (which `kernels::tests` check against plain products).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[test]
    fn every_kernel_set_this_cpu_runs_computes_the_avx2_bits() {
        use super::super::RowKernel::{self, Gemm, Gemv};
        use super::super::test_blocks::{Rng, random_q4_k, random_q6_k};
        use super::super::{q4_k, q6_k, q8_0};
        use crate::model::f16::f32_to_f16;

        let avx2 = Kernels::new(KernelSet::Avx2).unwrap();
        let sets: Vec<Kernels> = KernelSet::ALL
            .into_iter()
            .filter_map(|s| Kernels::new(s).ok())
            .collect();
        eprintln!("kernel sets checked: {sets:?}");
        let (rows, cols) = (26, 768);
        let mut rng = Rng(23);
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / 32 {
            bytes.extend_from_slice(&f32_to_f16(0.02).to_le_bytes());
            bytes.extend((0..32).map(|_| rng.byte()));
        }
        let q8 = q8_0::from_blocks(&bytes, rows, cols).unwrap();
        let q4 =
            q4_k::Q4KMatrix::from_blocks(&random_q4_k(&mut rng, rows * cols / 256), rows, cols)
                .unwrap();
        // Q6_K with signed scales over the whole i8 range (-128 included).
        let mut q6_bytes = random_q6_k(&mut rng, rows * cols / 256);
        for block in q6_bytes.chunks_exact_mut(210) {
            block[192..208].fill_with(|| rng.byte());
            block[192] = 0x80;
        }
        let q6 = q6_k::Q6KMatrix::from_blocks(&q6_bytes, rows, cols).unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        // 36 rows engage the eight-weight-row prompt kernel (nine groups of four), 260 rows
        // also split the groups into more than one cache block (the weights are interleaved
        // once for all of them).
        for m in [1, 3, 4, 9, 12, 36, 260] {
            let x: Vec<f32> = (0..m * cols).map(|_| 4.0 * rng.float()).collect();
            let want = bits(q8.matmul_with(avx2, &x, m));
            let patterns: Vec<Vec<RowKernel>> = vec![
                (0..m).map(|r| RowKernel::for_row(r, m)).collect(),
                vec![Gemv; m],
                (0..m)
                    .map(|r| if r < m / 2 { Gemm } else { Gemv })
                    .collect(),
            ];
            let want4: Vec<_> = patterns
                .iter()
                .map(|p| bits(q4.matmul_with(avx2, &x, m, p)))
                .collect();
            // Q6_K: vec_dot's rounding (batches under 8) and the tiled kernel's.
            let want6 = [false, true].map(|tiled| bits(q6.matmul_with(avx2, &x, m, tiled)));
            for &k in &sets {
                assert_eq!(
                    bits(q8.matmul_with(k, &x, m)),
                    want,
                    "q8_0, {k:?}, {m} rows"
                );
                for (p, want) in patterns.iter().zip(&want4) {
                    assert_eq!(
                        &bits(q4.matmul_with(k, &x, m, p)),
                        want,
                        "q4_k, {k:?}, {m} rows {p:?}"
                    );
                }
                for (tiled, want) in [false, true].into_iter().zip(&want6) {
                    assert_eq!(
                        &bits(q6.matmul_with(k, &x, m, tiled)),
                        want,
                        "q6_k, {k:?}, {m} rows, tiled {tiled}"
                    );
                }
            }
        }
    }
}
