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

/// Confirms the guest runs the kernel the profile describes, by its banner.
pub fn check_banner(memory: &dyn PhysicalMemory, profile: &Profile) -> Result<()> {
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
        return Ok(());
    }
    let mut found = None;
    scan_physical(memory, b"Linux version ", |at| {
        let mut line = [0u8; 256];
        let n = line.len().min((memory.physical_size() - at) as usize);
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

pub fn locate(
    memory: &dyn PhysicalMemory,
    layout: &KernelLayout,
    registers: Option<&Registers>,
) -> Result<KernelLocation> {
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
        match try_candidate(memory, layout, registers, task) {
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

fn try_candidate(
    memory: &dyn PhysicalMemory,
    layout: &KernelLayout,
    registers: Option<&Registers>,
    task: u64,
) -> std::result::Result<KernelLocation, String> {
    let read_u64 = |at: u64| -> std::result::Result<u64, String> {
        let mut b = [0u8; 8];
        memory
            .read_physical(at, &mut b)
            .map_err(|e| e.to_string())?;
        Ok(u64::from_le_bytes(b))
    };
    let pid = read_u64(task + layout.task_pid)? as u32;
    if pid != 0 {
        return Err(format!("pid is {pid}, not 0"));
    }
    let symbols = &layout.symbols;
    let next = read_u64(task + layout.task_tasks + layout.list_next)?;
    let prev = read_u64(task + layout.task_tasks + layout.list_prev)?;
    let active_mm = read_u64(task + layout.task_active_mm)?;
    if active_mm == symbols.init_mm && next == prev {
        return Err("an unrelocated copy of the kernel image, not the running kernel".into());
    }
    let virtual_shift = read_u64(task + layout.task_files)?.wrapping_sub(symbols.init_files);
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
    Ok(location)
}
