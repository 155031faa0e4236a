//! The event loop: the one owner of the gdbstub connection, and so of
//! breakpoints and of resuming the guest while they are set. It applies
//! subscription changes, waits for hits, decodes them, hands them to the hub,
//! holds the guest for sync subscribers, steps over the hooked instruction and
//! lets the guest go.
//!
//! The debugger is attached only while some subscription needs a breakpoint:
//! attaching stops the guest, and QEMU's stub serves one client at a time.

use super::decode::{task_message, vcpu_of_thread, Decoder};
use super::gate::RunGate;
use super::hub::{Held, Hub, Recipients, Template};
use super::spec::{Hook, Probe, Spec};
use crate::arch::emulate::Emulation;
use crate::driver::gdb::{BreakpointKind, GdbClient, StopReason, StopReply};
use crate::driver::Registers;
use crate::error::{Result, VmiError};
use crate::linux::LinuxKernel;
use furnace_api::v1::{self, event::Detail};
use furnace_api::{ApiError, ErrorCode};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long one wait for a stop or a change lasts before the loop looks
/// around again (lease ends, timers, shutdown).
const POLL: Duration = Duration::from_millis(5);
/// How long to wait for a stop already in flight before resuming a guest
/// someone else stopped.
const DRAIN: Duration = Duration::from_millis(1);

/// What the admin API reports about the engine.
#[derive(Default)]
pub struct Status {
    pub breakpoints: AtomicU32,
}

struct Timer {
    subscription: u64,
    period: Duration,
    next: Instant,
    sequence: u64,
}

pub struct Engine {
    hub: Arc<Hub>,
    gate: Arc<RunGate>,
    /// Whose driver reaches the debugger.
    kernel: Arc<LinuxKernel>,
    hold_limit: Duration,
    stopping: Arc<AtomicBool>,
    status: Arc<Status>,
    decoder: Decoder,
    gdb: Option<GdbClient>,
    applied: u64,
    /// Address → the hooks there; exactly the breakpoints set in the guest.
    installed: BTreeMap<u64, Vec<Hook>>,
    /// The vCPU that stopped at a breakpoint and its registers there, until
    /// it is past the hooked instruction.
    parked: Option<(String, Registers)>,
    timers: Vec<Timer>,
}

pub struct EngineParts {
    pub kernel: Arc<LinuxKernel>,
    pub hub: Arc<Hub>,
    pub gate: Arc<RunGate>,
    pub hold_limit: Duration,
    pub stopping: Arc<AtomicBool>,
    pub status: Arc<Status>,
}

impl Engine {
    pub fn new(parts: EngineParts) -> Self {
        Engine {
            decoder: Decoder::new(Arc::clone(&parts.kernel)),
            kernel: parts.kernel,
            hub: parts.hub,
            gate: parts.gate,
            hold_limit: parts.hold_limit,
            stopping: parts.stopping,
            status: parts.status,
            gdb: None,
            applied: 0,
            installed: BTreeMap::new(),
            parked: None,
            timers: Vec::new(),
        }
    }

    pub fn run(mut self) {
        while !self.stopping.load(Ordering::Acquire) {
            let turn = std::panic::catch_unwind(AssertUnwindSafe(|| self.turn()));
            let Ok(turn) = turn else {
                self.give_up_after_panic();
                return;
            };
            match turn {
                Ok(()) => {}
                Err(VmiError::GuestGone(reason)) => {
                    tracing::error!(%reason, "the guest is gone; events end");
                    self.hub.fail(ApiError::new(
                        ErrorCode::GuestGone,
                        format!("the guest is gone: {reason}"),
                    ));
                    self.forget_debugger();
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the event loop failed a turn");
                    std::thread::sleep(POLL);
                }
            }
        }
        if let Err(e) = self.detach() {
            tracing::error!(error = %e, "removing the event breakpoints at shutdown failed");
        }
    }

    /// A turn panicked, so what the engine believes about breakpoints and
    /// the guest may be wrong. Removes what it can, lets the guest run, and
    /// fails every subscription; if even that fails, the debugger is dropped
    /// unreleased, and the one who holds it clears what is left
    /// ([`crate::driver::gdb::link`]).
    fn give_up_after_panic(&mut self) {
        tracing::error!("the event loop panicked; events end, and their breakpoints are removed");
        self.hub.fail(ApiError::new(
            ErrorCode::Internal,
            "the sidecar's event loop failed; events are unavailable until the sidecar restarts",
        ));
        let detached = std::panic::catch_unwind(AssertUnwindSafe(|| self.detach()));
        if !matches!(detached, Ok(Ok(()))) {
            tracing::error!("could not remove the event breakpoints after the panic; leaving them to the debugger's owner");
            self.installed.clear();
            self.status.breakpoints.store(0, Ordering::Release);
            self.drop_debugger(false);
            if let Err(e) = self.let_guest_run() {
                tracing::error!(error = %e, "could not resume the guest after the panic");
            }
        }
    }

    fn turn(&mut self) -> Result<()> {
        if let Some((generation, specs)) = self.hub.pending_change(self.applied) {
            let outcome = self.apply(&specs);
            self.applied = generation;
            match outcome {
                Err(VmiError::GuestGone(reason)) => {
                    return Err(VmiError::GuestGone(reason));
                }
                outcome => self
                    .hub
                    .applied(generation, outcome.err().map(ApiError::from)),
            }
        }
        self.fire_timers()?;
        let running = self.gate.lock().running;
        let stop = match self.gdb.as_mut() {
            Some(gdb) if running => gdb.wait_stop(POLL)?,
            _ => {
                self.hub.idle(self.idle_time());
                None
            }
        };
        if let Some(stop) = stop {
            self.on_stop(stop)?;
        }
        self.release_if_free()
    }

    fn idle_time(&self) -> Duration {
        let now = Instant::now();
        self.timers
            .iter()
            .map(|t| t.next.saturating_duration_since(now))
            .min()
            .map_or(POLL, |t| t.min(POLL))
    }

    /// Makes the breakpoints and timers match `specs`.
    fn apply(&mut self, specs: &[(u64, Arc<Spec>)]) -> Result<()> {
        let mut wanted: BTreeMap<u64, Vec<Hook>> = BTreeMap::new();
        let hooks: BTreeSet<Hook> = specs
            .iter()
            .flat_map(|(_, s)| s.hooks.iter().copied())
            .collect();
        for hook in hooks {
            wanted
                .entry(self.decoder.address(hook)?)
                .or_default()
                .push(hook);
        }
        self.apply_timers(specs);
        if wanted == self.installed {
            return Ok(());
        }
        if wanted.is_empty() {
            return self.detach();
        }
        if self.gdb.is_none() {
            self.attach()?;
        }
        self.stop_guest()?;
        let gdb = self.gdb.as_mut().expect("attached above");
        for address in self.installed.keys().filter(|a| !wanted.contains_key(a)) {
            gdb.remove_breakpoint(BreakpointKind::Software, *address)?;
        }
        let mut failure = None;
        let mut installed = BTreeMap::new();
        for (address, hooks) in wanted {
            if !self.installed.contains_key(&address) {
                if let Err(e) = gdb.insert_breakpoint(BreakpointKind::Software, address) {
                    failure = Some(e);
                    continue;
                }
            }
            installed.insert(address, hooks);
        }
        self.installed = installed;
        self.status
            .breakpoints
            .store(self.installed.len() as u32, Ordering::Release);
        failure.map_or(Ok(()), Err)
    }

    fn apply_timers(&mut self, specs: &[(u64, Arc<Spec>)]) {
        let mut timers = Vec::new();
        for (id, spec) in specs {
            let Some(period) = spec.timer else { continue };
            let existing = self.timers.iter().position(|t| t.subscription == *id);
            timers.push(match existing {
                Some(i) => self.timers.swap_remove(i),
                None => Timer {
                    subscription: *id,
                    period,
                    next: Instant::now() + period,
                    sequence: 0,
                },
            });
        }
        self.timers = timers;
    }

    fn attach(&mut self) -> Result<()> {
        let link = self
            .kernel
            .driver()
            .debugger()
            .ok_or(VmiError::Unsupported(
                "breakpoint events on this guest (its driver has no debugger)",
            ))?;
        let mut gate = self.gate.lock();
        let gdb = GdbClient::over(link.open()?)?;
        // QEMU stops a running guest when a debugger attaches.
        if gate.running {
            gate.running = false;
            gate.engine_stopped = true;
        }
        gate.debugger = true;
        self.gdb = Some(gdb);
        tracing::info!("attached to the gdbstub for events");
        Ok(())
    }

    /// Removes every breakpoint, closes the debugger connection, and lets the
    /// guest run unless a lease holds it.
    fn detach(&mut self) -> Result<()> {
        if self.gdb.is_none() {
            return Ok(());
        }
        // A hit found here is dropped: nobody wants it any more.
        self.stop_guest()?;
        let gdb = self.gdb.as_mut().expect("checked above");
        for address in std::mem::take(&mut self.installed).into_keys() {
            gdb.remove_breakpoint(BreakpointKind::Software, address)?;
        }
        self.status.breakpoints.store(0, Ordering::Release);
        self.forget_debugger();
        self.let_guest_run()?;
        tracing::info!("detached from the gdbstub: no breakpoint events are wanted");
        Ok(())
    }

    /// Resumes the guest if the engine stopped it and no lease holds it.
    fn let_guest_run(&self) -> Result<()> {
        let mut gate = self.gate.lock();
        if (gate.engine_stopped || gate.resume_wanted) && !gate.leased && !gate.running {
            self.gate.control().resume()?;
            gate.running = true;
        }
        gate.engine_stopped = false;
        gate.resume_wanted = false;
        Ok(())
    }

    /// Closes the debugger connection, its breakpoints removed.
    fn forget_debugger(&mut self) {
        self.drop_debugger(true);
    }

    /// Closes the debugger connection. Unless `released`, the link's owner
    /// is left to clear breakpoints the engine could not remove.
    fn drop_debugger(&mut self, released: bool) {
        if let Some(gdb) = self.gdb.take() {
            if let (true, Some(link)) = (released, self.kernel.driver().debugger()) {
                link.release();
            }
            drop(gdb);
        }
        self.parked = None;
        self.gate.lock().debugger = false;
    }

    /// Stops the guest if it runs, handling a hit that beat the stop to it.
    fn stop_guest(&mut self) -> Result<()> {
        let stop = {
            let mut gate = self.gate.lock();
            if !gate.running {
                return Ok(());
            }
            let stop = match self.gdb.as_mut() {
                Some(gdb) => Some(gdb.interrupt()?),
                None => {
                    self.gate.control().pause()?;
                    None
                }
            };
            gate.running = false;
            gate.engine_stopped = true;
            stop
        };
        match stop {
            Some(stop) => self.on_stop(stop),
            None => Ok(()),
        }
    }

    fn on_stop(&mut self, stop: StopReply) -> Result<()> {
        match stop.reason {
            StopReason::Ended => Err(VmiError::GuestGone(
                "the gdbstub reports the guest ended".into(),
            )),
            // A QMP stop (a pause lease) or our own interrupt: nothing to report.
            StopReason::Signal(_) => Ok(()),
            StopReason::Trap
            | StopReason::SoftwareBreakpoint
            | StopReason::HardwareBreakpoint
            | StopReason::Watchpoint { .. } => {
                {
                    let mut gate = self.gate.lock();
                    gate.running = false;
                    gate.engine_stopped = true;
                }
                let thread = stop.thread.unwrap_or_else(|| "01".into());
                let gdb = self
                    .gdb
                    .as_mut()
                    .ok_or_else(|| VmiError::Gdb("a stop with no debugger".into()))?;
                let vcpu = gdb.registers(&thread)?;
                match self.installed.get(&vcpu.rip).cloned() {
                    Some(hooks) => {
                        self.parked = Some((thread.clone(), vcpu));
                        let held = self.deliver_hit(&hooks, &thread, &vcpu);
                        self.hold(&held);
                    }
                    None => tracing::debug!(
                        rip = format_args!("{:#x}", vcpu.rip),
                        "a stop at no breakpoint of ours"
                    ),
                }
                Ok(())
            }
        }
    }

    fn deliver_hit(
        &mut self,
        hooks: &[Hook],
        thread: &str,
        vcpu: &crate::driver::Registers,
    ) -> Held {
        let seen = Instant::now();
        let timestamp_ns = unix_nanos();
        let mut held = Vec::new();
        for &hook in hooks {
            let decoded = match self.decoder.decode(hook, vcpu) {
                Ok(decoded) => decoded,
                Err(e) => {
                    tracing::warn!(?hook, error = %e, "could not decode a hit");
                    continue;
                }
            };
            let caller = decoded.caller();
            let probe = Probe {
                hook,
                task: Some((caller.pid, &caller.comm)),
                syscall: decoded.syscall(),
            };
            if !self.hub.wants(&probe) {
                continue;
            }
            let template = Template {
                seen,
                timestamp_ns,
                vcpu: vcpu_of_thread(thread),
                task: Some(task_message(caller)),
                detail: self.decoder.detail(&decoded, vcpu),
            };
            held.extend(self.hub.deliver(Recipients::Matching(&probe), template));
        }
        held
    }

    /// Keeps the guest stopped until every event in `held` is acked, its
    /// subscriber is gone, or the hold limit passes.
    fn hold(&mut self, held: &[u64]) {
        if held.is_empty() {
            return;
        }
        let deadline = Instant::now() + self.hold_limit;
        while !self.hub.wait_acked(held, POLL) {
            if Instant::now() >= deadline || self.stopping.load(Ordering::Acquire) {
                tracing::warn!(events = ?held, limit_ms = self.hold_limit.as_millis() as u64, "a sync event was not acked in time; the guest goes on");
                self.hub.expire(held);
                return;
            }
        }
    }

    fn fire_timers(&mut self) -> Result<()> {
        let now = Instant::now();
        let mut held = Vec::new();
        for timer in self.timers.iter_mut().filter(|t| t.next <= now) {
            timer.sequence += 1;
            timer.next = (timer.next + timer.period).max(now);
            let template = Template {
                seen: now,
                timestamp_ns: unix_nanos(),
                vcpu: 0,
                task: None,
                detail: Detail::Timer(v1::TimerTick {
                    sequence: timer.sequence,
                }),
            };
            held.extend(
                self.hub
                    .deliver(Recipients::Only(timer.subscription), template),
            );
        }
        if !held.is_empty() {
            self.stop_guest()?;
            self.hold(&held);
        }
        Ok(())
    }

    /// Resumes the guest if the engine stopped it (or a lease ended while the
    /// debugger was attached) and nothing holds it any more.
    fn release_if_free(&mut self) -> Result<()> {
        let mut gate = self.gate.lock();
        if gate.running || gate.leased || !(gate.engine_stopped || gate.resume_wanted) {
            return Ok(());
        }
        match self.gdb.as_mut() {
            Some(gdb) => {
                if self.parked.is_none() {
                    // Someone else stopped the guest; a hit may have come first.
                    if let Some(stop) = gdb.wait_stop(DRAIN)? {
                        drop(gate);
                        return self.on_stop(stop);
                    }
                }
                if let Some((thread, vcpu)) = self.parked.take() {
                    let emulated = match self.decoder.emulation_at(vcpu.rip) {
                        Some(emulation) => {
                            emulate(gdb, self.decoder.kernel(), &thread, &vcpu, emulation)?
                        }
                        None => false,
                    };
                    if !emulated {
                        gdb.remove_breakpoint(BreakpointKind::Software, vcpu.rip)?;
                        gdb.step(&thread)?;
                        if self.installed.contains_key(&vcpu.rip) {
                            gdb.insert_breakpoint(BreakpointKind::Software, vcpu.rip)?;
                        }
                    }
                }
                gdb.resume()?;
            }
            None => self.gate.control().resume()?,
        }
        gate.running = true;
        gate.engine_stopped = false;
        gate.resume_wanted = false;
        Ok(())
    }
}

/// gdb's numbers for rsp and rip in `P`.
const GDB_RSP: u8 = 7;
const GDB_RIP: u8 = 16;

/// Carries out `emulation` for the vCPU stopped on it; false where it
/// cannot (a push whose slot straddles a page), and the caller must step.
fn emulate(
    gdb: &mut GdbClient,
    kernel: &LinuxKernel,
    thread: &str,
    vcpu: &Registers,
    emulation: Emulation,
) -> Result<bool> {
    match emulation {
        Emulation::Skip { length } => gdb.write_register(thread, GDB_RIP, vcpu.rip + length)?,
        Emulation::Push { register, length } => {
            let slot = vcpu.rsp.wrapping_sub(8);
            if slot & 0xfff > 0xff8 {
                return Ok(false);
            }
            let dtb = crate::arch::amd64::dtb_from_cr3(vcpu.cr3);
            let physical = kernel.translate(dtb, slot)?.physical;
            kernel
                .driver()
                .write_physical(physical, &vcpu.gpr[register].to_le_bytes())?;
            gdb.write_register(thread, GDB_RSP, slot)?;
            gdb.write_register(thread, GDB_RIP, vcpu.rip + length)?;
        }
    }
    Ok(true)
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
