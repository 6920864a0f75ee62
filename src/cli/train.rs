//! `ditto train`: the full DITTO run (SFT, then rounds of preference training) into a
//! run directory, with resume, presets, a TOML config, and an optional side-by-side
//! of the base and personalized models on unseen prompts.

use super::generate::sample_text;
use super::{Globals, ModelArgs};
use crate::data::read_demos;
use crate::model::Model;
use crate::model::lora::Adapter;
use crate::sample::{self, GenerateOptions, SamplingParams};
use crate::train::ditto::{self, Event, RunDir, RunInput, TrainConfig, Variant};
use crate::train::format::prompt_messages;
use crate::train::sft;
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Demonstrations, JSONL: {"prompt": …, "demonstration": …} per line.
    #[arg(long)]
    demos: PathBuf,
    /// Run directory.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
    /// ditto or spin.
    #[arg(long)]
    mode: Option<String>,
    /// Ablation: no replay pairs.
    #[arg(long)]
    no_replay: bool,
    /// Ablation: no inter-policy pairs.
    #[arg(long)]
    no_inter_policy: bool,
    /// Ablation: sample all negatives once, before the first step.
    #[arg(long)]
    upfront: bool,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    resume: bool,
    /// Replace a finished run in --out.
    #[arg(long)]
    overwrite: bool,
    /// After training, print the base and the personalized reply to this prompt.
    #[arg(long)]
    compare: Vec<String>,
}

/// Where a run's settings come from: a preset, a TOML file on top, `--set` on top.
#[derive(Args, Clone, Debug)]
pub struct ConfigArgs {
    /// TOML file with [sft] and [ditto] tables (on top of the preset).
    #[arg(long)]
    config: Option<PathBuf>,
    /// paper or cpu (default: cpu for models under 1B parameters, else paper).
    #[arg(long)]
    preset: Option<String>,
    /// Override any config value, e.g. --set ditto.lr=1e-4 --set sft.max_steps=10.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Apply `key=value` overrides to the config through its TOML form.
fn apply_overrides(cfg: &TrainConfig, sets: &[String]) -> Result<TrainConfig> {
    let mut doc: toml::Table = toml::from_str(&toml::to_string(cfg)?)?;
    for s in sets {
        let (key, value) = s
            .split_once('=')
            .with_context(|| format!("--set {s:?}: expected KEY=VALUE"))?;
        let (table, field) = key
            .split_once('.')
            .with_context(|| format!("--set {key:?}: expected sft.<field> or ditto.<field>"))?;
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .map(|mut t| t.remove("v").expect("parsed key"))
            .or_else(|_| Ok::<_, anyhow::Error>(toml::Value::String(value.to_owned())))?;
        let t = doc
            .get_mut(table)
            .and_then(|t| t.as_table_mut())
            .with_context(|| format!("--set {key:?}: unknown table {table:?} (sft, ditto)"))?;
        let (field, sub) = match field.split_once('.') {
            Some((f, s)) => (f, Some(s)),
            None => (field, None),
        };
        match sub {
            None => {
                t.insert(field.to_owned(), parsed);
            }
            Some(sub) => {
                let inner = t
                    .get_mut(field)
                    .and_then(|v| v.as_table_mut())
                    .with_context(|| format!("--set {key:?}: {field:?} is not a table"))?;
                inner.insert(sub.to_owned(), parsed);
            }
        }
    }
    toml::Value::Table(doc)
        .try_into()
        .map_err(|e| anyhow::anyhow!("invalid --set value: {e}"))
}

impl ConfigArgs {
    /// The preset (chosen by model size unless named), the TOML file, then `--set`.
    pub fn resolve(&self, model: &Model) -> Result<TrainConfig> {
        let params = model.config.layers * 12 * model.config.hidden * model.config.hidden;
        let preset = self.preset.clone().unwrap_or_else(|| {
            if params < 1_000_000_000 {
                "cpu"
            } else {
                "paper"
            }
            .to_owned()
        });
        let mut cfg = TrainConfig::preset(&preset)?;
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut doc: toml::Table = toml::from_str(&toml::to_string(&cfg)?)?;
            let user: toml::Table = toml::from_str(&text)
                .with_context(|| format!("{}: invalid TOML", path.display()))?;
            for (k, v) in user {
                match (doc.get_mut(&k).and_then(|t| t.as_table_mut()), v) {
                    (Some(t), toml::Value::Table(u)) => t.extend(u),
                    _ => bail!("{}: unknown table [{k}] (sft, ditto)", path.display()),
                }
            }
            cfg = toml::Value::Table(doc)
                .try_into()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        let cfg = apply_overrides(&cfg, &self.set)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

fn resolve_config(a: &TrainArgs, model: &Model) -> Result<TrainConfig> {
    let mut cfg = a.config.resolve(model)?;
    if let Some(m) = &a.mode {
        cfg = apply_overrides(&cfg, &[format!("ditto.mode=\"{m}\"")])?;
    }
    let ablations = [
        (a.no_replay, Variant::NoReplay),
        (a.no_inter_policy, Variant::NoInterPolicy),
        (a.upfront, Variant::Upfront),
    ];
    for (on, v) in ablations {
        if on {
            v.apply(&mut cfg.ditto);
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(g: &Globals, a: TrainArgs) -> Result<()> {
    let demos = read_demos(&a.demos)?;
    let dir = RunDir {
        root: a.out.clone(),
    };
    if dir.summary().exists() && !a.overwrite {
        bail!(
            "{} holds a finished run; pass --overwrite to replace it",
            a.out.display()
        );
    }
    let in_progress = a.out.join("checkpoint").exists() || dir.sft().exists();
    if in_progress && !a.resume && !a.overwrite {
        bail!(
            "{} holds an unfinished run; pass --resume to continue it or --overwrite to start over",
            a.out.display()
        );
    }
    if a.overwrite {
        dir.clear()?;
    }
    let mut model = g.load_model(&a.model)?;
    let cfg = if a.resume && dir.config().exists() {
        let text = std::fs::read_to_string(dir.config())?;
        toml::from_str(&text)
            .with_context(|| format!("{}: invalid config", dir.config().display()))?
    } else {
        resolve_config(&a, &model)?
    };
    let seqs = sft::encode_demos(&model, &demos)?;
    let base_name = model
        .source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let total = cfg.sft.max_steps + cfg.ditto.steps;
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix("sft");
    let t0 = Instant::now();
    let mut sft_s = None;
    let mut samples_rate = 0.0;
    let input = RunInput {
        demos: &seqs,
        config: &cfg,
        dir: &a.out,
        base_model: &base_name,
        stop_after: None,
    };
    let result = ditto::run(&mut model, &input, |ev| {
        match ev {
            Event::Sft(l) => {
                bar.inc(1);
                bar.set_message(format!("step {} loss {:.3}", l.step, l.loss));
            }
            Event::Round(r) => {
                if sft_s.is_none() {
                    sft_s = Some(t0.elapsed().as_secs_f64());
                    bar.set_position(cfg.sft.max_steps as u64);
                }
                samples_rate = r.samples_per_s;
                bar.set_prefix(format!("ditto round {}", r.round));
            }
            Event::Step(l) => {
                bar.set_position((cfg.sft.max_steps + l.step + 1) as u64);
                bar.set_message(format!(
                    "step {} loss {:.3} margin {:.3} ({samples_rate:.1} samples/s)",
                    l.step, l.loss, l.reward_margin
                ));
            }
        }
        Ok(())
    })?;
    bar.finish();
    let policy = result.context("the run stopped before its last step")?;
    let total_s = t0.elapsed().as_secs_f64();
    let sft_adapter = Adapter::load(&dir.sft(), &model.config)?;
    let base = Adapter::init(cfg.sft.lora()?, &model.config, 0)?;
    let demo_lp = |ad: &Adapter| sft::mean_logprob(&model, ad, &seqs);
    let summary = serde_json::json!({
        "demonstrations": seqs.len(),
        "wall_seconds": {"total": total_s, "sft_and_setup": sft_s},
        "demo_logprob_per_token": {"base": demo_lp(&base)?, "sft": demo_lp(&sft_adapter)?, "final": demo_lp(&policy)?},
        "final_adapter": dir.final_adapter(),
        "sft_adapter": dir.sft(),
    });
    crate::atomic::write(
        &dir.summary(),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    eprintln!(
        "ditto train: done in {total_s:.0} s; adapter in {}",
        dir.final_adapter().display()
    );
    eprintln!("{summary:#}");
    if !a.compare.is_empty() {
        compare(&mut model, &policy, &a.compare)?;
    }
    Ok(())
}

/// Print the base model's reply and the personalized one for each prompt.
fn compare(model: &mut Model, policy: &Adapter, prompts: &[String]) -> Result<()> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| model.chat_prompt(&prompt_messages(None, p)))
        .collect::<Result<_>>()?;
    let params = SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        max_new_tokens: 160,
        seed: 1,
        ..SamplingParams::default()
    };
    let before = sample::generate(model, &ids, &params, GenerateOptions::default())?;
    let after = model.with_merged(policy, |m| {
        sample::generate(m, &ids, &params, GenerateOptions::default())?
            .iter()
            .map(|x| sample_text(m, x))
            .collect::<Result<Vec<_>>>()
    })?;
    for ((p, b), a) in prompts.iter().zip(&before).zip(&after) {
        println!(
            "\n=== prompt: {p}\n--- base model:\n{}\n--- personalized:\n{a}",
            sample_text(model, b)?
        );
    }
    Ok(())
}
