//! The encoder's row-wise operations in f32: layer norm, GELU, bidirectional attention over
//! packed sequences, and the parallel loops that run them on candle's thread pool.
//!
//! Every output row depends only on its own input row (and, in attention, on the rows of its own
//! sequence), and is computed the same way whatever else is in the batch: no operation here
//! sums across rows of different sequences, and the order of every sum is fixed.

use std::sync::Mutex;

use super::super::rope::Rope;

/// Runs `f` on every `chunk`-sized piece of `data` (the last may be shorter), in parallel on
/// candle's thread pool when there is enough work to pay for it.
pub(crate) fn par_chunks<F>(data: &mut [f32], chunk: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let chunk = chunk.max(1);
    let n = data.len().div_ceil(chunk);
    // Below ~64k values a hand-off costs more than it saves.
    if n <= 1 || data.len() < 1 << 16 {
        data.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
        return;
    }
    let parts: Vec<Mutex<(usize, &mut [f32])>> = data
        .chunks_mut(chunk)
        .enumerate()
        .map(|(i, c)| Mutex::new((i, c)))
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(parts.len(), |range| {
        for p in &parts[range] {
            let mut guard = p.lock().unwrap_or_else(|e| e.into_inner());
            let (i, c) = &mut *guard;
            f(*i, c);
        }
    });
}

/// Rows per parallel piece of a row-wise operation on rows `width` wide.
pub(crate) fn rows_per_chunk(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// `x = layer_norm(x + residual) * w + b` over rows of `w.len()`, in place (`residual` may be
/// empty: then just the norm). Mean and variance are summed in f64.
pub(crate) fn add_layer_norm(x: &mut [f32], residual: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let width = w.len();
    let rows = rows_per_chunk(width);
    par_chunks(x, rows * width, |chunk, part| {
        let start = chunk * rows * width;
        for (r, row) in part.chunks_exact_mut(width).enumerate() {
            if !residual.is_empty() {
                let res = &residual[start + r * width..][..width];
                row.iter_mut().zip(res).for_each(|(a, b)| *a += b);
            }
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / width as f64;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / width as f64;
            let inv = (1.0 / (var + f64::from(eps)).sqrt()) as f32;
            let mean = mean as f32;
            for ((v, &g), &bias) in row.iter_mut().zip(w).zip(b) {
                *v = (*v - mean) * inv * g + bias;
            }
        }
    });
}

/// Adds `bias` to every row of `x` (rows of `bias.len()`); an empty bias adds nothing.
pub(crate) fn add_bias(x: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    if width == 0 {
        return;
    }
    let rows = rows_per_chunk(width);
    par_chunks(x, rows * width, |_, part| {
        for row in part.chunks_exact_mut(width) {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    });
}

/// `x = gelu(x + bias)` with the exact (erf) GELU that BERT was trained with; an empty bias
/// adds nothing.
pub(crate) fn add_bias_gelu(x: &mut [f32], bias: &[f32]) {
    let gelu = |y: f32| 0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2));
    if bias.is_empty() {
        par_chunks(x, 16_384, |_, part| {
            part.iter_mut().for_each(|v| *v = gelu(*v))
        });
        return;
    }
    let width = bias.len();
    let rows = rows_per_chunk(width);
    par_chunks(x, rows * width, |_, part| {
        for row in part.chunks_exact_mut(width) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = gelu(*v + b);
            }
        }
    });
}

/// The gated feed-forward's product: rows of `[up | gate]`, each `2 × width` wide, become rows
/// of `up ⊙ silu(gate)`, `width` wide.
pub(crate) fn swiglu(x: &[f32], width: usize) -> Vec<f32> {
    let rows = x.len() / (2 * width);
    let mut out = vec![0f32; rows * width];
    let per = rows_per_chunk(width);
    par_chunks(&mut out, per * width, |chunk, part| {
        for (r, row) in part.chunks_exact_mut(width).enumerate() {
            let src = &x[(chunk * per + r) * 2 * width..][..2 * width];
            let (up, gate) = src.split_at(width);
            for ((o, &u), &g) in row.iter_mut().zip(up).zip(gate) {
                *o = u * (g / (1.0 + (-g).exp()));
            }
        }
    });
    out
}

/// Rotary positions for packed rows of `[q | k | v]`: the queries and keys of each span's
/// `i`-th row are rotated as position `i`.
pub(crate) fn rotate_queries_and_keys(
    qkv: &mut [f32],
    spans: &[Span],
    rope: &Rope,
    heads: usize,
    head_dim: usize,
) {
    let width = heads * head_dim;
    for span in spans {
        let rows = &mut qkv[span.start * 3 * width..][..span.len * 3 * width];
        for (pos, row) in rows.chunks_exact_mut(3 * width).enumerate() {
            let (qk, _) = row.split_at_mut(2 * width);
            let (q, k) = qk.split_at_mut(width);
            rope.apply(q, heads, head_dim, pos);
            rope.apply(k, heads, head_dim, pos);
        }
    }
}

/// erf for f32 as a rational function of x on [-4, 4] (outside, erf is ±1 in f32): an odd
/// polynomial of degree 13 over an even one of degree 8, the well-known single-precision
/// minimax fit (within a few ulp of the true value). Branch-free, so it vectorises.
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_6e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5_f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    x * p / q
}

/// A sequence's rows in a packed batch: rows `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub len: usize,
}

/// Bidirectional multi-head attention of each span over its own rows. `qkv` rows are
/// `[q | k | v]`, each `heads × head_dim` wide; returns rows of `heads × head_dim`. Every
/// (span, head) pair is one job; jobs run in parallel.
pub(crate) fn attention(qkv: &[f32], spans: &[Span], heads: usize, head_dim: usize) -> Vec<f32> {
    let width = heads * head_dim;
    let rows: usize = spans.iter().map(|s| s.len).sum();
    let mut out = vec![0f32; rows * width];
    let jobs: Vec<(usize, usize)> = (0..spans.len())
        .flat_map(|s| (0..heads).map(move |h| (s, h)))
        .collect();
    let scale = 1.0 / (head_dim as f32).sqrt();
    let run = |(s, h): (usize, usize)| -> Vec<f32> {
        let span = spans[s];
        let row = |r: usize, part: usize| {
            &qkv[(span.start + r) * 3 * width + part * width + h * head_dim..][..head_dim]
        };
        let mut result = vec![0f32; span.len * head_dim];
        let mut scores = vec![0f32; span.len];
        for i in 0..span.len {
            let q = row(i, 0);
            let mut max = f32::NEG_INFINITY;
            for (j, score) in scores.iter_mut().enumerate() {
                *score = dot(q, row(j, 1)) * scale;
                max = max.max(*score);
            }
            let mut sum = 0f32;
            for score in scores.iter_mut() {
                *score = (*score - max).exp();
                sum += *score;
            }
            let inv = 1.0 / sum;
            let acc = &mut result[i * head_dim..][..head_dim];
            for (j, &p) in scores.iter().enumerate() {
                let p = p * inv;
                acc.iter_mut()
                    .zip(row(j, 2))
                    .for_each(|(a, &v)| *a += p * v);
            }
        }
        result
    };
    let work: usize = spans.iter().map(|s| s.len * s.len).sum::<usize>() * width;
    let results: Vec<Vec<f32>> = if jobs.len() <= 1 || work < 1 << 18 {
        jobs.iter().map(|&j| run(j)).collect()
    } else {
        let slots: Vec<Mutex<Vec<f32>>> = jobs.iter().map(|_| Mutex::new(Vec::new())).collect();
        candle_core::utils::barrier_pool().execute_chunked(jobs.len(), |range| {
            for k in range {
                let r = run(jobs[k]);
                *slots[k].lock().unwrap_or_else(|e| e.into_inner()) = r;
            }
        });
        slots
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
            .collect()
    };
    for (&(s, h), result) in jobs.iter().zip(&results) {
        let span = spans[s];
        for i in 0..span.len {
            out[(span.start + i) * width + h * head_dim..][..head_dim]
                .copy_from_slice(&result[i * head_dim..][..head_dim]);
        }
    }
    out
}

/// Dot product with eight partial sums (so it vectorises), always in the same order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] = x[k].mul_add(y[k], acc[k]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail = x.mul_add(*y, tail);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_within_a_few_ulp() {
        let mut worst = 0f64;
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            let want = libm_erf(x);
            let got = f64::from(erf(x as f32));
            worst = worst.max((got - want).abs());
        }
        assert!(worst < 5e-7, "max error {worst}");
    }

    /// erf by its Taylor series (converges fast for |x| < 3) and the asymptotic complement
    /// beyond: an independent check in f64.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 3.0 {
            // erfc(x) ~ exp(-x²)/(x√π) (1 - 1/(2x²) + 3/(4x⁴) - 15/(8x⁶))
            let a = x.abs();
            let t = 1.0 / (2.0 * a * a);
            let series = 1.0 - t + 3.0 * t * t - 15.0 * t * t * t;
            let erfc = (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) * series;
            return x.signum() * (1.0 - erfc);
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn attention_of_a_span_ignores_the_others() {
        let (heads, hd) = (2, 4);
        let width = heads * hd;
        let rows = 5;
        let qkv: Vec<f32> = (0..rows * 3 * width)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
            .collect();
        let both = attention(
            &qkv,
            &[Span { start: 0, len: 2 }, Span { start: 2, len: 3 }],
            heads,
            hd,
        );
        let second = attention(
            &qkv[2 * 3 * width..],
            &[Span { start: 0, len: 3 }],
            heads,
            hd,
        );
        assert_eq!(&both[2 * width..], &second[..]);
        // One row attends only to itself: its output is its own value.
        let one = attention(&qkv[..3 * width], &[Span { start: 0, len: 1 }], heads, hd);
        assert_eq!(&one[..], &qkv[2 * width..3 * width]);
    }
}
