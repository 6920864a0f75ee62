//! Atomic file writes: write to a temporary file beside the target, sync, then rename
//! over it, so a reader (or a crash) sees the old file or the new one, never half.

use anyhow::{Result, anyhow};
use std::io::Write;
use std::path::Path;

/// Replace `path` with `bytes` atomically (its directory must exist).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let failed = |e: std::io::Error| anyhow!("cannot write {}: {e}", path.display());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut builder = tempfile::Builder::new();
    let suffix = format!("-{name}");
    builder.prefix(".tmp-").suffix(&suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(failed)?;
    tmp.write_all(bytes).map_err(failed)?;
    tmp.as_file().sync_all().map_err(failed)?;
    tmp.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}
