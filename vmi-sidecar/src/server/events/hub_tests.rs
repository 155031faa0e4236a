//! The hub's queues, budgets, holds and failures, over hand-made hits.

use super::super::spec::{Hook, Spec};
use super::*;
use furnace_api::v1::event_spec::Source;

fn spec(sync: bool, capacity: u32) -> Spec {
    let request = v1::EventSpec {
        source: Some(Source::Process(v1::ProcessSource {
            exec: true,
            exit: false,
        })),
        sync,
        queue_capacity: capacity,
        ..Default::default()
    };
    Spec::for_tests(&request)
}

fn rate(max_events_per_second: u32) -> SidecarConfig {
    SidecarConfig {
        max_events_per_second,
        ..SidecarConfig::default()
    }
}

fn owner(app: &str, connection: u64) -> Owner {
    Owner {
        app: app.into(),
        connection,
    }
}

fn exec_hit(hub: &Hub) -> Held {
    exec_of(hub, "/bin/sh")
}

fn exec_of(hub: &Hub, filename: &str) -> Held {
    let probe = Probe {
        hook: Hook::Exec,
        task: Some((7, "sh")),
        syscall: None,
    };
    hub.deliver(
        Recipients::Matching(&probe),
        Template {
            seen: Instant::now(),
            timestamp_ns: 1,
            vcpu: 0,
            task: None,
            detail: Detail::Exec(v1::ProcessExec {
                filename: filename.into(),
            }),
        },
    )
}

#[test]
fn a_full_queue_counts_exactly_what_it_drops_and_a_roomy_one_drops_nothing() {
    let hub = Hub::new(&rate(1_000_000));
    let (slow, _) = hub.subscribe(owner("slow", 1), spec(false, 3)).unwrap();
    let (fast, _) = hub.subscribe(owner("fast", 2), spec(false, 100)).unwrap();
    for _ in 0..10 {
        exec_hit(&hub);
    }
    let fast_batch = hub.next("fast", fast, 256, Duration::ZERO, &[]).unwrap();
    assert_eq!((fast_batch.events.len(), fast_batch.dropped), (10, 0));
    let slow_batch = hub.next("slow", slow, 256, Duration::ZERO, &[]).unwrap();
    assert_eq!((slow_batch.events.len(), slow_batch.dropped), (3, 7));
    // The count is reported once, then starts again.
    let again = hub.next("slow", slow, 256, Duration::ZERO, &[]).unwrap();
    assert_eq!((again.events.len(), again.dropped), (0, 0));
}

#[test]
fn the_rate_limit_drops_and_counts_what_is_over_it() {
    let hub = Hub::new(&rate(5));
    let (id, _) = hub.subscribe(owner("a", 1), spec(false, 100)).unwrap();
    for _ in 0..8 {
        exec_hit(&hub);
    }
    let batch = hub.next("a", id, 256, Duration::ZERO, &[]).unwrap();
    assert_eq!((batch.events.len(), batch.dropped), (5, 3));
}

#[test]
fn sync_events_hold_until_acked_or_their_subscriber_goes() {
    let hub = Hub::new(&rate(1_000));
    let (id, _) = hub.subscribe(owner("a", 1), spec(true, 8)).unwrap();
    let held = exec_hit(&hub);
    assert_eq!(held.len(), 1);
    assert!(!hub.wait_acked(&held, Duration::ZERO));
    // Only the app that received it may ack it, and only once.
    let code = |r: Result<(), ApiError>| r.unwrap_err().code;
    assert_eq!(code(hub.ack("b", &held)), ErrorCode::NotFound);
    let batch = hub.next("a", id, 1, Duration::ZERO, &held).unwrap();
    assert!(batch.events[0].sync);
    assert!(hub.wait_acked(&held, Duration::ZERO));
    assert_eq!(code(hub.ack("a", &held)), ErrorCode::NotFound);

    let held = exec_hit(&hub);
    let (removed, _) = hub.remove_where(|o| o.connection == 1);
    assert_eq!(removed, 1);
    assert!(
        hub.wait_acked(&held, Duration::ZERO),
        "a closed connection still holds the guest"
    );
}

#[test]
fn subscriptions_belong_to_their_app_and_failure_reaches_every_waiter() {
    let hub = Hub::new(&rate(1_000));
    let (id, generation) = hub.subscribe(owner("a", 1), spec(false, 8)).unwrap();
    let code = |r: Result<v1::EventBatch, ApiError>| r.unwrap_err().code;
    assert_eq!(
        code(hub.next("b", id, 1, Duration::ZERO, &[])),
        ErrorCode::NotFound
    );
    assert_eq!(
        hub.unsubscribe("b", id).unwrap_err().code,
        ErrorCode::NotFound
    );
    hub.applied(
        generation,
        Some(ApiError::new(ErrorCode::Unsupported, "no debugger")),
    );
    assert_eq!(
        hub.wait_applied(generation, Duration::from_secs(1))
            .unwrap_err()
            .code,
        ErrorCode::Unsupported
    );
    hub.fail(ApiError::new(ErrorCode::GuestGone, "gone"));
    assert_eq!(
        code(hub.next("a", id, 1, Duration::from_secs(5), &[])),
        ErrorCode::GuestGone
    );
    assert_eq!(
        hub.subscribe(owner("a", 1), spec(false, 8))
            .unwrap_err()
            .code,
        ErrorCode::GuestGone
    );
}

/// Events of 4 KiB paths against a 64 KiB per-app budget and a 96 KiB
/// sidecar budget, in queues that would take a thousand events each.
#[test]
fn queues_are_bounded_by_bytes_per_app_and_per_sidecar() {
    let hub = Hub::new(&SidecarConfig {
        max_events_per_second: 1_000_000,
        max_event_bytes_per_app: furnace_config::ByteSize(64 << 10),
        max_event_bytes: furnace_config::ByteSize(96 << 10),
        ..SidecarConfig::default()
    });
    let path = format!("/{}", "p".repeat(4095));
    let (a, _) = hub.subscribe(owner("a", 1), spec(false, 1000)).unwrap();
    for _ in 0..40 {
        exec_of(&hub, &path);
    }
    let (b, _) = hub.subscribe(owner("b", 2), spec(false, 1000)).unwrap();
    for _ in 0..40 {
        exec_of(&hub, &path);
    }
    let batch = hub.next("a", a, 256, Duration::ZERO, &[]).unwrap();
    let per_event = batch.events[0].encoded_len();
    assert!(per_event > 4096);
    let fits_app = (64 << 10) / (per_event + 21);
    assert!(
        batch.events.len() <= fits_app && batch.events.len() + 1 >= fits_app,
        "{} events of {per_event} bytes in a 64 KiB budget",
        batch.events.len()
    );
    assert_eq!(
        batch.events.len() as u64 + batch.dropped,
        80,
        "every event is kept or counted"
    );
    let b_batch = hub.next("b", b, 256, Duration::ZERO, &[]).unwrap();
    let bytes = |events: &[v1::Event]| events.iter().map(|e| e.encoded_len()).sum::<usize>();
    assert!(
        bytes(&batch.events) + bytes(&b_batch.events) <= 96 << 10,
        "the sidecar's budget holds over both apps"
    );
    assert!(
        b_batch.dropped > 0,
        "b met the sidecar's budget, not its own"
    );
    assert_eq!(b_batch.events.len() as u64 + b_batch.dropped, 40);
    // Taking the events frees their bytes.
    exec_of(&hub, &path);
    let after = hub.next("a", a, 256, Duration::ZERO, &[]).unwrap();
    assert_eq!((after.events.len(), after.dropped), (1, 0));
    let after = hub.next("b", b, 256, Duration::ZERO, &[]).unwrap();
    assert_eq!((after.events.len(), after.dropped), (1, 0));
}
