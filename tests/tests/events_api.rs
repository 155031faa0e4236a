//! The events API through the Rust SDK, against a real sidecar and QEMU
//! guest: timers (async and sync), a breakpoint at a kernel symbol, syscall
//! returns, and each way a subscription is refused with a typed error.
//! Ground truth is the guest's own word (the pid of the `cat` it started),
//! the kernel's symbol table, and QEMU's run state over QMP.

use furnace::guest::console;
use furnace_api::v1::{event::Detail, EventSpec, Permission};
use furnace_api::{Delivery, ErrorCode, Vmi};
use furnace_tests::one_at_a_time;
use furnace_tests::{GuestWithSidecar, TestGuest, TestSidecar, GROUND_TRUTH_TIMEOUT};
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::{RunState, VmControl};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn fixture() -> &'static GuestWithSidecar {
    static FIXTURE: OnceLock<GuestWithSidecar> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        GuestWithSidecar::start("events-api").expect("the guest and its sidecar start")
    })
}

/// The guest and its event engine are shared; tests take turns.
fn app(name: &str, permissions: &[Permission]) -> Vmi {
    let socket = fixture().sidecar.register(name, permissions, 0);
    Vmi::connect(&socket).unwrap()
}

fn health() -> furnace_api::v1::HealthResponse {
    fixture().sidecar.admin().health().unwrap()
}

fn run_state() -> RunState {
    QemuGuest::attach(&fixture().guest.dir)
        .unwrap()
        .run_state()
        .unwrap()
}

#[test]
fn subscriptions_are_refused_with_typed_errors() {
    let _turn = one_at_a_time();
    let reader = app("events-reader", &[Permission::Read]);
    let code = |spec: EventSpec, vmi: &Vmi| vmi.subscribe(spec).unwrap_err().code;
    assert_eq!(
        code(EventSpec::syscalls(&["openat"]), &reader),
        ErrorCode::NotPermitted
    );
    assert_eq!(
        code(EventSpec::processes(true, true), &reader),
        ErrorCode::NotPermitted
    );

    let watcher = app("events-watcher", &[Permission::Read, Permission::Events]);
    assert_eq!(
        code(EventSpec::syscalls(&["openat"]), &watcher),
        ErrorCode::NotPermitted
    );
    assert_eq!(
        code(EventSpec::processes(true, false).sync(), &watcher),
        ErrorCode::NotPermitted,
        "sync holds the guest, which needs `pause`"
    );
    assert_eq!(
        code(EventSpec::breakpoint("no_such_symbol", 0), &watcher),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(EventSpec::breakpoint_at(0x40_1000), &watcher),
        ErrorCode::BadAddress
    );
    assert_eq!(
        code(EventSpec::timer(Duration::from_millis(1)), &watcher),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(EventSpec::processes(false, false), &watcher),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(EventSpec::default(), &watcher),
        ErrorCode::InvalidArgument
    );

    let tracer = app("events-tracer", &[Permission::Syscalls]);
    assert_eq!(
        code(EventSpec::syscalls(&["no_such_call"]), &tracer),
        ErrorCode::InvalidArgument
    );
    let missing = furnace_api::v1::Subscription {
        id: 999_999,
        queue_capacity: 1,
    };
    assert_eq!(
        tracer
            .next_events(&missing, 1, Duration::ZERO, &[])
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    assert_eq!(
        tracer.ack(&[424_242]).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        tracer.unsubscribe(&missing).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(health().event_breakpoints, 0);
}

#[test]
fn timers_tick_in_order_and_a_sync_tick_holds_the_guest_until_acked() {
    let _turn = one_at_a_time();
    let vmi = app("events-timer", &[Permission::Events, Permission::Pause]);
    let ticks = vmi
        .subscribe(EventSpec::timer(Duration::from_millis(50)))
        .unwrap();
    let started = Instant::now();
    let sequences: Vec<u64> = vmi
        .events(&ticks)
        .take(4)
        .map(|d| match d.unwrap() {
            Delivery::Event(e) => match e.detail {
                Some(Detail::Timer(t)) => t.sequence,
                other => panic!("not a tick: {other:?}"),
            },
            Delivery::Dropped(n) => panic!("{n} ticks dropped"),
        })
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4]);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    vmi.unsubscribe(&ticks).unwrap();
    // No debugger is needed for a timer.
    assert!(!health().debugger_attached);

    let sync = vmi
        .subscribe(EventSpec::timer(Duration::from_millis(50)).sync())
        .unwrap();
    let batch = vmi
        .next_events(&sync, 1, Duration::from_secs(10), &[])
        .unwrap();
    let tick = &batch.events[0];
    assert!(tick.sync);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        run_state(),
        RunState::Paused,
        "the guest ran before the tick was acked"
    );
    vmi.ack(&[tick.id]).unwrap();
    vmi.unsubscribe(&sync).unwrap();
    assert_eq!(run_state(), RunState::Running);
}

#[test]
fn a_breakpoint_at_a_symbol_and_a_syscall_return_name_the_guests_cat() {
    let _turn = one_at_a_time();
    let vmi = app(
        "events-bp",
        &[Permission::Read, Permission::Events, Permission::Syscalls],
    );
    let symbol = vmi.symbol_address("do_sys_openat2").unwrap();
    let breakpoint = vmi
        .subscribe(EventSpec::breakpoint("do_sys_openat2", 0).comm("cat"))
        .unwrap();
    let returns = vmi
        .subscribe(EventSpec::syscalls(&["openat"]).exits(false).comm("cat"))
        .unwrap();
    assert_eq!(health().event_breakpoints, 2);
    let marker = format!("/tmp/furnace-bp-{}", std::process::id());
    let cat = console::open_file(&fixture().guest.dir, &marker, GROUND_TRUTH_TIMEOUT).unwrap();

    let hit = vmi
        .next_events(&breakpoint, 64, Duration::from_secs(10), &[])
        .unwrap();
    let event = hit
        .events
        .iter()
        .find(|e| e.task.as_ref().unwrap().pid == cat)
        .expect("the cat's hit");
    let Some(Detail::Breakpoint(b)) = &event.detail else {
        panic!("{event:?}")
    };
    assert_eq!(b.address, symbol);
    assert_eq!(b.registers.as_ref().unwrap().rip, symbol);
    assert_eq!(event.task.as_ref().unwrap().comm, "cat");

    let ret = vmi
        .next_events(&returns, 64, Duration::from_secs(10), &[])
        .unwrap();
    let opened = ret
        .events
        .iter()
        .find_map(|e| match &e.detail {
            Some(Detail::SyscallExit(x)) if e.task.as_ref().unwrap().pid == cat => Some(x.clone()),
            _ => None,
        })
        .expect("the cat's openat returned");
    assert_eq!(opened.name, "openat");
    // The lowest free descriptor: cat inherits stdio and the workload's
    // control port (`exec 3< /dev/ttyS1` in init.sh), so 4.
    assert_eq!(opened.value, 4);
    vmi.unsubscribe(&breakpoint).unwrap();
    vmi.unsubscribe(&returns).unwrap();
    assert_eq!(health().event_breakpoints, 0);
}

/// A guest of its own: its QEMU is killed under a live subscription.
#[test]
fn a_vanished_guest_ends_the_subscription_with_guest_gone() {
    let guest = TestGuest::start("events-gone", &[]).expect("the test guest boots");
    let sidecar = TestSidecar::start(&guest, &[]).expect("the sidecar starts");
    let vmi = Vmi::connect(&sidecar.register("gone", &[Permission::Syscalls], 0)).unwrap();
    let calls = vmi.subscribe(EventSpec::syscalls(&["openat"])).unwrap();
    guest.kill_qemu().unwrap();
    let error = vmi
        .next_events(&calls, 1, Duration::from_secs(20), &[])
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::GuestGone, "{error}");
}

/// The Python SDK's events, against the same sidecar: subscribe, iterate,
/// and the path and pid of the guest's `cat`.
#[test]
fn the_python_sdk_iterates_the_guests_openat() {
    use std::io::{BufRead, BufReader};
    let _turn = one_at_a_time();
    let socket = fixture()
        .sidecar
        .register("events-python", &[Permission::Syscalls], 0);
    let script = r#"
import json, sys
from furnace_vmi import Dropped, Vmi, syscalls
with Vmi(sys.argv[1]) as vmi:
    opens = vmi.subscribe(syscalls(["openat"], comm="cat"))
    print("subscribed", flush=True)
    for item in vmi.events(opens):
        if isinstance(item, Dropped):
            continue
        path = [a.text for a in item.syscall_enter.arguments if a.name == "filename"][0]
        print(json.dumps({"pid": item.task.pid, "comm": item.task.comm, "path": path}), flush=True)
        if path == sys.argv[2]:
            break
"#;
    let marker = format!("/tmp/furnace-py-{}", std::process::id());
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/python");
    let mut python = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script, socket.to_str().unwrap(), &marker])
        .env("PYTHONPATH", sdk)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(python.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "subscribed");
    let cat = console::open_file(&fixture().guest.dir, &marker, GROUND_TRUTH_TIMEOUT).unwrap();
    let seen: Vec<serde_json::Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(python.wait().unwrap().success());
    let last = seen.last().expect("python printed the open");
    assert_eq!(last["path"], marker.as_str());
    assert_eq!(last["pid"], cat);
    assert_eq!(last["comm"], "cat");
}

/// A pause lease taken while the debugger is attached keeps the guest
/// paused (the engine does not resume it); its end lets the guest run again,
/// and a hit after that is still reported.
#[test]
fn a_pause_lease_and_the_event_engine_do_not_undo_each_other() {
    let _turn = one_at_a_time();
    let vmi = app("events-lease", &[Permission::Pause, Permission::Syscalls]);
    let opens = vmi
        .subscribe(EventSpec::syscalls(&["openat"]).comm("cat"))
        .unwrap();
    assert!(health().debugger_attached);
    let lease = vmi.pause(Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(run_state(), RunState::Paused);
    vmi.resume(&lease).unwrap();
    let resumed = Instant::now();
    while run_state() != RunState::Running {
        assert!(
            resumed.elapsed() < Duration::from_secs(5),
            "the guest stayed paused after the lease"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let marker = format!("/tmp/furnace-lease-{}", std::process::id());
    let cat = console::open_file(&fixture().guest.dir, &marker, GROUND_TRUTH_TIMEOUT).unwrap();
    let batch = vmi
        .next_events(&opens, 64, Duration::from_secs(10), &[])
        .unwrap();
    assert!(
        batch
            .events
            .iter()
            .any(|e| e.task.as_ref().unwrap().pid == cat),
        "{batch:?}"
    );
    vmi.unsubscribe(&opens).unwrap();
}

/// A sidecar SIGKILLed while a sync event holds the guest leaves it stopped
/// by the debugger, breakpoints set; the next sidecar clears them and lets
/// the guest run. A guest of its own.
#[test]
fn a_new_sidecar_frees_a_guest_its_crashed_predecessor_held_at_a_breakpoint() {
    let guest = TestGuest::start("events-crash", &[]).expect("the test guest boots");
    let first = TestSidecar::start(&guest, &[]).expect("the sidecar starts");
    let socket = first.register("crash", &[Permission::Syscalls, Permission::Pause], 0);
    let vmi = Vmi::connect(&socket).unwrap();
    vmi.subscribe(EventSpec::syscalls(&[]).sync()).unwrap();
    let dir = guest.dir.clone();
    std::thread::spawn(move || console::processes(&dir, GROUND_TRUTH_TIMEOUT));
    let qemu = QemuGuest::attach(&guest.dir).unwrap();
    furnace_tests::wait_until_held(&qemu, GROUND_TRUTH_TIMEOUT);
    first.kill();
    std::thread::sleep(Duration::from_millis(500));
    assert_ne!(
        qemu.run_state().unwrap(),
        RunState::Running,
        "the guest ran on with its debugger gone"
    );

    let _second = TestSidecar::start(&guest, &[]).expect("a new sidecar starts");
    assert_eq!(qemu.run_state().unwrap(), RunState::Running);
    // No breakpoint is left to stop it again: the guest runs a ps to the end.
    console::processes(&guest.dir, GROUND_TRUTH_TIMEOUT).expect("the guest runs its ps");
    assert_eq!(qemu.run_state().unwrap(), RunState::Running);
}
