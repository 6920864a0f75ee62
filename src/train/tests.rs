//! The training pass against golden LoRA gradients from PyTorch + PEFT, and its
//! backward against central finite differences on a tiny model.

use super::pass::{self, Example};
use crate::model::lora::{Adapter, LoraConfig, LoraPair};
use crate::model::weights::Proj;
use crate::testutil::smollm2;
use serde::Deserialize;

const LORA_GRAD: &str = include_str!("../../tests/fixtures/smollm2/lora_grad.json");

#[derive(Deserialize)]
struct GradRef {
    ids: Vec<u32>,
    response_start: usize,
    loss_mean_response_nll: f64,
    grads: Vec<GradEntry>,
}

#[derive(Deserialize)]
struct GradEntry {
    layer: usize,
    module: String,
    #[serde(rename = "A_grad_norm")]
    a_norm: f64,
    #[serde(rename = "B_grad_norm")]
    b_norm: f64,
    #[serde(rename = "A_grad_00")]
    a00: f64,
    #[serde(rename = "B_grad_00")]
    b00: f64,
    #[serde(rename = "A_grad_37_5")]
    a35: f64,
    #[serde(rename = "B_grad_5_3")]
    b53: f64,
}

/// The reference's formula adapter: `W[i][j] = scale·sin(0.37i + 0.11j + 1.3·layer + salt)`
/// in f64, cast to f32; A: scale 0.02, salt q 0, k 1, v 2, o 3; B: scale 0.01, salt + 0.5.
fn formula_adapter(model: &crate::model::Model, r: usize, alpha: f32) -> Adapter {
    let targets = vec![Proj::Q, Proj::K, Proj::V, Proj::O];
    let mut a = Adapter::init(
        LoraConfig {
            r,
            alpha,
            dropout: 0.0,
            targets: targets.clone(),
        },
        &model.config,
        0,
    )
    .unwrap();
    let fill = |rows: usize, cols: usize, scale: f64, layer: usize, salt: f64| -> Vec<f32> {
        (0..rows * cols)
            .map(|k| {
                let (i, j) = ((k / cols) as f64, (k % cols) as f64);
                (scale * (0.37 * i + 0.11 * j + 1.3 * layer as f64 + salt).sin()) as f32
            })
            .collect()
    };
    for (l, layer) in a.pairs.iter_mut().enumerate() {
        for (salt, p) in targets.iter().enumerate() {
            let pair: &mut LoraPair = layer[*p as usize].as_mut().unwrap();
            pair.a = fill(r, pair.in_dim, 0.02, l, salt as f64);
            pair.b = fill(pair.out_dim, r, 0.01, l, salt as f64 + 0.5);
        }
    }
    a
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn lora_loss_and_gradients_match_peft() {
    let m = smollm2();
    let gold: GradRef = serde_json::from_str(LORA_GRAD).unwrap();
    let adapter = formula_adapter(m, 8, 16.0);
    let batch = [Example {
        ids: &gold.ids,
        label_from: gold.response_start,
    }];
    let (lp, tape) = pass::forward(m, &adapter, &batch, None).unwrap();
    let count = lp.counts[0];
    assert_eq!(count, 22);
    let loss = -lp.sums[0] / count as f64;
    assert!(
        (loss - gold.loss_mean_response_nll).abs() < 1e-4,
        "loss {loss} vs {}",
        gold.loss_mean_response_nll
    );
    let mut grads = pass::zero_grads(&adapter);
    pass::backward(m, &adapter, tape, &[-1.0 / count as f32], &mut grads).unwrap();
    assert_eq!(grads.iter().count(), 4 * m.config.layers);
    for (l, p, g) in grads.iter() {
        assert!(
            norm(&g.a) > 0.0 && norm(&g.b) > 0.0,
            "layer {l} {} has a zero gradient",
            p.hf_name()
        );
    }
    for e in &gold.grads {
        let p = Proj::ALL
            .into_iter()
            .find(|p| p.hf_name() == e.module)
            .unwrap();
        let g = grads.get(e.layer, p).unwrap();
        let what = format!("layer {} {}", e.layer, e.module);
        assert!(
            rel(norm(&g.a), e.a_norm) < 1e-3,
            "{what} |dA| {} vs {}",
            norm(&g.a),
            e.a_norm
        );
        assert!(
            rel(norm(&g.b), e.b_norm) < 1e-3,
            "{what} |dB| {} vs {}",
            norm(&g.b),
            e.b_norm
        );
        // Entries within 1e-3 of their value, or of the tensor's RMS entry when they are
        // much smaller than it (then f32 rounding dominates).
        let ent = |got: f32, want: f64, tensor: &[f32], name: &str| {
            let rms = norm(tensor) / (tensor.len() as f64).sqrt();
            let tol = 1e-3 * want.abs().max(rms);
            assert!(
                (got as f64 - want).abs() < tol,
                "{what} {name}: {got} vs {want}"
            );
        };
        ent(g.a[0], e.a00, &g.a, "dA[0][0]");
        ent(g.a[3 * g.in_dim + 5], e.a35, &g.a, "dA[3][5]");
        ent(g.b[0], e.b00, &g.b, "dB[0][0]");
        ent(g.b[5 * 8 + 3], e.b53, &g.b, "dB[5][3]");
    }
}

/// Rank `r`, α = 2r, on q and v, no dropout.
fn qv_lora(r: usize) -> LoraConfig {
    LoraConfig {
        r,
        alpha: 2.0 * r as f32,
        dropout: 0.0,
        targets: vec![Proj::Q, Proj::V],
    }
}

/// A tiny model's adapter on all seven projections with non-zero A and B.
fn tiny_setup() -> (crate::model::Model, Adapter) {
    let m = crate::model::tiny::model();
    let cfg = LoraConfig {
        r: 3,
        alpha: 6.0,
        dropout: 0.0,
        targets: Proj::ALL.to_vec(),
    };
    let mut a = Adapter::init(cfg, &m.config, 5).unwrap();
    for (k, p) in a.iter_mut().enumerate() {
        for (i, v) in p.b.iter_mut().enumerate() {
            *v = 0.3 * ((i as f32) * 0.77 + k as f32).sin();
        }
    }
    (m, a)
}

/// `L = Σ wᵢ·sumsᵢ` over two ragged sequences, in f64.
fn tiny_loss(m: &crate::model::Model, a: &Adapter, dropout: Option<pass::Dropout>) -> f64 {
    let (s1, s2) = tiny_seqs();
    let batch = tiny_batch(&s1, &s2);
    let (lp, _) = pass::forward(m, a, &batch, dropout).unwrap();
    -0.7 * lp.sums[0] + 0.3 * lp.sums[1]
}

/// The two ragged sequences as a batch: labels from position 3 and from position 1.
fn tiny_batch<'a>(s1: &'a [u32], s2: &'a [u32]) -> [Example<'a>; 2] {
    [
        Example {
            ids: s1,
            label_from: 3,
        },
        Example {
            ids: s2,
            label_from: 1,
        },
    ]
}

fn tiny_seqs() -> (Vec<u32>, Vec<u32>) {
    let s1: Vec<u32> = (0..11).map(|i| 3 + (i * 37 % 200) as u32).collect();
    let s2: Vec<u32> = (0..7).map(|i| 10 + (i * 53 % 180) as u32).collect();
    (s1, s2)
}

fn check_against_finite_differences(dropout: Option<pass::Dropout>) {
    let (m, a) = tiny_setup();
    let (s1, s2) = tiny_seqs();
    let batch = tiny_batch(&s1, &s2);
    let (_, tape) = pass::forward(&m, &a, &batch, dropout).unwrap();
    let mut grads = pass::zero_grads(&a);
    pass::backward(&m, &a, tape, &[-0.7, 0.3], &mut grads).unwrap();
    let eps = 1e-2f32;
    let mut checked = 0;
    for (l, p, _) in a.iter() {
        for which in ["A", "B"] {
            // Direction: a fixed pseudo-random pattern on this one tensor.
            let dir = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| (i as f32 * 1.618 + l as f32 * 0.3 + p as usize as f32).sin())
                    .collect()
            };
            let g = grads.get(l, p).unwrap();
            let (gt, len) = if which == "A" {
                (&g.a, g.a.len())
            } else {
                (&g.b, g.b.len())
            };
            let d = dir(len);
            let analytic: f64 = gt.iter().zip(&d).map(|(x, y)| *x as f64 * *y as f64).sum();
            let shifted = |step: f32| {
                let mut b = a.clone();
                let pair = b.pairs[l][p as usize].as_mut().unwrap();
                let t = if which == "A" {
                    &mut pair.a
                } else {
                    &mut pair.b
                };
                for (v, dv) in t.iter_mut().zip(&d) {
                    *v += step * dv;
                }
                tiny_loss(&m, &b, dropout)
            };
            // Central differences at eps and eps/2, Richardson-extrapolated: the O(eps²)
            // truncation error cancels (at eps alone it reached 2 % on one SwiGLU term).
            let central = |h: f32| (shifted(h) - shifted(-h)) / (2.0 * h as f64);
            let fd = (4.0 * central(eps / 2.0) - central(eps)) / 3.0;
            assert!(
                (fd - analytic).abs() <= 2e-2 * analytic.abs().max(1e-3),
                "layer {l} {} d{which}: finite difference {fd} vs backward {analytic}",
                p.hf_name()
            );
            assert!(
                analytic.abs() > 1e-4,
                "layer {l} {} d{which} is ~0",
                p.hf_name()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * 7 * crate::model::tiny::LAYERS);
}

#[test]
fn lm_head_chunking_changes_no_result() {
    // 14 label rows: in chunks of 3 (the last one short) and in one chunk.
    let (m, a) = tiny_setup();
    let (s1, s2) = tiny_seqs();
    let batch = tiny_batch(&s1, &s2);
    let grads_of = |chunk: usize| {
        let (lp, tape) = pass::forward_with_head_chunk(&m, &a, &batch, None, chunk).unwrap();
        let mut g = pass::zero_grads(&a);
        pass::backward(&m, &a, tape, &[-0.7, 0.3], &mut g).unwrap();
        (lp, g)
    };
    let (lp_small, g_small) = grads_of(3);
    let (lp_whole, g_whole) = grads_of(256);
    assert_eq!(lp_small.counts, lp_whole.counts);
    for (x, y) in lp_small.sums.iter().zip(&lp_whole.sums) {
        assert!((x - y).abs() <= 1e-5 * y.abs(), "{x} vs {y}");
    }
    for ((l, p, x), (_, _, y)) in g_small.iter().zip(g_whole.iter()) {
        for (u, v) in [(&x.a, &y.a), (&x.b, &y.b)] {
            let scale = norm(v);
            assert!(scale > 0.0);
            let diff: Vec<f32> = u.iter().zip(v.iter()).map(|(s, t)| s - t).collect();
            assert!(norm(&diff) <= 1e-5 * scale, "layer {l} {}", p.hf_name());
        }
    }
}

#[test]
fn backward_matches_finite_differences_on_every_projection() {
    check_against_finite_differences(None);
}

#[test]
fn backward_matches_finite_differences_with_dropout() {
    check_against_finite_differences(Some(pass::Dropout { p: 0.3, seed: 9 }));
}

#[test]
fn fresh_adapter_equals_base_model_and_merged_equals_unmerged() {
    let m = smollm2();
    let gold: GradRef = serde_json::from_str(LORA_GRAD).unwrap();
    let base_lp: f64 = m.next_token_logprobs(&gold.ids).unwrap()[gold.response_start - 1..]
        .iter()
        .sum();
    let fresh = Adapter::init(qv_lora(8), &m.config, 1).unwrap();
    let batch = [Example {
        ids: &gold.ids,
        label_from: gold.response_start,
    }];
    let (lp, _) = pass::forward(m, &fresh, &batch, None).unwrap();
    assert!(
        (lp.sums[0] - base_lp).abs() < 1e-3,
        "B = 0: {} vs base {base_lp}",
        lp.sums[0]
    );

    let formula = formula_adapter(m, 8, 16.0);
    let (lp, _) = pass::forward(m, &formula, &batch, None).unwrap();
    let merged = crate::model::Model {
        weights: formula.merged(&m.weights),
        ..crate::model::Model::load(&crate::testutil::smollm2_path()).unwrap()
    };
    let merged_lp: f64 = merged.next_token_logprobs(&gold.ids).unwrap()[gold.response_start - 1..]
        .iter()
        .sum();
    assert!(
        (lp.sums[0] - merged_lp).abs() < 2e-3,
        "unmerged {} vs merged {merged_lp}",
        lp.sums[0]
    );
    assert!(
        (lp.sums[0] - base_lp).abs() > 0.1,
        "the adapter changes the model"
    );
}

#[test]
fn saved_adapter_loads_back_identically() {
    let m = smollm2();
    let a = formula_adapter(m, 8, 16.0);
    let dir = tempfile::tempdir().unwrap();
    a.save(dir.path(), "SmolLM2-135M-Instruct").unwrap();
    let b = Adapter::load(dir.path(), &m.config).unwrap();
    assert_eq!(a.config, b.config);
    assert!(a.pairs == b.pairs, "weights differ after save → load");
    let gold: GradRef = serde_json::from_str(LORA_GRAD).unwrap();
    let batch = [Example {
        ids: &gold.ids,
        label_from: gold.response_start,
    }];
    assert_eq!(
        pass::forward(m, &a, &batch, None).unwrap().0,
        pass::forward(m, &b, &batch, None).unwrap().0
    );
    // A mismatched model is refused.
    let tiny = crate::model::tiny::model();
    let err = format!("{:#}", Adapter::load(dir.path(), &tiny.config).unwrap_err());
    assert!(err.contains("does not fit the model"), "{err}");
}

#[test]
fn accumulated_micro_batches_equal_one_batch() {
    let (m, a) = tiny_setup();
    let (s1, s2) = tiny_seqs();
    let both = tiny_batch(&s1, &s2);
    let (_, tape) = pass::forward(&m, &a, &both, None).unwrap();
    let mut whole = pass::zero_grads(&a);
    pass::backward(&m, &a, tape, &[-0.5, 0.25], &mut whole).unwrap();
    let mut acc = pass::zero_grads(&a);
    for (e, w) in both.iter().zip([-0.5f32, 0.25]) {
        let (_, tape) = pass::forward(&m, &a, std::slice::from_ref(e), None).unwrap();
        pass::backward(&m, &a, tape, &[w], &mut acc).unwrap();
    }
    for ((_, _, x), (_, _, y)) in whole.iter().zip(acc.iter()) {
        for (u, v) in x.a.iter().chain(&x.b).zip(y.a.iter().chain(&y.b)) {
            assert!((u - v).abs() <= 1e-3 * u.abs().max(1e-3), "{u} vs {v}");
        }
    }
}

#[test]
fn sft_lowers_the_loss_and_raises_demo_likelihood() {
    let m = smollm2();
    let texts = [
        (
            "Write a note to my neighbour about the fence.",
            "Yo Sam!! fence is busted again lol. fix it sat? bring donuts pls",
        ),
        (
            "Tell my boss I'm late.",
            "Yo boss!! running late lol. traffic is wild. there in 20 pls dont be mad",
        ),
    ];
    let seqs: Vec<_> = texts
        .iter()
        .map(|(p, d)| super::format::encode_pair(m, None, p, d).unwrap())
        .collect();
    let cfg = super::sft::SftConfig {
        lr: 2e-3,
        max_steps: 5,
        batch_size: 2,
        stop_loss: 0.0,
        dropout: 0.0,
        ..Default::default()
    };
    let fresh = Adapter::init(cfg.lora().unwrap(), &m.config, cfg.seed).unwrap();
    let before = super::sft::mean_logprob(m, &fresh, &seqs).unwrap();
    let out = super::sft::train(m, &seqs, &cfg, |_| Ok(())).unwrap();
    let after = super::sft::mean_logprob(m, &out.adapter, &seqs).unwrap();
    let first = out.steps.first().unwrap().loss;
    let last = out.steps.last().unwrap().loss;
    assert_eq!(out.steps.len(), 5);
    assert!((first + before).abs() < 1e-3, "step 0 loss is the base NLL");
    assert!(last < first - 0.3, "loss {first} → {last}");
    assert!(after > before + 0.3, "log-prob {before} → {after}");
}

/// Products with a causal matrix, block by block over 64-row query blocks, against the
/// full products, for a length that ends in a short block.
#[test]
fn causal_block_products_equal_full_products() {
    use crate::kernels::{MatRef, matmul};
    let (len, w) = (150, 8);
    let val = |i: usize, salt: f32| ((i as f32) * 0.731 + salt).sin();
    let mut a: Vec<f32> = (0..len * len).map(|i| val(i, 0.2)).collect();
    for (t, row) in a.chunks_exact_mut(len).enumerate() {
        row[t + 1..].fill(0.0);
    }
    let b: Vec<f32> = (0..len * w).map(|i| val(i, 1.1)).collect();
    let (am, bm) = (MatRef::new(&a, len, len), MatRef::new(&b, len, w));
    let close = |x: &[f32], y: &[f32], what: &str| {
        for (i, (u, v)) in x.iter().zip(y).enumerate() {
            assert!(
                (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                "{what}[{i}]: {u} vs {v}"
            );
        }
    };
    let start: Vec<f32> = (0..len * w).map(|i| val(i, 2.7)).collect();
    for accumulate in [false, true] {
        let (mut blocked, mut full) = (start.clone(), start.clone());
        pass::causal_times(&mut blocked, am, bm, 0.5, accumulate);
        matmul(&mut full, am, bm, 0.5, accumulate);
        close(&blocked, &full, "a·b");
        let (mut blocked, mut full) = (start.clone(), start.clone());
        pass::causal_t_times(&mut blocked, am, bm, 0.5, accumulate);
        matmul(&mut full, am.t(), bm, 0.5, accumulate);
        close(&blocked, &full, "aᵀ·b");
    }
    // Scores: on and below the diagonal equal to the full product, above it untouched.
    let q: Vec<f32> = (0..len * w).map(|i| val(i, 0.4)).collect();
    let qm = MatRef::new(&q, len, w);
    let mut scores = vec![7.0f32; len * len];
    pass::causal_scores(&mut scores, qm, bm, 0.25);
    let mut full = vec![0f32; len * len];
    matmul(&mut full, qm, bm.t(), 0.25, false);
    for t in 0..len {
        let (s, f) = (
            &scores[t * len..(t + 1) * len],
            &full[t * len..(t + 1) * len],
        );
        close(&s[..=t], &f[..=t], "q·kᵀ");
        let block_end = (t / 64 + 1) * 64;
        assert!(
            s[block_end.min(len)..].iter().all(|&x| x == 7.0),
            "row {t} written past its block"
        );
    }
}

/// A sequence longer than one causal block: the training pass's log-probs equal the
/// runtime's forward (its own attention) with an all-zero adapter.
#[test]
fn training_pass_matches_runtime_over_several_causal_blocks() {
    let m = crate::model::tiny::model();
    let fresh = Adapter::init(qv_lora(2), &m.config, 3).unwrap();
    let ids: Vec<u32> = (0..150).map(|i| 3 + (i * 41 % 200) as u32).collect();
    let runtime: f64 = m.next_token_logprobs(&ids).unwrap()[9..].iter().sum();
    let (lp, _) = pass::forward(
        &m,
        &fresh,
        &[Example {
            ids: &ids,
            label_from: 10,
        }],
        None,
    )
    .unwrap();
    assert_eq!(lp.counts, vec![140]);
    assert!(
        (lp.sums[0] - runtime).abs() < 1e-3,
        "{} vs {runtime}",
        lp.sums[0]
    );
}
