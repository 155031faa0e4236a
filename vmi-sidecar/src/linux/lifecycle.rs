//! Process exec and exit, at the kernel functions every one passes through:
//! `begin_new_exec(struct linux_binprm *bprm)`, past exec's point of no
//! return, and `do_exit(long code)`.

use super::current::{current_task_offset, Caller};
use super::syscall::PATH_MAX;
use super::{field, LinuxKernel};
use crate::driver::Registers;
use crate::error::Result;

#[derive(Debug, Clone, Copy)]
pub struct LifecycleLayout {
    /// `begin_new_exec` and `do_exit` in the running kernel.
    pub exec: u64,
    pub exit: u64,
    bprm_filename: u64,
    current_task: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// The file being executed, as the caller named it to execve.
    pub filename: String,
    /// The task before the exec: its comm is still the old program's.
    pub caller: Caller,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// As `do_exit` takes it: `status << 8` for exit(status), else the signal.
    pub code: i64,
    pub caller: Caller,
}

impl LinuxKernel {
    pub fn lifecycle_layout(&self) -> Result<LifecycleLayout> {
        let p = self.profile();
        Ok(LifecycleLayout {
            exec: self.symbol_address("begin_new_exec")?,
            exit: self.symbol_address("do_exit")?,
            bprm_filename: p.member_offset("linux_binprm", "filename")?,
            current_task: current_task_offset(p)?,
        })
    }

    /// Decodes a vCPU stopped at `begin_new_exec`.
    pub fn exec(&self, layout: &LifecycleLayout, vcpu: &Registers) -> Result<Exec> {
        let bprm = vcpu.gpr[5]; // rdi
        let filename = self.read_kernel_u64(field(bprm, layout.bprm_filename)?)?;
        Ok(Exec {
            filename: self.read_kernel_cstring(filename, PATH_MAX)?,
            caller: self.caller(self.current_task(layout.current_task, vcpu)?, vcpu)?,
        })
    }

    /// Decodes a vCPU stopped at `do_exit`.
    pub fn exit(&self, layout: &LifecycleLayout, vcpu: &Registers) -> Result<Exit> {
        Ok(Exit {
            code: vcpu.gpr[5] as i64,
            caller: self.caller(self.current_task(layout.current_task, vcpu)?, vcpu)?,
        })
    }
}
