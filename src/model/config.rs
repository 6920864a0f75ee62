//! Model hyper-parameters, read from a Hugging Face `config.json` or GGUF metadata.

use super::gguf::GgufFile;
use anyhow::{Context, Result, bail};
use serde_json::Value as Json;
use std::path::Path;

/// The architectures this runtime implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Arch {
    /// Llama, Mistral, SmolLM, TinyLlama: no biases.
    Llama,
    /// Qwen2: biases on q, k and v.
    Qwen2,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rope_theta: f64,
    pub rms_eps: f32,
    pub max_positions: usize,
    pub tie_embeddings: bool,
}

impl Config {
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    fn validate(self, source: &str) -> Result<Config> {
        let c = self;
        if c.hidden == 0 || c.layers == 0 || c.heads == 0 || c.kv_heads == 0 || c.vocab == 0 {
            bail!("{source}: a model dimension is zero: {c:?}");
        }
        if !c.heads.is_multiple_of(c.kv_heads) {
            bail!(
                "{source}: {} attention heads is not a multiple of {} key/value heads",
                c.heads,
                c.kv_heads
            );
        }
        if !c.head_dim.is_multiple_of(2) {
            bail!("{source}: head dimension {} is odd", c.head_dim);
        }
        Ok(c)
    }

    /// Parse a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let j: Json = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        let src = path.display().to_string();
        let model_type = j["model_type"].as_str().unwrap_or("");
        let archs: Vec<&str> = j["architectures"]
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        let arch = match model_type {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => bail!(
                "{src}: unsupported model architecture {other:?} (architectures {archs:?}); \
                 supported: llama, mistral (SmolLM, TinyLlama, Llama 2/3), qwen2"
            ),
        };
        let int = |key: &str| -> Result<usize> {
            j[key]
                .as_u64()
                .map(|v| v as usize)
                .with_context(|| format!("{src}: missing or non-integer {key:?}"))
        };
        let hidden = int("hidden_size")?;
        let heads = int("num_attention_heads")?;
        let kv_heads = j["num_key_value_heads"]
            .as_u64()
            .map_or(heads, |v| v as usize);
        let head_dim = j["head_dim"]
            .as_u64()
            .map_or(hidden / heads, |v| v as usize);
        let rope_theta = j["rope_theta"]
            .as_f64()
            .or_else(|| j["rope_parameters"]["rope_theta"].as_f64())
            .unwrap_or(10000.0);
        for key in ["rope_scaling", "rope_parameters"] {
            if let Some(kind) = j[key]["rope_type"].as_str().or(j[key]["type"].as_str())
                && kind != "default"
            {
                bail!("{src}: rope scaling {kind:?} is not supported");
            }
        }
        Config {
            arch,
            hidden,
            layers: int("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            ffn: int("intermediate_size")?,
            vocab: int("vocab_size")?,
            rope_theta,
            rms_eps: j["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
            max_positions: j["max_position_embeddings"].as_u64().unwrap_or(4096) as usize,
            tie_embeddings: j["tie_word_embeddings"].as_bool().unwrap_or(false),
        }
        .validate(&src)
    }

    /// Read the `<arch>.*` keys of a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<Config> {
        let src = g.path.display().to_string();
        let name = g
            .get_str("general.architecture")
            .with_context(|| format!("{src}: general.architecture is missing"))?;
        let arch = match name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => bail!(
                "{src}: unsupported model architecture {other:?}; supported: llama, mistral, qwen2"
            ),
        };
        let k = |s: &str| format!("{name}.{s}");
        let int = |s: &str| g.require_u64(&k(s)).map(|v| v as usize);
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads = g
            .get_u64(&k("attention.head_count_kv"))
            .map_or(heads, |v| v as usize);
        let head_dim = g
            .get_u64(&k("attention.key_length"))
            .map_or(hidden / heads, |v| v as usize);
        let vocab = match g.get_u64(&k("vocab_size")) {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(<[_]>::len)
                .with_context(|| format!("{src}: vocabulary size unknown"))?,
        };
        Config {
            arch,
            hidden,
            layers: int("block_count")?,
            heads,
            kv_heads,
            head_dim,
            ffn: int("feed_forward_length")?,
            vocab,
            rope_theta: g.get_f64(&k("rope.freq_base")).unwrap_or(10000.0),
            rms_eps: g
                .get_f64(&k("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f32,
            max_positions: g.get_u64(&k("context_length")).unwrap_or(4096) as usize,
            tie_embeddings: !g.tensors.contains_key("output.weight"),
        }
        .validate(&src)
    }
}
