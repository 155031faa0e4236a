//! Tests of the whole policy: hardened specs checked field by field.
use super::*;
use annotations::{CRI_CONTAINER_TYPE, GUEST, LIMITS, PERMISSIONS};
use furnace_api::v1::Permission;
use oci_spec::runtime::{
    LinuxNamespaceType, LinuxSeccompAction, LinuxSeccompOperator, Mount, Spec,
};
use std::path::{Path, PathBuf};

fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn app_sockets() -> SocketMounts {
    SocketMounts {
        vmi: Some(PathBuf::from("/run/furnace/guests/g1/apps/app1.sock")),
        fac: None,
    }
}

fn app(spec: Spec, extra: &[(&str, &str)]) -> Result<Hardened, PolicyError> {
    let mut a = ann(&[(GUEST, "g1")]);
    a.extend(ann(extra));
    harden(spec, &a, &ProviderConfig::default(), &app_sockets())
}

fn find<'a>(spec: &'a Spec, dest: &str) -> Vec<&'a Mount> {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| m.destination() == Path::new(dest))
        .collect()
}

fn opts(m: &Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

fn bind(dest: &str, source: &str) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into());
    m.set_typ(Some("bind".into()));
    m.set_source(Some(source.into()));
    m.set_options(Some(vec!["rbind".into(), "rw".into()]));
    m
}

#[test]
fn a_hardened_default_spec_has_the_designs_defaults() {
    let h = app(Spec::default(), &[]).unwrap();
    let s = &h.spec;
    assert_eq!(h.role, Role::App);
    assert_eq!(h.request.guest.as_deref(), Some("g1"));
    assert_eq!(h.request.permissions, [Permission::Read].into());

    // Read-only root.
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));

    // No capabilities, no_new_privs.
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.no_new_privileges(), Some(true));
    let caps = p.capabilities().as_ref().unwrap();
    for set in [
        caps.bounding(),
        caps.effective(),
        caps.inheritable(),
        caps.permitted(),
        caps.ambient(),
    ] {
        assert_eq!(set.as_ref().map(|c| c.len()), Some(0));
    }

    // Namespaces, fresh, including network and user.
    let linux = s.linux().as_ref().unwrap();
    let ns = linux.namespaces().as_ref().unwrap();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Cgroup,
    ] {
        let n: Vec<_> = ns.iter().filter(|n| n.typ() == typ).collect();
        assert_eq!(n.len(), 1, "{typ:?}");
        assert_eq!(n[0].path(), &None, "{typ:?} must be fresh");
    }

    // uid/gid mapped to the unprivileged range; root inside = 100000 outside.
    let uid = &linux.uid_mappings().as_ref().unwrap()[0];
    assert_eq!(
        (uid.container_id(), uid.host_id(), uid.size()),
        (0, 100_000, 65_536)
    );
    let gid = &linux.gid_mappings().as_ref().unwrap()[0];
    assert_eq!(
        (gid.container_id(), gid.host_id(), gid.size()),
        (0, 100_000, 65_536)
    );
    assert_eq!((h.host_uid, h.host_gid), (Some(100_000), Some(100_000)));

    // cgroups: 2 CPUs, 300 MiB (no extra swap), 30 pids; devices deny-all first.
    let r = linux.resources().as_ref().unwrap();
    assert_eq!(r.pids().unwrap().limit(), 30);
    assert_eq!(r.memory().unwrap().limit(), Some(300 * 1024 * 1024));
    assert_eq!(r.memory().unwrap().swap(), Some(300 * 1024 * 1024));
    let cpu = r.cpu().as_ref().unwrap();
    assert_eq!((cpu.quota(), cpu.period()), (Some(200_000), Some(100_000)));
    let devices = r.devices().as_ref().unwrap();
    assert!(!devices[0].allow() && devices[0].major().is_none());
    assert!(
        !devices
            .iter()
            .any(|d| d.allow() && d.major() == Some(1) && d.minor() == Some(1)),
        "/dev/mem (c 1:1) must not be allowed"
    );
    assert_eq!(h.limits, ProviderConfig::default().limits.default);

    // Masked and read-only paths.
    let masked = linux.masked_paths().as_ref().unwrap();
    for p in [
        "/proc/kcore",
        "/proc/keys",
        "/sys/firmware",
        "/proc/sched_debug",
    ] {
        assert!(masked.contains(&p.to_string()), "{p}");
    }
    let ro = linux.readonly_paths().as_ref().unwrap();
    for p in [
        "/proc/sys",
        "/proc/sysrq-trigger",
        "/proc/bus",
        "/proc/irq",
        "/proc/fs",
    ] {
        assert!(ro.contains(&p.to_string()), "{p}");
    }

    // /tmp is a small tmpfs, noexec by default.
    let tmp = find(s, "/tmp");
    assert_eq!(tmp.len(), 1);
    assert_eq!(tmp[0].typ().as_deref(), Some("tmpfs"));
    let o = opts(tmp[0]);
    for want in ["nosuid", "nodev", "noexec", "size=16777216"] {
        assert!(o.contains(&want.to_string()), "{want} in {o:?}");
    }

    // /sys read-only.
    assert!(opts(find(s, "/sys")[0]).contains(&"ro".to_string()));

    // The VMI socket, and the tmpfs holding it before it.
    let all = s.mounts().as_ref().unwrap();
    let dir = all
        .iter()
        .position(|m| m.destination() == Path::new("/run/furnace"))
        .unwrap();
    let sock = all
        .iter()
        .position(|m| m.destination() == Path::new(VMI_SOCKET))
        .unwrap();
    assert!(dir < sock);
    assert_eq!(
        all[sock].source().as_deref(),
        Some(Path::new("/run/furnace/guests/g1/apps/app1.sock"))
    );
    assert!(opts(&all[sock]).contains(&"bind".to_string()));
    assert!(find(s, FAC_SOCKET).is_empty());

    // Seccomp: EPERM by default, socket only for AF_UNIX.
    let sc = linux.seccomp().as_ref().unwrap();
    assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(sc.default_errno_ret(), Some(1));
    let socket = sc
        .syscalls()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|r| r.names().contains(&"socket".to_string()))
        .collect::<Vec<_>>();
    assert_eq!(socket.len(), 1);
    let a = &socket[0].args().as_ref().unwrap()[0];
    assert_eq!(
        (a.index(), a.op(), a.value()),
        (0, LinuxSeccompOperator::ScmpCmpEq, 1)
    );

    // Host reach stripped.
    assert!(s.hooks().is_none());
    assert!(linux.sysctl().is_none());
}

#[test]
fn the_hardened_spec_survives_a_json_round_trip() {
    let h = app(Spec::default(), &[]).unwrap();
    let json = serde_json::to_string(&h.spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, h.spec);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["root"]["readonly"], true);
    assert_eq!(v["process"]["noNewPrivileges"], true);
    assert_eq!(v["linux"]["resources"]["pids"]["limit"], 30);
}

#[test]
fn annotations_tighten_the_limits() {
    let h = app(Spec::default(), &[(LIMITS, "cpu=0.5,memory=64Mi,pids=8")]).unwrap();
    let r = h
        .spec
        .linux()
        .as_ref()
        .unwrap()
        .resources()
        .as_ref()
        .unwrap()
        .clone();
    assert_eq!(r.pids().unwrap().limit(), 8);
    assert_eq!(r.memory().unwrap().limit(), Some(64 << 20));
    assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
    assert_eq!(h.limits.pids, 8);
}

#[test]
fn limits_already_in_the_spec_only_tighten() {
    let mut spec = Spec::default();
    let raw = serde_json::json!({
        "memory": {"limit": 1_i64 << 40, "swap": -1, "disableOOMKiller": true},
        "cpu": {"quota": 50_000, "period": 100_000, "realtimeRuntime": 950_000},
        "pids": {"limit": 5},
        "unified": {"pids.max": "max"},
        "devices": [{"allow": true, "access": "rwm"}]
    });
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_resources(Some(serde_json::from_value(raw).unwrap()));
    let h = app(spec, &[]).unwrap();
    let r = h
        .spec
        .linux()
        .as_ref()
        .unwrap()
        .resources()
        .as_ref()
        .unwrap()
        .clone();
    assert_eq!(
        r.memory().unwrap().limit(),
        Some(300 << 20),
        "a looser spec limit is ignored"
    );
    assert_eq!(r.memory().unwrap().disable_oom_killer(), None);
    assert_eq!(
        r.cpu().as_ref().unwrap().quota(),
        Some(50_000),
        "a tighter spec limit wins"
    );
    assert_eq!(r.cpu().as_ref().unwrap().realtime_runtime(), None);
    assert_eq!(r.pids().unwrap().limit(), 5);
    assert!(r.unified().is_none());
    assert!(
        !r.devices().as_ref().unwrap()[0].allow(),
        "allow-all device rule replaced"
    );
    assert_eq!(h.limits.cpu, 0.5);
    assert_eq!(h.limits.pids, 5);
}

#[test]
fn loosening_beyond_the_maximum_fails_naming_the_annotation() {
    let e = app(Spec::default(), &[(LIMITS, "memory=2Gi")])
        .unwrap_err()
        .to_string();
    assert!(e.contains(LIMITS) && e.contains("looser"), "{e}");
    let e = app(Spec::default(), &[(LIMITS, "pids=lots")])
        .unwrap_err()
        .to_string();
    assert!(e.contains(LIMITS), "{e}");
}

#[test]
fn permissions_beyond_the_caps_fail_naming_the_annotation() {
    let e = app(Spec::default(), &[(PERMISSIONS, "read,write")])
        .unwrap_err()
        .to_string();
    assert!(e.contains(PERMISSIONS) && e.contains("write"), "{e}");
    let h = app(Spec::default(), &[(PERMISSIONS, "read,pause,events")]).unwrap();
    assert_eq!(h.request.permissions.len(), 3);
}

#[test]
fn an_app_needs_a_guest_but_a_cri_sandbox_does_not() {
    let e = harden(
        Spec::default(),
        &ann(&[]),
        &ProviderConfig::default(),
        &app_sockets(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(GUEST), "{e}");

    let mut pod_ns = oci_spec::runtime::LinuxNamespace::default();
    pod_ns.set_typ(LinuxNamespaceType::Network);
    pod_ns.set_path(Some("/var/run/netns/cni-1234".into()));
    let mut spec = Spec::default();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_namespaces(Some(vec![pod_ns.clone()]));
    let h = harden(
        spec,
        &ann(&[(CRI_CONTAINER_TYPE, "sandbox")]),
        &ProviderConfig::default(),
        &SocketMounts::default(),
    )
    .unwrap();
    assert_eq!(h.role, Role::Sandbox);
    assert_eq!(h.request.guest, None);
    assert_eq!(h.host_uid, None);
    let linux = h.spec.linux().as_ref().unwrap();
    let ns = linux.namespaces().as_ref().unwrap();
    assert!(ns.contains(&pod_ns), "the pod's network namespace is kept");
    assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
    assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::User));
    // Still locked down otherwise.
    assert_eq!(h.spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(
        h.spec.process().as_ref().unwrap().no_new_privileges(),
        Some(true)
    );
    assert!(linux.seccomp().is_some());
    assert!(find(&h.spec, VMI_SOCKET).is_empty());
    // And a sandbox may not be handed a socket.
    let e = harden(
        Spec::default(),
        &ann(&[(CRI_CONTAINER_TYPE, "sandbox")]),
        &ProviderConfig::default(),
        &app_sockets(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("vmi"), "{e}");
}

#[test]
fn an_app_ignores_pod_namespaces() {
    let mut n = oci_spec::runtime::LinuxNamespace::default();
    n.set_typ(LinuxNamespaceType::Network);
    n.set_path(Some("/proc/1/ns/net".into()));
    let mut spec = Spec::default();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_namespaces(Some(vec![n]));
    let h = app(spec, &[]).unwrap();
    let ns = h
        .spec
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .clone()
        .unwrap();
    let net: Vec<_> = ns
        .iter()
        .filter(|n| n.typ() == LinuxNamespaceType::Network)
        .collect();
    assert_eq!(net.len(), 1);
    assert_eq!(
        net[0].path(),
        &None,
        "the host's network namespace must not be joined"
    );
}

#[test]
fn fac_keeps_its_network_and_gets_no_vmi_socket() {
    let mut n = oci_spec::runtime::LinuxNamespace::default();
    n.set_typ(LinuxNamespaceType::Network);
    n.set_path(Some("/var/run/netns/fac".into()));
    let mut spec = Spec::default();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_namespaces(Some(vec![n.clone()]));
    let sockets = SocketMounts {
        vmi: None,
        fac: Some("/run/furnace/fac/app1.sock".into()),
    };
    let h = harden_as(
        Role::Fac,
        spec,
        &ann(&[]),
        &ProviderConfig::default(),
        &sockets,
    )
    .unwrap();
    let linux = h.spec.linux().as_ref().unwrap();
    assert!(linux.namespaces().as_ref().unwrap().contains(&n));
    assert_eq!(find(&h.spec, FAC_SOCKET).len(), 1);
    let socket_families = linux
        .seccomp()
        .as_ref()
        .unwrap()
        .syscalls()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|r| r.names().contains(&"socket".to_string()))
        .count();
    assert_eq!(socket_families, 4);
    let e = harden_as(
        Role::Fac,
        Spec::default(),
        &ann(&[]),
        &ProviderConfig::default(),
        &app_sockets(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("vmi"), "{e}");
}

#[test]
fn host_bind_mounts_are_refused_and_cri_files_made_read_only() {
    let mut spec = Spec::default();
    spec.mounts_mut()
        .as_mut()
        .unwrap()
        .push(bind("/data", "/var/lib/secret"));
    let e = app(spec, &[]).unwrap_err().to_string();
    assert!(
        e.contains("/var/lib/secret") && e.contains("/data") && e.contains("mounts["),
        "{e}"
    );

    let mut spec = Spec::default();
    let m = spec.mounts_mut().as_mut().unwrap();
    m.push(bind(
        "/etc/resolv.conf",
        "/var/lib/containerd/sandboxes/x/resolv.conf",
    ));
    m.push(bind(
        "/var/run/secrets/kubernetes.io/serviceaccount",
        "/var/lib/kubelet/pods/x/token",
    ));
    m.push(bind(
        "/dev/termination-log",
        "/var/lib/kubelet/pods/x/termination",
    ));
    m.push(bind("/dev/shm", "/run/containerd/sandboxes/x/shm"));
    let h = app(spec, &[]).unwrap();
    let resolv = find(&h.spec, "/etc/resolv.conf");
    assert_eq!(resolv.len(), 1);
    let o = opts(resolv[0]);
    assert!(
        o.contains(&"ro".to_string()) && !o.contains(&"rw".to_string()),
        "{o:?}"
    );
    assert!(find(&h.spec, "/var/run/secrets/kubernetes.io/serviceaccount").is_empty());
    assert!(find(&h.spec, "/dev/termination-log").is_empty());
    let shm = find(&h.spec, "/dev/shm");
    assert_eq!(shm.len(), 1);
    assert_eq!(
        shm[0].typ().as_deref(),
        Some("tmpfs"),
        "the pod's shm is not shared"
    );
    assert_eq!(
        h.notes
            .iter()
            .filter(|n| n.contains("dropped the mount"))
            .count(),
        2
    );

    let mut spec = Spec::default();
    spec.mounts_mut().as_mut().unwrap().push(bind(
        "/run/furnace/admin.sock",
        "/run/furnace/guests/g1/admin.sock",
    ));
    let e = app(spec, &[]).unwrap_err().to_string();
    assert!(e.contains("Furnace manages"), "{e}");

    let mut spec = Spec::default();
    let mut nfs = bind("/mnt", "server:/export");
    nfs.set_typ(Some("nfs".into()));
    nfs.set_options(None);
    spec.mounts_mut().as_mut().unwrap().push(nfs);
    let e = app(spec, &[]).unwrap_err().to_string();
    assert!(e.contains("nfs mount"), "{e}");
}

#[test]
fn sockets_must_come_from_the_socket_root() {
    for bad in [
        "/tmp/x.sock",
        "run/furnace/x.sock",
        "/run/furnace/../../etc/shadow",
    ] {
        let s = SocketMounts {
            vmi: Some(bad.into()),
            fac: None,
        };
        let e = harden(
            Spec::default(),
            &ann(&[(GUEST, "g1")]),
            &ProviderConfig::default(),
            &s,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("socket_root"), "{bad}: {e}");
    }
    let e = harden(
        Spec::default(),
        &ann(&[(GUEST, "g1")]),
        &ProviderConfig::default(),
        &SocketMounts::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("vmi") && e.contains("sidecar"), "{e}");
}

#[test]
fn hooks_sysctls_and_caps_from_the_spec_are_stripped() {
    let mut spec = Spec::default();
    spec.set_hooks(Some(
        serde_json::from_value(serde_json::json!({"prestart": [{"path": "/bin/evil"}]})).unwrap(),
    ));
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_sysctl(Some(ann(&[("kernel.shm_rmid_forced", "1")])));
    let h = app(spec, &[]).unwrap();
    assert!(h.spec.hooks().is_none());
    assert!(h.notes.iter().any(|n| n.contains("hooks")));
    assert!(h.notes.iter().any(|n| n.contains("sysctl")));
    // Spec::default() carries CAP_KILL etc.; they are gone.
    let caps = h
        .spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    assert!(caps.bounding().as_ref().unwrap().is_empty());
}

#[test]
fn users_outside_the_mapped_range_are_refused() {
    let mut spec = Spec::default();
    spec.process_mut()
        .as_mut()
        .unwrap()
        .user_mut()
        .set_uid(70_000);
    let e = app(spec, &[]).unwrap_err().to_string();
    assert!(e.contains("process.user.uid"), "{e}");
    let mut spec = Spec::default();
    spec.process_mut()
        .as_mut()
        .unwrap()
        .user_mut()
        .set_uid(1000);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .user_mut()
        .set_gid(1000);
    let h = app(spec, &[]).unwrap();
    assert_eq!((h.host_uid, h.host_gid), (Some(101_000), Some(101_000)));
}

#[test]
fn kill_mode_and_tmp_exec_follow_the_config() {
    let config = ProviderConfig::from_toml(
        "tmp_exec = true\ntmp_size = \"4Mi\"\n[seccomp]\nmode = \"kill\"\n",
    )
    .unwrap();
    let h = harden(
        Spec::default(),
        &ann(&[(GUEST, "g1")]),
        &config,
        &app_sockets(),
    )
    .unwrap();
    let linux = h.spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.seccomp().as_ref().unwrap().default_action(),
        LinuxSeccompAction::ScmpActKillProcess
    );
    let o = opts(find(&h.spec, "/tmp")[0]);
    assert!(!o.contains(&"noexec".to_string()), "{o:?}");
    assert!(o.contains(&"size=4194304".to_string()), "{o:?}");
}
