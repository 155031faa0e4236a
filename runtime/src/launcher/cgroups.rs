//! The partition's cgroups, read by path: its pids, its statistics, and the
//! removal of the empty parent cgroups libcontainer leaves behind.

pub use libcgroups::common::CgroupSetup;
use libcgroups::common::{create_cgroup_manager, CgroupConfig, CgroupManager, ControllerOpt};
pub use libcgroups::stats::{MemoryData, Stats};
use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroups of one partition, at `cgroups_path` (relative to each
/// hierarchy's root, like the spec's `linux.cgroupsPath`).
#[derive(Clone, Debug)]
pub struct PartitionCgroups {
    path: PathBuf,
    id: String,
}

impl PartitionCgroups {
    pub fn new(cgroups_path: &Path, id: &str) -> Self {
        PartitionCgroups {
            path: cgroups_path.to_owned(),
            id: id.to_owned(),
        }
    }

    fn manager(&self) -> Result<libcgroups::common::AnyCgroupManager, String> {
        create_cgroup_manager(CgroupConfig {
            cgroup_path: self.path.clone(),
            systemd_cgroup: false,
            container_name: self.id.clone(),
        })
        .map_err(|e| format!("cgroups of {}: {e}", self.id))
    }

    /// Every process in the partition.
    pub fn pids(&self) -> Result<Vec<u32>, String> {
        let pids = self
            .manager()?
            .get_all_pids()
            .map_err(|e| format!("pids of {}: {e}", self.id))?;
        Ok(pids.into_iter().map(|p| p.as_raw() as u32).collect())
    }

    /// Writes `resources` into the partition's cgroups (an `Update`).
    pub fn apply(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<(), String> {
        self.manager()?
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| format!("updating the cgroups of {}: {e}", self.id))
    }

    pub fn stats(&self) -> Result<Stats, String> {
        self.manager()?
            .stats()
            .map_err(|e| format!("cgroup statistics of {}: {e}", self.id))
    }

    /// Removes the partition's own (empty) cgroup from every hierarchy, for
    /// a partition libcontainer never got to delete.
    pub fn remove_leaf(&self) {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        for root in hierarchy_roots() {
            let _ = std::fs::remove_dir(root.join(relative));
        }
    }

    /// Removes the empty ancestors of the partition's cgroup, up to but not
    /// including the hierarchy root, in every mounted hierarchy. A parent
    /// still used by another partition stays (rmdir fails with EBUSY or
    /// ENOTEMPTY, and that is fine).
    pub fn remove_empty_parents(&self) {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        for root in hierarchy_roots() {
            let mut dir = relative.parent();
            while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
                if std::fs::remove_dir(root.join(d)).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
    }

    /// Whether the partition's own cgroup is gone from every hierarchy.
    pub fn is_removed(&self) -> bool {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        hierarchy_roots()
            .iter()
            .all(|root| !root.join(relative).exists())
    }
}

/// Every mounted hierarchy: `/sys/fs/cgroup/<controller>` on v1 (symlinked
/// aliases such as `cpu` → `cpu,cpuacct` skipped), and the root itself, which
/// is the one hierarchy on a v2-only host.
fn hierarchy_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::fs::read_dir(CGROUP_ROOT)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    roots.push(PathBuf::from(CGROUP_ROOT));
    roots
}

/// The host's cgroup layout, for choosing v1 or v2 metrics.
pub fn setup() -> Option<CgroupSetup> {
    libcgroups::common::get_cgroup_setup().ok()
}
