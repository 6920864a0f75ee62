//! The SFT stage (DESIGN §1 step 2): LoRA training on the demonstrations with the
//! language-model loss on response tokens, AdamW, a warmup schedule, and the early
//! stop once a batch's loss falls below a threshold.

use super::format::{Encoded, encode_demo};
use super::optim::{AdamW, AdamWConfig, Schedule, clip_grad_norm, warmup_steps};
use super::pass::{self, Dropout, Example};
use crate::data::Demos;
use crate::model::Model;
use crate::model::lora::{Adapter, LoraConfig};
use crate::model::weights::Proj;
use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// SFT settings; defaults are the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    pub r: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Vec<String>,
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_ratio: f32,
    pub weight_decay: f64,
    pub max_grad_norm: f32,
    pub batch_size: usize,
    /// Micro-batches of `batch_size` per optimizer step.
    pub grad_accum: usize,
    pub max_steps: usize,
    /// Stop after the first step whose batch loss is below this.
    pub stop_loss: f32,
    /// Also train on the prompt tokens (as the reference code did).
    pub prompt_loss: bool,
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
            lr: 3e-5,
            schedule: Schedule::Cosine,
            warmup_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            batch_size: 4,
            grad_accum: 1,
            max_steps: 30,
            stop_loss: 1.0,
            prompt_loss: false,
            seed: 0,
        }
    }
}

impl SftConfig {
    pub fn lora(&self) -> Result<LoraConfig> {
        let targets = self
            .targets
            .iter()
            .map(|t| {
                Proj::ALL
                    .into_iter()
                    .find(|p| p.hf_name() == t.as_str())
                    .with_context(|| {
                        format!("unknown target module {t:?} (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        Ok(LoraConfig {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            targets,
        })
    }
}

/// One step's record in `metrics.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    pub stage: &'static str,
    pub step: usize,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens: usize,
    pub seconds: f64,
}

/// The result of [`train`].
pub struct SftOutcome {
    pub adapter: Adapter,
    pub steps: Vec<StepLog>,
    pub stopped_early: bool,
}

/// Tokenize the demonstrations, refusing any that do not fit the context.
pub fn encode_demos(model: &Model, demos: &Demos) -> Result<Vec<Encoded>> {
    let encoded = demos
        .items
        .iter()
        .map(|d| {
            encode_demo(model, d).with_context(|| format!("{}:{}", demos.path.display(), d.line))
        })
        .collect::<Result<Vec<_>>>()?;
    let lens: std::collections::HashMap<usize, usize> = demos
        .items
        .iter()
        .zip(&encoded)
        .map(|(d, e)| (d.line, e.ids.len()))
        .collect();
    demos.check_lengths(|d| lens[&d.line], model.context_len())?;
    Ok(encoded)
}

/// Mean log-probability per label token of `seqs` under `adapter` (no gradients).
pub fn mean_logprob(model: &Model, adapter: &Adapter, seqs: &[Encoded]) -> Result<f64> {
    let ex: Vec<Example> = seqs
        .iter()
        .map(|e| Example {
            ids: &e.ids,
            label_from: e.label_from,
        })
        .collect();
    let lp = pass::logprobs_chunked(model, adapter, &ex)?;
    Ok(lp.sums.iter().sum::<f64>() / lp.counts.iter().sum::<usize>().max(1) as f64)
}

/// Train an adapter on `seqs`. `on_step` sees every step (progress, logging).
pub fn train(
    model: &Model,
    seqs: &[Encoded],
    cfg: &SftConfig,
    mut on_step: impl FnMut(&StepLog) -> Result<()>,
) -> Result<SftOutcome> {
    if seqs.is_empty() {
        bail!("no demonstrations to train on");
    }
    if cfg.batch_size == 0 || cfg.max_steps == 0 || cfg.grad_accum == 0 {
        bail!("batch size, gradient accumulation and max steps must be at least 1");
    }
    let mut adapter = Adapter::init(cfg.lora()?, &model.config, cfg.seed)?;
    let sizes = adapter.param_sizes();
    let mut opt = AdamW::new(
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
        &sizes,
    )?;
    let warmup = warmup_steps(cfg.warmup_ratio, cfg.max_steps);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = Vec::new();
    let mut steps = Vec::new();
    let start = Instant::now();
    for step in 0..cfg.max_steps {
        // `grad_accum` micro-batches; the loss is the mean of their mean token losses
        // (as the Hugging Face Trainer averages), and gradients add up in `grads`.
        let mut grads = pass::zero_grads(&adapter);
        let mut loss = 0.0;
        let mut tokens = 0;
        for micro in 0..cfg.grad_accum {
            let mut batch = Vec::with_capacity(cfg.batch_size);
            while batch.len() < cfg.batch_size.min(seqs.len()) {
                if order.is_empty() {
                    order = (0..seqs.len()).collect();
                    order.shuffle(&mut rng);
                }
                batch.push(order.pop().expect("refilled"));
            }
            let ex: Vec<Example> = batch
                .iter()
                .map(|&i| Example {
                    ids: &seqs[i].ids,
                    label_from: if cfg.prompt_loss {
                        1
                    } else {
                        seqs[i].label_from
                    },
                })
                .collect();
            let dropout = Some(Dropout {
                p: cfg.dropout,
                seed: crate::sample::sample_seed(cfg.seed, step, 1 + micro),
            });
            let (lp, tape) = pass::forward(model, &adapter, &ex, dropout)?;
            let n: usize = lp.counts.iter().sum();
            let weight = 1.0 / (n as f64 * cfg.grad_accum as f64);
            loss -= lp.sums.iter().sum::<f64>() * weight;
            tokens += n;
            pass::backward(
                model,
                &adapter,
                tape,
                &vec![-weight as f32; ex.len()],
                &mut grads,
            )?;
        }
        let lr = (cfg.lr * cfg.schedule.lr_factor(step, warmup, cfg.max_steps) as f64) as f32;
        let grad_norm = update(&mut adapter, &mut grads, &mut opt, cfg.max_grad_norm, lr)
            .with_context(|| format!("step {step} (loss {loss})"))?;
        let log = StepLog {
            stage: "sft",
            step,
            loss,
            lr,
            grad_norm,
            tokens,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_step(&log)?;
        steps.push(log);
        if loss < cfg.stop_loss as f64 {
            return Ok(SftOutcome {
                adapter,
                steps,
                stopped_early: true,
            });
        }
    }
    Ok(SftOutcome {
        adapter,
        steps,
        stopped_early: false,
    })
}

/// Every A and B of an adapter as flat slices, in a fixed order (optimizer parameters).
pub fn param_slices(adapter: &mut Adapter) -> Vec<&mut [f32]> {
    adapter
        .iter_mut()
        .flat_map(|p| [&mut p.a[..], &mut p.b[..]])
        .collect()
}

/// One optimizer update of `adapter` from `grads` (shaped like it): clip the global
/// gradient norm to `max_grad_norm`, then an AdamW step at `lr`. Returns the norm before
/// clipping; a non-finite gradient is an error and leaves the adapter unchanged.
pub fn update(
    adapter: &mut Adapter,
    grads: &mut Adapter,
    opt: &mut AdamW,
    max_grad_norm: f32,
    lr: f32,
) -> Result<f32> {
    let mut g = param_slices(grads);
    let norm = clip_grad_norm(&mut g, max_grad_norm);
    if !norm.is_finite() {
        bail!("the gradient is not finite");
    }
    let g: Vec<&[f32]> = g.into_iter().map(|s| &*s).collect();
    opt.step(&mut param_slices(adapter), &g, lr)?;
    Ok(norm)
}

/// Append one JSON line to `metrics.jsonl`-style logs.
pub fn append_jsonl(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
