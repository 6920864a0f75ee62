//! `ditto chat`: an interactive conversation that keeps its history.

use super::generate::{messages, sample_text, stream_reply};
use super::{AdapterArgs, Globals, ModelArgs, SamplingArgs};
use crate::tokenize::Message;
use anyhow::Result;
use clap::Args;
use std::io::BufRead;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// Optional system message.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(g: &Globals, a: ChatArgs) -> Result<()> {
    let mut params = a.sampling.params()?;
    let model = g.load_adapted(&a.model, &a.adapter)?;
    let mut history: Vec<Message> = Vec::new();
    eprintln!(
        "ditto chat: type a message and press Enter; /reset clears the history, Ctrl-D quits."
    );
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        if input == "/reset" {
            history.clear();
            continue;
        }
        let chat = messages(a.system.as_deref(), &history, input);
        let prompt = match model.chat_prompt(&chat) {
            Ok(p) if p.len() + params.max_new_tokens <= model.context_len() => p,
            Ok(_) => {
                eprintln!("(the conversation no longer fits the context; /reset to start over)");
                continue;
            }
            Err(e) => return Err(e),
        };
        let s = stream_reply(&model, prompt, &params)?;
        let reply = sample_text(&model, &s)?;
        history.push(Message {
            role: "user".into(),
            content: input.into(),
        });
        history.push(Message {
            role: "assistant".into(),
            content: reply,
        });
        params.seed = params.seed.wrapping_add(1);
    }
}
