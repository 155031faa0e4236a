//! The hardening steps, each a function on the OCI spec. [`crate::harden`]
//! runs them in order; each is public so the shim (and tests) can see what
//! one step does.

use crate::annotations::Role;
use crate::config::{IdRange, Limits, ProviderConfig, CPU_PERIOD_US};
use crate::error::PolicyError;
use crate::seccomp;
use crate::units::ByteSize;
use oci_spec::runtime::{
    Capabilities, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType,
    LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemory, LinuxNamespace, LinuxNamespaceType,
    LinuxPids, LinuxResources, Mount, Spec,
};
use std::path::{Component, Path, PathBuf};

mod init;
mod mounts;
mod relay;
pub use init::{init_for_role, pid1_init, INIT_PATH};
pub use mounts::{mounts, CRI_FILES};
pub use relay::{relay_args, relay_spec};

/// Where the app finds its VMI socket.
pub const VMI_SOCKET: &str = "/run/furnace/vmi.sock";
/// Where the app finds the facilities relay's socket.
pub const FAC_SOCKET: &str = "/run/furnace/fac.sock";
/// The small tmpfs that holds the two sockets.
pub const SOCKET_DIR: &str = "/run/furnace";

/// runc's and containerd's default masked paths (containerd adds powercap,
/// CVE-2020-8694).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's and containerd's default read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where the app finds its private key (the tenant's secret), read-only.
pub const APP_KEY: &str = "/run/furnace/app.key";
/// Where the app finds the backend's public key it pins.
pub const BACKEND_KEY: &str = "/run/furnace/backend.pub";
/// Where the relay partition finds the relay program.
pub const RELAY_PROGRAM: &str = "/run/furnace/relay";
/// Where the relay finds the shim's broker (`furnace_fac_broker`).
pub const BROKER_SOCKET: &str = "/run/furnace/broker.sock";
/// Where the relay finds the app's storage directory, the one writable bind.
pub const STORAGE_DIR: &str = "/run/furnace/storage";

/// Host paths to bind into the partition's `/run/furnace`: the sockets,
/// both under the provider's `socket_root`, the init, and for facilities
/// the key files (app) or the relay's files (fac).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostBinds {
    /// The app's own VMI socket, `<root>/guests/<guest>/apps/<id>.sock`.
    /// Required for [`Role::App`], refused for the others.
    pub vmi: Option<PathBuf>,
    /// The app's facilities socket (its relay's listener), if a backend is
    /// named. [`Role::App`] only.
    pub fac: Option<PathBuf>,
    /// The tenant's key files for an app with `fac`, bound read-only at
    /// [`APP_KEY`] and [`BACKEND_KEY`].
    pub keys: Option<KeyFiles>,
    /// What the relay partition runs on. Required for [`Role::Fac`],
    /// refused for the others.
    pub relay: Option<RelayFiles>,
    /// A host path of `furnace-init` (the shim binds it into the
    /// partition's own directory first, `shim/src/rootfs.rs`), run as PID 1 from [`INIT_PATH`]
    /// ([`pid1_init`]). Required for [`Role::App`] and [`Role::Fac`],
    /// refused for [`Role::Sandbox`].
    pub init: Option<PathBuf>,
    /// The host id range the shim claimed for this partition alone
    /// ([`furnace_config::UserNamespaceConfig::range`]). Required for
    /// [`Role::App`] and [`Role::Fac`], refused for [`Role::Sandbox`].
    pub ids: Option<IdRange>,
    /// Where the shim answers the seccomp filter's refusals
    /// ([`crate::seccomp::profile`]). [`Role::App`] only; without it the
    /// kernel answers them, uncounted.
    pub seccomp_listener: Option<PathBuf>,
}

/// The tenant's keys as host files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFiles {
    /// The app's private key (`furnace.dev/app-key`).
    pub app_key: PathBuf,
    /// The backend's public key, as the shim wrote it from `furnace.dev/backend-key`.
    pub backend_key: PathBuf,
}

/// The relay partition's host files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayFiles {
    /// The static relay binary, bound read-only at [`RELAY_PROGRAM`].
    pub program: PathBuf,
    /// The shim's broker socket (under `socket_root`), at [`BROKER_SOCKET`].
    pub broker: PathBuf,
    /// The app's storage directory, bound read-write at [`STORAGE_DIR`].
    pub storage: PathBuf,
}

// ---------------------------------------------------------------- root, process

/// The root filesystem is mounted read-only.
pub fn read_only_root(spec: &mut Spec) -> Result<(), PolicyError> {
    let root = spec.root_mut().as_mut().ok_or_else(|| {
        PolicyError::spec(
            "root",
            "is missing",
            "give the container a root filesystem (containerd always does)",
        )
    })?;
    root.set_readonly(Some(true));
    Ok(())
}

/// The spec's process, which every role needs.
pub(crate) fn process_of(spec: &mut Spec) -> Result<&mut oci_spec::runtime::Process, PolicyError> {
    spec.process_mut().as_mut().ok_or_else(|| {
        PolicyError::spec(
            "process",
            "is missing",
            "give the container a process to run",
        )
    })
}

/// No capabilities in any set, and `no_new_privs`.
pub fn drop_privileges(spec: &mut Spec) -> Result<(), PolicyError> {
    let process = process_of(spec)?;
    harden_process(process);
    Ok(())
}

/// The process part of the policy, also for an `exec`ed process. A
/// negative OOM score (CRI gives the pod sandbox -998) is raised to 0: a
/// partition may not shield itself from the OOM killer, and from inside its
/// user namespace the kernel would refuse the write anyway.
pub fn harden_process(process: &mut oci_spec::runtime::Process) {
    if process.oom_score_adj().is_some_and(|adj| adj < 0) {
        process.set_oom_score_adj(Some(0));
    }
    let none = || Some(Capabilities::new());
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(none());
    caps.set_effective(none());
    caps.set_inheritable(none());
    caps.set_permitted(none());
    caps.set_ambient(none());
    process.set_capabilities(Some(caps));
    process.set_no_new_privileges(Some(true));
}

/// The process an `exec` runs in a running partition: what to run (args,
/// env, cwd) comes from the request; who runs it and with what (user,
/// rlimits, OOM score) from the partition's hardened init, and the process
/// part of the policy is applied on top. A terminal, or a user other than
/// the init's, is refused.
pub fn exec_process(
    init: &oci_spec::runtime::Process,
    requested: &oci_spec::runtime::Process,
) -> Result<oci_spec::runtime::Process, PolicyError> {
    if requested.terminal() == Some(true) {
        return Err(PolicyError::spec(
            "process.terminal",
            "is true",
            "Furnace partitions have no terminal; run the exec without -t",
        ));
    }
    if requested.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(PolicyError::spec(
            "process.args",
            "is empty",
            "name the program to exec",
        ));
    }
    let (asked, runs) = (requested.user(), init.user());
    if (asked.uid(), asked.gid()) != (runs.uid(), runs.gid()) {
        return Err(PolicyError::spec(
            "process.user",
            format!(
                "asks for {}:{}, but the partition runs as {}:{}",
                asked.uid(),
                asked.gid(),
                runs.uid(),
                runs.gid()
            ),
            "exec as the container's own user (drop --user)",
        ));
    }
    let mut process = init.clone();
    process.set_args(requested.args().clone());
    process.set_env(requested.env().clone().or_else(|| init.env().clone()));
    process.set_cwd(requested.cwd().clone());
    process.set_terminal(Some(false));
    process.set_console_size(None);
    harden_process(&mut process);
    Ok(process)
}

// ---------------------------------------------------------------- namespaces

fn ns(typ: LinuxNamespaceType) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ);
    n
}

/// App and fac: fresh pid, ipc, uts, mount, cgroup, user and network
/// namespaces (any path to join, such as a CRI pod's, is dropped: an app
/// shares nothing with its pod). The network namespace is empty (only `lo`):
/// the relay gets its one backend connection from the shim's broker
/// (docs/facilities.md, "Its partition"), never dials.
///
/// Sandbox: keeps the namespaces CRI set up (the pod's network namespace is a
/// path made by CNI) and gets fresh ones for any of pid/ipc/uts/mount/net
/// that is missing; no user namespace is added.
pub fn namespaces(spec: &mut Spec, role: Role) {
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let given = linux.namespaces().clone().unwrap_or_default();
    let base = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    let list = match role {
        Role::App | Role::Fac => base
            .into_iter()
            .chain([
                LinuxNamespaceType::Cgroup,
                LinuxNamespaceType::User,
                LinuxNamespaceType::Network,
            ])
            .map(ns)
            .collect(),
        Role::Sandbox => {
            let mut list = given.clone();
            for typ in base.into_iter().chain([LinuxNamespaceType::Network]) {
                if !list.iter().any(|n| n.typ() == typ) {
                    list.push(ns(typ));
                }
            }
            list
        }
    };
    linux.set_namespaces(Some(list));
}

fn mapping(host: u32, size: u32) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(host)
        .size(size)
        .build()
        .expect("every LinuxIdMapping field is set")
}

/// Maps container ids `0..size` onto the partition's own host id range and
/// returns the host uid and gid the process runs as.
pub fn user_namespace(spec: &mut Spec, range: &IdRange) -> Result<(u32, u32), PolicyError> {
    let (uid, gid, extra) = match spec.process() {
        Some(p) => (
            p.user().uid(),
            p.user().gid(),
            p.user().additional_gids().clone().unwrap_or_default(),
        ),
        None => (0, 0, vec![]),
    };
    for (field, id) in [("process.user.uid", uid), ("process.user.gid", gid)]
        .into_iter()
        .chain(extra.iter().map(|g| ("process.user.additionalGids", *g)))
    {
        if id >= range.size {
            return Err(PolicyError::spec(
                field,
                format!("{id} is outside the {} ids the user namespace maps", range.size),
                "run the image as a user below that (e.g. USER 1000 or root, which maps to an unprivileged host id), or have the provider raise user_namespace.size",
            ));
        }
    }
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_uid_mappings(Some(vec![mapping(range.host_uid, range.size)]));
    linux.set_gid_mappings(Some(vec![mapping(range.host_gid, range.size)]));
    Ok((range.host_uid + uid, range.host_gid + gid))
}

// ---------------------------------------------------------------- resources

/// The devices an app may open: null, zero, full, random, urandom, tty,
/// ptmx and the pty slaves.
const ALLOWED_DEVICES: &[(LinuxDeviceType, i64, Option<i64>)] = &[
    (LinuxDeviceType::C, 1, Some(3)),
    (LinuxDeviceType::C, 1, Some(5)),
    (LinuxDeviceType::C, 1, Some(7)),
    (LinuxDeviceType::C, 1, Some(8)),
    (LinuxDeviceType::C, 1, Some(9)),
    (LinuxDeviceType::C, 5, Some(0)),
    (LinuxDeviceType::C, 5, Some(2)),
    (LinuxDeviceType::C, 136, None),
];

fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
) -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(allow);
    d.set_typ(Some(typ));
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some("rwm".into()));
    d
}

fn device_allowed(d: &LinuxDevice) -> bool {
    ALLOWED_DEVICES.iter().any(|(t, major, minor)| {
        d.typ() == *t && d.major() == *major && minor.is_none_or(|m| m == d.minor())
    })
}

/// cgroup limits: the requested (or default) limits, tightened further by
/// any limit already in the spec (a Kubernetes `resources.limits`), never
/// loosened. Swap is not added on top of memory, the OOM killer stays on,
/// realtime and burst CPU time and raw cgroup v2 keys are dropped, and the
/// device cgroup denies everything but the standard devices.
/// Returns the limits that are in force.
pub fn resources(spec: &mut Spec, limits: &Limits, notes: &mut Vec<String>) -> Limits {
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let r = linux
        .resources_mut()
        .get_or_insert_with(LinuxResources::default);

    // Memory.
    let old = r.memory().unwrap_or_default();
    let mut memory = limits.memory.bytes() as i64;
    if let Some(l) = old.limit().filter(|l| *l > 0 && *l < memory) {
        memory = l;
    }
    let mut m = LinuxMemory::default();
    m.set_limit(Some(memory));
    m.set_swap(Some(memory));
    m.set_reservation(old.reservation().filter(|v| *v > 0 && *v <= memory));
    m.set_swappiness(old.swappiness());
    r.set_memory(Some(m));

    // CPU: compare quota/period ratios; keep the tighter.
    let old = r.cpu().clone().unwrap_or_default();
    let (mut quota, mut period) = (limits.cpu_quota_us(), CPU_PERIOD_US);
    if let (Some(q), Some(p)) = (old.quota(), old.period()) {
        if q > 0 && p > 0 && (q as f64 / p as f64) < (quota as f64 / period as f64) {
            (quota, period) = (q, p);
        }
    }
    let mut c = LinuxCpu::default();
    c.set_quota(Some(quota));
    c.set_period(Some(period));
    c.set_shares(old.shares());
    c.set_cpus(old.cpus().clone());
    c.set_mems(old.mems().clone());
    r.set_cpu(Some(c));

    // Pids.
    let mut pids = limits.pids as i64;
    if let Some(p) = r.pids().map(|p| p.limit()).filter(|l| *l > 0 && *l < pids) {
        pids = p;
    }
    let mut p = LinuxPids::default();
    p.set_limit(pids);
    r.set_pids(Some(p));

    // Devices: deny all, then the standard ones.
    let mut rules = vec![device_rule(false, LinuxDeviceType::A, None, None)];
    rules.extend(
        ALLOWED_DEVICES
            .iter()
            .map(|(t, major, minor)| device_rule(true, *t, Some(*major), *minor)),
    );
    r.set_devices(Some(rules));

    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        notes.push(
            "dropped linux.resources.unified (raw cgroup v2 keys could loosen the limits)".into(),
        );
    }
    r.set_unified(None);

    if let Some(devices) = linux.devices_mut() {
        let before = devices.len();
        devices.retain(device_allowed);
        if devices.len() != before {
            notes.push(format!(
                "dropped {} device node(s) outside null/zero/full/random/urandom/tty/ptmx",
                before - devices.len()
            ));
        }
    }

    Limits {
        cpu: quota as f64 / period as f64,
        memory: ByteSize(memory as u64),
        pids: pids as u64,
        storage: limits.storage,
    }
}

/// The resources of an `Update`, held to `ceiling` (the limits in force
/// since create): the same rules as [`resources`], so an update can tighten
/// a partition but never loosen it.
pub fn tighten_resources(requested: LinuxResources, ceiling: &Limits) -> LinuxResources {
    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_resources(Some(requested));
    let mut spec = Spec::default();
    spec.set_linux(Some(linux));
    resources(&mut spec, ceiling, &mut Vec::new());
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- paths, misc

/// Masked and read-only paths: runc's defaults plus whatever the spec
/// already had (those only restrict).
pub fn masked_and_readonly_paths(spec: &mut Spec) {
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let union = |given: &Option<Vec<String>>, defaults: &[&str]| {
        let mut v: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
        for p in given.iter().flatten() {
            if !v.contains(p) {
                v.push(p.clone());
            }
        }
        Some(v)
    };
    let masked = union(linux.masked_paths(), MASKED_PATHS);
    let readonly = union(linux.readonly_paths(), READONLY_PATHS);
    linux.set_masked_paths(masked);
    linux.set_readonly_paths(readonly);
}

/// Drops what would run code on the host or widen the kernel interface:
/// OCI hooks (they run on the host, as root), sysctls, personality flags and
/// time-namespace offsets; stops mount propagation out of the container.
pub fn strip_host_reach(spec: &mut Spec, notes: &mut Vec<String>) {
    if spec.hooks().is_some() {
        notes.push("dropped OCI hooks (they would run on the host)".into());
        spec.set_hooks(None);
    }
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    if linux.sysctl().as_ref().is_some_and(|s| !s.is_empty()) {
        notes.push("dropped linux.sysctl".into());
    }
    linux.set_sysctl(None);
    linux.set_personality(None);
    linux.set_time_offsets(None);
    // libcontainer applies it recursively (MS_REC) and rejects "rprivate".
    linux.set_rootfs_propagation(Some("private".into()));
}

/// The seccomp allowlist for `role`, in the provider's mode; its refusals
/// are notified to `listener` when there is one.
pub fn seccomp(
    spec: &mut Spec,
    role: Role,
    config: &ProviderConfig,
    listener: Option<&Path>,
) -> Result<(), PolicyError> {
    let profile = seccomp::profile(role, config.seccomp.mode, listener)?;
    spec.linux_mut()
        .get_or_insert_with(Default::default)
        .set_seccomp(Some(profile));
    Ok(())
}
