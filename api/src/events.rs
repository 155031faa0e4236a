//! Events in the Rust SDK: subscribe, iterate, ack.
//!
//! ```no_run
//! use furnace_api::{v1::EventSpec, Delivery, Vmi};
//! let vmi = Vmi::connect_default()?;
//! let opens = vmi.subscribe(EventSpec::syscalls(&["openat"]).comm("cat"))?;
//! for delivery in vmi.events(&opens) {
//!     match delivery? {
//!         Delivery::Event(event) => println!("{event:?}"),
//!         Delivery::Dropped(n) => eprintln!("lost {n} events"),
//!     }
//! }
//! # Ok::<(), furnace_api::ApiError>(())
//! ```
//!
//! A sync subscription holds the guest from each hit until its event is
//! acked. The iterator acks an event when it is asked for the next one, so
//! the guest stays stopped exactly while the app handles the event.

use crate::client::{Result, Vmi};
use crate::v1::{self, event_spec::Source};
use std::collections::VecDeque;
use std::time::Duration;

/// How long one long poll waits; below the client's call timeout.
const LONG_POLL: Duration = Duration::from_secs(10);
/// Events asked for per poll.
const BATCH: u32 = 64;

impl v1::EventSpec {
    fn with(source: Source) -> Self {
        v1::EventSpec {
            source: Some(source),
            ..Default::default()
        }
    }

    /// Entry to the syscalls named (all of them if `names` is empty).
    pub fn syscalls(names: &[&str]) -> Self {
        Self::with(Source::Syscall(v1::SyscallSource {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            enter: true,
            exit: false,
        }))
    }

    /// Also (or, with `enter` false, only) their returns.
    pub fn exits(mut self, enter: bool) -> Self {
        if let Some(Source::Syscall(s)) = &mut self.source {
            s.exit = true;
            s.enter = enter;
        }
        self
    }

    /// Process exec and exit.
    pub fn processes(exec: bool, exit: bool) -> Self {
        Self::with(Source::Process(v1::ProcessSource { exec, exit }))
    }

    /// A breakpoint at `symbol` + `offset` in the guest kernel.
    pub fn breakpoint(symbol: &str, offset: u64) -> Self {
        Self::with(Source::Breakpoint(v1::BreakpointSource {
            target: Some(v1::breakpoint_source::Target::Symbol(symbol.to_owned())),
            offset,
        }))
    }

    /// A breakpoint at a kernel virtual address.
    pub fn breakpoint_at(address: u64) -> Self {
        Self::with(Source::Breakpoint(v1::BreakpointSource {
            target: Some(v1::breakpoint_source::Target::Address(address)),
            offset: 0,
        }))
    }

    pub fn timer(period: Duration) -> Self {
        Self::with(Source::Timer(v1::TimerSource {
            period_ms: u32::try_from(period.as_millis()).unwrap_or(u32::MAX),
        }))
    }

    /// Only events of process `pid`.
    pub fn pid(mut self, pid: u32) -> Self {
        self.pid = pid;
        self
    }

    /// Only events of tasks named `comm`.
    pub fn comm(mut self, comm: &str) -> Self {
        self.comm = comm.to_owned();
        self
    }

    /// Hold the guest until each event is acked (needs the `pause` permission).
    pub fn sync(mut self) -> Self {
        self.sync = true;
        self
    }

    /// Keep at most `capacity` undelivered events.
    pub fn queue(mut self, capacity: u32) -> Self {
        self.queue_capacity = capacity;
        self
    }
}

impl Vmi {
    /// Subscribes; returns once the sidecar has set the breakpoints it needs.
    pub fn subscribe(&self, spec: v1::EventSpec) -> Result<v1::Subscription> {
        self.client
            .call("Subscribe", &v1::SubscribeRequest { spec: Some(spec) })
    }

    /// Acks `ack`, then returns up to `max` events, waiting up to `timeout` for the first.
    pub fn next_events(
        &self,
        subscription: &v1::Subscription,
        max: u32,
        timeout: Duration,
        ack: &[u64],
    ) -> Result<v1::EventBatch> {
        self.client.call(
            "NextEvents",
            &v1::NextEventsRequest {
                subscription: subscription.id,
                max_events: max,
                timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
                ack: ack.to_vec(),
            },
        )
    }

    /// Lets the guest go on past sync events `events`.
    pub fn ack(&self, events: &[u64]) -> Result<()> {
        self.client.call::<_, v1::Empty>(
            "Ack",
            &v1::AckRequest {
                events: events.to_vec(),
            },
        )?;
        Ok(())
    }

    /// Ends a subscription; returns once its breakpoints are gone from the guest.
    pub fn unsubscribe(&self, subscription: &v1::Subscription) -> Result<()> {
        self.client.call::<_, v1::Empty>(
            "Unsubscribe",
            &v1::UnsubscribeRequest {
                subscription: subscription.id,
            },
        )?;
        Ok(())
    }

    /// The subscription's events, as a blocking iterator.
    pub fn events<'a>(&'a self, subscription: &v1::Subscription) -> EventStream<'a> {
        EventStream {
            vmi: self,
            subscription: *subscription,
            buffered: VecDeque::new(),
            to_ack: Vec::new(),
        }
    }
}

/// What the iterator yields: an event, or how many were lost before the next one.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Event(v1::Event),
    Dropped(u64),
}

pub struct EventStream<'a> {
    vmi: &'a Vmi,
    subscription: v1::Subscription,
    buffered: VecDeque<v1::Event>,
    /// Sync events handed out, acked with the next poll.
    to_ack: Vec<u64>,
}

impl EventStream<'_> {
    /// Acks the sync events handed out so far without waiting for more.
    pub fn ack_now(&mut self) -> Result<()> {
        let acks = std::mem::take(&mut self.to_ack);
        self.vmi.ack(&acks)
    }
}

impl Iterator for EventStream<'_> {
    type Item = Result<Delivery>;

    /// Blocks until an event (or a drop count) arrives; `None` never ends
    /// the stream, an error does.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                if event.sync {
                    self.to_ack.push(event.id);
                }
                return Some(Ok(Delivery::Event(event)));
            }
            let acks = std::mem::take(&mut self.to_ack);
            let batch = match self
                .vmi
                .next_events(&self.subscription, BATCH, LONG_POLL, &acks)
            {
                Ok(batch) => batch,
                Err(e) => return Some(Err(e)),
            };
            self.buffered.extend(batch.events);
            if batch.dropped > 0 {
                return Some(Ok(Delivery::Dropped(batch.dropped)));
            }
        }
    }
}
