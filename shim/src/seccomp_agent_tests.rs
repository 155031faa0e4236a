//! The agent against a real kernel filter: the test thread loads one that
//! notifies `getppid` (a raw BPF program, so no libseccomp is needed), and
//! hands its fd over as libcontainer does.

use super::*;
use std::os::fd::FromRawFd;

/// Loads, on the calling thread only, a filter that notifies `getppid`
/// and allows everything else; returns its notify fd.
fn notify_getppid_on_this_thread() -> OwnedFd {
    let code = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut program = [
        code(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        code(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            libc::SYS_getppid as u32,
        ),
        code(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_USER_NOTIF,
        ),
        code(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: prctl and seccomp with valid arguments; the filter binds this
    // thread alone (no TSYNC), which ends with the test.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let fd = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog,
        );
        assert!(fd >= 0, "seccomp: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd as RawFd)
    }
}

fn hand_over(agent: &Path, fds: &[RawFd]) {
    let stream = UnixStream::connect(agent).unwrap();
    fd_passing::send(&stream, b"{}", fds).unwrap();
}

fn getppid_errno() -> i32 {
    // SAFETY: getppid takes no arguments.
    let r = unsafe { libc::syscall(libc::SYS_getppid) };
    assert_eq!(r, -1, "getppid was not refused");
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn wait_for_count(agent: &SeccompAgent, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.refused() != want {
        assert!(
            Instant::now() < deadline,
            "counted {} of {want}",
            agent.refused()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn notified_calls_are_answered_eperm_and_counted_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let agent = SeccompAgent::listen_in(dir.path(), "unit").unwrap();
    let mode = std::fs::metadata(agent.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let pipe = nix::unistd::pipe().unwrap();
    // What a sender must not get away with: no fd, or the wrong kind.
    hand_over(agent.path(), &[]);
    hand_over(agent.path(), &[pipe.0.as_raw_fd()]);
    let filter = notify_getppid_on_this_thread();
    hand_over(agent.path(), &[filter.as_raw_fd()]);
    drop(filter);
    for _ in 0..3 {
        assert_eq!(getppid_errno(), libc::EPERM);
    }
    wait_for_count(&agent, 3);
    drop(agent);
    // With the agent gone the kernel answers: still refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    while getppid_errno() != libc::ENOSYS {
        assert!(Instant::now() < deadline, "the agent kept answering");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_sender_of_no_fd_or_another_kind_of_fd_is_refused_by_name() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let send = |fds: &[RawFd]| fd_passing::send(&theirs, b"{}", fds).unwrap();
    send(&[]);
    let none = receive_filter(&ours).unwrap_err();
    assert!(none.contains("no notify fd"), "{none}");
    let pipe = nix::unistd::pipe().unwrap();
    send(&[pipe.0.as_raw_fd()]);
    let wrong = receive_filter(&ours).unwrap_err();
    assert!(
        wrong.contains("where a seccomp notify fd was expected"),
        "{wrong}"
    );
    send(&[pipe.0.as_raw_fd(), pipe.1.as_raw_fd()]);
    let several = receive_filter(&ours).unwrap_err();
    assert!(several.contains("several"), "{several}");
}

#[test]
fn sockets_of_gone_shims_are_removed_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Pids above pid_max's ceiling (2^22) are never alive.
    let gone = dir.path().join("4194305-0.sock");
    let other = dir.path().join("not-a-pid.sock");
    std::fs::write(&gone, "").unwrap();
    std::fs::write(&other, "").unwrap();
    let first = SeccompAgent::listen_in(dir.path(), "one").unwrap();
    let second = SeccompAgent::listen_in(dir.path(), "two").unwrap();
    assert!(!gone.exists());
    assert!(other.exists(), "not ours to judge");
    assert!(first.path().exists(), "this shim is alive");
    second.stop();
    assert!(!second.path().exists());
}
