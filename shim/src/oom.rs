//! TaskOOM: each OOM kill in a partition's memory cgroup, published as
//! containerd's runc shim does (CRI reports such a container as OOMKilled).
//!
//! One thread per task blocks on the kernel's notification: on cgroup v1 an
//! eventfd registered on `memory.oom_control`, on v2 inotify on
//! `memory.events` (its `oom_kill` count). Both also wake when the cgroup is
//! removed, which ends the thread.

use crate::events::Events;
use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::topics;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Follows the OOM kills of the partition whose cgroup is `cgroups_path`.
pub fn watch(cgroups_path: &Path, container_id: &str, events: Arc<Events>) {
    let relative = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    let v1 = Path::new(CGROUP_ROOT).join("memory").join(relative);
    let v2 = Path::new(CGROUP_ROOT).join(relative);
    let id = container_id.to_owned();
    let publish = move || {
        let mut event = TaskOOM::new();
        event.container_id = id.clone();
        events.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(event));
    };
    let name = format!("oom-{container_id}");
    let id = container_id.to_owned();
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let followed = if v1.is_dir() {
            follow_v1(&v1, publish)
        } else {
            follow_v2(&v2, publish)
        };
        if let Err(e) = followed {
            log::warn!("{id}: OOM kills are not reported: {e}");
        }
    });
    if let Err(e) = spawned {
        log::warn!("{container_id}: cannot follow OOM kills: {e}");
    }
}

fn follow_v1(dir: &Path, on_oom: impl Fn()) -> std::io::Result<()> {
    // SAFETY: eventfd returns a new fd or -1.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is ours alone.
    let mut eventfd = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let oom_control = File::open(dir.join("memory.oom_control"))?;
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", eventfd.as_raw_fd(), oom_control.as_raw_fd()),
    )?;
    let mut count = [0u8; 8];
    loop {
        eventfd.read_exact(&mut count)?;
        if !dir.exists() {
            return Ok(());
        }
        on_oom();
    }
}

fn follow_v2(dir: &Path, on_oom: impl Fn()) -> std::io::Result<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let file: PathBuf = dir.join("memory.events");
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(&file, AddWatchFlags::IN_MODIFY)?;
    let mut kills = oom_kills(&file).unwrap_or(0);
    loop {
        let events = inotify.read_events()?;
        if events
            .iter()
            .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
        {
            return Ok(());
        }
        let now = oom_kills(&file).unwrap_or(kills);
        for _ in kills..now {
            on_oom();
        }
        kills = now;
    }
}

/// How many processes the OOM killer ended in the partition whose cgroup
/// is `cgroups_path`, from v1's `memory.oom_control` or v2's `memory.events`.
pub fn kills(cgroups_path: &Path) -> Option<u64> {
    let relative = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    let v1 = Path::new(CGROUP_ROOT).join("memory").join(relative);
    if v1.is_dir() {
        return oom_kills(&v1.join("memory.oom_control"));
    }
    oom_kills(&Path::new(CGROUP_ROOT).join(relative).join("memory.events"))
}

/// The `oom_kill` line of v2's `memory.events` or v1's `memory.oom_control`.
fn oom_kills(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}
