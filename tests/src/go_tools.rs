//! The ecosystem peers the tests drive, built from their Go modules by
//! scripts/go-tools.sh at the versions tools/go.mod pins, and cached per
//! version under /var/cache/furnace/go.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The binary `tool` (`crictl`, `etcd`, `kubectl`, `kube-apiserver`, ...):
/// `FURNACE_<TOOL>` when set (`FURNACE_KUBE_APISERVER`), else the one
/// scripts/go-tools.sh builds, once per version.
pub fn path(tool: &str) -> Result<PathBuf> {
    let variable = format!("FURNACE_{}", tool.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&variable) {
        return Ok(path.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/go-tools.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(tool)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let path = PathBuf::from(
        crate::host::stdout_if_success(&format!("scripts/go-tools.sh {tool}"), &out)?.trim(),
    );
    anyhow::ensure!(
        path.is_file(),
        "go-tools.sh printed {}, which is no file",
        path.display()
    );
    Ok(path)
}
