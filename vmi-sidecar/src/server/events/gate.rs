//! Who may stop and start the guest. Pause leases and the event engine both
//! do, and neither may undo the other: the guest runs only when no lease
//! holds it and the engine has let go of it.
//!
//! While the engine holds the debugger connection, only the engine resumes
//! the guest. A breakpoint hit stops the guest before the engine has read
//! the stop; a `cont` from anyone else in that window would run the hooked
//! instruction again and report the hit twice. So a lease's end only asks
//! the engine to resume, and the engine first reads any stop in flight.

use crate::driver::{RunState, VmControl};
use crate::error::Result;
use std::sync::{Arc, Mutex, MutexGuard};

pub struct RunGate {
    control: Arc<dyn VmControl>,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
pub struct GateState {
    /// Whether the guest runs, as far as the sidecar knows.
    pub running: bool,
    /// Some pause lease holds the guest.
    pub leased: bool,
    /// The engine stopped the guest (or a breakpoint did) and has not let go.
    pub engine_stopped: bool,
    /// The engine holds the debugger connection.
    pub debugger: bool,
    /// A lease ended while the debugger was attached; the engine resumes.
    pub resume_wanted: bool,
}

impl RunGate {
    pub fn new(control: Arc<dyn VmControl>, running: bool) -> Self {
        RunGate {
            control,
            state: Mutex::new(GateState {
                running,
                ..GateState::default()
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn control(&self) -> &dyn VmControl {
        self.control.as_ref()
    }
}

/// What pause leases see: pausing stops the guest if it runs; resuming
/// starts it only if nothing else holds it.
impl VmControl for RunGate {
    fn pause(&self) -> Result<()> {
        let mut state = self.lock();
        state.leased = true;
        if state.running {
            self.control.pause()?;
            state.running = false;
        }
        Ok(())
    }

    fn resume(&self) -> Result<()> {
        let mut state = self.lock();
        state.leased = false;
        if state.running || state.engine_stopped {
            return Ok(());
        }
        if state.debugger {
            state.resume_wanted = true;
            return Ok(());
        }
        self.control.resume()?;
        state.running = true;
        Ok(())
    }

    fn run_state(&self) -> Result<RunState> {
        self.control.run_state()
    }
}
