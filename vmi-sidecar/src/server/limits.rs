//! Per-app limits the sidecar enforces. Every field has a default; a provider
//! overrides them in the `[sidecar]` table of the config file.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The largest read (or string) one call may ask for. A reply must fit in
    /// one 4 MiB frame, so this stays a little below that.
    pub max_read_bytes: u64,
    /// The most calls one batch may hold.
    pub max_batch_calls: usize,
    /// Calls one app may have executing at once, over all its connections.
    pub max_in_flight: u32,
    /// Connections one app may hold open.
    pub max_connections: u32,
    /// The longest pause lease granted; also how long a sync event may hold the guest.
    pub max_pause_ms: u32,
    /// Undelivered events a subscription keeps when it asks for no particular number.
    pub default_event_queue: u32,
    /// The most undelivered events a subscription may keep.
    pub max_event_queue: u32,
    /// Events per second one app may receive over all its subscriptions;
    /// the rest are dropped and counted.
    pub max_events_per_second: u32,
    /// Event subscriptions one app may hold.
    pub max_subscriptions: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_read_bytes: (4 << 20) - (64 << 10),
            max_batch_calls: 4096,
            max_in_flight: 8,
            max_connections: 16,
            max_pause_ms: 10_000,
            default_event_queue: 1024,
            max_event_queue: 65_536,
            max_events_per_second: 20_000,
            max_subscriptions: 64,
        }
    }
}
