//! End-to-end: guest memory is hostile input. Each test builds a hostile
//! structure in a real guest's memory from the host (through the RAM file,
//! with the guest paused), asks the real sidecar about it through the SDKs,
//! checks the typed outcome against the structure it built, and then puts
//! the guest's memory back and checks the guest is read correctly again.

use furnace_api::v1::{Permission, Process};
use furnace_api::{ErrorCode, Vmi};
use furnace_tests::*;
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::linux::LinuxKernel;
use furnace_vmi::profile::Profile;
use std::sync::OnceLock;
use std::time::Instant;

fn fixture() -> &'static GuestWithSidecar {
    static FIXTURE: OnceLock<GuestWithSidecar> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        GuestWithSidecar::start("hostile").expect("the guest and its sidecar start")
    })
}

/// The guest's kernel, attached in-process, as the hostile party's hands.
fn kernel() -> LinuxKernel {
    let profile = Profile::load(&kernel_dir().join("profile.json")).unwrap();
    LinuxKernel::attach(
        Box::new(QemuGuest::attach(&fixture().guest.dir).unwrap()),
        profile,
    )
    .unwrap()
}

/// Sets the `tasks.next` pointer of `task` to `value` while `f` runs (the
/// guest paused), and puts the original back whatever `f` does.
fn with_task_next<T>(kernel: &LinuxKernel, task: &Process, value: u64, f: impl FnOnce() -> T) -> T {
    let offset = kernel
        .profile()
        .member_offset("task_struct", "tasks")
        .unwrap();
    let node = kernel
        .kernel_to_physical(task.task + offset)
        .unwrap()
        .physical;
    let control = kernel.driver().control().unwrap();
    control.pause().unwrap();
    let mut original = [0u8; 8];
    kernel.driver().read_physical(node, &mut original).unwrap();
    kernel
        .driver()
        .write_physical(node, &value.to_le_bytes())
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    kernel.driver().write_physical(node, &original).unwrap();
    control.resume().unwrap();
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn pids(processes: &[Process]) -> Vec<u32> {
    processes.iter().map(|p| p.pid).collect()
}

#[test]
fn a_task_list_cycle_that_skips_the_head_yields_the_list_up_to_it() {
    // Each test corrupts the shared guest's task list while it runs.
    let _turn = one_at_a_time();
    let f = fixture();
    let socket = f.sidecar.register("cycle", &[Permission::Read], 0);
    let vmi = Vmi::connect(&socket).unwrap();
    let kernel = kernel();
    let before = kernel.processes().unwrap();
    assert!(
        before.len() > 12,
        "the guest runs enough processes: {}",
        before.len()
    );
    let offset = kernel
        .profile()
        .member_offset("task_struct", "tasks")
        .unwrap();
    // t10.next = &t5.tasks: head -> t0 ... t10 -> t5 -> ... -> t10 -> t5 ...
    let walk = with_task_next(&kernel, &before[10], before[5].task + offset, || {
        let started = Instant::now();
        let walk = vmi.process_walk().unwrap();
        println!(
            "ListProcesses over the cycle: {:?}, {} listed: {}",
            started.elapsed(),
            walk.processes.len(),
            walk.incomplete
        );
        let err = vmi.processes().unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded, "{err}");
        let python = python_sdk(&["ps", "--socket", socket.to_str().unwrap(), "--json"]);
        let stderr = String::from_utf8_lossy(&python.stderr);
        assert!(
            !python.status.success()
                && stderr.contains("LIMIT_EXCEEDED")
                && stderr.contains("cycle"),
            "python: {stderr}"
        );
        walk
    });
    assert_eq!(
        pids(&walk.processes),
        pids(&before[..11]),
        "each task before the cycle closes, once"
    );
    assert!(
        walk.incomplete
            .contains("cycle of 6 entries that skips its head, after 11 entries"),
        "{}",
        walk.incomplete
    );
    f.guest.assert_ps_matches(|_| Ok(vmi.processes()?));
}

#[test]
fn an_unmapped_or_wrapping_next_pointer_ends_the_list_there() {
    let _turn = one_at_a_time();
    let f = fixture();
    let vmi = Vmi::connect(&f.sidecar.register("badnext", &[Permission::Read], 0)).unwrap();
    let kernel = kernel();
    let before = kernel.processes().unwrap();
    // A kernel address nothing maps, and one whose task_struct would start
    // below 0.
    for (value, words) in [
        (
            0xffff_dead_0000_0000u64,
            "entry 8 at 0xffffdead00000000 is unreadable",
        ),
        (0x10, "entry 8 at 0x10 is unreadable"),
    ] {
        let walk = with_task_next(&kernel, &before[7], value, || vmi.process_walk().unwrap());
        println!(
            "next = {value:#x}: {} listed: {}",
            walk.processes.len(),
            walk.incomplete
        );
        assert!(
            walk.incomplete.contains(words),
            "next = {value:#x}: {}",
            walk.incomplete
        );
        assert_eq!(
            pids(&walk.processes),
            pids(&before[..8]),
            "next = {value:#x}"
        );
    }
    f.guest.assert_ps_matches(|_| Ok(vmi.processes()?));
}
