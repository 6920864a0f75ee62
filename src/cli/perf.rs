//! `ditto perf`: tokens/s and peak RSS on the fixed shapes the PyTorch peer measures
//! (`shared/peers/python/bench.py`): a no-grad forward over 4 × 256 tokens, a LoRA
//! training step over 4 × 256 tokens, and sampling of exactly 128 new tokens after a
//! chat prompt at batch 1 and 16.

use super::generate::messages;
use super::{Globals, ModelArgs};
use crate::model::Model;
use crate::model::lora::{Adapter, LoraConfig};
use crate::model::transformer::{KvCache, Logits, Matmul, Workspace};
use crate::model::weights::Proj;
use crate::sample::{self, GenerateOptions, SamplingParams};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::pass::{self, Example};
use crate::train::sft;
use anyhow::{Result, bail};
use clap::Args;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct PerfArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Shapes to run: forward, generate1, generate16 (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "forward,generate1,generate16"
    )]
    only: Vec<String>,
    /// Timed repetitions per shape.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Print one JSON object per shape.
    #[arg(long)]
    json: bool,
}

/// Peak resident memory since the last reset, in MiB (Linux; 0 elsewhere).
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Reset the peak-RSS counter so each shape reports its own peak (Linux).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn timed(steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    (0..steps)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// `batch` sequences of `seq` random token ids (fixed seed), as the peer's benchmark.
fn random_batch(model: &Model, batch: usize, seq: usize) -> Vec<Vec<u32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let vocab = model.config.vocab as u32;
    (0..batch)
        .map(|_| (0..seq).map(|_| rng.random_range(0..vocab)).collect())
        .collect()
}

fn forward_shape(model: &Model, steps: usize) -> Result<(Vec<f64>, usize)> {
    let (batch, seq) = (4usize, 256usize);
    let ids = random_batch(model, batch, seq);
    let mut cache = KvCache::new(model, batch, seq);
    let mut ws = Workspace::default();
    let times = timed(steps, || {
        for s in 0..batch {
            cache.clear(s);
        }
        let b: Vec<(usize, &[u32])> = ids.iter().enumerate().map(|(i, t)| (i, &t[..])).collect();
        model.forward(&mut ws, &mut cache, &b, Logits::All, Matmul::Gemm, None)?;
        Ok(())
    })?;
    Ok((times, batch * seq))
}

/// LoRA (r 16, α 32, q/k/v/o) forward + backward + AdamW over 4 × 256 random tokens
/// with the loss on every next token, as the peer's `lora` benchmark.
fn lora_shape(model: &Model, steps: usize) -> Result<(Vec<f64>, usize)> {
    let (batch, seq) = (4usize, 256usize);
    let ids = random_batch(model, batch, seq);
    let lora = LoraConfig {
        r: 16,
        alpha: 32.0,
        dropout: 0.0,
        targets: vec![Proj::Q, Proj::K, Proj::V, Proj::O],
    };
    let mut adapter = Adapter::init(lora, &model.config, 0)?;
    let sizes = adapter.param_sizes();
    let mut opt = AdamW::new(
        AdamWConfig {
            lr: 1e-4,
            ..AdamWConfig::default()
        },
        &sizes,
    )?;
    let times = timed(steps, || {
        let ex: Vec<Example> = ids
            .iter()
            .map(|t| Example {
                ids: t,
                label_from: 1,
            })
            .collect();
        let (lp, tape) = pass::forward(model, &adapter, &ex, None)?;
        let n: usize = lp.counts.iter().sum();
        let mut grads = pass::zero_grads(&adapter);
        pass::backward(
            model,
            &adapter,
            tape,
            &vec![-1.0 / n as f32; batch],
            &mut grads,
        )?;
        // No clipping, as the peer's step.
        sft::update(&mut adapter, &mut grads, &mut opt, f32::MAX, 1e-4)?;
        Ok(())
    })?;
    Ok((times, batch * seq))
}

fn generate_shape(model: &Model, batch: usize, steps: usize) -> Result<(Vec<f64>, usize, usize)> {
    let prompt = model.chat_prompt(&messages(
        None,
        &[],
        "Write a two-sentence email inviting my lab to ice cream.",
    ))?;
    let new = 128;
    let prompts = vec![prompt.clone(); batch];
    let mut seed = 0;
    let times = timed(steps, || {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: new,
            min_new_tokens: new,
            seed,
        };
        seed += 1;
        let opts = GenerateOptions {
            n: 1,
            max_batch: batch,
            ..GenerateOptions::default()
        };
        let out = sample::generate(model, &prompts, &params, opts)?;
        if out.iter().any(|s| s.ids.len() != new) {
            bail!("a sample did not produce exactly {new} tokens");
        }
        Ok(())
    })?;
    Ok((times, batch * new, prompt.len()))
}

pub fn run(g: &Globals, a: PerfArgs, threads: usize) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let t = Instant::now();
    let model = g.load_model(&a.model)?;
    let load_s = t.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mib();
    for shape in &a.only {
        reset_peak_rss();
        let (mode, batch, times, tokens, extra) = match shape.as_str() {
            "forward" => {
                let (t, n) = forward_shape(&model, a.steps)?;
                ("forward", 4, t, n, json!({"seq": 256}))
            }
            "lora" => {
                let (t, n) = lora_shape(&model, a.steps)?;
                (
                    "lora",
                    4,
                    t,
                    n,
                    json!({"seq": 256, "r": 16, "includes": "forward+backward+adamw"}),
                )
            }
            "generate1" | "generate16" => {
                let b = if shape == "generate1" { 1 } else { 16 };
                let (t, n, p) = generate_shape(&model, b, a.steps)?;
                (
                    "generate",
                    b,
                    t,
                    n,
                    json!({"prompt_tokens": p, "new_tokens": 128}),
                )
            }
            other => bail!("unknown shape {other:?} (forward, lora, generate1, generate16)"),
        };
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let tps = tokens as f64 / mean;
        let mut rec = json!({
            "mode": mode,
            "batch": batch,
            "threads": threads,
            "steps": times.len(),
            "step_s": times.iter().map(|t| (t * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            "mean_step_s": (mean * 1000.0).round() / 1000.0,
            "tokens_per_step": tokens,
            "tokens_per_s": (tps * 10.0).round() / 10.0,
            "peak_rss_mib": peak_rss_mib(),
            "rss_after_load_mib": rss_after_load,
            "load_s": (load_s * 100.0).round() / 100.0,
        });
        if let (Some(r), Some(e)) = (rec.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        if a.json {
            println!("{rec}");
        } else {
            println!(
                "{mode:>8} batch {batch:>2}: {tps:>8.1} tokens/s  ({mean:.3} s/step, peak RSS {} MiB)",
                rec["peak_rss_mib"]
            );
        }
    }
    Ok(())
}
