//! VMI events end to end: the `syscall-trace` app (`oci-images/syscall-trace`)
//! under `io.furnace.v1` on a real containerd, shim, sidecar and QEMU guest,
//! checked against what the guest itself says it did: the pid of the `cat`
//! that opened a marker file, the pid and status of a `sleep`, the number of
//! opens a burst made. Every test here shares one guest and one event
//! engine, so they take turns.

use furnace::guest::console;
use furnace_tests::one_at_a_time;
use furnace_tests::running::RunningApp;
use furnace_tests::stack::{strs, FurnaceStack};
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::{RunState, VmControl};
use serde_json::Value;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const APP: &str = "/usr/bin/furnace-syscall-trace";
const READY: Duration = Duration::from_secs(60);
/// The longest a sync event may hold the guest: the sidecar's default `max_pause_ms`.
const HOLD_LIMIT: Duration = Duration::from_secs(10);
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);

fn stack() -> &'static FurnaceStack {
    static STACK: OnceLock<FurnaceStack> = OnceLock::new();
    STACK.get_or_init(|| FurnaceStack::start("events").expect("the Furnace stack starts"))
}

/// Starts `furnace-syscall-trace ARGS` with `permissions` and waits until it
/// has subscribed (its breakpoints are set by then).
fn start_trace(id: &str, permissions: &str, args: &[&str]) -> RunningApp {
    let s = stack();
    let image = s.import("syscall-trace").expect("the app's image imports");
    let mut argv = vec![APP];
    argv.extend_from_slice(args);
    let mut app = s
        .spawn_app(&image, id, &strs(&s.granting(permissions)), &argv)
        .unwrap();
    app.wait_stderr("subscribed", READY).unwrap();
    app
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or(Value::Null)
}

fn marker_path(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("/tmp/furnace-{kind}-{:x}{:x}", std::process::id(), nanos)
}

fn qemu() -> QemuGuest {
    QemuGuest::attach(&stack().guest.dir).unwrap()
}

fn health() -> furnace_api::v1::HealthResponse {
    stack().sidecar.admin().health().unwrap()
}

#[test]
fn the_guests_openat_of_its_marker_is_reported_with_the_exact_path_pid_and_comm() {
    let _turn = one_at_a_time();
    let mut app = start_trace("trace-openat", "read,syscalls", &["--syscalls", "openat"]);
    let marker = marker_path("marker");
    let cat_pid = console::open_file(&stack().guest.dir, &marker, GUEST_TIMEOUT).unwrap();
    // The workload's shell (pid 1) writes the file first, then starts the cat.
    let path = marker.as_str();
    let of_marker = |pid: u32| move |l: &str| json(l)["filename"] == path && json(l)["PID"] == pid;
    let write = json(&app.wait_line(GUEST_TIMEOUT, of_marker(1)).unwrap());
    let line = app.wait_line(GUEST_TIMEOUT, of_marker(cat_pid)).unwrap();
    stack().remove("trace-openat");
    assert_eq!(write["ProcessName"], "init", "{write}");
    let event = json(&line);
    assert_eq!(event["Plugin"], "syscall", "{line}");
    assert_eq!(event["Method"], "openat", "{line}");
    assert_eq!(event["Syscall"], 257, "{line}");
    assert_eq!(event["TID"], cat_pid, "{line}");
    assert_eq!(event["ProcessName"], "cat", "{line}");
    assert_eq!(event["UserId"], 0, "{line}");
    assert_eq!(event["PPID"], 1, "{line}");
    // O_RDONLY for the cat; the shell's `>` is O_WRONLY|O_CREAT|O_TRUNC.
    assert_eq!(
        (event["flags"].as_str(), write["flags"].as_str()),
        (Some("0x0"), Some("0x241"))
    );
    for name in ["TimeStamp", "dfd", "mode", "EventUID"] {
        assert!(event.get(name).is_some(), "{name} missing from {line}");
    }
    eprintln!("the guest's cat (pid {cat_pid}) opened {marker}: {line}");
}

#[test]
fn the_exec_and_exit_of_the_guests_sleep_are_reported_for_its_pid() {
    let _turn = one_at_a_time();
    let mut app = start_trace("trace-process", "read,events", &["--process"]);
    let (pid, status) = console::run_sleep(&stack().guest.dir, 1, GUEST_TIMEOUT).unwrap();
    assert_eq!(status, 0);
    let of_pid = |method: &'static str| {
        move |l: &str| {
            let e = json(l);
            e["Plugin"] == "procmon" && e["Method"] == method && e["PID"] == pid
        }
    };
    let exec = json(&app.wait_line(GUEST_TIMEOUT, of_pid("execve")).unwrap());
    let exit = json(&app.wait_line(GUEST_TIMEOUT, of_pid("exit")).unwrap());
    stack().remove("trace-process");
    assert_eq!(exec["TID"], pid, "{exec}");
    assert_eq!(exec["PPID"], 1, "{exec}");
    assert!(
        exec["ImagePathName"]
            .as_str()
            .is_some_and(|p| p.starts_with('/')),
        "{exec}"
    );
    assert_eq!(exit["ProcessName"], "sleep", "{exit}");
    assert_eq!(exit["ExitCode"], 0, "{exit}");
    let (exec_time, exit_time) = (
        exec["TimeStamp"].as_str().unwrap(),
        exit["TimeStamp"].as_str().unwrap(),
    );
    assert!(
        exec_time.parse::<f64>().unwrap() + 0.9 < exit_time.parse::<f64>().unwrap(),
        "a 1 s sleep: exec at {exec_time}, exit at {exit_time}"
    );
    eprintln!("sleep pid {pid}: {exec} then {exit}");
}

/// The sync subscriber holds the guest from its first event (and would for
/// ten minutes: `--delay-ms`); SIGKILL to it, and the guest runs again
/// because the app's connection closed. What shows the cause is the bound:
/// the guest must run again well before the 10 s a sync hold may last
/// (`max_pause_ms`, the other way it would end), so half of that is the
/// limit. This is no speed figure (that is `cargo bench --bench events`);
/// runs here took 4-7 ms.
#[test]
fn a_sigkilled_sync_subscriber_lets_the_guest_run_at_once() {
    let _turn = one_at_a_time();
    let _app = start_trace(
        "trace-sync",
        "read,syscalls,pause",
        &["--syscalls", "all", "--sync", "--delay-ms", "600000"],
    );
    // Any syscall will do; the workload makes some when asked for its ps.
    let dir = stack().guest.dir.clone();
    let ps = std::thread::spawn(move || console::processes(&dir, GUEST_TIMEOUT));
    let qemu = qemu();
    furnace_tests::wait_until_held(&qemu, GUEST_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    assert_ne!(
        qemu.run_state().unwrap(),
        RunState::Running,
        "the guest ran on before the sync event was acked"
    );
    let pid = stack().task_pid("trace-sync").expect("the app's host pid");
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut polls = 0;
    let released = loop {
        polls += 1;
        if qemu.run_state().unwrap() == RunState::Running {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < HOLD_LIMIT,
            "the guest stayed held after SIGKILL"
        );
    };
    eprintln!("the guest ran again {released:?} after SIGKILL ({polls} QMP polls)");
    assert!(
        released < HOLD_LIMIT / 2,
        "the guest ran again only {released:?} after SIGKILL: that is the hold's own limit ({HOLD_LIMIT:?}) running out, not the disconnect"
    );
    ps.join()
        .unwrap()
        .expect("the guest's ps finishes after the release");
    stack().remove("trace-sync");
}

fn counts(lines: &[String]) -> (Vec<Value>, u64) {
    let mut events = Vec::new();
    let mut dropped = 0;
    for line in lines {
        let e = json(line);
        if e["Plugin"] == "furnace" && e["Method"] == "dropped" {
            dropped += e["Count"].as_u64().unwrap();
        } else if e["Plugin"] == "syscall" {
            events.push(e);
        }
    }
    (events, dropped)
}

#[test]
fn a_slow_subscriber_is_told_exactly_what_it_lost_and_a_fast_one_loses_nothing() {
    let _turn = one_at_a_time();
    const OPENS: u32 = 300;
    let filter = [
        "--syscalls",
        "openat",
        "--comm",
        "fburst",
        "--idle-exit-ms",
        "5000",
    ];
    let fast = start_trace("trace-fast", "read,syscalls", &filter);
    let slow_args = [&filter[..], &["--queue", "8", "--delay-ms", "100"]].concat();
    let slow = start_trace("trace-slow", "read,syscalls", &slow_args);
    let file = marker_path("burst");
    let burst = console::open_burst(&stack().guest.dir, OPENS, &file, GUEST_TIMEOUT).unwrap();
    assert_eq!(burst.count, OPENS);
    let (fast_status, fast_lines) = fast.finish(GUEST_TIMEOUT).unwrap();
    let (slow_status, slow_lines) = slow.finish(GUEST_TIMEOUT).unwrap();
    assert!(
        fast_status.success() && slow_status.success(),
        "{fast_status} {slow_status}"
    );
    let (fast_events, fast_dropped) = counts(&fast_lines);
    let (slow_events, slow_dropped) = counts(&slow_lines);
    let of_burst = fast_events
        .iter()
        .filter(|e| e["filename"] == file.as_str() && e["PID"] == burst.pid)
        .count();
    eprintln!(
        "{OPENS} opens by pid {} in {} ms: fast got {} events ({of_burst} of the file), dropped {fast_dropped}; slow got {}, dropped {slow_dropped}",
        burst.pid,
        burst.elapsed_ns / 1_000_000,
        fast_events.len(),
        slow_events.len()
    );
    assert_eq!(fast_dropped, 0);
    assert_eq!(of_burst, OPENS as usize, "the fast subscriber missed opens");
    assert!(
        slow_dropped > 0,
        "the slow subscriber kept up; the test proves nothing"
    );
    assert_eq!(
        slow_events.len() as u64 + slow_dropped,
        fast_events.len() as u64,
        "what the slow one got plus what it was told it lost must be what happened"
    );
}

/// The kernel bytes at every hook the engine uses.
fn hooked_bytes() -> Vec<(String, Vec<u8>)> {
    let profile =
        furnace_vmi::profile::Profile::load(&furnace_tests::kernel_dir().join("profile.json"))
            .unwrap();
    let kernel = furnace_vmi::linux::LinuxKernel::attach(Box::new(qemu()), profile).unwrap();
    [
        "do_syscall_64",
        "__x64_sys_openat",
        "syscall_exit_to_user_mode",
        "begin_new_exec",
        "do_exit",
    ]
    .iter()
    .map(|symbol| {
        let mut bytes = vec![0u8; 32];
        kernel
            .read_kernel(kernel.symbol_address(symbol).unwrap(), &mut bytes)
            .unwrap();
        (symbol.to_string(), bytes)
    })
    .collect()
}

#[test]
fn unsubscribing_and_unregistering_remove_every_breakpoint() {
    let _turn = one_at_a_time();
    let before = hooked_bytes();
    assert_eq!(
        (health().event_breakpoints, health().debugger_attached),
        (0, false)
    );

    // The app unsubscribes by itself after 20 events.
    let app = start_trace(
        "trace-unsubscribe",
        "read,events,syscalls",
        &[
            "--syscalls",
            "all",
            "--exits",
            "--process",
            "--max-events",
            "20",
        ],
    );
    assert_eq!(health().event_breakpoints, 4);
    assert_eq!(
        hooked_bytes(),
        before,
        "a breakpoint showed in guest memory"
    );
    let dir = stack().guest.dir.clone();
    std::thread::spawn(move || console::processes(&dir, GUEST_TIMEOUT));
    let (status, lines) = app.finish(GUEST_TIMEOUT).unwrap();
    assert!(status.success(), "{status}: {lines:?}");
    assert_eq!(
        (health().event_breakpoints, health().debugger_attached),
        (0, false)
    );
    assert_eq!(hooked_bytes(), before);

    // This one is unregistered (its task deleted) while subscribed.
    let _app = start_trace(
        "trace-unregister",
        "read,syscalls",
        &["--syscalls", "openat"],
    );
    assert_eq!(
        (health().event_breakpoints, health().debugger_attached),
        (1, true)
    );
    stack().remove("trace-unregister");
    assert_eq!(
        (health().event_breakpoints, health().debugger_attached),
        (0, false)
    );
    assert_eq!(hooked_bytes(), before);
    // Nothing left behind stops the guest: it runs its ps to the end.
    console::processes(&stack().guest.dir, GUEST_TIMEOUT).expect("the guest still runs its ps");
    assert_eq!(qemu().run_state().unwrap(), RunState::Running);
}
