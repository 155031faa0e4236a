//! VMI events: subscriptions ([`spec`]), their queues ([`hub`]), the loop
//! that owns the debugger and turns breakpoint hits into events ([`engine`]),
//! and the arbiter of who stops and starts the guest ([`gate`]).

mod decode;
mod engine;
mod gate;
mod hub;
mod spec;

pub use decode::registers_message;
pub use gate::RunGate;
pub use hub::Owner;

use crate::driver::VmControl;
use crate::linux::LinuxKernel;
use engine::{Engine, EngineParts, Status};
use furnace_api::v1::{self, Permission};
use furnace_api::ApiError;
use furnace_config::SidecarConfig;
use hub::Hub;
use spec::Spec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whether the guest runs, after freeing it from a sidecar that died with
/// the debugger attached ([`crate::driver::gdb::link`]).
fn recover_stranded_guest(kernel: &LinuxKernel, control: &dyn VmControl) -> bool {
    use crate::driver::RunState;
    if let Some(link) = kernel.driver().debugger() {
        if let Err(e) = link.free_stranded(control) {
            tracing::error!(error = %e, "could not free the guest from a previous sidecar's debugger");
        }
    }
    matches!(control.run_state(), Ok(RunState::Running))
}

/// How long a subscribe or unsubscribe waits for the engine to set or
/// remove its breakpoints (attaching interrupts a TCG guest, which can take
/// a while on a loaded host).
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Events {
    kernel: Arc<LinuxKernel>,
    limits: SidecarConfig,
    hub: Arc<Hub>,
    gate: Arc<RunGate>,
    status: Arc<Status>,
    stopping: Arc<AtomicBool>,
    engine: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The most events one NextEvents returns, so a reply of long paths still
/// fits one frame.
pub const MAX_EVENTS_PER_BATCH: usize = 256;

impl Events {
    /// Starts the engine thread. `control` pauses and resumes the guest.
    pub fn start(
        kernel: Arc<LinuxKernel>,
        control: Arc<dyn VmControl>,
        limits: &SidecarConfig,
    ) -> std::io::Result<Self> {
        let hub = Arc::new(Hub::new(limits));
        let running = recover_stranded_guest(&kernel, control.as_ref());
        let gate = Arc::new(RunGate::new(control, running));
        let status = Arc::new(Status::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let engine = Engine::new(EngineParts {
            kernel: Arc::clone(&kernel),
            hub: Arc::clone(&hub),
            gate: Arc::clone(&gate),
            hold_limit: Duration::from_millis(limits.max_pause_ms.into()),
            stopping: Arc::clone(&stopping),
            status: Arc::clone(&status),
        });
        let engine = std::thread::Builder::new()
            .name("event-engine".into())
            .spawn(move || engine.run())?;
        Ok(Events {
            kernel,
            limits: limits.clone(),
            hub,
            gate,
            status,
            stopping,
            engine: std::sync::Mutex::new(Some(engine)),
        })
    }

    /// What pause leases must go through, so they and events agree.
    pub fn gate(&self) -> Arc<RunGate> {
        Arc::clone(&self.gate)
    }

    /// Checks `spec` against what `granted` allows, and returns once its
    /// breakpoints are set.
    pub fn subscribe(
        &self,
        owner: Owner,
        granted: &std::collections::BTreeSet<Permission>,
        spec: &v1::EventSpec,
    ) -> Result<v1::Subscription, ApiError> {
        let needs = Spec::permissions_needed(spec);
        if let Some(missing) = needs.iter().find(|p| !granted.contains(p)) {
            return Err(super::vmi::not_permitted("Subscribe", *missing));
        }
        let spec = Spec::from_request(spec, &self.kernel, &self.limits)?;
        if self.hub.subscription_count(&owner.app) >= self.limits.max_subscriptions as usize {
            return Err(ApiError::new(
                furnace_api::ErrorCode::LimitExceeded,
                format!(
                    "an app may hold {} event subscriptions",
                    self.limits.max_subscriptions
                ),
            ));
        }
        let app = owner.app.clone();
        let capacity = spec.capacity as u32;
        let (id, generation) = self.hub.subscribe(owner, spec)?;
        if let Err(e) = self.hub.wait_applied(generation, APPLY_TIMEOUT) {
            if let Ok(generation) = self.hub.unsubscribe(&app, id) {
                let _ = self.hub.wait_applied(generation, APPLY_TIMEOUT);
            }
            return Err(e);
        }
        Ok(v1::Subscription {
            id,
            queue_capacity: capacity,
        })
    }

    /// Ends subscription `id` and returns once its breakpoints are gone.
    pub fn unsubscribe(&self, app: &str, id: u64) -> Result<(), ApiError> {
        let generation = self.hub.unsubscribe(app, id)?;
        self.hub.wait_applied(generation, APPLY_TIMEOUT)
    }

    /// Ends every subscription `matches` selects (a closed connection, an
    /// unregistered app); returns how many, once their breakpoints are gone.
    pub fn remove_where(&self, matches: impl Fn(&Owner) -> bool) -> usize {
        let (removed, generation) = self.hub.remove_where(matches);
        if removed > 0 {
            if let Err(e) = self.hub.wait_applied(generation, APPLY_TIMEOUT) {
                tracing::error!(error = %e, "removing ended subscriptions' breakpoints");
            }
        }
        removed
    }

    pub fn next(
        &self,
        app: &str,
        request: &v1::NextEventsRequest,
    ) -> Result<v1::EventBatch, ApiError> {
        let timeout = Duration::from_millis(request.timeout_ms.into());
        self.hub.next(
            app,
            request.subscription,
            (request.max_events as usize).min(MAX_EVENTS_PER_BATCH),
            timeout,
            &request.ack,
        )
    }

    pub fn ack(&self, app: &str, events: &[u64]) -> Result<(), ApiError> {
        self.hub.ack(app, events)
    }

    pub fn subscription_count(&self, app: &str) -> usize {
        self.hub.subscription_count(app)
    }

    /// Breakpoints set for events, and whether the debugger is attached.
    pub fn debugger_status(&self) -> (u32, bool) {
        (
            self.status.breakpoints.load(Ordering::Acquire),
            self.gate.lock().debugger,
        )
    }

    /// Stops the engine, which first removes every breakpoint it set.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(engine) = engine {
            let _ = engine.join();
        }
    }
}
