//! `ditto sft`: train a LoRA adapter on demonstrations (the SFT stage) and write it in
//! PEFT format with a metrics log.

use super::{Globals, ModelArgs};
use crate::data::read_demos;
use crate::model::lora::Adapter;
use crate::train::optim::Schedule;
use crate::train::sft::{self, SftConfig};
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SftArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Demonstrations, JSONL: {"prompt": …, "demonstration": …} per line.
    #[arg(long)]
    demos: PathBuf,
    /// Output directory (adapter, metrics.jsonl, sft_config.json).
    #[arg(long)]
    out: PathBuf,
    /// Replace an adapter already in --out.
    #[arg(long)]
    overwrite: bool,
    #[arg(long, default_value_t = 16)]
    r: usize,
    #[arg(long, default_value_t = 32.0)]
    alpha: f32,
    #[arg(long, default_value_t = 0.05)]
    dropout: f32,
    /// Adapted projections (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj"
    )]
    targets: Vec<String>,
    #[arg(long, default_value_t = 3e-5)]
    lr: f64,
    /// constant, constant_with_warmup, linear or cosine.
    #[arg(long, default_value = "cosine")]
    schedule: Schedule,
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f32,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 30)]
    max_steps: usize,
    /// Stop after the first step whose batch loss is below this.
    #[arg(long, default_value_t = 1.0)]
    stop_loss: f32,
    /// Also put the loss on prompt tokens.
    #[arg(long)]
    prompt_loss: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(g: &Globals, a: SftArgs) -> Result<()> {
    let cfg = SftConfig {
        r: a.r,
        alpha: a.alpha,
        dropout: a.dropout,
        targets: a.targets.clone(),
        lr: a.lr,
        schedule: a.schedule,
        warmup_ratio: a.warmup_ratio,
        weight_decay: a.weight_decay,
        max_grad_norm: a.max_grad_norm,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        max_steps: a.max_steps,
        stop_loss: a.stop_loss,
        prompt_loss: a.prompt_loss,
        seed: a.seed,
    };
    cfg.lora()?;
    let demos = read_demos(&a.demos)?;
    if a.out.join(crate::model::peft::WEIGHTS_FILE).exists() && !a.overwrite {
        bail!(
            "{} already holds an adapter; pass --overwrite to replace it",
            a.out.display()
        );
    }
    let model = g.load_model(&a.model)?;
    let seqs = sft::encode_demos(&model, &demos)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    crate::atomic::write(
        &a.out.join("sft_config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    let metrics = a.out.join("metrics.jsonl");
    if metrics.exists() {
        std::fs::remove_file(&metrics)
            .with_context(|| format!("cannot replace {}", metrics.display()))?;
    }
    let base = Adapter::init(cfg.lora()?, &model.config, cfg.seed)?;
    let before = sft::mean_logprob(&model, &base, &seqs)?;
    eprintln!(
        "ditto sft: {} demonstrations ({} tokens), base model mean log-prob per response token {before:.4}",
        seqs.len(),
        seqs.iter().map(|s| s.ids.len()).sum::<usize>()
    );
    let bar = ProgressBar::new(cfg.max_steps as u64);
    bar.set_style(
        ProgressStyle::with_template("sft [{bar:30}] {pos}/{len} {msg} ({per_sec}, ETA {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let out = sft::train(&model, &seqs, &cfg, |log| {
        bar.set_message(format!("loss {:.4}", log.loss));
        bar.inc(1);
        sft::append_jsonl(&metrics, log)
    })?;
    bar.finish();
    let after = sft::mean_logprob(&model, &out.adapter, &seqs)?;
    let name = model
        .source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.adapter.save(&a.out, &name)?;
    let last = out.steps.last().expect("at least one step");
    eprintln!(
        "ditto sft: {} steps{}, final batch loss {:.4}; mean log-prob per response token {before:.4} → {after:.4}; adapter in {}",
        out.steps.len(),
        if out.stopped_early {
            " (stopped early: loss below the threshold)"
        } else {
            ""
        },
        last.loss,
        a.out.display()
    );
    Ok(())
}
