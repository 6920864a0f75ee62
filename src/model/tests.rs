//! Parity of the runtime with the reference implementation (Hugging Face transformers)
//! on SmolLM2-135M-Instruct, and the invariants of the KV cache and of batching.

use super::transformer::{KvCache, Logits, Matmul, Workspace};
use crate::sample::{self, FinishReason, GenerateOptions, SamplingParams};
use crate::testutil::smollm2;
use crate::tokenize::Message;
use serde::Deserialize;

const FORWARD: &str = include_str!("../../tests/fixtures/smollm2/forward.json");
const GREEDY: &str = include_str!("../../tests/fixtures/smollm2/greedy.json");
const CHATS: &str = include_str!("../../tests/fixtures/smollm2/chat_template.json");

#[derive(Deserialize)]
struct ForwardRef {
    sequences: Vec<SeqRef>,
}

#[derive(Deserialize)]
struct SeqRef {
    name: String,
    ids: Vec<u32>,
    next_token_logprobs: Vec<f64>,
    mean_nll: f64,
    top_logits: Vec<TopRef>,
    hidden_rms: HiddenRms,
}

#[derive(Deserialize)]
struct TopRef {
    position: usize,
    ids: Vec<u32>,
    logits: Vec<f32>,
}

#[derive(Deserialize)]
struct HiddenRms {
    embeddings: f32,
    after_layer_0: f32,
    after_layer_14: f32,
    final_norm: f32,
}

#[derive(Deserialize)]
struct GreedyRef {
    messages: Vec<Message>,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct ChatRef {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    ids: Vec<u32>,
}

fn forward_ref() -> ForwardRef {
    serde_json::from_str(FORWARD).expect("forward fixture parses")
}

#[test]
fn next_token_logprobs_match_reference() {
    let m = smollm2();
    for s in forward_ref().sequences {
        let lp = m.next_token_logprobs(&s.ids).unwrap();
        assert_eq!(lp.len(), s.next_token_logprobs.len());
        for (i, (a, b)) in lp.iter().zip(&s.next_token_logprobs).enumerate() {
            assert!((a - b).abs() < 2e-4, "{} position {i}: {a} vs {b}", s.name);
        }
        let nll = -lp.iter().sum::<f64>() / lp.len() as f64;
        assert!(
            (nll - s.mean_nll).abs() < 1e-4,
            "{}: mean NLL {nll} vs {}",
            s.name,
            s.mean_nll
        );
    }
}

#[test]
fn top_logits_and_residual_rms_match_reference() {
    let m = smollm2();
    let v = m.config.vocab;
    for s in forward_ref().sequences {
        let mut cache = KvCache::new(m, 1, s.ids.len());
        let mut ws = Workspace::default();
        let mut probe = Vec::new();
        let logits = m
            .forward(
                &mut ws,
                &mut cache,
                &[(0, &s.ids)],
                Logits::All,
                Matmul::Gemm,
                Some(&mut probe),
            )
            .unwrap();
        for t in &s.top_logits {
            let row = &logits[t.position * v..(t.position + 1) * v];
            let mut order: Vec<u32> = (0..v as u32).collect();
            order.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]));
            assert_eq!(
                &order[..3],
                &t.ids[..3],
                "{} top ids at {}",
                s.name,
                t.position
            );
            for (&id, &want) in t.ids.iter().zip(&t.logits) {
                let got = row[id as usize];
                assert!(
                    (got - want).abs() < 1e-3,
                    "{} logit {id}: {got} vs {want}",
                    s.name
                );
            }
        }
        // probe: embeddings, after each of the 30 layers, final norm.
        assert_eq!(probe.len(), m.config.layers + 2);
        let h = &s.hidden_rms;
        let pairs = [
            (probe[0], h.embeddings),
            (probe[1], h.after_layer_0),
            (probe[15], h.after_layer_14),
            (probe[31], h.final_norm),
        ];
        for (got, want) in pairs {
            assert!(
                ((got - want) / want).abs() < 1e-3,
                "{}: rms {got} vs {want}",
                s.name
            );
        }
    }
}

#[test]
fn chat_prompts_tokenize_like_reference() {
    let m = smollm2();
    let cases: Vec<ChatRef> = serde_json::from_str(CHATS).unwrap();
    for c in cases.iter().filter(|c| c.add_generation_prompt) {
        assert_eq!(m.chat_prompt(&c.messages).unwrap(), c.ids);
    }
    assert_eq!(m.stop_ids, vec![2], "eos and <|im_end|> are the same token");
}

#[test]
fn greedy_decoding_matches_reference() {
    let m = smollm2();
    let cases: Vec<GreedyRef> = serde_json::from_str(GREEDY).unwrap();
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 40,
        ..SamplingParams::default()
    };
    let prompts: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| m.chat_prompt(&c.messages).unwrap())
        .collect();
    for (p, c) in prompts.iter().zip(&cases) {
        assert_eq!(p, &c.prompt_ids);
    }
    let out = sample::generate(m, &prompts, &params, GenerateOptions::default()).unwrap();
    for (s, c) in out.iter().zip(&cases) {
        // The reference guarantees 20; all 40 agree here.
        assert_eq!(s.ids, c.greedy_ids);
        assert_eq!(s.finish, FinishReason::Length);
    }
}

#[test]
fn decoding_with_the_cache_equals_a_full_forward() {
    let m = smollm2();
    let v = m.config.vocab;
    let ids = &forward_ref().sequences[1].ids;
    let mut ws = Workspace::default();
    let mut full_cache = KvCache::new(m, 1, ids.len());
    let full = m
        .forward(
            &mut ws,
            &mut full_cache,
            &[(0, ids)],
            Logits::All,
            Matmul::Gemm,
            None,
        )
        .unwrap()
        .to_vec();
    // Prefill 5 tokens, then one token at a time.
    let mut cache = KvCache::new(m, 1, ids.len());
    let first = m
        .forward(
            &mut ws,
            &mut cache,
            &[(0, &ids[..5])],
            Logits::All,
            Matmul::Gemm,
            None,
        )
        .unwrap()
        .to_vec();
    let mut rows = vec![first];
    for t in 5..ids.len() {
        rows.push(
            m.forward(
                &mut ws,
                &mut cache,
                &[(0, &ids[t..t + 1])],
                Logits::Last,
                Matmul::RowIndependent,
                None,
            )
            .unwrap()
            .to_vec(),
        );
    }
    let step: Vec<f32> = rows.concat();
    assert_eq!(step.len(), full.len());
    assert_eq!(cache.len(0), ids.len());
    let worst = step
        .iter()
        .zip(&full)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "cached decode differs by {worst} (vocab {v})");
}

#[test]
fn batched_ragged_sampling_equals_one_at_a_time() {
    let m = smollm2();
    let texts = [
        "Hi",
        "Write a haiku about the sea.",
        "What is 2+2? Answer briefly, please.",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            m.chat_prompt(&[Message {
                role: "user".into(),
                content: (*t).into(),
            }])
            .unwrap()
        })
        .collect();
    assert!(prompts[0].len() != prompts[1].len());
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        max_new_tokens: 24,
        seed: 42,
        ..SamplingParams::default()
    };
    let batched = sample::generate(
        m,
        &prompts,
        &params,
        GenerateOptions {
            n: 2,
            max_batch: 6,
            ..GenerateOptions::default()
        },
    )
    .unwrap();
    assert_eq!(batched.len(), 6);
    for (i, p) in prompts.iter().enumerate() {
        let alone = sample::generate(
            m,
            std::slice::from_ref(p),
            &params,
            GenerateOptions {
                n: 2,
                max_batch: 1,
                first_prompt_index: i,
                on_token: None,
            },
        )
        .unwrap();
        for (a, b) in alone.iter().zip(&batched[2 * i..2 * i + 2]) {
            assert_eq!(a.ids, b.ids, "prompt {i} sample {}", a.sample_index);
            assert_eq!(a.finish, b.finish);
        }
    }
    // Two samples of one prompt differ (distinct seeds) and a stop ends with the stop id.
    assert_ne!(batched[2].ids, batched[3].ids);
    for s in &batched {
        match s.finish {
            FinishReason::Stop => assert!(m.stop_ids.contains(s.ids.last().unwrap())),
            FinishReason::Length => assert_eq!(s.ids.len(), 24),
        }
    }
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let m = smollm2();
    let long = vec![1u32; m.context_len()];
    let err = sample::generate(
        m,
        &[long],
        &SamplingParams::default(),
        GenerateOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("exceeds the model context of 8192"), "{err}");
}
