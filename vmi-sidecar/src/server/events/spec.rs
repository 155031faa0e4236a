//! A subscription's request, checked once: which kernel hooks it needs, which
//! permissions, and which hits it wants.

use super::super::limits::Limits;
use super::super::ops::invalid;
use crate::linux::syscall::syscall_number;
use crate::linux::LinuxKernel;
use furnace_api::v1::{self, breakpoint_source::Target, event_spec::Source, Permission};
use furnace_api::{ApiError, ErrorCode};
use std::collections::BTreeSet;
use std::time::Duration;

/// A kernel location the sidecar breaks at for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    SyscallEnter,
    SyscallExit,
    Exec,
    Exit,
    /// A breakpoint an app asked for, at this kernel virtual address.
    Address(u64),
}

/// What a hit looked like, for matching against subscriptions before any
/// costly decoding.
pub struct Probe<'a> {
    pub hook: Hook,
    /// The running task's pid and comm; `None` for timer ticks.
    pub task: Option<(u32, &'a str)>,
    pub syscall: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub hooks: Vec<Hook>,
    pub timer: Option<Duration>,
    /// Syscall numbers wanted; `None` for all.
    syscalls: Option<BTreeSet<u64>>,
    pid: u32,
    comm: String,
    pub sync: bool,
    pub capacity: usize,
}

/// The shortest timer period: ticks faster than this would be a pause loop.
pub const MIN_TIMER_PERIOD: Duration = Duration::from_millis(10);
/// Kernel addresses are in the upper half of the canonical x86-64 space.
const KERNEL_SPACE_START: u64 = 0xffff_8000_0000_0000;

impl Spec {
    /// Checks `spec` and returns it with the permissions it needs.
    pub fn from_request(
        spec: &v1::EventSpec,
        kernel: &LinuxKernel,
        limits: &Limits,
    ) -> Result<(Spec, Vec<Permission>), ApiError> {
        let mut needs = Vec::new();
        let mut hooks = Vec::new();
        let mut timer = None;
        let mut syscalls = None;
        match &spec.source {
            None => return Err(invalid("an event subscription needs a source")),
            Some(Source::Breakpoint(b)) => {
                needs.push(Permission::Events);
                let address = match &b.target {
                    Some(Target::Symbol(symbol)) => kernel
                        .symbol_address(symbol)
                        .map_err(ApiError::from)?
                        .wrapping_add(b.offset),
                    Some(Target::Address(address)) => address.wrapping_add(b.offset),
                    None => return Err(invalid("a breakpoint needs a symbol or an address")),
                };
                if address < KERNEL_SPACE_START {
                    return Err(ApiError::new(
                        ErrorCode::BadAddress,
                        format!(
                            "{address:#x} is not a kernel address; breakpoints go in the kernel"
                        ),
                    ));
                }
                hooks.push(Hook::Address(address));
            }
            Some(Source::Syscall(s)) => {
                needs.push(Permission::Syscalls);
                if !s.enter && !s.exit {
                    return Err(invalid("a syscall subscription needs enter, exit or both"));
                }
                if s.enter {
                    hooks.push(Hook::SyscallEnter);
                }
                if s.exit {
                    hooks.push(Hook::SyscallExit);
                }
                if !s.names.is_empty() {
                    let numbers = s
                        .names
                        .iter()
                        .map(|name| {
                            syscall_number(name).ok_or_else(|| {
                                invalid(format!("no x86-64 syscall is called {name:?}"))
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    syscalls = Some(numbers);
                }
            }
            Some(Source::Process(p)) => {
                needs.push(Permission::Events);
                if !p.exec && !p.exit {
                    return Err(invalid("a process subscription needs exec, exit or both"));
                }
                if p.exec {
                    hooks.push(Hook::Exec);
                }
                if p.exit {
                    hooks.push(Hook::Exit);
                }
            }
            Some(Source::Timer(t)) => {
                needs.push(Permission::Events);
                let period = Duration::from_millis(t.period_ms.into());
                if period < MIN_TIMER_PERIOD {
                    return Err(invalid(format!(
                        "a timer period of {} ms is below the {} ms minimum",
                        t.period_ms,
                        MIN_TIMER_PERIOD.as_millis()
                    )));
                }
                timer = Some(period);
            }
        }
        if spec.sync {
            needs.push(Permission::Pause);
        }
        let capacity = match spec.queue_capacity {
            0 => limits.default_event_queue,
            n => n.min(limits.max_event_queue),
        };
        Ok((
            Spec {
                hooks,
                timer,
                syscalls,
                pid: spec.pid,
                comm: spec.comm.clone(),
                sync: spec.sync,
                capacity: capacity as usize,
            },
            needs,
        ))
    }

    /// A spec for hub tests, without a kernel to resolve symbols against.
    #[cfg(test)]
    pub fn for_tests(request: &v1::EventSpec) -> Spec {
        let hooks = match &request.source {
            Some(Source::Process(p)) => [(p.exec, Hook::Exec), (p.exit, Hook::Exit)]
                .into_iter()
                .filter_map(|(on, hook)| on.then_some(hook))
                .collect(),
            _ => Vec::new(),
        };
        Spec {
            hooks,
            timer: None,
            syscalls: None,
            pid: request.pid,
            comm: request.comm.clone(),
            sync: request.sync,
            capacity: request.queue_capacity as usize,
        }
    }

    /// Whether a hit described by `probe` belongs to this subscription.
    pub fn wants(&self, probe: &Probe) -> bool {
        if !self.hooks.contains(&probe.hook) {
            return false;
        }
        if let (Some(wanted), Some(number)) = (&self.syscalls, probe.syscall) {
            if !wanted.contains(&number) {
                return false;
            }
        }
        match probe.task {
            Some((pid, comm)) => {
                (self.pid == 0 || self.pid == pid) && (self.comm.is_empty() || self.comm == comm)
            }
            None => self.pid == 0 && self.comm.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hooks: Vec<Hook>, syscalls: Option<&[u64]>, pid: u32, comm: &str) -> Spec {
        Spec {
            hooks,
            timer: None,
            syscalls: syscalls.map(|s| s.iter().copied().collect()),
            pid,
            comm: comm.into(),
            sync: false,
            capacity: 8,
        }
    }

    #[test]
    fn filters_narrow_by_hook_syscall_pid_and_comm() {
        let openat_by_cat = spec(vec![Hook::SyscallEnter], Some(&[257]), 0, "cat");
        let probe = |hook, pid, comm, syscall| Probe {
            hook,
            task: Some((pid, comm)),
            syscall,
        };
        assert!(openat_by_cat.wants(&probe(Hook::SyscallEnter, 7, "cat", Some(257))));
        assert!(!openat_by_cat.wants(&probe(Hook::SyscallEnter, 7, "cat", Some(0))));
        assert!(!openat_by_cat.wants(&probe(Hook::SyscallEnter, 7, "sh", Some(257))));
        assert!(!openat_by_cat.wants(&probe(Hook::SyscallExit, 7, "cat", Some(257))));
        let pid_9 = spec(vec![Hook::Exec, Hook::Exit], None, 9, "");
        assert!(pid_9.wants(&probe(Hook::Exit, 9, "sleep", None)));
        assert!(!pid_9.wants(&probe(Hook::Exit, 10, "sleep", None)));
        let timer_probe = Probe {
            hook: Hook::Exit,
            task: None,
            syscall: None,
        };
        assert!(!pid_9.wants(&timer_probe), "a pid filter needs a task");
    }
}
