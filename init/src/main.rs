//! `furnace-init`: the minimal init that runs as PID 1 of every app
//! partition (docs/shim.md, "PID 1"), the job docker's `--init` (tini) and
//! podman's catatonit do for their containers.
//!
//! The kernel drops SIGTERM and SIGINT sent to the init of a pid namespace
//! that has no handler for them, so an app that is PID 1 itself outlives
//! `ctr task kill` and Ctrl-C unless its own code installs handlers. This
//! init runs the app as its child instead:
//! - it blocks every signal but the fault signals, so the kernel queues them
//!   for it (a blocked signal is never dropped), forks and execs the app
//!   (the argv after `--`) with the signal mask it was started with;
//! - it forwards each signal it collects to the app, except SIGCHLD: TERM,
//!   INT, HUP, QUIT, USR1/2, WINCH, CONT, ALRM, PIPE, TSTP, TTIN, TTOU, the
//!   realtime ones. The fault signals (ABRT, BUS, FPE, ILL, SEGV, SYS,
//!   TRAP) are not collected, so one sent from outside (`ctr task kill -s
//!   ABRT`) is dropped by the kernel as for any PID 1 without a handler;
//!   SIGKILL and SIGSTOP cannot be caught and reach the init itself, which
//!   the kernel then ends or stops;
//! - it reaps every child, the app and the orphans the kernel re-parents to
//!   it, and exits when the app does: with its exit code, or 128+n if
//!   signal n killed it, as a shell reports it. Then the kernel kills
//!   whatever else is left in the pid namespace;
//! - an app that cannot be run is one line on stderr and exit 127 (not
//!   found) or 126 (found, not executable), as shells do.
//!
//! It runs under the app's own user, seccomp filter and `no_new_privs`
//! (libcontainer applies them before it execs the init), opens no file of
//! its own (the C runtime's start-up reads a few) and creates no thread. When it is not PID 1 (a test) it makes itself the
//! child subreaper, so orphans still come to it. Static and small: no
//! argument parser crate, only `--help` and `--version` besides `--`.

use nix::errno::Errno;
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{execvp, fork, ForkResult, Pid};
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;

const USAGE: &str = "usage: furnace-init [--] PROGRAM [ARG...]\n\
    Runs PROGRAM as its child, forwards the signals it gets to it, reaps\n\
    orphaned processes, and exits with PROGRAM's status (128+n if signal n\n\
    killed it; 127 if PROGRAM is not found, 126 if it cannot be executed).";

/// Signals the kernel raises for a fault of the init's own code: left
/// unblocked, so a bug in the init is not held pending forever.
const FAULTS: [Signal; 7] = [
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
];

fn main() {
    let program = match parse(std::env::args_os().skip(1).collect()) {
        Ok(program) => program,
        Err((code, message)) => {
            if code == 0 {
                println!("{message}");
            } else {
                eprintln!("furnace-init: {message}");
            }
            std::process::exit(code);
        }
    };
    // Rust's runtime ignores SIGPIPE, and an ignored signal stays ignored
    // across exec: the app must start with the default. An ignored SIGCHLD
    // (inherited) would make the kernel reap children itself, and the app's
    // status would be lost.
    for inherited in [Signal::SIGPIPE, Signal::SIGCHLD] {
        // SAFETY: no handler function is installed, only the default action.
        let _ = unsafe { signal(inherited, SigHandler::SigDfl) };
    }
    let mut collected = SigSet::all();
    for fault in FAULTS {
        collected.remove(fault);
    }
    let mut original = SigSet::empty();
    if let Err(e) = sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&collected),
        Some(&mut original),
    ) {
        fail(&format!("blocking signals: {e}"));
    }
    if std::process::id() != 1 {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    // SAFETY: the init is single-threaded; the child only restores its
    // signal mask, execs, or writes one line and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&original), None);
            run(&program)
        }
        Ok(ForkResult::Parent { child }) => std::process::exit(supervise(child, &collected)),
        Err(e) => fail(&format!("cannot fork to run the app: {e}")),
    }
}

/// The app's argv, or the exit code and text for `--help`, `--version`
/// and bad usage.
fn parse(mut args: Vec<OsString>) -> Result<Vec<CString>, (i32, String)> {
    match args.first().and_then(|a| a.to_str()) {
        Some("--") => drop(args.remove(0)),
        Some("-h" | "--help") => return Err((0, USAGE.into())),
        Some("-V" | "--version") => {
            return Err((0, format!("furnace-init {}", env!("CARGO_PKG_VERSION"))))
        }
        Some(flag) if flag.starts_with('-') => {
            return Err((
                2,
                format!("unknown option {flag} (put `--` before the program)\n{USAGE}"),
            ))
        }
        _ => {}
    }
    if args.is_empty() {
        return Err((2, format!("no program given\n{USAGE}")));
    }
    Ok(args
        .into_iter()
        .map(|a| CString::new(a.into_vec()).expect("argv strings hold no NUL"))
        .collect())
}

/// In the child: becomes the app, or says why it cannot.
fn run(program: &[CString]) -> ! {
    let Err(e) = execvp(&program[0], program);
    let name = program[0].to_string_lossy();
    let (code, what) = match e {
        Errno::ENOENT if !name.contains('/') => (127, "was not found on PATH".to_string()),
        Errno::ENOENT => (127, "does not exist".to_string()),
        e => (126, format!("cannot be executed: {}", e.desc())),
    };
    eprintln!("furnace-init: `{name}` {what}");
    // SAFETY: exits the forked child without running the parent's atexit hooks.
    unsafe { libc::_exit(code) }
}

/// Forwards signals to `app` and reaps children until `app` exits; returns
/// the init's exit code.
fn supervise(app: Pid, collected: &SigSet) -> i32 {
    loop {
        if let Some(code) = reap(app) {
            return code;
        }
        // SAFETY: a valid signal set; the siginfo is not wanted.
        let signo = unsafe { libc::sigwaitinfo(collected.as_ref(), std::ptr::null_mut()) };
        if signo > 0 && signo != libc::SIGCHLD {
            // SAFETY: kill takes plain integers. An app that already exited
            // (a zombie until the next reap) ignores it.
            unsafe { libc::kill(app.as_raw(), signo) };
        }
    }
}

/// Reaps every child that has exited; the app's status, once it has.
fn reap(app: Pid) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => return None,
            -1 if Errno::last() == Errno::EINTR => continue,
            -1 => fail(&format!("waiting for the app: {}", Errno::last())),
            pid if pid == app.as_raw() && libc::WIFEXITED(status) => {
                return Some(libc::WEXITSTATUS(status))
            }
            pid if pid == app.as_raw() && libc::WIFSIGNALED(status) => {
                return Some(128 + libc::WTERMSIG(status))
            }
            _ => continue,
        }
    }
}

fn fail(message: &str) -> ! {
    eprintln!("furnace-init: {message}");
    std::process::exit(1)
}
