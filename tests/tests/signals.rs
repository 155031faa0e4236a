//! Signals end apps (DESIGN.md, "Known pitfalls → PID 1"): an app is not
//! PID 1 of its partition, `furnace-init` is, so SIGTERM (`ctr task kill`)
//! and SIGINT (Ctrl-C on `ctr run`) end a Rust app and a Python one that
//! install no handler, with the status a runc container reports (128+n), and
//! what the app held in the sidecar (event breakpoints, a pause lease) is
//! released with it. Orphans inside the partition are reaped. Real parts
//! only: containerd, the installed shim and init, a QEMU guest and its
//! sidecar. The tests share one guest and sidecar, so they take turns.
//!
//! **The 2 s bound** is the issue's requirement ("every app must end
//! within 2 s of SIGTERM or SIGINT"), not a speed figure: it is what a
//! provider's stop timeout and a person at Ctrl-C can rely on. What is
//! timed is from just before the signal is sent to the moment `ctr` reports
//! the exit, so it includes starting the `ctr task kill` client, the
//! shim's Kill through the launch helper, the init forwarding the signal,
//! and for `ctr run --rm` the whole teardown before ctr exits. Runs here
//! took 27-33 ms from `ctr task kill` to a stopped task and 70-150 ms to
//! `ctr run --rm`'s exit; the rest of the 2 s is the margin a loaded
//! two-core CI machine gets. Each time is printed.

use furnace_tests::containerd::FURNACE_RUNTIME;
use furnace_tests::one_at_a_time;
use furnace_tests::stack::{strs, FurnaceStack};
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::{RunState, VmControl};
use serde_json::Value;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const TRACE: &str = "/usr/bin/furnace-syscall-trace";
const PYTHON: &str = "/usr/bin/python3";
/// The issue's requirement; see the module documentation.
const END_WITHIN: Duration = Duration::from_secs(2);
/// How long an app may take to get ready (TCG guest, first image import).
const READY: Duration = Duration::from_secs(60);
/// Bounds the waits that are not under test, so nothing hangs.
const SETTLE: Duration = Duration::from_secs(10);

fn stack() -> &'static FurnaceStack {
    static STACK: OnceLock<FurnaceStack> = OnceLock::new();
    STACK.get_or_init(|| FurnaceStack::start("signals").expect("the Furnace stack starts"))
}

fn health() -> furnace_api::v1::HealthResponse {
    stack().sidecar.admin().health().unwrap()
}

fn qemu() -> QemuGuest {
    QemuGuest::attach(&stack().guest.dir).unwrap()
}

/// Polls `done` every 5 ms until it holds; how long that took. Panics
/// after `timeout`, naming `what`.
fn wait_for(what: &str, timeout: Duration, done: impl Fn() -> bool) -> Duration {
    let since = Instant::now();
    while !done() {
        assert!(since.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    since.elapsed()
}

fn ctr_task_kill(id: &str) -> Instant {
    let sent = Instant::now();
    stack()
        .containerd
        .ctr_ok(&["task", "kill", id])
        .expect("ctr task kill (SIGTERM)");
    sent
}

#[test]
fn ctr_task_kill_ends_the_rust_syscall_trace_app_with_143_and_frees_its_breakpoints() {
    let _turn = one_at_a_time();
    let s = stack();
    let id = "sig-term-rust";
    let image = s.import("syscall-trace").unwrap();
    let out = s.ctr_run_image(
        &image,
        FURNACE_RUNTIME,
        "-d",
        id,
        &strs(&s.granting("read,syscalls")),
        &[TRACE, "--syscalls", "openat"],
    );
    assert!(
        out.status.success(),
        "ctr run -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Tracing: its breakpoint at the openat handler is in.
    wait_for("the app to subscribe", READY, || {
        health().event_breakpoints == 1
    });

    let sent = ctr_task_kill(id);
    wait_for("the task to stop", SETTLE, || {
        s.task_status(id).as_deref() == Some("STOPPED")
    });
    let took = sent.elapsed();
    let freed = wait_for("the breakpoints to go", SETTLE, || {
        health().event_breakpoints == 0
    });
    let deleted = s.containerd.ctr(&["task", "delete", id]);
    s.remove(id);
    eprintln!("SIGTERM to a stopped task: {took:?}; breakpoints gone {freed:?} after that");
    let said = String::from_utf8_lossy(&deleted.stderr);
    assert!(said.contains("exit code 143"), "ctr task delete: {said}");
    assert!(
        took < END_WITHIN,
        "SIGTERM ended the app only after {took:?}"
    );
    assert_eq!(
        (health().event_breakpoints, health().debugger_attached),
        (0, false)
    );
    assert_eq!(
        qemu().run_state().unwrap(),
        RunState::Running,
        "the guest was left paused"
    );
}

#[test]
fn ctrl_c_on_ctr_run_ends_the_rust_app_with_130() {
    let _turn = one_at_a_time();
    let s = stack();
    let id = "sig-int-rust";
    let image = s.import("syscall-trace").unwrap();
    let mut app = s
        .spawn_app(
            &image,
            id,
            &strs(&s.granting("read,syscalls")),
            &[TRACE, "--syscalls", "openat"],
        )
        .unwrap();
    app.wait_stderr("subscribed", READY).unwrap();
    assert_eq!(health().event_breakpoints, 1);

    // A terminal's Ctrl-C is SIGINT to ctr (its foreground process group;
    // the app is not in it: it is the shim's). ctr's default sig-proxy
    // sends it on to the task.
    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(app.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let (status, _) = app.finish(SETTLE).unwrap();
    let took = sent.elapsed();
    eprintln!("SIGINT to ctr run's exit (teardown of --rm included): {took:?}");
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(
        took < END_WITHIN,
        "Ctrl-C ended the app only after {took:?}"
    );
    assert_eq!(s.task_status(id), None, "ctr run --rm removed the task");
    wait_for("the breakpoints to go", SETTLE, || {
        health().event_breakpoints == 0
    });
    assert_eq!(
        qemu().run_state().unwrap(),
        RunState::Running,
        "the guest was left paused"
    );
    assert!(s.traces_of(id).is_empty(), "{:?}", s.traces_of(id));
}

/// Connects with the SDK, takes a pause lease, says so, then sleeps: no
/// handler for anything, as most tenant code.
const PAUSING_APP: &str = r#"
import time
from furnace_vmi import Vmi
vmi = Vmi.connect_default()
lease = vmi.pause(60000)
print("paused", lease.granted_ms, flush=True)
while True:
    time.sleep(3600)
"#;

/// How a test stops an app.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// `ctr task kill ID`: SIGTERM to the task.
    TaskKill,
    /// Ctrl-C on `ctr run`: SIGINT to ctr, which sends it on to the task.
    CtrlC,
}

/// Runs [`PAUSING_APP`] in the Python image, stops it as `stop` says, and
/// checks it ended within [`END_WITHIN`] with `status`, and that its lease
/// went with it long before the lease's own end.
fn python_app_holding_a_lease_ends(id: &str, stop: Stop, status: i32) {
    let _turn = one_at_a_time();
    let s = stack();
    let image = s.import("modules").unwrap();
    let mut app = s
        .spawn_app(
            &image,
            id,
            &strs(&s.granting("read,pause")),
            &[PYTHON, "-c", PAUSING_APP],
        )
        .unwrap();
    let line = app.wait_line(READY, |l| l.starts_with("paused ")).unwrap();
    let paused_at = Instant::now();
    let granted = Duration::from_millis(line["paused ".len()..].trim().parse().unwrap());
    let qemu = qemu();
    assert_ne!(
        qemu.run_state().unwrap(),
        RunState::Running,
        "the lease holds the guest"
    );

    let sent = match stop {
        Stop::TaskKill => ctr_task_kill(id),
        Stop::CtrlC => {
            let sent = Instant::now();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(app.pid() as i32),
                nix::sys::signal::Signal::SIGINT,
            )
            .unwrap();
            sent
        }
    };
    let (ended, _) = app.finish(SETTLE).unwrap();
    let took = sent.elapsed();
    let resumed = wait_for("the guest to run again", SETTLE, || {
        qemu.run_state().unwrap() == RunState::Running
    });
    eprintln!(
        "{stop:?} to ctr run's exit: {took:?}; guest running {resumed:?} later; lease granted {granted:?}"
    );
    assert_eq!(ended.code(), Some(status), "{ended}");
    assert!(
        took < END_WITHIN,
        "{stop:?} ended the app only after {took:?}"
    );
    assert!(
        paused_at.elapsed() < granted,
        "the guest runs again, but only as late as the lease's own expiry ({granted:?}): that proves nothing"
    );
    assert_eq!(qemu.run_state().unwrap(), RunState::Running);
    assert!(s.traces_of(id).is_empty(), "{:?}", s.traces_of(id));
}

#[test]
fn sigterm_ends_a_python_app_with_143_and_its_pause_lease_with_it() {
    python_app_holding_a_lease_ends("sig-term-python", Stop::TaskKill, 143);
}

/// Python turns SIGINT into KeyboardInterrupt, and on an uncaught one ends
/// itself with SIGINT: 130, as from a shell.
#[test]
fn ctrl_c_ends_a_python_app_with_130_and_its_pause_lease_with_it() {
    python_app_holding_a_lease_ends("sig-int-python", Stop::CtrlC, 130);
}

/// The app forks a child that forks grandchildren and exits at once: the
/// grandchildren are orphans, re-parented to PID 1, and each exits 0.3 s
/// later. Had PID 1 not reaped them they would stay zombies (state `Z` in
/// /proc/<pid>/stat), which the app counts a second after the last exited.
/// Were the app PID 1 itself, they would be re-parented to it, and Python
/// does not reap what it did not start: the test would fail.
const ORPHANS_APP: &str = r#"
import json, os, time
N = 5
r, w = os.pipe()
child = os.fork()
if child == 0:
    for _ in range(N):
        if os.fork() == 0:
            time.sleep(0.3)
            os.write(w, b"%d\n" % os.getppid())
            os._exit(0)
    os._exit(0)
os.close(w)
os.waitpid(child, 0)
with os.fdopen(r) as done:
    ppids = [int(line) for line in done]
time.sleep(1)
zombies = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open("/proc/%s/stat" % pid).read()
    except OSError:
        continue
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    if state == "Z":
        zombies.append([int(pid), int(ppid)])
pid1 = open("/proc/1/cmdline").read().split("\0")[:2]
print(json.dumps({"pid": os.getpid(), "pid1": pid1, "ppids": ppids, "zombies": zombies}))
"#;

#[test]
fn orphans_in_the_partition_are_reaped_by_its_init() {
    let _turn = one_at_a_time();
    let s = stack();
    let image = s.import("modules").unwrap();
    let out = s.run_app(&image, "sig-orphans", &[], &[PYTHON, "-c", ORPHANS_APP]);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the app prints JSON");
    eprintln!("{seen}");
    assert_eq!(
        seen["pid1"],
        serde_json::json!(["/run/furnace/init", "--"]),
        "{seen}"
    );
    assert_eq!(seen["pid"], 2, "the app is the init's child");
    assert_eq!(
        seen["ppids"],
        serde_json::json!([1, 1, 1, 1, 1]),
        "every grandchild was an orphan of PID 1"
    );
    assert_eq!(
        seen["zombies"],
        serde_json::json!([]),
        "zombies left: {seen}"
    );
}
