//! The profiles as data and as OCI: what no role may ever be allowed, what
//! apps need, and what a listener makes notified.

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
