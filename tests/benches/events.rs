//! Events benchmark: what tracing costs, measured against one real guest and
//! the real `furnace-vmi-sidecar`.
//!
//! `cargo bench -p furnace-tests --bench events` boots its own guest, starts
//! the sidecar and registers an app with `syscalls`. The guest's workload
//! runs its open loop (a shell renamed `floop` opening `/dev/null` N times,
//! about seven syscalls a round) and the host times it, three ways:
//! - with no subscriber: the guest's own speed;
//! - with a subscriber to every syscall of a task named `nomatch`: every
//!   syscall still stops the guest, is decoded and matched, and none is
//!   delivered;
//! - with a subscriber to `openat` of `nomatch`: the hook is `openat`'s own
//!   handler, so only the one open a round stops the guest;
//! - with a subscriber to every syscall of `floop`, drained by a thread
//!   through the Rust SDK: every stop becomes an event.
//!
//! Rows: host time per loop round for each (and the ratio to no
//! subscriber), sustained events per second, and hit-to-app latency (the
//! event's timestamp, taken when the sidecar read the stop, to the moment
//! the app's long poll returned it) at p50 and p99. Each loop is timed
//! against a 1-round loop run the same way, whose time (the console round
//! trip) is subtracted.

mod common;

use anyhow::{ensure, Result};
use common::{cpu_model, percentile};
use furnace::guest::console;
use furnace_api::v1::{EventSpec, Permission};
use furnace_api::Vmi;
use furnace_tests::{TestGuest, TestSidecar};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ROUNDS_UNTRACED: u32 = 20_000;
const ROUNDS_TRACED: u32 = 300;
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Host nanoseconds per round of the guest's open loop, with the fixed
/// cost of asking (a 1-round loop) taken off.
fn per_round_ns(guest: &TestGuest, rounds: u32) -> Result<f64> {
    let fixed = Instant::now();
    console::open_loop(&guest.dir, 1, GUEST_TIMEOUT)?;
    let fixed = fixed.elapsed();
    let t = Instant::now();
    let run = console::open_loop(&guest.dir, rounds, GUEST_TIMEOUT)?;
    let total = t.elapsed();
    ensure!(run.count == rounds, "the guest ran {} rounds", run.count);
    Ok(total.saturating_sub(fixed).as_nanos() as f64 / f64::from(rounds - 1))
}

struct Drained {
    events: u64,
    dropped: u64,
    latencies_ns: Vec<u64>,
}

/// Drains `subscription` until `stop`, timing each event from its hit.
fn drain(
    vmi: &Vmi,
    subscription: &furnace_api::v1::Subscription,
    stop: &AtomicBool,
) -> Result<Drained> {
    let mut drained = Drained {
        events: 0,
        dropped: 0,
        latencies_ns: Vec::new(),
    };
    while !stop.load(Ordering::Acquire) {
        let batch = vmi.next_events(subscription, 256, Duration::from_millis(200), &[])?;
        let now = unix_nanos();
        drained.dropped += batch.dropped;
        for event in &batch.events {
            drained.events += 1;
            drained
                .latencies_ns
                .push(now.saturating_sub(event.timestamp_ns));
        }
    }
    Ok(drained)
}

fn main() -> Result<()> {
    let guest = TestGuest::for_bench("bench-events")?;
    let sidecar = TestSidecar::start(&guest, &[])?;
    let socket = sidecar.register("bench-events", &[Permission::Syscalls], 0);
    println!(
        "events benchmark: {} , guest {} (TCG)",
        cpu_model(),
        guest.name
    );

    let untraced = per_round_ns(&guest, ROUNDS_UNTRACED)?;

    let vmi = Vmi::connect(&socket)?;
    let unmatched = vmi.subscribe(EventSpec::syscalls(&[]).comm("nomatch"))?;
    let matched_nothing = per_round_ns(&guest, ROUNDS_TRACED)?;
    vmi.unsubscribe(&unmatched)?;
    // One call by name: its handler is hooked, so the others run free.
    let opens = vmi.subscribe(EventSpec::syscalls(&["openat"]).comm("nomatch"))?;
    let one_call = per_round_ns(&guest, ROUNDS_TRACED)?;
    vmi.unsubscribe(&opens)?;

    let all = vmi.subscribe(EventSpec::syscalls(&[]).comm("floop").queue(65_536))?;
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let stop = Arc::clone(&stop);
        let socket = socket.clone();
        std::thread::spawn(move || -> Result<Drained> {
            let vmi = Vmi::connect(&socket)?;
            // The subscription belongs to the app, so another connection of it may drain it.
            drain(&vmi, &all, &stop)
        })
    };
    let started = Instant::now();
    let traced = per_round_ns(&guest, ROUNDS_TRACED)?;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Release);
    let mut drained = consumer.join().expect("the consumer thread")?;
    vmi.unsubscribe(&all)?;
    ensure!(
        drained.events > u64::from(ROUNDS_TRACED),
        "only {} events",
        drained.events
    );
    drained.latencies_ns.sort_unstable();

    println!();
    println!(
        "{:<54} {:>14} {:>12}",
        "guest open loop, host time per round", "ns/round", "vs untraced"
    );
    println!("{:<54} {:>14.0} {:>12}", "no subscriber", untraced, "1.00x");
    for (label, value) in [
        (
            "subscriber to every syscall of nobody (stop, decode)",
            matched_nothing,
        ),
        (
            "subscriber to openat of nobody (its handler only)",
            one_call,
        ),
        (
            "subscriber to every syscall of the loop (delivered)",
            traced,
        ),
    ] {
        println!("{label:<54} {value:>14.0} {:>11.0}x", value / untraced);
    }
    println!();
    let per_second = drained.events as f64 / elapsed.as_secs_f64();
    println!(
        "sustained: {} events in {:.1} s = {per_second:.0} events/s ({} dropped; {:.1} events a round)",
        drained.events,
        elapsed.as_secs_f64(),
        drained.dropped,
        drained.events as f64 / f64::from(ROUNDS_TRACED)
    );
    println!(
        "hit-to-app latency: p50 {:.0} us, p99 {:.0} us (n = {})",
        percentile(&drained.latencies_ns, 0.5) / 1000.0,
        percentile(&drained.latencies_ns, 0.99) / 1000.0,
        drained.latencies_ns.len()
    );
    Ok(())
}
