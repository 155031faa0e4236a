//! Seccomp allowlists per role, kept as data in `runtime/seccomp/*.json`
//! (the format is `furnace-seccomp`'s) and turned into an OCI
//! `linux.seccomp` here.
//!
//! `masked_eq` conditions are emitted the way youki's libcontainer (our
//! launcher) reads them: OCI `value` is the value compared, `valueTwo` the
//! mask. runc reads the two the other way round; under runc such a rule
//! would never match, which fails closed.

use crate::annotations::Role;
use crate::config::SeccompMode;
use crate::error::PolicyError;
use furnace_seccomp::{Condition, Op};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

pub use furnace_seccomp::Rules;

pub const APP_PROFILE: &str = include_str!("../seccomp/app.json");
pub const FAC_PROFILE: &str = include_str!("../seccomp/fac.json");

/// `EPERM`: what a refused syscall returns in errno mode.
pub const EPERM: u32 = 1;

fn profile_text(name: &str) -> Option<&'static str> {
    match name {
        "app" => Some(APP_PROFILE),
        "fac" => Some(FAC_PROFILE),
        _ => None,
    }
}

fn load_rules(role: &'static str) -> Result<Rules, PolicyError> {
    furnace_seccomp::load_rules(role, &profile_text).map_err(|e| PolicyError::SeccompData {
        role,
        problem: e.problem,
    })
}

fn arg(c: &Condition) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(usize::from(c.index))
        .value(c.value);
    match c.op {
        Op::Eq => b.op(LinuxSeccompOperator::ScmpCmpEq),
        Op::Ne => b.op(LinuxSeccompOperator::ScmpCmpNe),
        Op::MaskedEq { mask } => b.op(LinuxSeccompOperator::ScmpCmpMaskedEq).value_two(mask),
    }
    .build()
    .expect("every LinuxSeccompArg field has a default")
}

fn syscall(
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names);
    s.set_action(action);
    s.set_errno_ret(errno_ret);
    s.set_args(args);
    s
}

/// The flattened rules for `role`. The sandbox (pause) container uses the
/// app list: it needs far less, and nothing more.
pub fn rules(role: Role) -> Result<Rules, PolicyError> {
    match role {
        Role::App | Role::Sandbox => load_rules("app"),
        Role::Fac => load_rules("fac"),
    }
}

/// The OCI seccomp section for `role`: default action per `mode`, x86_64
/// only (other ABIs, including i386 via `int 0x80` and x32, hit
/// libseccomp's bad-arch action, which kills), one unconditional ALLOW rule
/// for the list, then the conditional and errno rules.
pub fn profile(role: Role, mode: SeccompMode) -> Result<LinuxSeccomp, PolicyError> {
    let rules = rules(role)?;
    let mut syscalls = vec![syscall(
        rules.allow,
        LinuxSeccompAction::ScmpActAllow,
        None,
        None,
    )];
    syscalls.extend(rules.conditional.into_iter().map(|c| {
        let args = c.args.iter().map(arg).collect();
        syscall(c.names, LinuxSeccompAction::ScmpActAllow, None, Some(args))
    }));
    syscalls.extend(rules.errno.into_iter().map(|e| {
        syscall(
            e.names,
            LinuxSeccompAction::ScmpActErrno,
            Some(e.errno),
            None,
        )
    }));
    let mut s = LinuxSeccomp::default();
    match mode {
        SeccompMode::Errno => {
            s.set_default_action(LinuxSeccompAction::ScmpActErrno);
            s.set_default_errno_ret(Some(EPERM));
        }
        SeccompMode::Kill => {
            s.set_default_action(LinuxSeccompAction::ScmpActKillProcess);
            s.set_default_errno_ret(None);
        }
    }
    s.set_architectures(Some(vec![Arch::ScmpArchX86_64]));
    s.set_syscalls(Some(syscalls));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Calls that must never be allowed to any role, from the escape
    /// battery and the usual container-escape toolkit.
    const FORBIDDEN: &[&str] = &[
        "mount",
        "umount",
        "umount2",
        "unshare",
        "setns",
        "chroot",
        "pivot_root",
        "ptrace",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "userfaultfd",
        "open_by_handle_at",
        "name_to_handle_at",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "settimeofday",
        "clock_settime",
        "adjtimex",
        "clock_adjtime",
        "iopl",
        "ioperm",
        "quotactl",
        "lookup_dcookie",
        "process_vm_readv",
        "process_vm_writev",
        "fanotify_init",
        "vm86",
        "vm86old",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "mount_setattr",
        "syslog",
        "personality",
        "uselib",
        "ustat",
        "sysfs",
        "nfsservctl",
        "kcmp",
        "pidfd_getfd",
        "process_madvise",
        "memfd_create",
        "memfd_secret",
        "vmsplice",
        "mknod",
        "mknodat",
        "setuid",
        "setgid",
        "setgroups",
        "setresuid",
        "capset",
        "sethostname",
        "setdomainname",
        "migrate_pages",
        "move_pages",
        "mbind",
        "set_mempolicy",
        "get_robust_list",
        "io_setup",
        "io_submit",
        "sync",
        "syncfs",
        "clone3",
        "socket",
        "clone",
    ];

    fn allowed_anyhow(s: &LinuxSeccomp) -> BTreeSet<String> {
        s.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|r| r.names().iter().cloned())
            .collect()
    }

    fn unconditional(s: &LinuxSeccomp) -> BTreeSet<String> {
        s.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
            .flat_map(|r| r.names().iter().cloned())
            .collect()
    }

    #[test]
    fn both_profiles_load_without_duplicates() {
        for role in [Role::App, Role::Fac] {
            let r = rules(role).unwrap();
            let set: BTreeSet<_> = r.allow.iter().collect();
            assert_eq!(set.len(), r.allow.len(), "{role:?} lists a syscall twice");
            assert!(r.allow.len() > 150, "{role:?} list is suspiciously short");
            for name in &r.allow {
                assert!(
                    name.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "bad syscall name {name:?}"
                );
            }
        }
    }

    #[test]
    fn dangerous_calls_are_never_unconditionally_allowed() {
        for role in [Role::App, Role::Fac] {
            let p = profile(role, SeccompMode::Errno).unwrap();
            let allowed = unconditional(&p);
            for f in FORBIDDEN {
                assert!(!allowed.contains(*f), "{role:?} allows {f}");
            }
            let any = allowed_anyhow(&p);
            for f in FORBIDDEN
                .iter()
                .filter(|f| !["socket", "clone"].contains(*f))
            {
                assert!(!any.contains(*f), "{role:?} conditionally allows {f}");
            }
        }
    }

    #[test]
    fn what_a_static_rust_binary_and_python_need_is_allowed() {
        let p = profile(Role::App, SeccompMode::Errno).unwrap();
        let allowed = unconditional(&p);
        for need in [
            "read",
            "write",
            "openat",
            "close",
            "mmap",
            "munmap",
            "mprotect",
            "brk",
            "futex",
            "rt_sigaction",
            "rt_sigprocmask",
            "sigaltstack",
            "exit_group",
            "arch_prctl",
            "set_tid_address",
            "set_robust_list",
            "rseq",
            "getrandom",
            "newfstatat",
            "statx",
            "fstat",
            "lseek",
            "ioctl",
            "fcntl",
            "getdents64",
            "readlink",
            "getcwd",
            "poll",
            "sched_getaffinity",
            "prlimit64",
            "clock_gettime",
            "execve",
            "wait4",
            "pipe2",
            "dup2",
            "epoll_create1",
            "epoll_ctl",
            "epoll_wait",
            "connect",
            "sendmsg",
            "recvmsg",
            "faccessat2",
            "madvise",
            "prctl",
            "gettid",
            "uname",
            "sysinfo",
        ] {
            assert!(allowed.contains(need), "app profile lacks {need}");
        }
    }

    #[test]
    fn app_sockets_are_unix_only_and_clone_cannot_make_namespaces() {
        let p = profile(Role::App, SeccompMode::Errno).unwrap();
        let rules = p.syscalls().as_ref().unwrap();
        let socket: Vec<_> = rules
            .iter()
            .filter(|r| r.names().contains(&"socket".into()))
            .collect();
        assert_eq!(socket.len(), 1);
        let args = socket[0].args().as_ref().unwrap();
        assert_eq!(args.len(), 1);
        assert_eq!(args[0].index(), 0);
        assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpEq);
        assert_eq!(args[0].value(), 1, "AF_UNIX");

        let clone: Vec<_> = rules
            .iter()
            .filter(|r| r.names().contains(&"clone".into()))
            .collect();
        assert_eq!(clone.len(), 1);
        let a = clone[0].args().as_ref().unwrap()[0];
        assert_eq!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(a.value(), 0);
        assert_eq!(a.value_two(), Some(0x7E02_0000));
        const CLONE_NEWUSER: u64 = 0x1000_0000;
        const CLONE_NEWNET: u64 = 0x4000_0000;
        const CLONE_NEWNS: u64 = 0x0002_0000;
        for ns in [CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS] {
            assert_ne!(
                ns & a.value_two().unwrap(),
                a.value(),
                "{ns:#x} must not match"
            );
        }
        // glibc's pthread_create flags do match.
        assert_eq!(0x003d_0f00 & a.value_two().unwrap(), a.value());

        let clone3 = rules
            .iter()
            .find(|r| r.names().contains(&"clone3".into()))
            .unwrap();
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(38), "ENOSYS");
    }

    #[test]
    fn fac_opens_unix_sockets_only_like_an_app() {
        let p = profile(Role::Fac, SeccompMode::Errno).unwrap();
        let families: BTreeSet<u64> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.names().contains(&"socket".into()))
            .map(|r| r.args().as_ref().unwrap()[0].value())
            .collect();
        assert_eq!(families, [1].into(), "the broker dials for the relay");
        assert_eq!(
            rules(Role::Fac).unwrap().allow,
            rules(Role::App).unwrap().allow
        );
    }

    #[test]
    fn modes_set_the_default_action() {
        let p = profile(Role::App, SeccompMode::Errno).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64][..])
        );
        let p = profile(Role::App, SeccompMode::Kill).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActKillProcess);
        assert_eq!(p.default_errno_ret(), None);
        // The ENOSYS answer for clone3 stays in kill mode, so glibc can fall back.
        assert!(p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .any(|r| r.names().contains(&"clone3".into()) && r.errno_ret() == Some(38)));
    }

    #[test]
    fn the_oci_json_uses_the_spec_spelling() {
        let p = profile(Role::App, SeccompMode::Errno).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        assert_eq!(v["architectures"][0], "SCMP_ARCH_X86_64");
        assert_eq!(v["syscalls"][1]["args"][0]["op"], "SCMP_CMP_EQ");
    }
}
