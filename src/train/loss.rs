//! Preference losses on summed log-probabilities, matching TRL's
//! `DPOTrainer` (`loss_type` "sigmoid" with no label smoothing, "ipo",
//! "hinge", default reverse-KL divergence).
//!
//! With `h = (π_w − π_l) − (r_w − r_l)` (policy and reference summed
//! log-probs of the chosen `w` and rejected `l` completions):
//!
//! * sigmoid: `−log σ(β h)`
//! * hinge: `relu(1 − β h)`
//! * ipo: `(h − 1/(2β))²`
//!
//! The batch loss is the mean over pairs. Note that TRL ≥ 1.x divides each
//! log-ratio by the completion's token count for IPO; callers wanting that
//! variant should pass per-token-averaged log-probs.

use anyhow::bail;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Which preference loss to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    Sigmoid,
    Ipo,
    Hinge,
}

impl LossKind {
    fn name(self) -> &'static str {
        match self {
            Self::Sigmoid => "sigmoid",
            Self::Ipo => "ipo",
            Self::Hinge => "hinge",
        }
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LossKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        for kind in [Self::Sigmoid, Self::Ipo, Self::Hinge] {
            if s.trim().eq_ignore_ascii_case(kind.name()) {
                return Ok(kind);
            }
        }
        bail!("unknown loss kind `{s}` (expected one of: sigmoid, ipo, hinge)")
    }
}

/// Per-pair inputs: summed log-probs of chosen (w) and rejected (l) under
/// policy and reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairLogps {
    pub policy_chosen: f64,
    pub policy_rejected: f64,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
}

/// Loss, gradients and rewards of one pair.
#[derive(Clone, Debug, PartialEq)]
pub struct PairLoss {
    /// This pair's loss (not divided by the number of pairs).
    pub loss: f64,
    /// ∂(mean loss)/∂policy_chosen (already divided by the number of pairs).
    pub d_chosen: f64,
    /// ∂(mean loss)/∂policy_rejected (already divided by the number of pairs).
    pub d_rejected: f64,
    /// β·(policy_chosen − ref_chosen).
    pub chosen_reward: f64,
    /// β·(policy_rejected − ref_rejected).
    pub rejected_reward: f64,
}

/// `log σ(x)`, stable for large `|x|`.
fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// `σ(x)`, stable for large `|x|`.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Mean loss over the batch and per-pair gradients; rewards are
/// β·(policy − ref) as TRL logs them. An empty batch gives `(0, [])`.
///
/// `beta` should be positive and finite; otherwise the results may be
/// non-finite (IPO divides by `beta`).
pub fn preference_loss(kind: LossKind, beta: f64, pairs: &[PairLogps]) -> (f64, Vec<PairLoss>) {
    if pairs.is_empty() {
        return (0.0, Vec::new());
    }
    let n = pairs.len() as f64;
    let per: Vec<PairLoss> = pairs
        .iter()
        .map(|p| {
            let chosen_ratio = p.policy_chosen - p.ref_chosen;
            let rejected_ratio = p.policy_rejected - p.ref_rejected;
            let h = chosen_ratio - rejected_ratio;
            // (loss, ∂loss/∂h); ∂h/∂π_w = 1, ∂h/∂π_l = −1.
            let (loss, d_h) = match kind {
                LossKind::Sigmoid => {
                    let z = beta * h;
                    (-log_sigmoid(z), -beta * sigmoid(-z))
                }
                LossKind::Hinge => {
                    let margin = 1.0 - beta * h;
                    if margin > 0.0 {
                        (margin, -beta)
                    } else {
                        (0.0, 0.0)
                    }
                }
                LossKind::Ipo => {
                    let r = h - 1.0 / (2.0 * beta);
                    (r * r, 2.0 * r)
                }
            };
            PairLoss {
                loss,
                d_chosen: d_h / n,
                d_rejected: -d_h / n,
                chosen_reward: beta * chosen_ratio,
                rejected_reward: beta * rejected_ratio,
            }
        })
        .collect();
    let mean = per.iter().map(|p| p.loss).sum::<f64>() / n;
    (mean, per)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [LossKind; 3] = [LossKind::Sigmoid, LossKind::Ipo, LossKind::Hinge];

    fn pl(pc: f64, pr: f64, rc: f64, rr: f64) -> PairLogps {
        PairLogps {
            policy_chosen: pc,
            policy_rejected: pr,
            ref_chosen: rc,
            ref_rejected: rr,
        }
    }

    #[test]
    fn zero_margin_sigmoid_is_ln2() {
        let (loss, per) = preference_loss(LossKind::Sigmoid, 0.1, &[pl(-3.0, -5.0, -3.0, -5.0)]);
        assert!((loss - std::f64::consts::LN_2).abs() <= 1e-15);
        assert!((per[0].d_chosen + 0.05).abs() <= 1e-15);
    }

    #[test]
    fn golden_trl_sigmoid() {
        let p = pl(
            -70.31143951416016,
            -54.04985427856445,
            -69.74436950683594,
            -53.869930267333984,
        );
        let (loss, per) = preference_loss(LossKind::Sigmoid, 0.05, &[p]);
        assert!((loss - 0.7028726935386658).abs() < 1e-6, "{loss}");
        assert!((per[0].chosen_reward - 0.05 * (p.policy_chosen - p.ref_chosen)).abs() < 1e-15);
        assert!(
            (per[0].rejected_reward - 0.05 * (p.policy_rejected - p.ref_rejected)).abs() < 1e-15
        );
    }

    #[test]
    fn hinge_and_ipo_values() {
        // h = 2, β = 0.25: hinge = 1 − 0.5 = 0.5; ipo = (2 − 2)² = 0.
        let p = [pl(0.0, -2.0, 0.0, 0.0)];
        assert_eq!(preference_loss(LossKind::Hinge, 0.25, &p).0, 0.5);
        assert_eq!(preference_loss(LossKind::Ipo, 0.25, &p).0, 0.0);
        // Past the margin the hinge is flat.
        let (loss, per) = preference_loss(LossKind::Hinge, 1.0, &p);
        assert_eq!((loss, per[0].d_chosen, per[0].d_rejected), (0.0, 0.0, 0.0));
    }

    #[test]
    fn mean_over_pairs() {
        let ps = [pl(0.0, 0.0, 0.0, 0.0), pl(0.0, -4.0, 0.0, 0.0)];
        let (mean, per) = preference_loss(LossKind::Hinge, 0.5, &ps);
        // Losses 1 and relu(1 − 2) = 0.
        assert_eq!(mean, 0.5);
        assert_eq!(per[0].d_chosen, -0.25);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let batch = [
            pl(-10.0, -12.5, -10.3, -11.9),
            pl(-7.2, -6.1, -7.0, -6.5),
            pl(-20.0, -25.0, -21.0, -23.5),
        ];
        let beta = 0.3;
        let eps = 1e-6;
        for kind in KINDS {
            let (_, per) = preference_loss(kind, beta, &batch);
            for i in 0..batch.len() {
                for chosen in [true, false] {
                    let bump = |delta: f64| {
                        let mut b = batch;
                        if chosen {
                            b[i].policy_chosen += delta;
                        } else {
                            b[i].policy_rejected += delta;
                        }
                        preference_loss(kind, beta, &b).0
                    };
                    let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
                    let an = if chosen {
                        per[i].d_chosen
                    } else {
                        per[i].d_rejected
                    };
                    assert!(
                        (fd - an).abs() < 1e-6,
                        "{kind} pair {i} chosen={chosen}: fd {fd} vs analytic {an}"
                    );
                }
            }
        }
    }

    #[test]
    fn large_margins_stay_finite() {
        for h in [1e4, -1e4] {
            let p = [pl(h, 0.0, 0.0, 0.0)];
            for kind in KINDS {
                let (loss, per) = preference_loss(kind, 1.0, &p);
                assert!(loss.is_finite(), "{kind} h={h}");
                assert!(per[0].d_chosen.is_finite() && per[0].d_rejected.is_finite());
            }
            let (loss, per) = preference_loss(LossKind::Sigmoid, 1.0, &p);
            if h > 0.0 {
                assert_eq!((loss, per[0].d_chosen), (0.0, 0.0));
            } else {
                assert_eq!((loss, per[0].d_chosen), (1e4, -1.0));
            }
        }
    }

    #[test]
    fn empty_batch() {
        for kind in KINDS {
            assert_eq!(preference_loss(kind, 0.1, &[]), (0.0, Vec::new()));
        }
    }

    #[test]
    fn parse_and_display() {
        for kind in KINDS {
            assert_eq!(kind.to_string().parse::<LossKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        assert_eq!(" IPO ".parse::<LossKind>().unwrap(), LossKind::Ipo);
        let err = "dpo".parse::<LossKind>().unwrap_err().to_string();
        assert!(err.contains("dpo") && err.contains("sigmoid"), "{err}");
    }
}
