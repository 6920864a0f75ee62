//! Command-line interface: argument parsing, shared options and the commands.

mod bench;
mod chat;
mod generate;
mod perf;
mod score;
mod serve;
mod sft;
mod train;

use crate::model::lora::Adapter;
use crate::model::{Model, fetch};
use crate::sample::SamplingParams;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ditto",
    version,
    about = "Personalize a chat model from a few writing samples (DITTO)"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Cache directory for downloaded models (default: $DITTO_CACHE or the user cache dir).
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate replies to one prompt.
    Generate(generate::GenerateArgs),
    /// Chat interactively (keeps the conversation).
    Chat(chat::ChatArgs),
    /// Measure speed and memory on fixed shapes.
    Perf(perf::PerfArgs),
    /// Train a LoRA adapter on demonstrations (supervised fine-tuning).
    Sft(sft::SftArgs),
    /// Personalize the model: SFT, then DITTO preference rounds, into a run directory.
    Train(train::TrainArgs),
    /// Mean log-prob per response token of demonstrations under the base model and adapters.
    Score(score::ScoreArgs),
    /// Compare methods (zero-shot … DITTO) on an author set with a judge: the paper's Table 1.
    Bench(bench::BenchArgs),
    /// Serve the model and adapters over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
}

/// Which model to load.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// GGUF file or Hugging Face model directory (default: SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// A LoRA adapter to apply.
#[derive(Args, Clone, Debug)]
pub struct AdapterArgs {
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors), merged
    /// into a copy of the weights.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// Sampling options shared by the commands that generate.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    /// Most new tokens per reply.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Random seed (same seed, same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            anyhow::bail!("--temperature must be ≥ 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            anyhow::bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        if self.max_new_tokens == 0 {
            anyhow::bail!("--max-new-tokens must be at least 1");
        }
        Ok(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: 0,
            seed: self.seed,
        })
    }
}

/// Global settings every command receives.
pub struct Globals {
    pub cache_dir: PathBuf,
}

impl Globals {
    /// Load `--model`, or the default model (fetching it if needed).
    pub fn load_model(&self, args: &ModelArgs) -> Result<Model> {
        let path = match &args.model {
            Some(p) => p.clone(),
            None => fetch::default_model(&self.cache_dir)?,
        };
        Model::load(&path).with_context(|| format!("loading model {}", path.display()))
    }

    /// Load the model and merge the adapter, if one is given.
    pub fn load_adapted(&self, args: &ModelArgs, adapter: &AdapterArgs) -> Result<Model> {
        let mut model = self.load_model(args)?;
        if let Some(dir) = &adapter.adapter {
            let a = Adapter::load(dir, &model.config)?;
            model.weights = a.merged(&model.weights);
        }
        Ok(model)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let threads = match cli.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start the thread pool")?;
    let ctx = Globals {
        cache_dir: fetch::cache_dir(cli.cache_dir.as_deref()),
    };
    // Run the command on a pool thread: parallel sections started from inside the pool
    // avoid the cross-thread hand-off that calls from outside it pay every time.
    pool.install(|| match cli.command {
        Command::Generate(a) => generate::run(&ctx, a),
        Command::Chat(a) => chat::run(&ctx, a),
        Command::Perf(a) => perf::run(&ctx, a, threads),
        Command::Sft(a) => sft::run(&ctx, a),
        Command::Train(a) => train::run(&ctx, a),
        Command::Score(a) => score::run(&ctx, a),
        Command::Bench(a) => bench::run(&ctx, a),
        Command::Serve(a) => serve::run(&ctx, a),
    })
}
