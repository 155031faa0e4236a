//! What the shim must remember about a task to clean up after it, written to
//! `<bundle>/furnace.json`. `containerd-shim-furnace-v1 delete` (run by
//! containerd when a shim died) reads it to remove every trace.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const RECORD_FILE: &str = "furnace.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub namespace: String,
    /// The bundle, which names the owner of the task's host id ranges
    /// (`id_ranges::owner`).
    #[serde(default)]
    pub bundle: PathBuf,
    /// libcontainer's state root for this namespace.
    pub state_root: PathBuf,
    /// The cgroup path the partition runs in (`linux.cgroupsPath`).
    pub cgroups_path: PathBuf,
    /// The rootfs the shim mounted (`rootfs::partition_dir(..)/rootfs`).
    pub mounted_rootfs: Option<PathBuf>,
    /// The sidecar registration, for an app.
    pub guest: Option<String>,
    pub app_id: Option<String>,
    pub admin_socket: Option<PathBuf>,
    /// The limits in force at create: `Update` may tighten below them, never loosen.
    pub limits: Option<furnace_runtime::Limits>,
    /// The facilities relay, for an app that names a backend.
    #[serde(default)]
    pub relay: Option<crate::relay::RelayRecord>,
}

impl TaskRecord {
    pub fn path(bundle: &Path) -> PathBuf {
        bundle.join(RECORD_FILE)
    }

    pub fn save(&self, bundle: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = bundle.join(format!(".{RECORD_FILE}.tmp"));
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, Self::path(bundle))
    }

    pub fn load(bundle: &Path) -> Option<TaskRecord> {
        let text = std::fs::read(Self::path(bundle)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}
