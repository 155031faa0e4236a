//! Walks of kernel lists: the task list (processes) and the module list.

use super::LinuxKernel;
use crate::error::{Result, VmiError};
use furnace_api::{Module, Process};

/// Upper bounds on list walks, so a corrupted or hostile list cannot make a
/// walk run forever. `pid_max` tops out at 2^22; modules are far fewer.
const MAX_TASKS: usize = 1 << 22;
const MAX_MODULES: usize = 1 << 16;
const TASK_COMM_LEN: usize = 16;

impl LinuxKernel {
    /// Every process (thread-group leader) on the task list, init_task excluded,
    /// in list order.
    pub fn processes(&self) -> Result<Vec<Process>> {
        let l = &self.layout;
        let init_task = self.relocate(l.symbols.init_task);
        let tasks = self.list_entries(
            init_task + l.task_tasks,
            l.task_tasks,
            MAX_TASKS,
            "task list",
        )?;
        tasks
            .into_iter()
            .map(|task| self.process_at(task))
            .collect()
    }

    /// The process with thread-group id `pid`.
    pub fn process(&self, pid: u32) -> Result<Process> {
        self.processes()?
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| VmiError::NotFound {
                what: "process",
                name: pid.to_string(),
            })
    }

    /// The page-table root of process `pid`; kernel threads have none.
    pub fn process_dtb(&self, pid: u32) -> Result<u64> {
        match self.process(pid)?.dtb {
            0 => Err(VmiError::InvalidArgument(format!(
                "process {pid} is a kernel thread and has no user address space"
            ))),
            dtb => Ok(dtb),
        }
    }

    fn process_at(&self, task: u64) -> Result<Process> {
        let l = &self.layout;
        let parent = self.read_kernel_u64(task + l.task_real_parent)?;
        let mm = self.read_kernel_u64(task + l.task_mm)?;
        let dtb = match mm {
            0 => 0,
            mm => {
                self.kernel_to_physical(self.read_kernel_u64(mm + l.mm_pgd)?)?
                    .physical
            }
        };
        let cred = self.read_kernel_u64(task + l.task_real_cred)?;
        Ok(Process {
            pid: self.read_kernel_u32(task + l.task_tgid)?,
            ppid: self.read_kernel_u32(parent + l.task_tgid)?,
            name: self.read_kernel_cstring(task + l.task_comm, TASK_COMM_LEN)?,
            uid: self.read_kernel_u32(cred + l.cred_uid)?,
            dtb,
            task,
        })
    }

    /// Loaded kernel modules, in list order (most recently loaded first).
    pub fn modules(&self) -> Result<Vec<Module>> {
        let m = &self.layout.module;
        let head = self.relocate(self.layout.symbols.modules);
        let entries = self.list_entries(head, m.list, MAX_MODULES, "module list")?;
        entries
            .into_iter()
            .map(|module| {
                Ok(Module {
                    name: self.read_kernel_cstring(module + m.name, m.name_len as usize)?,
                    base: self.read_kernel_u64(module + m.core_base)?,
                    size: u64::from(self.read_kernel_u32(module + m.core_size)?),
                    address: module,
                })
            })
            .collect()
    }

    /// The containing objects of a circular `list_head` list, starting after
    /// `head`; `link_offset` is where the `list_head` sits in each object.
    fn list_entries(
        &self,
        head: u64,
        link_offset: u64,
        max: usize,
        what: &str,
    ) -> Result<Vec<u64>> {
        let next_of = |node: u64| self.read_kernel_u64(node + self.layout.list_next);
        let mut entries = Vec::new();
        let mut node = next_of(head)?;
        while node != head {
            if entries.len() == max {
                return Err(VmiError::LimitExceeded(format!(
                    "{what} has more than {max} entries or a cycle that skips its head"
                )));
            }
            entries.push(node.wrapping_sub(link_offset));
            node = next_of(node)?;
        }
        Ok(entries)
    }
}
