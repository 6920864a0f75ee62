//! The transformer's weights in f32 and their loading from any tensor source
//! (GGUF or safetensors), addressed by Hugging Face tensor names.

use super::config::{Arch, Config};
use crate::kernels::Packed;
use anyhow::{Result, bail};
use std::sync::OnceLock;

/// A dense layer `y = x Wᵀ + b` with `W` stored row-major as `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub out_dim: usize,
    pub in_dim: usize,
    /// `w` repacked for generation, made on first use.
    packed: OnceLock<Packed>,
}

impl Linear {
    pub fn new(w: Vec<f32>, b: Option<Vec<f32>>, out_dim: usize, in_dim: usize) -> Linear {
        Linear {
            w,
            b,
            out_dim,
            in_dim,
            packed: OnceLock::new(),
        }
    }

    /// The weights packed for the row-independent generation kernel.
    pub fn packed(&self) -> &Packed {
        self.packed
            .get_or_init(|| Packed::new(&self.w, self.out_dim, self.in_dim))
    }
}

/// The seven projections of a decoder layer, by their Hugging Face names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// Module name as in Hugging Face / PEFT (`q_proj`, ...).
    pub fn hf_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// Full parameter prefix inside layer `i`.
    pub fn hf_path(self, layer: usize) -> String {
        let block = if matches!(self, Proj::Gate | Proj::Up | Proj::Down) {
            "mlp"
        } else {
            "self_attn"
        };
        format!("model.layers.{layer}.{block}.{}", self.hf_name())
    }

    /// `[out, in]` of this projection.
    pub fn shape(self, c: &Config) -> (usize, usize) {
        match self {
            Proj::Q => (c.q_dim(), c.hidden),
            Proj::K | Proj::V => (c.kv_dim(), c.hidden),
            Proj::O => (c.hidden, c.q_dim()),
            Proj::Gate | Proj::Up => (c.ffn, c.hidden),
            Proj::Down => (c.hidden, c.ffn),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// Indexed by `Proj as usize`.
    pub proj: [Linear; 7],
}

impl Layer {
    pub fn get(&self, p: Proj) -> &Linear {
        &self.proj[p as usize]
    }
}

#[derive(Clone, Debug)]
pub struct Weights {
    /// `[vocab, hidden]`.
    pub embed: Vec<f32>,
    pub layers: Vec<Layer>,
    pub final_norm: Vec<f32>,
    /// `None` when the LM head is tied to the embeddings.
    pub lm_head: Option<Vec<f32>>,
    /// The LM head packed for generation, made on first use.
    lm_head_packed: OnceLock<Packed>,
}

impl Weights {
    /// The LM head matrix `[vocab, hidden]`.
    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }

    /// The LM head packed for the row-independent generation kernel.
    pub fn lm_head_packed(&self) -> &Packed {
        self.lm_head_packed.get_or_init(|| {
            let hidden = self.final_norm.len();
            Packed::new(self.lm_head(), self.lm_head().len() / hidden, hidden)
        })
    }
}

/// Where tensors come from. Names are Hugging Face names; shapes are PyTorch order.
pub trait TensorSource {
    /// Load a tensor as f32, failing if it is missing or has another shape.
    fn tensor(&self, hf_name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Whether a tensor exists.
    fn has(&self, hf_name: &str) -> bool;
}

/// Load every weight of `config` from `src`.
pub fn load(config: &Config, src: &dyn TensorSource) -> Result<Weights> {
    let c = config;
    let embed = src.tensor("model.embed_tokens.weight", &[c.vocab, c.hidden])?;
    let mut layers = Vec::with_capacity(c.layers);
    for i in 0..c.layers {
        let linear = |p: Proj| -> Result<Linear> {
            let (out_dim, in_dim) = p.shape(c);
            let path = p.hf_path(i);
            let w = src.tensor(&format!("{path}.weight"), &[out_dim, in_dim])?;
            let bias_name = format!("{path}.bias");
            let wants_bias = c.arch == Arch::Qwen2 && matches!(p, Proj::Q | Proj::K | Proj::V);
            let b = if wants_bias || src.has(&bias_name) {
                Some(src.tensor(&bias_name, &[out_dim])?)
            } else {
                None
            };
            Ok(Linear::new(w, b, out_dim, in_dim))
        };
        let proj = [
            linear(Proj::Q)?,
            linear(Proj::K)?,
            linear(Proj::V)?,
            linear(Proj::O)?,
            linear(Proj::Gate)?,
            linear(Proj::Up)?,
            linear(Proj::Down)?,
        ];
        layers.push(Layer {
            attn_norm: src.tensor(
                &format!("model.layers.{i}.input_layernorm.weight"),
                &[c.hidden],
            )?,
            ffn_norm: src.tensor(
                &format!("model.layers.{i}.post_attention_layernorm.weight"),
                &[c.hidden],
            )?,
            proj,
        });
    }
    let final_norm = src.tensor("model.norm.weight", &[c.hidden])?;
    let lm_head = if c.tie_embeddings {
        None
    } else if src.has("lm_head.weight") {
        Some(src.tensor("lm_head.weight", &[c.vocab, c.hidden])?)
    } else {
        bail!("tensor \"lm_head.weight\" is missing and the config does not tie embeddings");
    };
    Ok(Weights {
        embed,
        layers,
        final_norm,
        lm_head,
        lm_head_packed: OnceLock::new(),
    })
}
