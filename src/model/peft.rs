//! LoRA adapters on disk, in the layout Hugging Face PEFT writes and reads, so
//! that an adapter trained here loads with `PeftModel.from_pretrained` and an
//! adapter trained with PEFT loads here.
//!
//! A directory holds `adapter_config.json` (a PEFT `LoraConfig`) and
//! `adapter_model.safetensors`, whose tensors are named
//! `base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight`
//! (`mlp.` instead of `self_attn.` for `gate_proj`, `up_proj`, `down_proj`),
//! with `lora_A` of shape `[r, in]` and `lora_B` of shape `[out, r]`.
//!
//! Only plain LoRA is supported: loading refuses configurations that change
//! how the weights apply (DoRA, rsLoRA, per-module ranks, biases, ...).
//! Weights are saved as F32; F16 and BF16 are converted on loading.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{Result, anyhow, bail, ensure};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::{Map, Value, json};

/// Name of the configuration file in an adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Name of the weights file in an adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The LoRA hyperparameters stored in `adapter_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    pub r: usize,
    /// `lora_alpha`; the update is scaled by `alpha / r`.
    pub alpha: f32,
    pub dropout: f32,
    /// Module names such as `"q_proj"`; `load` returns them sorted.
    pub target_modules: Vec<String>,
    /// `base_model_name_or_path`; empty when the file has none.
    pub base_model: String,
}

pub use super::lora::LoraPair;

/// A whole adapter: its configuration and its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterFiles {
    pub config: AdapterConfig,
    /// key: (layer index, module name like "q_proj")
    pub pairs: BTreeMap<(usize, String), LoraPair>,
}

const ATTENTION_MODULES: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
const MLP_MODULES: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Config keys whose value changes how the adapter's weights are applied;
/// anything but null, false, `[]` or `{}` there is refused.
const UNSUPPORTED_OPTIONS: [&str; 17] = [
    "use_dora",
    "fan_in_fan_out",
    "use_rslora",
    "layers_to_transform",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "lora_bias",
    "target_parameters",
    "layer_replication",
    "trainable_token_indices",
    "use_qalora",
    "alora_invocation_tokens",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
    "monteclora_config",
];

/// The submodule (`self_attn` or `mlp`) that holds `module`, if it is one
/// this format knows.
fn parent_of(module: &str) -> Option<&'static str> {
    if ATTENTION_MODULES.contains(&module) {
        Some("self_attn")
    } else if MLP_MODULES.contains(&module) {
        Some("mlp")
    } else {
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Factor {
    A,
    B,
}

fn tensor_name(layer: usize, module: &str, factor: Factor) -> String {
    let parent = parent_of(module).unwrap_or("?");
    format!("base_model.model.model.layers.{layer}.{parent}.{module}.lora_{factor:?}.weight")
}

/// The layer, module and factor of a PEFT LoRA tensor name.
fn parse_tensor_name(name: &str) -> Option<(usize, &str, Factor)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (parent, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let factor = match rest {
        "lora_A.weight" => Factor::A,
        "lora_B.weight" => Factor::B,
        _ => return None,
    };
    let index: usize = layer.parse().ok()?;
    (index.to_string() == layer && parent_of(module) == Some(parent))
        .then_some((index, module, factor))
}

fn check_config(config: &AdapterConfig) -> Result<()> {
    ensure!(config.r > 0, "r must be positive");
    ensure!(
        config.alpha.is_finite(),
        "lora_alpha must be finite, got {}",
        config.alpha
    );
    ensure!(
        (0.0..1.0).contains(&config.dropout),
        "lora_dropout must be in [0, 1), got {}",
        config.dropout
    );
    ensure!(!config.target_modules.is_empty(), "target_modules is empty");
    for module in &config.target_modules {
        ensure!(
            parent_of(module).is_some(),
            "target module {module:?} is not supported (supported: {}, {})",
            ATTENTION_MODULES.join(", "),
            MLP_MODULES.join(", ")
        );
    }
    Ok(())
}

fn sorted_modules(modules: &[String]) -> Vec<String> {
    let mut modules = modules.to_vec();
    modules.sort();
    modules.dedup();
    modules
}

/// An `f32` as the JSON number Python would print for it: integral values
/// as integers (PEFT's `lora_alpha` is an int), others with the shortest
/// decimal form (0.05, not 0.05000000074505806).
fn json_number(x: f32, integral_as_int: bool) -> Value {
    if integral_as_int && x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x.to_string().parse::<f64>().unwrap_or(f64::from(x)))
    }
}

/// The text of `adapter_config.json` for `config`, keys sorted like PEFT's.
fn config_json(config: &AdapterConfig) -> Result<String> {
    check_config(config)?;
    let value = json!({
        "alpha_pattern": {},
        "base_model_name_or_path": config.base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": json_number(config.alpha, true),
        "lora_bias": false,
        "lora_dropout": json_number(config.dropout, false),
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": config.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": sorted_modules(&config.target_modules),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    });
    Ok(serde_json::to_string_pretty(&value)? + "\n")
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The bytes of `adapter_model.safetensors` for `adapter`.
fn weights_bytes(adapter: &AdapterFiles) -> Result<Vec<u8>> {
    let r = adapter.config.r;
    ensure!(!adapter.pairs.is_empty(), "the adapter has no LoRA weights");
    let mut tensors = Vec::with_capacity(2 * adapter.pairs.len());
    for ((layer, module), pair) in &adapter.pairs {
        let at = format!("layer {layer} {module}");
        ensure!(
            adapter.config.target_modules.contains(module),
            "{at}: module is not in target_modules {:?}",
            adapter.config.target_modules
        );
        ensure!(
            pair.in_dim > 0 && pair.out_dim > 0,
            "{at}: in_dim and out_dim must be positive, got {} and {}",
            pair.in_dim,
            pair.out_dim
        );
        for (factor, values, shape) in [
            (Factor::A, &pair.a, [r, pair.in_dim]),
            (Factor::B, &pair.b, [pair.out_dim, r]),
        ] {
            ensure!(
                shape[0].checked_mul(shape[1]) == Some(values.len()),
                "{at}: lora_{factor:?} has {} values, expected {} x {}",
                values.len(),
                shape[0],
                shape[1]
            );
            tensors.push((
                tensor_name(*layer, module, factor),
                shape.to_vec(),
                f32_bytes(values),
            ));
        }
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.as_str(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// Writes `bytes` to `dir/name` atomically.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    crate::atomic::write(&dir.join(name), bytes)
}

/// Saves `adapter` into `dir` (created if missing) as `adapter_config.json`
/// and `adapter_model.safetensors`, replacing any previous adapter there.
///
/// Everything is validated before anything is written. Each file is written
/// to a temporary file in `dir` and renamed into place, the weights first,
/// so no half-written file is ever visible.
pub fn save(dir: &Path, adapter: &AdapterFiles) -> Result<()> {
    let config = config_json(&adapter.config)?;
    let weights = weights_bytes(adapter)?;
    fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    write_atomic(dir, WEIGHTS_FILE, &weights)?;
    write_atomic(dir, CONFIG_FILE, config.as_bytes())?;
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| anyhow!("cannot sync {}: {e}", dir.display()))?;
    Ok(())
}

/// Reads a file of the adapter, saying which one is missing.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => anyhow!("{} not found", path.display()),
        _ => anyhow!("cannot read {}: {e}", path.display()),
    })
}

/// Loads the adapter saved in `dir` by `save` or by PEFT.
pub fn load(dir: &Path) -> Result<AdapterFiles> {
    let config_path = dir.join(CONFIG_FILE);
    let weights_path = dir.join(WEIGHTS_FILE);
    let config_bytes = read_file(&config_path)?;
    let config =
        parse_config(&config_bytes).map_err(|e| anyhow!("{}: {e}", config_path.display()))?;
    let weights = read_file(&weights_path)?;
    let pairs =
        parse_weights(&weights, &config).map_err(|e| anyhow!("{}: {e}", weights_path.display()))?;
    Ok(AdapterFiles { config, pairs })
}

fn parse_config(bytes: &[u8]) -> Result<AdapterConfig> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| anyhow!("invalid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        bail!("expected a JSON object");
    };
    match obj.get("peft_type") {
        Some(Value::String(kind)) if kind == "LORA" => {}
        Some(other) => bail!("peft_type is {other}; only \"LORA\" is supported"),
        None => bail!("missing \"peft_type\""),
    }
    match obj.get("bias") {
        None | Some(Value::Null) => {}
        Some(Value::String(bias)) if bias == "none" => {}
        Some(other) => bail!("\"bias\": {other} is not supported (only \"none\")"),
    }
    for key in UNSUPPORTED_OPTIONS {
        if let Some(value) = obj.get(key).filter(|v| !is_unset(v)) {
            bail!("\"{key}\": {value} is not supported");
        }
    }
    let r = match obj.get("r") {
        Some(value) => value
            .as_u64()
            .and_then(|r| usize::try_from(r).ok())
            .filter(|&r| r > 0)
            .ok_or_else(|| anyhow!("\"r\" must be a positive integer, got {value}"))?,
        None => bail!("missing \"r\""),
    };
    let alpha = number(&obj, "lora_alpha")?.ok_or_else(|| anyhow!("missing \"lora_alpha\""))?;
    let dropout = number(&obj, "lora_dropout")?.unwrap_or(0.0);
    let target_modules = match obj.get("target_modules") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|m| match m {
                Value::String(m) => Ok(m.clone()),
                other => Err(anyhow!("\"target_modules\" must hold strings, got {other}")),
            })
            .collect::<Result<Vec<_>>>()?,
        None | Some(Value::Null) => bail!("missing \"target_modules\""),
        Some(other) => {
            bail!("\"target_modules\": {other} is not supported (expected a list of module names)")
        }
    };
    let base_model = match obj.get("base_model_name_or_path") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(name)) => name.clone(),
        Some(other) => bail!("\"base_model_name_or_path\" must be a string, got {other}"),
    };
    let config = AdapterConfig {
        r,
        alpha,
        dropout,
        target_modules: sorted_modules(&target_modules),
        base_model,
    };
    check_config(&config)?;
    Ok(config)
}

/// Whether a config value leaves an option off: null, false, `[]` or `{}`.
fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Array(list) => list.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

fn number(obj: &Map<String, Value>, key: &str) -> Result<Option<f32>> {
    match obj.get(key) {
        None => Ok(None),
        Some(value) => match value.as_f64() {
            Some(x) => Ok(Some(x as f32)),
            None => bail!("\"{key}\" must be a number, got {value}"),
        },
    }
}

/// The values of a tensor as `f32`.
fn tensor_values(view: &TensorView) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!("dtype {other:?} is not supported (expected F32, F16 or BF16)"),
    })
}

type Half = Option<(Vec<usize>, Vec<f32>)>;

fn parse_weights(
    bytes: &[u8],
    config: &AdapterConfig,
) -> Result<BTreeMap<(usize, String), LoraPair>> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("not a valid safetensors file: {e}"))?;
    let mut halves: BTreeMap<(usize, String), (Half, Half)> = BTreeMap::new();
    for (name, view) in tensors.iter() {
        let Some((layer, module, factor)) = parse_tensor_name(name) else {
            bail!(
                "tensor {name:?} is not a PEFT LoRA weight (expected \
                 base_model.model.model.layers.<i>.<self_attn|mlp>.<module>.lora_<A|B>.weight)"
            );
        };
        ensure!(
            config.target_modules.iter().any(|m| m == module),
            "tensor {name:?}: module {module:?} is not listed in target_modules {:?}",
            config.target_modules
        );
        let shape = view.shape().to_vec();
        ensure!(
            shape.len() == 2 && shape.iter().all(|&d| d > 0),
            "tensor {name:?} has shape {shape:?}, expected two non-zero dimensions"
        );
        let values = tensor_values(&view).map_err(|e| anyhow!("tensor {name:?}: {e}"))?;
        let slot = halves.entry((layer, module.to_string())).or_default();
        let half = match factor {
            Factor::A => &mut slot.0,
            Factor::B => &mut slot.1,
        };
        *half = Some((shape, values));
    }
    ensure!(!halves.is_empty(), "contains no LoRA tensors");
    let r = config.r;
    let mut pairs = BTreeMap::new();
    for ((layer, module), halves) in halves {
        let name = |factor| tensor_name(layer, &module, factor);
        let ((a_shape, a), (b_shape, b)) = match halves {
            (Some(a), Some(b)) => (a, b),
            (Some(_), None) => bail!(
                "tensor {:?} has no matching {:?}",
                name(Factor::A),
                name(Factor::B)
            ),
            (None, _) => bail!(
                "tensor {:?} has no matching {:?}",
                name(Factor::B),
                name(Factor::A)
            ),
        };
        ensure!(
            a_shape[0] == r,
            "tensor {:?} has shape {a_shape:?}, expected [r, in] with r = {r}",
            name(Factor::A)
        );
        ensure!(
            b_shape[1] == r,
            "tensor {:?} has shape {b_shape:?}, expected [out, r] with r = {r}",
            name(Factor::B)
        );
        let pair = LoraPair {
            a,
            b,
            in_dim: a_shape[1],
            out_dim: b_shape[0],
        };
        pairs.insert((layer, module), pair);
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small adapter over two layers with q/v attention and down_proj.
    fn sample() -> AdapterFiles {
        let config = AdapterConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.05,
            target_modules: vec!["down_proj".into(), "q_proj".into(), "v_proj".into()],
            base_model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
        };
        let mut pairs = BTreeMap::new();
        let mut seed = 0.0f32;
        for layer in 0..2 {
            for (module, in_dim, out_dim) in
                [("q_proj", 8, 8), ("v_proj", 8, 4), ("down_proj", 6, 8)]
            {
                let mut values = |n: usize| {
                    (0..n)
                        .map(|_| {
                            seed += 1.0;
                            (seed * 0.37).sin()
                        })
                        .collect::<Vec<f32>>()
                };
                let pair = LoraPair {
                    a: values(2 * in_dim),
                    b: values(out_dim * 2),
                    in_dim,
                    out_dim,
                };
                pairs.insert((layer, module.to_string()), pair);
            }
        }
        AdapterFiles { config, pairs }
    }

    fn saved(adapter: &AdapterFiles) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), adapter).unwrap();
        dir
    }

    fn config_value(dir: &Path) -> Map<String, Value> {
        let text = fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
        match serde_json::from_str(&text).unwrap() {
            Value::Object(obj) => obj,
            other => panic!("config is not an object: {other}"),
        }
    }

    fn write_config(dir: &Path, obj: &Map<String, Value>) {
        fs::write(dir.join(CONFIG_FILE), serde_json::to_string(obj).unwrap()).unwrap();
    }

    /// A tensor to write: name, dtype, shape, bytes.
    type RawTensor<'a> = (&'a str, Dtype, Vec<usize>, Vec<u8>);

    /// Writes a weights file holding `tensors`.
    fn write_tensors(dir: &Path, tensors: &[RawTensor]) {
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (*name, TensorView::new(*dtype, shape.clone(), data).unwrap())
            })
            .collect();
        fs::write(
            dir.join(WEIGHTS_FILE),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
    }

    fn load_error(dir: &Path) -> String {
        let err = load(dir).unwrap_err().to_string();
        err.replace(&dir.display().to_string(), "DIR")
    }

    #[test]
    fn round_trip() {
        let adapter = sample();
        let dir = saved(&adapter);
        assert_eq!(load(dir.path()).unwrap(), adapter);
    }

    #[test]
    fn config_has_peft_keys_and_values() {
        let dir = saved(&sample());
        let expected = json!({
            "alpha_pattern": {},
            "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": 4,
            "lora_bias": false,
            "lora_dropout": 0.05,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": 2,
            "rank_pattern": {},
            "revision": null,
            "target_modules": ["down_proj", "q_proj", "v_proj"],
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": false,
        });
        assert_eq!(Value::Object(config_value(dir.path())), expected);
        let text = fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap();
        assert!(text.contains("\"lora_alpha\": 4,"), "{text}");
        assert!(text.contains("\"lora_dropout\": 0.05,"), "{text}");
    }

    #[test]
    fn target_modules_are_written_sorted() {
        let mut adapter = sample();
        adapter.config.target_modules = vec![
            "v_proj".into(),
            "q_proj".into(),
            "down_proj".into(),
            "q_proj".into(),
        ];
        adapter.config.alpha = 2.5;
        let dir = saved(&adapter);
        let obj = config_value(dir.path());
        assert_eq!(
            obj["target_modules"],
            json!(["down_proj", "q_proj", "v_proj"])
        );
        assert_eq!(obj["lora_alpha"], json!(2.5));
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.config.target_modules, sample().config.target_modules);
        assert_eq!(loaded.config.alpha, 2.5);
    }

    #[test]
    fn tensor_names_and_shapes_are_peft_ones() {
        let adapter = sample();
        let dir = saved(&adapter);
        let bytes = fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let mut found: Vec<(String, Vec<usize>)> = tensors
            .iter()
            .map(|(name, view)| {
                assert_eq!(view.dtype(), Dtype::F32);
                (name.to_string(), view.shape().to_vec())
            })
            .collect();
        found.sort();
        let mut expected = Vec::new();
        for layer in 0..2 {
            let p = format!("base_model.model.model.layers.{layer}");
            expected.push((format!("{p}.mlp.down_proj.lora_A.weight"), vec![2, 6]));
            expected.push((format!("{p}.mlp.down_proj.lora_B.weight"), vec![8, 2]));
            expected.push((format!("{p}.self_attn.q_proj.lora_A.weight"), vec![2, 8]));
            expected.push((format!("{p}.self_attn.q_proj.lora_B.weight"), vec![8, 2]));
            expected.push((format!("{p}.self_attn.v_proj.lora_A.weight"), vec![2, 8]));
            expected.push((format!("{p}.self_attn.v_proj.lora_B.weight"), vec![4, 2]));
        }
        expected.sort();
        assert_eq!(found, expected);
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let format = metadata.metadata().as_ref().and_then(|m| m.get("format"));
        assert_eq!(format.map(String::as_str), Some("pt"));
        let b = tensors
            .tensor("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")
            .unwrap();
        let pair = &adapter.pairs[&(1, "v_proj".to_string())];
        assert_eq!(tensor_values(&b).unwrap(), pair.b);
    }

    #[test]
    fn save_replaces_files_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("nested").join("adapter");
        let first = sample();
        save(&target, &first).unwrap();
        let mut second = sample();
        second.config.r = 1;
        second.config.target_modules = vec!["k_proj".into()];
        let pair = LoraPair {
            a: vec![1.0, 2.0],
            b: vec![3.0],
            in_dim: 2,
            out_dim: 1,
        };
        second.pairs = BTreeMap::from([((3, "k_proj".to_string()), pair)]);
        save(&target, &second).unwrap();
        assert_eq!(load(&target).unwrap(), second);
        let mut names: Vec<String> = fs::read_dir(&target)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [CONFIG_FILE, WEIGHTS_FILE]);
    }

    #[test]
    fn invalid_adapter_is_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("adapter");
        let mut adapter = sample();
        adapter
            .pairs
            .get_mut(&(0, "q_proj".to_string()))
            .unwrap()
            .a
            .pop();
        let err = save(&target, &adapter).unwrap_err().to_string();
        assert_eq!(err, "layer 0 q_proj: lora_A has 15 values, expected 2 x 8");
        assert!(!target.exists());

        let mut adapter = sample();
        adapter.config.target_modules.retain(|m| m != "v_proj");
        let err = save(&target, &adapter).unwrap_err().to_string();
        assert!(
            err.starts_with("layer 0 v_proj: module is not in target_modules"),
            "{err}"
        );

        let mut adapter = sample();
        adapter.config.target_modules.push("lm_head".into());
        let err = save(&target, &adapter).unwrap_err().to_string();
        assert!(
            err.starts_with("target module \"lm_head\" is not supported"),
            "{err}"
        );

        let mut adapter = sample();
        adapter.pairs.clear();
        let err = save(&target, &adapter).unwrap_err().to_string();
        assert_eq!(err, "the adapter has no LoRA weights");
        assert!(!target.exists());
    }

    #[test]
    fn missing_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_error(dir.path()), "DIR/adapter_config.json not found");
        let full = saved(&sample());
        fs::copy(full.path().join(CONFIG_FILE), dir.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(
            load_error(dir.path()),
            "DIR/adapter_model.safetensors not found"
        );
    }

    #[test]
    fn config_errors() {
        let cases: [(&str, Value, &str); 13] = [
            (
                "peft_type",
                json!("IA3"),
                "peft_type is \"IA3\"; only \"LORA\" is supported",
            ),
            (
                "use_dora",
                json!(true),
                "\"use_dora\": true is not supported",
            ),
            (
                "fan_in_fan_out",
                json!(true),
                "\"fan_in_fan_out\": true is not supported",
            ),
            (
                "bias",
                json!("all"),
                "\"bias\": \"all\" is not supported (only \"none\")",
            ),
            (
                "layers_to_transform",
                json!([0, 1]),
                "\"layers_to_transform\": [0,1] is not supported",
            ),
            (
                "use_rslora",
                json!(true),
                "\"use_rslora\": true is not supported",
            ),
            (
                "rank_pattern",
                json!({"q_proj": 4}),
                "\"rank_pattern\": {\"q_proj\":4} is not supported",
            ),
            (
                "modules_to_save",
                json!(["lm_head"]),
                "\"modules_to_save\": [\"lm_head\"] is not supported",
            ),
            ("r", json!(0), "\"r\" must be a positive integer, got 0"),
            ("r", json!(2.5), "\"r\" must be a positive integer, got 2.5"),
            (
                "lora_alpha",
                json!("8"),
                "\"lora_alpha\" must be a number, got \"8\"",
            ),
            (
                "target_modules",
                json!("q_proj|v_proj"),
                "\"target_modules\": \"q_proj|v_proj\" is not supported \
                 (expected a list of module names)",
            ),
            (
                "target_modules",
                json!(["q_proj", "embed_tokens"]),
                "target module \"embed_tokens\" is not supported (supported: q_proj, k_proj, \
                 v_proj, o_proj, gate_proj, up_proj, down_proj)",
            ),
        ];
        for (key, value, expected) in cases {
            let dir = saved(&sample());
            let mut obj = config_value(dir.path());
            obj.insert(key.to_string(), value);
            write_config(dir.path(), &obj);
            assert_eq!(
                load_error(dir.path()),
                format!("DIR/adapter_config.json: {expected}")
            );
        }
        let dir = saved(&sample());
        fs::write(dir.path().join(CONFIG_FILE), "{\"peft_type\": ").unwrap();
        let err = load_error(dir.path());
        assert!(
            err.starts_with("DIR/adapter_config.json: invalid JSON: "),
            "{err}"
        );
        for key in ["peft_type", "r", "lora_alpha", "target_modules"] {
            let dir = saved(&sample());
            let mut obj = config_value(dir.path());
            obj.remove(key);
            write_config(dir.path(), &obj);
            assert_eq!(
                load_error(dir.path()),
                format!("DIR/adapter_config.json: missing \"{key}\"")
            );
        }
    }

    #[test]
    fn peft_written_config_with_extra_keys_loads() {
        let dir = saved(&sample());
        let mut obj = config_value(dir.path());
        for (key, value) in [
            ("peft_version", json!("0.21.2")),
            ("megatron_core", json!("megatron.core")),
            ("loftq_config", json!({})),
            ("qalora_group_size", json!(16)),
            ("eva_config", Value::Null),
            ("use_qalora", json!(false)),
            ("layers_pattern", Value::Null),
            ("some_future_option", json!({"x": 1})),
        ] {
            obj.insert(key.to_string(), value);
        }
        obj.remove("lora_dropout");
        obj.remove("bias");
        write_config(dir.path(), &obj);
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.config.dropout, 0.0);
        assert_eq!(loaded.pairs, sample().pairs);
    }

    #[test]
    fn weights_errors() {
        let a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
        let b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
        let f32s = |n: usize| f32_bytes(&vec![0.5; n]);
        let k = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
        let cases: Vec<(Vec<RawTensor>, String)> = vec![
            (
                vec![(a, Dtype::F32, vec![2, 8], f32s(16))],
                format!("tensor \"{a}\" has no matching \"{b}\""),
            ),
            (
                vec![(b, Dtype::F32, vec![8, 2], f32s(16))],
                format!("tensor \"{b}\" has no matching \"{a}\""),
            ),
            (
                vec![
                    (a, Dtype::F32, vec![3, 8], f32s(24)),
                    (b, Dtype::F32, vec![8, 2], f32s(16)),
                ],
                format!("tensor \"{a}\" has shape [3, 8], expected [r, in] with r = 2"),
            ),
            (
                vec![
                    (a, Dtype::F32, vec![2, 8], f32s(16)),
                    (b, Dtype::F32, vec![2, 8], f32s(16)),
                ],
                format!("tensor \"{b}\" has shape [2, 8], expected [out, r] with r = 2"),
            ),
            (
                vec![(a, Dtype::F32, vec![16], f32s(16))],
                format!("tensor \"{a}\" has shape [16], expected two non-zero dimensions"),
            ),
            (
                vec![(a, Dtype::F64, vec![2, 8], vec![0; 128])],
                format!("tensor \"{a}\": dtype F64 is not supported (expected F32, F16 or BF16)"),
            ),
            (
                vec![(k, Dtype::F32, vec![2, 8], f32s(16))],
                format!(
                    "tensor \"{k}\": module \"k_proj\" is not listed in target_modules \
                     [\"down_proj\", \"q_proj\", \"v_proj\"]"
                ),
            ),
            (vec![], "contains no LoRA tensors".to_string()),
        ];
        for (tensors, expected) in cases {
            let dir = saved(&sample());
            write_tensors(dir.path(), &tensors);
            assert_eq!(
                load_error(dir.path()),
                format!("DIR/adapter_model.safetensors: {expected}")
            );
        }
        for name in [
            "base_model.model.lm_head.lora_A.weight",
            "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
            "base_model.model.model.layers.01.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
        ] {
            let dir = saved(&sample());
            write_tensors(dir.path(), &[(name, Dtype::F32, vec![2, 8], f32s(16))]);
            let err = load_error(dir.path());
            assert!(
                err.starts_with(&format!(
                    "DIR/adapter_model.safetensors: tensor \"{name}\" is not a PEFT LoRA weight"
                )),
                "{err}"
            );
        }
        let dir = saved(&sample());
        fs::write(dir.path().join(WEIGHTS_FILE), b"not safetensors").unwrap();
        let err = load_error(dir.path());
        assert!(
            err.starts_with("DIR/adapter_model.safetensors: not a valid safetensors file"),
            "{err}"
        );
    }

    #[test]
    fn half_precision_is_converted() {
        let a = "base_model.model.model.layers.4.mlp.down_proj.lora_A.weight";
        let b = "base_model.model.model.layers.4.mlp.down_proj.lora_B.weight";
        let a_values = [0.5f32, -1.25, 2.0, 0.0, 3.5, -0.125];
        let b_values = [1.5f32, -2.0, 0.25, 4.0];
        let f16s: Vec<u8> = a_values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let bf16s: Vec<u8> = b_values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let dir = saved(&sample());
        write_tensors(
            dir.path(),
            &[
                (a, Dtype::F16, vec![2, 3], f16s),
                (b, Dtype::BF16, vec![2, 2], bf16s),
            ],
        );
        let loaded = load(dir.path()).unwrap();
        let expected = LoraPair {
            a: a_values.to_vec(),
            b: b_values.to_vec(),
            in_dim: 3,
            out_dim: 2,
        };
        assert_eq!(
            loaded.pairs,
            BTreeMap::from([((4, "down_proj".to_string()), expected)])
        );
    }
}
