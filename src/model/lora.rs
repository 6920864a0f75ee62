//! LoRA adapters over the base weights: `y = x Wᵀ + (α/r) · (x Aᵀ) Bᵀ` on a chosen set
//! of projections, PEFT's initialisation, and merging into a copy of the weights.

use super::config::Config;
use super::peft::{self, AdapterConfig, AdapterFiles};
use super::weights::{Proj, Weights};
use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Shape and placement of an adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    /// Dropout on the adapter's input during training (PEFT `lora_dropout`).
    pub dropout: f32,
    pub targets: Vec<Proj>,
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        self.alpha / self.r as f32
    }
}

/// `A` (`[r, in]`) and `B` (`[out, r]`) of one projection, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub in_dim: usize,
    pub out_dim: usize,
}

/// An adapter: one optional pair per (layer, projection).
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    pub config: LoraConfig,
    /// `pairs[layer][proj as usize]`.
    pub pairs: Vec<[Option<LoraPair>; 7]>,
}

impl Adapter {
    /// A fresh adapter as PEFT initialises one: `A ~ U(-1/√in, 1/√in)` (Kaiming-uniform
    /// with a = √5), `B = 0`, so the adapted model starts equal to the base model.
    pub fn init(config: LoraConfig, model: &Config, seed: u64) -> Result<Adapter> {
        if config.r == 0 {
            bail!("LoRA rank must be at least 1");
        }
        if config.targets.is_empty() {
            bail!("LoRA needs at least one target module");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pairs = (0..model.layers)
            .map(|_| {
                let mut layer: [Option<LoraPair>; 7] = Default::default();
                for &p in &config.targets {
                    let (out_dim, in_dim) = p.shape(model);
                    let bound = 1.0 / (in_dim as f32).sqrt();
                    let a = (0..config.r * in_dim)
                        .map(|_| rng.random_range(-bound..bound))
                        .collect();
                    layer[p as usize] = Some(LoraPair {
                        a,
                        b: vec![0.0; out_dim * config.r],
                        in_dim,
                        out_dim,
                    });
                }
                layer
            })
            .collect();
        Ok(Adapter { config, pairs })
    }

    pub fn get(&self, layer: usize, p: Proj) -> Option<&LoraPair> {
        self.pairs.get(layer).and_then(|l| l[p as usize].as_ref())
    }

    /// Every pair with its (layer, projection), in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, Proj, &LoraPair)> {
        self.pairs.iter().enumerate().flat_map(|(l, ps)| {
            Proj::ALL
                .iter()
                .filter_map(move |&p| ps[p as usize].as_ref().map(|pair| (l, p, pair)))
        })
    }

    /// Mutable access to every pair, in the order of [`Adapter::iter`].
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut LoraPair> {
        self.pairs.iter_mut().flat_map(|ps| {
            Proj::ALL
                .iter()
                .zip(ps.iter_mut())
                .filter_map(|(_, p)| p.as_mut())
        })
    }

    /// Lengths of every A and B, in the order of [`Adapter::iter`] (optimizer state).
    pub fn param_sizes(&self) -> Vec<usize> {
        self.iter()
            .flat_map(|(_, _, p)| [p.a.len(), p.b.len()])
            .collect()
    }

    /// Check that the adapter fits `model` (layer count and every pair's shape).
    pub fn check_fits(&self, model: &Config) -> Result<()> {
        if self.pairs.len() != model.layers {
            bail!(
                "adapter has {} layers but the model has {}",
                self.pairs.len(),
                model.layers
            );
        }
        for (l, p, pair) in self.iter() {
            let (out_dim, in_dim) = p.shape(model);
            let r = self.config.r;
            if pair.in_dim != in_dim
                || pair.out_dim != out_dim
                || pair.a.len() != r * in_dim
                || pair.b.len() != out_dim * r
            {
                bail!(
                    "adapter layer {l} {}: A/B are [{r}, {}]/[{}, {r}] but the model's \
                     projection is [{out_dim}, {in_dim}]",
                    p.hf_name(),
                    pair.in_dim,
                    pair.out_dim
                );
            }
        }
        Ok(())
    }

    /// The adapter as PEFT files describe it.
    pub fn to_files(&self, base_model: &str) -> AdapterFiles {
        let mut names: Vec<String> = self
            .config
            .targets
            .iter()
            .map(|p| p.hf_name().to_owned())
            .collect();
        names.sort();
        AdapterFiles {
            config: AdapterConfig {
                r: self.config.r,
                alpha: self.config.alpha,
                dropout: self.config.dropout,
                target_modules: names,
                base_model: base_model.to_owned(),
            },
            pairs: self
                .iter()
                .map(|(l, p, pair)| ((l, p.hf_name().to_owned()), pair.clone()))
                .collect(),
        }
    }

    /// Build from PEFT files, checking that every pair fits `model`.
    pub fn from_files(files: AdapterFiles, model: &Config) -> Result<Adapter> {
        let targets = files
            .config
            .target_modules
            .iter()
            .map(|name| {
                Proj::ALL
                    .into_iter()
                    .find(|p| p.hf_name() == name)
                    .with_context(|| format!("unknown target module {name:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut targets = targets;
        targets.sort();
        let mut pairs: Vec<[Option<LoraPair>; 7]> =
            (0..model.layers).map(|_| Default::default()).collect();
        for ((l, name), pair) in files.pairs {
            let p = targets
                .iter()
                .copied()
                .find(|p| p.hf_name() == name)
                .with_context(|| format!("layer {l}: module {name:?} is not a target"))?;
            let slot = pairs.get_mut(l).with_context(|| {
                format!(
                    "adapter has layer {l} but the model has {} layers",
                    model.layers
                )
            })?;
            slot[p as usize] = Some(pair);
        }
        let adapter = Adapter {
            config: LoraConfig {
                r: files.config.r,
                alpha: files.config.alpha,
                dropout: files.config.dropout,
                targets,
            },
            pairs,
        };
        adapter.check_fits(model)?;
        Ok(adapter)
    }

    /// Load a PEFT adapter directory for `model`, refusing one made for other shapes.
    pub fn load(dir: &Path, model: &Config) -> Result<Adapter> {
        let files = peft::load(dir)?;
        Adapter::from_files(files, model)
            .with_context(|| format!("adapter {} does not fit the model", dir.display()))
    }

    /// Save as a PEFT adapter directory (atomic file writes).
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<()> {
        peft::save(dir, &self.to_files(base_model))
    }

    /// A copy of `weights` with `W + (α/r)·B·A` in every adapted projection.
    pub fn merged(&self, weights: &Weights) -> Weights {
        let mut out = weights.clone();
        let s = self.config.scale();
        let r = self.config.r;
        for (l, p, pair) in self.iter() {
            let lin = &mut out.layers[l].proj[p as usize];
            let mut delta = vec![0f32; pair.out_dim * pair.in_dim];
            crate::kernels::matmul(
                &mut delta,
                crate::kernels::MatRef::new(&pair.b, pair.out_dim, r),
                crate::kernels::MatRef::new(&pair.a, r, pair.in_dim),
                s,
                false,
            );
            let mut w = std::mem::take(&mut lin.w);
            for (wv, dv) in w.iter_mut().zip(&delta) {
                *wv += dv;
            }
            *lin = super::weights::Linear::new(w, lin.b.take(), lin.out_dim, lin.in_dim);
        }
        out
    }
}
