//! The single-threaded launch helper: the current executable, re-executed
//! with [`HELPER_ARG`], builds one container with libcontainer and exits.
//!
//! Protocol: the request is argv[2] (JSON); the container's stdin, stdout
//! and stderr arrive as fds 3, 4 and 5; the helper writes one JSON line,
//! [`CreateReply`], on its stdout, and libcontainer's warnings and errors
//! on its stderr, which the caller appends to a failure's message (nothing a
//! helper prints may reach containerd, which reads a shim's output).

use super::{LaunchError, Stdio};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// argv[1] that turns the current executable into the launch helper.
pub const HELPER_ARG: &str = "__furnace-launch-helper";

/// Where the helper finds the container's stdio.
const STDIO_FDS: [RawFd; 3] = [3, 4, 5];

#[derive(Debug, Serialize, Deserialize)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub state_root: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CreateReply {
    Created { pid: u32 },
    Failed { message: String },
}

/// Runs the helper and exits if this process was started as one; returns
/// otherwise. Call it first thing in `main`, before any thread exists.
pub fn run_if_requested() {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() != Some(std::ffi::OsStr::new(HELPER_ARG)) {
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::ERROR)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
    let reply = match args.next().map(|a| a.into_string()) {
        Some(Ok(json)) => match serde_json::from_str::<CreateRequest>(&json) {
            Ok(request) => create_here(&request),
            Err(e) => CreateReply::Failed {
                message: format!("malformed helper request: {e}"),
            },
        },
        _ => CreateReply::Failed {
            message: "the helper needs its request as argv[2]".into(),
        },
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_default();
    line.push(b'\n');
    let _ = std::io::stdout().lock().write_all(&line);
    std::process::exit(0);
}

fn create_here(request: &CreateRequest) -> CreateReply {
    // SAFETY: the parent placed these fds for us (see `spawn_create`) and
    // nothing else in this fresh process owns them.
    let [stdin, stdout, stderr] = STDIO_FDS.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let built = ContainerBuilder::new(request.id.clone(), SyscallType::Linux)
        .with_root_path(&request.state_root)
        .map(|b| {
            b.with_executor(DefaultExecutor {})
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .as_init(&request.bundle)
                .with_systemd(false)
                .with_detach(true)
        })
        .and_then(|b| b.build());
    match built {
        Ok(container) => match container.pid() {
            Some(pid) => CreateReply::Created {
                pid: pid.as_raw() as u32,
            },
            None => CreateReply::Failed {
                message: "libcontainer created the container but reported no init pid".into(),
            },
        },
        Err(e) => CreateReply::Failed {
            message: error_chain(&e),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// Starts the helper for `request`, hands it `stdio`, and returns the pid of
/// the created (not yet started) init.
pub(super) fn spawn_create(request: &CreateRequest, stdio: Stdio) -> Result<u32, LaunchError> {
    let failed = |message: String| LaunchError::Helper {
        id: request.id.clone(),
        message,
    };
    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| failed(format!("open /dev/null: {e}")))
    };
    let fds = [
        stdio.stdin.map_or_else(null, Ok)?,
        stdio.stdout.map_or_else(null, Ok)?,
        stdio.stderr.map_or_else(null, Ok)?,
    ];
    let raw = fds.each_ref().map(|fd| fd.as_raw_fd());
    let json = serde_json::to_string(request).map_err(|e| failed(e.to_string()))?;

    let mut command = Command::new("/proc/self/exe");
    command
        .arg(HELPER_ARG)
        .arg(json)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe calls (dup3) between fork and exec.
    unsafe {
        command.pre_exec(move || place_fds(raw));
    }
    let mut child = command
        .spawn()
        .map_err(|e| failed(format!("spawn /proc/self/exe: {e}")))?;
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
    match serde_json::from_str::<CreateReply>(out.trim()) {
        Ok(CreateReply::Created { pid }) => Ok(pid),
        Ok(CreateReply::Failed { message }) => Err(failed(message)),
        Err(_) if out.is_empty() => Err(failed("the helper died without a reply".into())),
        Err(e) => Err(failed(format!("unreadable reply {out:?}: {e}"))),
    }
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
