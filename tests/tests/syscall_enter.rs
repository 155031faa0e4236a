//! Syscall entry decoding (`furnace_vmi::linux::syscall`) at a gdbstub
//! breakpoint on `do_syscall_64` in the real test guest, against the
//! guest's own ground truth: while the guest runs its `ps` (whose pid the
//! workload prints), every `openat` decoded as made by `ps` carries that pid
//! as pid and tid, uid 0, and a path read from the caller's memory; and `ps`
//! opened the `/proc/<pid>` entry of every process it then printed.

use furnace_tests::*;
use furnace_vmi::driver::gdb::{BreakpointKind, GdbClient};
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::linux::syscall::{path_argument, PATH_MAX};
use furnace_vmi::linux::LinuxKernel;
use furnace_vmi::profile::Profile;
use std::time::Duration;

/// Bounds the hits handled while `ps` runs: it makes a few hundred calls.
const MAX_HITS: usize = 20_000;

#[test]
fn openat_calls_decode_to_the_guests_own_ps_with_the_paths_it_opened() {
    let guest = TestGuest::start("sysenter", &[]).expect("the test guest boots");
    let profile = Profile::load(&kernel_dir().join("profile.json")).unwrap();
    let kernel =
        LinuxKernel::attach(Box::new(QemuGuest::attach(&guest.dir).unwrap()), profile).unwrap();
    let layout = kernel.syscall_layout().unwrap();

    let mut gdb = GdbClient::connect(&guest.dir.join("gdb.sock")).unwrap();
    gdb.insert_breakpoint(BreakpointKind::Software, layout.entry)
        .unwrap();
    gdb.resume().unwrap();
    let dir = guest.dir.clone();
    let ps = std::thread::spawn(move || {
        furnace::guest::console::processes_and_ps_pid(&dir, GROUND_TRUTH_TIMEOUT)
    });

    let mut by_ps = Vec::new();
    let mut hits = 0;
    while !ps.is_finished() && hits < MAX_HITS {
        let Some(stop) = gdb.wait_stop(Duration::from_millis(500)).unwrap() else {
            continue; // no syscall for a while; look at the ps thread again
        };
        hits += 1;
        let thread = stop.thread.expect("the stop names its vCPU");
        let call = kernel
            .syscall_enter(&layout, &gdb.registers(&thread).unwrap())
            .unwrap();
        if call.caller.comm == "ps" && call.name == Some("openat") {
            let pointer = call.arguments[path_argument("openat").unwrap()];
            let path = kernel
                .read_cstring(call.caller.dtb, pointer, PATH_MAX)
                .unwrap();
            by_ps.push((call, path));
        }
        gdb.remove_breakpoint(BreakpointKind::Software, layout.entry)
            .unwrap();
        gdb.step(&thread).unwrap();
        gdb.insert_breakpoint(BreakpointKind::Software, layout.entry)
            .unwrap();
        gdb.resume().unwrap();
    }
    gdb.interrupt().unwrap();
    gdb.remove_breakpoint(BreakpointKind::Software, layout.entry)
        .unwrap();
    gdb.resume().unwrap();

    let (printed, ps_pid) = ps.join().unwrap().expect("the guest's ps finishes");
    assert!(
        hits < MAX_HITS,
        "ps did not finish within {MAX_HITS} syscalls"
    );
    assert!(!by_ps.is_empty(), "no openat by ps among {hits} syscalls");
    for (call, path) in &by_ps {
        assert_eq!(
            (call.caller.pid, call.caller.tid, call.caller.uid),
            (ps_pid, ps_pid, 0),
            "{call:?} {path}"
        );
        assert!(path.starts_with('/'), "{path:?}");
    }
    let opened: Vec<&str> = by_ps.iter().map(|(_, p)| p.as_str()).collect();
    eprintln!(
        "{hits} syscalls stopped at, {} openat by ps (pid {ps_pid}), first {:?}",
        opened.len(),
        &opened[..opened.len().min(4)]
    );
    for process in &printed {
        let entry = format!("/proc/{}/", process.pid);
        assert!(
            opened.iter().any(|p| p.starts_with(&entry)),
            "ps printed pid {} ({}) but no openat of {entry}… was seen; saw {opened:?}",
            process.pid,
            process.name
        );
    }
}
