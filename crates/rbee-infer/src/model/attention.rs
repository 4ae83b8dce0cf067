//! Causal (optionally sliding-window) multi-head attention over the f16 KV
//! cache, with grouped KV heads, computed as llama.cpp does on CPU with flash
//! attention off (llama-cpp-python's default, and what our reference vectors
//! were generated with):
//!
//! ```text
//! kq = mul_mat(K, Q)          Q rounded to f16; f16 · f16 dot products
//! p  = soft_max_ext(kq, mask, kq_scale)
//! o  = mul_mat(V, p)          p rounded to f16; f16 · f16 dot products
//! ```
//!
//! Reproduced bit for bit: both matmuls use tinyBLAS's summation order for
//! batches and ggml's `vec_dot_f16` order for single rows (see
//! [`kernels::float`](super::kernels::float)), and the softmax uses ggml's
//! vectorised `exp` ([`kernels::expf`](super::kernels::expf)).

use super::f16::round_f16;
use super::kernels::expf::softmax_exp;
use super::kernels::float;
use super::kernels::pool::par_jobs;
use super::kv_cache::LayerCache;

/// Shape and scaling of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
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
/// the batch llama.cpp would run these rows in: it picks kernels by it.
#[cfg(test)]
pub(crate) fn attention(
    q: &[f32],
    cache: &LayerCache,
    start: usize,
    shape: &AttnShape,
    batch_rows: usize,
) -> Vec<f32> {
    let n = q.len() / (shape.n_heads * shape.head_dim);
    attention_many(q, &[(n, start, batch_rows, cache)], shape)
}

/// [`attention`] for several sequences at once: entry `(n, start, batch_rows, cache)` owns the
/// next `n` rows of `q`. One job per (row, head) of every entry, spread over the pool together,
/// so a step's many short decode rows use every thread; each job computes exactly what it
/// computes alone.
pub(crate) fn attention_many(
    q: &[f32],
    entries: &[(usize, usize, usize, &LayerCache)],
    shape: &AttnShape,
) -> Vec<f32> {
    // One job per (row, KV head): the query heads sharing a KV head read its keys and values
    // once, from L1, instead of once each. When that leaves threads idle (a decode step of one
    // sequence has as many jobs as KV heads: two on a Qwen2 1.5B), one job per query head.
    let rows: usize = entries.iter().map(|e| e.0).sum();
    let per_head = rows * shape.n_kv_heads < super::kernels::pool::threads();
    attention_split(q, entries, shape, per_head)
}

/// [`attention_many`] with one job per query head (`per_head`) or per KV head.
fn attention_split(
    q: &[f32],
    entries: &[(usize, usize, usize, &LayerCache)],
    shape: &AttnShape,
    per_head: bool,
) -> Vec<f32> {
    let first_of = |start: usize| match shape.window {
        Some(w) => (start + 1).saturating_sub(w),
        None => 0,
    };
    // Each entry's visible keys and values, as the cache holds them (f16): every job widens
    // the rows it reads as it reaches them, in parallel. (A serial pass writing the layer's
    // whole visible cache out as f32 first was a fifth of a 1.5B model's decode step at 1,500
    // positions; for a prompt's rows, which share such a copy, it measured the same as this.)
    let views: Vec<KvView<'_>> = entries
        .iter()
        .map(|&(n, start, _, cache)| {
            let first = first_of(start);
            KvView {
                keys: cache.keys_f16(first..start + n),
                values: cache.values_f16(first..start + n),
                first,
                k_row: shape.n_kv_heads * shape.head_dim,
                v_row: shape.n_kv_heads * shape.head_dim_v,
            }
        })
        .collect();
    // Job j belongs to the entry whose first job is the last one not above j.
    let mut first_job = Vec::with_capacity(entries.len());
    let mut jobs = 0;
    let mut work = 0;
    for &(n, start, _, _) in entries {
        first_job.push(jobs);
        jobs += n * shape.n_heads;
        work +=
            n * shape.n_heads * (start + n - first_of(start)) * (shape.head_dim + shape.head_dim_v);
    }
    // Each job: `group` query heads of one row that share a KV head (all of them, or one).
    // Each head's arithmetic is its own, whichever job computes it.
    let per_kv = shape.n_heads / shape.n_kv_heads;
    let group = if per_head { 1 } else { per_kv };
    let per_row = shape.n_heads / group;
    let rows: usize = entries.iter().map(|e| e.0).sum();
    let mut out = vec![0f32; rows * shape.n_heads * shape.head_dim_v];
    // Worth the pool only for enough work in total.
    par_jobs(
        &mut out,
        group * shape.head_dim_v,
        work >= 1 << 18,
        |job, dst| {
            let row_job = job / per_row;
            let first_head = job % per_row * group;
            let kv_head = first_head / per_kv;
            let e = first_job.partition_point(|&f| f / shape.n_heads <= row_job) - 1;
            let (_, start, batch_rows, _) = entries[e];
            let first_row = first_job[e] / shape.n_heads;
            let pos = start + (row_job - first_row);
            let lo = match shape.window {
                Some(w) => (pos + 1).saturating_sub(w),
                None => 0,
            };
            let q_heads = &q[(row_job * shape.n_heads + first_head) * shape.head_dim..]
                [..group * shape.head_dim];
            heads(
                q_heads,
                &views[e],
                kv_head,
                lo..pos + 1,
                shape,
                batch_rows == 1,
                dst,
            );
        },
    );
    out
}

/// `dim` f16 values from `at` of `cached`, widened (exactly) into `buf`.
#[inline(always)]
fn widen<'b>(cached: &[u16], at: usize, dim: usize, buf: &'b mut [f32]) -> &'b [f32] {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let halves: &[half::f16] = cached[at..][..dim].reinterpret_cast();
    halves.convert_to_f32_slice(&mut buf[..dim]);
    &buf[..dim]
}

/// Cached keys/values (f16 bits) of positions `first..`.
struct KvView<'a> {
    keys: &'a [u16],
    values: &'a [u16],
    first: usize,
    k_row: usize,
    v_row: usize,
}

impl KvView<'_> {
    /// Keys of positions `pos..pos + count` (at most four; only the first `count` of the four
    /// slices are meant), widened into `buf` (four keys long at least).
    fn keys<'b>(
        &self,
        pos: usize,
        count: usize,
        kv_head: usize,
        dim: usize,
        buf: &'b mut [f32],
    ) -> [&'b [f32]; 4] {
        for (i, b) in buf.chunks_exact_mut(dim).take(count).enumerate() {
            widen(
                self.keys,
                (pos + i - self.first) * self.k_row + kv_head * dim,
                dim,
                b,
            );
        }
        let (four, _) = buf.split_at(4 * dim);
        let mut chunks = four.chunks_exact(dim);
        std::array::from_fn(|_| chunks.next().unwrap_or(&[]))
    }

    /// The value of position `pos`, widened into `buf`.
    fn value<'b>(&self, pos: usize, kv_head: usize, dim: usize, buf: &'b mut [f32]) -> &'b [f32] {
        widen(
            self.values,
            (pos - self.first) * self.v_row + kv_head * dim,
            dim,
            buf,
        )
    }
}

/// ggml's `mul_mat(K, Q)`, `soft_max_ext`, `mul_mat(V, KQ)` for one query
/// row and the query heads `q` (each `head_dim`) that share KV head `kv_head`; writes their
/// outputs (each `head_dim_v`) side by side into `out`. Each head's arithmetic is its own,
/// in ggml's order; the heads only share the loads of keys and values. `single`: the batch
/// has one row, so ggml uses `vec_dot_f16` rather than tinyBLAS for both matmuls.
fn heads(
    q: &[f32],
    kv: &KvView<'_>,
    kv_head: usize,
    positions: std::ops::Range<usize>,
    shape: &AttnShape,
    single: bool,
    out: &mut [f32],
) {
    let g = q.len() / shape.head_dim;
    let q16: Vec<Vec<f32>> = q
        .chunks_exact(shape.head_dim)
        .map(|q| q.iter().map(|&v| round_f16(v)).collect())
        .collect();
    let mut scores: Vec<Vec<f32>> = vec![vec![0f32; positions.len()]; g];
    let mut pos = positions.start;
    // Four keys, widened ([`accumulate_values`] widens the values into its own buffer).
    let mut buf = vec![0f32; 4 * shape.head_dim];
    while pos < positions.end {
        // Four keys at a time (independent FMA chains) for tinyBLAS's order.
        let count = if !single && pos + 4 <= positions.end {
            4
        } else {
            1
        };
        let keys = kv.keys(pos, count, kv_head, shape.head_dim, &mut buf);
        for h in 0..g {
            let dots = if count == 4 {
                float::dot4(keys, &q16[h])
            } else if single {
                [float::vec_dot(keys[0], &q16[h], true), 0.0, 0.0, 0.0]
            } else {
                [float::dot(keys[0], &q16[h]), 0.0, 0.0, 0.0]
            };
            let at = pos - positions.start;
            for (s, &dot) in scores[h][at..at + count].iter_mut().zip(&dots) {
                *s = dot * shape.kq_scale;
            }
        }
        pos += count;
    }
    // The largest score per head, after the dots (a maximum does not depend on the order, and
    // this loop vectorises where one per score did not).
    let max: Vec<f32> = scores
        .iter()
        .map(|s| s.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s)))
        .collect();
    let inv: Vec<f32> = scores
        .iter_mut()
        .zip(&max)
        .map(|(s, &m)| (1.0 / softmax_exp(s, positions.start, m)) as f32)
        .collect();
    // The inner dimension of V·KQ is the cache cell, so accumulators are
    // indexed by position: `pos % 8` for tinyBLAS, `pos % 32` (four
    // registers of eight) for vec_dot_f16. Masked cells add exact zeros, so
    // they are skipped. Accumulators are lane-major: lanes[l * dim + d].
    let dim = shape.head_dim_v;
    let n_acc = if single { 32 } else { 8 };
    // The probabilities, rounded to f16 as ggml stores KQ before V·KQ.
    let mut halves = Vec::with_capacity(positions.len());
    for (s, &inv) in scores.iter_mut().zip(&inv) {
        probabilities_f16(s, inv, &mut halves);
    }
    let mut lanes = vec![0f32; g * n_acc * dim];
    accumulate_values(&scores, kv, kv_head, positions, n_acc, dim, &mut lanes);
    for (lanes, out) in lanes
        .chunks_exact(n_acc * dim)
        .zip(out.chunks_exact_mut(dim))
    {
        let at = |l: usize, d: usize| lanes[l * dim + d];
        for (d, o) in out.iter_mut().enumerate() {
            *o = if single {
                // GGML_F32x8_REDUCE over the four registers, then two horizontal adds.
                let x: [f32; 8] = std::array::from_fn(|l| {
                    (at(l, d) + at(16 + l, d)) + (at(8 + l, d) + at(24 + l, d))
                });
                let t0 = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
                (t0[0] + t0[1]) + (t0[2] + t0[3])
            } else {
                // hsum8's adds, written out so that the loop over `d` vectorises
                // (eight outputs per instruction) instead of one call per output.
                let r0 = at(4, d) + at(0, d);
                let r1 = at(5, d) + at(1, d);
                let r2 = at(6, d) + at(2, d);
                let r3 = at(7, d) + at(3, d);
                (r0 + r2) + (r1 + r3)
            };
        }
    }
}

/// `s[i] = round_f16(s[i] * inv)` for every score, through `half`'s slice conversions (F16C,
/// eight at a time, rounding to nearest even as `round_f16` does; a test checks the bits).
fn probabilities_f16(s: &mut [f32], inv: f32, halves: &mut Vec<half::f16>) {
    use half::slice::HalfFloatSliceExt;
    for x in s.iter_mut() {
        *x *= inv;
    }
    halves.clear();
    halves.resize(s.len(), half::f16::ZERO);
    halves.convert_from_f32_slice(s);
    halves.convert_to_f32_slice(s);
}

/// Cache positions per span of [`accumulate_values`]: each lane's values in a span are widened
/// into one buffer (32 KiB for 128-value heads and eight lanes).
const VALUE_SPAN: usize = 512;

/// V·P into the accumulators `lanes` (`[head][lane][d]`, `n_acc` lanes of `dim` per head):
/// position `pos` adds `v[pos] * p[h][pos - start]` into lane `pos % n_acc` of head `h`, one
/// FMA per value, each lane's positions in order (tinyBLAS's and vec_dot_f16's order).
///
/// A lane's values in a span of positions are widened together; with AVX2 sixteen values of
/// up to six heads' lanes then stay in registers while the lane's positions pass, loaded and
/// stored once: the same FMAs in the same order as adding each position into the lanes in
/// memory, which was a load, an FMA and a store per eight values, bound by the stores.
fn accumulate_values(
    p: &[Vec<f32>],
    kv: &KvView<'_>,
    kv_head: usize,
    positions: std::ops::Range<usize>,
    n_acc: usize,
    dim: usize,
    lanes: &mut [f32],
) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    let wide = dim - dim % 16;
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    let wide = 0;
    let mut values = Vec::with_capacity(VALUE_SPAN.div_ceil(n_acc) * dim);
    let mut index = Vec::with_capacity(VALUE_SPAN.div_ceil(n_acc));
    for span in (positions.start..positions.end).step_by(VALUE_SPAN) {
        let span = span..(span + VALUE_SPAN).min(positions.end);
        for l in 0..n_acc {
            // Lane `l`'s positions in the span, their values widened side by side.
            let first = span.start + (l + n_acc - span.start % n_acc) % n_acc;
            values.clear();
            index.clear();
            for pos in (first..span.end).step_by(n_acc) {
                let at = values.len();
                values.resize(at + dim, 0f32);
                kv.value(pos, kv_head, dim, &mut values[at..]);
                index.push(pos - positions.start);
            }
            if index.is_empty() {
                continue;
            }
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
            for (g, heads) in p.chunks(6).enumerate() {
                let lanes = &mut lanes[(6 * g * n_acc + l) * dim..];
                let lane = (&values[..], &index[..], n_acc * dim, dim, wide);
                match heads.len() {
                    6 => value_block::<6>(heads, lane, lanes),
                    5 => value_block::<5>(heads, lane, lanes),
                    4 => value_block::<4>(heads, lane, lanes),
                    3 => value_block::<3>(heads, lane, lanes),
                    2 => value_block::<2>(heads, lane, lanes),
                    _ => value_block::<1>(heads, lane, lanes),
                }
            }
            // The values past the last sixteen (all of them without AVX2).
            if wide < dim {
                for (v, &i) in values.chunks_exact(dim).zip(&index) {
                    for (h, p) in p.iter().enumerate() {
                        let acc = &mut lanes[(h * n_acc + l) * dim..][wide..dim];
                        let p = p[i];
                        acc.iter_mut()
                            .zip(&v[wide..])
                            .for_each(|(a, &x)| *a = x.mul_add(p, *a));
                    }
                }
            }
        }
    }
}

/// [`accumulate_values`] for `H` heads, one lane's widened `values` (positions `index` of the
/// probabilities), values `0..wide` (a multiple of sixteen): `lanes` starts at the first head's
/// lane, the next head's `stride` further.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn value_block<const H: usize>(
    p: &[Vec<f32>],
    (values, index, stride, dim, wide): (&[f32], &[usize], usize, usize, usize),
    lanes: &mut [f32],
) {
    use safe_arch::{fused_mul_add_m256, load_unaligned_m256, m256, set_splat_m256};
    let p: [&[f32]; H] = std::array::from_fn(|h| &p[h][..]);
    let load = |x: &[f32]| -> m256 { load_unaligned_m256(x[..8].try_into().unwrap_or(&[0.0; 8])) };
    for c in (0..wide).step_by(16) {
        let at = |h: usize| h * stride + c;
        let mut acc: [[m256; 2]; H] =
            std::array::from_fn(|h| [load(&lanes[at(h)..]), load(&lanes[at(h) + 8..])]);
        for (v, &i) in values.chunks_exact(dim).zip(index) {
            let (v0, v1) = (load(&v[c..]), load(&v[c + 8..]));
            for (acc, p) in acc.iter_mut().zip(&p) {
                let pb = set_splat_m256(p[i]);
                acc[0] = fused_mul_add_m256(v0, pb, acc[0]);
                acc[1] = fused_mul_add_m256(v1, pb, acc[1]);
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            let out = &mut lanes[at(h)..][..16];
            out[..8].copy_from_slice(&acc[0].to_array());
            out[8..].copy_from_slice(&acc[1].to_array());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job per query head computes what a job per KV head computes for its heads, bit for
    /// bit: grouped heads, prompt rows (tiles of four keys) and a decode row, with a window.
    #[test]
    fn jobs_per_query_head_equal_jobs_per_kv_head() {
        let (dim, kv_heads, heads) = (64, 2, 6);
        let mut seed = 5u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let positions = 300;
        let rows: Vec<f32> = (0..positions * kv_heads * dim)
            .map(|_| round_f16(next()))
            .collect();
        let mut cache = LayerCache::new(kv_heads * dim, kv_heads * dim);
        cache.append(&rows, &rows);
        for window in [None, Some(100)] {
            let shape = AttnShape {
                n_heads: heads,
                n_kv_heads: kv_heads,
                head_dim: dim,
                head_dim_v: dim,
                kq_scale: 0.125,
                window,
            };
            // Rows 290..299 of a prompt (ten rows), then the last position alone (decode).
            for (n, start, batch) in [(10, 290, 10), (1, 299, 1)] {
                let q: Vec<f32> = (0..n * heads * dim).map(|_| next()).collect();
                let entries = [(n, start, batch, &cache)];
                let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                assert_eq!(
                    bits(attention_split(&q, &entries, &shape, true)),
                    bits(attention_split(&q, &entries, &shape, false)),
                    "{n} rows from {start}, window {window:?}"
                );
            }
        }
    }

    /// The value products accumulated lane by lane in registers are, bit for bit, each
    /// position added into the lanes in memory in order: for one to eight heads (a group of six
    /// and the rest), widths with and without a tail past the last sixteen values, both lane
    /// counts, and positions that cross spans and start off a lane boundary.
    #[test]
    fn values_accumulate_as_one_position_at_a_time() {
        let mut seed = 11u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (heads, dim, n_acc, positions) in [
            (6, 128, 8, 3..1203),
            (8, 72, 32, 5..600),
            (1, 16, 8, 0..9),
            (4, 40, 32, 517..530),
        ] {
            let kv_heads = 2;
            let mut cache = LayerCache::new(kv_heads * dim, kv_heads * dim);
            let rows: Vec<f32> = (0..positions.end * kv_heads * dim)
                .map(|_| round_f16(next()))
                .collect();
            cache.append(&rows, &rows);
            let view = KvView {
                keys: cache.keys_f16(0..positions.end),
                values: cache.values_f16(0..positions.end),
                first: 0,
                k_row: kv_heads * dim,
                v_row: kv_heads * dim,
            };
            let p: Vec<Vec<f32>> = (0..heads)
                .map(|_| positions.clone().map(|_| round_f16(next().abs())).collect())
                .collect();
            let mut got = vec![0f32; heads * n_acc * dim];
            accumulate_values(&p, &view, 1, positions.clone(), n_acc, dim, &mut got);
            let mut want = vec![0f32; heads * n_acc * dim];
            let mut buf = vec![0f32; dim];
            for (i, pos) in positions.clone().enumerate() {
                let v = view.value(pos, 1, dim, &mut buf);
                for (h, lanes) in want.chunks_exact_mut(n_acc * dim).enumerate() {
                    let acc = &mut lanes[(pos % n_acc) * dim..][..dim];
                    for (a, &x) in acc.iter_mut().zip(v) {
                        *a = x.mul_add(p[h][i], *a);
                    }
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&got) == bits(&want),
                "{heads} heads of {dim}, {n_acc} lanes, {positions:?}"
            );
        }
    }

    /// The probabilities rounded eight at a time are `round_f16` of each, bit for bit, over
    /// every exponent a probability can have (subnormal halves, ties and zero included).
    #[test]
    fn probabilities_round_as_round_f16() {
        let mut x: Vec<f32> = Vec::new();
        let mut seed = 7u32;
        for e in 0..128u32 {
            for _ in 0..64 {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                x.push(f32::from_bits((e << 23) | (seed >> 9)));
            }
            // Ties at the half's precision.
            x.push(f32::from_bits((e << 23) | 0x1000));
            x.push(f32::from_bits((e << 23) | 0x3000));
        }
        x.extend([0.0, 1.0, 0.5, 5.960_464_5e-8, 2.980_232_2e-8, 8.940_697e-8]);
        for inv in [1.0f32, 0.37, 1.0 / 3.0] {
            let mut got = x.clone();
            probabilities_f16(&mut got, inv, &mut Vec::new());
            for (g, &v) in got.iter().zip(&x) {
                assert_eq!(g.to_bits(), round_f16(v * inv).to_bits(), "{v} * {inv}");
            }
        }
    }

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

    fn shape(dim: usize, window: Option<usize>) -> AttnShape {
        AttnShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: dim,
            head_dim_v: dim,
            kq_scale: 0.5,
            window,
        }
    }

    #[test]
    fn matches_softmax_attention_in_both_kernel_orders() {
        let dim = 40;
        let positions = 37;
        let k: Vec<f32> = (0..positions * dim)
            .map(|i| round_f16(((i * 7 % 13) as f32 - 6.0) / 5.0))
            .collect();
        let v: Vec<f32> = (0..positions * dim)
            .map(|i| round_f16(((i * 5 % 11) as f32 - 5.0) / 3.0))
            .collect();
        let mut cache = LayerCache::new(dim, dim);
        cache.append(&k, &v);
        let q: Vec<f32> = (0..dim).map(|i| (i as f32 - 20.0) / 40.0).collect();
        let want = reference(&q, &k, &v, dim, 0.5);
        for batch in [1, 2] {
            let got = attention(&q, &cache, positions - 1, &shape(dim, None), batch);
            for (a, b) in got.iter().zip(&want) {
                // f16 rounding of q and of the probabilities.
                assert!((a - b).abs() < 5e-3, "batch {batch}: {got:?} vs {want:?}");
            }
        }
        // A window of 5 sees only the last five positions.
        let want = reference(
            &q,
            &k[(positions - 5) * dim..],
            &v[(positions - 5) * dim..],
            dim,
            0.5,
        );
        let got = attention(&q, &cache, positions - 1, &shape(dim, Some(5)), 1);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 5e-3);
        }
    }

    /// Widening the cache's f16 (vectorised) is exact: every finite f16, subnormals and signed
    /// zeros included, widens to what the scalar conversion gives, bit for bit.
    #[test]
    fn widening_is_exact_for_every_finite_half() {
        let bits: Vec<u16> = (0..=u16::MAX).filter(|h| h & 0x7c00 != 0x7c00).collect();
        let mut wide = vec![0f32; bits.len()];
        widen(&bits, 0, bits.len(), &mut wide);
        for (&h, w) in bits.iter().zip(&wide) {
            assert_eq!(
                w.to_bits(),
                crate::model::f16::f16_to_f32(h).to_bits(),
                "{h:#06x}"
            );
        }
    }

    /// A row's attention does not depend on the entry that carries it: the last row of a
    /// two-row entry and the same row alone give the same bits, with grouped heads, a window,
    /// and positions past several blocks of 32.
    #[test]
    fn a_row_alone_equals_the_same_row_in_a_longer_entry() {
        let (dim, positions) = (40, 75);
        let mut cache = LayerCache::new(2 * dim, 2 * dim);
        let k: Vec<f32> = (0..positions * 2 * dim)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let v: Vec<f32> = (0..positions * 2 * dim)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
            .collect();
        cache.append(&k, &v);
        let q: Vec<f32> = (0..2 * 4 * dim)
            .map(|i| ((i * 3 % 17) as f32 - 8.0) / 9.0)
            .collect();
        for window in [None, Some(20)] {
            let shape = AttnShape {
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: dim,
                head_dim_v: dim,
                kq_scale: 0.3,
                window,
            };
            let last = positions - 1;
            // Rows at positions last - 1 and last, each as its own batch of one ...
            let pair = attention_many(&q, &[(2, last - 1, 1, &cache)], &shape);
            // ... and the last alone.
            let alone = attention_many(&q[4 * dim..], &[(1, last, 1, &cache)], &shape);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&pair[4 * dim..]), bits(&alone), "window {window:?}");
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
        // Two query rows at positions 0 and 1: row 0 only sees value 1.
        let out = attention(&[0.0; 8], &cache, 0, &shape(dim, None), 2);
        assert_eq!(&out[..4], &[1.0; 4]);
        assert_eq!(&out[4..], &[5.0; 4]);
    }
}
