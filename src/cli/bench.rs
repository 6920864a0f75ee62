//! `ditto bench`: train, sample and judge methods on an author set (the paper's Table 1).

use super::train::ConfigArgs;
use super::{Globals, ModelArgs};
use crate::bench::Method;
use crate::bench::dataset::Dataset;
use crate::bench::report::{self, AuthorReport};
use crate::bench::run::{self, Runner, Settings};
use crate::judge::Judge;
use crate::judge::llm::{LlmJudge, LlmOptions};
use crate::judge::style::{StyleJudge, StyleModel, StyleOptions};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JudgeKind {
    /// Character n-gram TF-IDF authorship classifier (offline, deterministic).
    Style,
    /// An OpenAI-compatible chat endpoint asked which output the author wrote (both orders).
    Llm,
    /// Train and sample only; judge later.
    None,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Author set: a folder with train.jsonl, val.jsonl and test.jsonl.
    #[arg(long)]
    data: PathBuf,
    /// Author ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    authors: Vec<String>,
    /// Methods, comma-separated: zero-shot, few-shot, sft, spin, ditto, ditto-no-replay,
    /// ditto-no-interpolicy, ditto-upfront.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "zero-shot,few-shot,sft,spin,ditto"
    )]
    methods: Vec<String>,
    #[arg(long, value_enum, default_value_t = JudgeKind::Style)]
    judge: JudgeKind,
    /// llm judge: base URL of the API (up to and including /v1).
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    judge_url: String,
    /// llm judge: the model name sent with each request.
    #[arg(long, default_value = "base")]
    judge_model: String,
    /// llm judge: environment variable holding the API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    judge_key_env: String,
    /// Hold out the validation prompts instead of the test prompts (for tuning).
    #[arg(long)]
    tune: bool,
    /// Demonstrations per author: the first training texts.
    #[arg(long, default_value_t = 7)]
    demos: usize,
    /// Cut each demonstration to its first N words (shorter sequences train faster).
    #[arg(long)]
    max_demo_words: Option<usize>,
    /// Outputs per method and test prompt.
    #[arg(short = 'k', long, default_value_t = 3)]
    samples: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    config: ConfigArgs,
    /// Output directory: cached per-author results and the report.
    #[arg(long)]
    out: PathBuf,
    /// Subfolder of --out for this report (results.md/json, winrates.svg, judgments.jsonl).
    #[arg(long, default_value = "report")]
    report: String,
}

/// The judge asked for and what the report says about its set-up.
fn make_judge(a: &BenchArgs, ds: &Dataset) -> Result<Option<(Box<dyn Judge>, serde_json::Value)>> {
    match a.judge {
        JudgeKind::None => Ok(None),
        JudgeKind::Llm => {
            let opts = LlmOptions {
                endpoint: a.judge_url.clone(),
                model: a.judge_model.clone(),
                api_key_env: a.judge_key_env.clone(),
                cache_dir: Some(a.out.join("llm-cache")),
                ..LlmOptions::default()
            };
            let info =
                serde_json::json!({"name": "llm", "endpoint": opts.endpoint, "model": opts.model});
            Ok(Some((Box::new(LlmJudge::new(opts)?), info)))
        }
        JudgeKind::Style => {
            let t0 = std::time::Instant::now();
            let model = StyleModel::fit(&ds.train_texts(), &StyleOptions::default())?;
            let test = ds.test_texts();
            let info = serde_json::json!({
                "name": "style",
                "authors": model.authors().len(),
                "attribution_accuracy_on_test_texts": model.accuracy(&test),
                "test_texts": test.len(),
                "chance": 1.0 / model.authors().len() as f64,
                "fit_seconds": t0.elapsed().as_secs_f64(),
            });
            eprintln!("ditto bench: style judge {info}");
            Ok(Some((Box::new(StyleJudge { model }), info)))
        }
    }
}

pub fn run(g: &Globals, a: BenchArgs) -> Result<()> {
    let methods = a
        .methods
        .iter()
        .map(|m| Method::parse(m))
        .collect::<Result<Vec<_>>>()?;
    if methods.len() < 2 && a.judge != JudgeKind::None {
        bail!("--methods: judging needs at least two methods");
    }
    if a.samples == 0 || a.demos == 0 {
        bail!("--samples and --demos must be at least 1");
    }
    let ds = Dataset::read(&a.data)?;
    let splits = a
        .authors
        .iter()
        .map(|id| ds.author(id, a.demos, a.tune))
        .collect::<Result<Vec<_>>>()?;
    let judge = make_judge(&a, &ds)?;
    let mut model = g.load_model(&a.model)?;
    let settings = Settings {
        data: a.data.display().to_string(),
        tune: a.tune,
        model: model.source.display().to_string(),
        demos: a.demos,
        max_demo_words: a.max_demo_words,
        samples: a.samples,
        temperature: a.temperature,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        config: a.config.resolve(&model)?,
    };
    settings.stamp(&a.out)?;
    let bar = ProgressBar::new((splits.len() * methods.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "bench [{bar:30}] {pos}/{len} methods done, {elapsed} ({eta} left) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let base_model = model
        .source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut runner = Runner {
        model: &mut model,
        settings: &settings,
        out: &a.out,
        bar: &bar,
        base_model,
    };
    let mut all = Vec::new();
    for split in &splits {
        all.push(runner.author(split, &methods)?);
    }
    bar.finish_with_message("trained and sampled");
    let Some((judge, mut judge_info)) = judge else {
        eprintln!(
            "ditto bench: results in {}; no judge asked for",
            a.out.display()
        );
        return Ok(());
    };
    let dir = a.out.join(&a.report);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut lines = Vec::new();
    let mut authors = Vec::new();
    for (split, results) in splits.iter().zip(all) {
        let tally = run::judge_author(judge.as_ref(), split, &results, |l| {
            lines.push(serde_json::to_string(l)?);
            Ok(())
        })?;
        authors.push(AuthorReport {
            author: split.author.clone(),
            tally,
            results,
        });
    }
    crate::atomic::write(
        &dir.join("judgments.jsonl"),
        (lines.join("\n") + "\n").as_bytes(),
    )?;
    judge_info["stats"] = judge.stats();
    let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
    let title = format!(
        "{} — {} authors, {} prompts",
        a.data
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        splits.len(),
        if a.tune {
            "validation (--tune)"
        } else {
            "test"
        }
    );
    let rep = report::build(&title, &names, &authors, judge_info);
    rep.write(&dir)?;
    println!("{}", rep.markdown);
    eprintln!("ditto bench: report in {}", dir.display());
    Ok(())
}
