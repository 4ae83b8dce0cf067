//! Causal (optionally sliding-window) multi-head attention over the f16 KV
//! cache, with grouped KV heads.
//!
//! llama.cpp's CPU attention rounds in different places depending on whether
//! flash attention is on, and we reproduce each variant ([`Numerics`]):
//!
//! - flash attention off (llama-cpp-python's default, and what our reference
//!   vectors use): `K·Q` with the query rounded to f16, an f32 softmax whose
//!   probabilities are rounded to f16 before multiplying the f16 values.
//!   Reproduced bit for bit (see [`classic`]).
//! - flash attention on, batches under 64 tokens: `flash_attn_ext_f16_one_chunk`
//!   — f16 query, keys visited in order with an online softmax, and the value
//!   accumulator kept in f16, rounded after every update.
//! - flash attention on, batches of 64 or more: `flash_attn_ext_tiled` — f32
//!   query, softmax and accumulation of the (f16) values.
//!
//! The two flash variants follow llama.cpp's rounding points but not its
//! exact summation order; they are close to, not identical with, llama.cpp.

use super::f16::round_f16;
use super::kernels::expf::softmax_exp;
use super::kernels::{float, hsum8};
use super::kv_cache::LayerCache;

/// llama.cpp's `GGML_FA_TILE_Q`: with flash attention, batches at least this
/// long take the tiled path.
pub(crate) const WIDE_BATCH: usize = 64;

/// Which of llama.cpp's attention kernels to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Numerics {
    /// Flash attention off: f16 query, f16 probabilities.
    Classic,
    /// Flash attention, short batches: f16 query and f16 value accumulator.
    FlashSequential,
    /// Flash attention, long batches: f32 throughout.
    FlashWide,
}

impl Numerics {
    pub fn for_batch(flash: bool, n_tokens: usize) -> Numerics {
        match (flash, n_tokens >= WIDE_BATCH) {
            (false, _) => Numerics::Classic,
            (true, false) => Numerics::FlashSequential,
            (true, true) => Numerics::FlashWide,
        }
    }
}

/// Shape and scaling of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub head_dim_v: usize,
    pub kq_scale: f32,
    /// Keys at most `window - 1` positions behind the query are visible.
    pub window: Option<usize>,
}

/// Attention for `n` query rows at positions `start..start + n`, whose keys
/// and values are already in `cache`. `q` is `n` rows of `n_heads * head_dim`;
/// returns `n` rows of `n_heads * head_dim_v`. `batch_rows` is the size of
/// the batch llama.cpp would run these rows in (it picks kernels by it).
pub(crate) fn attention(
    q: &[f32],
    cache: &LayerCache,
    start: usize,
    shape: &AttnShape,
    numerics: Numerics,
    batch_rows: usize,
) -> Vec<f32> {
    let n = q.len() / (shape.n_heads * shape.head_dim);
    let end = start + n;
    // The oldest position any query in the batch can see.
    let first = match shape.window {
        Some(w) => (start + 1).saturating_sub(w),
        None => 0,
    };
    let keys = cache.keys_f32(first..end);
    let values = cache.values_f32(first..end);
    let kv = KvView {
        keys: &keys,
        values: &values,
        first,
        k_row: shape.n_kv_heads * shape.head_dim,
        v_row: shape.n_kv_heads * shape.head_dim_v,
    };
    let out_row = shape.n_heads * shape.head_dim_v;
    let mut out = vec![0f32; n * out_row];
    let group = shape.n_heads / shape.n_kv_heads;
    let jobs = n * shape.n_heads;
    // Split (row, head) pairs over threads only when the work pays for the spawn.
    let work = jobs * (end - first) * (shape.head_dim + shape.head_dim_v);
    let threads = if work >= 1 << 22 {
        candle_core::utils::get_num_threads().max(1)
    } else {
        1
    };
    let per_thread = jobs.div_ceil(threads);
    let run = |job0: usize, chunk: &mut [f32]| {
        let mut scratch = Scratch::new(
            shape.head_dim,
            shape.head_dim_v,
            end - first,
            batch_rows == 1,
        );
        for (i, dst) in chunk.chunks_exact_mut(shape.head_dim_v).enumerate() {
            let job = job0 + i;
            let (t, h) = (job / shape.n_heads, job % shape.n_heads);
            let pos = start + t;
            let lo = match shape.window {
                Some(w) => (pos + 1).saturating_sub(w),
                None => 0,
            };
            let qrow = &q[(t * shape.n_heads + h) * shape.head_dim..][..shape.head_dim];
            let kv_head = h / group;
            let positions = lo..pos + 1;
            match numerics {
                Numerics::Classic => {
                    classic(qrow, &kv, kv_head, positions, shape, &mut scratch, dst)
                }
                Numerics::FlashSequential => {
                    sequential(qrow, &kv, kv_head, positions, shape, &mut scratch, dst)
                }
                Numerics::FlashWide => {
                    wide(qrow, &kv, kv_head, positions, shape, &mut scratch, dst)
                }
            }
        }
    };
    if threads == 1 {
        run(0, &mut out);
    } else {
        std::thread::scope(|s| {
            for (i, chunk) in out.chunks_mut(per_thread * shape.head_dim_v).enumerate() {
                let run = &run;
                s.spawn(move || run(i * per_thread, chunk));
            }
        });
    }
    out
}

/// Cached keys/values of positions `first..`, widened to f32.
struct KvView<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    first: usize,
    k_row: usize,
    v_row: usize,
}

impl KvView<'_> {
    fn key(&self, pos: usize, kv_head: usize, dim: usize) -> &[f32] {
        &self.keys[(pos - self.first) * self.k_row + kv_head * dim..][..dim]
    }

    fn value(&self, pos: usize, kv_head: usize, dim: usize) -> &[f32] {
        &self.values[(pos - self.first) * self.v_row + kv_head * dim..][..dim]
    }
}

struct Scratch {
    /// The attention call has a single query row (a decode step).
    single_row: bool,
    q: Vec<f32>,
    acc: Vec<f32>,
    scores: Vec<f32>,
    lanes: Vec<f32>,
}

impl Scratch {
    fn new(head_dim: usize, head_dim_v: usize, keys: usize, single_row: bool) -> Scratch {
        Scratch {
            single_row,
            q: vec![0.0; head_dim],
            acc: vec![0.0; head_dim_v],
            scores: Vec::with_capacity(keys),
            lanes: Vec::new(),
        }
    }
}

/// ggml's `mul_mat(K, Q)`, `soft_max_ext`, `mul_mat(V, KQ)` for one query
/// row and head, with flash attention off. Both matmuls go through tinyBLAS
/// on f16 operands (eight FMA lanes along the inner dimension; for `V·KQ`
/// the inner dimension is the cache cell, so lane = position mod 8), and the
/// softmax uses ggml's vectorised `exp`.
fn classic(
    qrow: &[f32],
    kv: &KvView<'_>,
    kv_head: usize,
    positions: std::ops::Range<usize>,
    shape: &AttnShape,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let q16 = &mut scratch.q;
    q16.iter_mut()
        .zip(qrow)
        .for_each(|(d, &s)| *d = round_f16(s));
    // Batches go through tinyBLAS, single rows through ggml's vec_dot_f16.
    let single = scratch.single_row;
    let scores = &mut scratch.scores;
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for pos in positions.clone() {
        let k = kv.key(pos, kv_head, shape.head_dim);
        let s = if single {
            float::vec_dot(k, q16, true)
        } else {
            float::dot(k, q16)
        } * shape.kq_scale;
        max = max.max(s);
        scores.push(s);
    }
    let sum = softmax_exp(scores, positions.start, max);
    let inv = (1.0 / sum) as f32;
    // The inner dimension of V·KQ is the cache cell, so accumulators are
    // indexed by position: `pos % 8` for tinyBLAS, `pos % 32` (four
    // registers of eight) for vec_dot_f16. Masked cells add exact zeros,
    // so they are skipped. Accumulators are lane-major: acc[l * dim + d].
    let dim = shape.head_dim_v;
    let n_acc = if single { 32 } else { 8 };
    let lanes = &mut scratch.lanes;
    lanes.clear();
    lanes.resize(n_acc * dim, 0.0);
    for (pos, &e) in positions.zip(scores.iter()) {
        let p = round_f16(e * inv);
        let v = kv.value(pos, kv_head, dim);
        let acc = &mut lanes[(pos % n_acc) * dim..][..dim];
        acc.iter_mut()
            .zip(v)
            .for_each(|(a, &x)| *a = x.mul_add(p, *a));
    }
    let at = |l: usize, d: usize| lanes[l * dim + d];
    for (d, o) in out.iter_mut().enumerate() {
        *o = if single {
            // GGML_F32x8_REDUCE over the four registers, then hadd twice.
            let x: [f32; 8] = std::array::from_fn(|l| {
                (at(l, d) + at(16 + l, d)) + (at(8 + l, d) + at(24 + l, d))
            });
            let t0 = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
            (t0[0] + t0[1]) + (t0[2] + t0[3])
        } else {
            let lane: [f32; 8] = std::array::from_fn(|l| at(l, d));
            hsum8(&lane)
        };
    }
}

/// ggml's one-chunk flash attention for one query row and head.
fn sequential(
    qrow: &[f32],
    kv: &KvView<'_>,
    kv_head: usize,
    positions: std::ops::Range<usize>,
    shape: &AttnShape,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let q16 = &mut scratch.q;
    q16.iter_mut()
        .zip(qrow)
        .for_each(|(d, &s)| *d = round_f16(s));
    let acc = &mut scratch.acc;
    acc.fill(0.0);
    let mut sum = 0f32;
    let mut max = f32::NEG_INFINITY;
    for pos in positions {
        let s = dot(kv.key(pos, kv_head, shape.head_dim), q16) * shape.kq_scale;
        let mut ms = 1.0f32;
        let mut vs = 1.0f32;
        if s > max {
            // New maximum: rescale what has been accumulated (still in f16).
            ms = (max - s).exp();
            max = s;
            acc.iter_mut().for_each(|a| *a = round_f16(*a * ms));
        } else {
            vs = (s - max).exp();
        }
        let v = kv.value(pos, kv_head, shape.head_dim_v);
        acc.iter_mut()
            .zip(v)
            .for_each(|(a, &x)| *a = round_f16(x.mul_add(vs, *a)));
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    out.iter_mut()
        .zip(acc.iter())
        .for_each(|(o, &a)| *o = a * inv);
}

/// ggml's tiled flash attention for one query row and head: f32 throughout.
fn wide(
    qrow: &[f32],
    kv: &KvView<'_>,
    kv_head: usize,
    positions: std::ops::Range<usize>,
    shape: &AttnShape,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let scores = &mut scratch.scores;
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for pos in positions.clone() {
        let s = dot(kv.key(pos, kv_head, shape.head_dim), qrow) * shape.kq_scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0f64;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += f64::from(*s);
    }
    let acc = &mut scratch.acc;
    acc.fill(0.0);
    for (pos, &p) in positions.zip(scores.iter()) {
        let v = kv.value(pos, kv_head, shape.head_dim_v);
        acc.iter_mut()
            .zip(v)
            .for_each(|(a, &x)| *a = x.mul_add(p, *a));
    }
    let sum = sum as f32;
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    out.iter_mut()
        .zip(acc.iter())
        .for_each(|(o, &a)| *o = a * inv);
}

/// f32 dot product in 16 independent lanes so it vectorises.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail = x.mul_add(*y, tail);
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain softmax attention in f64 for comparison.
    fn reference(q: &[f32], k: &[f32], v: &[f32], dim: usize, scale: f32) -> Vec<f32> {
        let n = k.len() / dim;
        let s: Vec<f64> = (0..n)
            .map(|j| {
                (0..dim)
                    .map(|d| f64::from(q[d]) * f64::from(k[j * dim + d]))
                    .sum::<f64>()
                    * f64::from(scale)
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..dim)
            .map(|d| {
                ((0..n)
                    .map(|j| e[j] * f64::from(v[j * dim + d]))
                    .sum::<f64>()
                    / z) as f32
            })
            .collect()
    }

    #[test]
    fn both_paths_match_softmax_attention() {
        let dim = 8;
        let positions = 5;
        let k: Vec<f32> = (0..positions * dim)
            .map(|i| round_f16(((i * 7 % 13) as f32 - 6.0) / 5.0))
            .collect();
        let v: Vec<f32> = (0..positions * dim)
            .map(|i| round_f16(((i * 5 % 11) as f32 - 5.0) / 3.0))
            .collect();
        let mut cache = LayerCache::new(dim, dim);
        cache.append(&k, &v);
        let q: Vec<f32> = (0..dim).map(|i| (i as f32 - 3.0) / 4.0).collect();
        let shape = AttnShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: dim,
            head_dim_v: dim,
            kq_scale: 0.5,
            window: None,
        };
        let want = reference(&q, &k, &v, dim, 0.5);
        for numerics in [
            Numerics::Classic,
            Numerics::FlashSequential,
            Numerics::FlashWide,
        ] {
            let got = attention(&q, &cache, positions - 1, &shape, numerics, 1);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 5e-3, "{numerics:?}: {got:?} vs {want:?}");
            }
        }
        // A window of 2 sees only the last two positions.
        let windowed = AttnShape {
            window: Some(2),
            ..shape
        };
        let want = reference(&q, &k[3 * dim..], &v[3 * dim..], dim, 0.5);
        let got = attention(&q, &cache, positions - 1, &windowed, Numerics::FlashWide, 1);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn causal_rows_do_not_see_the_future() {
        let dim = 4;
        let mut cache = LayerCache::new(dim, dim);
        cache.append(
            &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
            &[1.0, 1.0, 1.0, 1.0, 9.0, 9.0, 9.0, 9.0],
        );
        let shape = AttnShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: dim,
            head_dim_v: dim,
            kq_scale: 1.0,
            window: None,
        };
        // Two query rows at positions 0 and 1: row 0 only sees value 1.
        let out = attention(&[0.0; 8], &cache, 0, &shape, Numerics::Classic, 2);
        assert_eq!(&out[..4], &[1.0; 4]);
        assert_eq!(&out[4..], &[5.0; 4]);
    }
}
