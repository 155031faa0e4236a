//! End-to-end: the guest's RAM file shrinks under the sidecar. A real guest
//! and its real sidecar; the test truncates the RAM file from the host with
//! the guest paused, so QEMU lives on (its QMP answers, and the watchdog
//! does not call the guest gone) and the only thing that can tell the
//! sidecar is the kernel's SIGBUS in its worker. The worker must live, and
//! every call after the fault must fail GUEST_GONE. The guest is this
//! suite's own: nothing else may run on a guest whose memory is cut.

use furnace_api::v1::Permission;
use furnace_api::{ErrorCode, Vmi};
use furnace_tests::*;
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::{RunState, VmControl};

#[test]
fn a_ram_file_truncated_under_the_sidecar_is_guest_gone_and_its_worker_lives() {
    let f = GuestWithSidecar::start("shrunk").expect("the guest and its sidecar start");
    let vmi = Vmi::connect(&f.sidecar.register("reader", &[Permission::Read], 0)).unwrap();
    let before = vmi.processes().unwrap();
    assert!(!before.is_empty());
    let worker = f.sidecar.worker_pid();

    let qemu = QemuGuest::attach(&f.guest.dir).unwrap();
    qemu.pause().unwrap();
    let ram = std::fs::OpenOptions::new()
        .write(true)
        .open(f.guest.dir.join("ram"))
        .unwrap();
    let size = ram.metadata().unwrap().len();
    ram.set_len(0).unwrap();
    println!("truncated the {size}-byte RAM file to 0 with the guest paused");

    let err = vmi.processes().unwrap_err();
    assert_eq!(err.code, ErrorCode::GuestGone, "{err}");
    assert!(err.message.contains("RAM file shrank"), "{err}");
    let err = vmi.read_physical(0x1000, 8).unwrap_err();
    assert_eq!(err.code, ErrorCode::GuestGone, "{err}");
    let other = Vmi::connect(&f.sidecar.register("late", &[Permission::Read], 0)).unwrap();
    let err = other.read_physical(0, 8).unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::GuestGone,
        "a new connection is told too: {err}"
    );

    assert_eq!(
        f.sidecar.worker_pid(),
        worker,
        "the worker that took the fault still serves"
    );
    let state = proc_status(worker);
    assert!(
        state.get("State").is_some_and(|s| !s.starts_with('Z')),
        "the worker lives: {state:?}"
    );
    assert_eq!(
        qemu.run_state().unwrap(),
        RunState::Paused,
        "QEMU lived through it paused, so the fault alone told the sidecar"
    );
    // Resumed, the guest would fault on its own memory; end it instead.
    f.guest.kill_qemu().unwrap();
}
