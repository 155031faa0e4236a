//! The sidecars of this node's guests, one process each: started, restarted
//! with backoff when they exit, and stopped when their guest goes.
//!
//! A guest's name is its socket directory on the node
//! (`<socket root>/guests/<name>/`), so one name serves one FurnaceGuest:
//! a second object of that name, from another namespace, is refused.

use furnace_crd::FurnaceGuestSpec;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// First restart delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A sidecar that ran this long before it exited restarts at once.
const STABLE: Duration = Duration::from_secs(60);
/// SIGTERM, then SIGKILL after this.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How a sidecar is started.
#[derive(Clone, Debug)]
pub struct SidecarCommand {
    pub program: PathBuf,
    /// The provider config (`--config`), when not the default path.
    pub config: Option<PathBuf>,
    pub socket_root: PathBuf,
}

impl SidecarCommand {
    pub fn admin_socket(&self, guest: &str) -> PathBuf {
        self.socket_root
            .join("guests")
            .join(guest)
            .join("admin.sock")
    }

    fn command(&self, guest: &str, spec: &FurnaceGuestSpec) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--guest")
            .arg(guest)
            .arg("--guest-dir")
            .arg(&spec.guest_dir)
            .arg("--socket-root")
            .arg(&self.socket_root);
        if let Some(profile) = &spec.profile {
            cmd.arg("--profile").arg(profile);
        }
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        // The sidecar logs to stderr, which is the agent's, so its lines
        // reach the DaemonSet pod's log.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        // A sidecar outliving a killed agent would hold its guest's sockets
        // against the agent's next start.
        // SAFETY: prctl is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd
    }
}

/// What is known of one sidecar process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessState {
    /// The running process, if one runs.
    pub pid: Option<u32>,
    /// Starts after the first.
    pub restarts: u32,
    /// How the last process ended, or why none could start.
    pub last_exit: Option<String>,
}

/// Which FurnaceGuest a sidecar serves: its namespace and uid.
pub type Owner = (String, String);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClaimError {
    #[error("guest name {name:?} on this node is already served for namespace {namespace:?}; guest names are the node's socket directories, so rename one")]
    NameInUse { name: String, namespace: String },
}

struct Sidecar {
    owner: Owner,
    spec: FurnaceGuestSpec,
    state: watch::Receiver<ProcessState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Supervisor {
    command: SidecarCommand,
    sidecars: Mutex<HashMap<String, Sidecar>>,
}

impl Supervisor {
    pub fn new(command: SidecarCommand) -> Arc<Self> {
        Arc::new(Supervisor {
            command,
            sidecars: Mutex::new(HashMap::new()),
        })
    }

    pub fn command(&self) -> &SidecarCommand {
        &self.command
    }

    /// Runs the sidecar of guest `name` as `spec` says, restarting it if the
    /// spec changed. Returns at once; the process starts in the background.
    pub async fn ensure(
        &self,
        owner: Owner,
        name: &str,
        spec: &FurnaceGuestSpec,
    ) -> Result<(), ClaimError> {
        let replaced = {
            let mut sidecars = self.sidecars.lock().unwrap();
            match sidecars.get(name) {
                Some(s) if s.owner != owner => {
                    return Err(ClaimError::NameInUse {
                        name: name.into(),
                        namespace: s.owner.0.clone(),
                    })
                }
                Some(s) if &s.spec == spec => return Ok(()),
                _ => {}
            }
            let old = sidecars.remove(name);
            sidecars.insert(name.into(), self.start(owner, name, spec));
            old
        };
        if let Some(old) = replaced {
            // The new process waits for nothing: the old one holds the
            // socket directory until it is gone, and the sidecar retries.
            stop(old).await;
        }
        Ok(())
    }

    /// Stops guest `name`'s sidecar, if `owner`'s, and waits until it is gone.
    pub async fn stop(&self, owner: &Owner, name: &str) {
        let sidecar = {
            let mut sidecars = self.sidecars.lock().unwrap();
            match sidecars.get(name) {
                Some(s) if &s.owner == owner => sidecars.remove(name),
                _ => None,
            }
        };
        if let Some(s) = sidecar {
            stop(s).await;
        }
    }

    pub fn state(&self, name: &str) -> Option<ProcessState> {
        let sidecars = self.sidecars.lock().unwrap();
        sidecars.get(name).map(|s| s.state.borrow().clone())
    }

    fn start(&self, owner: Owner, name: &str, spec: &FurnaceGuestSpec) -> Sidecar {
        let (state_tx, state) = watch::channel(ProcessState::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let command = self.command.clone();
        let (name_owned, spec_owned) = (name.to_string(), spec.clone());
        let task = tokio::spawn(async move {
            keep_running(command, name_owned, spec_owned, state_tx, stop_rx).await
        });
        Sidecar {
            owner,
            spec: spec.clone(),
            state,
            stop: Some(stop_tx),
            task,
        }
    }
}

async fn stop(mut sidecar: Sidecar) {
    if let Some(stop) = sidecar.stop.take() {
        let _ = stop.send(());
    }
    // keep_running ends within STOP_GRACE of the signal; the extra second
    // bounds the wait even so.
    if tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), &mut sidecar.task)
        .await
        .is_err()
    {
        sidecar.task.abort();
    }
}

async fn keep_running(
    command: SidecarCommand,
    name: String,
    spec: FurnaceGuestSpec,
    state: watch::Sender<ProcessState>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut first = true;
    loop {
        if !first {
            state.send_modify(|s| s.restarts += 1);
        }
        first = false;
        let started = Instant::now();
        match command.command(&name, &spec).spawn() {
            Ok(mut child) => {
                state.send_modify(|s| s.pid = child.id());
                tracing::info!(guest = %name, pid = ?child.id(), "sidecar started");
                tokio::select! {
                    exit = child.wait() => {
                        let text = match exit {
                            Ok(status) => format!("the sidecar exited: {status}"),
                            Err(e) => format!("waiting for the sidecar: {e}"),
                        };
                        tracing::warn!(guest = %name, "{text}");
                        state.send_modify(|s| { s.pid = None; s.last_exit = Some(text); });
                    }
                    _ = &mut stop => {
                        terminate(&mut child).await;
                        state.send_modify(|s| s.pid = None);
                        return;
                    }
                }
            }
            Err(e) => {
                let text = format!("could not start {}: {e}", command.program.display());
                tracing::warn!(guest = %name, "{text}");
                state.send_modify(|s| s.last_exit = Some(text));
            }
        }
        if started.elapsed() >= STABLE {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stop => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // The sidecar stops its worker and removes its sockets on SIGTERM.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}
