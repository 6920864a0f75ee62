//! The DITTO loop (DESIGN §1 step 3) and its variants: SFT → π₀; the policy starts as
//! the SFT adapter; the reference is the frozen SFT adapter (DITTO) or the policy at
//! the start of each round (SPIN); every K steps a sampling round; per step a draw of
//! expert / replay / inter-policy pairs and a DPO-family update. Writes a run
//! directory with metrics, every round's samples, adapters and checkpoints that make
//! `--resume` continue to the same final adapter.

use super::format::Encoded;
use super::loss::{LossKind, PairLogps, preference_loss};
use super::optim::{AdamW, AdamWConfig, Schedule, warmup_steps};
use super::pairs::{self, Kind, Mix, Pair, SampleInfo, Side};
use super::pass::{self, Example};
use super::sft::{self, SftConfig, StepLog};
use crate::model::Model;
use crate::model::lora::Adapter;
use crate::sample::{self, FinishReason, GenerateOptions, SamplingParams};
use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which reference the preference loss uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Reference = the frozen SFT adapter for the whole run.
    Ditto,
    /// Reference reset to the current policy at each round; expert pairs only.
    Spin,
}

/// The preference-stage methods the paper compares: DITTO, SPIN and DITTO's ablations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Ditto,
    Spin,
    /// No replay pairs (earlier rounds' samples as rejected).
    NoReplay,
    /// No inter-policy pairs (later samples preferred over earlier ones).
    NoInterPolicy,
    /// Every round's negatives sampled once, before the first step.
    Upfront,
}

impl Variant {
    /// Turn `d` into this variant's settings.
    pub fn apply(self, d: &mut DittoConfig) {
        match self {
            Variant::Ditto => d.mode = Mode::Ditto,
            Variant::Spin => d.mode = Mode::Spin,
            Variant::NoReplay => d.mix.replay = 0.0,
            Variant::NoInterPolicy => d.mix.inter_policy = 0.0,
            Variant::Upfront => d.upfront = true,
        }
    }
}

/// Settings of the preference stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DittoConfig {
    pub mode: Mode,
    /// Optimizer steps (S).
    pub steps: usize,
    /// A sampling round every this many steps (K).
    pub round_every: usize,
    /// Samples per demonstration prompt per round (M).
    pub samples_per_prompt: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub beta: f64,
    pub loss: LossKind,
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_ratio: f32,
    pub weight_decay: f64,
    pub max_grad_norm: f32,
    pub mix: Mix,
    /// Ablation: sample every round's negatives once, before the first step.
    pub upfront: bool,
    pub seed: u64,
}

impl Default for DittoConfig {
    fn default() -> Self {
        DittoConfig {
            mode: Mode::Ditto,
            steps: 40,
            round_every: 10,
            samples_per_prompt: 10,
            max_new_tokens: 512,
            temperature: 1.0,
            beta: 0.05,
            loss: LossKind::Sigmoid,
            lr: 1e-6,
            schedule: Schedule::ConstantWithWarmup,
            warmup_ratio: 0.25,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            mix: Mix::default(),
            upfront: false,
            seed: 0,
        }
    }
}

/// The whole run's settings (the `[sft]` and `[ditto]` tables of a TOML file).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub sft: SftConfig,
    pub ditto: DittoConfig,
}

/// Names of the built-in presets.
pub const PRESETS: [&str; 2] = ["paper", "cpu"];

impl TrainConfig {
    /// `paper`: the paper's values (Mistral-7B). `cpu`: for a ~100M-parameter model on a
    /// laptop CPU — larger learning rates (a small model moves little at 3e-5 / 1e-6),
    /// fewer and shorter samples and smaller batches so a run takes minutes.
    pub fn preset(name: &str) -> Result<TrainConfig> {
        match name {
            "paper" => Ok(TrainConfig::default()),
            "cpu" => Ok(TrainConfig {
                sft: SftConfig {
                    lr: 1e-3,
                    dropout: 0.0,
                    max_steps: 20,
                    ..SftConfig::default()
                },
                ditto: DittoConfig {
                    steps: 8,
                    round_every: 4,
                    samples_per_prompt: 4,
                    max_new_tokens: 96,
                    // β from the validation sweep in bench/results/tune (0.5 ahead of
                    // 0.1 on both sets; lr 2e-4 against 5e-5 and 5e-4).
                    beta: 0.5,
                    lr: 2e-4,
                    mix: Mix {
                        multiplier: 1.0,
                        ..Mix::default()
                    },
                    ..DittoConfig::default()
                },
            }),
            other => bail!("unknown preset {other:?} (presets: {})", PRESETS.join(", ")),
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.sft.lora()?;
        let d = &self.ditto;
        d.mix.validate()?;
        if d.steps == 0 || d.round_every == 0 || d.samples_per_prompt == 0 || d.max_new_tokens == 0
        {
            bail!("ditto: steps, round_every, samples_per_prompt and max_new_tokens must be ≥ 1");
        }
        if d.upfront && d.mode == Mode::Spin {
            bail!("ditto: upfront sampling is an ablation of DITTO mode, not of SPIN");
        }
        if d.beta.is_nan() || d.beta <= 0.0 {
            bail!("ditto: beta must be positive, got {}", d.beta);
        }
        Ok(())
    }
}

/// One sampled completion, as kept in `rounds/round-<t>.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundSample {
    pub round: usize,
    pub prompt: usize,
    pub sample_index: usize,
    pub text: String,
    /// New token ids (ending with the stop token when `finish_reason` is `stop`).
    pub ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Summed log-prob of `ids` under the reference at the time of sampling.
    pub ref_logp: f64,
}

/// What `checkpoint/state.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    /// Steps completed.
    steps_done: usize,
    /// Rounds whose samples are in `rounds/`.
    rounds_done: usize,
    optimizer: AdamW,
}

/// One DITTO step's record in `metrics.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct DittoLog {
    pub stage: &'static str,
    pub step: usize,
    pub round: usize,
    pub loss: f64,
    pub reward_margin: f64,
    pub reward_accuracy: f64,
    pub chosen_logp: f64,
    pub rejected_logp: f64,
    pub pairs_expert: usize,
    pub pairs_replay: usize,
    pub pairs_inter_policy: usize,
    pub lr: f32,
    pub grad_norm: f32,
    pub seconds: f64,
}

/// One sampling round's record in `metrics.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct RoundLog {
    pub stage: &'static str,
    pub round: usize,
    pub samples: usize,
    pub mean_tokens: f64,
    pub finished_share: f64,
    pub seconds: f64,
    pub samples_per_s: f64,
}

/// Progress events for the caller's display.
pub enum Event<'a> {
    Sft(&'a StepLog),
    Round(&'a RoundLog),
    Step(&'a DittoLog),
}

/// Paths inside a run directory.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn sft(&self) -> PathBuf {
        self.root.join("sft")
    }
    pub fn final_adapter(&self) -> PathBuf {
        self.root.join("final")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    fn rounds(&self) -> PathBuf {
        self.root.join("rounds")
    }
    fn round_file(&self, t: usize) -> PathBuf {
        self.rounds().join(format!("round-{t}.jsonl"))
    }
    fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint")
    }
    fn state(&self) -> PathBuf {
        self.checkpoint().join("state.json")
    }
    fn policy_at(&self, step: usize) -> PathBuf {
        self.checkpoint().join(format!("policy-{step}"))
    }

    /// Remove what a run writes (and nothing else that may be in the directory).
    pub fn clear(&self) -> Result<()> {
        for f in [self.config(), self.metrics(), self.summary()] {
            if f.exists() {
                std::fs::remove_file(&f)
                    .with_context(|| format!("cannot remove {}", f.display()))?;
            }
        }
        for d in [
            self.sft(),
            self.final_adapter(),
            self.rounds(),
            self.checkpoint(),
        ] {
            if d.exists() {
                std::fs::remove_dir_all(&d)
                    .with_context(|| format!("cannot remove {}", d.display()))?;
            }
        }
        Ok(())
    }

    /// Drop metrics lines written after the checkpoint a resumed run continues from.
    fn trim_metrics(&self, state: &State) -> Result<()> {
        let path = self.metrics();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                match v["stage"].as_str() {
                    Some("ditto") => v["step"]
                        .as_u64()
                        .is_some_and(|s| (s as usize) < state.steps_done),
                    Some("round") => v["round"]
                        .as_u64()
                        .is_some_and(|r| (r as usize) < state.rounds_done),
                    _ => true,
                }
            })
            .collect();
        crate::atomic::write(&path, (kept.join("\n") + "\n").as_bytes())
    }
}

/// Everything a run needs besides the model.
pub struct RunInput<'a> {
    pub demos: &'a [Encoded],
    pub config: &'a TrainConfig,
    pub dir: &'a Path,
    /// Name recorded as `base_model_name_or_path` in saved adapters.
    pub base_model: &'a str,
    /// Stop (as if interrupted) once this many preference steps are done.
    pub stop_after: Option<usize>,
}

/// A sequence of the policy's training batch: a demo or a sample.
fn side_seq<'a>(
    side: Side,
    prompt: usize,
    demos: &'a [Encoded],
    samples: &'a [Full],
) -> (&'a [u32], usize) {
    match side {
        Side::Demo => (&demos[prompt].ids, demos[prompt].label_from),
        Side::Sample(i) => (&samples[i].ids, samples[i].label_from),
    }
}

/// A sample with its prompt, ready for scoring.
struct Full {
    ids: Vec<u32>,
    label_from: usize,
    ref_logp: f64,
}

fn score(model: &Model, adapter: &Adapter, seqs: &[(&[u32], usize)]) -> Result<Vec<f64>> {
    let ex: Vec<Example> = seqs
        .iter()
        .map(|&(ids, label_from)| Example { ids, label_from })
        .collect();
    Ok(pass::logprobs_chunked(model, adapter, &ex)?.sums)
}

/// Run (or resume) SFT and the preference stage; returns the final adapter.
pub fn run(
    model: &mut Model,
    input: &RunInput,
    mut on_event: impl FnMut(Event) -> Result<()>,
) -> Result<Option<Adapter>> {
    let cfg = input.config;
    cfg.validate()?;
    let dir = RunDir {
        root: input.dir.to_path_buf(),
    };
    let demos = input.demos;
    let n_prompts = demos.len();
    std::fs::create_dir_all(dir.rounds())
        .with_context(|| format!("cannot create {}", dir.rounds().display()))?;
    std::fs::create_dir_all(dir.checkpoint())?;
    crate::atomic::write(&dir.config(), toml::to_string(cfg)?.as_bytes())?;
    let start = Instant::now();

    // SFT (skipped when a finished SFT adapter is in the run directory).
    let sft_adapter = if dir.sft().join(crate::model::peft::WEIGHTS_FILE).exists() {
        Adapter::load(&dir.sft(), &model.config)?
    } else {
        let out = sft::train(model, demos, &cfg.sft, |log| {
            sft::append_jsonl(&dir.metrics(), log)?;
            on_event(Event::Sft(log))
        })?;
        out.adapter.save(&dir.sft(), input.base_model)?;
        out.adapter
    };

    let d = &cfg.ditto;
    let mix = match d.mode {
        Mode::Ditto => d.mix,
        Mode::Spin => Mix {
            expert: 1.0,
            replay: 0.0,
            inter_policy: 0.0,
            ..d.mix
        },
    };
    let rounds_total = d.steps.div_ceil(d.round_every);
    let (mut policy, mut state) = match read_state(&dir)? {
        Some(s) => {
            dir.trim_metrics(&s)?;
            (
                Adapter::load(&dir.policy_at(s.steps_done), &model.config)?,
                s,
            )
        }
        None => {
            let sizes = sft_adapter.param_sizes();
            let opt = AdamW::new(
                AdamWConfig {
                    lr: d.lr,
                    weight_decay: d.weight_decay,
                    ..AdamWConfig::default()
                },
                &sizes,
            )?;
            (
                sft_adapter.clone(),
                State {
                    steps_done: 0,
                    rounds_done: 0,
                    optimizer: opt,
                },
            )
        }
    };
    // The reference of the current round: the SFT adapter (DITTO) or the policy as it
    // was when the round began (SPIN, restored from that round's checkpoint).
    // (A run resumed on a round boundary resets it before its next step anyway.)
    let round_start = state.steps_done - state.steps_done % d.round_every;
    let mut reference = match d.mode {
        Mode::Spin if round_start > 0 && state.steps_done % d.round_every != 0 => {
            Adapter::load(&dir.policy_at(round_start), &model.config)
                .context("SPIN resume needs the policy checkpoint of the current round")?
        }
        _ => sft_adapter.clone(),
    };
    let demo_seqs: Vec<(&[u32], usize)> =
        demos.iter().map(|e| (&e.ids[..], e.label_from)).collect();
    let mut demo_ref = score(model, &reference, &demo_seqs)?;
    let mut samples: Vec<Full> = Vec::new();
    let mut infos: Vec<SampleInfo> = Vec::new();
    for t in 0..state.rounds_done {
        for s in read_round(&dir.round_file(t))? {
            push_sample(&mut samples, &mut infos, demos, &s);
        }
    }
    let warmup = warmup_steps(d.warmup_ratio, d.steps);
    for step in state.steps_done..d.steps {
        if input.stop_after.is_some_and(|s| step >= s) {
            return Ok(None);
        }
        let round = step / d.round_every;
        if d.mode == Mode::Spin && step % d.round_every == 0 {
            reference = policy.clone();
            demo_ref = score(model, &reference, &demo_seqs)?;
        }
        if step % d.round_every == 0 && round >= state.rounds_done && !(d.upfront && round > 0) {
            let per_prompt = if d.upfront {
                d.samples_per_prompt * rounds_total
            } else {
                d.samples_per_prompt
            };
            let t0 = Instant::now();
            let new = sample_round(model, &policy, &reference, demos, round, per_prompt, d)?;
            let secs = t0.elapsed().as_secs_f64();
            let lines: Vec<String> = new
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<_, _>>()?;
            crate::atomic::write(&dir.round_file(round), (lines.join("\n") + "\n").as_bytes())?;
            let log = RoundLog {
                stage: "round",
                round,
                samples: new.len(),
                mean_tokens: new.iter().map(|s| s.ids.len()).sum::<usize>() as f64
                    / new.len().max(1) as f64,
                finished_share: new
                    .iter()
                    .filter(|s| s.finish_reason == FinishReason::Stop)
                    .count() as f64
                    / new.len().max(1) as f64,
                seconds: secs,
                samples_per_s: new.len() as f64 / secs.max(1e-9),
            };
            sft::append_jsonl(&dir.metrics(), &log)?;
            on_event(Event::Round(&log))?;
            for s in &new {
                push_sample(&mut samples, &mut infos, demos, s);
            }
            state.rounds_done = round + 1;
        }
        let sample_round_of = if d.upfront { 0 } else { round };
        let cands = pairs::candidates(&infos, n_prompts, sample_round_of);
        let mut rng = ChaCha8Rng::seed_from_u64(sample::sample_seed(d.seed, step, 7));
        let drawn = pairs::draw(&cands, &mix, n_prompts, &mut rng);
        let log = preference_step(
            model,
            &mut policy,
            &mut state.optimizer,
            &drawn,
            demos,
            &samples,
            &demo_ref,
            step,
            round,
            warmup,
            d,
            start,
        )?;
        sft::append_jsonl(&dir.metrics(), &log)?;
        on_event(Event::Step(&log))?;
        state.steps_done = step + 1;
        save_checkpoint(&dir, &policy, &state, input.base_model, d)?;
    }
    policy.save(&dir.final_adapter(), input.base_model)?;
    Ok(Some(policy))
}

fn push_sample(
    samples: &mut Vec<Full>,
    infos: &mut Vec<SampleInfo>,
    demos: &[Encoded],
    s: &RoundSample,
) {
    let prompt = &demos[s.prompt];
    let mut ids = prompt.ids[..prompt.label_from].to_vec();
    ids.extend_from_slice(&s.ids);
    samples.push(Full {
        ids,
        label_from: prompt.label_from,
        ref_logp: s.ref_logp,
    });
    infos.push(SampleInfo {
        prompt: s.prompt,
        round: s.round,
    });
}

/// Sample `per_prompt` completions per demo prompt from the policy (merged into the
/// weights for speed) and score them under the reference.
fn sample_round(
    model: &mut Model,
    policy: &Adapter,
    reference: &Adapter,
    demos: &[Encoded],
    round: usize,
    per_prompt: usize,
    d: &DittoConfig,
) -> Result<Vec<RoundSample>> {
    let prompts: Vec<Vec<u32>> = demos
        .iter()
        .map(|e| e.ids[..e.label_from].to_vec())
        .collect();
    let params = SamplingParams {
        temperature: d.temperature,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: d.max_new_tokens,
        min_new_tokens: 0,
        seed: sample::sample_seed(d.seed, round, 11),
    };
    let opts = GenerateOptions {
        n: per_prompt,
        max_batch: 16,
        ..GenerateOptions::default()
    };
    let out = model.with_merged(policy, |m| sample::generate(m, &prompts, &params, opts))?;
    let fulls: Vec<(Vec<u32>, usize)> = out
        .iter()
        .map(|s| {
            let mut ids = prompts[s.prompt_index].clone();
            ids.extend_from_slice(&s.ids);
            (ids, prompts[s.prompt_index].len())
        })
        .collect();
    let seqs: Vec<(&[u32], usize)> = fulls.iter().map(|(ids, l)| (&ids[..], *l)).collect();
    let refs = score(model, reference, &seqs)?;
    out.into_iter()
        .zip(refs)
        .map(|(s, ref_logp)| {
            Ok(RoundSample {
                round,
                prompt: s.prompt_index,
                sample_index: s.sample_index,
                text: model.tokenizer.decode(s.reply_ids())?,
                ids: s.ids,
                finish_reason: s.finish,
                ref_logp,
            })
        })
        .collect()
}

/// One optimizer step over `drawn` pairs, one pair (chosen + rejected) at a time.
#[allow(clippy::too_many_arguments)]
fn preference_step(
    model: &Model,
    policy: &mut Adapter,
    opt: &mut AdamW,
    drawn: &[Pair],
    demos: &[Encoded],
    samples: &[Full],
    demo_ref: &[f64],
    step: usize,
    round: usize,
    warmup: usize,
    d: &DittoConfig,
    start: Instant,
) -> Result<DittoLog> {
    if drawn.is_empty() {
        bail!("step {step}: no preference pairs available");
    }
    let mut grads = pass::zero_grads(policy);
    let p = drawn.len() as f64;
    let (mut loss, mut margin, mut acc, mut lw, mut ll) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for pair in drawn {
        let (cw, lw_from) = side_seq(pair.chosen, pair.prompt, demos, samples);
        let (cl, ll_from) = side_seq(pair.rejected, pair.prompt, demos, samples);
        let ref_of = |side: Side| match side {
            Side::Demo => demo_ref[pair.prompt],
            Side::Sample(i) => samples[i].ref_logp,
        };
        let batch = [
            Example {
                ids: cw,
                label_from: lw_from,
            },
            Example {
                ids: cl,
                label_from: ll_from,
            },
        ];
        let (lp, tape) = pass::forward(model, policy, &batch, None)?;
        let inputs = PairLogps {
            policy_chosen: lp.sums[0],
            policy_rejected: lp.sums[1],
            ref_chosen: ref_of(pair.chosen),
            ref_rejected: ref_of(pair.rejected),
        };
        let (l, per) = preference_loss(d.loss, d.beta, &[inputs]);
        let g = &per[0];
        pass::backward(
            model,
            policy,
            tape,
            &[(g.d_chosen / p) as f32, (g.d_rejected / p) as f32],
            &mut grads,
        )?;
        loss += l / p;
        margin += (g.chosen_reward - g.rejected_reward) / p;
        acc += f64::from(u8::from(g.chosen_reward > g.rejected_reward));
        lw += lp.sums[0] / p;
        ll += lp.sums[1] / p;
    }
    let lr = (d.lr * d.schedule.lr_factor(step, warmup, d.steps) as f64) as f32;
    let grad_norm = sft::update(policy, &mut grads, opt, d.max_grad_norm, lr)
        .with_context(|| format!("step {step} (loss {loss})"))?;
    let count = |k: Kind| drawn.iter().filter(|x| x.kind == k).count();
    Ok(DittoLog {
        stage: "ditto",
        step,
        round,
        loss,
        reward_margin: margin,
        reward_accuracy: acc / p,
        chosen_logp: lw,
        rejected_logp: ll,
        pairs_expert: count(Kind::Expert),
        pairs_replay: count(Kind::Replay),
        pairs_inter_policy: count(Kind::InterPolicy),
        lr,
        grad_norm,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn read_state(dir: &RunDir) -> Result<Option<State>> {
    let path = dir.state();
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{}: corrupt checkpoint state", path.display())
    })?))
}

fn read_round(path: &Path) -> Result<Vec<RoundSample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: corrupt sample", path.display(), i + 1))
        })
        .collect()
}

/// Write the policy for `state.steps_done`, then the state that points at it, then
/// drop policies no longer needed (SPIN keeps the one its current round started from).
fn save_checkpoint(
    dir: &RunDir,
    policy: &Adapter,
    state: &State,
    base: &str,
    d: &DittoConfig,
) -> Result<()> {
    policy.save(&dir.policy_at(state.steps_done), base)?;
    crate::atomic::write(&dir.state(), serde_json::to_string(state)?.as_bytes())?;
    let round_start = state.steps_done - state.steps_done % d.round_every;
    for entry in std::fs::read_dir(dir.checkpoint())? {
        let path = entry?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("policy-"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(s) = step
            && s != state.steps_done
            && !(d.mode == Mode::Spin && s == round_start)
        {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}
