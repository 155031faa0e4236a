//! The gdbstub client (`furnace_vmi::driver::gdb`) against QEMU's stub on the
//! real test guest: attaching stops the guest, a software breakpoint at
//! `__x64_sys_openat` stops it when the guest's own `ps` opens files (rip is
//! the symbol's address from the profile, cr3 the one QMP reports), a step
//! moves past it, and the guest carries on. Under TCG a breakpoint is not in
//! guest memory: the bytes at the hooked address never change.

use furnace_api::{Symbol, Translation};
use furnace_tests::*;
use furnace_vmi::driver::gdb::{
    breakpoint_capabilities, Accelerator, BreakpointKind, GdbClient, StopReason,
};
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::{PhysicalMemory, RunState, VcpuRegisters, VmControl};
use std::time::Duration;

fn openat(guest: &TestGuest) -> (u64, u64) {
    let dir = guest.dir_str();
    let symbol: Vec<Symbol> = furnace_json(&[
        "vmi",
        "sym",
        "__x64_sys_openat",
        "--guest-dir",
        dir,
        "--json",
    ])
    .unwrap();
    let address = symbol[0].address;
    let hex = format!("{address:#x}");
    let translation: Translation = furnace_json(&[
        "vmi",
        "translate",
        "--address",
        &hex,
        "--guest-dir",
        dir,
        "--json",
    ])
    .unwrap();
    (address, translation.physical_address)
}

fn bytes_at(qemu: &QemuGuest, physical: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    qemu.read_physical(physical, &mut bytes).unwrap();
    bytes
}

#[test]
fn a_breakpoint_at_openat_stops_the_guest_on_its_own_opens_and_leaves_memory_alone() {
    let guest = TestGuest::start("gdb", &[]).expect("the test guest boots");
    let qemu = QemuGuest::attach(&guest.dir).unwrap();
    let (address, physical) = openat(&guest);
    let before = bytes_at(&qemu, physical);
    let accelerator = qemu.accelerator().unwrap();
    assert_eq!(
        accelerator,
        Accelerator::Tcg,
        "the test guest runs under TCG"
    );
    let [software, _] = breakpoint_capabilities(accelerator);
    assert!(
        !software.visible_to_guest,
        "the report this test checks against memory"
    );

    let mut gdb = GdbClient::connect(&guest.dir.join("gdb.sock")).unwrap();
    assert!(
        gdb.attach_stop().is_some(),
        "QEMU reports the stop it makes on attach"
    );
    assert_ne!(
        qemu.run_state().unwrap(),
        RunState::Running,
        "attaching stops the guest"
    );
    gdb.insert_breakpoint(BreakpointKind::Software, address)
        .unwrap();
    assert_eq!(
        bytes_at(&qemu, physical),
        before,
        "TCG breakpoints are not written into the guest"
    );
    gdb.resume().unwrap();

    // The guest's ps opens /proc files: openat, on the guest's own initiative.
    let dir = guest.dir.clone();
    let ps =
        std::thread::spawn(move || furnace::guest::console::processes(&dir, GROUND_TRUTH_TIMEOUT));
    let stop = gdb
        .wait_stop(Duration::from_secs(60))
        .unwrap()
        .expect("the breakpoint is hit within 60 s");
    assert_eq!(stop.reason, StopReason::Trap, "{stop:?}");
    let thread = stop.thread.clone().expect("the stop names its vCPU");
    let at_hit = gdb.registers(&thread).unwrap();
    assert_eq!(at_hit.rip, address, "stopped at __x64_sys_openat");
    assert_eq!(
        at_hit.cr3,
        qemu.registers(0).unwrap().cr3,
        "cr3 as QMP reports it"
    );

    gdb.remove_breakpoint(BreakpointKind::Software, address)
        .unwrap();
    gdb.step(&thread).unwrap();
    let stepped = gdb.registers(&thread).unwrap().rip;
    assert!(
        stepped > address && stepped < address + 16,
        "one instruction on: {stepped:#x}"
    );
    gdb.resume().unwrap();
    let processes = ps
        .join()
        .unwrap()
        .expect("the guest finishes its ps after the resume");
    assert!(processes.iter().any(|p| p.name == "fworker-alpha"));
    assert_eq!(qemu.run_state().unwrap(), RunState::Running);
    assert_eq!(
        bytes_at(&qemu, physical),
        before,
        "memory at the hooked address is as before"
    );
}

#[test]
fn a_breakpoint_nobody_set_cannot_be_removed_and_a_dead_stub_is_guest_gone() {
    let guest = TestGuest::start("gdbbad", &[]).expect("the test guest boots");
    let mut gdb = GdbClient::connect(&guest.dir.join("gdb.sock")).unwrap();
    let err = gdb.remove_breakpoint(BreakpointKind::Software, 0xffff_ffff_8100_0000);
    assert!(err.is_err(), "{err:?}");
    gdb.resume().unwrap();
    guest.kill_qemu().unwrap();
    let err = gdb.wait_stop(Duration::from_secs(10)).unwrap_err();
    assert_eq!(err.code(), furnace_api::ErrorCode::GuestGone, "{err}");
    let err = GdbClient::connect(&guest.dir.join("gdb.sock"))
        .err()
        .unwrap();
    assert_eq!(err.code(), furnace_api::ErrorCode::GuestGone, "{err}");
}
