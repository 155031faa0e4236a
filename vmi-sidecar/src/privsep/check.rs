//! `furnace-vmi-sidecar --confinement-check`: the worker, confined exactly
//! as when it serves, attempts what a hostile guest that took over its
//! parser would, and reports what the kernel and the helper answered.

use super::client::{HelperClient, HelperDebugger};
use crate::driver::gdb::{DebuggerLink, GdbClient};
use crate::linux::LinuxKernel;
use serde::Serialize;
use std::ffi::CString;

#[derive(Debug, Serialize)]
pub struct Report {
    pub uid: u32,
    /// The guest's banner, read through the confined mapping: the worker still works.
    pub banner: String,
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Serialize)]
pub struct Attempt {
    pub attempt: &'static str,
    pub refused: bool,
    /// The errno name, or the helper's answer.
    pub outcome: String,
}

fn errno_outcome(attempt: &'static str, rc: libc::c_int) -> Attempt {
    let errno = std::io::Error::last_os_error();
    if rc >= 0 {
        // SAFETY: closing what the attempt just opened.
        unsafe { libc::close(rc) };
        return Attempt {
            attempt,
            refused: false,
            outcome: "succeeded".into(),
        };
    }
    let name = nix::errno::Errno::from_raw(errno.raw_os_error().unwrap_or(0));
    Attempt {
        attempt,
        refused: true,
        outcome: format!("{name:?}"),
    }
}

fn open(attempt: &'static str, path: &str) -> Attempt {
    let path = CString::new(path).expect("no NUL");
    // SAFETY: a NUL-terminated path; the descriptor, if any, is closed.
    let rc = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    errno_outcome(attempt, rc)
}

pub fn run(client: &std::sync::Arc<HelperClient>, kernel: &LinuxKernel) -> Report {
    let mut attempts = vec![
        open("open /etc/shadow", "/etc/shadow"),
        open("open /etc/passwd", "/etc/passwd"),
        // SAFETY: socket(2) with integer arguments.
        errno_outcome("socket AF_INET", unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
        }),
        // SAFETY: as above.
        errno_outcome("socket AF_UNIX", unsafe {
            libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
        }),
    ];
    let program = CString::new("/bin/true").expect("no NUL");
    let argv = [program.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated argv and envp; on success this process is gone,
    // and the missing report fails the check.
    let rc = unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    attempts.push(errno_outcome("execve /bin/true", rc));
    // SAFETY: kill(2) with signal 0 only asks whether the parent may be signalled.
    let rc = unsafe { libc::kill(libc::getppid(), 0) };
    attempts.push(errno_outcome(
        "kill the supervisor",
        if rc == 0 { 0 } else { -1 },
    ));

    let hmp = br#"{"op":"monitor","command":{"command":"human-monitor-command","command-line":"info version"}}"#;
    attempts.push(helper_outcome(
        "QMP human-monitor-command",
        client.call_raw(hmp).map(drop),
    ));
    let debugger = HelperDebugger(std::sync::Arc::clone(client));
    let qrcmd = debugger
        .open()
        .and_then(GdbClient::over)
        .and_then(|mut gdb| gdb.request(b"qRcmd,696e666f2076657273696f6e"));
    attempts.push(helper_outcome(
        "gdb qRcmd (monitor command)",
        qrcmd.map(drop),
    ));

    Report {
        // SAFETY: getuid cannot fail.
        uid: unsafe { libc::getuid() },
        banner: kernel
            .banner()
            .unwrap_or_else(|e| format!("unreadable: {e}")),
        attempts,
    }
}

fn helper_outcome(attempt: &'static str, result: crate::Result<()>) -> Attempt {
    match result {
        Ok(()) => Attempt {
            attempt,
            refused: false,
            outcome: "answered".into(),
        },
        Err(e) => Attempt {
            attempt,
            refused: true,
            outcome: e.to_string(),
        },
    }
}
