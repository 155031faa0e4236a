//! `furnace-init` run as an ordinary process (and once as a real PID 1 in a
//! pid namespace of its own): exit codes passed through, 128+n for a
//! signal, signals forwarded, orphans reaped, clear errors for an app that
//! cannot run. The bounds on waits are there so a broken init fails the
//! test instead of hanging it; they are no speed figures.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const INIT: &str = env!("CARGO_BIN_EXE_furnace-init");
/// How long a signalled app may take to end before the test calls it stuck.
const END_BOUND: Duration = Duration::from_secs(5);

fn init(args: &[&str]) -> Command {
    let mut command = Command::new(INIT);
    command.args(args).stdin(Stdio::null());
    command
}

fn output(args: &[&str]) -> Output {
    init(args).output().expect("furnace-init runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn send(child: &Child, signo: i32) {
    // SAFETY: kill with plain integers, to a child of this test.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signo) }, 0);
}

/// Waits (bounded) for `child` to exit; its exit code.
fn exit_code(child: &mut Child) -> i32 {
    let deadline = Instant::now() + END_BOUND;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("furnace-init exits, it is not killed");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("furnace-init did not exit within {END_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `furnace-init -- sh -c SCRIPT` and waits until the script prints `ready`.
fn started(script: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = init(&["--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, stdout)
}

#[test]
fn the_apps_exit_code_is_the_inits() {
    for code in [0, 1, 7, 255] {
        let out = output(&["--", "sh", "-c", &format!("exit {code}")]);
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    }
    // Without `--` too, as tini takes it.
    assert_eq!(output(&["true"]).status.code(), Some(0));
}

#[test]
fn an_app_killed_by_signal_n_makes_the_init_exit_128_plus_n() {
    for (signal, code) in [("TERM", 143), ("KILL", 137), ("INT", 130), ("SEGV", 139)] {
        let out = output(&["--", "sh", "-c", &format!("kill -{signal} $$")]);
        assert_eq!(out.status.code(), Some(code), "SIG{signal}");
    }
}

#[test]
fn signals_to_the_init_are_forwarded_to_the_app() {
    // Default actions: the app dies of the signal the init got.
    let rt = libc::SIGRTMIN() + 2;
    for signo in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2, rt] {
        let (mut child, _out) = started("echo ready; exec sleep 30");
        send(&child, signo);
        assert_eq!(exit_code(&mut child), 128 + signo, "signal {signo}");
    }
    // A handler in the app sees it, and the app decides how to end.
    let (mut child, mut out) = started(
        "trap 'echo got USR1' USR1; trap 'echo got WINCH' WINCH; trap 'exit 3' TERM; \
         echo ready; while :; do sleep 0.02; done",
    );
    for (signo, seen) in [
        (libc::SIGUSR1, "got USR1\n"),
        (libc::SIGWINCH, "got WINCH\n"),
    ] {
        send(&child, signo);
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, seen);
    }
    send(&child, libc::SIGTERM);
    assert_eq!(exit_code(&mut child), 3);
}

/// Each `(ppid, state)` of the processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == pid {
            found.push((
                entry.file_name().to_str().unwrap().parse().unwrap_or(0),
                state,
            ));
        }
    }
    found
}

#[test]
fn orphans_come_to_the_init_and_are_reaped() {
    // The subshell starts a sleep and exits at once: the sleep, orphaned,
    // goes to the init (PID 1 in a partition; here the child subreaper),
    // exits 0.5 s later, and must not stay a zombie.
    let (mut child, _out) = started("(sleep 0.5 &); echo ready; exec sleep 30");
    let init = child.id();
    std::thread::sleep(Duration::from_millis(200));
    let early = children_of(init);
    assert_eq!(early.len(), 2, "the app and the orphan: {early:?}");
    std::thread::sleep(Duration::from_millis(1300));
    let late = children_of(init);
    send(&child, libc::SIGTERM);
    assert_eq!(exit_code(&mut child), 143);
    assert_eq!(late.len(), 1, "the orphan was not reaped: {late:?}");
    assert!(late.iter().all(|(_, state)| *state != 'Z'), "{late:?}");
}

#[test]
fn an_app_that_cannot_run_is_one_line_and_exit_127_or_126() {
    let out = output(&["--", "/no/such/app", "x"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        stderr(&out),
        "furnace-init: `/no/such/app` does not exist\n"
    );

    let out = output(&["--", "no-such-app-anywhere"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        stderr(&out),
        "furnace-init: `no-such-app-anywhere` was not found on PATH\n"
    );

    let dir = std::env::temp_dir().join(format!("furnace-init-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    let out = output(&["--", plain.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(126));
    assert_eq!(
        stderr(&out),
        format!(
            "furnace-init: `{}` cannot be executed: Permission denied\n",
            plain.display()
        )
    );
}

#[test]
fn usage_help_and_version() {
    let out = output(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("furnace-init: no program given\nusage:"));
    let out = output(&["--bogus", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown option --bogus"),
        "{}",
        stderr(&out)
    );
    let out = output(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: furnace-init [--] PROGRAM"));
    // After `--`, everything is the app's, flags included.
    let out = output(&["--", "sh", "-c", "echo \"$0\"", "--help"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--help\n");
}

/// The pitfall itself, on a real PID 1 (`unshare --pid --fork`, needs root):
/// `sleep` as PID 1 outlives SIGTERM; under the init, SIGTERM ends it.
#[test]
fn as_pid_1_of_a_pid_namespace_sigterm_ends_the_app() {
    let run = |argv: &[&str]| {
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .args(argv)
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare runs");
        // unshare's child is PID 1 of the new namespace.
        let deadline = Instant::now() + END_BOUND;
        let pid1 = loop {
            if let Some((pid, _)) = children_of(child.id()).first() {
                break *pid;
            }
            assert!(Instant::now() < deadline, "unshare started no PID 1");
            std::thread::sleep(Duration::from_millis(10));
        };
        // Let it exec (the init, or sleep) before the signal.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill with plain integers, to a process this test started.
        unsafe { libc::kill(pid1 as i32, libc::SIGTERM) };
        (child, pid1)
    };

    let (mut bare, _) = run(&["sleep", "30"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        bare.try_wait().unwrap().is_none(),
        "sleep as PID 1 ended on SIGTERM: the kernel should have dropped it"
    );
    let _ = bare.kill();
    let _ = bare.wait();

    let (mut under_init, _) = run(&[INIT, "--", "sleep", "30"]);
    let deadline = Instant::now() + END_BOUND;
    let status = loop {
        if let Some(status) = under_init.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "SIGTERM did not end the app under the init"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // unshare passes its child's exit code on.
    assert_eq!(status.code(), Some(143), "{status}");
}
