//! Host processes and mounts the fixtures started: waiting for and stopping
//! them by pid, finding a containerd's shims and their children, and
//! unmounting what they left. Only pids and paths the caller names are touched.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `pid` has exited, reaping it if it is our child.
pub(crate) fn has_exited(pid: i32) -> bool {
    if pid <= 0 {
        return true; // never wait for or signal a process group
    }
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        // Not our child (a shim): gone when /proc has no live entry for it.
        Err(_) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        },
    }
}

pub(crate) fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if has_exited(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; returns whether it is gone.
pub(crate) fn stop(pid: i32) -> bool {
    if has_exited(pid) {
        return true;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    if wait_gone(pid, STOP_TIMEOUT) {
        return true;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    wait_gone(pid, STOP_TIMEOUT)
}

/// Every pid in /proc.
pub(crate) fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

pub(crate) fn shims_of(address: &Path) -> Vec<u32> {
    let address = address.as_os_str().as_bytes();
    let mut pids: Vec<u32> = all_pids()
        .filter(|pid| {
            // Zombies have an empty command line and do not match.
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_shim = args.first().is_some_and(|argv0| {
                let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or(argv0);
                name.starts_with(b"containerd-shim-")
            });
            is_shim
                && args
                    .windows(2)
                    .any(|w| matches!(w[0], b"-address" | b"--address") && w[1] == address)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Direct children of `pid`, from /proc/*/stat.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    all_pids()
        .filter(|child| {
            // pid (comm) state ppid …; comm may contain spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Removes the cgroups named in a `/proc/<pid>/cgroup` from every hierarchy
/// under /sys/fs/cgroup (rmdir: only empty cgroups go), never the root.
pub(crate) fn remove_cgroups(proc_cgroup: &str) {
    let mut hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    hierarchies.push(PathBuf::from("/sys/fs/cgroup")); // cgroup v2
    for path in proc_cgroup.lines().filter_map(|l| l.splitn(3, ':').nth(2)) {
        let path = path.trim_start_matches('/');
        for h in hierarchies.iter().filter(|_| !path.is_empty()) {
            let _ = std::fs::remove_dir(h.join(path));
        }
    }
}

/// Unix sockets `pid` holds whose path is under `dir` (from /proc/net/unix).
pub(crate) fn sockets_of(pid: u32, dir: &str) -> Vec<PathBuf> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode Path
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (inode, path) = (fields.get(6)?, fields.get(7)?);
            (inodes.iter().any(|i| i == inode) && path.starts_with(dir))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

/// Mount points at or under `dir`, deepest first, from /proc/self/mountinfo.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    mounts.dedup();
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|o| {
            std::str::from_utf8(o)
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts (`MNT_DETACH`) every mount under `dir`.
pub(crate) fn unmount_under(dir: &Path) {
    for mount in mounts_under(dir) {
        let Ok(c) = std::ffi::CString::new(mount.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path; umount2 does not keep it.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "TestContainerd: umount -l {}: {}",
                mount.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// A command's stdout when it exited 0, else an error naming `what` with
/// its status and output.
pub fn stdout_if_success(what: &str, out: &std::process::Output) -> anyhow::Result<String> {
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `<root>/<label>-<pid>`, empty: a stale one of the same name (a test
/// process whose pid came round again) is unmounted and removed first.
pub(crate) fn fresh_fixture_dir(root: &Path, label: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let dir = root.join(format!("{label}-{}", std::process::id()));
    if dir.exists() {
        unmount_under(&dir);
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the stale {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b\134c"), r"/run/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain\x"), r"/plain\x");
    }
}
