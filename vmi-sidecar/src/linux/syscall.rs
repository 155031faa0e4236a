//! A system call as the kernel receives it and as it returns. At the entry of
//! `do_syscall_64(struct pt_regs *regs, int nr)`, and of
//! `syscall_exit_to_user_mode(struct pt_regs *regs)` on the way back, the
//! vCPU's `rdi` points at the user registers the syscall instruction saved.
//! The caller is the per-cpu current task ([`super::current`]).

use super::current::{current_task_offset, Caller};
use super::{field, LinuxKernel};
use crate::driver::Registers;
use crate::error::{Result, VmiError};

/// Where the syscall hooks' inputs live, from the profile.
#[derive(Debug, Clone, Copy)]
pub struct SyscallLayout {
    /// `do_syscall_64`'s address in the running kernel (KASLR applied).
    pub entry: u64,
    /// `syscall_exit_to_user_mode`'s, where the return value is in `pt_regs.ax`.
    pub exit: Option<u64>,
    orig_ax: u64,
    ax: u64,
    /// `pt_regs.di`, `si`, `dx`, `r10`, `r8`, `r9`: the x86-64 syscall argument registers.
    arguments: [u64; 6],
    current_task: u64,
    metadata: Option<MetadataLayout>,
}

/// `struct syscall_metadata` (kernel/trace, with CONFIG_FTRACE_SYSCALLS): the
/// kernel's own names and C types of each call's arguments.
#[derive(Debug, Clone, Copy)]
struct MetadataLayout {
    nb_args: u64,
    types: u64,
    args: u64,
}

/// One syscall entry, with who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallEnter {
    pub number: u64,
    /// The x86-64 name, e.g. `openat`; `None` for a number Linux does not define.
    pub name: Option<&'static str>,
    pub arguments: [u64; 6],
    pub caller: Caller,
}

/// One syscall return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallExit {
    pub number: u64,
    pub name: Option<&'static str>,
    /// What the call returns: a negative errno on failure.
    pub value: i64,
    pub caller: Caller,
}

/// A call's arguments as the kernel declares them, e.g. openat's
/// `int dfd, const char __user * filename, int flags, umode_t mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// (C type, name) per argument.
    pub arguments: Vec<(String, String)>,
}

impl Signature {
    /// Whether argument `index` is a string the caller passes in (a path or
    /// a name), which is worth reading from its memory.
    pub fn is_input_string(&self, index: usize) -> bool {
        self.arguments.get(index).is_some_and(|(ty, name)| {
            ty.starts_with("const char")
                && ty.ends_with('*')
                && (name.contains("name") || name.contains("path"))
        })
    }
}

/// `PATH_MAX`, counting the terminating NUL.
pub const PATH_MAX: usize = 4096;
/// The longest argument name or type read from the kernel's metadata.
const METADATA_STRING_MAX: usize = 128;

impl LinuxKernel {
    pub fn syscall_layout(&self) -> Result<SyscallLayout> {
        let p = self.profile();
        let regs = |member| p.member_offset("pt_regs", member);
        let metadata = |member| p.member_offset("syscall_metadata", member);
        Ok(SyscallLayout {
            entry: self.symbol_address("do_syscall_64")?,
            exit: self.symbol_address("syscall_exit_to_user_mode").ok(),
            orig_ax: regs("orig_ax")?,
            ax: regs("ax")?,
            arguments: [
                regs("di")?,
                regs("si")?,
                regs("dx")?,
                regs("r10")?,
                regs("r8")?,
                regs("r9")?,
            ],
            current_task: current_task_offset(p)?,
            metadata: (|| {
                Ok::<_, VmiError>(MetadataLayout {
                    nb_args: metadata("nb_args")?,
                    types: metadata("types")?,
                    args: metadata("args")?,
                })
            })()
            .ok(),
        })
    }

    /// Decodes the syscall a vCPU stopped at `do_syscall_64` is entering.
    pub fn syscall_enter(&self, layout: &SyscallLayout, vcpu: &Registers) -> Result<SyscallEnter> {
        expect_at(vcpu, layout.entry, "do_syscall_64")?;
        self.decode_enter(layout, vcpu)
    }

    /// Decodes the syscall a vCPU stopped at its handler (`__x64_sys_<name>`,
    /// which also takes the `pt_regs` in `rdi`) is entering.
    pub fn syscall_handler_enter(
        &self,
        layout: &SyscallLayout,
        vcpu: &Registers,
    ) -> Result<SyscallEnter> {
        self.decode_enter(layout, vcpu)
    }

    fn decode_enter(&self, layout: &SyscallLayout, vcpu: &Registers) -> Result<SyscallEnter> {
        let pt_regs = vcpu.gpr[5]; // rdi
        let number = self.read_kernel_u64(field(pt_regs, layout.orig_ax)?)?;
        let mut arguments = [0u64; 6];
        for (value, offset) in arguments.iter_mut().zip(layout.arguments) {
            *value = self.read_kernel_u64(field(pt_regs, offset)?)?;
        }
        Ok(SyscallEnter {
            number,
            name: syscall_name(number),
            arguments,
            caller: self.caller(self.current_task(layout.current_task, vcpu)?, vcpu)?,
        })
    }

    /// Decodes the return a vCPU stopped at `syscall_exit_to_user_mode` is making.
    pub fn syscall_exit(&self, layout: &SyscallLayout, vcpu: &Registers) -> Result<SyscallExit> {
        let exit = layout.exit.ok_or(VmiError::Unsupported(
            "syscall exits (no syscall_exit_to_user_mode)",
        ))?;
        expect_at(vcpu, exit, "syscall_exit_to_user_mode")?;
        let pt_regs = vcpu.gpr[5];
        let number = self.read_kernel_u64(field(pt_regs, layout.orig_ax)?)?;
        Ok(SyscallExit {
            number,
            name: syscall_name(number),
            value: self.read_kernel_u64(field(pt_regs, layout.ax)?)? as i64,
            caller: self.caller(self.current_task(layout.current_task, vcpu)?, vcpu)?,
        })
    }

    /// The kernel's own declaration of syscall `name`, from its
    /// `__syscall_meta__<name>`; `None` where the kernel has none.
    pub fn syscall_signature(&self, layout: &SyscallLayout, name: &str) -> Option<Signature> {
        let m = layout.metadata?;
        let meta = self
            .symbol_address(&format!("__syscall_meta__{name}"))
            .ok()?;
        let count = self.read_kernel_u32(field(meta, m.nb_args).ok()?).ok()? as usize;
        if count > 6 {
            return None;
        }
        let types = self.read_kernel_u64(field(meta, m.types).ok()?).ok()?;
        let names = self.read_kernel_u64(field(meta, m.args).ok()?).ok()?;
        let string_at = |array: u64, i: usize| -> Option<String> {
            let pointer = self
                .read_kernel_u64(field(array, 8 * i as u64).ok()?)
                .ok()?;
            self.read_kernel_cstring(pointer, METADATA_STRING_MAX).ok()
        };
        let arguments = (0..count)
            .map(|i| Some((string_at(types, i)?, string_at(names, i)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Signature { arguments })
    }
}

fn expect_at(vcpu: &Registers, address: u64, function: &str) -> Result<()> {
    if vcpu.rip == address {
        return Ok(());
    }
    Err(VmiError::InvalidArgument(format!(
        "the vCPU is at {:#x}, not at {function} ({address:#x})",
        vcpu.rip
    )))
}

/// The x86-64 name of syscall `number`.
pub fn syscall_name(number: u64) -> Option<&'static str> {
    usize::try_from(number)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map(|s| s.name())
}

/// The symbol of syscall `name`'s handler, which `do_syscall_64` calls
/// through the syscall table.
pub fn handler_symbol(name: &str) -> String {
    format!("__x64_sys_{name}")
}

/// The x86-64 number of syscall `name`.
pub fn syscall_number(name: &str) -> Option<u64> {
    name.parse::<syscalls::Sysno>().ok().map(|s| s.id() as u64)
}

/// Which argument of syscall `name` is a path, for the ones that take one.
/// Used where the kernel carries no syscall metadata.
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
        assert_eq!(syscall_name(257), Some("openat"));
        assert_eq!(syscall_name(59), Some("execve"));
        assert_eq!(syscall_name(100_000), None);
        assert_eq!(syscall_number("openat"), Some(257));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn input_strings_are_const_char_pointers_named_as_paths_or_names() {
        let openat = Signature {
            arguments: [
                ("int", "dfd"),
                ("const char __user *", "filename"),
                ("int", "flags"),
                ("umode_t", "mode"),
            ]
            .map(|(t, n)| (t.to_owned(), n.to_owned()))
            .to_vec(),
        };
        assert!(openat.is_input_string(1));
        assert!(!openat.is_input_string(0));
        assert!(!openat.is_input_string(9));
        let write = Signature {
            arguments: vec![("const char __user *".into(), "buf".into())],
        };
        assert!(!write.is_input_string(0), "a write buffer is not a string");
    }
}
