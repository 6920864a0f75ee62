//! Candidate preference pairs and the per-step draw of DITTO.
//!
//! Samples are produced in rounds `t = 0, 1, 2, …`; each round samples
//! completions for every demonstration prompt from the current policy. For a
//! training step in round `t`, the candidate pairs (chosen ≻ rejected) for a
//! prompt are:
//!
//! * **expert**: demonstration ≻ a round-`t` sample;
//! * **replay**: demonstration ≻ a round-`u` sample with `u < t`;
//! * **inter-policy**: a round-`a` sample ≻ a round-`b` sample with
//!   `b < a ≤ t` (a later policy is preferred over an earlier one; samples of
//!   the same round are never paired).
//!
//! Each step draws, without replacement, `round(frac · S_b)` pairs of each
//! kind, where `S_b = round(multiplier · n_prompts)`, capped by the number of
//! candidates of that kind. A shortfall in one kind is not redistributed.

use anyhow::{Result, ensure};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The kind of a preference pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Demonstration ≻ sample of the current round.
    Expert,
    /// Demonstration ≻ sample of an earlier round.
    Replay,
    /// Later-round sample ≻ earlier-round sample.
    InterPolicy,
}

/// One side of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    /// The prompt's demonstration.
    Demo,
    /// Index into the caller's sample list.
    Sample(usize),
}

/// A preference pair for one prompt: `chosen` ≻ `rejected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub prompt: usize,
    pub chosen: Side,
    pub rejected: Side,
    pub kind: Kind,
}

/// Mixture of pair kinds in a step's batch and the batch-size multiplier.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    /// Fraction of the batch drawn from expert pairs.
    pub expert: f64,
    /// Fraction of the batch drawn from replay pairs.
    pub replay: f64,
    /// Fraction of the batch drawn from inter-policy pairs.
    pub inter_policy: f64,
    /// Batch size `S_b = round(multiplier · n_prompts)`.
    pub multiplier: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            expert: 0.7,
            replay: 0.2,
            inter_policy: 0.1,
            multiplier: 3.0,
        }
    }
}

impl Mix {
    /// Checks that each fraction lies in `[0, 1]`, that they sum to at most
    /// one (with a `1e-9` tolerance) and that the multiplier is positive.
    pub fn validate(&self) -> Result<()> {
        for (name, frac) in [
            ("expert", self.expert),
            ("replay", self.replay),
            ("inter_policy", self.inter_policy),
        ] {
            ensure!(
                (0.0..=1.0).contains(&frac),
                "mix fraction `{name}` must lie in [0, 1], got {frac}"
            );
        }
        let sum = self.expert + self.replay + self.inter_policy;
        ensure!(
            sum <= 1.0 + 1e-9,
            "mix fractions must sum to at most 1, got {sum}"
        );
        ensure!(
            self.multiplier.is_finite() && self.multiplier > 0.0,
            "mix multiplier must be a positive finite number, got {}",
            self.multiplier
        );
        Ok(())
    }

    /// Batch size `S_b = round(multiplier · n_prompts)` (0 for a
    /// non-positive or NaN multiplier).
    pub fn batch_size(&self, n_prompts: usize) -> usize {
        // Float-to-int `as` saturates (NaN → 0), so bad input cannot panic.
        (self.multiplier * n_prompts as f64).round() as usize
    }
}

/// What the pair logic needs of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleInfo {
    pub prompt: usize,
    pub round: usize,
}

/// All candidate pairs for a step, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Candidates {
    pub expert: Vec<Pair>,
    pub replay: Vec<Pair>,
    pub inter_policy: Vec<Pair>,
}

/// Builds the candidate pairs for a step in round `round`.
///
/// Only samples with `round ≤ round` and `prompt < n_prompts` are used.
/// The order is deterministic: prompt by prompt, and within a prompt by
/// sample index (for inter-policy pairs, by chosen index, then rejected
/// index).
pub fn candidates(samples: &[SampleInfo], n_prompts: usize, round: usize) -> Candidates {
    let mut by_prompt: Vec<Vec<usize>> = vec![Vec::new(); n_prompts];
    for (i, s) in samples.iter().enumerate() {
        if s.round <= round
            && let Some(group) = by_prompt.get_mut(s.prompt)
        {
            group.push(i);
        }
    }

    let mut c = Candidates::default();
    for (prompt, group) in by_prompt.iter().enumerate() {
        for &i in group {
            let demo_pair = |kind| Pair {
                prompt,
                chosen: Side::Demo,
                rejected: Side::Sample(i),
                kind,
            };
            if samples[i].round == round {
                c.expert.push(demo_pair(Kind::Expert));
            } else {
                c.replay.push(demo_pair(Kind::Replay));
            }
        }
        for &a in group {
            for &b in group {
                if samples[a].round > samples[b].round {
                    c.inter_policy.push(Pair {
                        prompt,
                        chosen: Side::Sample(a),
                        rejected: Side::Sample(b),
                        kind: Kind::InterPolicy,
                    });
                }
            }
        }
    }
    c
}

/// Draws one step's pairs: expert pairs first, then replay, then
/// inter-policy.
///
/// Each kind contributes `round(frac · S_b)` distinct candidates (capped by
/// how many exist), in random order. A shortfall is not redistributed.
pub fn draw(c: &Candidates, mix: &Mix, n_prompts: usize, rng: &mut impl Rng) -> Vec<Pair> {
    let batch = mix.batch_size(n_prompts) as f64;
    let mut out = Vec::new();
    for (pool, frac) in [
        (&c.expert, mix.expert),
        (&c.replay, mix.replay),
        (&c.inter_policy, mix.inter_policy),
    ] {
        let want = (frac * batch).round() as usize;
        let amount = want.min(pool.len());
        out.extend(
            rand::seq::index::sample(rng, pool.len(), amount)
                .into_iter()
                .map(|i| pool[i]),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashSet;

    /// `per` samples for each prompt in each round `0..=max_round`.
    fn setup(n_prompts: usize, max_round: usize, per: usize) -> Vec<SampleInfo> {
        let mut v = Vec::new();
        for round in 0..=max_round {
            for prompt in 0..n_prompts {
                for _ in 0..per {
                    v.push(SampleInfo { prompt, round });
                }
            }
        }
        v
    }

    fn sample_of(samples: &[SampleInfo], side: Side) -> Option<SampleInfo> {
        match side {
            Side::Demo => None,
            Side::Sample(i) => Some(samples[i]),
        }
    }

    #[test]
    fn candidate_counts_by_hand() {
        // 2 prompts, rounds 0..=2, 2 samples per prompt per round.
        let s = setup(2, 2, 2);
        // Round 2: expert = 2 prompts × 2 = 4; replay = 2 × 4 = 8;
        // inter per prompt = (1,0) 4 + (2,0) 4 + (2,1) 4 = 12 → 24.
        let c = candidates(&s, 2, 2);
        assert_eq!(
            (c.expert.len(), c.replay.len(), c.inter_policy.len()),
            (4, 8, 24)
        );
        // Round 1 (round-2 samples present but ignored): 4, 4, 2 × 4 = 8.
        let c = candidates(&s, 2, 1);
        assert_eq!(
            (c.expert.len(), c.replay.len(), c.inter_policy.len()),
            (4, 4, 8)
        );
    }

    #[test]
    fn round_zero_has_only_expert_pairs() {
        let s = setup(3, 2, 2);
        let c = candidates(&s, 3, 0);
        assert_eq!(c.expert.len(), 6);
        assert!(c.replay.is_empty());
        assert!(c.inter_policy.is_empty());
    }

    #[test]
    fn out_of_range_prompts_are_ignored() {
        let s = vec![
            SampleInfo {
                prompt: 5,
                round: 0,
            },
            SampleInfo {
                prompt: 0,
                round: 0,
            },
        ];
        let c = candidates(&s, 1, 0);
        assert_eq!(c.expert.len(), 1);
        assert_eq!(c.expert[0].rejected, Side::Sample(1));
        assert!(candidates(&s, 0, 0).expert.is_empty());
    }

    #[test]
    fn pair_invariants() {
        let s = setup(3, 3, 2);
        for round in 0..=3 {
            let c = candidates(&s, 3, round);
            for p in c.expert.iter().chain(&c.replay).chain(&c.inter_policy) {
                for side in [p.chosen, p.rejected] {
                    if let Some(x) = sample_of(&s, side) {
                        assert!(x.round <= round, "sample from a later round");
                        assert_eq!(x.prompt, p.prompt);
                    }
                }
            }
            for p in &c.expert {
                assert_eq!((p.kind, p.chosen), (Kind::Expert, Side::Demo));
                assert_eq!(sample_of(&s, p.rejected).unwrap().round, round);
            }
            for p in &c.replay {
                assert_eq!((p.kind, p.chosen), (Kind::Replay, Side::Demo));
                assert!(sample_of(&s, p.rejected).unwrap().round < round);
            }
            for p in &c.inter_policy {
                assert_eq!(p.kind, Kind::InterPolicy);
                let w = sample_of(&s, p.chosen).unwrap();
                let l = sample_of(&s, p.rejected).unwrap();
                assert!(w.round > l.round);
            }
        }
    }

    #[test]
    fn candidates_are_deterministic() {
        let s = setup(2, 2, 2);
        assert_eq!(candidates(&s, 2, 2), candidates(&s, 2, 2));
    }

    fn counts(pairs: &[Pair]) -> [usize; 3] {
        let mut n = [0; 3];
        for p in pairs {
            n[p.kind as usize] += 1;
        }
        n
    }

    #[test]
    fn draw_counts_exact_when_enough() {
        // 4 prompts, S_b = 12 → 8.4→8 expert, 2.4→2 replay, 1.2→1 inter.
        let s = setup(4, 2, 4);
        let c = candidates(&s, 4, 2);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let d = draw(&c, &Mix::default(), 4, &mut rng);
        assert_eq!(counts(&d), [8, 2, 1]);
        // Expert first, then replay, then inter-policy.
        let kinds: Vec<Kind> = d.iter().map(|p| p.kind).collect();
        let mut sorted = kinds.clone();
        sorted.sort_by_key(|k| *k as usize);
        assert_eq!(kinds, sorted);
    }

    #[test]
    fn draw_rounds_half_away_from_zero() {
        // 1 prompt, multiplier 2.5 → S_b = round(2.5) = 3;
        // expert 0.5·3 = 1.5 → 2, replay 0.5·3 = 1.5 → 2.
        let s = setup(1, 1, 4);
        let c = candidates(&s, 1, 1);
        let mix = Mix {
            expert: 0.5,
            replay: 0.5,
            inter_policy: 0.0,
            multiplier: 2.5,
        };
        let d = draw(&c, &mix, 1, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(counts(&d), [2, 2, 0]);
    }

    #[test]
    fn draw_is_capped_without_redistribution() {
        // Round 0, 2 prompts × 1 sample: 2 expert candidates; S_b = 6 wants
        // 4 expert, 1 replay, 1 inter — gets 2, 0, 0.
        let s = setup(2, 0, 1);
        let c = candidates(&s, 2, 0);
        let d = draw(&c, &Mix::default(), 2, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(counts(&d), [2, 0, 0]);
        // Round 1 with 1 sample each: 2 expert, 2 replay, 2 inter; S_b = 30
        // wants 21/6/3 → capped to 2/2/2.
        let s = setup(2, 1, 1);
        let c = candidates(&s, 2, 1);
        let mix = Mix {
            multiplier: 15.0,
            ..Mix::default()
        };
        let d = draw(&c, &mix, 2, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(counts(&d), [2, 2, 2]);
    }

    #[test]
    fn draw_without_replacement_and_within_round() {
        let s = setup(3, 3, 3);
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let c = candidates(&s, 3, 2);
            let mix = Mix {
                multiplier: 10.0,
                ..Mix::default()
            };
            let d = draw(&c, &mix, 3, &mut rng);
            let uniq: HashSet<_> = d.iter().map(|p| (p.chosen, p.rejected)).collect();
            assert_eq!(uniq.len(), d.len(), "duplicate pair in one draw");
            for p in &d {
                for side in [p.chosen, p.rejected] {
                    if let Some(x) = sample_of(&s, side) {
                        assert!(x.round <= 2);
                    }
                }
            }
        }
    }

    #[test]
    fn same_seed_same_draw() {
        let s = setup(3, 2, 2);
        let c = candidates(&s, 3, 2);
        let a = draw(&c, &Mix::default(), 3, &mut ChaCha8Rng::seed_from_u64(42));
        let b = draw(&c, &Mix::default(), 3, &mut ChaCha8Rng::seed_from_u64(42));
        assert_eq!(a, b);
    }

    #[test]
    fn bad_mix_does_not_panic_in_draw() {
        let s = setup(2, 1, 1);
        let c = candidates(&s, 2, 1);
        let mix = Mix {
            expert: f64::NAN,
            replay: -1.0,
            inter_policy: f64::INFINITY,
            multiplier: f64::NAN,
        };
        let d = draw(&c, &mix, 2, &mut ChaCha8Rng::seed_from_u64(0));
        assert!(d.is_empty());
    }

    #[test]
    fn validate() {
        assert!(Mix::default().validate().is_ok());
        let bad = [
            Mix {
                expert: -0.1,
                ..Mix::default()
            },
            Mix {
                replay: 1.5,
                ..Mix::default()
            },
            Mix {
                inter_policy: f64::NAN,
                ..Mix::default()
            },
            Mix {
                expert: 0.9,
                ..Mix::default()
            },
            Mix {
                multiplier: 0.0,
                ..Mix::default()
            },
            Mix {
                multiplier: f64::INFINITY,
                ..Mix::default()
            },
        ];
        for m in bad {
            assert!(m.validate().is_err(), "{m:?} should be rejected");
        }
    }

    #[test]
    fn serde_names() {
        assert_eq!(
            serde_json::to_string(&Kind::InterPolicy).unwrap(),
            "\"inter_policy\""
        );
        let m: Mix =
            serde_json::from_str(&serde_json::to_string(&Mix::default()).unwrap()).unwrap();
        assert_eq!(m, Mix::default());
    }
}
