//! Escape attempts against the cgroup limits: too many processes, too much
//! memory. Both clean up after themselves whatever happens.

use crate::escape::{read_until_eof, Context, Report};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde_json::json;
use std::time::Duration;

const FORK_CAP: usize = 4096;
const CHUNK_MIB: usize = 16;
const BALLOON_MIB: usize = 4096;

/// For a forked child: die with the parent, even if the parent was gone
/// before this ran.
fn die_with_parent(parent: Pid) {
    // SAFETY: prctl with plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid() != parent {
        // SAFETY: leaves at once.
        unsafe { libc::_exit(0) };
    }
}

pub fn fork_bomb(_: &Context) -> Report {
    let me = nix::unistd::getpid();
    let mut children = Vec::new();
    let mut failure = None;
    while children.len() < FORK_CAP {
        // SAFETY: single-threaded; the child only sleeps.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                die_with_parent(me);
                loop {
                    nix::unistd::pause();
                }
            }
            Ok(ForkResult::Parent { child }) => children.push(child),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    for &child in &children {
        let _ = kill(child, Signal::SIGKILL);
    }
    for &child in &children {
        let _ = waitpid(child, None);
    }
    let count = children.len();
    let outcome = match failure {
        Some(e) => format!("{e:?}"),
        None => "ok".into(),
    };
    Report::new(count >= FORK_CAP, outcome)
        .detail(format!(
            "{count} children before fork failed (cap {FORK_CAP})"
        ))
        .data("children", json!(count))
}

/// The balloon itself: grows in chunks, reporting its size after each.
fn inflate(progress: std::os::fd::OwnedFd) -> ! {
    let mut mib = 0usize;
    while mib < BALLOON_MIB {
        let len = CHUNK_MIB << 20;
        // SAFETY: a fresh private anonymous mapping, never unmapped.
        let chunk = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if chunk == libc::MAP_FAILED {
            // SAFETY: leaves at once.
            unsafe { libc::_exit(Errno::last_raw()) };
        }
        let bytes = chunk.cast::<u8>();
        for offset in (0..len).step_by(4096) {
            // SAFETY: inside the mapping just made.
            unsafe { bytes.add(offset).write_volatile(1) };
        }
        mib += CHUNK_MIB;
        let _ = nix::unistd::write(&progress, &(mib as u32).to_le_bytes());
    }
    // SAFETY: leaves at once.
    unsafe { libc::_exit(0) }
}

pub fn memory_balloon(_: &Context) -> Report {
    let (reader, writer) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return Report::new(false, format!("probe error: pipe: {e:?}")),
    };
    let me = nix::unistd::getpid();
    // SAFETY: single-threaded; the child only allocates and writes a pipe.
    let child = match unsafe { fork() } {
        Err(e) => return Report::new(false, format!("{e:?}")).detail("fork"),
        Ok(ForkResult::Child) => {
            drop(reader);
            die_with_parent(me);
            inflate(writer)
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(writer);
    let (progress, timed_out) = read_until_eof(&reader, Duration::from_secs(100));
    if timed_out {
        let _ = kill(child, Signal::SIGKILL);
    }
    let status = waitpid(child, None);
    let mib = progress
        .chunks_exact(4)
        .last()
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    let (outcome, signal, exit_code) = match status {
        _ if timed_out => ("timeout".to_string(), None, None),
        Ok(WaitStatus::Signaled(_, signal, _)) => {
            (format!("{signal:?}"), Some(format!("{signal:?}")), None)
        }
        Ok(WaitStatus::Exited(_, 0)) => ("ok".to_string(), None, Some(0)),
        Ok(WaitStatus::Exited(_, code)) => {
            (format!("{:?}", Errno::from_raw(code)), None, Some(code))
        }
        Ok(other) => (format!("{other:?}"), None, None),
        Err(e) => (format!("waitpid: {e:?}"), None, None),
    };
    Report::new(mib as usize >= BALLOON_MIB, outcome)
        .detail(format!(
            "reached {mib} MiB of {BALLOON_MIB} in {CHUNK_MIB} MiB chunks"
        ))
        .data("mib", json!(mib))
        .data("signal", json!(signal))
        .data("exit_code", json!(exit_code))
}
