//! `ditto generate`: replies to one prompt, as text or JSON lines.

use super::{AdapterArgs, Globals, ModelArgs, SamplingArgs};
use crate::model::Model;
use crate::sample::{self, GenerateOptions, Sample, SamplingParams};
use crate::tokenize::Message;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::io::Write;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// Optional system message.
    #[arg(long)]
    system: Option<String>,
    /// Use the prompt as raw text, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Samples to generate.
    #[arg(short = 'n', long, default_value_t = 1)]
    n: usize,
    /// Most sequences decoded at once.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object per sample (text, ids, finish reason).
    #[arg(long)]
    json: bool,
}

/// Build the chat for a prompt with an optional system message.
pub fn messages(system: Option<&str>, prior: &[Message], user: &str) -> Vec<Message> {
    let mut m = Vec::with_capacity(prior.len() + 2);
    if let Some(s) = system {
        m.push(Message {
            role: "system".into(),
            content: s.into(),
        });
    }
    m.extend_from_slice(prior);
    m.push(Message {
        role: "user".into(),
        content: user.into(),
    });
    m
}

/// The text of a sample without its trailing stop token.
pub fn sample_text(model: &Model, s: &Sample) -> Result<String> {
    model.tokenizer.decode(s.reply_ids())
}

/// Generate one reply, printing its text to stdout as it is produced.
pub fn stream_reply(model: &Model, prompt: Vec<u32>, params: &SamplingParams) -> Result<Sample> {
    let mut dec = model.tokenizer.decode_stream();
    let mut stdout = std::io::stdout();
    let mut on_token = |_: usize, t: u32| {
        if model.stop_ids.contains(&t) {
            return;
        }
        if let Ok(Some(text)) = dec.push(t) {
            let _ = write!(stdout, "{text}");
            let _ = stdout.flush();
        }
    };
    let opts = GenerateOptions {
        n: 1,
        max_batch: 1,
        first_prompt_index: 0,
        on_token: Some(&mut on_token),
    };
    let mut samples = sample::generate(model, &[prompt], params, opts)?;
    println!();
    samples.pop().context("generation returned no sample")
}

pub fn run(g: &Globals, a: GenerateArgs) -> Result<()> {
    let params = a.sampling.params()?;
    if a.n == 0 {
        bail!("-n must be at least 1");
    }
    let model = g.load_adapted(&a.model, &a.adapter)?;
    let prompt = if a.raw {
        model.encode_with_bos(&a.prompt)?
    } else {
        model.chat_prompt(&messages(a.system.as_deref(), &[], &a.prompt))?
    };
    if a.n == 1 && !a.json {
        stream_reply(&model, prompt, &params)?;
        return Ok(());
    }
    let opts = GenerateOptions {
        n: a.n,
        max_batch: a.batch_size,
        ..GenerateOptions::default()
    };
    let samples = sample::generate(&model, std::slice::from_ref(&prompt), &params, opts)?;
    let mut out = std::io::stdout().lock();
    for s in &samples {
        let text = sample_text(&model, s)?;
        if a.json {
            let line = serde_json::json!({
                "sample_index": s.sample_index,
                "text": text,
                "ids": s.ids,
                "finish_reason": s.finish,
                "prompt_tokens": prompt.len(),
                "new_tokens": s.ids.len(),
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "--- sample {} ({:?}) ---\n{text}",
                s.sample_index, s.finish
            )?;
        }
    }
    Ok(())
}
