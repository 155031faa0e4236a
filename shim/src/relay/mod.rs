//! The app's facilities relay (docs/facilities.md, "Its partition"): the
//! shim starts it with the app when `furnace.dev/backend` is set, confined
//! as role `fac` with no network, serves its broker, restarts it when it
//! dies, and removes it with the app.
//!
//! The shim holds the two things the relay cannot make for itself: the app's
//! listening socket, bound once, so a restarted relay serves the socket the
//! app's mount pins; and the dialling of the backend, to exactly the
//! annotated address, over the broker (`furnace_fac_broker`).

mod files;

use crate::instance::{remove_partition, CreateError};
use crate::process::lock;
pub use files::RelayDirs;
use furnace_fac_broker::{BrokerServer, Provider, Request};
use furnace_runtime::launcher::{self, Partition, Stdio};
use furnace_runtime::units::ByteSize;
use furnace_runtime::{policy, Backend, HostBinds, ProviderConfig, RelayFiles, Role};
use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// libcontainer's state for relays, one directory per containerd namespace.
pub const STATE_ROOT: &str = "/run/furnace/runtime-fac";
/// Parent of every relay's cgroup: `/furnace-fac/<namespace>/<id>`, beside
/// (not under) the apps', so an app's own limits and stats stay its own.
pub const CGROUP_PARENT: &str = "/furnace-fac";

/// The wait before the first restart, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A relay that ran this long before it died restarts after [`FIRST_BACKOFF`] again.
const STABLE: Duration = Duration::from_secs(30);
/// How often the supervisor looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);
/// The broker's dial of the backend; the relay gives up on its own after 5 s.
const DIAL_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a stopping relay may take to hand the backend what it holds;
/// the relay itself gives up after 5 s.
const DRAIN: Duration = Duration::from_secs(6);
/// Backend dials one relay may have in progress at once.
const MAX_DIALS: usize = 8;

/// What `Create` gives the relay of one app.
pub struct RelayParams<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
    pub backend: &'a Backend,
    /// The app's storage quota (`furnace.dev/limits` storage, or the default).
    pub storage_quota: ByteSize,
    /// Host uid and gid of the app, which own its facilities socket.
    pub app_ids: (u32, u32),
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
    pub fn new(namespace: &str, id: &str, config: &ProviderConfig) -> Self {
        RelayRecord {
            id: id.into(),
            dirs: RelayDirs::new(
                &config.socket_root,
                &config.facilities.storage_root,
                namespace,
                id,
            ),
            state_root: Path::new(STATE_ROOT).join(namespace),
            cgroups_path: Path::new(CGROUP_PARENT).join(namespace).join(id),
        }
    }

    /// The app's side of it: its socket and the key files.
    pub fn app_binds(&self, backend: &Backend) -> (PathBuf, furnace_runtime::KeyFiles) {
        (
            self.dirs.app_socket(),
            furnace_runtime::KeyFiles {
                app_key: backend.app_key.clone(),
                backend_key: self.dirs.backend_key(),
            },
        )
    }
}

/// A running relay and its supervisor.
pub struct FacRelay {
    record: RelayRecord,
    shared: Arc<Shared>,
    broker: Mutex<Option<BrokerServer>>,
    supervisor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    partition: Partition,
    bundle: PathBuf,
    log: PathBuf,
    stop: AtomicBool,
    pid: Mutex<Option<u32>>,
}

impl FacRelay {
    /// Sets the relay up and starts it. On failure nothing is left behind.
    pub fn start(p: RelayParams<'_>) -> Result<FacRelay, CreateError> {
        let record = RelayRecord::new(p.namespace, p.id, p.config);
        let undo = Leftovers(Some(record.clone()));
        let dirs = &record.dirs;
        let init = launcher::init_path().map_err(CreateError::Failed)?;
        let program = launcher::relay_path().map_err(CreateError::Failed)?;
        let ns = p.config.user_namespace;
        // The relay runs as its partition's root: this host uid and gid.
        let relay_ids = (ns.host_uid, ns.host_gid);
        files::create(dirs, relay_ids, &init, &program)?;

        let failed = |what: &Path, e: std::io::Error| {
            CreateError::Failed(format!("{}: {e}", what.display()))
        };
        std::fs::write(dirs.backend_key(), format!("{}\n", p.backend.key))
            .map_err(|e| failed(&dirs.backend_key(), e))?;
        files::own(&dirs.backend_key(), 0, 0, 0o644)?;
        let app =
            UnixListener::bind(dirs.app_socket()).map_err(|e| failed(&dirs.app_socket(), e))?;
        files::own(&dirs.app_socket(), p.app_ids.0, p.app_ids.1, 0o600)?;
        let broker = UnixListener::bind(dirs.broker()).map_err(|e| failed(&dirs.broker(), e))?;
        files::own(&dirs.broker(), relay_ids.0, relay_ids.1, 0o600)?;
        let dialer = Dialer {
            app,
            address: p.backend.address.clone(),
            dialing: AtomicUsize::new(0),
        };
        let broker = BrokerServer::spawn(broker, Arc::new(dialer))
            .map_err(|e| CreateError::Failed(format!("starting the facilities broker: {e}")))?;

        write_spec(&record, &p)?;
        std::fs::create_dir_all(&record.state_root).map_err(|e| failed(&record.state_root, e))?;
        let shared = Arc::new(Shared {
            partition: Partition::new(p.id, &record.state_root),
            bundle: dirs.bundle(),
            log: dirs.log(),
            stop: AtomicBool::new(false),
            pid: Mutex::new(None),
        });
        let pid = launch(&shared).map_err(CreateError::Failed)?;
        let supervised = Arc::clone(&shared);
        let supervisor = std::thread::Builder::new()
            .name("fac-relay".into())
            .spawn(move || supervise(&supervised, pid))
            .map_err(|e| CreateError::Failed(format!("starting the relay's supervisor: {e}")))?;
        undo.disarm();
        Ok(FacRelay {
            record,
            shared,
            broker: Mutex::new(Some(broker)),
            supervisor: Mutex::new(Some(supervisor)),
        })
    }

    pub fn record(&self) -> &RelayRecord {
        &self.record
    }

    /// The relay's init, while one runs.
    pub fn pid(&self) -> Option<u32> {
        *lock(&self.shared.pid)
    }

    /// Stops the relay for good and removes it (but the storage). Safe to
    /// repeat; returns what could not be removed. The relay first gets a
    /// SIGTERM and [`DRAIN`] to hand the backend the notifies it accepted
    /// (it still needs the broker for that), then whatever is left is killed.
    pub fn stop(&self) -> Vec<String> {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = lock(&self.supervisor).take() {
            let _ = t.join();
        }
        if let Some(pid) = lock(&self.shared.pid).take() {
            let never = AtomicBool::new(false);
            let until = Some(Instant::now() + DRAIN);
            if self
                .shared
                .partition
                .kill(libc::SIGTERM as u32, false)
                .is_ok()
                && !wait_for_exit(pid, &never, until)
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

/// Creates and starts the relay's partition; returns its init's pid.
fn launch(shared: &Shared) -> Result<u32, String> {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&shared.log)
        .map_err(|e| format!("opening {}: {e}", shared.log.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let stdio = Stdio {
        stdin: None,
        stdout: Some(log.into()),
        stderr: Some(err.into()),
    };
    let p = &shared.partition;
    let (partition, pid) =
        launcher::create(&p.id, &shared.bundle, &p.state_root, stdio).map_err(|e| e.to_string())?;
    *lock(&shared.pid) = Some(pid);
    partition.start().map_err(|e| e.to_string())?;
    Ok(pid)
}

/// Restarts the relay whenever it dies, with backoff, until stopped. A
/// relay is the app's only way out, so it is never given up on; each death
/// is logged, and the app sees UNAVAILABLE on the session it had.
fn supervise(shared: &Shared, first: u32) {
    let mut pid = Some(first);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let since = Instant::now();
        if let Some(pid) = pid {
            if !wait_for_exit(pid, &shared.stop, None) {
                return;
            }
            log::warn!(
                "{}: the facilities relay (pid {pid}) exited; restarting it",
                shared.partition.id
            );
        }
        *lock(&shared.pid) = None;
        if let Err(e) = shared.partition.delete() {
            log::warn!("{}: removing the dead relay: {e}", shared.partition.id);
        }
        if since.elapsed() >= STABLE {
            backoff = FIRST_BACKOFF;
        }
        if !sleep_unless_stopped(backoff, &shared.stop) {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        pid = match launch(shared) {
            Ok(p) => Some(p),
            Err(e) => {
                log::error!(
                    "{}: restarting the facilities relay: {e}",
                    shared.partition.id
                );
                None
            }
        };
    }
}

/// Waits until `pid` exits (true), or `stop` is set or `until` passes
/// (false). A pidfd sees the exit whoever reaps the process (the shim's
/// reaper does).
fn wait_for_exit(pid: u32, stop: &AtomicBool, until: Option<Instant>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        return true; // ESRCH: already gone.
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let timeout = PollTimeout::try_from(POLL).unwrap_or(PollTimeout::NONE);
    while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) | Err(_) => return true,
        }
    }
    false
}

fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    !stop.load(Ordering::Relaxed)
}

/// The shim's answers to the relay's broker requests.
struct Dialer {
    app: UnixListener,
    address: String,
    dialing: AtomicUsize,
}

impl Provider for Dialer {
    fn provide(&self, request: Request) -> Result<OwnedFd, String> {
        match request {
            Request::Listener => self
                .app
                .try_clone()
                .map(OwnedFd::from)
                .map_err(|e| format!("sharing the app's listener: {e}")),
            Request::Backend => {
                if self.dialing.fetch_add(1, Ordering::SeqCst) >= MAX_DIALS {
                    self.dialing.fetch_sub(1, Ordering::SeqCst);
                    return Err(format!(
                        "{MAX_DIALS} connections to the backend are being made already"
                    ));
                }
                let result = dial(&self.address);
                self.dialing.fetch_sub(1, Ordering::SeqCst);
                result
            }
        }
    }
}

fn dial(address: &str) -> Result<OwnedFd, String> {
    let addresses = address
        .to_socket_addrs()
        .map_err(|e| format!("resolving the backend {address}: {e}"))?;
    let mut last = format!("the backend {address} resolves to no address");
    for a in addresses {
        match TcpStream::connect_timeout(&a, DIAL_TIMEOUT) {
            Ok(stream) => return Ok(stream.into()),
            Err(e) => last = format!("connecting to the backend {address} ({a}): {e}"),
        }
    }
    Err(last)
}

/// Refuses an app key the app could not read inside its partition: the
/// shim binds the file as it is and never reads or copies the secret.
pub fn check_app_key(path: &Path, app_ids: (u32, u32)) -> Result<(), CreateError> {
    let (uid, gid) = app_ids;
    let meta = std::fs::metadata(path).map_err(|e| {
        CreateError::Invalid(format!(
            "{}: {}: {e}",
            furnace_runtime::annotations::APP_KEY,
            path.display()
        ))
    })?;
    let mode = meta.mode();
    let readable = (meta.uid() == uid && mode & 0o400 != 0)
        || (meta.gid() == gid && mode & 0o040 != 0)
        || mode & 0o004 != 0;
    if meta.is_file() && readable {
        return Ok(());
    }
    Err(CreateError::Invalid(format!(
        "{}: {} (mode {:o}, owner {}:{}) is not a file the app can read: it runs as host uid {uid}, gid {gid}; `chown {uid}:{gid} {}` keeps it private to the app (mode 0400)",
        furnace_runtime::annotations::APP_KEY,
        path.display(),
        mode & 0o7777,
        meta.uid(),
        meta.gid(),
        path.display()
    )))
}
