//! Chat models: configuration, loading (GGUF, safetensors), weights and the
//! transformer forward pass.

pub mod config;
pub mod fetch;
pub mod gguf;
pub(crate) mod loader;
pub mod lora;
pub mod peft;
pub mod quant;
pub mod transformer;
pub mod weights;

#[cfg(test)]
mod loader_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tiny;

use crate::kernels::Rope;
use crate::tokenize::{ChatTemplate, Message, Tokenizer};
use anyhow::{Context, Result, bail};
use config::Config;
use std::path::{Path, PathBuf};
use weights::Weights;

/// Longest context the rope table is built for, whatever the model declares.
const MAX_ROPE_POSITIONS: usize = 32768;

/// A loaded chat model.
pub struct Model {
    pub config: Config,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// Token ids that end a reply: eos and the template's end-of-turn token.
    pub stop_ids: Vec<u32>,
    pub rope: Rope,
    /// Where the model was loaded from.
    pub source: PathBuf,
}

impl Model {
    /// Load a GGUF file or a Hugging Face model directory.
    pub fn load(path: &Path) -> Result<Model> {
        let opened = if path.is_dir() {
            loader::open_hf_dir(path)?
        } else if path.is_file() {
            loader::open_gguf(path)?
        } else {
            bail!("model {} does not exist", path.display());
        };
        Ok(Model::assemble(opened, path))
    }

    fn assemble(o: loader::Opened, path: &Path) -> Model {
        let mut stop_ids: Vec<u32> = o.tokenizer.eos_id().into_iter().collect();
        stop_ids.extend(o.extra_stop_ids);
        if let Some(eot) = o.template.as_ref().and_then(ChatTemplate::end_of_turn)
            && let Some(id) = o.tokenizer.token_to_id(&eot)
        {
            stop_ids.push(id);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let c = &o.config;
        let rope = Rope::new(
            c.head_dim,
            c.rope_theta,
            c.max_positions.min(MAX_ROPE_POSITIONS),
        );
        Model {
            config: o.config,
            weights: o.weights,
            tokenizer: o.tokenizer,
            template: o.template,
            stop_ids,
            rope,
            source: path.to_path_buf(),
        }
    }

    /// Run `f` with `adapter` merged into the weights (fast sampling), then restore them.
    pub fn with_merged<T>(&mut self, adapter: &lora::Adapter, f: impl FnOnce(&Model) -> T) -> T {
        let merged = adapter.merged(&self.weights);
        let base = std::mem::replace(&mut self.weights, merged);
        let out = f(self);
        self.weights = base;
        out
    }

    /// Longest sequence (prompt + reply) the model can process.
    pub fn context_len(&self) -> usize {
        self.rope.max_positions()
    }

    /// The chat template, or an error telling how to proceed without one.
    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        self.template.as_ref().with_context(|| {
            format!(
                "model {} has no chat template (tokenizer.chat_template / \
                 tokenizer_config.json \"chat_template\" / chat_template.jinja)",
                self.source.display()
            )
        })
    }

    /// Token ids of `text` with exactly one BOS in front when the model wants one.
    pub fn encode_with_bos(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text)?;
        if self.tokenizer.add_bos()
            && let Some(bos) = self.tokenizer.bos_id()
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Render `messages` with the chat template (with the generation prompt) and tokenize.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.chat_template()?.render(messages, true)?;
        self.encode_with_bos(&text)
    }
}
