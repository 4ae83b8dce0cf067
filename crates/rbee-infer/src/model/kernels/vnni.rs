//! Kernels for CPUs with the VNNI dot products, in two encodings: `avx512` (AVX-512 VL, on
//! 256-bit registers) and `avxvnni` (the VEX encoding of Alder Lake and later). Each is a
//! `#[target_feature]` function, reached only through [`super::dispatch`], which checks the
//! CPU first.
//!
//! They are the AVX2 kernels (`q8_0_tiles::*_with`, `q4_k_tiles::*_with`) with the integer step swapped,
//! so every float step stays in place and in order:
//! - Q8_0: `vpdpbusd(0, |w|, sign(a, w))` gives the eight lanes of four products that
//!   `vpmaddubsw` + `vpmaddwd` give (one multiply instead of two);
//! - Q4_K: `vpdpbusd` sums each 32-value half's nibble products in lanes of four (at most
//!   4 · 15 · 127, so they pack to i16 exactly), and one `vpdpwssd` multiplies them by the
//!   two sub-block scales and adds them to the accumulator. The lanes differ from ggml's, the
//!   total (an exact integer) does not, and only totals reach a float step.
//!
//! - Q6_K, prompt tiles of the tiled kernel (batches of 8 rows or more), whose rounding
//!   sees only each super-block's integer total: `vpdpbusd` sums each 32-value chunk's code
//!   products in lanes of four (at most 4 · 63 · 127, so they pack to i16 exactly), two
//!   chunks are packed, and one `vpdpwssd` multiplies them by their four scales into the
//!   accumulator ([`super::q6_k_tiles::tile_totals`]). vec_dot's tiles round each of ggml's lanes,
//!   so their step stays ggml's (a `vpdpwssd` in place of `vpmaddwd` + `vpaddd` measured
//!   nothing: LLVM emits it as those two); the AVX-512 set runs that same code in its
//!   encoding only for the 32 registers. Q6_K's decode rows stay AVX2 (they wait on memory).
//!
//! So each computes bit for bit what the AVX2 kernel computes (`dispatch`'s tests check it).

macro_rules! vnni_kernels {
    ($name:ident, $features:literal, $dpbusd:ident, $dpwssd:ident, $($extra:item)*) => {
        pub(crate) mod $name {
            use std::arch::x86_64::{
                _mm256_packs_epi32, _mm256_setzero_si256, _mm256_unpacklo_epi64,
                $dpbusd, $dpwssd,
            };

            use crate::model::kernels::avx2::m256i;
            use crate::model::kernels::q4_k_tiles::{self, Block};
            use crate::model::kernels::quantize::{Q8KRows, QK_K, QK8_0};
            use crate::model::kernels::{q6_k_tiles, q8_0_tiles};

            /// `sum(|w| * sign(a, w))` in lanes of four bytes: ggml's `mul_sum_i8_pairs`.
            #[target_feature(enable = $features)]
            #[inline]
            fn dot_i8(aw: m256i, w: m256i, a: m256i) -> m256i {
                let signed = safe_arch::sign_apply_i8_m256i(a, w);
                m256i($dpbusd(_mm256_setzero_si256(), aw.0, signed.0))
            }

            /// `acc` plus lanes totalling `s_lo * (lo · a_lo) + s_hi * (hi · a_hi)`.
            #[target_feature(enable = $features)]
            #[inline]
            fn q4_step(
                acc: m256i,
                (lo, a_lo, s_lo): (m256i, m256i, m256i),
                (hi, a_hi, s_hi): (m256i, m256i, m256i),
            ) -> m256i {
                let l = $dpbusd(_mm256_setzero_si256(), lo.0, a_lo.0);
                let h = $dpbusd(_mm256_setzero_si256(), hi.0, a_hi.0);
                // Per 128 bits: l's four lanes then h's, as i16 (each at most 7620: exact).
                let p = _mm256_packs_epi32(l, h);
                let s = _mm256_unpacklo_epi64(s_lo.0, s_hi.0);
                m256i($dpwssd(acc.0, p, s))
            }

            #[target_feature(enable = $features)]
            pub(crate) fn q8_0_dot_tile<const T: usize>(
                wq: &[i8],
                wd: &[f32],
                rows: [(&[i8], &[f32]); T],
            ) -> [[f32; 8]; T] {
                q8_0_tiles::dot_tile_with(|aw, w, a| dot_i8(aw, w, a), wq, wd, rows)
            }

            #[target_feature(enable = $features)]
            pub(crate) fn q8_0_tile_4x1(
                wq: &[i8],
                wd: &[f32],
                tq: &[[[i8; QK8_0]; 4]],
                td: &[[f32; 4]],
            ) -> [f32; 4] {
                q8_0_tiles::tile_4x1_with(|aw, w, a| dot_i8(aw, w, a), wq, wd, tq, td)
            }

            #[target_feature(enable = $features)]
            pub(crate) fn q8_0_tile_4x2(
                w0: (&[i8], &[f32]),
                w1: (&[i8], &[f32]),
                tq: &[[[i8; QK8_0]; 4]],
                td: &[[f32; 4]],
            ) -> [[f32; 2]; 4] {
                q8_0_tiles::tile_4x2_with(|aw, w, a| dot_i8(aw, w, a), w0, w1, tq, td)
            }

            #[target_feature(enable = $features)]
            pub(crate) fn q4_k_tile_gemm(
                w: &[Block],
                tq: &[[[i8; QK_K]; 4]],
                td: &[[f32; 4]],
                tb: &[[i16; 32]],
            ) -> [f32; 4] {
                q4_k_tiles::tile_gemm_with(|acc, lo, hi| q4_step(acc, lo, hi), w, tq, td, tb)
            }

            #[target_feature(enable = $features)]
            pub(crate) fn q4_k_tile_gemv(
                w: &[Block],
                tq: &[[[i8; QK_K]; 4]],
                td: &[[f32; 4]],
                tb: &[[i16; 32]],
            ) -> [f32; 4] {
                q4_k_tiles::tile_gemv_with(|acc, lo, hi| q4_step(acc, lo, hi), w, tq, td, tb)
            }

            #[target_feature(enable = $features)]
            pub(crate) fn q4_k_row_gemv4(
                w: [&[q4_k_tiles::Raw]; 4],
                acts: &Q8KRows,
                a: &[i8],
                pair_sums: &[[i16; 8]],
                r: usize,
            ) -> [f32; 4] {
                q4_k_tiles::row_gemv4_with(|acc, lo, hi| q4_step(acc, lo, hi), w, acts, a, pair_sums, r)
            }

            #[target_feature(enable = $features)]
            pub(crate) fn q6_k_tile_tiled(
                w: &[q6_k_tiles::Block],
                tq: &[[[i8; QK_K]; 4]],
                td: &[[f32; 4]],
                tb: &[[[i16; 16]; 4]],
            ) -> [f32; 4] {
                q6_k_tiles::tile_tiled_with(
                    |b, aq, bs| {
                        q6_k_tiles::tile_totals(
                            |acc: m256i, u: m256i, s: m256i| m256i($dpbusd(acc.0, u.0, s.0)),
                            |acc: m256i, p: m256i, s: m256i| m256i($dpwssd(acc.0, p.0, s.0)),
                            b,
                            aq,
                            bs,
                        )
                    },
                    w,
                    tq,
                    td,
                    tb,
                )
            }

            $($extra)*
        }
    };
}

vnni_kernels!(
    avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    _mm256_dpbusd_epi32,
    _mm256_dpwssd_epi32,
    /// Q6_K's vec_dot tile: ggml's own integer steps, compiled for AVX-512 VL only for its 32
    /// vector registers (the AVX2 encoding's 16 spill the four rows' lanes).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) fn q6_k_tile_vec_dot(
        w: &[q6_k_tiles::Block],
        tq: &[[[i8; QK_K]; 4]],
        td: &[[f32; 4]],
        tb: &[[[i16; 16]; 4]],
    ) -> [[f32; 8]; 4] {
        q6_k_tiles::tile_vec_dot_inlined(w, tq, td, tb)
    }
);
vnni_kernels!(
    avxvnni,
    "avx2,fma,f16c,avxvnni",
    _mm256_dpbusd_avx_epi32,
    _mm256_dpwssd_avx_epi32,
);
