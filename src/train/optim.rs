//! Optimisation primitives for LoRA training: AdamW, gradient-norm clipping,
//! learning-rate schedules. (Gradient accumulation needs nothing here: the backward adds
//! into its gradient buffers, so micro-batches accumulate by construction.)
//!
//! Everything here mirrors the reference Python stack so that a ditto run can be
//! compared number-for-number with a PyTorch + Hugging Face `transformers` run:
//!
//! * [`AdamW`] reproduces the single-tensor (CPU) path of `torch.optim.AdamW`,
//!   including the order and precision of every floating-point operation:
//!   scalar coefficients are computed in `f64` (Python floats) and rounded once
//!   to `f32`, the first moment uses `lerp` (a fused multiply-add, as PyTorch's
//!   vectorised kernel does), and the update is `p + ((-step_size) * m) / denom`
//!   with `denom = sqrt(v) / sqrt(bias_correction2) + eps`.
//! * [`clip_grad_norm`] follows `torch.nn.utils.clip_grad_norm_`.
//! * [`Schedule`] follows `transformers`' `get_*_schedule*` functions driven by a
//!   `LambdaLR`, and [`warmup_steps`] follows `TrainingArguments.get_warmup_steps`.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

/// Hyperparameters of [`AdamW`]; the defaults are those of `torch.optim.AdamW`.
///
/// Values are `f64` because PyTorch keeps them as Python floats and derives the
/// per-step coefficients in double precision before rounding them to `f32`;
/// storing them as `f32` would shift the results by up to ~1e-5 relative.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    /// Base (peak) learning rate; a [`Schedule`] scales it per step. The
    /// optimizer itself uses the `lr` passed to [`AdamW::step`].
    pub lr: f64,
    /// Exponential decay rate of the first moment.
    pub beta1: f64,
    /// Exponential decay rate of the second moment.
    pub beta2: f64,
    /// Term added to the denominator for numerical stability.
    pub eps: f64,
    /// Decoupled weight decay coefficient.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Checks the same constraints as PyTorch's `AdamW` constructor.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.lr.is_finite() && self.lr >= 0.0,
            "invalid AdamW learning rate {}: must be finite and >= 0",
            self.lr
        );
        ensure!(
            self.eps.is_finite() && self.eps >= 0.0,
            "invalid AdamW eps {}: must be finite and >= 0",
            self.eps
        );
        ensure!(
            (0.0..1.0).contains(&self.beta1),
            "invalid AdamW beta1 {}: must be in [0, 1)",
            self.beta1
        );
        ensure!(
            (0.0..1.0).contains(&self.beta2),
            "invalid AdamW beta2 {}: must be in [0, 1)",
            self.beta2
        );
        ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "invalid AdamW weight decay {}: must be finite and >= 0",
            self.weight_decay
        );
        Ok(())
    }
}

/// AdamW optimizer state for a fixed list of parameter tensors.
///
/// The whole struct (configuration, step count and both moment buffers) is
/// serde-serializable so a checkpoint can resume training exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    cfg: AdamWConfig,
    /// Number of optimizer steps taken so far.
    t: u64,
    /// First moment (`exp_avg`), one buffer per parameter tensor.
    m: Vec<Vec<f32>>,
    /// Second moment (`exp_avg_sq`), one buffer per parameter tensor.
    v: Vec<Vec<f32>>,
}

impl AdamW {
    /// Creates zeroed state for parameter tensors of the given lengths.
    pub fn new(cfg: AdamWConfig, sizes: &[usize]) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            t: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        })
    }

    /// The hyperparameters this optimizer was built with.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Number of completed [`step`](Self::step) calls.
    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// Lengths of the registered parameter tensors, e.g. to check that a
    /// resumed checkpoint matches the model.
    pub fn sizes(&self) -> Vec<usize> {
        self.m.iter().map(Vec::len).collect()
    }

    /// Performs one AdamW update of `params` with `grads` at learning rate `lr`.
    ///
    /// Nothing is modified if an argument is invalid (wrong tensor count or
    /// length, negative or non-finite `lr`).
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f32) -> Result<()> {
        self.cfg.validate()?;
        ensure!(
            lr.is_finite() && lr >= 0.0,
            "invalid learning rate {lr}: must be finite and >= 0"
        );
        ensure!(
            params.len() == self.m.len() && grads.len() == self.m.len(),
            "AdamW holds state for {} tensors but got {} params and {} grads",
            self.m.len(),
            params.len(),
            grads.len()
        );
        for (i, ((p, g), (m, v))) in params
            .iter()
            .zip(grads)
            .zip(self.m.iter().zip(&self.v))
            .enumerate()
        {
            if p.len() != m.len() || g.len() != m.len() || v.len() != m.len() {
                bail!(
                    "AdamW tensor {i}: state has {} (m) / {} (v) elements, param has {}, grad has {}",
                    m.len(),
                    v.len(),
                    p.len(),
                    g.len()
                );
            }
        }

        self.t += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.cfg;
        let lr = f64::from(lr);
        // Scalar coefficients: computed in f64 as PyTorch does with Python
        // floats, then rounded to f32 where the tensor kernels consume them.
        let t = self.t as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let step_size = lr / bias_correction1;
        let decay = (1.0 - lr * weight_decay) as f32;
        let lerp_weight = (1.0 - beta1) as f32;
        let beta2_f = beta2 as f32;
        let one_minus_beta2 = (1.0 - beta2) as f32;
        let bc2_sqrt = bias_correction2.powf(0.5) as f32;
        let eps = eps as f32;
        let neg_step_size = (-step_size) as f32;

        for ((p, g), (m, v)) in params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            for (((p, &g), m), v) in p.iter_mut().zip(*g).zip(m.iter_mut()).zip(v.iter_mut()) {
                if weight_decay != 0.0 {
                    *p *= decay;
                }
                *m = lerp(*m, g, lerp_weight);
                *v = *v * beta2_f + one_minus_beta2 * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p += neg_step_size * *m / denom;
            }
        }
        Ok(())
    }
}

/// `torch.lerp(start, end, weight)` as computed by PyTorch's vectorised CPU kernel.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        weight.mul_add(end - start, start)
    } else {
        (weight - 1.0).mul_add(end - start, end)
    }
}

/// Clips gradients in place to a global L2 norm of at most `max_norm`, like
/// `torch.nn.utils.clip_grad_norm_` (norm type 2).
///
/// Returns the total norm before clipping. Gradients are scaled by
/// `max_norm / (total + 1e-6)` only when that factor is below 1, so a
/// non-finite total leaves them untouched; callers should check the returned
/// norm and skip the step if it is not finite.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let sum_sq: f64 = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    let total = sum_sq.sqrt() as f32;
    let clip_coef = max_norm / (total + 1e-6);
    if clip_coef < 1.0 {
        for x in grads.iter_mut().flat_map(|g| g.iter_mut()) {
            *x *= clip_coef;
        }
    }
    total
}

/// Learning-rate schedule, named and computed as in Hugging Face `transformers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// `get_constant_schedule`: factor 1 throughout (warmup ignored).
    Constant,
    /// `get_constant_schedule_with_warmup`.
    ConstantWithWarmup,
    /// `get_linear_schedule_with_warmup` (the `transformers` default).
    #[default]
    Linear,
    /// `get_cosine_schedule_with_warmup` with `num_cycles = 0.5`.
    Cosine,
}

impl Schedule {
    /// All schedules, in the order listed in error messages.
    pub const ALL: [Schedule; 4] = [
        Schedule::Constant,
        Schedule::ConstantWithWarmup,
        Schedule::Linear,
        Schedule::Cosine,
    ];

    /// The serde / command-line name of this schedule.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::ConstantWithWarmup => "constant_with_warmup",
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
        }
    }

    /// Multiplier of the base learning rate for the 0-based optimizer step
    /// `step` (the `current_step` seen by `transformers`' `LambdaLR` lambda).
    ///
    /// As in `transformers`, the linear schedule is clamped at 0 past `total`
    /// while the cosine schedule is not (it rises again after `total`).
    pub fn lr_factor(&self, step: usize, warmup: usize, total: usize) -> f32 {
        let warming_up = matches!(
            self,
            Schedule::ConstantWithWarmup | Schedule::Linear | Schedule::Cosine
        ) && step < warmup;
        if warming_up {
            return (step as f64 / warmup.max(1) as f64) as f32;
        }
        // Steps after warmup, and their total, as signed values: HF computes
        // `total - step` in Python ints, which may go negative.
        let decay_len = (total as f64 - warmup as f64).max(1.0);
        let factor = match self {
            Schedule::Constant | Schedule::ConstantWithWarmup => 1.0,
            Schedule::Linear => ((total as f64 - step as f64) / decay_len).max(0.0),
            Schedule::Cosine => {
                let progress = (step as f64 - warmup as f64) / decay_len;
                let num_cycles = 0.5;
                (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0)
            }
        };
        factor as f32
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error returned when parsing an unknown [`Schedule`] name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseScheduleError {
    input: String,
}

impl fmt::Display for ParseScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown LR schedule `{}`; valid schedules: ", self.input)?;
        for (i, s) in Schedule::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(s.name())?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseScheduleError {}

impl FromStr for Schedule {
    type Err = ParseScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::ALL
            .into_iter()
            .find(|sched| sched.name() == s)
            .ok_or_else(|| ParseScheduleError {
                input: s.to_owned(),
            })
    }
}

/// Number of warmup steps for a warmup `ratio` of `total` steps:
/// `ceil(ratio * total)`, as `TrainingArguments.get_warmup_steps` computes it.
///
/// The product is taken in `f64` on the shortest decimal form of `ratio`
/// (what the user typed, as Python would hold it), so `warmup_steps(0.1, 30)`
/// is 3 rather than `ceil(3.0000000447)`. Negative or NaN ratios give 0.
pub fn warmup_steps(ratio: f32, total: usize) -> usize {
    let ratio: f64 = ratio.to_string().parse().unwrap_or(f64::from(ratio));
    // `as` saturates: negative values and NaN map to 0.
    (ratio * total as f64).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values from /tmp/optim_golden.py (torch 2.15, transformers 5.24).
    const P0_INIT: [f32; 6] = [0.5, -1.25, 2.0, 0.0, -0.03, 3.5];
    const P1_INIT: [f32; 3] = [1.0, -2.0, 0.25];
    const G0: [[f32; 6]; 5] = [
        [0.1, -0.21000001, 0.32000002, -0.0299, -4.96, 0.0],
        [0.15, -0.29000002, 0.43, 0.03015, -7.54, 0.125],
        [0.2, -0.41, 0.62, -0.0298, -9.96, 0.05],
        [0.25, -0.49, 0.73, 0.03025, -12.54, 0.175],
        [0.3, -0.61, 0.92, -0.0297, -14.96, 0.10000001],
    ];
    const G1: [[f32; 3]; 5] = [
        [-0.7, 0.0, 2.5],
        [-0.35, 0.0, 1.25],
        [-0.23333333, 0.0, 0.8333333],
        [-0.175, 0.0, 0.625],
        [-0.14, 0.0, 0.5],
    ];
    const P0_AFTER: [[f32; 6]; 5] = [
        [
            0.4895001,
            -1.23875,
            1.988,
            0.009999665,
            -0.019970002,
            3.4965,
        ],
        [
            0.47915015,
            -1.2275933,
            1.9760782,
            0.009421802,
            -0.01009995,
            3.485654,
        ],
        [
            0.46889982,
            -1.2165945,
            1.9643328,
            0.012724713,
            -0.00031939987,
            3.4744785,
        ],
        [
            0.45870852,
            -1.2056317,
            1.9526159,
            0.012125759,
            0.009398971,
            3.4627137,
        ],
        [
            0.44854692,
            -1.1947232,
            1.9409614,
            0.014090359,
            0.019092046,
            3.450613,
        ],
    ];
    const P1_AFTER: [[f32; 3]; 5] = [
        [1.009, -1.998, 0.23975001],
        [1.0173838, -1.9960021, 0.23011734],
        [1.0252442, -1.9940062, 0.2210095],
        [1.0326514, -1.9920121, 0.21235609],
        [1.0396585, -1.9900202, 0.20410398],
    ];

    fn golden_cfg() -> AdamWConfig {
        AdamWConfig {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-6,
            weight_decay: 0.1,
        }
    }

    fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let tol = rel * w.abs().max(f32::MIN_POSITIVE);
            assert!(
                (g - w).abs() <= tol,
                "{what}[{i}]: got {g:e}, want {w:e} (diff {:e})",
                (g - w).abs()
            );
        }
    }

    fn golden_step(opt: &mut AdamW, p0: &mut [f32], p1: &mut [f32], s: usize) {
        opt.step(&mut [p0, p1], &[&G0[s], &G1[s]], 1e-2).unwrap();
    }

    #[test]
    fn adamw_matches_pytorch() {
        let mut opt = AdamW::new(golden_cfg(), &[6, 3]).unwrap();
        let (mut p0, mut p1) = (P0_INIT, P1_INIT);
        for s in 0..5 {
            golden_step(&mut opt, &mut p0, &mut p1, s);
            assert_close(&p0, &P0_AFTER[s], 1e-6, &format!("step {s} p0"));
            assert_close(&p1, &P1_AFTER[s], 1e-6, &format!("step {s} p1"));
        }
        assert_eq!(opt.steps_taken(), 5);
    }

    #[test]
    fn adamw_default_config_is_pytorch_default() {
        let cfg = AdamWConfig::default();
        assert_eq!(
            (cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay),
            (1e-3, 0.9, 0.999, 1e-8, 0.01)
        );
        let parsed: AdamWConfig = serde_json::from_str(r#"{"lr": 2e-4}"#).unwrap();
        assert_eq!(parsed.lr, 2e-4);
        assert_eq!(parsed.beta2, 0.999);
    }

    #[test]
    fn adamw_serde_round_trip_resumes_identically() {
        let mut opt = AdamW::new(golden_cfg(), &[6, 3]).unwrap();
        let (mut p0, mut p1) = (P0_INIT, P1_INIT);
        for s in 0..2 {
            golden_step(&mut opt, &mut p0, &mut p1, s);
        }
        let json = serde_json::to_string(&opt).unwrap();
        let mut resumed: AdamW = serde_json::from_str(&json).unwrap();
        assert_eq!(resumed, opt);
        assert_eq!(resumed.steps_taken(), 2);
        assert_eq!(resumed.sizes(), vec![6, 3]);
        let (mut q0, mut q1) = (p0, p1);
        for s in 2..5 {
            golden_step(&mut opt, &mut p0, &mut p1, s);
            golden_step(&mut resumed, &mut q0, &mut q1, s);
        }
        assert_eq!(p0.map(f32::to_bits), q0.map(f32::to_bits));
        assert_eq!(p1.map(f32::to_bits), q1.map(f32::to_bits));
        assert_eq!(resumed, opt);
    }

    #[test]
    fn adamw_rejects_bad_input_without_mutating() {
        assert!(
            AdamW::new(
                AdamWConfig {
                    beta1: 1.0,
                    ..golden_cfg()
                },
                &[1]
            )
            .is_err()
        );
        assert!(
            AdamW::new(
                AdamWConfig {
                    eps: -1.0,
                    ..golden_cfg()
                },
                &[1]
            )
            .is_err()
        );
        let mut opt = AdamW::new(golden_cfg(), &[2, 1]).unwrap();
        let before = opt.clone();
        let (mut a, mut b) = ([1.0f32, 2.0], [3.0f32]);
        let err = opt
            .step(&mut [&mut a, &mut b], &[&[0.1, 0.2], &[0.3, 0.4]], 1e-3)
            .unwrap_err();
        assert!(err.to_string().contains("tensor 1"), "{err}");
        assert!(opt.step(&mut [&mut a], &[&[0.1, 0.2]], 1e-3).is_err());
        assert!(
            opt.step(&mut [&mut a, &mut b], &[&[0.1, 0.2], &[0.3]], f32::NAN)
                .is_err()
        );
        assert_eq!(opt, before);
        assert_eq!((a, b), ([1.0, 2.0], [3.0]));
    }

    #[test]
    fn clip_grad_norm_matches_pytorch() {
        let total_want = 5.618051;
        let mut a = [3.0f32, -4.0, 0.5, 1.5];
        let mut b = [-2.0f32, 0.25];
        let total = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert_close(&[total], &[total_want], 1e-7, "total");
        assert_close(
            &a,
            &[0.5339929, -0.71199054, 0.08899882, 0.26699644],
            1e-6,
            "clipped a",
        );
        assert_close(&b, &[-0.35599527, 0.04449941], 1e-6, "clipped b");

        let mut a = [3.0f32, -4.0, 0.5, 1.5];
        let mut b = [-2.0f32, 0.25];
        let total = clip_grad_norm(&mut [&mut a, &mut b], 100.0);
        assert_close(&[total], &[total_want], 1e-7, "total");
        assert_eq!((a, b), ([3.0, -4.0, 0.5, 1.5], [-2.0, 0.25]));
    }

    #[test]
    fn schedules_match_transformers() {
        let golden: [(Schedule, [f64; 11]); 4] = [
            (Schedule::Constant, [1.0; 11]),
            (
                Schedule::ConstantWithWarmup,
                [
                    0.0,
                    0.333_333_333_333_333_3,
                    0.666_666_666_666_666_6,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                ],
            ),
            (
                Schedule::Linear,
                [
                    0.0,
                    0.333_333_333_333_333_3,
                    0.666_666_666_666_666_6,
                    1.0,
                    0.857_142_857_142_857_1,
                    0.714_285_714_285_714_3,
                    0.571_428_571_428_571_4,
                    0.428_571_428_571_428_55,
                    0.285_714_285_714_285_7,
                    0.142_857_142_857_142_85,
                    0.0,
                ],
            ),
            (
                Schedule::Cosine,
                [
                    0.0,
                    0.333_333_333_333_333_3,
                    0.666_666_666_666_666_6,
                    1.0,
                    0.950_484_433_951_209_5,
                    0.811_744_900_929_366_8,
                    0.611_260_466_978_157_2,
                    0.388_739_533_021_842_83,
                    0.188_255_099_070_633_26,
                    0.049_515_566_048_790_48,
                    0.0,
                ],
            ),
        ];
        for (sched, want) in golden {
            for (step, &w) in want.iter().enumerate() {
                let got = sched.lr_factor(step, 3, 10);
                assert_eq!(got, w as f32, "{sched} step {step}");
            }
        }
        // Beyond the end: linear clamps at 0, cosine follows the curve back up.
        assert_eq!(Schedule::Linear.lr_factor(12, 3, 10), 0.0);
        assert!(Schedule::Cosine.lr_factor(12, 3, 10) > 0.0);
        // Constant ignores warmup; zero warmup starts at full rate.
        assert_eq!(Schedule::Constant.lr_factor(0, 3, 10), 1.0);
        assert_eq!(Schedule::Linear.lr_factor(0, 0, 10), 1.0);
    }

    #[test]
    fn warmup_steps_matches_training_arguments() {
        assert_eq!(warmup_steps(0.1, 30), 3);
        assert_eq!(warmup_steps(0.25, 10), 3);
        assert_eq!(warmup_steps(0.3, 7), 3);
        assert_eq!(warmup_steps(0.0, 100), 0);
        assert_eq!(warmup_steps(-0.5, 100), 0);
        assert_eq!(warmup_steps(f32::NAN, 100), 0);
    }

    #[test]
    fn schedule_names_parse_and_serialize() {
        for sched in Schedule::ALL {
            assert_eq!(sched.name().parse::<Schedule>(), Ok(sched));
            let json = serde_json::to_string(&sched).unwrap();
            assert_eq!(json, format!("\"{}\"", sched.name()));
            assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), sched);
        }
        let err = "cosine_with_restarts".parse::<Schedule>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown LR schedule `cosine_with_restarts`; valid schedules: \
             constant, constant_with_warmup, linear, cosine"
        );
        assert!("Linear".parse::<Schedule>().is_err());
        assert!(serde_json::from_str::<Schedule>("\"warmup\"").is_err());
    }
}
