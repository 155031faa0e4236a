//! Finding the running kernel in guest memory at attach time: no KASLR offset
//! is ever configured.
//!
//! The idle task `init_task` is statically allocated in the kernel image and
//! its `comm` is `swapper/0`. For each place that name appears in physical
//! memory we assume a `task_struct` around it and keep the first candidate
//! that is self-consistent: pid 0, `files` pointing at the relocated
//! `init_files` (which gives the virtual shift), and the kernel's own page
//! tables translating the relocated `init_task` back to the candidate (which
//! proves the physical shift and the page-table root). Volatility 3 locates
//! Linux the same way; this is an independent implementation of the idea.

use super::layout::KernelLayout;
use super::scan::scan_physical;
use crate::arch::amd64::{self, PagingMode};
use crate::driver::{PhysicalMemory, Registers};
use crate::error::{Result, VmiError};
use crate::profile::Profile;

/// Base of the kernel image's virtual mapping on x86-64.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// KASLR moves the kernel by at most 1 GiB (`KERNEL_IMAGE_SIZE`).
const MAX_VIRTUAL_SHIFT: u64 = 1 << 30;
const IDLE_COMM: &[u8; 16] = b"swapper/0\0\0\0\0\0\0\0";
/// A guest full of processes named like the idle task must not make attach
/// spin; real memory holds a handful of copies.
const MAX_CANDIDATES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLocation {
    /// Added to link-time symbol addresses to get run-time virtual addresses.
    pub virtual_shift: u64,
    /// Kernel-image physical address = link address - START_KERNEL_MAP + this.
    pub physical_shift: u64,
    /// Physical address of the kernel's top-level page table.
    pub dtb: u64,
    pub paging_mode: PagingMode,
}

impl KernelLocation {
    /// Physical address of a kernel-image symbol, without walking page tables.
    pub fn image_physical(&self, link_address: u64) -> u64 {
        link_address
            .wrapping_sub(START_KERNEL_MAP)
            .wrapping_add(self.physical_shift)
    }
}

/// Confirms the guest runs the kernel the profile describes, by its banner,
/// and returns that banner.
pub fn check_banner(memory: &dyn PhysicalMemory, profile: &Profile) -> Result<Vec<u8>> {
    let expected = profile.banner().ok_or_else(|| VmiError::BadProfile {
        path: profile.path().to_owned(),
        reason: "it carries no linux_banner data; rebuild it with `furnace profile build`".into(),
    })?;
    let mut found_exact = false;
    scan_physical(memory, &expected, |_| {
        found_exact = true;
        Ok(false)
    })?;
    if found_exact {
        return Ok(expected);
    }
    let mut found = None;
    scan_physical(memory, b"Linux version ", |at| {
        let mut line = [0u8; 256];
        let n = line
            .len()
            .min(memory.physical_size().saturating_sub(at) as usize);
        memory.read_physical(at, &mut line[..n])?;
        let end = line[..n]
            .iter()
            .position(|&b| b == b'\n' || b == 0)
            .unwrap_or(n);
        let text = &line[..end];
        // The banner reads "Linux version X (builder) (compiler) #N ..."; the
        // same words also occur in unrelated text, which we skip.
        if text.len() > 40
            && text.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
            && text.contains(&b'#')
        {
            found = Some(String::from_utf8_lossy(text).into_owned());
            return Ok(false);
        }
        Ok(true)
    })?;
    match found {
        Some(found) => Err(VmiError::ProfileMismatch {
            expected: String::from_utf8_lossy(&expected).trim_end().to_owned(),
            found,
        }),
        None => Err(VmiError::KernelNotFound(format!(
            "no Linux banner anywhere in {} MiB of guest memory; is this a booted Linux guest, or a truncated snapshot?",
            memory.physical_ranges().iter().map(|(_, len)| len).sum::<u64>() >> 20
        ))),
    }
}

/// Finds the running kernel. With a vCPU's registers (a live guest) it
/// looks only where the live page tables map the kernel image, which guest
/// users cannot touch; otherwise (a snapshot) it scans for the idle task's
/// name. Either way a candidate must pass every check of [`try_candidate`],
/// the live CR3's translation and the banner among them.
pub fn locate(
    memory: &dyn PhysicalMemory,
    layout: &KernelLayout,
    registers: Option<&Registers>,
    banner: &[u8],
) -> Result<KernelLocation> {
    let check = Check {
        memory,
        layout,
        registers,
        banner,
    };
    if let Some(registers) = registers {
        if let Some(location) = check.through_cr3(registers) {
            return Ok(location);
        }
    }
    let mut candidates = 0usize;
    let mut located = None;
    let mut last_reason =
        String::from("the idle task's name `swapper/0` is nowhere in guest memory");
    scan_physical(memory, IDLE_COMM, |hit| {
        candidates += 1;
        if candidates > MAX_CANDIDATES {
            return Ok(false);
        }
        let Some(task) = hit.checked_sub(layout.task_comm) else {
            return Ok(true);
        };
        match check.candidate(task) {
            Ok(location) => {
                located = Some(location);
                Ok(false)
            }
            Err(reason) => {
                last_reason = format!("candidate init_task at {task:#x}: {reason}");
                Ok(true)
            }
        }
    })?;
    located.ok_or_else(|| {
        VmiError::KernelNotFound(format!(
            "checked {candidates} candidate(s) for init_task; last: {last_reason}"
        ))
    })
}

/// KASLR moves the kernel image in steps of `CONFIG_PHYSICAL_ALIGN`, 2 MiB
/// or a multiple of it.
const KASLR_ALIGN: u64 = 2 << 20;

struct Check<'a> {
    memory: &'a dyn PhysicalMemory,
    layout: &'a KernelLayout,
    registers: Option<&'a Registers>,
    banner: &'a [u8],
}

impl Check<'_> {
    /// Tries each possible KASLR shift of `init_task` through the page
    /// tables the vCPU runs on: at most 512 translations, and a guest user
    /// cannot make any of them land on memory of theirs.
    fn through_cr3(&self, registers: &Registers) -> Option<KernelLocation> {
        let mode = PagingMode::from_cr4(registers.cr4);
        (0..MAX_VIRTUAL_SHIFT / KASLR_ALIGN).find_map(|step| {
            let relocated = self
                .layout
                .symbols
                .init_task
                .wrapping_add(step * KASLR_ALIGN);
            kernel_roots(registers).into_iter().find_map(|root| {
                let task = amd64::translate(self.memory, root, mode, relocated).ok()?;
                self.candidate(task.physical).ok()
            })
        })
    }

    fn candidate(&self, task: u64) -> std::result::Result<KernelLocation, String> {
        try_candidate(self.memory, self.layout, self.registers, task, self.banner)
    }
}

/// The page-table roots a vCPU's CR3 stands for: its own and, when bit 12
/// is set, the kernel half of a page-table-isolation pair, which a vCPU in
/// user mode does not run on (the user half maps almost none of the kernel).
fn kernel_roots(registers: &Registers) -> Vec<u64> {
    let root = amd64::dtb_from_cr3(registers.cr3);
    let mut roots = vec![root];
    if root & PTI_USER_BIT != 0 {
        roots.push(root & !PTI_USER_BIT);
    }
    roots
}

const PTI_USER_BIT: u64 = 1 << 12;

fn try_candidate(
    memory: &dyn PhysicalMemory,
    layout: &KernelLayout,
    registers: Option<&Registers>,
    task: u64,
    banner: &[u8],
) -> std::result::Result<KernelLocation, String> {
    // `task` is a hit in guest memory; the offsets come from the profile.
    let read_u64 = |offset: u64| -> std::result::Result<u64, String> {
        let at = task
            .checked_add(offset)
            .ok_or_else(|| format!("offset {offset:#x} from {task:#x} overflows"))?;
        let mut b = [0u8; 8];
        memory
            .read_physical(at, &mut b)
            .map_err(|e| e.to_string())?;
        Ok(u64::from_le_bytes(b))
    };
    let pid = read_u64(layout.task_pid)? as u32;
    if pid != 0 {
        return Err(format!("pid is {pid}, not 0"));
    }
    let symbols = &layout.symbols;
    let next = read_u64(layout.task_tasks.wrapping_add(layout.list_next))?;
    let prev = read_u64(layout.task_tasks.wrapping_add(layout.list_prev))?;
    let active_mm = read_u64(layout.task_active_mm)?;
    if active_mm == symbols.init_mm && next == prev {
        return Err("an unrelocated copy of the kernel image, not the running kernel".into());
    }
    let virtual_shift = read_u64(layout.task_files)?.wrapping_sub(symbols.init_files);
    if virtual_shift >= MAX_VIRTUAL_SHIFT || virtual_shift & 0xfff != 0 {
        return Err(format!("implausible virtual shift {virtual_shift:#x}"));
    }
    let physical_shift = task.wrapping_sub(symbols.init_task.wrapping_sub(START_KERNEL_MAP));
    if physical_shift & 0xfff != 0 {
        return Err(format!("unaligned physical shift {physical_shift:#x}"));
    }
    let mut location = KernelLocation {
        virtual_shift,
        physical_shift,
        dtb: 0,
        paging_mode: PagingMode::FourLevel,
    };
    location.dtb = location.image_physical(symbols.top_page_table);
    location.paging_mode = match (registers, symbols.pgtable_l5_enabled) {
        (Some(regs), _) => PagingMode::from_cr4(regs.cr4),
        (None, Some(l5)) => {
            let mut b = [0u8; 4];
            memory
                .read_physical(location.image_physical(l5), &mut b)
                .map_err(|e| e.to_string())?;
            if u32::from_le_bytes(b) != 0 {
                PagingMode::FiveLevel
            } else {
                PagingMode::FourLevel
            }
        }
        (None, None) => PagingMode::FourLevel,
    };
    let relocated = symbols.init_task.wrapping_add(virtual_shift);
    let through_page_tables =
        amd64::translate(memory, location.dtb, location.paging_mode, relocated)
            .map_err(|e| format!("kernel page tables do not map init_task: {e}"))?;
    if through_page_tables.physical != task {
        return Err(format!(
            "kernel page tables map init_task to {:#x}, not here",
            through_page_tables.physical
        ));
    }
    // Page tables and a task a guest user sprayed into their own memory can
    // agree with each other; they cannot agree with the vCPU's CR3.
    if let Some(registers) = registers {
        let mode = PagingMode::from_cr4(registers.cr4);
        let live = kernel_roots(registers)
            .into_iter()
            .filter_map(|root| amd64::translate(memory, root, mode, relocated).ok())
            .any(|t| t.physical == task);
        if !live {
            return Err("the vCPU's page tables (CR3) do not map init_task here".into());
        }
    }
    let banner_at = amd64::translate(
        memory,
        location.dtb,
        location.paging_mode,
        symbols.linux_banner.wrapping_add(virtual_shift),
    )
    .map_err(|e| format!("kernel page tables do not map linux_banner: {e}"))?;
    let mut found = vec![0u8; banner.len()];
    memory
        .read_physical(banner_at.physical, &mut found)
        .map_err(|e| format!("linux_banner unreadable: {e}"))?;
    if found != banner {
        return Err("linux_banner there is not the profile's banner".into());
    }
    Ok(location)
}

#[cfg(test)]
#[path = "kaslr_tests.rs"]
mod tests;
