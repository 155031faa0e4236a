//! PID 1: apps and relays run under `furnace-init`, bound into the
//! partition and prepended to `process.args`; a CRI sandbox and an exec do
//! not.

use super::*;
use crate::policy::{pid1_init, INIT_PATH, SOCKET_DIR};

fn args(h: &Hardened) -> Vec<String> {
    h.spec.process().as_ref().unwrap().args().clone().unwrap()
}

fn position(spec: &Spec, dest: &str) -> usize {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .position(|m| m.destination() == Path::new(dest))
        .unwrap_or_else(|| panic!("no mount at {dest}"))
}

#[test]
fn an_app_runs_under_the_init_bound_read_only_in_run_furnace() {
    let mut spec = Spec::default();
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_args(Some(vec!["/usr/bin/app".into(), "--flag".into()]));
    let h = app(spec, &[]).unwrap();
    assert_eq!(args(&h), [INIT_PATH, "--", "/usr/bin/app", "--flag"]);
    let init = find(&h.spec, INIT_PATH);
    assert_eq!(init.len(), 1, "one mount at {INIT_PATH}");
    assert_eq!(init[0].typ().as_deref(), Some("bind"));
    assert_eq!(init[0].source().as_deref(), Some(Path::new(HOST_INIT)));
    let o = opts(init[0]);
    for needed in ["bind", "ro", "nosuid", "nodev"] {
        assert!(o.contains(&needed.to_string()), "{needed} missing: {o:?}");
    }
    assert!(!o.contains(&"noexec".to_string()), "it must run: {o:?}");
    assert!(!o.contains(&"rw".to_string()), "{o:?}");
    // Inside the runtime's tmpfs, so mounted after it.
    assert!(position(&h.spec, SOCKET_DIR) < position(&h.spec, INIT_PATH));
    assert_eq!(find(&h.spec, VMI_SOCKET).len(), 1);
    // Under the app's own policy: the process keeps its user, no_new_privs
    // and seccomp filter; the init is only its first argv.
    let process = h.spec.process().as_ref().unwrap();
    assert_eq!(process.no_new_privileges(), Some(true));
    assert_no_capabilities(process);
    assert!(h.spec.linux().as_ref().unwrap().seccomp().is_some());
}

#[test]
fn the_init_step_is_not_applied_twice() {
    let h = app(Spec::default(), &[]).unwrap();
    let mut again = h.spec.clone();
    pid1_init(&mut again, Path::new(HOST_INIT)).unwrap();
    assert_eq!(again, h.spec, "a second application changed the spec");
    assert_eq!(args(&h), [INIT_PATH, "--", "sh"]);
    // A different host init replaces the bind; the args stay as they are.
    pid1_init(&mut again, Path::new("/opt/furnace/furnace-init")).unwrap();
    assert_eq!(find(&again, INIT_PATH).len(), 1);
    assert_eq!(
        find(&again, INIT_PATH)[0].source().as_deref(),
        Some(Path::new("/opt/furnace/furnace-init"))
    );
    assert_eq!(
        again.process().as_ref().unwrap().args().as_deref(),
        Some(&[INIT_PATH.to_string(), "--".into(), "sh".into()][..])
    );
}

#[test]
fn a_fac_relay_runs_under_the_init() {
    let h = harden_as(
        Role::Fac,
        Spec::default(),
        &ann(&[]),
        &ProviderConfig::default(),
        &relay_binds(),
    )
    .unwrap();
    assert_eq!(args(&h), [INIT_PATH, "--", "sh"]);
    assert_eq!(find(&h.spec, SOCKET_DIR).len(), 1, "the tmpfs is added");
    assert!(position(&h.spec, SOCKET_DIR) < position(&h.spec, INIT_PATH));
}

#[test]
fn a_cri_sandbox_gets_no_init_and_may_not_be_given_one() {
    let sandbox = ann(&[(CRI_CONTAINER_TYPE, "sandbox")]);
    let h = harden(
        Spec::default(),
        &sandbox,
        &ProviderConfig::default(),
        &HostBinds::default(),
    )
    .unwrap();
    assert_eq!(args(&h), ["sh"]);
    assert!(find(&h.spec, INIT_PATH).is_empty());
    let e = harden(
        Spec::default(),
        &sandbox,
        &ProviderConfig::default(),
        &HostBinds {
            init: Some(HOST_INIT.into()),
            ..HostBinds::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sandbox") && e.contains("no init"), "{e}");
}

#[test]
fn an_app_without_an_init_or_with_an_odd_path_is_refused() {
    let a = ann(&[(GUEST, "g1")]);
    let config = ProviderConfig::default();
    let none = HostBinds {
        init: None,
        ..app_sockets()
    };
    let e = harden(Spec::default(), &a, &config, &none)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("PID 1 init:") && e.contains("furnace-init"),
        "{e}"
    );
    for bad in ["furnace-init", "/usr/local/../../tmp/furnace-init"] {
        let odd = HostBinds {
            init: Some(bad.into()),
            ..app_sockets()
        };
        let e = harden(Spec::default(), &a, &config, &odd)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain absolute path"), "{bad}: {e}");
    }
    let mut empty = Spec::default();
    empty.process_mut().as_mut().unwrap().set_args(Some(vec![]));
    let e = app(empty, &[]).unwrap_err().to_string();
    assert!(e.contains("process.args"), "{e}");
}

#[test]
fn an_exec_runs_its_own_argv_without_the_init() {
    let h = app(Spec::default(), &[]).unwrap();
    let init = h.spec.process().clone().unwrap();
    let mut requested = init.clone();
    requested.set_args(Some(vec!["/bin/cat".into(), "/etc/hostname".into()]));
    let exec = policy::exec_process(&init, &requested).unwrap();
    assert_eq!(
        exec.args().as_deref(),
        Some(&["/bin/cat".to_string(), "/etc/hostname".into()][..])
    );
}

/// Every call `furnace-init` makes, from `strace -f` of the static build
/// (`target/furnace-shim/furnace-init -- sleep 2` ended by SIGTERM, and
/// `-- /no/such/app` for the error path; the child's calls up to its
/// `execve` included). `clone` is the conditional rule: fork passes no
/// `CLONE_NEW*` flag.
const INIT_CALLS: &[&str] = &[
    "arch_prctl",
    "brk",
    "clone",
    "close",
    "execve",
    "exit_group",
    "getpid",
    "getrandom",
    "gettid",
    "kill",
    "mmap",
    "mprotect",
    "munmap",
    "newfstatat",
    "openat",
    "poll",
    "prctl",
    "prlimit64",
    "read",
    "readlink",
    "rseq",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigtimedwait",
    "sched_getaffinity",
    "set_robust_list",
    "set_tid_address",
    "sigaltstack",
    "wait4",
    "write",
];

#[test]
fn the_app_and_fac_allowlists_cover_what_the_init_calls() {
    for role in [Role::App, Role::Fac] {
        let profile = seccomp::profile(role, crate::SeccompMode::Errno, None).unwrap();
        let allowed: Vec<String> = profile
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|r| r.names().iter().cloned())
            .collect();
        for call in INIT_CALLS {
            assert!(allowed.iter().any(|a| a == call), "{role:?} denies {call}");
        }
    }
}
