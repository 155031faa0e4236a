//! Launching a hardened spec as a partition, with youki's `libcontainer`.
//!
//! Every libcontainer operation runs in the launch helper
//! (`furnace-launch-helper`, [`helper::main`]), a fresh single-threaded
//! process per request: creating a container forks and `chdir`s its caller,
//! which is unsafe in a threaded shim, and the long-lived shim stays small
//! without libcontainer in it. After `create` the helper exits and the
//! container's init passes to the caller, which must be a child subreaper to
//! reap it. The cgroup reads ([`cgroups`]) run in the caller.

pub mod cgroups;
mod client;
pub mod fd_passing;
#[cfg(feature = "helper")]
pub mod helper;
#[cfg(feature = "helper")]
mod join;
pub mod mountpoints;
pub mod protocol;
#[cfg(feature = "helper")]
mod seccomp_handover;

pub use client::{helper_path, init_path, relay_path, INIT_BIN, RELAY_BIN};
use protocol::{Reply, Request, Target};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Why a launcher operation failed. Messages say which container and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("container {id}: {operation}: {message}")]
    Helper {
        id: String,
        operation: &'static str,
        message: String,
    },
    #[error("container {id}: no such partition under {root}")]
    NotFound { id: String, root: PathBuf },
}

/// The container's stdio as the caller opened it; `None` is `/dev/null`.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// One partition: a libcontainer container under `state_root/<id>`.
#[derive(Clone, Debug)]
pub struct Partition {
    pub id: String,
    pub state_root: PathBuf,
}

/// Creates the partition described by `bundle/config.json` (already
/// hardened) and returns its init's pid. The init waits for
/// [`Partition::start`] before it runs the app.
pub fn create(
    id: &str,
    bundle: &Path,
    state_root: &Path,
    stdio: Stdio,
) -> Result<(Partition, u32), LaunchError> {
    let partition = Partition::new(id, state_root);
    let request = Request::Create {
        target: partition.target(),
        bundle: bundle.to_owned(),
    };
    match client::call(&request, Some(stdio))? {
        Reply::Created { pid } => Ok((partition, pid)),
        other => Err(partition.unexpected(&request, other)),
    }
}

impl Partition {
    pub fn new(id: &str, state_root: &Path) -> Partition {
        Partition {
            id: id.to_owned(),
            state_root: state_root.to_owned(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_root.join(&self.id)
    }

    pub fn exists(&self) -> bool {
        self.state_dir().join("state.json").is_file()
    }

    fn target(&self) -> Target {
        Target {
            id: self.id.clone(),
            state_root: self.state_root.clone(),
        }
    }

    fn unexpected(&self, request: &Request, reply: Reply) -> LaunchError {
        LaunchError::Helper {
            id: self.id.clone(),
            operation: request.operation(),
            message: format!("unexpected reply {reply:?}"),
        }
    }

    /// Runs an operation on an existing partition in the helper.
    fn operate(&self, request: Request) -> Result<(), LaunchError> {
        if !self.exists() {
            return Err(LaunchError::NotFound {
                id: self.id.clone(),
                root: self.state_root.clone(),
            });
        }
        match client::call(&request, None)? {
            Reply::Done => Ok(()),
            other => Err(self.unexpected(&request, other)),
        }
    }

    /// Lets the waiting init exec the app.
    pub fn start(&self) -> Result<(), LaunchError> {
        self.operate(Request::Start(self.target()))
    }

    /// Sends `signal` to the init, or to every process of the partition.
    pub fn kill(&self, signal: u32, all: bool) -> Result<(), LaunchError> {
        self.operate(Request::Kill {
            target: self.target(),
            signal: i32::try_from(signal).unwrap_or(-1),
            all,
        })
    }

    /// Freezes every process of the partition (cgroup freezer).
    pub fn pause(&self) -> Result<(), LaunchError> {
        self.operate(Request::Pause(self.target()))
    }

    pub fn resume(&self) -> Result<(), LaunchError> {
        self.operate(Request::Resume(self.target()))
    }

    /// Runs `process` (already hardened, `policy::exec_process`) inside the
    /// running partition whose init is `init_pid`; returns its pid, which
    /// passes to the caller (a subreaper) as the init's did.
    pub fn exec(
        &self,
        bundle: &Path,
        init_pid: u32,
        process: oci_spec::runtime::Process,
        stdio: Stdio,
    ) -> Result<u32, LaunchError> {
        let request = Request::Exec {
            target: self.target(),
            bundle: bundle.to_owned(),
            init_pid,
            process: Box::new(process),
        };
        match client::call(&request, Some(stdio))? {
            Reply::Created { pid } => Ok(pid),
            other => Err(self.unexpected(&request, other)),
        }
    }

    /// Kills whatever still runs, removes the cgroups and the state
    /// directory. Deleting a partition that is already gone is not an error.
    pub fn delete(&self) -> Result<(), LaunchError> {
        if self.exists() {
            self.operate(Request::Delete(self.target()))?;
        }
        let _ = std::fs::remove_dir_all(self.state_dir());
        Ok(())
    }
}

/// Whether `err` means the partition is already gone.
pub fn is_not_found(err: &LaunchError) -> bool {
    matches!(err, LaunchError::NotFound { .. })
}
