//! The AVX2 Q8_0 kernels' bodies ([`super::q8_0`] explains the arithmetic): each written once
//! over its integer step (`*_with`), instantiated for AVX2 here and for the VNNI sets in
//! `vnni`, and called through `dispatch`, which picks the set. They sit below both the
//! matrix code and the dispatch, so neither depends on the other through them.

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
use super::quantize::QK8_0;

/// An AVX register of integers.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) type Int = super::avx2::m256i;

/// [`dot_tile`] with ggml's integer instructions: per block and row, the
/// eight lane sums come from `vpmaddubsw` + `vpmaddwd` (exact), then the
/// same FMA by `d_w * d_a`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
pub(crate) fn dot_tile<const T: usize>(
    wq: &[i8],
    wd: &[f32],
    rows: [(&[i8], &[f32]); T],
) -> [[f32; 8]; T] {
    dot_tile_with(super::avx2::dot_i8, wq, wd, rows)
}

/// [`dot_tile`] with the integer step `dot_i8` (ggml's [`super::avx2::dot_i8`], or the VNNI
/// one that computes the same lanes): inlined into each instruction set's kernel.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn dot_tile_with<const T: usize>(
    dot_i8: impl Fn(Int, Int, Int) -> Int,
    wq: &[i8],
    wd: &[f32],
    rows: [(&[i8], &[f32]); T],
) -> [[f32; 8]; T] {
    use super::avx2::{abs_i8, fused_mul_add_m256, load_i8, set_splat_m256, to_f32, zeroed_m256};
    let (wblocks, _) = wq.as_chunks::<QK8_0>();
    let nb = wblocks.len().min(wd.len());
    let rows = rows.map(|(q, d)| {
        let (q, _) = q.as_chunks::<QK8_0>();
        (&q[..nb], &d[..nb])
    });
    let mut acc = [zeroed_m256(); T];
    for b in 0..nb {
        let w = load_i8(&wblocks[b]);
        let aw = abs_i8(w);
        let dw = wd[b];
        for (acc, (aq, ad)) in acc.iter_mut().zip(&rows) {
            let lanes = to_f32(dot_i8(aw, w, load_i8(&aq[b])));
            *acc = fused_mul_add_m256(set_splat_m256(dw * ad[b]), lanes, *acc);
        }
    }
    acc.map(|a| a.to_array())
}

/// Four interleaved activation rows times one weight row: [`dot_tile`]'s
/// arithmetic, horizontal sums included.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
pub(crate) fn tile_4x1(
    wq: &[i8],
    wd: &[f32],
    tq: &[[[i8; QK8_0]; 4]],
    td: &[[f32; 4]],
) -> [f32; 4] {
    tile_4x1_with(super::avx2::dot_i8, wq, wd, tq, td)
}

/// [`tile_4x1`] with the integer step `dot_i8` (see [`dot_tile_with`]).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn tile_4x1_with(
    dot_i8: impl Fn(Int, Int, Int) -> Int,
    wq: &[i8],
    wd: &[f32],
    tq: &[[[i8; QK8_0]; 4]],
    td: &[[f32; 4]],
) -> [f32; 4] {
    use super::avx2::{
        abs_i8, fused_mul_add_m256, hsum8, load_i8, set_splat_m256, to_f32, zeroed_m256,
    };
    let (wblocks, _) = wq.as_chunks::<QK8_0>();
    let mut acc = [zeroed_m256(); 4];
    for (((wb, &dw), aq), ad) in wblocks.iter().zip(wd).zip(tq).zip(td) {
        let w = load_i8(wb);
        let aw = abs_i8(w);
        for t in 0..4 {
            let lanes = to_f32(dot_i8(aw, w, load_i8(&aq[t])));
            acc[t] = fused_mul_add_m256(set_splat_m256(dw * ad[t]), lanes, acc[t]);
        }
    }
    acc.map(hsum8)
}

/// Four interleaved activation rows times two weight rows: `[row][weight]`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(never)]
pub(crate) fn tile_4x2(
    w0: (&[i8], &[f32]),
    w1: (&[i8], &[f32]),
    tq: &[[[i8; QK8_0]; 4]],
    td: &[[f32; 4]],
) -> [[f32; 2]; 4] {
    tile_4x2_with(super::avx2::dot_i8, w0, w1, tq, td)
}

/// [`tile_4x2`] with the integer step `dot_i8` (see [`dot_tile_with`]).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(crate) fn tile_4x2_with(
    dot_i8: impl Fn(Int, Int, Int) -> Int,
    (wq0, wd0): (&[i8], &[f32]),
    (wq1, wd1): (&[i8], &[f32]),
    tq: &[[[i8; QK8_0]; 4]],
    td: &[[f32; 4]],
) -> [[f32; 2]; 4] {
    use super::avx2::{abs_i8, fused_mul_add_m256, hsum8, load_i8, to_f32, zeroed_m256};
    use safe_arch::{load_f32_splat_m256, load_unaligned_m128, mul_m128, set_splat_m128};
    let (w0blocks, _) = wq0.as_chunks::<QK8_0>();
    let (w1blocks, _) = wq1.as_chunks::<QK8_0>();
    let mut acc0 = [zeroed_m256(); 4];
    let mut acc1 = [zeroed_m256(); 4];
    let weights = w0blocks.iter().zip(wd0).zip(w1blocks.iter().zip(wd1));
    for (((w0b, &dw0), (w1b, &dw1)), (aq, ad)) in weights.zip(tq.iter().zip(td)) {
        // The eight scale products `d_w * d_a` with two multiplies; each is
        // then broadcast straight from memory.
        let da = load_unaligned_m128(ad);
        let d: [[f32; 4]; 2] = [
            mul_m128(set_splat_m128(dw0), da).into(),
            mul_m128(set_splat_m128(dw1), da).into(),
        ];
        // One weight row at a time keeps the eight accumulators in registers.
        let w0 = load_i8(w0b);
        let aw0 = abs_i8(w0);
        for t in 0..4 {
            let l0 = to_f32(dot_i8(aw0, w0, load_i8(&aq[t])));
            acc0[t] = fused_mul_add_m256(load_f32_splat_m256(&d[0][t]), l0, acc0[t]);
        }
        let w1 = load_i8(w1b);
        let aw1 = abs_i8(w1);
        for t in 0..4 {
            let l1 = to_f32(dot_i8(aw1, w1, load_i8(&aq[t])));
            acc1[t] = fused_mul_add_m256(load_f32_splat_m256(&d[1][t]), l1, acc1[t]);
        }
    }
    std::array::from_fn(|t| [hsum8(acc0[t]), hsum8(acc1[t])])
}
