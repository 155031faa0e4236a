//! `refuse N [hold]`: makes exactly N syscalls the partition's filter
//! refuses, round robin over four, each with arguments that would do no
//! harm if it were allowed, and prints `{"made": N, "outcomes": {errno: count}}`.
//! With `hold` it then stays, so its task keeps running.

use crate::outcome;
use nix::errno::Errno;
use std::collections::BTreeMap;

fn refused_call(i: u32) -> Result<(), Errno> {
    match i % 4 {
        0 => nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .map(drop),
        1 => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER),
        2 => nix::unistd::chroot("/"),
        // SAFETY: a clone that, were it allowed, only makes a child that
        // exits at once (CLONE_NEWNET is what the filter refuses).
        _ => match unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWNET | libc::SIGCHLD,
                0,
                0,
                0,
                0,
            )
        } {
            0 => unsafe { libc::_exit(0) },
            -1 => Err(Errno::last()),
            child => {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child as i32), None);
                Ok(())
            }
        },
    }
}

pub fn run(args: &[String]) -> Option<(serde_json::Value, bool)> {
    let (count, hold) = match args {
        [n] => (n.parse::<u32>().ok()?, false),
        [n, h] if h == "hold" => (n.parse::<u32>().ok()?, true),
        _ => return None,
    };
    let mut outcomes = BTreeMap::<String, u32>::new();
    for i in 0..count {
        *outcomes.entry(outcome(&refused_call(i))).or_default() += 1;
    }
    Some((
        serde_json::json!({"made": count, "outcomes": outcomes}),
        hold,
    ))
}
