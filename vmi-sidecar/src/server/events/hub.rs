//! Subscriptions and their queues. The engine delivers hits here; apps'
//! connection threads take them with a long poll. A full queue, an app over
//! its rate or over its bytes, or a sidecar over its bytes, loses the event
//! and counts it, so the app is told.

use super::spec::{Probe, Spec};
use furnace_api::v1::{self, event::Detail};
use furnace_api::{ApiError, ErrorCode};
use furnace_config::SidecarConfig;
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Which connection of which app owns a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub app: String,
    pub connection: u64,
}

struct Subscriber {
    owner: Owner,
    spec: Arc<Spec>,
    queue: VecDeque<Queued>,
    dropped: u64,
}

/// An event waiting in one subscription's queue. What every recipient of
/// one hit shares is kept once, not copied per subscriber.
struct Queued {
    id: u64,
    sync: bool,
    hit: Arc<Hit>,
}

struct Hit {
    /// The event as every recipient gets it, but for its id, subscription
    /// and sync flag, which [`Hit::event`] sets.
    event: v1::Event,
    /// The most one copy of the event takes on the wire: what each queue
    /// holding it is charged.
    wire_bytes: usize,
}

/// Bytes of queued events, per app and over all apps.
#[derive(Default)]
struct QueuedBytes {
    total: usize,
    by_app: HashMap<String, usize>,
}

impl QueuedBytes {
    fn of(&self, app: &str) -> usize {
        self.by_app.get(app).copied().unwrap_or(0)
    }

    fn add(&mut self, app: &str, bytes: usize) {
        self.total += bytes;
        *self.by_app.entry(app.to_owned()).or_default() += bytes;
    }

    fn release(&mut self, app: &str, bytes: usize) {
        self.total = self.total.saturating_sub(bytes);
        if let Some(held) = self.by_app.get_mut(app) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.by_app.remove(app);
            }
        }
    }
}

/// A token bucket: `rate` events per second, bursting to one second's worth.
struct RateLimit {
    tokens: f64,
    updated: Instant,
}

#[derive(Default)]
struct State {
    next_subscription: u64,
    next_event: u64,
    subscribers: BTreeMap<u64, Subscriber>,
    /// Sync events delivered and not yet acked, with their subscription.
    unacked: HashMap<u64, u64>,
    rates: HashMap<String, RateLimit>,
    queued: QueuedBytes,
    /// Bumped on every change of the subscription set; the engine applies
    /// generations in order and reports each one.
    generation: u64,
    applied: u64,
    /// Why the last generation could not be applied, if it could not.
    apply_error: Option<(u64, ApiError)>,
    /// Set once the guest is gone; every later call fails with it.
    failure: Option<ApiError>,
}

pub struct Hub {
    state: Mutex<State>,
    /// Signalled on every delivery, ack, removal and applied generation.
    changed: Condvar,
    rate: u32,
    max_bytes_per_app: usize,
    max_bytes: usize,
}

/// Every live subscription's id and spec.
pub type Specs = Vec<(u64, Arc<Spec>)>;

/// The sidecar-wide event ids a delivery produced that hold the guest.
pub type Held = Vec<u64>;

impl Hub {
    pub fn new(limits: &SidecarConfig) -> Self {
        let bytes =
            |size: furnace_config::ByteSize| usize::try_from(size.bytes()).unwrap_or(usize::MAX);
        Hub {
            state: Mutex::default(),
            changed: Condvar::new(),
            rate: limits.max_events_per_second,
            max_bytes_per_app: bytes(limits.max_event_bytes_per_app),
            max_bytes: bytes(limits.max_event_bytes),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(state, timeout)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// Adds a subscription; returns its id and the generation that must be
    /// applied before its hooks are in place.
    pub fn subscribe(&self, owner: Owner, spec: Spec) -> Result<(u64, u64), ApiError> {
        let mut state = self.lock();
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        state.next_subscription += 1;
        let id = state.next_subscription;
        state.subscribers.insert(
            id,
            Subscriber {
                owner,
                spec: Arc::new(spec),
                queue: VecDeque::new(),
                dropped: 0,
            },
        );
        state.generation += 1;
        Ok((id, state.generation))
    }

    pub fn subscription_count(&self, app: &str) -> usize {
        self.lock()
            .subscribers
            .values()
            .filter(|s| s.owner.app == app)
            .count()
    }

    /// Ends subscription `id`, which `app` must own; returns the generation
    /// that removes its hooks.
    pub fn unsubscribe(&self, app: &str, id: u64) -> Result<u64, ApiError> {
        let mut state = self.lock();
        match state.subscribers.get(&id) {
            Some(s) if s.owner.app == app => {}
            _ => return Err(no_subscription(id)),
        }
        Ok(self.remove(&mut state, |sid, _| sid == id))
    }

    /// Ends every subscription `matches` selects; returns how many ended and
    /// the generation that removes their hooks.
    pub fn remove_where(&self, matches: impl Fn(&Owner) -> bool) -> (usize, u64) {
        let mut state = self.lock();
        let before = state.subscribers.len();
        let generation = self.remove(&mut state, |_, owner| matches(owner));
        (before - state.subscribers.len(), generation)
    }

    fn remove(&self, state: &mut State, matches: impl Fn(u64, &Owner) -> bool) -> u64 {
        let gone: BTreeSet<u64> = state
            .subscribers
            .iter()
            .filter(|(id, s)| matches(**id, &s.owner))
            .map(|(id, _)| *id)
            .collect();
        if gone.is_empty() {
            return state.generation;
        }
        let queued = &mut state.queued;
        state.subscribers.retain(|id, s| {
            if !gone.contains(id) {
                return true;
            }
            let bytes = s.queue.iter().map(|q| q.hit.wire_bytes).sum();
            queued.release(&s.owner.app, bytes);
            false
        });
        // What they held, they no longer hold.
        state.unacked.retain(|_, sid| !gone.contains(sid));
        state.generation += 1;
        self.changed.notify_all();
        state.generation
    }

    /// Waits until the engine has applied `generation`: the hooks it needs
    /// are set, or the ones it dropped are removed.
    pub fn wait_applied(&self, generation: u64, timeout: Duration) -> Result<(), ApiError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.applied < generation {
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("the event engine did not apply the change within {timeout:?}"),
                ));
            }
            state = self.wait(state, left);
        }
        match &state.apply_error {
            Some((g, error)) if *g == generation => Err(error.clone()),
            _ => Ok(()),
        }
    }

    /// For the engine: the latest generation and every live spec, if it has
    /// changed since `applied`.
    pub fn pending_change(&self, applied: u64) -> Option<(u64, Specs)> {
        let state = self.lock();
        (state.generation != applied).then(|| {
            let specs = state
                .subscribers
                .iter()
                .map(|(id, s)| (*id, Arc::clone(&s.spec)))
                .collect();
            (state.generation, specs)
        })
    }

    /// For the engine: `generation` is in place, or failed with `error`.
    pub fn applied(&self, generation: u64, error: Option<ApiError>) {
        let mut state = self.lock();
        state.applied = state.applied.max(generation);
        if let Some(error) = error {
            state.apply_error = Some((generation, error));
        }
        self.changed.notify_all();
    }

    /// The guest is gone: every waiting and later call fails with `error`.
    pub fn fail(&self, error: ApiError) {
        self.lock().failure = Some(error);
        self.changed.notify_all();
    }

    /// Whether any subscription wants a hit like `probe`, before it is decoded.
    pub fn wants(&self, probe: &Probe) -> bool {
        self.lock()
            .subscribers
            .values()
            .any(|s| s.spec.wants(probe))
    }

    /// Queues an event for each recipient; returns the ids of the sync
    /// ones, which hold the guest until acked.
    pub fn deliver(&self, to: Recipients, template: Template) -> Held {
        let seen = template.seen;
        let hit = Arc::new(Hit::from(template));
        let mut state = self.lock();
        let state = &mut *state;
        let mut held = Vec::new();
        for (id, subscriber) in state.subscribers.iter_mut() {
            let wanted = match to {
                Recipients::Matching(probe) => subscriber.spec.wants(probe),
                Recipients::Only(only) => only == *id,
            };
            if !wanted {
                continue;
            }
            let bucket = state
                .rates
                .entry(subscriber.owner.app.clone())
                .or_insert(RateLimit {
                    tokens: f64::from(self.rate),
                    updated: seen,
                });
            let app = &subscriber.owner.app;
            if subscriber.queue.len() >= subscriber.spec.capacity
                || state.queued.of(app) + hit.wire_bytes > self.max_bytes_per_app
                || state.queued.total + hit.wire_bytes > self.max_bytes
                || !bucket.take(self.rate, seen)
            {
                subscriber.dropped += 1;
                continue;
            }
            state.queued.add(app, hit.wire_bytes);
            state.next_event += 1;
            let event_id = state.next_event;
            let sync = subscriber.spec.sync;
            if sync {
                state.unacked.insert(event_id, *id);
                held.push(event_id);
            }
            subscriber.queue.push_back(Queued {
                id: event_id,
                sync,
                hit: Arc::clone(&hit),
            });
        }
        self.changed.notify_all();
        held
    }

    /// Acks sync events `ids`, which `app` must have received.
    pub fn ack(&self, app: &str, ids: &[u64]) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        for id in ids {
            let owned = state
                .unacked
                .get(id)
                .and_then(|sid| state.subscribers.get(sid))
                .is_some_and(|s| s.owner.app == app);
            if !owned {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "no unacked event {id} of this app (acked already, or its hold ran out)"
                    ),
                ));
            }
            state.unacked.remove(id);
        }
        self.changed.notify_all();
        Ok(())
    }

    /// For the engine: waits up to `timeout` for every event in `held` to be
    /// acked (or its subscription to end); true when none is left.
    pub fn wait_acked(&self, held: &[u64], timeout: Duration) -> bool {
        let mut state = self.lock();
        if held.iter().any(|id| state.unacked.contains_key(id)) {
            state = self.wait(state, timeout);
        }
        !held.iter().any(|id| state.unacked.contains_key(id))
    }

    /// For the engine: the hold on `held` ran out; later acks of them fail.
    pub fn expire(&self, held: &[u64]) {
        let mut state = self.lock();
        for id in held {
            state.unacked.remove(id);
        }
    }

    /// For the engine: sleeps until something changes or `timeout` passes.
    pub fn idle(&self, timeout: Duration) {
        let state = self.lock();
        drop(self.wait(state, timeout));
    }

    /// The long poll: acks `acks`, then returns up to `max` events of
    /// subscription `id`, waiting up to `timeout` for the first.
    pub fn next(
        &self,
        app: &str,
        id: u64,
        max: usize,
        timeout: Duration,
        acks: &[u64],
    ) -> Result<v1::EventBatch, ApiError> {
        self.ack(app, acks)?;
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock();
        loop {
            let state = &mut *guard;
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            let subscriber = match state.subscribers.get_mut(&id) {
                Some(s) if s.owner.app == app => s,
                _ => return Err(no_subscription(id)),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if !subscriber.queue.is_empty() || left.is_zero() {
                let n = subscriber.queue.len().min(max.max(1));
                let mut charged = 0;
                let events: Vec<v1::Event> = subscriber
                    .queue
                    .drain(..n)
                    .map(|q| {
                        charged += q.hit.wire_bytes;
                        q.hit.event(q.id, id, q.sync)
                    })
                    .collect();
                state.queued.release(app, charged);
                return Ok(v1::EventBatch {
                    events,
                    dropped: std::mem::take(&mut subscriber.dropped),
                });
            }
            guard = self.wait(guard, left);
        }
    }
}

pub enum Recipients<'a> {
    /// Every subscription that wants a hit like this.
    Matching(&'a Probe<'a>),
    /// One subscription (a timer's).
    Only(u64),
}

/// What every copy of one hit's event shares.
pub struct Template {
    pub seen: Instant,
    pub timestamp_ns: u64,
    pub vcpu: u32,
    pub task: Option<v1::Task>,
    pub detail: Detail,
}

impl From<Template> for Hit {
    fn from(template: Template) -> Self {
        // The largest id, subscription and flag a copy can carry.
        let event = v1::Event {
            id: u64::MAX,
            subscription: u64::MAX,
            timestamp_ns: template.timestamp_ns,
            sync: true,
            vcpu: template.vcpu,
            task: template.task,
            detail: Some(template.detail),
        };
        Hit {
            wire_bytes: event.encoded_len(),
            event,
        }
    }
}

impl Hit {
    fn event(&self, id: u64, subscription: u64, sync: bool) -> v1::Event {
        v1::Event {
            id,
            subscription,
            sync,
            ..self.event.clone()
        }
    }
}

impl RateLimit {
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn no_subscription(id: u64) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("this app has no event subscription {id}"),
    )
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
