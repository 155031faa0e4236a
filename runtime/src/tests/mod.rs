//! Tests of the whole policy: hardened specs checked field by field.
//! Here the fixtures and the defaults; limits and permissions in `limits.rs`,
//! roles, namespaces and mounts in `roles.rs`.

mod init;
mod limits;
mod roles;

use super::*;
use annotations::{CRI_CONTAINER_TYPE, GUEST, LIMITS, PERMISSIONS};
use furnace_api::v1::Permission;
use oci_spec::runtime::{
    LinuxNamespaceType, LinuxSeccompAction, LinuxSeccompOperator, Mount, Spec,
};
use std::path::{Path, PathBuf};

/// Every capability set is present and empty.
fn assert_no_capabilities(process: &oci_spec::runtime::Process) {
    let caps = process.capabilities().as_ref().unwrap();
    for set in [
        caps.bounding(),
        caps.effective(),
        caps.inheritable(),
        caps.permitted(),
        caps.ambient(),
    ] {
        assert_eq!(set.as_ref().map(|c| c.len()), Some(0));
    }
}

fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Where the tests say the host keeps `furnace-init`.
const HOST_INIT: &str = "/usr/local/bin/furnace-init";

fn app_sockets() -> HostBinds {
    HostBinds {
        vmi: Some(PathBuf::from("/run/furnace/guests/g1/apps/app1.sock")),
        init: Some(PathBuf::from(HOST_INIT)),
        ids: ProviderConfig::default().user_namespace.range(0),
        ..HostBinds::default()
    }
}

/// What the shim gives the relay's partition.
fn relay_binds() -> HostBinds {
    HostBinds {
        relay: Some(crate::RelayFiles {
            program: "/run/furnace/fac/ns/app1/relay/furnace-fac-relay".into(),
            broker: "/run/furnace/fac/ns/app1/relay/broker.sock".into(),
            storage: "/var/lib/furnace/storage/ns/app1".into(),
        }),
        init: Some(PathBuf::from(HOST_INIT)),
        ids: ProviderConfig::default().user_namespace.range(0),
        ..HostBinds::default()
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

/// The cgroup resources of a hardened spec.
fn resources(h: &Hardened) -> oci_spec::runtime::LinuxResources {
    h.spec
        .linux()
        .as_ref()
        .unwrap()
        .resources()
        .clone()
        .unwrap()
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
    assert_no_capabilities(p);

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
