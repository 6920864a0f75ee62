//! `ditto score`: mean log-probability per response token of demonstrations (e.g.
//! held-out texts) under the base model or an adapter.

use super::{Globals, ModelArgs};
use crate::data::read_demos;
use crate::model::lora::Adapter;
use crate::train::sft;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL with prompt and demonstration per line.
    #[arg(long)]
    demos: PathBuf,
    /// PEFT adapter directories to compare with the base model.
    #[arg(long)]
    adapter: Vec<PathBuf>,
}

pub fn run(g: &Globals, a: ScoreArgs) -> Result<()> {
    let demos = read_demos(&a.demos)?;
    let model = g.load_model(&a.model)?;
    let seqs = sft::encode_demos(&model, &demos)?;
    // A fresh adapter has B = 0: exactly the base model.
    let lora = sft::SftConfig::default().lora()?;
    let base = Adapter::init(lora, &model.config, 0)?;
    println!(
        "{{\"model\":\"base\",\"mean_logprob\":{}}}",
        sft::mean_logprob(&model, &base, &seqs)?
    );
    for dir in &a.adapter {
        let ad = Adapter::load(dir, &model.config)?;
        let lp = sft::mean_logprob(&model, &ad, &seqs)?;
        println!("{}", serde_json::json!({"model": dir, "mean_logprob": lp}));
    }
    Ok(())
}
