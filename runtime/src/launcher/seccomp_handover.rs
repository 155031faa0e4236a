//! An exec process's seccomp notify fd, handed to the partition's seccomp
//! agent (the shim, `linux.seccomp.listenerPath`) the way libcontainer
//! hands over the init's: the OCI container-process state as JSON, the fd
//! in SCM_RIGHTS. The process loads its filter inside the partition,
//! where the agent's socket cannot be reached, so it passes the fd to the
//! helper over a socket pair made before it joined, and waits for the
//! helper to say the agent has it before it execs.

use super::fd_passing;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the helper waits for the process to load its filter.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's side: sends `fd`, then waits for the helper's word.
/// Without it the process still execs: a filter no agent holds has its
/// notified calls answered ENOSYS by the kernel, still refused.
pub(super) fn send(process_side: &UnixStream, fd: RawFd) -> Result<(), String> {
    fd_passing::send(process_side, b"f", &[fd])
        .map_err(|e| format!("hand the seccomp notify fd to the helper: {e}"))?;
    let mut done = [0u8; 1];
    let _ = (&*process_side).read(&mut done);
    Ok(())
}

/// The helper's side: the fd the process sent, if it got as far as
/// loading its filter (`None` when it failed first and hung up).
pub(super) fn receive(helper_side: &UnixStream) -> Result<Option<OwnedFd>, String> {
    helper_side
        .set_read_timeout(Some(LOAD_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    let received = fd_passing::receive(helper_side, &mut byte)
        .map_err(|e| format!("receive the exec process's seccomp notify fd: {e}"))?;
    Ok(received.fds.into_iter().next())
}

/// Passes `fd` to the agent at `listener`, then tells the process.
pub(super) fn forward(
    helper_side: &UnixStream,
    fd: &OwnedFd,
    listener: &Path,
    state: &serde_json::Value,
) -> Result<(), String> {
    let agent = UnixStream::connect(listener)
        .map_err(|e| format!("the seccomp agent at {}: {e}", listener.display()))?;
    fd_passing::send(&agent, state.to_string().as_bytes(), &[fd.as_raw_fd()])
        .map_err(|e| format!("hand the notify fd to {}: {e}", listener.display()))?;
    (&*helper_side)
        .write_all(b"d")
        .map_err(|e| format!("tell the exec process: {e}"))
}

/// The OCI container-process state the agent is sent with the fd.
pub(super) fn state(bundle: &Path, init_pid: u32, pid: u32) -> serde_json::Value {
    let id = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    serde_json::json!({
        "ociVersion": oci_spec::runtime::VERSION,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": "",
        "state": {
            "ociVersion": oci_spec::runtime::VERSION,
            "id": id,
            "status": "running",
            "pid": init_pid,
            "bundle": bundle,
        },
    })
}
