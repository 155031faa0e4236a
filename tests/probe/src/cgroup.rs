//! Finding this process's cgroup limit files from inside the container.

use crate::{io, outcome};
use nix::errno::Errno;
use std::path::{Path, PathBuf};

/// The limit files the probe reports, with the controller that owns each
/// (v1 names; the v2 files live in the unified hierarchy).
pub const FILES: &[(&str, &str)] = &[
    ("pids.max", "pids"),
    ("memory.limit_in_bytes", "memory"),
    ("memory.max", "memory"),
    ("cpu.cfs_quota_us", "cpu"),
    ("cpu.cfs_period_us", "cpu"),
    ("cpu.max", "cpu"),
];

const ROOT: &str = "/sys/fs/cgroup";

/// One line of `/proc/self/cgroup`: `hierarchy:controllers:path`.
#[derive(Debug, Clone)]
pub struct Membership {
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn memberships() -> Result<Vec<Membership>, Errno> {
    let text = io(std::fs::read_to_string("/proc/self/cgroup"))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _hierarchy = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(|c| c.trim_start_matches("name=").to_string())
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect())
}

fn join(base: &Path, path: &str) -> PathBuf {
    let mut out = base.to_path_buf();
    out.extend(path.split('/').filter(|p| !p.is_empty() && *p != ".."));
    out
}

/// Where `file` may be, most specific first.
pub fn candidates(file: &str, controller: &str, memberships: &[Membership]) -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let controller_dir = root.join(controller);
    let mut out = Vec::new();
    for m in memberships {
        if m.controllers.iter().any(|c| c == controller) {
            out.push(join(&controller_dir, &m.path).join(file));
        }
    }
    out.push(controller_dir.join(file));
    // cgroup v2: the unified hierarchy's entry has no controllers.
    for m in memberships.iter().filter(|m| m.controllers.is_empty()) {
        out.push(join(root, &m.path).join(file));
    }
    out.push(root.join(file));
    out.dedup();
    out
}

/// The trimmed contents of the first candidate that reads, with its path;
/// or the outcome of the last one tried.
pub fn read_limit(
    file: &str,
    controller: &str,
    memberships: &[Membership],
) -> Result<(String, PathBuf), String> {
    let mut last = Err(Errno::ENOENT);
    for path in candidates(file, controller, memberships) {
        match io(std::fs::read_to_string(&path)) {
            Ok(text) => return Ok((text.trim().to_string(), path)),
            Err(e) => last = Err::<(), _>(e),
        }
    }
    Err(outcome(&last))
}

/// The first candidate of `file` that exists.
pub fn existing(file: &str, controller: &str, memberships: &[Membership]) -> Option<PathBuf> {
    candidates(file, controller, memberships)
        .into_iter()
        .find(|p| p.exists())
}
