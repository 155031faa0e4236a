//! A small guest-physical image a Linux walker can walk, for unit tests and
//! the fuzz seeds (`fuzz/seeds`): page tables at 0 that map the kernel's
//! link-time addresses onto it, `init_task` and a user process (pid 1,
//! with its own page-table root) on the task list, an empty module list
//! and the banner, laid out with [`profile`]'s offsets. The image repeats
//! as the fuzz targets' memory does, so `SIZE` bytes stand for all of
//! guest-physical memory; [`ImageMemory`] reads it that way.

use super::{KernelLayout, KernelLocation, LinuxKernel};
use crate::arch::amd64::PagingMode;
use crate::driver::{Driver, PhysicalMemory};
use crate::error::Result;
use crate::profile::Profile;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The struct offsets and symbols of Debian's 6.1 cloud kernel, trimmed to
/// what the walkers use.
pub const PROFILE_JSON: &[u8] = include_bytes!("../../testdata/profile.json");

pub fn profile() -> Profile {
    Profile::from_json(Path::new("testdata/profile.json"), PROFILE_JSON).expect("the fixture loads")
}

pub const SIZE: usize = 0x10000;
/// The kernel's link-time base: PML4 slot 511, PDPT slot 510.
const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;
const PRESENT_WRITABLE: u64 = 0x3;
const HUGE: u64 = 0x80;
const KERNEL_ROOT: usize = 0;
const KERNEL_PDPT: usize = 0x1000;
/// Pid 1's page-table root: the kernel half only, as a process's shares it.
pub const USER_ROOT: u64 = 0x3000;
/// Where pid 1's task_struct, its mm and the cred both tasks share sit.
const SECOND_TASK: usize = 0x2000;
const MM: usize = 0x1c00;
const CRED: usize = 0x1800;

pub struct Image {
    bytes: Vec<u8>,
    /// Which bytes something was written to, to catch overlaps.
    used: Vec<bool>,
}

impl Image {
    pub fn build(profile: &Profile) -> Image {
        let layout = KernelLayout::from_profile(profile).expect("the fixture's layout");
        let mut image = Image {
            bytes: vec![0; SIZE],
            used: vec![false; SIZE],
        };
        // PML4[511] -> the PDPT; PDPT[510] = a 1 GiB page at 0, so a kernel
        // address is KERNEL_BASE + its physical address.
        for root in [KERNEL_ROOT, USER_ROOT as usize] {
            image.put(
                root + 511 * 8,
                &(KERNEL_PDPT as u64 | PRESENT_WRITABLE).to_le_bytes(),
            );
        }
        image.put(
            KERNEL_PDPT + 510 * 8,
            &(HUGE | PRESENT_WRITABLE).to_le_bytes(),
        );

        let init_task = layout.symbols.init_task;
        let second = KERNEL_BASE + 0x40_0000 + SECOND_TASK as u64;
        let cred = KERNEL_BASE + CRED as u64;
        let mm = KERNEL_BASE + MM as u64;
        let tasks = |task: u64| task + layout.task_tasks;
        for (task, pid, comm, next, prev, task_mm) in [
            (init_task, 0, "swapper/0", second, second, 0),
            (second, 1, "init", init_task, init_task, mm),
        ] {
            let at = |offset: u64| task + offset;
            image.put_u64_at(at(layout.task_tasks + layout.list_next), tasks(next));
            image.put_u64_at(at(layout.task_tasks + layout.list_prev), tasks(prev));
            image.put_at(at(layout.task_pid), &(pid as u32).to_le_bytes());
            image.put_at(at(layout.task_tgid), &(pid as u32).to_le_bytes());
            let mut name = [0u8; 16];
            name[..comm.len()].copy_from_slice(comm.as_bytes());
            image.put_at(at(layout.task_comm), &name);
            image.put_u64_at(at(layout.task_real_parent), init_task);
            image.put_u64_at(at(layout.task_real_cred), cred);
            image.put_u64_at(at(layout.task_files), layout.symbols.init_files);
            image.put_u64_at(at(layout.task_mm), task_mm);
        }
        image.put_u64_at(mm + layout.mm_pgd, KERNEL_BASE + USER_ROOT);
        image.put_at(cred + layout.cred_uid, &0u32.to_le_bytes());
        let modules = layout.symbols.modules;
        image.put_u64_at(modules + layout.list_next, modules);
        image.put_u64_at(modules + layout.list_prev, modules);
        let banner = profile.banner().expect("the fixture has a banner");
        image.put_at(layout.symbols.linux_banner, &banner);
        image
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The physical address the image's page tables map kernel address
    /// `address` to (the image repeats, so its byte `physical % SIZE`).
    pub fn physical(address: u64) -> u64 {
        address.wrapping_sub(KERNEL_BASE)
    }

    fn put_u64_at(&mut self, address: u64, value: u64) {
        self.put_at(address, &value.to_le_bytes());
    }

    fn put_at(&mut self, address: u64, bytes: &[u8]) {
        assert!(address >= KERNEL_BASE, "{address:#x} is no kernel address");
        self.put((Self::physical(address) % SIZE as u64) as usize, bytes);
    }

    /// Wraps at `SIZE`, as the image's readers do.
    fn put(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            let at = (offset + i) % SIZE;
            assert!(
                !self.used[at],
                "the test image's writes overlap at {at:#x}; move SECOND_TASK, MM or CRED"
            );
            self.bytes[at] = byte;
            self.used[at] = true;
        }
    }
}

/// 64 GiB of guest-physical memory made of `bytes`, repeating: any
/// page-table entry points somewhere readable, and lists that wrap round
/// the repetition become the cycles a hostile guest would build.
pub struct ImageMemory {
    bytes: Vec<u8>,
    /// An address whose reads are counted, and the count.
    watched: Option<(u64, Arc<AtomicUsize>)>,
}

impl ImageMemory {
    /// `None` for no bytes, which have nothing to repeat.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (!bytes.is_empty()).then_some(ImageMemory {
            bytes,
            watched: None,
        })
    }

    /// Counts the reads that touch `address` from now on.
    pub fn watch(&mut self, address: u64) -> Arc<AtomicUsize> {
        let count = Arc::new(AtomicUsize::new(0));
        self.watched = Some((address, Arc::clone(&count)));
        count
    }
}

impl PhysicalMemory for ImageMemory {
    fn physical_size(&self) -> u64 {
        64 << 30
    }

    fn read_physical(&self, address: u64, buf: &mut [u8]) -> Result<()> {
        let n = self.bytes.len() as u64;
        let end = address.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.physical_size()) {
            return Err(crate::error::VmiError::BadPhysicalAddress {
                address,
                len: buf.len(),
            });
        }
        if let Some((watched, count)) = &self.watched {
            if (address..address + buf.len() as u64).contains(watched) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = self.bytes[((address + i as u64) % n) as usize];
        }
        Ok(())
    }
}

impl Driver for ImageMemory {
    fn describe(&self) -> String {
        format!("a test image of {} bytes, repeating", self.bytes.len())
    }
}

/// The kernel over `memory`, unrelocated, its page tables at physical 0.
pub fn kernel_over(memory: Box<dyn Driver>, paging_mode: PagingMode) -> LinuxKernel {
    let location = KernelLocation {
        virtual_shift: 0,
        physical_shift: 0,
        dtb: KERNEL_ROOT as u64,
        paging_mode,
    };
    LinuxKernel::at_location(memory, profile(), location).expect("the fixture's layout")
}
