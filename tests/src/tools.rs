//! Finds the external tools the tests drive (grpcurl, ...). A missing tool is
//! a failed test with the install hint, never a skipped one.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// Finds `name` in `$WEFT_TOOLS/venv/bin` (where scripts/setup installs
/// Python-shipped tools), `~/.cache/weft/tools/venv/bin`, or on PATH.
pub fn tool(name: &str) -> Result<PathBuf> {
    let tools = std::env::var_os("WEFT_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weft/tools")));
    let mut dirs: Vec<PathBuf> = tools.into_iter().map(|t| t.join("venv/bin")).collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} not found: run `source scripts/setup` to install it")
}
