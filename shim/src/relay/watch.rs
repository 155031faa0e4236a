//! Running the relay's partition and keeping it running: the launch, a
//! pidfd on its init (taken while the init still waits for its start, so
//! the pid cannot have been reused), restarts with backoff, and the cap on
//! its log.

use crate::process::lock;
use furnace_runtime::launcher::{self, Partition, Stdio};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The wait before the first restart, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A relay that ran this long before it died restarts after [`FIRST_BACKOFF`] again.
const STABLE: Duration = Duration::from_secs(30);
/// How often the supervisor looks at its stop flag and at the log.
const POLL: Duration = Duration::from_millis(200);
/// The relay's log is on `/run` (memory): past this it is emptied.
const LOG_CAP: u64 = 4 << 20;
/// Pids of relay inits that have been, for telling the shim's reaper
/// their exits are no task's.
const RECENT_PIDS: usize = 16;

/// What the supervisor and `stop` share.
pub struct Relay {
    pub partition: Partition,
    pub bundle: PathBuf,
    pub log: PathBuf,
    pub stop: AtomicBool,
    pub running: Mutex<Option<Running>>,
    pub recent_pids: Mutex<Vec<u32>>,
}

/// The relay's init and a pidfd on it.
pub struct Running {
    pub pid: u32,
    pub pidfd: OwnedFd,
}

/// How [`wait_for_exit`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    Exited,
    Stopped,
    TimedOut,
}

impl Relay {
    /// Creates and starts the relay's partition.
    pub fn launch(&self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.log)
            .map_err(|e| format!("opening {}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let stdio = Stdio {
            stdin: None,
            stdout: Some(log.into()),
            stderr: Some(err.into()),
        };
        let p = &self.partition;
        let (partition, pid) = launcher::create(&p.id, &self.bundle, &p.state_root, stdio)
            .map_err(|e| e.to_string())?;
        let pidfd = pidfd_open(pid).map_err(|e| format!("pidfd_open({pid}): {e}"))?;
        {
            let mut recent = lock(&self.recent_pids);
            if recent.len() >= RECENT_PIDS {
                recent.remove(0);
            }
            recent.push(pid);
        }
        *lock(&self.running) = Some(Running { pid, pidfd });
        partition.start().map_err(|e| e.to_string())
    }

    /// Whether `pid` is (or was) one of this relay's inits.
    pub fn owns(&self, pid: u32) -> bool {
        lock(&self.recent_pids).contains(&pid)
    }

    /// Restarts the relay whenever it dies, with backoff, until stopped. A
    /// relay is the app's only way out, so it is never given up on; each
    /// death is logged, and the app sees UNAVAILABLE on the session it had.
    pub fn supervise(&self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let since = Instant::now();
            let pidfd = lock(&self.running)
                .as_ref()
                .and_then(|r| r.pidfd.try_clone().ok().map(|fd| (r.pid, fd)));
            if let Some((pid, pidfd)) = pidfd {
                match self.wait_for_exit(&pidfd, None) {
                    Waited::Exited => log::warn!(
                        "{}: the facilities relay (pid {pid}) exited; restarting it",
                        self.partition.id
                    ),
                    Waited::Stopped | Waited::TimedOut => return,
                }
            }
            *lock(&self.running) = None;
            if let Err(e) = self.partition.delete() {
                log::warn!("{}: removing the dead relay: {e}", self.partition.id);
            }
            if since.elapsed() >= STABLE {
                backoff = FIRST_BACKOFF;
            }
            if !self.sleep_unless_stopped(backoff) {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if let Err(e) = self.launch() {
                log::error!(
                    "{}: restarting the facilities relay: {e}",
                    self.partition.id
                );
            }
        }
    }

    /// Waits until the process behind `pidfd` exits, `stop` is set, or
    /// `until` passes; keeps the log under [`LOG_CAP`] meanwhile.
    pub fn wait_for_exit(&self, pidfd: &OwnedFd, until: Option<Instant>) -> Waited {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let timeout = PollTimeout::try_from(POLL).unwrap_or(PollTimeout::NONE);
        loop {
            if until.is_some_and(|u| Instant::now() >= u) {
                return Waited::TimedOut;
            }
            if until.is_none() && self.stop.load(Ordering::Relaxed) {
                return Waited::Stopped;
            }
            self.cap_log();
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => {}
                Ok(_) => return Waited::Exited,
                Err(e) => {
                    log::warn!("{}: polling the relay's pidfd: {e}", self.partition.id);
                    std::thread::sleep(POLL);
                }
            }
        }
    }

    /// Empties the log once it passes [`LOG_CAP`]; the relay writes with
    /// O_APPEND, so it goes on at the new end.
    fn cap_log(&self) {
        let size = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        if size > LOG_CAP {
            let emptied = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.log)
                .and_then(|f| f.set_len(0));
            match emptied {
                Ok(()) => log::warn!(
                    "{}: the relay's log passed {LOG_CAP} bytes and was emptied",
                    self.partition.id
                ),
                Err(e) => log::warn!("{}: emptying the relay's log: {e}", self.partition.id),
            }
        }
    }

    fn sleep_unless_stopped(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
        !self.stop.load(Ordering::Relaxed)
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}
