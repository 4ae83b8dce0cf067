//! Rotary position embeddings with lazily grown cos/sin tables.
//!
//! Tables are filled only for positions actually reached, in chunks, rather
//! than for the whole trained context up front (stock candle allocates
//! 2.4 GB of tables for a 131072-position model). Angles are computed the way
//! ggml's `ggml_rope_cache_init` does — `theta` starts at the position and is
//! multiplied by `base^(-2/n_rot)` once per pair, in f32 — because the
//! rounding of that recurrence is part of llama.cpp's output.

use super::config::{RopeParams, RopeStyle};

/// Positions added to a table each time it grows.
const GROW_CHUNK: usize = 256;

#[derive(Debug)]
pub struct Rope {
    style: RopeStyle,
    n_rot: usize,
    freq_scale: f32,
    theta_scale: f32,
    /// Per rotated pair divisor (llama 3's `rope_freqs.weight`), if any.
    freq_factors: Option<Vec<f32>>,
    /// `positions * n_rot/2` cosines and sines, position-major.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    pub fn new(
        style: RopeStyle,
        n_rot: usize,
        params: &RopeParams,
        freq_factors: Option<Vec<f32>>,
    ) -> Rope {
        Rope {
            style,
            n_rot,
            freq_scale: params.freq_scale,
            theta_scale: params.freq_base.powf(-2.0 / n_rot as f32),
            freq_factors,
            cos: Vec::new(),
            sin: Vec::new(),
        }
    }

    fn positions(&self) -> usize {
        if self.n_rot == 0 {
            0
        } else {
            self.cos.len() / (self.n_rot / 2)
        }
    }

    /// Makes sure positions `0..end` are in the table.
    pub fn ensure(&mut self, end: usize) {
        let have = self.positions();
        if end <= have || self.n_rot == 0 {
            return;
        }
        let target = end.next_multiple_of(GROW_CHUNK);
        let half = self.n_rot / 2;
        self.cos.reserve((target - have) * half);
        self.sin.reserve((target - have) * half);
        for pos in have..target {
            let mut theta = pos as f32;
            for i in 0..half {
                let ff = self.freq_factors.as_ref().map_or(1.0, |f| f[i]);
                let angle = self.freq_scale * (theta / ff);
                self.cos.push(angle.cos());
                self.sin.push(angle.sin());
                theta *= self.theta_scale;
            }
        }
    }

    /// Rotates `rows` (each `n_heads * head_dim` values, one row per token,
    /// token t at position `start + t`) in place. `ensure` must cover them.
    pub fn apply(&self, rows: &mut [f32], n_heads: usize, head_dim: usize, start: usize) {
        let half = self.n_rot / 2;
        if half == 0 {
            return;
        }
        for (t, row) in rows.chunks_exact_mut(n_heads * head_dim).enumerate() {
            let at = (start + t) * half;
            let (cos, sin) = (&self.cos[at..at + half], &self.sin[at..at + half]);
            for head in row.chunks_exact_mut(head_dim) {
                match self.style {
                    RopeStyle::Adjacent => {
                        for (i, pair) in head[..self.n_rot].chunks_exact_mut(2).enumerate() {
                            let (x0, x1) = (pair[0], pair[1]);
                            (pair[0], pair[1]) = rotate(x0, x1, cos[i], sin[i]);
                        }
                    }
                    RopeStyle::HalfSplit => {
                        let (lo, hi) = head[..self.n_rot].split_at_mut(half);
                        for i in 0..half {
                            (lo[i], hi[i]) = rotate(lo[i], hi[i], cos[i], sin[i]);
                        }
                    }
                }
            }
        }
    }

    /// The cosines and sines of `rows` positions from `start` (`rows × n_rot/2` each,
    /// position-major); `ensure` must cover them.
    pub(crate) fn table(&self, start: usize, rows: usize) -> (&[f32], &[f32]) {
        let half = self.n_rot / 2;
        let span = start * half..(start + rows) * half;
        (&self.cos[span.clone()], &self.sin[span])
    }

    pub(crate) fn n_rot(&self) -> usize {
        self.n_rot
    }

    pub(crate) fn style(&self) -> RopeStyle {
        self.style
    }

    /// Bytes held by the tables.
    pub fn bytes(&self) -> usize {
        (self.cos.capacity() + self.sin.capacity()) * 4
    }
}

/// One rotation, with the fused multiply-adds GCC contracts ggml's
/// `x0*cos - x1*sin` and `x0*sin + x1*cos` into.
#[inline(always)]
fn rotate(x0: f32, x1: f32, cos: f32, sin: f32) -> (f32, f32) {
    (x0.mul_add(cos, -(x1 * sin)), x0.mul_add(sin, x1 * cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(base: f32) -> RopeParams {
        RopeParams {
            freq_base: base,
            freq_scale: 1.0,
        }
    }

    #[test]
    fn grows_in_chunks_only_as_needed() {
        let mut rope = Rope::new(RopeStyle::HalfSplit, 64, &params(1e6), None);
        assert_eq!(rope.positions(), 0);
        rope.ensure(10);
        assert_eq!(rope.positions(), GROW_CHUNK);
        rope.ensure(GROW_CHUNK + 1);
        assert_eq!(rope.positions(), 2 * GROW_CHUNK);
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_preserved() {
        for style in [RopeStyle::Adjacent, RopeStyle::HalfSplit] {
            let mut rope = Rope::new(style, 8, &params(10_000.0), None);
            rope.ensure(8);
            let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 1.0).collect();
            let mut at0 = x.clone();
            rope.apply(&mut at0, 2, 8, 0);
            assert_eq!(at0, x);
            let mut at5 = x.clone();
            rope.apply(&mut at5, 2, 8, 5);
            let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
            assert!((norm(&at5) - norm(&x)).abs() < 1e-4);
            assert_ne!(at5, x);
        }
    }

    #[test]
    fn half_split_rotates_pairs_i_and_i_plus_half() {
        let mut rope = Rope::new(RopeStyle::HalfSplit, 4, &params(10_000.0), None);
        rope.ensure(2);
        // Only dim 0 set: after rotation by position 1 at pair 0 (theta = 1 rad),
        // dim 0 = cos 1 and dim 2 = sin 1.
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope.apply(&mut x, 1, 4, 1);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
        assert_eq!(x[1], 0.0);
        let mut rope = Rope::new(RopeStyle::Adjacent, 4, &params(10_000.0), None);
        rope.ensure(2);
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope.apply(&mut x, 1, 4, 1);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
    }
}
