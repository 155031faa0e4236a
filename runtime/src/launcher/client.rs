//! The shim's side of the launch helper: run `furnace-launch-helper` (next
//! to the current executable) with one request and read its reply.

use super::protocol::{Reply, Request, HELPER_BIN, STDIO_FDS};
use super::{LaunchError, Stdio};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// `name` in the current executable's directory, where `make install` puts
/// the shim's companions.
fn beside_this_executable(name: &str) -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(name))
}

/// The helper binary: [`HELPER_BIN`] in the current executable's directory.
pub fn helper_path() -> std::io::Result<PathBuf> {
    beside_this_executable(HELPER_BIN)
}

/// The PID 1 init of app partitions (`init/`), installed beside the shim.
pub const INIT_BIN: &str = "furnace-init";

/// The host's init: [`INIT_BIN`] in the current executable's directory,
/// or an error naming the file that is missing.
pub fn init_path() -> Result<PathBuf, String> {
    companion(INIT_BIN, "apps run under it as PID 1")
}

/// The facilities relay (`facilities/`), installed beside the shim, static:
/// it runs on an empty root filesystem.
pub const RELAY_BIN: &str = "furnace-fac-relay";

/// The host's relay: [`RELAY_BIN`] in the current executable's directory,
/// or an error naming the file that is missing.
pub fn relay_path() -> Result<PathBuf, String> {
    companion(
        RELAY_BIN,
        "an app that names furnace.dev/backend talks to its backend through it",
    )
}

/// `name` beside the shim, or an error saying what it is `for` and how to
/// install it.
fn companion(name: &str, purpose: &str) -> Result<PathBuf, String> {
    let path = beside_this_executable(name)
        .map_err(|e| format!("finding {name}: the shim's own path: {e}"))?;
    if !path.is_file() {
        return Err(format!(
            "{} is missing: {purpose}; install {name} next to the shim (`make install` does; scripts/build-shim.sh stages it in target/furnace-shim)",
            path.display(),
        ));
    }
    Ok(path)
}

/// Runs the helper for `request`. `stdio` (Create only) becomes the
/// container's stdin, stdout and stderr; `None` entries are `/dev/null`.
pub(super) fn call(request: &Request, stdio: Option<Stdio>) -> Result<Reply, LaunchError> {
    let failed = |message: String| LaunchError::Helper {
        id: request.target().id.clone(),
        operation: request.operation(),
        message,
    };
    let fds = match stdio {
        Some(stdio) => Some(stdio_fds(stdio).map_err(|e| failed(format!("open /dev/null: {e}")))?),
        None => None,
    };
    let raw = fds
        .as_ref()
        .map(|fds| fds.each_ref().map(|fd| fd.as_raw_fd()));
    let json = serde_json::to_string(request).map_err(|e| failed(e.to_string()))?;
    let helper = helper_path().map_err(|e| failed(format!("find {HELPER_BIN}: {e}")))?;

    let mut command = Command::new(&helper);
    command
        .arg(json)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(raw) = raw {
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || place_fds(raw));
        }
    }
    let mut child = command
        .spawn()
        .map_err(|e| failed(format!("run {}: {e}", helper.display())))?;
    drop(fds);

    let stderr = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text
        })
    });
    let mut out = String::new();
    let read = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let log = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let failed = |message: String| match log.trim() {
        "" => failed(message),
        log => failed(format!(
            "{message} (libcontainer: {})",
            log.replace('\n', "; ")
        )),
    };
    // The caller is a subreaper whose reaper may collect the helper first;
    // its reply, not its exit status, is the result.
    let _ = child.wait();
    if let Some(Err(e)) = read {
        return Err(failed(format!("read the helper's reply: {e}")));
    }
    match serde_json::from_str::<Reply>(out.trim()) {
        Ok(Reply::Failed { message }) => Err(failed(message)),
        Ok(reply) => Ok(reply),
        Err(_) if out.is_empty() => Err(failed("the helper died without a reply".into())),
        Err(e) => Err(failed(format!("unreadable reply {out:?}: {e}"))),
    }
}

fn stdio_fds(stdio: Stdio) -> std::io::Result<[OwnedFd; 3]> {
    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
    };
    Ok([
        stdio.stdin.map_or_else(null, Ok)?,
        stdio.stdout.map_or_else(null, Ok)?,
        stdio.stderr.map_or_else(null, Ok)?,
    ])
}

/// Moves the three stdio fds to 3, 4, 5 without clobbering one another:
/// first above the target range, then down.
fn place_fds(raw: [RawFd; 3]) -> std::io::Result<()> {
    let mut high = [0; 3];
    for (i, fd) in raw.iter().enumerate() {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd we own.
        let dup = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        high[i] = dup;
    }
    for (fd, target) in high.iter().zip(STDIO_FDS) {
        // SAFETY: dup2 clears CLOEXEC on the target, which we want to inherit.
        if unsafe { libc::dup2(*fd, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
