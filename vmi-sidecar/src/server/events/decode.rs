//! A hit, decoded into what an app receives: who was running, and what the
//! hooked function was given.

use super::spec::Hook;
use crate::driver::Registers;
use crate::error::{Result, VmiError};
use crate::linux::current::Caller;
use crate::linux::lifecycle::LifecycleLayout;
use crate::linux::syscall::{
    handler_symbol, path_argument, syscall_name, Signature, SyscallLayout, PATH_MAX,
};
use crate::linux::LinuxKernel;
use furnace_api::v1::{self, event::Detail};
use std::collections::HashMap;
use std::sync::Arc;

/// One hit of one hook, decoded as far as matching needs.
pub enum Decoded {
    SyscallEnter(crate::linux::syscall::SyscallEnter),
    SyscallExit(crate::linux::syscall::SyscallExit),
    Exec(crate::linux::lifecycle::Exec),
    Exit(crate::linux::lifecycle::Exit),
    Address { caller: Caller },
}

impl Decoded {
    pub fn caller(&self) -> &Caller {
        match self {
            Decoded::SyscallEnter(c) => &c.caller,
            Decoded::SyscallExit(c) => &c.caller,
            Decoded::Exec(e) => &e.caller,
            Decoded::Exit(e) => &e.caller,
            Decoded::Address { caller } => caller,
        }
    }

    pub fn syscall(&self) -> Option<u64> {
        match self {
            Decoded::SyscallEnter(c) => Some(c.number),
            Decoded::SyscallExit(c) => Some(c.number),
            _ => None,
        }
    }
}

/// Hook addresses and the kernel's syscall signatures, looked up once.
pub struct Decoder {
    kernel: Arc<LinuxKernel>,
    syscall: Option<SyscallLayout>,
    lifecycle: Option<LifecycleLayout>,
    current_task: Option<u64>,
    signatures: HashMap<u64, Option<Arc<Signature>>>,
}

impl Decoder {
    pub fn new(kernel: Arc<LinuxKernel>) -> Self {
        Decoder {
            kernel,
            syscall: None,
            lifecycle: None,
            current_task: None,
            signatures: HashMap::new(),
        }
    }

    fn syscall_layout(&mut self) -> Result<SyscallLayout> {
        if self.syscall.is_none() {
            self.syscall = Some(self.kernel.syscall_layout()?);
        }
        Ok(self.syscall.expect("just set"))
    }

    fn lifecycle_layout(&mut self) -> Result<LifecycleLayout> {
        if self.lifecycle.is_none() {
            self.lifecycle = Some(self.kernel.lifecycle_layout()?);
        }
        Ok(self.lifecycle.expect("just set"))
    }

    /// Where `hook` is in the running kernel.
    pub fn address(&mut self, hook: Hook) -> Result<u64> {
        Ok(match hook {
            Hook::SyscallEnter => self.syscall_layout()?.entry,
            Hook::SyscallHandler(number) => {
                let name = syscall_name(number).ok_or_else(|| {
                    VmiError::InvalidArgument(format!("no x86-64 syscall {number}"))
                })?;
                self.kernel.symbol_address(&handler_symbol(name))?
            }
            Hook::SyscallExit => self.syscall_layout()?.exit.ok_or(VmiError::Unsupported(
                "syscall exits on this kernel (no syscall_exit_to_user_mode)",
            ))?,
            Hook::Exec => self.lifecycle_layout()?.exec,
            Hook::Exit => self.lifecycle_layout()?.exit,
            Hook::Address(address) => address,
        })
    }

    /// What the instruction at `address` does, where the engine can do it
    /// for the vCPU instead of single-stepping.
    pub fn emulation_at(&self, address: u64) -> Option<crate::arch::emulate::Emulation> {
        let mut code = [0u8; 8];
        self.kernel.read_kernel(address, &mut code).ok()?;
        crate::arch::emulate::first_instruction(&code)
    }

    pub fn kernel(&self) -> &LinuxKernel {
        &self.kernel
    }

    pub fn decode(&mut self, hook: Hook, vcpu: &Registers) -> Result<Decoded> {
        let k = Arc::clone(&self.kernel);
        Ok(match hook {
            Hook::SyscallEnter => {
                Decoded::SyscallEnter(k.syscall_enter(&self.syscall_layout()?, vcpu)?)
            }
            Hook::SyscallHandler(_) => {
                Decoded::SyscallEnter(k.syscall_handler_enter(&self.syscall_layout()?, vcpu)?)
            }
            Hook::SyscallExit => {
                Decoded::SyscallExit(k.syscall_exit(&self.syscall_layout()?, vcpu)?)
            }
            Hook::Exec => Decoded::Exec(k.exec(&self.lifecycle_layout()?, vcpu)?),
            Hook::Exit => Decoded::Exit(k.exit(&self.lifecycle_layout()?, vcpu)?),
            Hook::Address(_) => {
                if self.current_task.is_none() {
                    self.current_task =
                        Some(crate::linux::current::current_task_offset(k.profile())?);
                }
                let task = k.current_task(self.current_task.expect("just set"), vcpu)?;
                Decoded::Address {
                    caller: k.caller(task, vcpu)?,
                }
            }
        })
    }

    /// The event detail apps receive, reading string arguments from the caller.
    pub fn detail(&mut self, decoded: &Decoded, vcpu: &Registers) -> Detail {
        match decoded {
            Decoded::SyscallEnter(call) => {
                let signature = self.signature(call.number, call.name);
                let arguments = (0..signature.as_ref().map_or(6, |s| s.arguments.len()))
                    .map(|i| {
                        let value = call.arguments[i];
                        let (ty, name) = signature.as_ref().map_or_else(
                            || (String::new(), format!("arg{i}")),
                            |s| s.arguments[i].clone(),
                        );
                        let is_string = match &signature {
                            Some(s) => s.is_input_string(i),
                            None => call.name.and_then(path_argument) == Some(i),
                        };
                        let text = is_string
                            .then(|| {
                                self.kernel
                                    .read_cstring(call.caller.dtb, value, PATH_MAX)
                                    .ok()
                            })
                            .flatten();
                        v1::SyscallArgument {
                            name,
                            r#type: ty,
                            value,
                            text,
                        }
                    })
                    .collect();
                Detail::SyscallEnter(v1::SyscallEnter {
                    number: call.number,
                    name: call.name.unwrap_or_default().into(),
                    arguments,
                })
            }
            Decoded::SyscallExit(ret) => Detail::SyscallExit(v1::SyscallExit {
                number: ret.number,
                name: ret.name.unwrap_or_default().into(),
                value: ret.value,
            }),
            Decoded::Exec(exec) => Detail::Exec(v1::ProcessExec {
                filename: exec.filename.clone(),
            }),
            Decoded::Exit(exit) => Detail::Exit(v1::ProcessExit { code: exit.code }),
            Decoded::Address { .. } => Detail::Breakpoint(v1::BreakpointHit {
                address: vcpu.rip,
                registers: Some(registers_message(vcpu)),
            }),
        }
    }

    fn signature(&mut self, number: u64, name: Option<&str>) -> Option<Arc<Signature>> {
        if let Some(known) = self.signatures.get(&number) {
            return known.clone();
        }
        let found = match (name, self.syscall) {
            (Some(name), Some(layout)) => {
                self.kernel.syscall_signature(&layout, name).map(Arc::new)
            }
            _ => None,
        };
        self.signatures.insert(number, found.clone());
        found
    }
}

pub fn task_message(caller: &Caller) -> v1::Task {
    v1::Task {
        pid: caller.pid,
        tid: caller.tid,
        ppid: caller.ppid,
        uid: caller.uid,
        comm: caller.comm.clone(),
        dtb: caller.dtb,
    }
}

pub fn registers_message(r: &Registers) -> v1::Registers {
    v1::Registers {
        rip: r.rip,
        rsp: r.rsp,
        rflags: r.rflags,
        cr0: r.cr0,
        cr2: r.cr2,
        cr3: r.cr3,
        cr4: r.cr4,
        efer: r.efer,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        gpr: r.gpr.to_vec(),
    }
}

/// The vCPU index of a gdbstub thread id (`01`, or `p1.02` in multiprocess
/// form): threads count from 1.
pub fn vcpu_of_thread(thread: &str) -> u32 {
    let id = thread.rsplit('.').next().unwrap_or(thread);
    u32::from_str_radix(id, 16).map_or(0, |n| n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdb_threads_count_vcpus_from_one() {
        assert_eq!(vcpu_of_thread("01"), 0);
        assert_eq!(vcpu_of_thread("0a"), 9);
        assert_eq!(vcpu_of_thread("p1.02"), 1);
        assert_eq!(vcpu_of_thread("junk"), 0);
    }
}
