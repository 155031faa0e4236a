//! The supervisor: opens what needs root, starts the confined worker, and
//! serves it as the helper until it exits.

use super::confine::drop_privileges;
use super::helper::Helper;
use super::wire::Channel;
use super::{fds, Plan};
use crate::driver::qemu::checked_ram_path;
use crate::server::SocketDir;
use anyhow::{Context, Result};
use command_fds::{CommandFdExt, FdMapping};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How long a worker asked to stop gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Runs the sidecar; returns the exit code the process should end with.
pub fn run(plan: &Plan) -> Result<i32> {
    let ram_path = checked_ram_path(&plan.guest_dir)?;
    let open = |path: &Path, write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))
    };
    let ram = open(&ram_path, true)?;
    let profile = open(&plan.profile, false)?;
    let guest_dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(&plan.guest_dir)
        .with_context(|| format!("opening {}", plan.guest_dir.display()))?;
    let sockets = SocketDir::prepare(&plan.socket_dir)
        .with_context(|| format!("preparing {}", plan.socket_dir.display()))?;
    let admin = sockets.bind_admin().context("binding admin.sock")?;
    let admin_path = sockets.admin_path();
    let helper = Helper::new(&plan.guest_dir, sockets);
    helper.free_stranded_guest();

    let (ours, theirs) = Channel::pair().context("the worker's channel")?;
    let exe = std::env::current_exe().context("finding this binary")?;
    let exe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&exe)
        .with_context(|| format!("opening {}", exe.display()))?;
    let mut worker = Command::new(format!("/proc/self/fd/{}", fds::EXE));
    worker
        .arg0("furnace-vmi-sidecar")
        .arg("--worker")
        .args(["--guest", &plan.guest])
        .arg("--guest-dir")
        .arg(&plan.guest_dir)
        .arg("--profile")
        .arg(&plan.profile)
        .arg("--socket-root")
        .arg(&plan.socket_dir)
        .args(["--limits", &serde_json::to_string(&plan.limits)?]);
    if plan.confinement_check {
        worker.arg("--confinement-check");
    }
    let mapping = |fd: OwnedFd, child_fd| FdMapping {
        parent_fd: fd,
        child_fd,
    };
    worker
        .fd_mappings(vec![
            mapping(theirs.into_fd(), fds::CHANNEL),
            mapping(ram.into(), fds::RAM),
            mapping(admin.into(), fds::ADMIN),
            mapping(profile.into(), fds::PROFILE),
            mapping(guest_dir.into(), fds::GUEST_DIR),
            mapping(exe.into(), fds::EXE),
        ])
        .context("mapping the worker's descriptors")?;
    let (uid, gid) = (plan.limits.worker_uid, plan.limits.worker_gid);
    // SAFETY: drop_privileges makes async-signal-safe calls only.
    unsafe { worker.pre_exec(move || drop_privileges(uid, gid)) };
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGCHLD])?;
    let mut child = worker.spawn().context("starting the sidecar's worker")?;
    // The command holds the parent's copies of the worker's descriptors; the
    // helper sees the worker go only once its end of the channel is the last.
    drop(worker);
    tracing::info!(worker = child.id(), uid, gid, "started the confined worker");
    let serving = {
        let helper = std::sync::Arc::clone(&helper);
        std::thread::Builder::new()
            .name("helper".into())
            .spawn(move || helper.serve(ours))?
    };

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(SIGTERM | SIGINT) = signals.wait().next() {
            tracing::info!("stopping: asking the worker to unregister apps and resume the guest");
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            // The child is a zombie, not reaped, until try_wait: its pid
            // cannot be reused before this fires.
            std::thread::spawn(move || {
                std::thread::sleep(STOP_GRACE);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            });
        }
    };
    let _ = serving.join();
    let _ = std::fs::remove_file(&admin_path);
    match (status.code(), status.signal()) {
        (Some(code), _) => {
            if code != 0 {
                tracing::error!(code, "the worker exited with an error");
            }
            Ok(code)
        }
        (None, Some(signal)) => {
            tracing::error!(signal, "the worker was killed by a signal");
            Ok(128 + signal)
        }
        _ => Ok(1),
    }
}
