//! Launching a hardened spec as a partition, with youki's `libcontainer`.
//!
//! Creating a container forks and `chdir`s the calling process, which is
//! unsafe in a threaded host such as a shim serving ttrpc. So [`create`]
//! re-executes the current binary as a single-threaded helper
//! ([`helper::run_if_requested`] must be the first thing its `main` does);
//! the helper builds the container and exits, and the container's init
//! passes to the caller, which must be a child subreaper to reap it.
//! Everything after creation (start, signals, freezer, delete, cgroup reads)
//! neither forks nor changes directory and runs in the caller.

pub mod cgroups;
pub mod helper;
pub mod mountpoints;

use libcontainer::container::{Container, ContainerStatus};
use libcontainer::signal::Signal;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Why a launcher operation failed. Messages say which container and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("container {id}: the launch helper failed: {message}")]
    Helper { id: String, message: String },
    #[error("container {id}: {operation}: {message}")]
    Container {
        id: String,
        operation: &'static str,
        message: String,
    },
    #[error("container {id}: no such partition under {root}")]
    NotFound { id: String, root: PathBuf },
    #[error("signal {signal} is not a valid signal number")]
    BadSignal { signal: u32 },
}

/// The container's stdio as the caller opened it; `None` is `/dev/null`.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Status as containerd's Task API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// One partition: a libcontainer container under `state_root/<id>`.
#[derive(Clone, Debug)]
pub struct Partition {
    pub id: String,
    pub state_root: PathBuf,
}

/// Creates the partition described by `bundle/config.json` (already
/// hardened) in a single-threaded helper and returns its init's pid. The
/// init waits for [`Partition::start`] before it runs the app.
pub fn create(
    id: &str,
    bundle: &Path,
    state_root: &Path,
    stdio: Stdio,
) -> Result<(Partition, u32), LaunchError> {
    let request = helper::CreateRequest {
        id: id.to_owned(),
        bundle: bundle.to_owned(),
        state_root: state_root.to_owned(),
    };
    let pid = helper::spawn_create(&request, stdio)?;
    Ok((
        Partition {
            id: id.to_owned(),
            state_root: state_root.to_owned(),
        },
        pid,
    ))
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

    fn load(&self) -> Result<Container, LaunchError> {
        if !self.exists() {
            return Err(LaunchError::NotFound {
                id: self.id.clone(),
                root: self.state_root.clone(),
            });
        }
        Container::load(self.state_dir()).map_err(|e| self.error("load state", e))
    }

    fn error(&self, operation: &'static str, e: impl std::fmt::Display) -> LaunchError {
        LaunchError::Container {
            id: self.id.clone(),
            operation,
            message: e.to_string(),
        }
    }

    /// Lets the waiting init exec the app.
    pub fn start(&self) -> Result<(), LaunchError> {
        self.load()?.start().map_err(|e| self.error("start", e))
    }

    /// Sends `signal` to the init, or to every process of the partition.
    pub fn kill(&self, signal: u32, all: bool) -> Result<(), LaunchError> {
        let sig = Signal::try_from(signal as i32).map_err(|_| LaunchError::BadSignal { signal })?;
        self.load()?
            .kill(sig, all)
            .map_err(|e| self.error("kill", e))
    }

    /// Freezes every process of the partition (cgroup freezer).
    pub fn pause(&self) -> Result<(), LaunchError> {
        self.load()?.pause().map_err(|e| self.error("pause", e))
    }

    pub fn resume(&self) -> Result<(), LaunchError> {
        self.load()?.resume().map_err(|e| self.error("resume", e))
    }

    pub fn status(&self) -> Result<Status, LaunchError> {
        let mut container = self.load()?;
        container
            .refresh_status()
            .map_err(|e| self.error("read status", e))?;
        Ok(match container.status() {
            ContainerStatus::Creating | ContainerStatus::Created => Status::Created,
            ContainerStatus::Running => Status::Running,
            ContainerStatus::Paused => Status::Paused,
            ContainerStatus::Stopped => Status::Stopped,
        })
    }

    /// Kills whatever still runs, removes the cgroups and the state
    /// directory. Deleting a partition that is already gone is not an error.
    pub fn delete(&self) -> Result<(), LaunchError> {
        if !self.exists() {
            let _ = std::fs::remove_dir_all(self.state_dir());
            return Ok(());
        }
        self.load()?
            .delete(true)
            .map_err(|e| self.error("delete", e))?;
        let _ = std::fs::remove_dir_all(self.state_dir());
        Ok(())
    }
}

/// Whether `err` means the partition is already gone.
pub fn is_not_found(err: &LaunchError) -> bool {
    matches!(err, LaunchError::NotFound { .. })
}
