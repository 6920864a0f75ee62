//! Batched generation over the KV cache: many prompts of different lengths, `n`
//! samples each, greedy / temperature / top-k / top-p sampling with per-sample seeds,
//! per-sequence stop tokens and a finish reason for every sample.

mod sampler;

pub use sampler::Sampler;

use crate::model::Model;
use crate::model::transformer::{KvCache, Logits, Matmul, Workspace};
use anyhow::{Result, bail};
use rayon::prelude::*;
use serde::Serialize;

/// How to pick tokens and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Nucleus sampling: smallest set with probability ≥ `top_p` (1 = off).
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// Stop tokens are suppressed until this many tokens exist (as Hugging Face does).
    pub min_new_tokens: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 256,
            min_new_tokens: 0,
            seed: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token was produced (it is the last id of the sample).
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

/// One generated continuation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub prompt_index: usize,
    pub sample_index: usize,
    /// New token ids; ends with the stop token when `finish` is `Stop`.
    pub ids: Vec<u32>,
    pub finish: FinishReason,
}

impl Sample {
    /// The new ids without the trailing stop token.
    pub fn reply_ids(&self) -> &[u32] {
        match self.finish {
            FinishReason::Stop => &self.ids[..self.ids.len() - 1],
            FinishReason::Length => &self.ids[..],
        }
    }
}

/// Seed of sample `j` of prompt `i`: independent of batching, so a prompt sampled
/// alone or in a batch gives the same tokens.
pub fn sample_seed(seed: u64, prompt_index: usize, sample_index: usize) -> u64 {
    let mut z = seed
        ^ (prompt_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (sample_index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    // splitmix64 finalizer
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Options of a generation call besides sampling.
pub struct GenerateOptions<'a> {
    /// Samples per prompt.
    pub n: usize,
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Prompt index offset used for seeding (so callers can split work).
    pub first_prompt_index: usize,
    /// Called with (sequence index in the output, token id) as tokens are produced.
    pub on_token: Option<&'a mut dyn FnMut(usize, u32)>,
}

impl Default for GenerateOptions<'_> {
    fn default() -> Self {
        GenerateOptions {
            n: 1,
            max_batch: 16,
            first_prompt_index: 0,
            on_token: None,
        }
    }
}

struct Seq {
    out: usize,
    prompt: usize,
    sampler: Sampler,
    ids: Vec<u32>,
    /// Token to feed at the next decode step.
    next: u32,
    finish: Option<FinishReason>,
}

/// Generate `opts.n` samples for every prompt. Output order: prompt-major, then sample.
///
/// Each prompt but its last token is prefilled once (all prompts of a wave in one
/// batched pass) and its cache copied to its samples; every sampled token then comes
/// from a decode step. All products use [`Matmul::RowIndependent`], so with per-sample
/// seeds the output does not depend on batching.
pub fn generate(
    model: &Model,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    mut opts: GenerateOptions<'_>,
) -> Result<Vec<Sample>> {
    if opts.n == 0 || prompts.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = model.context_len();
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            bail!("prompt {i} is empty");
        }
        if p.len() + params.max_new_tokens > ctx {
            bail!(
                "prompt {i} has {} tokens; with max_new_tokens {} it exceeds the model context of {ctx}",
                p.len(),
                params.max_new_tokens
            );
        }
    }
    let total = prompts.len() * opts.n;
    let width = opts.max_batch.max(1).min(total);
    let capacity = prompts.iter().map(Vec::len).max().unwrap_or(0) + params.max_new_tokens;
    let mut cache = KvCache::new(model, width, capacity);
    let mut ws = Workspace::default();
    let vocab = model.config.vocab;
    let mut results: Vec<Option<Sample>> = vec![None; total];
    let mut batch: Vec<(usize, [u32; 1])> = Vec::with_capacity(width);
    let mut wave_start = 0;
    while wave_start < total {
        let wave_end = (wave_start + width).min(total);
        let mut seqs: Vec<Seq> = (wave_start..wave_end)
            .map(|out| {
                let (prompt, sample) = (out / opts.n, out % opts.n);
                let seed = sample_seed(params.seed, opts.first_prompt_index + prompt, sample);
                Seq {
                    out,
                    prompt,
                    sampler: Sampler::new(params, seed, vocab),
                    ids: Vec::with_capacity(params.max_new_tokens),
                    next: *prompts[prompt].last().expect("prompts are not empty"),
                    finish: None,
                }
            })
            .collect();
        // The first slot of each prompt in this wave prefills it; the others copy it.
        let leaders: Vec<usize> = (0..seqs.len())
            .filter(|&i| i == 0 || seqs[i - 1].prompt != seqs[i].prompt)
            .collect();
        for slot in 0..seqs.len() {
            cache.clear(slot);
        }
        let prefill: Vec<(usize, &[u32])> = leaders
            .iter()
            .map(|&slot| {
                let p = &prompts[seqs[slot].prompt];
                (slot, &p[..p.len() - 1])
            })
            .filter(|(_, t)| !t.is_empty())
            .collect();
        if !prefill.is_empty() {
            model.forward(
                &mut ws,
                &mut cache,
                &prefill,
                Logits::None,
                Matmul::RowIndependent,
                None,
            )?;
        }
        for slot in 0..seqs.len() {
            let leader = leaders[leaders.partition_point(|&l| l <= slot) - 1];
            cache.copy_slot(leader, slot);
        }
        loop {
            batch.clear();
            for (slot, s) in seqs.iter().enumerate() {
                if s.finish.is_none() {
                    batch.push((slot, [s.next]));
                }
            }
            if batch.is_empty() {
                break;
            }
            let refs: Vec<(usize, &[u32])> = batch.iter().map(|(s, t)| (*s, &t[..])).collect();
            let logits = model.forward(
                &mut ws,
                &mut cache,
                &refs,
                Logits::Last,
                Matmul::RowIndependent,
                None,
            )?;
            // Sequences sample independently (own seeds), so in parallel.
            let mut active: Vec<&mut Seq> =
                seqs.iter_mut().filter(|s| s.finish.is_none()).collect();
            active
                .par_iter_mut()
                .zip(logits.par_chunks(vocab))
                .for_each(|(seq, l)| push_token(model, params, seq, l));
            if let Some(cb) = opts.on_token.as_deref_mut() {
                for seq in &active {
                    cb(seq.out, *seq.ids.last().expect("a token was pushed"));
                }
            }
        }
        for s in seqs {
            results[s.out] = Some(Sample {
                prompt_index: s.prompt,
                sample_index: s.out % opts.n,
                ids: s.ids,
                finish: s.finish.expect("every sequence finished"),
            });
        }
        wave_start = wave_end;
    }
    Ok(results.into_iter().map(|s| s.expect("filled")).collect())
}

/// Sample the next token of `seq` from its logits row and update its state.
fn push_token(model: &Model, params: &SamplingParams, seq: &mut Seq, logits: &[f32]) {
    let suppress: &[u32] = if seq.ids.len() < params.min_new_tokens {
        &model.stop_ids
    } else {
        &[]
    };
    let tok = seq.sampler.sample(&logits[..model.config.vocab], suppress);
    seq.ids.push(tok);
    seq.next = tok;
    if model.stop_ids.contains(&tok) {
        seq.finish = Some(FinishReason::Stop);
    } else if seq.ids.len() >= params.max_new_tokens {
        seq.finish = Some(FinishReason::Length);
    }
}
