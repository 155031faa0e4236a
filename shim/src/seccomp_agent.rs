//! The seccomp agent of one app partition: it answers the syscalls the
//! partition's filter refuses and counts them, the `seccomp_violations` of
//! docs/defense.md.
//!
//! The filter notifies what it refuses (`runtime/src/seccomp.rs`) instead of
//! answering EPERM itself, so that a refusal leaves a trace. libcontainer
//! hands the init's notify fd to the socket named by `linux.seccomp.listenerPath`
//! (the OCI seccomp-agent protocol: the container state as JSON, the fd in
//! SCM_RIGHTS); the launch helper does the same for each exec process. Each
//! fd gets a thread that answers every notification EPERM, as the kernel
//! would have: nothing a refused call asked for is ever done.
//!
//! If the agent is gone (a shim that died), the kernel answers the
//! notified calls ENOSYS: still refused.

use furnace_runtime::launcher::fd_passing;
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the agents listen: root's alone, like the rest of `/run/furnace`.
pub const AGENT_DIR: &str = "/run/furnace/seccomp";
/// How often a waiting thread looks whether the agent was stopped.
const POLL_MS: u16 = 500;
/// Filters one partition may hand over at once (its init's and one per
/// live exec process); a filter past it is closed, so its refusals are
/// answered ENOSYS by the kernel, and logged here.
const MAX_FILTERS: usize = 256;
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Refusals answered per second per task, at most. The agent runs outside
/// the app's cgroup, so without a bound an app making refused calls in a
/// loop would spend the shim's CPU, not its own; past it, refused callers
/// wait for their EPERM.
const MAX_ANSWERS_PER_SECOND: u32 = 2000;

struct Shared {
    task: String,
    refused: AtomicU64,
    filters: AtomicUsize,
    stopped: AtomicBool,
    /// Syscall numbers refused so far, each logged the first time.
    seen: Mutex<BTreeSet<i32>>,
    /// The current second's start and the answers given in it.
    pace: Mutex<(Instant, u32)>,
}

impl Shared {
    /// Waits, if this second's answers are spent, for the next second.
    fn wait_for_turn(&self) {
        let mut pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(pace.0);
        if elapsed >= Duration::from_secs(1) {
            *pace = (now, 0);
        } else if pace.1 >= MAX_ANSWERS_PER_SECOND {
            std::thread::sleep(Duration::from_secs(1) - elapsed);
            *pace = (Instant::now(), 0);
        }
        pace.1 += 1;
    }
}

pub struct SeccompAgent {
    path: PathBuf,
    shared: Arc<Shared>,
}

impl SeccompAgent {
    /// Listens for the notify fds of task `task`'s filters.
    pub fn listen(task: &str) -> std::io::Result<SeccompAgent> {
        Self::listen_in(Path::new(AGENT_DIR), task)
    }

    fn listen_in(dir: &Path, task: &str) -> std::io::Result<SeccompAgent> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        remove_stale(dir);
        // Short enough for sun_path whatever the task's id; unique among
        // live shims by the shim's pid.
        let name = format!(
            "{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let shared = Arc::new(Shared {
            task: task.to_owned(),
            refused: AtomicU64::new(0),
            filters: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            seen: Mutex::default(),
            pace: Mutex::new((Instant::now(), 0)),
        });
        let accepting = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("seccomp-{task}"))
            .spawn(move || accept_filters(&listener, &accepting))?;
        Ok(SeccompAgent { path, shared })
    }

    /// The socket the spec's `listenerPath` names.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops answering and removes the socket (the shim exits without
    /// dropping its tasks). Whatever still runs under the filters is then
    /// answered ENOSYS by the kernel.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }

    /// Syscalls refused so far, across every process of the partition.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl Drop for SeccompAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes the sockets in `dir` of shims that are gone (a shim killed
/// before its tasks were deleted): each is named after its shim's pid.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether `fd` waits to be read (`Some(true)`), timed out (`Some(false)`)
/// or is finished with (`None`: hung up, every user of the filter gone).
fn readable(fd: RawFd) -> Option<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, ours.
    let n = unsafe { libc::poll(&mut pfd, 1, i32::from(POLL_MS)) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return (e.kind() == std::io::ErrorKind::Interrupted).then_some(false);
    }
    if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return None;
    }
    Some(n > 0)
}

fn accept_filters(listener: &UnixListener, shared: &Arc<Shared>) {
    while !shared.stopped.load(Ordering::Relaxed) {
        match readable(listener.as_raw_fd()) {
            Some(true) => {}
            Some(false) => continue,
            None => break,
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("{}: seccomp agent: accept: {e}", shared.task);
                continue;
            }
        };
        match receive_filter(&stream) {
            Ok(filter) => answer_in_thread(filter, shared),
            Err(e) => log::warn!("{}: seccomp agent: {e}", shared.task),
        }
    }
}

/// The notify fd one sender handed over; the state JSON with it is not
/// needed (each notification names its pid).
fn receive_filter(stream: &UnixStream) -> Result<OwnedFd, String> {
    stream
        .set_read_timeout(Some(ACCEPT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    let received =
        fd_passing::receive(stream, &mut buf).map_err(|e| format!("receiving a filter: {e}"))?;
    if received.truncated {
        return Err("a sender passed more than a notify fd".into());
    }
    let mut fds = received.fds.into_iter();
    let (Some(fd), None) = (fds.next(), fds.next()) else {
        return Err("a sender passed no notify fd, or several".into());
    };
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| e.to_string())?;
    if target != Path::new("anon_inode:seccomp notify") {
        return Err(format!(
            "a sender passed {} where a seccomp notify fd was expected",
            target.display()
        ));
    }
    Ok(fd)
}

fn answer_in_thread(filter: OwnedFd, shared: &Arc<Shared>) {
    if shared.filters.fetch_add(1, Ordering::Relaxed) >= MAX_FILTERS {
        shared.filters.fetch_sub(1, Ordering::Relaxed);
        log::error!(
            "{}: seccomp agent: more than {MAX_FILTERS} filters at once; this one's refusals are answered ENOSYS by the kernel, uncounted",
            shared.task
        );
        return;
    }
    let answering = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("seccomp-{}", shared.task))
        .spawn(move || {
            answer(&filter, &answering);
            answering.filters.fetch_sub(1, Ordering::Relaxed);
        });
    if let Err(e) = spawned {
        shared.filters.fetch_sub(1, Ordering::Relaxed);
        log::error!(
            "{}: seccomp agent: no thread for a filter: {e}",
            shared.task
        );
    }
}

/// Answers EPERM to every notification of `filter` until every process
/// under it is gone or the agent is stopped.
fn answer(filter: &OwnedFd, shared: &Shared) {
    while !shared.stopped.load(Ordering::Relaxed) {
        match readable(filter.as_raw_fd()) {
            Some(true) => {}
            Some(false) => continue,
            None => return,
        }
        // SAFETY: all-zero is a valid seccomp_notif, and RECV wants it zeroed.
        let mut request: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV fills `request`, a struct of the size the ioctl names.
        if unsafe {
            libc::ioctl(
                filter.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut request,
            )
        } < 0
        {
            // ENOENT: the caller was killed before we read it; EINTR: again.
            continue;
        }
        shared.wait_for_turn();
        let response = libc::seccomp_notif_resp {
            id: request.id,
            val: 0,
            error: -libc::EPERM,
            flags: 0,
        };
        // SAFETY: SEND reads `response`, a struct of the size the ioctl names.
        let sent = unsafe {
            libc::ioctl(
                filter.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &response,
            )
        };
        // Counted either way: the call was made and refused (a caller
        // killed meanwhile makes SEND fail ENOENT).
        shared.refused.fetch_add(1, Ordering::Relaxed);
        let nr = request.data.nr;
        let first = shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(nr);
        if first {
            log::warn!(
                "{}: seccomp refused {} (syscall {nr}) to pid {}{}",
                shared.task,
                furnace_runtime::seccomp::syscall_name(nr).unwrap_or("an unnamed syscall"),
                request.pid,
                if sent < 0 { " (it was gone)" } else { "" }
            );
        }
    }
}

#[cfg(test)]
#[path = "seccomp_agent_tests.rs"]
mod tests;
