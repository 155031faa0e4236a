//! A subscription's request, checked once: which kernel hooks it needs, which
//! permissions, and which hits it wants.

use super::super::ops::invalid;
use crate::linux::syscall::{handler_symbol, syscall_number};
use crate::linux::LinuxKernel;
use furnace_api::v1::{self, breakpoint_source::Target, event_spec::Source, Permission};
use furnace_api::{ApiError, ErrorCode};
use furnace_config::SidecarConfig;
use std::collections::BTreeSet;
use std::time::Duration;

/// A kernel location the sidecar breaks at for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// Every syscall's entry (`do_syscall_64`).
    SyscallEnter,
    /// One syscall's entry, at its handler: only that call stops the guest.
    SyscallHandler(u64),
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

/// Where to catch the entry of the calls `names` (`numbers`): at each
/// call's own handler when the kernel has one for every name, so other calls
/// never stop the guest (each stop is costly under TCG); else at
/// `do_syscall_64`.
fn entry_hooks(
    names: &[String],
    numbers: Option<&BTreeSet<u64>>,
    kernel: &LinuxKernel,
) -> Vec<Hook> {
    let Some(numbers) = numbers else {
        return vec![Hook::SyscallEnter];
    };
    let every_handler_known = names
        .iter()
        .all(|name| kernel.symbol_address(&handler_symbol(name)).is_ok());
    if every_handler_known {
        numbers.iter().map(|n| Hook::SyscallHandler(*n)).collect()
    } else {
        vec![Hook::SyscallEnter]
    }
}

impl Spec {
    /// The permissions a subscription to `spec` needs, checked before
    /// anything in it is looked up.
    pub fn permissions_needed(spec: &v1::EventSpec) -> Vec<Permission> {
        let mut needs = match &spec.source {
            Some(Source::Syscall(_)) => vec![Permission::Syscalls],
            Some(_) => vec![Permission::Events],
            None => Vec::new(),
        };
        if spec.sync {
            needs.push(Permission::Pause);
        }
        needs
    }

    /// Checks `spec` and resolves what it names in the running kernel.
    pub fn from_request(
        spec: &v1::EventSpec,
        kernel: &LinuxKernel,
        limits: &SidecarConfig,
    ) -> Result<Spec, ApiError> {
        let mut hooks = Vec::new();
        let mut timer = None;
        let mut syscalls = None;
        match &spec.source {
            None => return Err(invalid("an event subscription needs a source")),
            Some(Source::Breakpoint(b)) => {
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
                if !s.enter && !s.exit {
                    return Err(invalid("a syscall subscription needs enter, exit or both"));
                }
                if !s.names.is_empty() {
                    let numbers: BTreeSet<u64> = s
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
                if s.enter {
                    hooks.extend(entry_hooks(&s.names, syscalls.as_ref(), kernel));
                }
                if s.exit {
                    hooks.push(Hook::SyscallExit);
                }
            }
            Some(Source::Process(p)) => {
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
        let capacity = match spec.queue_capacity {
            0 => limits.default_event_queue,
            n => n.min(limits.max_event_queue),
        };
        Ok(Spec {
            hooks,
            timer,
            syscalls,
            pid: spec.pid,
            comm: spec.comm.clone(),
            sync: spec.sync,
            capacity: capacity as usize,
        })
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
    fn permissions_follow_the_source_and_sync_adds_pause() {
        let syscalls = v1::EventSpec {
            source: Some(Source::Syscall(v1::SyscallSource::default())),
            ..Default::default()
        };
        assert_eq!(Spec::permissions_needed(&syscalls), [Permission::Syscalls]);
        let sync_timer = v1::EventSpec {
            source: Some(Source::Timer(v1::TimerSource { period_ms: 50 })),
            sync: true,
            ..Default::default()
        };
        assert_eq!(
            Spec::permissions_needed(&sync_timer),
            [Permission::Events, Permission::Pause]
        );
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
        // At the handler, only that handler's hits match.
        let at_handler = spec(vec![Hook::SyscallHandler(257)], Some(&[257]), 0, "");
        assert!(at_handler.wants(&probe(Hook::SyscallHandler(257), 7, "sh", Some(257))));
        assert!(!at_handler.wants(&probe(Hook::SyscallEnter, 7, "sh", Some(257))));
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
