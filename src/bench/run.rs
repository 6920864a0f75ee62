//! Running a benchmark into an output directory: per author and method, train what the
//! method needs, sample outputs for the test prompts and score the author's held-out
//! texts, each result cached so a rerun continues where it stopped; then judge every
//! pair of methods.
//!
//! Layout: `settings.json`, `log.jsonl`, and per author `authors/<id>/` with
//! `demos.jsonl`, the shared SFT adapter `sft/` (+ `sft-train.json`, `sft-metrics.jsonl`),
//! one `ditto train` run directory per preference method under `runs/`, and one
//! `<method>.json` result per method.

use super::Method;
use super::dataset::AuthorSplit;
use super::winrate::Tally;
use crate::judge::{Case, Judge, Judgment};
use crate::model::Model;
use crate::model::lora::Adapter;
use crate::model::peft::WEIGHTS_FILE;
use crate::sample::{self, FinishReason, GenerateOptions, SamplingParams};
use crate::tokenize::Message;
use crate::train::ditto::{self, Event, RunDir, RunInput, TrainConfig};
use crate::train::format::{Encoded, encode_pair, prompt_messages};
use crate::train::sft;
use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The shared SFT stage's summary (seconds, steps) in an author's directory; it must
/// not be any method's `<method>.json`.
const SFT_SUMMARY: &str = "sft-train.json";

/// Everything that decides a result; stored in `settings.json` so a rerun with other
/// settings cannot mix results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub data: String,
    /// Validation prompts held out instead of test prompts.
    pub tune: bool,
    pub model: String,
    /// Demonstrations per author (the first training texts).
    pub demos: usize,
    /// Demonstrations are cut to this many words (None: whole).
    pub max_demo_words: Option<usize>,
    /// Outputs per method and test prompt (K).
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
    pub config: TrainConfig,
}

impl Settings {
    /// Record the settings in `out`, or check they equal the recorded ones.
    pub fn stamp(&self, out: &Path) -> Result<()> {
        let path = out.join("settings.json");
        if path.exists() {
            let text = std::fs::read_to_string(&path)?;
            let old: Settings = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a bench settings file", path.display()))?;
            if &old != self {
                bail!(
                    "{} holds results made with other settings ({}); use another --out",
                    out.display(),
                    path.display()
                );
            }
            return Ok(());
        }
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        crate::atomic::write(&path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}

/// One output of a method for a test prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub prompt_index: usize,
    pub sample_index: usize,
    pub text: String,
    pub finish_reason: FinishReason,
    pub tokens: usize,
}

/// Per-token negative log-likelihood of the author's held-out texts (test, or validation
/// when tuning).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Nll {
    pub per_token: f64,
    pub texts: usize,
}

/// What a method produced for one author (`authors/<id>/<method>.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    pub author: String,
    pub method: String,
    /// Wall time spent training (SFT included for the methods built on it).
    pub train_seconds: f64,
    pub generate_seconds: f64,
    /// Demonstrations shown in context (few-shot only; cut to fit the context).
    pub demos_in_context: Option<usize>,
    pub outputs: Vec<Output>,
    pub nll: Option<Nll>,
}

/// A model, settings and output directory shared by every author's runs.
pub struct Runner<'a> {
    pub model: &'a mut Model,
    pub settings: &'a Settings,
    pub out: &'a Path,
    pub bar: &'a ProgressBar,
    /// Name recorded as `base_model_name_or_path` in saved adapters.
    pub base_model: String,
}

/// The author's prepared demonstrations.
struct Prepared<'s> {
    split: &'s AuthorSplit,
    dir: PathBuf,
    demos: Vec<(String, String)>,
    encoded: Vec<Encoded>,
}

/// Cut `text` to its first `n` whitespace-separated words.
pub fn first_words(text: &str, n: usize) -> String {
    text.split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Runner<'_> {
    /// Results of `methods` for one author, computing those not cached yet.
    pub fn author(&mut self, split: &AuthorSplit, methods: &[Method]) -> Result<Vec<MethodResult>> {
        let dir = self.out.join("authors").join(&split.author);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let demos: Vec<(String, String)> = split
            .demos
            .iter()
            .map(|d| {
                let text = d.demonstration.clone().unwrap_or_default();
                let text = match self.settings.max_demo_words {
                    Some(n) => first_words(&text, n),
                    None => text,
                };
                (d.prompt.clone(), text)
            })
            .collect();
        let lines: Vec<String> = demos
            .iter()
            .map(|(p, d)| serde_json::json!({"prompt": p, "demonstration": d}).to_string())
            .collect();
        crate::atomic::write(
            &dir.join("demos.jsonl"),
            (lines.join("\n") + "\n").as_bytes(),
        )?;
        let encoded = demos
            .iter()
            .map(|(p, d)| encode_pair(self.model, None, p, d))
            .collect::<Result<Vec<_>>>()?;
        let prep = Prepared {
            split,
            dir,
            demos,
            encoded,
        };
        let mut results = Vec::new();
        for &m in methods {
            let path = prep.dir.join(format!("{}.json", m.name()));
            let result = if path.exists() {
                let text = std::fs::read_to_string(&path)?;
                serde_json::from_str(&text).with_context(|| {
                    format!("{}: corrupt result; delete it to redo", path.display())
                })?
            } else {
                self.bar
                    .set_message(format!("author {}: {}", split.author, m.name()));
                let r = self.method(&prep, m)?;
                crate::atomic::write(&path, serde_json::to_string_pretty(&r)?.as_bytes())?;
                sft::append_jsonl(
                    &self.out.join("log.jsonl"),
                    &serde_json::json!({
                        "author": r.author, "method": r.method,
                        "train_seconds": r.train_seconds, "generate_seconds": r.generate_seconds,
                        "nll": r.nll,
                    }),
                )?;
                r
            };
            results.push(result);
            self.bar.inc(1);
        }
        Ok(results)
    }

    fn method(&mut self, p: &Prepared, m: Method) -> Result<MethodResult> {
        let (adapter, train_seconds) = match m {
            Method::ZeroShot | Method::FewShot => (None, 0.0),
            Method::Sft => {
                let (a, s) = self.sft(p)?;
                (Some(a), s)
            }
            Method::Preference(v) => {
                let (sft_adapter, sft_s) = self.sft(p)?;
                let dir = p.dir.join("runs").join(m.name());
                let run_dir = RunDir { root: dir.clone() };
                if !run_dir.sft().join(WEIGHTS_FILE).exists() {
                    sft_adapter.save(&run_dir.sft(), &self.base_model)?;
                }
                let mut cfg = self.settings.config.clone();
                v.apply(&mut cfg.ditto);
                cfg.validate()?;
                let t0 = Instant::now();
                let input = RunInput {
                    demos: &p.encoded,
                    config: &cfg,
                    dir: &dir,
                    base_model: &self.base_model,
                    stop_after: None,
                };
                let (bar, author, name) = (self.bar, &p.split.author, m.name());
                let policy = ditto::run(self.model, &input, |ev| {
                    if let Event::Step(l) = ev {
                        bar.set_message(format!(
                            "author {author}: {name} step {}/{} loss {:.3}",
                            l.step + 1,
                            cfg.ditto.steps,
                            l.loss
                        ));
                    }
                    Ok(())
                })?
                .context("the preference run stopped early")?;
                (Some(policy), sft_s + t0.elapsed().as_secs_f64())
            }
        };
        let t0 = Instant::now();
        let (prompts, demos_in_context) = self.prompts(p, m == Method::FewShot)?;
        let params = self.settings.sampling();
        let opts = || GenerateOptions {
            n: self.settings.samples,
            max_batch: 16,
            ..GenerateOptions::default()
        };
        let samples = match &adapter {
            None => sample::generate(self.model, &prompts, &params, opts())?,
            Some(a) => self.model.with_merged(a, |model| {
                sample::generate(model, &prompts, &params, opts())
            })?,
        };
        let outputs = samples
            .iter()
            .map(|s| {
                Ok(Output {
                    prompt_index: s.prompt_index,
                    sample_index: s.sample_index,
                    text: self.model.tokenizer.decode(s.reply_ids())?,
                    finish_reason: s.finish,
                    tokens: s.ids.len(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let generate_seconds = t0.elapsed().as_secs_f64();
        let nll = match (m, &adapter) {
            (Method::FewShot, _) => None,
            (_, Some(a)) => self.nll(p, a)?,
            (_, None) => {
                let zero = Adapter::init(self.settings.config.sft.lora()?, &self.model.config, 0)?;
                self.nll(p, &zero)?
            }
        };
        Ok(MethodResult {
            author: p.split.author.clone(),
            method: m.name().to_owned(),
            train_seconds,
            generate_seconds,
            demos_in_context,
            outputs,
            nll,
        })
    }

    /// The author's SFT adapter (trained once, shared by every method built on it) and
    /// the seconds its training took.
    fn sft(&mut self, p: &Prepared) -> Result<(Adapter, f64)> {
        let dir = p.dir.join("sft");
        let info = p.dir.join(SFT_SUMMARY);
        if dir.join(WEIGHTS_FILE).exists() && info.exists() {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&info)?)?;
            let seconds = v["seconds"].as_f64().unwrap_or(0.0);
            return Ok((Adapter::load(&dir, &self.model.config)?, seconds));
        }
        let metrics = p.dir.join("sft-metrics.jsonl");
        if metrics.exists() {
            std::fs::remove_file(&metrics)?;
        }
        let t0 = Instant::now();
        let bar = self.bar;
        let cfg = &self.settings.config.sft;
        let out = sft::train(self.model, &p.encoded, cfg, |log| {
            sft::append_jsonl(&metrics, log)?;
            bar.set_message(format!(
                "author {}: sft step {}/{} loss {:.3}",
                p.split.author,
                log.step + 1,
                cfg.max_steps,
                log.loss
            ));
            Ok(())
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        out.adapter.save(&dir, &self.base_model)?;
        let summary = serde_json::json!({
            "seconds": seconds,
            "steps": out.steps.len(),
            "stopped_early": out.stopped_early,
            "last_loss": out.steps.last().map(|s| s.loss),
        });
        crate::atomic::write(&info, serde_json::to_string_pretty(&summary)?.as_bytes())?;
        Ok((out.adapter, seconds))
    }

    /// Chat prompts of the test items; for few-shot, the demonstrations come first as
    /// earlier turns, as many as fit the context with room for the reply.
    fn prompts(&self, p: &Prepared, few_shot: bool) -> Result<(Vec<Vec<u32>>, Option<usize>)> {
        let room = self
            .model
            .context_len()
            .saturating_sub(self.settings.max_new_tokens);
        let mut used = if few_shot { p.demos.len() } else { 0 };
        loop {
            let prior: Vec<Message> = p.demos[..used]
                .iter()
                .flat_map(|(q, d)| [Message::new("user", q), Message::new("assistant", d)])
                .collect();
            let prompts = p
                .split
                .test
                .iter()
                .map(|t| {
                    let mut msgs = prior.clone();
                    msgs.extend(prompt_messages(None, &t.prompt));
                    self.model.chat_prompt(&msgs)
                })
                .collect::<Result<Vec<_>>>()?;
            if prompts.iter().all(|ids| ids.len() <= room) {
                return Ok((prompts, few_shot.then_some(used)));
            }
            if used == 0 {
                bail!(
                    "author {}: a test prompt does not fit the context with max_new_tokens {}",
                    p.split.author,
                    self.settings.max_new_tokens
                );
            }
            used -= 1;
        }
    }

    /// Per-token NLL of the author's held-out texts (the whole texts) under `adapter`.
    fn nll(&self, p: &Prepared, adapter: &Adapter) -> Result<Option<Nll>> {
        let seqs = p
            .split
            .test
            .iter()
            .filter_map(|t| {
                let text = t.demonstration.as_deref()?;
                Some(encode_pair(self.model, None, &t.prompt, text))
            })
            .collect::<Result<Vec<_>>>()?;
        if seqs.is_empty() {
            return Ok(None);
        }
        let lp = sft::mean_logprob(self.model, adapter, &seqs)?;
        Ok(Some(Nll {
            per_token: -lp,
            texts: seqs.len(),
        }))
    }
}

/// One judged pair, as kept in `judgments.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct JudgmentLine<'a> {
    pub author: &'a str,
    pub prompt_index: usize,
    pub sample_index: usize,
    pub method_a: &'a str,
    pub method_b: &'a str,
    #[serde(flatten)]
    pub judgment: Judgment,
}

/// Judge every pair of methods on every test prompt and sample index of one author
/// (sample k of one method against sample k of the other), writing each judgment to
/// `sink`.
pub fn judge_author(
    judge: &dyn Judge,
    split: &AuthorSplit,
    results: &[MethodResult],
    mut sink: impl FnMut(&JudgmentLine) -> Result<()>,
) -> Result<Tally> {
    let mut tally = Tally::new(results.len());
    for (pi, item) in split.test.iter().enumerate() {
        let outputs: Vec<Vec<&Output>> = results
            .iter()
            .map(|r| r.outputs.iter().filter(|o| o.prompt_index == pi).collect())
            .collect();
        let k = outputs.iter().map(Vec::len).min().unwrap_or(0);
        for s in 0..k {
            let row: Vec<&Output> = outputs.iter().map(|o| o[s]).collect();
            for i in 0..results.len() {
                for j in i + 1..results.len() {
                    let case = Case {
                        author: &split.author,
                        prompt: &item.prompt,
                        reference: &split.reference,
                        a: &row[i].text,
                        b: &row[j].text,
                    };
                    let judgment = judge.judge(&case)?;
                    tally.add(i, j, judgment.verdict);
                    sink(&JudgmentLine {
                        author: &split.author,
                        prompt_index: pi,
                        sample_index: row[i].sample_index,
                        method_a: &results[i].method,
                        method_b: &results[j].method,
                        judgment,
                    })?;
                }
            }
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::dataset::Item;
    use crate::judge::Verdict;

    #[test]
    fn sft_summary_is_not_a_method_result() {
        // It once was `sft.json`, which the `sft` method's result then overwrote, so the
        // preference methods' training time lost the SFT time.
        for m in crate::bench::Method::ALL {
            assert_ne!(format!("{}.json", m.name()), SFT_SUMMARY);
        }
    }

    #[test]
    fn first_words_cuts_at_word_boundaries() {
        assert_eq!(first_words("a  b\nc d", 3), "a b c");
        assert_eq!(first_words("one", 5), "one");
    }

    /// A judge that prefers the longer text.
    struct Longer;
    impl Judge for Longer {
        fn name(&self) -> &str {
            "longer"
        }
        fn judge(&self, c: &Case) -> Result<Judgment> {
            let verdict = match c.a.len().cmp(&c.b.len()) {
                std::cmp::Ordering::Greater => Verdict::A,
                std::cmp::Ordering::Less => Verdict::B,
                std::cmp::Ordering::Equal => Verdict::Tie,
            };
            Ok(Judgment {
                verdict,
                detail: serde_json::Value::Null,
            })
        }
    }

    fn result(method: &str, texts: &[&str]) -> MethodResult {
        MethodResult {
            author: "0".into(),
            method: method.into(),
            train_seconds: 0.0,
            generate_seconds: 0.0,
            demos_in_context: None,
            outputs: texts
                .iter()
                .enumerate()
                .map(|(i, t)| Output {
                    prompt_index: i / 2,
                    sample_index: i % 2,
                    text: (*t).into(),
                    finish_reason: FinishReason::Stop,
                    tokens: 1,
                })
                .collect(),
            nll: None,
        }
    }

    #[test]
    fn every_pair_of_methods_is_judged_per_prompt_and_sample() {
        let item = |p: &str| Item {
            author: "0".into(),
            prompt: p.into(),
            demonstration: None,
        };
        let split = AuthorSplit {
            author: "0".into(),
            demos: vec![],
            test: vec![item("p0"), item("p1")],
            reference: "r".into(),
        };
        // Two prompts × two samples each.
        let results = [
            result("short", &["a", "a", "a", "a"]),
            result("mixed", &["aaa", "a", "aaa", "a"]),
            result("long", &["aaaa", "aaaa", "aaaa", "aaaa"]),
        ];
        let mut lines = Vec::new();
        let tally = judge_author(&Longer, &split, &results, |l| {
            lines.push((
                l.prompt_index,
                l.sample_index,
                l.method_a.to_owned(),
                l.judgment.verdict,
            ));
            Ok(())
        })
        .unwrap();
        assert_eq!(lines.len(), 2 * 2 * 3);
        assert_eq!(lines[0], (0, 0, "short".to_owned(), Verdict::B));
        // short vs mixed: mixed wins two of four, two ties → short 25 %.
        assert_eq!(tally.head_to_head(0, 1), Some(25.0));
        assert_eq!(tally.head_to_head(2, 0), Some(100.0));
        assert_eq!(tally.head_to_head(2, 1), Some(100.0));
        assert_eq!(tally.average(1), Some(37.5));
        let sum: f64 = (0..3).map(|i| tally.average(i).unwrap()).sum();
        assert_eq!(sum, 150.0);
    }
}
