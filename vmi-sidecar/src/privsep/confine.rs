//! Confinement: what the supervisor does to the worker before exec, and
//! what the worker then does to itself before it reads any guest memory.
//!
//! Before exec (in the child, as root, [`drop_privileges`]): fresh network,
//! IPC and UTS namespaces (only `lo`, down), an empty capability bounding
//! set, no supplementary groups, the worker's uid and gid, death with the
//! supervisor, and `no_new_privs`. Changing to a non-root uid clears every
//! capability, and exec of a file without file capabilities keeps them so.
//!
//! After exec ([`confine_self`]): not dumpable (no ptrace, no
//! `/proc/<pid>/mem`, even by its own uid), Landlock (read-only access to
//! the guest directory and nothing else), then the seccomp list of
//! `seccomp/worker.json`, which covers every thread started after it.

use furnace_seccomp::{DefaultAction, Rules};
use landlock::{Access, AccessFs, PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI};
use std::os::fd::BorrowedFd;

pub const WORKER_PROFILE: &str = include_str!("../../seccomp/worker.json");

/// The worker's seccomp rules.
pub fn worker_rules() -> Result<Rules, furnace_seccomp::DataError> {
    furnace_seccomp::load_rules("vmi-worker", &|role| {
        (role == "vmi-worker").then_some(WORKER_PROFILE)
    })
}

/// Runs in the forked child before exec: only async-signal-safe calls.
///
/// # Safety
/// Call only between fork and exec (`Command::pre_exec`).
pub unsafe fn drop_privileges(uid: u32, gid: u32) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    check(libc::unshare(
        libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
    ))?;
    for cap in 0..=libc::c_ulong::from(63u8) {
        // EINVAL past the last capability this kernel knows.
        libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
    }
    check(libc::setgroups(0, std::ptr::null()))?;
    check(libc::setresgid(gid, gid, gid))?;
    check(libc::setresuid(uid, uid, uid))?;
    // After the uid change, which clears it.
    check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
    check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    Ok(())
}

/// What [`confine_self`] achieved, for the log.
#[derive(Debug)]
pub struct Confinement {
    pub landlock: String,
    pub seccomp_rules: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("PR_SET_DUMPABLE: {0}")]
    Dumpable(std::io::Error),
    #[error("Landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("the worker's seccomp data: {0}")]
    Data(#[from] furnace_seccomp::DataError),
    #[error(transparent)]
    Seccomp(#[from] furnace_seccomp::LoadError),
}

/// Confines the calling process, which must not have started other
/// threads yet: Landlock binds the calling thread and those it starts.
pub fn confine_self(guest_dir: BorrowedFd<'_>) -> Result<Confinement, ConfineError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == -1 {
        return Err(ConfineError::Dumpable(std::io::Error::last_os_error()));
    }
    let abi = ABI::V2;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rule(PathBeneath::new(guest_dir, AccessFs::from_read(abi)))?
        .restrict_self()?;
    let rules = worker_rules()?;
    furnace_seccomp::install(&rules, DefaultAction::Errno(libc::EPERM))?;
    Ok(Confinement {
        landlock: format!("{:?}", status.ruleset),
        seccomp_rules: rules.allowed_names().count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_list_loads_and_leaves_out_what_escapes() {
        let rules = worker_rules().unwrap();
        let names: std::collections::BTreeSet<&str> = rules.allowed_names().collect();
        for forbidden in [
            "socket",
            "socketpair",
            "connect",
            "bind",
            "listen",
            "execve",
            "execveat",
            "fork",
            "vfork",
            "kill",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "unshare",
            "setns",
            "mount",
            "chroot",
            "pivot_root",
            "open",
            "creat",
            "unlink",
            "unlinkat",
            "rename",
            "mkdir",
            "chmod",
            "chown",
            "fchown",
            "fchmod",
            "truncate",
            "ftruncate",
            "bpf",
            "perf_event_open",
            "io_uring_setup",
            "userfaultfd",
            "memfd_create",
            "setuid",
            "setresuid",
            "capset",
            "keyctl",
            "ioctl",
        ] {
            assert!(!names.contains(forbidden), "the worker may {forbidden}");
        }
        for needed in [
            "read", "write", "recvmsg", "sendmsg", "accept4", "mmap", "futex", "clone",
        ] {
            assert!(names.contains(needed), "the worker may not {needed}");
        }
    }
}
