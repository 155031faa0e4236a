//! A task's facilities relay as the host sees it: its directory, its
//! cgroup and its processes (`shim/src/relay/`).

use crate::containerd::NAMESPACE;
use std::path::{Path, PathBuf};

/// The relay's directory for task `id` (`shim/src/relay/files.rs`).
pub fn relay_dir(id: &str) -> PathBuf {
    Path::new("/run/furnace/fac").join(NAMESPACE).join(id)
}

/// The relay's cgroup in the pids hierarchy (`shim/src/relay/mod.rs`).
pub fn relay_cgroup(id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/pids/furnace-fac")
        .join(NAMESPACE)
        .join(id)
}

/// Pids in the relay's cgroup, from the pids hierarchy.
pub fn relay_pids(id: &str) -> Vec<u32> {
    std::fs::read_to_string(relay_cgroup(id).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// The relay process itself (not its init): the one that runs
/// `/run/furnace/relay` (as its own mount namespace names it).
pub fn relay_process(id: &str) -> Option<u32> {
    relay_pids(id).into_iter().find(|pid| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe == Path::new("/run/furnace/relay"))
    })
}

/// Every process on the host that runs `/run/furnace/relay` (as its own
/// mount namespace names it) in a cgroup of task `id`'s relay, in any
/// hierarchy, found by a scan of `/proc` rather than by the cgroup's path.
pub fn relay_processes_anywhere(id: &str) -> Vec<(u32, String)> {
    let mine = format!("/furnace-fac/{NAMESPACE}/{id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        panic!("reading /proc");
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let named = cgroup.lines().any(|l| {
                l.splitn(3, ':')
                    .nth(2)
                    .is_some_and(|path| path == mine || path.starts_with(&format!("{mine}/")))
            });
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            (named && exe == Path::new("/run/furnace/relay")).then_some((pid, cgroup))
        })
        .collect()
}

/// The relay of task `id` is gone: its cgroup is removed, and no process on
/// the host runs the relay in it (the second would catch a wrong path in
/// the first; the killed-relay test shows the path while a relay runs).
pub fn assert_relay_gone(id: &str) {
    assert!(
        !relay_cgroup(id).exists(),
        "the relay's cgroup {} is removed",
        relay_cgroup(id).display()
    );
    let left = relay_processes_anywhere(id);
    assert!(left.is_empty(), "relays of {id} still run: {left:?}");
}
