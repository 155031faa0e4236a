//! Pause as a lease. The guest is paused while any lease is held, by any app;
//! it runs again when the last one ends — on resume, on expiry, when the
//! connection that took it closes, or when its app is unregistered.

use crate::driver::VmControl;
use furnace_api::{ApiError, ErrorCode};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Which connection of which app holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    pub app: String,
    pub connection: u64,
}

struct Lease {
    holder: Holder,
    deadline: Instant,
    granted: Duration,
}

#[derive(Default)]
struct State {
    next_id: u64,
    leases: HashMap<u64, Lease>,
    /// Leases that ran out, so a later `Resume` of one says so.
    expired: HashSet<u64>,
    /// How many leases ran out, per app, for the self-defense loop.
    overruns: HashMap<String, u64>,
    stopping: bool,
}

pub struct Leases {
    state: Mutex<State>,
    changed: Condvar,
    control: Arc<dyn VmControl>,
}

/// How many expired lease ids are remembered for reporting.
const EXPIRED_MEMORY: usize = 4096;

impl Leases {
    /// Starts the expiry thread, which runs until [`Leases::stop`].
    pub fn start(control: Arc<dyn VmControl>) -> Arc<Self> {
        let leases = Arc::new(Leases {
            state: Mutex::default(),
            changed: Condvar::new(),
            control,
        });
        let expiry = Arc::clone(&leases);
        std::thread::Builder::new()
            .name("lease-expiry".into())
            .spawn(move || expiry.expire_loop())
            .expect("spawning the lease expiry thread");
        leases
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a lease for `duration`, pausing the guest if it was running for no one.
    pub fn acquire(&self, holder: Holder, duration: Duration) -> Result<(u64, Duration), ApiError> {
        let mut state = self.lock();
        if state.leases.is_empty() {
            self.control.pause().map_err(ApiError::from)?;
        }
        state.next_id += 1;
        let id = state.next_id;
        state.leases.insert(
            id,
            Lease {
                holder,
                deadline: Instant::now() + duration,
                granted: duration,
            },
        );
        drop(state);
        self.changed.notify_all();
        Ok((id, duration))
    }

    /// Ends lease `id`, which `holder`'s app must own.
    pub fn release(&self, id: u64, app: &str) -> Result<(), ApiError> {
        let mut state = self.lock();
        match state.leases.get(&id).map(|l| l.holder.app == app) {
            Some(true) => {
                state.leases.remove(&id);
                self.resume_if_free(&state);
                Ok(())
            }
            _ if state.expired.remove(&id) => Err(ApiError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "pause lease {id} had expired; the sidecar resumed the guest when it ran out"
                ),
            )),
            _ => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("this app holds no pause lease {id}"),
            )),
        }
    }

    /// Ends every lease `matches` selects; returns how many ended.
    pub fn release_where(&self, matches: impl Fn(&Holder) -> bool) -> usize {
        let mut state = self.lock();
        let before = state.leases.len();
        state.leases.retain(|_, lease| !matches(&lease.holder));
        let released = before - state.leases.len();
        if released > 0 {
            self.resume_if_free(&state);
        }
        released
    }

    /// How many of `app`'s leases ran out since it was registered.
    pub fn overruns(&self, app: &str) -> u64 {
        self.lock().overruns.get(app).copied().unwrap_or(0)
    }

    /// Drops what is kept of `app` once it is unregistered.
    pub fn forget(&self, app: &str) {
        self.lock().overruns.remove(app);
    }

    pub fn count_where(&self, matches: impl Fn(&Holder) -> bool) -> usize {
        self.lock()
            .leases
            .values()
            .filter(|l| matches(&l.holder))
            .count()
    }

    fn resume_if_free(&self, state: &State) {
        if state.leases.is_empty() {
            if let Err(e) = self.control.resume() {
                tracing::error!(error = %e, "resuming the guest after its last pause lease failed");
            }
        }
    }

    fn expire_loop(&self) {
        let mut state = self.lock();
        while !state.stopping {
            let now = Instant::now();
            let due: Vec<u64> = state
                .leases
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in &due {
                if let Some(lease) = state.leases.remove(id) {
                    tracing::warn!(lease = id, app = %lease.holder.app, granted_ms = lease.granted.as_millis() as u64, "pause lease expired");
                    *state.overruns.entry(lease.holder.app).or_default() += 1;
                    if state.expired.len() >= EXPIRED_MEMORY {
                        state.expired.clear();
                    }
                    state.expired.insert(*id);
                }
            }
            if !due.is_empty() {
                self.resume_if_free(&state);
            }
            let wait = state
                .leases
                .values()
                .map(|l| l.deadline.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_secs(1));
            state = self
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Ends every lease (resuming the guest) and stops the expiry thread.
    pub fn stop(&self) {
        self.release_where(|_| true);
        self.lock().stopping = true;
        self.changed.notify_all();
    }
}
