//! A system call as the kernel receives it. At the entry of
//! `do_syscall_64(struct pt_regs *regs, int nr)` the vCPU's `rdi` points at
//! the user registers the syscall instruction saved, `gs_base` at the CPU's
//! per-cpu area, and the per-cpu `current_task` names the caller.

use super::LinuxKernel;
use crate::driver::Registers;
use crate::error::{Result, VmiError};

/// Where `do_syscall_64`'s inputs live, from the profile.
#[derive(Debug, Clone, Copy)]
pub struct SyscallLayout {
    /// `do_syscall_64`'s address in the running kernel (KASLR applied).
    pub entry: u64,
    orig_ax: u64,
    /// `pt_regs.di`, `si`, `dx`, `r10`, `r8`, `r9`: the x86-64 syscall argument registers.
    arguments: [u64; 6],
    /// `current_task`'s offset in the per-cpu area (per-cpu symbols are not relocated).
    current_task: u64,
}

/// One syscall entry, with who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallEnter {
    pub number: u64,
    /// The x86-64 name, e.g. `openat`; `None` for a number Linux does not define.
    pub name: Option<&'static str>,
    pub arguments: [u64; 6],
    /// The thread-group id (what `ps` calls the pid) and the thread's own id.
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    /// The page-table root the call was made under, for reading its pointers.
    pub dtb: u64,
}

const TASK_COMM_LEN: usize = 16;
/// `PATH_MAX`, counting the terminating NUL.
pub const PATH_MAX: usize = 4096;
/// CR3 bits 12-51 are the page-table root; the rest are PCID and flags.
const CR3_FRAME: u64 = 0x000f_ffff_ffff_f000;

impl LinuxKernel {
    pub fn syscall_layout(&self) -> Result<SyscallLayout> {
        let p = self.profile();
        let regs = |member| p.member_offset("pt_regs", member);
        Ok(SyscallLayout {
            entry: self.symbol_address("do_syscall_64")?,
            orig_ax: regs("orig_ax")?,
            arguments: [
                regs("di")?,
                regs("si")?,
                regs("dx")?,
                regs("r10")?,
                regs("r8")?,
                regs("r9")?,
            ],
            current_task: current_task_offset(p)?,
        })
    }

    /// Decodes the syscall a vCPU stopped at `do_syscall_64` is entering.
    pub fn syscall_enter(&self, layout: &SyscallLayout, vcpu: &Registers) -> Result<SyscallEnter> {
        if vcpu.rip != layout.entry {
            return Err(VmiError::InvalidArgument(format!(
                "the vCPU is at {:#x}, not at do_syscall_64 ({:#x})",
                vcpu.rip, layout.entry
            )));
        }
        let pt_regs = vcpu.gpr[5]; // rdi
        let number = self.read_kernel_u64(pt_regs + layout.orig_ax)?;
        let mut arguments = [0u64; 6];
        for (value, offset) in arguments.iter_mut().zip(layout.arguments) {
            *value = self.read_kernel_u64(pt_regs + offset)?;
        }
        let task = self.read_kernel_u64(vcpu.gs_base + layout.current_task)?;
        let l = &self.layout;
        let cred = self.read_kernel_u64(task + l.task_real_cred)?;
        Ok(SyscallEnter {
            number,
            name: usize::try_from(number)
                .ok()
                .and_then(syscalls::Sysno::new)
                .map(|s| s.name()),
            arguments,
            pid: self.read_kernel_u32(task + l.task_tgid)?,
            tid: self.read_kernel_u32(task + l.task_pid)?,
            comm: self.read_kernel_cstring(task + l.task_comm, TASK_COMM_LEN)?,
            uid: self.read_kernel_u32(cred + l.cred_uid)?,
            dtb: vcpu.cr3 & CR3_FRAME,
        })
    }
}

/// The per-cpu offset of the running task: the `current_task` variable up to
/// Linux 6.1, a member of `pcpu_hot` from 6.2 on.
fn current_task_offset(p: &crate::profile::Profile) -> Result<u64> {
    match p.symbol("current_task") {
        Ok(offset) => Ok(offset),
        Err(_) => Ok(p.symbol("pcpu_hot")? + p.member_offset("pcpu_hot", "current_task")?),
    }
}

/// Which argument of syscall `name` is a path, for the ones that take one.
pub fn path_argument(name: &str) -> Option<usize> {
    match name {
        "open" | "creat" | "stat" | "lstat" | "access" | "chdir" | "mkdir" | "rmdir" | "unlink"
        | "readlink" | "truncate" | "chmod" | "chown" | "lchown" | "execve" | "statfs"
        | "chroot" | "acct" | "swapon" | "swapoff" | "uselib" | "mknod" | "utime" | "utimes"
        | "rename" | "link" | "symlink" => Some(0),
        "openat" | "openat2" | "newfstatat" | "faccessat" | "faccessat2" | "mkdirat"
        | "unlinkat" | "readlinkat" | "fchmodat" | "fchownat" | "execveat" | "mknodat"
        | "utimensat" | "futimesat" | "renameat" | "renameat2" | "linkat" | "statx"
        | "name_to_handle_at" => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_arguments_are_where_the_kernel_takes_them() {
        assert_eq!(path_argument("openat"), Some(1));
        assert_eq!(path_argument("execve"), Some(0));
        assert_eq!(path_argument("read"), None);
        assert_eq!(syscalls::Sysno::new(257).map(|s| s.name()), Some("openat"));
        assert_eq!(syscalls::Sysno::new(59).map(|s| s.name()), Some("execve"));
    }
}
