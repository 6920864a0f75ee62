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
        LoraConfig { r, alpha, dropout: 0.0, targets: targets.clone() },
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
    v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn lora_loss_and_gradients_match_peft() {
    let m = smollm2();
    let gold: GradRef = serde_json::from_str(LORA_GRAD).unwrap();
    let adapter = formula_adapter(m, 8, 16.0);
    let batch = [Example { ids: &gold.ids, label_from: gold.response_start }];
    let (lp, tape) = pass::forward(m, &adapter, &batch, None).unwrap();
    let count = lp.counts[0];
    assert_eq!(count, 22);
    let loss = -lp.sums[0] / count as f64;
    assert!((loss - gold.loss_mean_response_nll).abs() < 1e-4, "loss {loss} vs {}", gold.loss_mean_response_nll);
    let mut grads = pass::zero_grads(&adapter);
    pass::backward(m, &adapter, &tape, &[-1.0 / count as f32], &mut grads).unwrap();
    for e in &gold.grads {
        let p = Proj::ALL.into_iter().find(|p| p.hf_name() == e.module).unwrap();
        let g = grads.get(e.layer, p).unwrap();
        let what = format!("layer {} {}", e.layer, e.module);
        assert!(rel(norm(&g.a), e.a_norm) < 1e-3, "{what} |dA| {} vs {}", norm(&g.a), e.a_norm);
        assert!(rel(norm(&g.b), e.b_norm) < 1e-3, "{what} |dB| {} vs {}", norm(&g.b), e.b_norm);
        // Entries within 1e-3 of their value, or of the tensor's RMS entry when they are
        // much smaller than it (then f32 rounding dominates).
        let ent = |got: f32, want: f64, tensor: &[f32], name: &str| {
            let rms = norm(tensor) / (tensor.len() as f64).sqrt();
            let tol = 1e-3 * want.abs().max(rms);
            assert!((got as f64 - want).abs() < tol, "{what} {name}: {got} vs {want}");
        };
        ent(g.a[0], e.a00, &g.a, "dA[0][0]");
        ent(g.a[3 * g.in_dim + 5], e.a35, &g.a, "dA[3][5]");
        ent(g.b[0], e.b00, &g.b, "dB[0][0]");
        ent(g.b[5 * 8 + 3], e.b53, &g.b, "dB[5][3]");
    }
}
