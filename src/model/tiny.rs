//! A tiny random-weight Llama written both as a GGUF file (with llama.cpp's q/k row
//! permutation) and as a Hugging Face directory, for loader tests. Test-only.

use super::gguf::Value;
use crate::testutil::byte_vocab;
use crate::tokenize::Tokenizer;
use safetensors::{Dtype, tensor::TensorView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const HIDDEN: usize = 32;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 8;
pub const FFN: usize = 48;
pub const LAYERS: usize = 2;

pub const TEMPLATE: &str = "{% for m in messages %}<tool>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<tool>assistant\n{% endif %}";

/// Tensors in Hugging Face names and order, `(name, shape, values)`.
pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Deterministic weights; `round_bf16` makes every value exactly representable in bf16.
pub fn weights(vocab: usize, round_bf16: bool) -> Tensors {
    let mut out = Vec::new();
    let mut salt = 0.0f32;
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        salt += 1.0;
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| {
                let x = offset + scale * ((i as f32) * 0.618 + salt * 1.7).sin();
                if round_bf16 {
                    half::bf16::from_f32(x).to_f32()
                } else {
                    x
                }
            })
            .collect();
        out.push((name, shape, v));
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![vocab, HIDDEN],
        0.5,
        0.0,
    );
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        add(
            format!("{p}.input_layernorm.weight"),
            vec![HIDDEN],
            0.2,
            1.0,
        );
        add(
            format!("{p}.self_attn.q_proj.weight"),
            vec![HEADS * HEAD_DIM, HIDDEN],
            0.3,
            0.0,
        );
        add(
            format!("{p}.self_attn.k_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            0.3,
            0.0,
        );
        add(
            format!("{p}.self_attn.v_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            0.3,
            0.0,
        );
        add(
            format!("{p}.self_attn.o_proj.weight"),
            vec![HIDDEN, HEADS * HEAD_DIM],
            0.3,
            0.0,
        );
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            0.2,
            1.0,
        );
        add(
            format!("{p}.mlp.gate_proj.weight"),
            vec![FFN, HIDDEN],
            0.3,
            0.0,
        );
        add(
            format!("{p}.mlp.up_proj.weight"),
            vec![FFN, HIDDEN],
            0.3,
            0.0,
        );
        add(
            format!("{p}.mlp.down_proj.weight"),
            vec![HIDDEN, FFN],
            0.3,
            0.0,
        );
    }
    add("model.norm.weight".into(), vec![HIDDEN], 0.2, 1.0);
    add("lm_head.weight".into(), vec![vocab, HIDDEN], 0.5, 0.0);
    out
}

pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_gguf_vocab(&byte_vocab("default", &[])).expect("byte vocabulary builds")
}

/// The permutation llama.cpp's converter applies to q/k rows (reshape
/// `[heads, 2, d/2, cols]`, swap axes 1 and 2).
fn permute_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let d = w.len() / cols / heads;
    let half = d / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let hf = h * d + j * half + i;
                let gg = h * d + 2 * i + j;
                out[gg * cols..(gg + 1) * cols].copy_from_slice(&w[hf * cols..(hf + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_tensor_name(hf: &str) -> String {
    super::loader::gguf_name(hf).expect("tiny tensors have GGUF names")
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U32(x) => buf.extend(x.to_le_bytes()),
        Value::I32(x) => buf.extend(x.to_le_bytes()),
        Value::F32(x) => buf.extend(x.to_le_bytes()),
        Value::Bool(b) => buf.push(u8::from(*b)),
        Value::Str(s) => put_str(buf, s),
        Value::Array(items) => {
            buf.extend(type_id(items.first().unwrap_or(&Value::Str(String::new()))).to_le_bytes());
            buf.extend((items.len() as u64).to_le_bytes());
            for it in items {
                put_value(buf, it);
            }
        }
        other => panic!("the tiny writer does not need {other:?}"),
    }
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        other => panic!("the tiny writer does not need {other:?}"),
    }
}

/// Serialize a GGUF v3 file with F32 tensors.
pub fn gguf_bytes(meta: &BTreeMap<String, Value>, tensors: &Tensors) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend(b"GGUF");
    buf.extend(3u32.to_le_bytes());
    buf.extend((tensors.len() as u64).to_le_bytes());
    buf.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut buf, k);
        buf.extend(type_id(v).to_le_bytes());
        put_value(&mut buf, v);
    }
    let mut offset = 0u64;
    for (name, shape, _) in tensors {
        put_str(&mut buf, &gguf_tensor_name(name));
        buf.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            buf.extend((*d as u64).to_le_bytes());
        }
        buf.extend(0u32.to_le_bytes()); // F32
        buf.extend(offset.to_le_bytes());
        offset += (shape.iter().product::<usize>() * 4).next_multiple_of(32) as u64;
    }
    buf.resize(buf.len().next_multiple_of(32), 0);
    for (name, shape, data) in tensors {
        let data = if name.contains("q_proj") {
            permute_rows(data, HEADS, shape[1])
        } else if name.contains("k_proj") {
            permute_rows(data, KV_HEADS, shape[1])
        } else {
            data.clone()
        };
        for v in data {
            buf.extend(v.to_le_bytes());
        }
        buf.resize(buf.len().next_multiple_of(32), 0);
    }
    buf
}

pub fn gguf_metadata(tok_vocab: &crate::tokenize::GgufVocab) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    put("general.architecture", Value::Str("llama".into()));
    put("llama.block_count", Value::U32(LAYERS as u32));
    put("llama.context_length", Value::U32(256));
    put("llama.embedding_length", Value::U32(HIDDEN as u32));
    put("llama.feed_forward_length", Value::U32(FFN as u32));
    put("llama.attention.head_count", Value::U32(HEADS as u32));
    put("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32));
    put("llama.rope.freq_base", Value::F32(10000.0));
    put("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    put("tokenizer.ggml.model", Value::Str(tok_vocab.model.clone()));
    put("tokenizer.ggml.pre", Value::Str("default".into()));
    let strs = |v: &[String]| Value::Array(v.iter().cloned().map(Value::Str).collect());
    put("tokenizer.ggml.tokens", strs(&tok_vocab.tokens));
    put(
        "tokenizer.ggml.token_type",
        Value::Array(
            tok_vocab
                .token_types
                .iter()
                .map(|&t| Value::I32(t))
                .collect(),
        ),
    );
    put("tokenizer.ggml.merges", strs(&tok_vocab.merges));
    put("tokenizer.ggml.bos_token_id", Value::U32(0));
    put("tokenizer.ggml.eos_token_id", Value::U32(1));
    put("tokenizer.chat_template", Value::Str(TEMPLATE.into()));
    m
}

pub fn config_json(vocab: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        "tie_word_embeddings": false
    })
}

/// Write `tensors` as one safetensors file in `dtype` (F32 or BF16).
pub fn write_safetensors(path: &Path, tensors: &[&(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
            other => panic!("tiny writer: dtype {other:?}"),
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            (
                name.clone(),
                TensorView::new(dtype, shape.clone(), b).expect("valid view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("safetensors written");
}

/// Write the Hugging Face directory `dir` (config, one safetensors file, tokenizer).
pub fn write_hf_dir(
    dir: &Path,
    tensors: &Tensors,
    dtype: Dtype,
    config: &serde_json::Value,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let all: Vec<_> = tensors.iter().collect();
    write_safetensors(&dir.join("model.safetensors"), &all, dtype);
    tokenizer().save(&dir.join("tokenizer.json")).unwrap();
    let tcfg = serde_json::json!({
        "bos_token": "<|endoftext|>",
        "eos_token": {"content": "<|im_end|>"},
        "chat_template": TEMPLATE
    });
    std::fs::write(dir.join("tokenizer_config.json"), tcfg.to_string()).unwrap();
    dir.to_path_buf()
}

/// The tiny model itself: written as GGUF into a temporary directory and loaded.
pub fn model() -> super::Model {
    let vocab = byte_vocab("default", &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tiny.gguf");
    let t = weights(vocab.tokens.len(), false);
    std::fs::write(&path, gguf_bytes(&gguf_metadata(&vocab), &t)).expect("tiny GGUF written");
    super::Model::load(&path).expect("tiny model loads")
}
