//! Who is running on a vCPU: the per-cpu `current_task`, reached through the
//! vCPU's `gs_base`, and what `ps` would say about it.

use super::{field, LinuxKernel};
use crate::driver::Registers;
use crate::error::Result;
use crate::profile::Profile;

/// The task a vCPU was running when it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The thread-group id (what `ps` calls the pid) and the thread's own id.
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    /// The page-table root the vCPU runs under, for reading the caller's pointers.
    pub dtb: u64,
}

const TASK_COMM_LEN: usize = 16;
/// CR3 bits 12-51 are the page-table root; the rest are PCID and flags.
const CR3_FRAME: u64 = 0x000f_ffff_ffff_f000;

/// The per-cpu offset of the running task: the `current_task` variable up to
/// Linux 6.1, a member of `pcpu_hot` from 6.2 on. Per-cpu symbols are
/// offsets into the per-cpu area, which KASLR does not move, so they are used raw.
pub fn current_task_offset(p: &Profile) -> Result<u64> {
    match p.symbol("current_task") {
        Ok(offset) => Ok(offset),
        Err(_) => Ok(p
            .symbol("pcpu_hot")?
            .wrapping_add(p.member_offset("pcpu_hot", "current_task")?)),
    }
}

impl LinuxKernel {
    /// The `task_struct` address a vCPU is running, given [`current_task_offset`].
    pub fn current_task(&self, current_task_offset: u64, vcpu: &Registers) -> Result<u64> {
        self.read_kernel_u64(field(vcpu.gs_base, current_task_offset)?)
    }

    /// Identifies `task`, which `vcpu` is running.
    pub fn caller(&self, task: u64, vcpu: &Registers) -> Result<Caller> {
        let l = &self.layout;
        let cred = self.read_kernel_u64(field(task, l.task_real_cred)?)?;
        let parent = self.read_kernel_u64(field(task, l.task_real_parent)?)?;
        Ok(Caller {
            pid: self.read_kernel_u32(field(task, l.task_tgid)?)?,
            tid: self.read_kernel_u32(field(task, l.task_pid)?)?,
            ppid: self.read_kernel_u32(field(parent, l.task_tgid)?)?,
            uid: self.read_kernel_u32(field(cred, l.cred_uid)?)?,
            comm: self.read_kernel_cstring(field(task, l.task_comm)?, TASK_COMM_LEN)?,
            dtb: vcpu.cr3 & CR3_FRAME,
        })
    }
}
