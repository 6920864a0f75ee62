//! Loading the same tiny Llama from GGUF and from Hugging Face directories (f32, bf16,
//! sharded, both rope config forms) gives the same model; bad files give clear errors.

use super::Model;
use super::tiny::{self, Tensors};
use super::transformer::{KvCache, Logits, Matmul, Workspace};
use crate::tokenize::Message;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

const IDS: [u32; 7] = [0, 70, 71, 3, 90, 1, 200];

fn vocab_len() -> usize {
    tiny::tokenizer().vocab_size()
}

fn write_gguf(dir: &Path, tensors: &Tensors) -> PathBuf {
    let vocab = crate::testutil::byte_vocab("default", &[]);
    let path = dir.join("tiny.gguf");
    std::fs::write(
        &path,
        tiny::gguf_bytes(&tiny::gguf_metadata(&vocab), tensors),
    )
    .unwrap();
    path
}

fn logits(m: &Model) -> Vec<f32> {
    let mut cache = KvCache::new(m, 1, IDS.len());
    let mut ws = Workspace::default();
    m.forward(
        &mut ws,
        &mut cache,
        &[(0, &IDS)],
        Logits::All,
        Matmul::Gemm,
        None,
    )
    .unwrap()
    .to_vec()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst <= tol, "logits differ by {worst}");
}

fn load_err(path: &Path) -> String {
    match Model::load(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn gguf_and_hf_directory_give_equal_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny::weights(vocab_len(), false);
    let g = Model::load(&write_gguf(tmp.path(), &t)).unwrap();
    let hf_dir = tiny::write_hf_dir(
        &tmp.path().join("hf"),
        &t,
        Dtype::F32,
        &tiny::config_json(vocab_len()),
    );
    let h = Model::load(&hf_dir).unwrap();
    assert_eq!(g.config, h.config);
    assert_close(&logits(&g), &logits(&h), 1e-5);
    let chat = [Message::new("user", "hi there")];
    assert_eq!(g.chat_prompt(&chat).unwrap(), h.chat_prompt(&chat).unwrap());
    assert_eq!(g.stop_ids, vec![1]);
    assert_eq!(h.stop_ids, vec![1]);
}

#[test]
fn bf16_sharded_and_rope_parameters_directories_load_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny::weights(vocab_len(), true);
    let reference = logits(&Model::load(&write_gguf(tmp.path(), &t)).unwrap());

    let mut cfg = tiny::config_json(vocab_len());
    let bf16 = tiny::write_hf_dir(&tmp.path().join("bf16"), &t, Dtype::BF16, &cfg);
    assert_close(&reference, &logits(&Model::load(&bf16).unwrap()), 1e-5);

    // Newer configs put rope_theta under rope_parameters.
    let obj = cfg.as_object_mut().unwrap();
    obj.remove("rope_theta");
    obj.insert(
        "rope_parameters".into(),
        serde_json::json!({"rope_type": "default", "rope_theta": 10000.0}),
    );
    let sharded = tiny::write_hf_dir(&tmp.path().join("sharded"), &t, Dtype::F32, &cfg);
    std::fs::remove_file(sharded.join("model.safetensors")).unwrap();
    let (a, b) = t.split_at(t.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        tiny::write_safetensors(
            &sharded.join(file),
            &part.iter().collect::<Vec<_>>(),
            Dtype::F32,
        );
        for (name, _, _) in part {
            weight_map.insert(name.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    assert_close(&reference, &logits(&Model::load(&sharded).unwrap()), 1e-5);
}

#[test]
fn unknown_architecture_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny::weights(vocab_len(), false);
    let mut cfg = tiny::config_json(vocab_len());
    cfg["model_type"] = "gpt2".into();
    cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    let dir = tiny::write_hf_dir(&tmp.path().join("hf"), &t, Dtype::F32, &cfg);
    let err = load_err(&dir);
    assert!(
        err.contains("unsupported model architecture \"gpt2\""),
        "{err}"
    );
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny::config_json(vocab_len());
    let mut t = tiny::weights(vocab_len(), false);
    t.retain(|(n, _, _)| n != "model.layers.1.mlp.up_proj.weight");
    let dir = tiny::write_hf_dir(&tmp.path().join("missing"), &t, Dtype::F32, &cfg);
    let err = load_err(&dir);
    assert!(
        err.contains("\"model.layers.1.mlp.up_proj.weight\" is missing"),
        "{err}"
    );

    let mut t = tiny::weights(vocab_len(), false);
    let bad = t
        .iter_mut()
        .find(|(n, _, _)| n == "model.layers.0.self_attn.v_proj.weight")
        .unwrap();
    bad.1 = vec![tiny::HIDDEN, tiny::KV_HEADS * tiny::HEAD_DIM];
    let dir = tiny::write_hf_dir(&tmp.path().join("shape"), &t, Dtype::F32, &cfg);
    let err = load_err(&dir);
    assert!(
        err.contains(
            "\"model.layers.0.self_attn.v_proj.weight\" has shape [32, 16], expected [16, 32]"
        ),
        "{err}"
    );

    let gguf = write_gguf(tmp.path(), &t);
    let err = load_err(&gguf);
    assert!(err.contains("blk.0.attn_v.weight"), "{err}");
}

#[test]
fn corrupt_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny::weights(vocab_len(), false);
    let gguf = write_gguf(tmp.path(), &t);
    let bytes = std::fs::read(&gguf).unwrap();

    let truncated = tmp.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_err(&truncated);
    assert!(
        err.contains("truncated.gguf") && err.contains("outside the file"),
        "{err}"
    );

    let header_only = tmp.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..200]).unwrap();
    let err = load_err(&header_only);
    assert!(err.contains("truncated"), "{err}");

    let mut magic = bytes.clone();
    magic[..4].copy_from_slice(b"GGML");
    let bad_magic = tmp.path().join("magic.gguf");
    std::fs::write(&bad_magic, &magic).unwrap();
    let err = load_err(&bad_magic);
    assert!(err.contains("bad magic"), "{err}");

    let dir = tiny::write_hf_dir(
        &tmp.path().join("hf"),
        &t,
        Dtype::F32,
        &tiny::config_json(vocab_len()),
    );
    std::fs::write(dir.join("model.safetensors"), b"not a safetensors file").unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model.safetensors: corrupt safetensors file"),
        "{err}"
    );

    let err = load_err(&tmp.path().join("nope.gguf"));
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn missing_chat_template_and_tokenizer_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny::weights(vocab_len(), false);
    let dir = tiny::write_hf_dir(
        &tmp.path().join("hf"),
        &t,
        Dtype::F32,
        &tiny::config_json(vocab_len()),
    );
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>"}"#,
    )
    .unwrap();
    let m = Model::load(&dir).unwrap();
    let err = format!(
        "{:#}",
        m.chat_prompt(&[Message::new("user", "hi")]).unwrap_err()
    );
    assert!(err.contains("has no chat template"), "{err}");

    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("tokenizer.json is missing"), "{err}");
}
