//! The app's facilities relay (docs/facilities.md, "Its partition"): the
//! shim starts it with the app when `furnace.dev/backend` is set, confined
//! as role `fac` with no network, serves its broker, restarts it when it
//! dies, and removes it with the app.
//!
//! The shim holds the two things the relay cannot make for itself: the app's
//! listening socket, bound once, so a restarted relay serves the socket the
//! app's mount pins; and the dialling of the backend, to exactly the
//! annotated address, over the broker (`furnace_fac_broker`).

mod app_key;
pub use app_key::take_mounted_key;
mod dialer;
mod files;
mod watch;

use crate::instance::{remove_partition, CreateError};
use crate::process::lock;
pub use files::RelayDirs;
use furnace_fac_broker::BrokerServer;
use furnace_runtime::launcher::{self, Partition};
use furnace_runtime::units::ByteSize;
use furnace_runtime::{policy, Backend, HostBinds, IdRange, ProviderConfig, RelayFiles, Role};
use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use watch::Waited;

/// libcontainer's state for relays, one directory per containerd namespace.
pub const STATE_ROOT: &str = "/run/furnace/runtime-fac";
/// Parent of every relay's cgroup: `/furnace-fac/<namespace>/<id>`, beside
/// (not under) the apps', so an app's own limits and stats stay its own.
pub const CGROUP_PARENT: &str = "/furnace-fac";
/// How long a stopping relay may take to hand the backend what it holds;
/// the relay itself gives up after 5 s.
const DRAIN: Duration = Duration::from_secs(6);

/// What `Create` gives the relay of one app.
pub struct RelayParams<'a> {
    pub id: &'a str,
    pub backend: &'a Backend,
    /// The app's storage quota (`furnace.dev/limits` storage, or the default).
    pub storage_quota: ByteSize,
    /// Host uid and gid of the app, which own its facilities socket and
    /// its copy of its key.
    pub app_ids: (u32, u32),
    /// The host id range claimed for the relay's own partition.
    pub ids: IdRange,
    /// The app's key is a Secret kubelet mounted, not `furnace.dev/app-key`.
    pub app_key_from_kubelet: bool,
    pub config: &'a ProviderConfig,
}

/// What the task record keeps of a relay, so that `delete` can remove it
/// after a shim died.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RelayRecord {
    pub id: String,
    pub dirs: RelayDirs,
    pub state_root: PathBuf,
    pub cgroups_path: PathBuf,
}

impl RelayRecord {
    pub fn new(namespace: &str, id: &str, backend: &Backend, config: &ProviderConfig) -> Self {
        RelayRecord {
            id: id.into(),
            dirs: RelayDirs::new(
                &config.socket_root,
                &config.facilities.storage_root,
                namespace,
                &backend.key,
                id,
            ),
            state_root: Path::new(STATE_ROOT).join(namespace),
            cgroups_path: Path::new(CGROUP_PARENT).join(namespace).join(id),
        }
    }

    /// The app's side of it: its socket and the key files.
    pub fn app_binds(&self) -> (PathBuf, furnace_runtime::KeyFiles) {
        (
            self.dirs.app_socket(),
            furnace_runtime::KeyFiles {
                app_key: self.dirs.app_key(),
                backend_key: self.dirs.backend_key(),
            },
        )
    }
}

/// A running relay and its supervisor.
pub struct FacRelay {
    record: RelayRecord,
    relay: Arc<watch::Relay>,
    rate_limited: Arc<dialer::RateLimitTotal>,
    broker: Mutex<Option<BrokerServer>>,
    supervisor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Makes the relay's directory for a new task. One that exists belongs to
/// a task this shim did not create (another containerd's of the same
/// namespace and id, or one not cleaned up): it is refused, and left alone.
/// Only a claimed relay goes into the task record, so that a failed create
/// never removes another task's.
pub fn claim(record: &RelayRecord) -> Result<(), CreateError> {
    files::claim(&record.dirs)
}

impl FacRelay {
    /// Sets up the relay [`claim`]ed for `p` and starts it. On failure
    /// nothing of it is left behind.
    pub fn start(record: RelayRecord, p: RelayParams<'_>) -> Result<FacRelay, CreateError> {
        let undo = Leftovers(Some(record.clone()));
        let dirs = &record.dirs;
        let addresses = dialer::resolve(
            &p.backend.address,
            &p.config.facilities.refused_backend_networks,
        )?;
        let init = launcher::init_path().map_err(CreateError::Failed)?;
        let program = launcher::relay_path().map_err(CreateError::Failed)?;
        // The relay runs as its partition's root: this host uid and gid.
        let relay_ids = (p.ids.host_uid, p.ids.host_gid);
        files::create(dirs, relay_ids, &init, &program)?;

        let failed = |what: &Path, e: std::io::Error| {
            CreateError::Failed(format!("{}: {e}", what.display()))
        };
        std::fs::write(dirs.backend_key(), format!("{}\n", p.backend.key))
            .map_err(|e| failed(&dirs.backend_key(), e))?;
        files::own(&dirs.backend_key(), 0, 0, 0o644)?;
        app_key::copy_for_app(
            &p.backend.app_key,
            match p.app_key_from_kubelet {
                true => app_key::KeyRoot::Kubelet(&p.config.facilities.kubelet_root),
                false => app_key::KeyRoot::Provider(&p.config.facilities.key_root),
            },
            &dirs.app_key(),
            p.app_ids,
        )?;
        let app =
            UnixListener::bind(dirs.app_socket()).map_err(|e| failed(&dirs.app_socket(), e))?;
        files::own(&dirs.app_socket(), p.app_ids.0, p.app_ids.1, 0o600)?;
        let broker = UnixListener::bind(dirs.broker()).map_err(|e| failed(&dirs.broker(), e))?;
        files::own(&dirs.broker(), relay_ids.0, relay_ids.1, 0o600)?;
        let dialer = dialer::Dialer {
            app,
            address: p.backend.address.clone(),
            addresses,
            dialing: AtomicUsize::new(0),
            rate_limited: Arc::default(),
        };
        let rate_limited = Arc::clone(&dialer.rate_limited);
        let broker = BrokerServer::spawn(broker, Arc::new(dialer))
            .map_err(|e| CreateError::Failed(format!("starting the facilities broker: {e}")))?;

        write_spec(&record, &p)?;
        std::fs::create_dir_all(&record.state_root).map_err(|e| failed(&record.state_root, e))?;
        let relay = Arc::new(watch::Relay {
            partition: Partition::new(p.id, &record.state_root),
            bundle: dirs.bundle(),
            log: dirs.log(),
            stop: AtomicBool::new(false),
            running: Mutex::new(None),
            recent_pids: Mutex::new(Vec::new()),
        });
        relay.launch().map_err(CreateError::Failed)?;
        let supervised = Arc::clone(&relay);
        let supervisor = std::thread::Builder::new()
            .name("fac-relay".into())
            .spawn(move || supervised.supervise())
            .map_err(|e| CreateError::Failed(format!("starting the relay's supervisor: {e}")))?;
        undo.disarm();
        Ok(FacRelay {
            record,
            relay,
            rate_limited,
            broker: Mutex::new(Some(broker)),
            supervisor: Mutex::new(Some(supervisor)),
        })
    }

    pub fn record(&self) -> &RelayRecord {
        &self.record
    }

    /// Messages this task's relays have refused at the rate limit.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.get()
    }

    /// The relay's init, while one runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.relay.running).as_ref().map(|r| r.pid)
    }

    /// Whether `pid` is, or was lately, this relay's init: its exit is no
    /// task's.
    pub fn owns(&self, pid: u32) -> bool {
        self.relay.owns(pid)
    }

    /// Stops the relay for good and removes it (but the storage). Safe to
    /// repeat; returns what could not be removed. The relay first gets a
    /// SIGTERM and [`DRAIN`] to hand the backend the notifies it accepted
    /// (it still needs the broker for that), then whatever is left is killed.
    pub fn stop(&self) -> Vec<String> {
        self.relay.stop.store(true, Ordering::Relaxed);
        if let Some(t) = lock(&self.supervisor).take() {
            let _ = t.join();
        }
        if let Some(running) = lock(&self.relay.running).take() {
            let until = Some(Instant::now() + DRAIN);
            if self
                .relay
                .partition
                .kill(libc::SIGTERM as u32, false)
                .is_ok()
                && self.relay.wait_for_exit(&running.pidfd, until) != Waited::Exited
            {
                log::warn!(
                    "{}: the relay did not stop within {DRAIN:?}",
                    self.record.id
                );
            }
        }
        if let Some(mut b) = lock(&self.broker).take() {
            b.stop();
        }
        teardown(&self.record)
    }
}

impl Drop for FacRelay {
    fn drop(&mut self) {
        for problem in self.stop() {
            log::warn!("removing the facilities relay: {problem}");
        }
    }
}

/// Removes a relay from its record: processes, cgroups, state and files.
pub fn teardown(record: &RelayRecord) -> Vec<String> {
    let mut problems: Vec<String> =
        remove_partition(&record.id, &record.state_root, &record.cgroups_path)
            .into_iter()
            .collect();
    problems.extend(files::remove(&record.dirs));
    problems
}

struct Leftovers(Option<RelayRecord>);

impl Leftovers {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Some(record) = &self.0 {
            for problem in teardown(record) {
                log::warn!("cleaning up after a failed relay start: {problem}");
            }
        }
    }
}

/// The relay's spec, hardened as role `fac`, in its bundle.
fn write_spec(record: &RelayRecord, p: &RelayParams<'_>) -> Result<(), CreateError> {
    let dirs = &record.dirs;
    let args = policy::relay_args(&p.backend.address, &p.config.facilities, p.storage_quota);
    let spec = policy::relay_spec(&dirs.rootfs(), args);
    let binds = HostBinds {
        relay: Some(RelayFiles {
            program: dirs.program(),
            broker: dirs.broker(),
            storage: dirs.storage.clone(),
        }),
        init: Some(dirs.init()),
        ids: Some(p.ids),
        ..HostBinds::default()
    };
    let mut hardened =
        furnace_runtime::harden_as(Role::Fac, spec, &HashMap::new(), p.config, &binds)
            .map_err(|e| CreateError::Failed(format!("the relay's partition: {e}")))?;
    hardened
        .spec
        .linux_mut()
        .get_or_insert_with(Default::default)
        .set_cgroups_path(Some(record.cgroups_path.clone()));
    launcher::mountpoints::create(&dirs.rootfs(), &hardened.spec).map_err(CreateError::Failed)?;
    let path = dirs.bundle().join("config.json");
    hardened
        .spec
        .save(&path)
        .map_err(|e| CreateError::Failed(format!("writing {}: {e}", path.display())))
}
