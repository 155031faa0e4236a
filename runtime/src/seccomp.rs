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
use std::collections::BTreeSet;
use std::path::Path;
use syscalls::x86_64::Sysno;

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
///
/// With `listener` (errno mode only), what the list refuses is not answered
/// by the kernel but notified to the seccomp agent listening there, the
/// shim, which answers the same EPERM and counts it (docs/defense.md,
/// `seccomp_violations`): every x86_64 syscall the list does not name, and
/// the arguments a conditional rule does not allow. libcontainer takes no
/// notify default action, so these are explicit rules; the default EPERM
/// is left for numbers no table names.
pub fn profile(
    role: Role,
    mode: SeccompMode,
    listener: Option<&Path>,
) -> Result<LinuxSeccomp, PolicyError> {
    let rules = rules(role)?;
    let notify = match (mode, listener) {
        (SeccompMode::Errno, Some(path)) => Some((path, notified(&rules))),
        _ => None,
    };
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
    if let Some((path, refused)) = notify {
        syscalls.extend(refused);
        s.set_listener_path(Some(path.to_owned()));
    }
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

/// The NOTIFY rules for what `rules` refuse: one for every named syscall it
/// does not mention, and for each conditional rule the conditions under
/// which it does not match.
fn notified(rules: &Rules) -> Vec<LinuxSyscall> {
    let mentioned: BTreeSet<&str> = rules
        .allow
        .iter()
        .chain(rules.conditional.iter().flat_map(|c| &c.names))
        .chain(rules.errno.iter().flat_map(|e| &e.names))
        .map(String::as_str)
        .collect();
    let unlisted: Vec<String> = Sysno::iter()
        .map(|s| s.name())
        .filter(|name| !mentioned.contains(name))
        .map(String::from)
        .collect();
    let mut out = vec![syscall(
        unlisted,
        LinuxSeccompAction::ScmpActNotify,
        None,
        None,
    )];
    for c in &rules.conditional {
        for refused in refused_when(&c.args).into_iter().flatten() {
            out.push(syscall(
                c.names.clone(),
                LinuxSeccompAction::ScmpActNotify,
                None,
                Some(vec![arg(&refused)]),
            ));
        }
    }
    out
}

/// Conditions any of which makes `allowed` (all of which must hold) false,
/// each one a rule of its own; `None` where one argument condition cannot
/// say it, and then a refusal falls to the default action, uncounted. A
/// `(x & mask) == 0` fails when any bit of `mask` is set in `x`: one rule
/// per bit.
fn refused_when(allowed: &[Condition]) -> Option<Vec<Condition>> {
    let [only] = allowed else { return None };
    let negated = |op| Condition { op, ..*only };
    match only.op {
        Op::Eq => Some(vec![negated(Op::Ne)]),
        Op::Ne => Some(vec![negated(Op::Eq)]),
        Op::MaskedEq { mask } if only.value == 0 => Some(
            (0..64)
                .map(|bit| 1u64 << bit)
                .filter(|b| mask & b != 0)
                .map(|b| Condition {
                    index: only.index,
                    op: Op::MaskedEq { mask: b },
                    value: b,
                })
                .collect(),
        ),
        Op::MaskedEq { .. } => None,
    }
}

/// The x86_64 name of syscall `number`, for logs.
pub fn syscall_name(number: i32) -> Option<&'static str> {
    usize::try_from(number)
        .ok()
        .and_then(Sysno::new)
        .map(|s| s.name())
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

    fn unconditional_allowed(s: &LinuxSeccomp) -> BTreeSet<String> {
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
            let p = profile(role, SeccompMode::Errno, None).unwrap();
            let allowed = unconditional_allowed(&p);
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
        let p = profile(Role::App, SeccompMode::Errno, None).unwrap();
        let allowed = unconditional_allowed(&p);
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
        let p = profile(Role::App, SeccompMode::Errno, None).unwrap();
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
        let p = profile(Role::Fac, SeccompMode::Errno, None).unwrap();
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
        let p = profile(Role::App, SeccompMode::Errno, None).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64][..])
        );
        let p = profile(Role::App, SeccompMode::Kill, None).unwrap();
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
        let p = profile(Role::App, SeccompMode::Errno, None).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        assert_eq!(v["architectures"][0], "SCMP_ARCH_X86_64");
        assert_eq!(v["syscalls"][1]["args"][0]["op"], "SCMP_CMP_EQ");
    }

    #[test]
    fn with_a_listener_every_refusal_is_notified_and_nothing_allowed_changes() {
        let listener = Path::new("/run/furnace/seccomp/x.sock");
        let plain = profile(Role::App, SeccompMode::Errno, None).unwrap();
        let p = profile(Role::App, SeccompMode::Errno, Some(listener)).unwrap();
        assert_eq!(p.listener_path().as_deref(), Some(listener));
        assert_eq!(plain.listener_path(), &None);
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(allowed_anyhow(&p), allowed_anyhow(&plain));
        let rules = p.syscalls().as_ref().unwrap();
        let notified: Vec<&LinuxSyscall> = rules
            .iter()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActNotify)
            .collect();
        let unconditional: BTreeSet<&str> = notified
            .iter()
            .filter(|r| r.args().is_none())
            .flat_map(|r| r.names().iter().map(String::as_str))
            .collect();
        let allowed = unconditional_allowed(&p);
        for sysno in Sysno::iter() {
            let name = sysno.name();
            let answered = allowed.contains(name)
                || unconditional.contains(name)
                || rules
                    .iter()
                    .any(|r| r.args().is_some() && r.names().iter().any(|n| n == name))
                || name == "clone3";
            assert!(answered, "{name} falls to the default action");
        }
        let on_x86_64 = |name: &str| Sysno::iter().any(|s| s.name() == name);
        for f in FORBIDDEN
            .iter()
            .filter(|f| !["socket", "clone", "clone3"].contains(*f) && on_x86_64(f))
        {
            assert!(unconditional.contains(*f), "{f} is not notified");
        }
        assert!(
            !unconditional.contains("write"),
            "libcontainer refuses a notified write"
        );
        assert!(!unconditional.contains("read"));

        // socket: notified for every family but AF_UNIX.
        let socket: Vec<_> = notified
            .iter()
            .filter(|r| r.names().contains(&"socket".into()))
            .collect();
        assert_eq!(socket.len(), 1);
        let a = socket[0].args().as_ref().unwrap()[0];
        assert_eq!((a.op(), a.value()), (LinuxSeccompOperator::ScmpCmpNe, 1));

        // clone: notified when any CLONE_NEW* bit is set, never for threads.
        let clone: Vec<LinuxSeccompArg> = notified
            .iter()
            .filter(|r| r.names().contains(&"clone".into()))
            .map(|r| r.args().as_ref().unwrap()[0])
            .collect();
        assert_eq!(clone.len(), 7, "one rule per bit of 0x7E020000");
        let matches = |flags: u64| {
            clone
                .iter()
                .any(|a| flags & a.value_two().unwrap() == a.value())
        };
        assert!(!matches(0x003d_0f00), "glibc's pthread_create flags");
        assert!(!matches(0x0120_0011), "fork's flags");
        for ns in [0x1000_0000, 0x4000_0000, 0x0002_0000, 0x2000_0000] {
            assert!(matches(ns | 0x11), "{ns:#x}");
        }
    }

    #[test]
    fn every_conditional_rule_of_ours_has_a_notified_complement() {
        for role in [Role::App, Role::Fac] {
            for c in rules(role).unwrap().conditional {
                assert!(
                    refused_when(&c.args).is_some(),
                    "{:?}: its refusals would go uncounted",
                    c.names
                );
            }
        }
    }

    #[test]
    fn kill_mode_notifies_nothing() {
        let p = profile(
            Role::App,
            SeccompMode::Kill,
            Some(Path::new("/run/furnace/seccomp/x.sock")),
        )
        .unwrap();
        assert_eq!(p.listener_path(), &None);
        assert!(p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .all(|r| r.action() != LinuxSeccompAction::ScmpActNotify));
    }

    #[test]
    fn syscall_numbers_have_their_x86_64_names() {
        assert_eq!(syscall_name(41), Some("socket"));
        assert_eq!(syscall_name(165), Some("mount"));
        assert_eq!(syscall_name(-1), None);
        assert_eq!(syscall_name(100_000), None);
    }
}
