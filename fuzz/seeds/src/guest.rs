//! A small guest-physical image a Linux walker can walk: page tables at 0
//! that map the kernel's link-time addresses onto it, `init_task` and one
//! more task on the task list, an empty module list and the banner, laid
//! out with the fuzz fixture's own offsets. The fuzz targets repeat their
//! memory input cyclically, so an image of `SIZE` bytes stands for all of
//! guest-physical memory.

use furnace_vmi::linux::KernelLayout;
use furnace_vmi::profile::Profile;

pub const SIZE: usize = 0x10000;
/// The kernel's link-time base: PML4 slot 511, PDPT slot 510.
const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;
const PRESENT_WRITABLE: u64 = 0x3;
const HUGE: u64 = 0x80;
/// Where the second task, and the cred both share, sit in the image.
const SECOND_TASK: usize = 0x2000;
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
        // PML4[511] -> PDPT at 0x1000; PDPT[510] = a 1 GiB page at 0, so a
        // kernel address is KERNEL_BASE + its physical address.
        image.put_u64(511 * 8, 0x1000 | PRESENT_WRITABLE);
        image.put_u64(0x1000 + 510 * 8, HUGE | PRESENT_WRITABLE);

        let init_task = layout.symbols.init_task;
        let second = KERNEL_BASE + 0x40_0000 + SECOND_TASK as u64;
        let cred = KERNEL_BASE + CRED as u64;
        let tasks = |task: u64| task + layout.task_tasks;
        for (task, pid, comm, next, prev) in [
            (init_task, 0, "swapper/0", second, second),
            (second, 1, "init", init_task, init_task),
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
        }
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

    fn put_u64_at(&mut self, address: u64, value: u64) {
        self.put_at(address, &value.to_le_bytes());
    }

    fn put_at(&mut self, address: u64, bytes: &[u8]) {
        let physical = address.checked_sub(KERNEL_BASE).expect("a kernel address");
        self.put((physical % SIZE as u64) as usize, bytes);
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.put(offset, &value.to_le_bytes());
    }

    /// Wraps at `SIZE`, as the fuzz targets' memory does.
    fn put(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            let at = (offset + i) % SIZE;
            assert!(
                !self.used[at],
                "the seed image's writes overlap at {at:#x}; move SECOND_TASK or CRED"
            );
            self.bytes[at] = byte;
            self.used[at] = true;
        }
    }
}
