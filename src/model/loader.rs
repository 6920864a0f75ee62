//! Opening a model from a GGUF file or a Hugging Face directory: tensor name
//! mapping, the q/k row permutation llama.cpp applies, tokenizer and chat template.

use super::config::{Arch, Config};
use super::gguf::GgufFile;
use super::weights::TensorSource;
use crate::tokenize::{ChatTemplate, GgufVocab, Tokenizer};
use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Map a Hugging Face tensor name to its GGUF name.
pub(crate) fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_owned());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// llama.cpp's converter reorders the rows of each q/k head so that rope rotates
/// adjacent pairs: GGUF row `h·d + 2i + j` holds Hugging Face row `h·d + j·d/2 + i`.
/// Undo it so the half-split rope of Hugging Face applies.
fn unpermute_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * d + 2 * i + j;
                let dst = h * d + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

struct GgufSource<'a> {
    file: &'a GgufFile,
    config: &'a Config,
}

impl TensorSource for GgufSource<'_> {
    fn tensor(&self, hf_name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let name =
            gguf_name(hf_name).with_context(|| format!("no GGUF name for tensor {hf_name:?}"))?;
        let t = self.file.tensor_f32(&name, shape)?;
        // Only llama-architecture GGUFs carry the permutation (Qwen2 uses NeoX rope).
        if self.config.arch == Arch::Llama {
            let heads = if hf_name.contains("q_proj") {
                self.config.heads
            } else if hf_name.contains("k_proj") {
                self.config.kv_heads
            } else {
                return Ok(t);
            };
            let cols = if hf_name.ends_with(".bias") {
                1
            } else {
                self.config.hidden
            };
            return Ok(unpermute_rows(&t, heads, cols));
        }
        Ok(t)
    }

    fn has(&self, hf_name: &str) -> bool {
        gguf_name(hf_name).is_some_and(|n| self.file.tensors.contains_key(&n))
    }
}

/// Tensors of a Hugging Face directory: one or many memory-mapped safetensors files.
struct SafetensorsSource {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
    /// Tensor name → index into `maps`.
    index: BTreeMap<String, usize>,
}

impl SafetensorsSource {
    fn open(dir: &Path) -> Result<SafetensorsSource> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("cannot read {}", index_path.display()))?;
            let j: Json = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", index_path.display()))?;
            let map = j["weight_map"]
                .as_object()
                .with_context(|| format!("{}: \"weight_map\" is missing", index_path.display()))?;
            let mut names: Vec<&str> = map.values().filter_map(Json::as_str).collect();
            names.sort_unstable();
            names.dedup();
            names.iter().map(|n| dir.join(n)).collect()
        } else {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            v.sort();
            v
        };
        if files.is_empty() {
            bail!("{}: no *.safetensors files", dir.display());
        }
        let mut maps = Vec::new();
        let mut index = BTreeMap::new();
        for path in files {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: read-only map of a model file that is not modified while loaded.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("cannot map {}", path.display()))?;
            let st = SafeTensors::deserialize(&map)
                .with_context(|| format!("{}: corrupt safetensors file", path.display()))?;
            for name in st.names() {
                index.insert(name.to_string(), maps.len());
            }
            maps.push((path, map));
        }
        Ok(SafetensorsSource { maps, index })
    }
}

impl TensorSource for SafetensorsSource {
    fn tensor(&self, hf_name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let &i = self
            .index
            .get(hf_name)
            .with_context(|| format!("tensor {hf_name:?} is missing from the safetensors files"))?;
        let (path, map) = &self.maps[i];
        let st = SafeTensors::deserialize(map)
            .with_context(|| format!("{}: corrupt safetensors file", path.display()))?;
        let t = st.tensor(hf_name)?;
        if t.shape() != shape {
            bail!(
                "{}: tensor {hf_name:?} has shape {:?}, expected {shape:?}",
                path.display(),
                t.shape()
            );
        }
        let data = t.data();
        let out = match t.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => bail!(
                "{}: tensor {hf_name:?} has dtype {other:?}; supported: F32, F16, BF16",
                path.display()
            ),
        };
        Ok(out)
    }

    fn has(&self, hf_name: &str) -> bool {
        self.index.contains_key(hf_name)
    }
}

/// Everything read from a model location besides the weights.
pub struct Opened {
    pub config: Config,
    pub weights: super::weights::Weights,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// Extra stop ids declared by the model (e.g. generation_config.json).
    pub extra_stop_ids: Vec<u32>,
}

/// The tokenizer description stored in a GGUF file's metadata.
pub(crate) fn gguf_vocab(g: &GgufFile) -> Result<GgufVocab> {
    let src = g.path.display();
    let token_types = match g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
    {
        Some(a) => a
            .iter()
            .map(|v| v.as_i64().map(|x| x as i32))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("{src}: tokenizer.ggml.token_type is not integers"))?,
        None => Vec::new(),
    };
    Ok(GgufVocab {
        model: g
            .get_str("tokenizer.ggml.model")
            .with_context(|| format!("{src}: no tokenizer in the GGUF (tokenizer.ggml.model)"))?
            .to_owned(),
        pre: g.get_str("tokenizer.ggml.pre").map(str::to_owned),
        tokens: g.str_array("tokenizer.ggml.tokens")?,
        token_types,
        merges: if g.get("tokenizer.ggml.merges").is_some() {
            g.str_array("tokenizer.ggml.merges")?
        } else {
            Vec::new()
        },
        bos_id: g.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32),
        eos_id: g.get_u64("tokenizer.ggml.eos_token_id").map(|v| v as u32),
        unk_id: g
            .get_u64("tokenizer.ggml.unknown_token_id")
            .map(|v| v as u32),
        add_bos: g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
    })
}

pub fn open_gguf(path: &Path) -> Result<Opened> {
    let g = GgufFile::open(path)?;
    let config = Config::from_gguf(&g)?;
    let weights = super::weights::load(
        &config,
        &GgufSource {
            file: &g,
            config: &config,
        },
    )
    .with_context(|| format!("loading weights from {}", path.display()))?;
    let vocab = gguf_vocab(&g)?;
    let src = path.display();
    let tokenizer = Tokenizer::from_gguf_vocab(&vocab)
        .with_context(|| format!("{src}: building the tokenizer"))?;
    let template = match g.get_str("tokenizer.chat_template") {
        Some(t) => Some(
            ChatTemplate::new(t, tokenizer.bos_token(), tokenizer.eos_token())
                .with_context(|| format!("{src}: chat template"))?,
        ),
        None => None,
    };
    Ok(Opened {
        config,
        weights,
        tokenizer,
        template,
        extra_stop_ids: Vec::new(),
    })
}

/// A special-token entry of tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: &Json) -> Option<String> {
    v.as_str()
        .or_else(|| v["content"].as_str())
        .map(str::to_owned)
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{}: invalid JSON", path.display())
    })?))
}

pub fn open_hf_dir(dir: &Path) -> Result<Opened> {
    let config = Config::from_hf_json(&dir.join("config.json"))?;
    let src = SafetensorsSource::open(dir)?;
    let weights = super::weights::load(&config, &src)
        .with_context(|| format!("loading weights from {}", dir.display()))?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        bail!("{}: tokenizer.json is missing", dir.display());
    }
    let mut tokenizer = Tokenizer::from_file(&tok_path)?;
    let tcfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let bos = token_string(&tcfg["bos_token"]);
    let eos = token_string(&tcfg["eos_token"]);
    let add_bos = tcfg["add_bos_token"].as_bool().unwrap_or(false);
    tokenizer
        .set_special(bos, eos, add_bos)
        .with_context(|| format!("{}: special tokens", dir.display()))?;
    let jinja = dir.join("chat_template.jinja");
    let template_src = if jinja.exists() {
        Some(
            std::fs::read_to_string(&jinja)
                .with_context(|| format!("cannot read {}", jinja.display()))?,
        )
    } else {
        tcfg["chat_template"].as_str().map(str::to_owned)
    };
    let template = match template_src {
        Some(t) => Some(
            ChatTemplate::new(&t, tokenizer.bos_token(), tokenizer.eos_token())
                .with_context(|| format!("{}: chat template", dir.display()))?,
        ),
        None => None,
    };
    let mut extra_stop_ids = Vec::new();
    if let Some(gen_cfg) = read_json(&dir.join("generation_config.json"))? {
        match &gen_cfg["eos_token_id"] {
            Json::Number(n) => extra_stop_ids.extend(n.as_u64().map(|v| v as u32)),
            Json::Array(a) => {
                extra_stop_ids.extend(a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)))
            }
            _ => {}
        }
    }
    Ok(Opened {
        config,
        weights,
        tokenizer,
        template,
        extra_stop_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_hf_names() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.weight").as_deref(),
            Some("blk.3.attn_q.weight")
        );
        assert_eq!(
            gguf_name("model.layers.12.mlp.down_proj.weight").as_deref(),
            Some("blk.12.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.k_proj.bias").as_deref(),
            Some("blk.0.attn_k.bias")
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(gguf_name("model.layers.0.foo.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // Two heads of dimension 4, one column: HF rows [0..8); llama.cpp stores
        // each head as (0, 2, 1, 3) i.e. pairs (i, i + d/2) interleaved.
        let gguf = [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
        assert_eq!(
            unpermute_rows(&gguf, 2, 1),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        );
    }
}
