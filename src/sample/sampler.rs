//! Token selection from logits: greedy, temperature, top-k and top-p, with a seeded
//! ChaCha random stream per sequence and scratch buffers reused across steps.

use super::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    rng: ChaCha8Rng,
    probs: Vec<f32>,
    order: Vec<u32>,
}

impl Sampler {
    pub fn new(params: &SamplingParams, seed: u64, vocab: usize) -> Sampler {
        Sampler {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            rng: ChaCha8Rng::seed_from_u64(seed),
            probs: vec![0.0; vocab],
            order: Vec::with_capacity(vocab),
        }
    }

    /// Pick a token from `logits`, never one of `suppress`.
    pub fn sample(&mut self, logits: &[f32], suppress: &[u32]) -> u32 {
        let probs = &mut self.probs[..logits.len()];
        if self.temperature <= 0.0 {
            return argmax(logits, suppress);
        }
        let inv_t = 1.0 / self.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (p, &l) in probs.iter_mut().zip(logits) {
            *p = ((l - max) * inv_t).exp();
        }
        for &s in suppress {
            probs[s as usize] = 0.0;
        }
        let u: f32 = self.rng.random();
        if self.top_k == 0 && self.top_p >= 1.0 {
            let total: f32 = probs.iter().sum();
            return pick(probs.iter().copied().enumerate(), u * total)
                .unwrap_or_else(|| argmax(logits, suppress));
        }
        self.order.clear();
        self.order
            .extend((0..probs.len() as u32).filter(|&i| probs[i as usize] > 0.0));
        let by_prob = |a: &u32, b: &u32| probs[*b as usize].total_cmp(&probs[*a as usize]);
        if self.top_k > 0 && self.top_k < self.order.len() {
            self.order.select_nth_unstable_by(self.top_k - 1, by_prob);
            self.order.truncate(self.top_k);
        }
        self.order
            .sort_unstable_by(|a, b| by_prob(a, b).then(a.cmp(b)));
        let total: f32 = self.order.iter().map(|&i| probs[i as usize]).sum();
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = 0;
            for &i in &self.order {
                acc += probs[i as usize];
                keep += 1;
                if acc >= self.top_p * total {
                    break;
                }
            }
            self.order.truncate(keep.max(1));
        }
        let kept: f32 = self.order.iter().map(|&i| probs[i as usize]).sum();
        pick(
            self.order.iter().map(|&i| (i as usize, probs[i as usize])),
            u * kept,
        )
        .unwrap_or_else(|| argmax(logits, suppress))
    }
}

/// First index whose cumulative weight exceeds `target`; the last positive one if
/// rounding leaves `target` unreached.
fn pick(items: impl Iterator<Item = (usize, f32)>, target: f32) -> Option<u32> {
    let mut acc = 0.0;
    let mut last = None;
    for (i, p) in items {
        if p <= 0.0 {
            continue;
        }
        acc += p;
        last = Some(i as u32);
        if acc > target {
            return last;
        }
    }
    last
}

fn argmax(logits: &[f32], suppress: &[u32]) -> u32 {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 && !suppress.contains(&(i as u32)) {
            best = (i as u32, l);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, k: usize, p: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_takes_argmax_and_respects_suppression() {
        let mut s = Sampler::new(&params(0.0, 0, 1.0), 1, 4);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0], &[]), 1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0], &[1]), 2);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(&params(1.0, 1, 1.0), 7, 5);
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5, 0.9, -2.0], &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ≈ [0.643, 0.237, 0.087, 0.032]: top_p 0.7 keeps tokens 0 and 1.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(&params(1.0, 0, 0.7), 3, 4);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[s.sample(&logits, &[]) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0);
        assert!(seen[0] > seen[1] && seen[1] > 300, "{seen:?}");
    }

    #[test]
    fn temperature_sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, 1.0f32.ln() + 0.0, 2.0f32.ln()];
        // weights 1 : 1 : 2
        let mut s = Sampler::new(&params(1.0, 0, 1.0), 11, 3);
        let mut seen = [0usize; 3];
        let draws: Vec<u32> = (0..4000).map(|_| s.sample(&logits, &[])).collect();
        for &d in &draws {
            seen[d as usize] += 1;
        }
        assert!((seen[2] as f64 / 4000.0 - 0.5).abs() < 0.03, "{seen:?}");
        let mut again = Sampler::new(&params(1.0, 0, 1.0), 11, 3);
        let replay: Vec<u32> = (0..4000).map(|_| again.sample(&logits, &[])).collect();
        assert_eq!(draws, replay);
        let mut other = Sampler::new(&params(1.0, 0, 1.0), 12, 3);
        let diff: Vec<u32> = (0..4000).map(|_| other.sample(&logits, &[])).collect();
        assert_ne!(draws, diff);
    }
}
