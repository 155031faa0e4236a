//! One task: creating its partition from containerd's bundle, tracking its
//! lifecycle, and removing every trace of it.

use crate::exec::ExecProcess;
use crate::id_ranges::{self, IdClaims};
use crate::process::ProcessState;
use crate::record::TaskRecord;
use crate::registration::{self, Registration};
use crate::relay::{self, FacRelay, RelayParams, RelayRecord};
pub use crate::rootfs::RootfsMount;
use crate::seccomp_agent::SeccompAgent;
use crate::{rootfs, stdio};
use furnace_runtime::launcher::cgroups::PartitionCgroups;
use furnace_runtime::launcher::{self, Partition};
use furnace_runtime::{harden, AppRequest, HostBinds, ProviderConfig, Role, SeccompMode};
use oci_spec::runtime::Spec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The owners' roles of a task's host id ranges (`id_ranges::owner`).
const APP_IDS: &str = "app";
const RELAY_IDS: &str = "relay";

/// libcontainer's state, one directory per containerd namespace.
pub const STATE_ROOT: &str = "/run/furnace/runtime";
/// Parent of every partition's cgroup: `/furnace/<namespace>/<id>`.
pub const CGROUP_PARENT: &str = "/furnace";

/// What containerd asked for in `Create`.
pub struct CreateParams<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub rootfs: Vec<RootfsMount>,
    pub stdin: &'a str,
    pub stdout: &'a str,
    pub stderr: &'a str,
    pub terminal: bool,
    pub config: &'a ProviderConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

pub struct Instance {
    pub id: String,
    /// An app, or a CRI pod's sandbox.
    pub role: Role,
    pub bundle: PathBuf,
    pub pid: u32,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    /// The provider lets `exec` into this task.
    pub allow_exec: bool,
    pub record: TaskRecord,
    partition: Partition,
    cgroups: PartitionCgroups,
    registration: Option<Registration>,
    /// The facilities relay, for an app that names a backend.
    relay: Option<FacRelay>,
    /// Answers and counts what an app's seccomp filter refuses.
    seccomp: Option<SeccompAgent>,
    /// The init process.
    pub init: ProcessState,
    pub execs: Mutex<HashMap<String, Arc<ExecProcess>>>,
    /// Held across `Start` and the exit event, so TaskStart always precedes TaskExit.
    pub lifecycle: Mutex<()>,
}

/// Undoes a half-finished create, newest step first.
#[derive(Default)]
struct Undo {
    record: TaskRecord,
    registration: Option<Registration>,
    relay: Option<FacRelay>,
    armed: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.armed {
            if let Some(relay) = self.relay.take() {
                for problem in relay.stop() {
                    log::warn!("cleaning up after a failed create: {problem}");
                }
            }
            for problem in teardown(&self.record, self.registration.as_ref()) {
                log::warn!("cleaning up after a failed create: {problem}");
            }
        }
    }
}

/// The role the bundle's spec asks for: a CRI sandbox, else an app. An
/// unreadable spec is an app's, whose create then reports the problem.
pub fn role_of(bundle: &Path) -> Role {
    Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|s| s.annotations().clone())
        .map(|a| Role::from_annotations(&a))
        .unwrap_or(Role::App)
}

impl Instance {
    pub fn create(p: CreateParams<'_>) -> Result<Instance, CreateError> {
        if p.terminal {
            return Err(CreateError::Invalid(
                "a terminal (ctr -t, tty: true) is not available under io.furnace.v1: apps run without a tty; drop the flag".into(),
            ));
        }
        let spec_path = p.bundle.join("config.json");
        let mut spec = Spec::load(&spec_path)
            .map_err(|e| CreateError::Invalid(format!("reading {}: {e}", spec_path.display())))?;
        let mut annotations: HashMap<String, String> =
            spec.annotations().clone().unwrap_or_default();
        let role = Role::from_annotations(&annotations);
        let app_key_from_kubelet =
            role == Role::App && crate::relay::take_mounted_key(&mut spec, &mut annotations)?;
        let request = furnace_runtime::annotations::parse(&annotations, p.config, role)
            .map_err(|e| CreateError::Invalid(e.to_string()))?;
        let relay_record = (role == Role::App)
            .then_some(request.backend.as_ref())
            .flatten()
            .map(|backend| {
                let record = RelayRecord::new(p.namespace, p.id, backend, p.config);
                (backend, record)
            });
        let app_id = registration::app_id(p.namespace, p.id);
        // A CRI sandbox carries the pod's furnace.dev/guest too (CRI passes
        // pod annotations to every container of the pod); only the app
        // reaches the guest.
        let vmi_socket = (role == Role::App)
            .then_some(request.guest.as_deref())
            .flatten()
            .map(|g| registration::app_socket(&p.config.socket_root, g, &app_id));
        // Apps run under furnace-init as PID 1 (docs/shim.md, "PID 1"); a
        // CRI sandbox's pause process is an init itself.
        let host_init = (role != Role::Sandbox)
            .then(launcher::init_path)
            .transpose()
            .map_err(CreateError::Failed)?;
        let (fac, keys) = match &relay_record {
            Some((_, r)) => {
                let (socket, keys) = r.app_binds();
                (Some(socket), Some(keys))
            }
            None => (None, None),
        };
        let state_root = Path::new(STATE_ROOT).join(p.namespace);
        let cgroups_path = Path::new(CGROUP_PARENT).join(p.namespace).join(p.id);
        let mut undo = Undo {
            record: TaskRecord {
                id: p.id.into(),
                namespace: p.namespace.into(),
                bundle: p.bundle.into(),
                state_root: state_root.clone(),
                cgroups_path: cgroups_path.clone(),
                ..Default::default()
            },
            registration: None,
            relay: None,
            armed: true,
        };
        let claim = |role: &str| {
            IdClaims::system()
                .claim(&p.config.user_namespace, &id_ranges::owner(p.bundle, role))
                .map_err(|e| CreateError::Failed(e.to_string()))
        };
        let ids = match role {
            Role::Sandbox => None,
            Role::App | Role::Fac => Some(claim(APP_IDS)?),
        };
        // In kill mode a refusal ends the process: nothing to answer.
        let seccomp = match (role, p.config.seccomp.mode) {
            (Role::App, SeccompMode::Errno) => Some(
                SeccompAgent::listen(p.id)
                    .map_err(|e| CreateError::Failed(format!("starting the seccomp agent: {e}")))?,
            ),
            _ => None,
        };
        let binds = HostBinds {
            seccomp_listener: seccomp.as_ref().map(|a| a.path().to_owned()),
            vmi: vmi_socket,
            fac,
            keys,
            relay: None,
            init: host_init
                .as_ref()
                .map(|_| rootfs::init_path(p.namespace, p.id)),
            ids,
        };
        let mut hardened = harden(spec, &annotations, p.config, &binds)
            .map_err(|e| CreateError::Invalid(e.to_string()))?;
        for note in &hardened.notes {
            log::info!("{}: {note}", p.id);
        }
        hardened
            .spec
            .linux_mut()
            .get_or_insert_with(Default::default)
            .set_cgroups_path(Some(cgroups_path.clone()));
        undo.record.limits = Some(hardened.limits);

        let relay = match relay_record {
            Some((backend, record)) => {
                let app_ids = app_ids(&hardened)?;
                let relay_ids = claim(RELAY_IDS)?;
                relay::claim(&record)?;
                // Recorded as soon as it is claimed, so that a shim dying
                // from here on leaves `delete` the relay to remove.
                undo.record.relay = Some(record.clone());
                undo.record
                    .save(p.bundle)
                    .map_err(|e| CreateError::Failed(format!("writing the task record: {e}")))?;
                let relay = FacRelay::start(
                    record,
                    RelayParams {
                        id: p.id,
                        backend,
                        storage_quota: hardened.limits.storage,
                        app_ids,
                        ids: relay_ids,
                        app_key_from_kubelet,
                        config: p.config,
                    },
                )?;
                undo.relay = Some(relay);
                undo.relay.as_ref()
            }
            None => None,
        };
        if let Some(r) = relay {
            log::info!(
                "{}: facilities relay for {} started (pid {:?})",
                p.id,
                r.record().dirs.root.display(),
                r.pid()
            );
        }

        let registration = register(&request, role, &app_id, &hardened, p.config)?;
        if let Some(r) = &registration {
            undo.record.guest = Some(r.guest.clone());
            undo.record.app_id = Some(r.app_id.clone());
            undo.record.admin_socket = Some(r.admin_socket.clone());
            undo.registration = Some(r.clone());
        }

        let spec_root = hardened
            .spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        // Recorded before anything is mounted, so that a shim dying from
        // here on leaves `delete` what to unmount.
        let rootfs = rootfs::claim(p.namespace, p.id, hardened.host_gid)?;
        undo.record.mounted_rootfs = Some(rootfs.clone());
        undo.record
            .save(p.bundle)
            .map_err(|e| CreateError::Failed(format!("writing the task record: {e}")))?;
        rootfs::mount(
            &rootfs,
            rootfs::PartitionFiles {
                mounts: &p.rootfs,
                bundle: p.bundle,
                spec_root: &spec_root,
                init: host_init.as_deref(),
            },
        )?;
        if let Some(root) = hardened.spec.root_mut() {
            root.set_path(rootfs.clone());
        }
        if let Some(dir) = rootfs.parent() {
            rootfs::stage_cri_files(&mut hardened.spec, dir)?;
        }
        furnace_runtime::launcher::mountpoints::create(&rootfs, &hardened.spec)
            .map_err(CreateError::Failed)?;

        hardened
            .spec
            .save(&spec_path)
            .map_err(|e| CreateError::Failed(format!("writing the hardened spec: {e}")))?;
        std::fs::create_dir_all(&state_root)
            .map_err(|e| CreateError::Failed(format!("creating {}: {e}", state_root.display())))?;
        let io = stdio::open(p.namespace, p.id, p.stdin, p.stdout, p.stderr)
            .map_err(|e| CreateError::Invalid(e.to_string()))?;
        let (partition, pid) = launcher::create(p.id, p.bundle, &state_root, io.container)
            .map_err(|e| CreateError::Failed(e.to_string()))?;

        undo.armed = false;
        let relay = undo.relay.take();
        Ok(Instance {
            id: p.id.into(),
            role,
            bundle: p.bundle.into(),
            pid,
            stdin: p.stdin.into(),
            stdout: p.stdout.into(),
            stderr: p.stderr.into(),
            allow_exec: p.config.allow_exec,
            cgroups: PartitionCgroups::new(&cgroups_path, p.id),
            record: std::mem::take(&mut undo.record),
            partition,
            registration,
            relay,
            seccomp,
            init: ProcessState::new(io.stdin),
            execs: Mutex::default(),
            lifecycle: Mutex::new(()),
        })
    }

    /// Messages the app's relay refused at the rate limit; `None` without one.
    pub fn relay_rate_limited(&self) -> Option<u64> {
        self.relay.as_ref().map(FacRelay::rate_limited)
    }

    /// Syscalls the app partition's filter refused; `None` when the kernel
    /// answers them (a sandbox, kill mode).
    pub fn seccomp_refused(&self) -> Option<u64> {
        self.seccomp.as_ref().map(SeccompAgent::refused)
    }

    /// The app's registration with its guest's sidecar; `None` for a sandbox.
    pub fn registration(&self) -> Option<&Registration> {
        self.registration.as_ref()
    }

    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    pub fn cgroups(&self) -> &PartitionCgroups {
        &self.cgroups
    }

    /// Whether `pid` is (or lately was) the init of this task's relay.
    pub fn relay_owns(&self, pid: u32) -> bool {
        self.relay.as_ref().is_some_and(|r| r.owns(pid))
    }

    /// Kills whatever still runs and removes every trace; returns problems.
    pub fn destroy(&self) -> Vec<String> {
        self.init.close_stdin();
        let mut problems = self.relay.as_ref().map(FacRelay::stop).unwrap_or_default();
        problems.extend(teardown(&self.record, self.registration.as_ref()));
        if let Some(agent) = &self.seccomp {
            agent.stop();
        }
        problems
    }
}

fn register(
    request: &AppRequest,
    role: Role,
    app_id: &str,
    hardened: &furnace_runtime::Hardened,
    config: &ProviderConfig,
) -> Result<Option<Registration>, CreateError> {
    let (Role::App, Some(guest)) = (role, request.guest.as_deref()) else {
        return Ok(None);
    };
    let (uid, gid) = app_ids(hardened)?;
    let registration = registration::register(
        &config.socket_root,
        guest,
        app_id,
        &request.permissions,
        uid,
        gid,
    )
    .map_err(|e| CreateError::Invalid(e.to_string()))?;
    let expected = registration::app_socket(&config.socket_root, guest, app_id);
    if registration.app_socket != expected {
        let _ = registration.unregister();
        return Err(CreateError::Failed(format!(
            "the sidecar of guest {guest} bound {} where {} was expected; are its --socket-root and the provider's socket_root the same?",
            registration.app_socket.display(),
            expected.display()
        )));
    }
    Ok(Some(registration))
}

/// Kills what still runs in partition `id` and removes its libcontainer
/// state and its cgroups, with their empty parents.
pub fn remove_partition(id: &str, state_root: &Path, cgroups_path: &Path) -> Option<String> {
    let problem = Partition::new(id, state_root).delete().err();
    let cgroups = PartitionCgroups::new(cgroups_path, id);
    if !cgroups.is_removed() {
        // Never started (or libcontainer failed): remove the leaf too.
        cgroups.remove_leaf();
    }
    cgroups.remove_empty_parents();
    let _ = std::fs::remove_dir(state_root);
    problem.map(|e| e.to_string())
}

/// The host uid and gid the app runs as.
fn app_ids(hardened: &furnace_runtime::Hardened) -> Result<(u32, u32), CreateError> {
    match (hardened.host_uid, hardened.host_gid) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(CreateError::Failed(
            "an app partition must have a user namespace".into(),
        )),
    }
}

/// Removes everything a task left on the host: processes, cgroups
/// (with their empty parents), libcontainer state, the facilities relay, the
/// rootfs mount and the sidecar registration. Safe to repeat. Returns what could not be removed.
pub fn teardown(record: &TaskRecord, registration: Option<&Registration>) -> Vec<String> {
    let mut problems = Vec::new();
    // A range is released only once nothing runs under it any more, so
    // that it is never handed to a new partition while an old one lives.
    let release = |role: &str, problems: &mut Vec<String>| {
        if !record.bundle.as_os_str().is_empty() {
            problems.extend(IdClaims::system().release(&id_ranges::owner(&record.bundle, role)));
        }
    };
    if !record.id.is_empty() {
        match remove_partition(&record.id, &record.state_root, &record.cgroups_path) {
            Some(problem) => problems.push(problem),
            None => release(APP_IDS, &mut problems),
        }
    }
    let relay_problems = record
        .relay
        .as_ref()
        .map(relay::teardown)
        .unwrap_or_default();
    if relay_problems.is_empty() {
        release(RELAY_IDS, &mut problems);
    }
    problems.extend(relay_problems);
    if let Some(mounted) = &record.mounted_rootfs {
        if let Err(e) = rootfs::remove(mounted) {
            problems.push(e);
        }
    }
    let from_record = || -> Option<Registration> {
        Some(Registration {
            guest: record.guest.clone()?,
            app_id: record.app_id.clone()?,
            admin_socket: record.admin_socket.clone()?,
            app_socket: PathBuf::new(),
        })
    };
    if let Some(r) = registration.cloned().or_else(from_record) {
        if let Err(e) = r.unregister() {
            problems.push(e);
        }
    }
    problems
}
