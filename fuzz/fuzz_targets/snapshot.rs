//! A snapshot file as `furnace vmi --snapshot` opens it: a raw dump or a
//! `dump-guest-memory` ELF core whose program headers say where guest
//! memory is. It is then attached, which scans it for the kernel.
#![no_main]

use furnace_fuzz::profile;
use furnace_vmi::driver::snapshot::Snapshot;
use furnace_vmi::driver::PhysicalMemory;
use furnace_vmi::linux::LinuxKernel;
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    // SAFETY: memfd_create with a static NUL-terminated name has no other
    // precondition; a new descriptor is owned here or it failed.
    let fd = unsafe { libc::memfd_create(c"snapshot".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(data).expect("memfd write");
    let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
    let Ok(snapshot) = Snapshot::open(&path) else {
        return;
    };
    let mut buf = [0u8; 64];
    for (start, len) in snapshot.physical_ranges() {
        let n = buf.len().min(len as usize);
        snapshot
            .read_physical(start, &mut buf[..n])
            .expect("every range the snapshot reports is readable");
        let _ = snapshot.read_physical(start.saturating_add(len).saturating_sub(1), &mut buf);
    }
    let _ = LinuxKernel::attach(Box::new(snapshot), profile());
});
