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
    ($name:ident, $features:literal, $dpbusd:ident, $dpwssd:ident, $($extra:item),* $(,)?) => {
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
            pub(crate) fn q4_k_row_gemv4(
                w: [&[q4_k_tiles::Raw]; 4],
                acts: &Q8KRows,
                a: &[i8],
                pair_sums: &[[i16; 8]],
                r: usize,
            ) -> [f32; 4] {
                q4_k_tiles::row_gemv4_with(|acc, lo, hi| q4_step(acc, lo, hi), w, acts, a, pair_sums, r)
            }

            /// Q4_K decode tiles (the gemv rounding), by the steps in both sets: they sum a
            /// super-block's parts in registers before one horizontal sum (the AVX-512 set's
            /// per-part reduction tree, `q4_parts`, measured slower for this rounding).
            #[target_feature(enable = $features)]
            pub(crate) fn q4_k_tile_gemv(
                w: &[q4_k_tiles::Raw],
                tq: &[[[i8; QK_K]; 4]],
                td: &[[f32; 4]],
                tb: &[[i16; 32]],
            ) -> [f32; 4] {
                q4_k_tiles::tile_gemv_with(|acc, lo, hi| q4_step(acc, lo, hi), w, tq, td, tb)
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
    /// Q4_K prompt tiles with each super-block's parts in 512-bit registers ([`q4_parts`]).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) fn q4_k_tile_gemm(
        w: &[Block],
        tq: &[[[i8; QK_K]; 4]],
        td: &[[f32; 4]],
        tb: &[[i16; 32]],
    ) -> [f32; 4] {
        q4_k_tiles::tile_gemm_with(|qs, sc, a| q4_parts(qs, sc, a), w, tq, td, tb)
    },
    /// Q4_K tiles, eight weight rows ([`q4_k_tiles::Rows8`]) times four activation rows with
    /// the rounding of [`q4_k_tiles::tile_gemm`] (or, `GEMV`, of [`q4_k_tiles::tile_gemv`]:
    /// one FMA per super-block of its whole integer) in every lane: lane `i` of
    /// row `t`'s accumulators is weight row `i`, so no horizontal sums. Per eight values and
    /// activation row one `vpdpbusd` (eight rows times four codes, twice) against the row's
    /// eight codes broadcast; per sub-block and row one `vpmulld` by the scales; per 64
    /// values the two lanes of each weight row added, narrowed (`vpmovqd`), converted and
    /// added with one FMA, in the order `tile_gemm` adds them. The same integers and float
    /// steps lane for lane, so the same bits.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) fn q4_k_tile8<const GEMV: bool>(
        w: &[q4_k_tiles::Rows8],
        tq: &[[[i8; QK_K]; 4]],
        td: &[[f32; 4]],
        tb: &[[i16; 32]],
    ) -> [[f32; 8]; 4] {
        use safe_arch::{m256, m256i, m512i};
        use std::arch::x86_64::{
            __m256, __m512i, _mm256_add_epi32, _mm256_cvtepi32_ps, _mm256_fmadd_ps, _mm256_mul_ps,
            _mm256_mullo_epi32, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_ps,
            _mm256_setzero_si256, _mm256_sub_ps, _mm512_add_epi32, _mm512_cvtepi64_epi32,
            _mm512_dpbusd_epi32, _mm512_mullo_epi32, _mm512_set1_epi64, _mm512_setzero_si512,
            _mm512_shuffle_epi32,
        };
        let mut acc: [__m256; 4] = [_mm256_setzero_ps(); 4];
        let mut acc_min: [__m256; 4] = [_mm256_setzero_ps(); 4];
        for (((b, aq), ad), bs) in w.iter().zip(tq).zip(td).zip(tb) {
            let a: [&[[u8; 8]]; 4] = [
                bytemuck::cast_slice::<i8, [u8; 8]>(&aq[0]),
                bytemuck::cast_slice::<i8, [u8; 8]>(&aq[1]),
                bytemuck::cast_slice::<i8, [u8; 8]>(&aq[2]),
                bytemuck::cast_slice::<i8, [u8; 8]>(&aq[3]),
            ];
            let (d, dmin) = (m256::from(b.d).0, m256::from(b.dmin).0);
            // GEMV: each row's integers over the whole super-block.
            let mut total = [_mm256_setzero_si256(); 4];
            let mut min_total = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                // Row t's lanes: scale * (codes · activations) over the part's two
                // sub-blocks, two lanes per weight row.
                let mut s: [__m512i; 4] = [_mm512_setzero_si512(); 4];
                for k in [2 * j, 2 * j + 1] {
                    let mut x: [__m512i; 4] = [_mm512_setzero_si512(); 4];
                    for (g, &q) in (4 * k..).zip(&b.q[4 * k..4 * k + 4]) {
                        let wq = m512i::from(bytemuck::cast::<[u64; 8], [u8; 64]>(q)).0;
                        for t in 0..4 {
                            let at = _mm512_set1_epi64(i64::from_le_bytes(a[t][g]));
                            x[t] = _mm512_dpbusd_epi32(x[t], wq, at);
                        }
                    }
                    let sc = m512i::from(b.scales[k]).0;
                    for t in 0..4 {
                        s[t] = _mm512_add_epi32(s[t], _mm512_mullo_epi32(x[t], sc));
                    }
                }
                let (m_lo, m_hi) = (
                    m256i::from(b.mins[2 * j]).0,
                    m256i::from(b.mins[2 * j + 1]).0,
                );
                for t in 0..4 {
                    // Lane 2i + lane 2i + 1, then the even lanes: weight row i's integer.
                    let pair = _mm512_add_epi32(s[t], _mm512_shuffle_epi32::<0b1011_0001>(s[t]));
                    let per64 = _mm512_cvtepi64_epi32(pair);
                    let mins = _mm256_add_epi32(
                        _mm256_mullo_epi32(m_lo, _mm256_set1_epi32(i32::from(bs[8 * j + 2 * t]))),
                        _mm256_mullo_epi32(
                            m_hi,
                            _mm256_set1_epi32(i32::from(bs[8 * j + 2 * t + 1])),
                        ),
                    );
                    if GEMV {
                        total[t] = _mm256_add_epi32(total[t], per64);
                        min_total[t] = _mm256_add_epi32(min_total[t], mins);
                    } else {
                        let da = _mm256_set1_ps(ad[t]);
                        acc[t] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(per64),
                            _mm256_mul_ps(d, da),
                            acc[t],
                        );
                        acc_min[t] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(mins),
                            _mm256_mul_ps(dmin, da),
                            acc_min[t],
                        );
                    }
                }
            }
            if GEMV {
                for t in 0..4 {
                    let da = _mm256_set1_ps(ad[t]);
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(total[t]), _mm256_mul_ps(d, da), acc[t]);
                    acc_min[t] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(min_total[t]),
                        _mm256_mul_ps(dmin, da),
                        acc_min[t],
                    );
                }
            }
        }
        [0, 1, 2, 3].map(|t| m256(_mm256_sub_ps(acc[t], acc_min[t])).to_array())
    },
    /// [`q4_k_tiles::Parts`] in 512-bit registers. Per 64-value part `j`: its 64 nibbles (low
    /// then high) in one register, one `vpdpbusd` per row against the row's 64 activation
    /// codes (lanes of four products, at most 4 · 15 · 127: exact in i16), two rows packed to
    /// i16 and one `vpmaddwd` by the part's two scales (low sub-block's in the low 256 bits,
    /// high's in the high). Then one reduction tree for all four parts (128-bit quarters added
    /// across registers, then lane pairs) instead of a horizontal sum per part. The same
    /// integers as the steps, with about half the instructions and a third of the shuffles.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn q4_parts(qs: &[u8; 128], scales: [u8; 8], a: [&[i8; QK_K]; 4]) -> [safe_arch::m128i; 4] {
        use safe_arch::m512i;
        use std::arch::x86_64::{
            __m512i, _mm_set_epi64x, _mm256_castsi128_si256, _mm512_add_epi32, _mm512_and_si512,
            _mm512_broadcast_i64x4, _mm512_castsi512_si128, _mm512_cvtepu8_epi16,
            _mm512_dpbusd_epi32, _mm512_extracti32x4_epi32, _mm512_madd_epi16, _mm512_packs_epi32,
            _mm512_permutex2var_epi32, _mm512_permutexvar_epi16, _mm512_set1_epi8,
            _mm512_setzero_si512, _mm512_shuffle_epi32, _mm512_shuffle_i64x2, _mm512_srlv_epi16,
        };
        // Shift counts: the low 256 bits keep the low nibbles, the high take the high ones.
        let shifts = m512i::from(std::array::from_fn::<i16, 32, _>(|i| {
            if i < 16 { 0 } else { 4 }
        }))
        .0;
        let nibble = _mm512_set1_epi8(0x0f);
        // The eight scales as i16; part j's index picks scale 2j for the low 256 bits, 2j + 1
        // for the high.
        let scales = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(_mm_set_epi64x(
            0,
            i64::from_le_bytes(scales),
        )));
        let (qs, _) = qs.as_chunks::<32>();
        let a: [&[[i8; 64]]; 4] = [
            a[0].as_chunks::<64>().0,
            a[1].as_chunks::<64>().0,
            a[2].as_chunks::<64>().0,
            a[3].as_chunks::<64>().0,
        ];
        let mut rows01 = [_mm512_setzero_si512(); 4];
        let mut rows23 = [_mm512_setzero_si512(); 4];
        for j in 0..4 {
            let q = _mm512_broadcast_i64x4(crate::model::kernels::avx2::load_u8(&qs[j]).0);
            let w = _mm512_and_si512(_mm512_srlv_epi16(q, shifts), nibble);
            let pick = m512i::from(std::array::from_fn::<i16, 32, _>(|i| {
                (2 * j + i / 16) as i16
            }));
            let s = _mm512_permutexvar_epi16(pick.0, scales);
            let dot =
                |t: usize| _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, m512i::from(a[t][j]).0);
            rows01[j] = _mm512_madd_epi16(_mm512_packs_epi32(dot(0), dot(1)), s);
            rows23[j] = _mm512_madd_epi16(_mm512_packs_epi32(dot(2), dot(3)), s);
        }
        // Each register: per 128-bit quarter [row a: 2 lanes, row b: 2 lanes]. Add quarters
        // 0 + 2 and 1 + 3 while pairing rows 0-1 with rows 2-3 of the same part ...
        let half = |x: __m512i, y: __m512i| {
            _mm512_add_epi32(
                _mm512_shuffle_i64x2::<0b0100_0100>(x, y),
                _mm512_shuffle_i64x2::<0b1110_1110>(x, y),
            )
        };
        let z: [__m512i; 4] = [
            half(rows01[0], rows23[0]),
            half(rows01[1], rows23[1]),
            half(rows01[2], rows23[2]),
            half(rows01[3], rows23[3]),
        ];
        // ... then the remaining two quarters while pairing parts: quarters [part j rows 0-1,
        // part j rows 2-3, part k rows 0-1, part k rows 2-3], each summed over the whole part.
        let quarter = |x: __m512i, y: __m512i| {
            _mm512_add_epi32(
                _mm512_shuffle_i64x2::<0b1000_1000>(x, y),
                _mm512_shuffle_i64x2::<0b1101_1101>(x, y),
            )
        };
        let (w01, w23) = (quarter(z[0], z[1]), quarter(z[2], z[3]));
        // Lane pairs: the even lanes hold the rows' totals; gather them, part by part.
        let pairs = |x: __m512i| _mm512_add_epi32(x, _mm512_shuffle_epi32::<0b1011_0001>(x));
        let even = m512i::from(std::array::from_fn::<i32, 16, _>(|i| 2 * i as i32)).0;
        let r = _mm512_permutex2var_epi32(pairs(w01), even, pairs(w23));
        [
            safe_arch::m128i(_mm512_castsi512_si128(r)),
            safe_arch::m128i(_mm512_extracti32x4_epi32::<1>(r)),
            safe_arch::m128i(_mm512_extracti32x4_epi32::<2>(r)),
            safe_arch::m128i(_mm512_extracti32x4_epi32::<3>(r)),
        ]
    },
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
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub(crate) fn q4_k_tile_gemm(
        w: &[Block],
        tq: &[[[i8; QK_K]; 4]],
        td: &[[f32; 4]],
        tb: &[[i16; 32]],
    ) -> [f32; 4] {
        q4_k_tiles::tile_gemm_with(
            |qs, sc, a| q4_k_tiles::parts_by_steps(|acc, lo, hi| q4_step(acc, lo, hi), qs, sc, a),
            w,
            tq,
            td,
            tb,
        )
    }
);
