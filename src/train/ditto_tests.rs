//! The DITTO loop on a tiny model: ln 2 at step 0, expert-only round 0, the reference
//! (frozen in DITTO, reset each round in SPIN), and bit-identical resume.

use super::ditto::{self, Mode, RoundSample, RunInput, TrainConfig};
use super::format::{Encoded, encode_pair};
use super::sft::SftConfig;
use crate::model::Model;
use crate::model::lora::Adapter;
use crate::model::tiny;
use std::path::Path;

fn demos(m: &Model) -> Vec<Encoded> {
    [
        ("say hi", "hello there!"),
        ("say bye", "see you soon."),
        ("count", "one two three"),
    ]
    .iter()
    .map(|(p, d)| encode_pair(m, None, p, d).unwrap())
    .collect()
}

fn config(mode: Mode) -> TrainConfig {
    let mut c = TrainConfig::preset("cpu").unwrap();
    c.sft = SftConfig {
        max_steps: 2,
        lr: 1e-2,
        dropout: 0.0,
        ..SftConfig::default()
    };
    c.ditto.mode = mode;
    c.ditto.steps = 6;
    c.ditto.round_every = 2;
    c.ditto.samples_per_prompt = 2;
    c.ditto.max_new_tokens = 6;
    c.ditto.lr = 1e-2;
    c.ditto.warmup_ratio = 0.0;
    c.ditto.mix.multiplier = 2.0;
    c
}

fn run(m: &mut Model, cfg: &TrainConfig, dir: &Path, stop_after: Option<usize>) -> Option<Adapter> {
    let seqs = demos(m);
    let input = RunInput {
        demos: &seqs,
        config: cfg,
        dir,
        base_model: "tiny",
        stop_after,
    };
    ditto::run(m, &input, |_| Ok(())).unwrap()
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn rounds(dir: &Path, t: usize) -> Vec<RoundSample> {
    std::fs::read_to_string(dir.join(format!("rounds/round-{t}.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Summed log-probs of a round's samples under `adapter`.
fn score(m: &Model, adapter: &Adapter, samples: &[RoundSample]) -> Vec<f64> {
    let seqs = demos(m);
    samples
        .iter()
        .map(|s| {
            let e = &seqs[s.prompt];
            let mut ids = e.ids[..e.label_from].to_vec();
            ids.extend_from_slice(&s.ids);
            let ex = [super::pass::Example {
                ids: &ids,
                label_from: e.label_from,
            }];
            super::pass::logprobs(m, adapter, &ex).unwrap().sums[0]
        })
        .collect()
}

#[test]
fn step_zero_is_ln2_round_zero_is_expert_only_and_the_reference_stays_sft() {
    let mut m = tiny::model();
    let dir = tempfile::tempdir().unwrap();
    run(&mut m, &config(Mode::Ditto), dir.path(), None).unwrap();
    let steps: Vec<_> = metrics(dir.path())
        .into_iter()
        .filter(|v| v["stage"] == "ditto")
        .collect();
    assert_eq!(steps.len(), 6);
    assert_eq!(steps[0]["loss"].as_f64().unwrap(), std::f64::consts::LN_2);
    for s in &steps {
        let round = s["round"].as_u64().unwrap();
        if round == 0 {
            assert_eq!(s["pairs_replay"], 0);
            assert_eq!(s["pairs_inter_policy"], 0);
        }
    }
    // S_b = round(2 × 3) = 6: round(4.2) = 4 expert, round(1.2) = 1 replay, round(0.6) = 1 inter-policy.
    let last = &steps[5];
    assert_eq!(
        (
            last["pairs_expert"].as_u64(),
            last["pairs_replay"].as_u64(),
            last["pairs_inter_policy"].as_u64()
        ),
        (Some(4), Some(1), Some(1))
    );
    let sft = Adapter::load(&dir.path().join("sft"), &m.config).unwrap();
    for t in 0..3 {
        let r = rounds(dir.path(), t);
        assert_eq!(r.len(), 6);
        let under_sft = score(&m, &sft, &r);
        for (s, want) in r.iter().zip(under_sft) {
            assert_eq!(
                s.ref_logp, want,
                "round {t}: DITTO scores samples under the SFT adapter"
            );
        }
    }
}

#[test]
fn spin_resets_the_reference_to_the_policy_each_round() {
    let mut m = tiny::model();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Mode::Spin);
    run(&mut m, &cfg, dir.path(), Some(2));
    let policy_at_round_1 =
        Adapter::load(&dir.path().join("checkpoint/policy-2"), &m.config).unwrap();
    run(&mut m, &cfg, dir.path(), None).unwrap();
    let r1 = rounds(dir.path(), 1);
    let sft = Adapter::load(&dir.path().join("sft"), &m.config).unwrap();
    let under_policy = score(&m, &policy_at_round_1, &r1);
    let under_sft = score(&m, &sft, &r1);
    for ((s, p), q) in r1.iter().zip(under_policy).zip(under_sft) {
        assert_eq!(s.ref_logp, p);
        assert_ne!(s.ref_logp, q);
    }
    for v in metrics(dir.path()).iter().filter(|v| v["stage"] == "ditto") {
        assert_eq!(v["pairs_replay"], 0);
        assert_eq!(v["pairs_inter_policy"], 0);
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_final_adapter() {
    for mode in [Mode::Ditto, Mode::Spin] {
        let mut m = tiny::model();
        let cfg = config(mode);
        let whole = tempfile::tempdir().unwrap();
        let a = run(&mut m, &cfg, whole.path(), None).unwrap();
        for stop in [1, 2, 3, 5] {
            let parts = tempfile::tempdir().unwrap();
            assert!(run(&mut m, &cfg, parts.path(), Some(stop)).is_none());
            // A line written after the last checkpoint (a crash mid-step) is dropped.
            let metrics_path = parts.path().join("metrics.jsonl");
            let mut text = std::fs::read_to_string(&metrics_path).unwrap();
            text.push_str("{\"stage\":\"ditto\",\"step\":99}\n");
            std::fs::write(&metrics_path, text).unwrap();
            let b = run(&mut m, &cfg, parts.path(), None).unwrap();
            let stages: Vec<String> = metrics(parts.path())
                .iter()
                .map(|v| v["stage"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                stages.iter().filter(|s| *s == "ditto").count(),
                6,
                "{mode:?} stop {stop}"
            );
            assert_eq!(
                stages.iter().filter(|s| *s == "round").count(),
                3,
                "{mode:?} stop {stop}"
            );
            assert!(
                a.pairs == b.pairs,
                "{mode:?}: resume after step {stop} differs"
            );
            let saved = Adapter::load(&parts.path().join("final"), &m.config).unwrap();
            assert!(saved.pairs == a.pairs);
        }
    }
}

#[test]
fn ablations_change_only_what_they_name() {
    let mut m = tiny::model();
    let mut cfg = config(Mode::Ditto);
    cfg.ditto.upfront = true;
    let dir = tempfile::tempdir().unwrap();
    run(&mut m, &cfg, dir.path(), None).unwrap();
    // All negatives up front: one round of M × 3 rounds samples per prompt, expert pairs only.
    assert_eq!(rounds(dir.path(), 0).len(), 3 * 2 * 3);
    assert!(!dir.path().join("rounds/round-1.jsonl").exists());
    for v in metrics(dir.path()).iter().filter(|v| v["stage"] == "ditto") {
        assert_eq!(
            (v["pairs_replay"].as_u64(), v["pairs_inter_policy"].as_u64()),
            (Some(0), Some(0))
        );
    }
    let mut cfg = config(Mode::Ditto);
    cfg.ditto.mix.replay = 0.0;
    let dir = tempfile::tempdir().unwrap();
    run(&mut m, &cfg, dir.path(), None).unwrap();
    let last = metrics(dir.path())
        .into_iter()
        .rfind(|v| v["stage"] == "ditto")
        .unwrap();
    assert_eq!(
        (
            last["pairs_expert"].as_u64(),
            last["pairs_replay"].as_u64(),
            last["pairs_inter_policy"].as_u64()
        ),
        (Some(4), Some(0), Some(1))
    );
    let mut bad = config(Mode::Spin);
    bad.ditto.upfront = true;
    assert!(bad.validate().is_err());
}
