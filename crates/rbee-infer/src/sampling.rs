//! Choosing the next token from logits.
//!
//! The chain follows llama.cpp's default order: repetition penalty, top-k, top-p, min-p,
//! temperature, then a draw. Temperature 0 is greedy (argmax, first index on ties, as
//! llama.cpp). A seed makes every draw reproducible; without one the seed comes from the clock.

pub use rbee_proto::generation::{MAX_TOKENS, SamplingParams};

/// A small, fast, seedable generator (SplitMix64): reproducible across platforms and releases,
/// which a dependency's generator does not promise.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// When no top-k is given, only this many of the most likely tokens are kept before top-p and
/// min-p: sorting a 262k vocabulary every step would cost more than the model's forward pass,
/// and the tail beyond it carries negligible probability mass.
const MAX_CANDIDATES: usize = 1024;

#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
    /// Token counts in the penalty window, reused across steps.
    counts: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5eed)
        });
        Sampler {
            params,
            rng: Rng(seed),
            candidates: Vec::new(),
            counts: std::collections::HashMap::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `logits` is modified in place (penalties); `history` is every
    /// token so far, prompt included.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_repeat_penalty(logits, history);
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let k = self
            .params
            .top_k
            .unwrap_or(MAX_CANDIDATES)
            .min(logits.len())
            .max(1);
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            self.candidates.truncate(k);
        }
        self.candidates
            .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));

        // Probabilities at temperature 1 for the top-p / min-p cut, as llama.cpp does.
        let probs = softmax(&self.candidates, 1.0);
        let mut keep = probs.len();
        if let Some(top_p) = self.params.top_p {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= top_p {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
        if let Some(min_p) = self.params.min_p {
            let threshold = probs[0] * min_p;
            let above = probs.iter().take_while(|p| **p >= threshold).count();
            keep = keep.min(above.max(1));
        }
        self.candidates.truncate(keep.max(1));
        let probs = softmax(&self.candidates, self.params.temperature);
        let mut r = self.rng.next_f32();
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return self.candidates[i].0;
            }
            r -= p;
        }
        self.candidates.last().map(|c| c.0).unwrap_or(0)
    }

    /// llama.cpp's penalties sampler: over the last `repeat_last_n` tokens, each distinct
    /// token's logit is divided (positive) or multiplied (negative) by `repeat_penalty`, then
    /// lowered by `frequency_penalty` × its count and `presence_penalty` once.
    fn apply_repeat_penalty(&mut self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        let off =
            p.repeat_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0;
        if off || p.repeat_last_n == 0 {
            return;
        }
        let start = history.len().saturating_sub(p.repeat_last_n);
        let counts = &mut self.counts;
        counts.clear();
        for &t in &history[start..] {
            *counts.entry(t).or_insert(0u32) += 1;
        }
        for (&t, &n) in counts.iter() {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / p.repeat_penalty
                } else {
                    *l * p.repeat_penalty
                };
                *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
    }
}

/// Index of the largest logit; the first one on ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(candidates: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = candidates.first().map(|c| c.1).unwrap_or(0.0);
    let exps: Vec<f32> = candidates
        .iter()
        .map(|c| ((c.1 - max) / temperature).exp())
        .collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: None,
            top_p: None,
            min_p: None,
            seed: Some(7),
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut p = params(1.0);
            p.seed = Some(seed);
            let mut s = Sampler::new(p);
            (0..40)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_cuts_the_tail() {
        let mut p = params(1.0);
        p.top_k = Some(1);
        let mut s = Sampler::new(p);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.0, 1.0, 0.5], &[]), 1);
        }
        // p(token 0) ≈ 0.9995: top_p 0.5 keeps only it.
        let mut p = params(1.0);
        p.top_p = Some(0.5);
        let mut s = Sampler::new(p);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [10.0, 2.0, 1.0], &[]), 0);
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let mut p = params(1.0);
        p.min_p = Some(0.2);
        let mut s = Sampler::new(p);
        // Token 2 has p ≈ e^-3 relative to the best: below 0.2, never drawn.
        for _ in 0..200 {
            assert_ne!(s.sample(&mut [3.0, 2.8, 0.0], &[]), 2);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut s = Sampler::new(params(1.0));
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let ones = (0..4000)
            .filter(|_| s.sample(&mut logits.clone(), &[]) == 1)
            .count();
        assert!((2850..3150).contains(&ones), "{ones}");
    }

    #[test]
    fn repeat_penalty_changes_the_choice() {
        let mut p = params(0.0);
        p.repeat_penalty = 2.0;
        let mut s = Sampler::new(p);
        assert_eq!(s.sample(&mut [1.0, 1.5, 0.0], &[1]), 0);
    }

    #[test]
    fn frequency_and_presence_penalties_lower_what_was_said() {
        // Token 1 leads by 0.5 and occurred three times.
        let history = [1, 1, 1, 2];
        let pick = |frequency: f32, presence: f32| {
            let mut p = params(0.0);
            p.frequency_penalty = frequency;
            p.presence_penalty = presence;
            Sampler::new(p).sample(&mut [1.0, 1.5, 0.0], &history)
        };
        assert_eq!(pick(0.0, 0.0), 1);
        assert_eq!(pick(0.2, 0.0), 0, "3 × 0.2 > 0.5");
        assert_eq!(pick(0.1, 0.0), 1, "3 × 0.1 < 0.5");
        assert_eq!(pick(0.0, 0.6), 0, "presence counts once");
        // Negative values encourage repeats.
        let mut p = params(0.0);
        p.presence_penalty = -2.0;
        assert_eq!(Sampler::new(p).sample(&mut [1.0, 0.0, 0.5], &[2]), 2);
        // Out of OpenAI's range: refused by name.
        let mut p = params(1.0);
        p.frequency_penalty = 2.5;
        assert!(p.validate().unwrap_err().contains("frequency_penalty"));
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = params(1.0);
        p.top_p = Some(1.5);
        assert!(p.validate().unwrap_err().contains("top_p"));
        p = params(-1.0);
        assert!(p.validate().unwrap_err().contains("temperature"));
        // Values a client can send that mean nothing are refused, not clamped.
        p = params(1.0);
        p.repeat_penalty = 1e39_f64 as f32; // infinity after the JSON number is narrowed
        assert!(p.validate().unwrap_err().contains("repeat_penalty"));
        p = params(1.0);
        p.max_tokens = 1_000_000_000_000;
        assert!(p.validate().unwrap_err().contains("max_tokens"));
        p.max_tokens = 0;
        assert!(p.validate().unwrap_err().contains("max_tokens"));
        p.max_tokens = 4096;
        assert!(p.validate().is_ok());
    }
}
