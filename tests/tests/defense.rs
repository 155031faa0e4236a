//! The self-defense loop (docs/defense.md) on a real containerd, shim,
//! guest and sidecar: an app that keeps making a call it was not granted
//! is throttled and then killed by the provider's rules, an app beside it
//! on the same guest is left alone, and the audit log says why.

use furnace_api::Admin;
use furnace_tests::audit;
use furnace_tests::stack::FurnaceStack;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const THROTTLE_TO: u32 = 2;
const KILL_AT: u64 = 30;

fn provider_config(dir: &Path, audit_log: &Path) -> std::path::PathBuf {
    let path = dir.join("furnace-defense.toml");
    std::fs::write(
        &path,
        format!(
            r#"allow_exec = true
[defense]
audit_log = "{}"
poll_ms = 100
[[defense.rules]]
name = "hammer-throttle"
when = "not_permitted"
count = 10
window_ms = 2000
then = "throttle"
calls_per_second = {THROTTLE_TO}
[[defense.rules]]
name = "hammer-event"
when = "not_permitted"
count = 10
window_ms = 2000
then = "event"
[[defense.rules]]
name = "hammer-kill"
when = "not_permitted"
count = {KILL_AT}
window_ms = 30000
then = "kill"
"#,
            audit_log.display()
        ),
    )
    .unwrap();
    path
}

/// The record of `rule` in the audit log at `path`, waiting up to 60 s.
fn wait_for_rule(path: &Path, rule: &str) -> Value {
    audit::wait_for(path, Duration::from_secs(60), |r| r["rule"] == rule)
}

fn wait_for_status(stack: &FurnaceStack, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.task_status(id).as_deref() != Some(status) {
        assert!(
            Instant::now() < deadline,
            "{id} is {:?}, not {status}",
            stack.task_status(id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// App A makes `WritePhysical` calls without the `write` permission, 20 ms
/// apart. The sidecar refuses each NOT_PERMITTED; the shim's loop sees the
/// count, has the sidecar throttle A (the sidecar's own `GetApp` shows the
/// throttle), publishes a `/furnace/defense` event (`ctr events` shows it),
/// and when A goes on, kills its partition. App B, on the same
/// guest under the same rules, keeps running, reads the guest, and is in
/// no record; the audit log holds both of A's decisions with their evidence.
#[test]
fn an_app_hammering_a_forbidden_call_is_throttled_then_killed_and_its_neighbour_is_not() {
    let stack = FurnaceStack::start("defense").expect("the Furnace stack starts");
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = provider_config(dir.path(), &audit);
    let config = config.to_str().unwrap();
    let events_log = dir.path().join("events.txt");
    let mut events = stack
        .containerd
        .ctr_command(&["events"])
        .stdout(std::fs::File::create(&events_log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ctr events starts");
    let logged = |words: &[&str]| {
        let text = std::fs::read_to_string(&events_log).unwrap_or_default();
        text.lines().any(|l| words.iter().all(|w| l.contains(w)))
    };
    stack
        .run_detached(
            "def-quiet",
            &["--runtime-config-path", config],
            &["/furnace-probe", "hold"],
        )
        .unwrap();
    // Subscribed once the neighbour's own TaskCreate shows up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logged(&["/tasks/create", "def-quiet"]) {
        assert!(Instant::now() < deadline, "ctr events saw no TaskCreate");
        std::thread::sleep(Duration::from_millis(100));
    }
    stack
        .run_detached(
            "def-hammer",
            &["--runtime-config-path", config],
            &["/furnace-probe", "vmi-hammer", "100000", "20"],
        )
        .unwrap();

    let throttle = wait_for_rule(&audit, "hammer-throttle");
    let admin = Admin::connect(&stack.guest.dir.join("admin.sock")).unwrap();
    let app_id = |id: &str| format!("{}.{id}", furnace_tests::containerd::NAMESPACE);
    let hammer = admin.get_app(&app_id("def-hammer")).unwrap();
    assert_eq!(hammer.throttle_calls_per_second, THROTTLE_TO, "{hammer:?}");
    assert!(hammer.not_permitted >= 10, "{hammer:?}");

    let kill = wait_for_rule(&audit, "hammer-kill");
    wait_for_status(&stack, "def-hammer", "STOPPED");
    let partition = format!("{}/def-hammer", furnace_tests::containerd::NAMESPACE);
    for (record, response) in [(&throttle, "throttle"), (&kill, "kill")] {
        assert_eq!(record["partition"], partition.as_str(), "{record}");
        assert_eq!(record["condition"], "not_permitted", "{record}");
        assert_eq!(record["response"], response, "{record}");
        assert_eq!(record["outcome"], "applied", "{record}");
        let count = record["count"].as_u64().unwrap();
        assert!(record["seen"].as_u64().unwrap() >= count, "{record}");
        assert!(record["evidence"]["not_permitted"].as_u64().unwrap() >= count);
    }
    assert_eq!(throttle["calls_per_second"], THROTTLE_TO);
    assert_eq!(kill["count"], KILL_AT);
    assert!(
        kill["unix_ms"].as_u64().unwrap() > throttle["unix_ms"].as_u64().unwrap(),
        "throttled first, then killed"
    );

    assert_eq!(stack.task_status("def-quiet").as_deref(), Some("RUNNING"));
    let quiet = admin.get_app(&app_id("def-quiet")).unwrap();
    assert_eq!(
        (quiet.not_permitted, quiet.throttle_calls_per_second),
        (0, 0),
        "{quiet:?}"
    );
    let out = stack.containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "ps",
        "def-quiet",
        "/furnace-probe",
        "vmi-ps",
    ]);
    assert!(
        out.status.success(),
        "the neighbour still reads its guest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = events.kill();
    let _ = events.wait();
    assert!(
        logged(&["/furnace/defense", "hammer-event", "def-hammer"]),
        "the event rule reached containerd: {}",
        std::fs::read_to_string(&events_log).unwrap_or_default()
    );
    let records = audit::records(&audit);
    assert_eq!(records.len(), 3, "one record per decision: {records:?}");
    assert!(records.iter().all(|r| r["partition"] == partition.as_str()));
    stack.remove("def-hammer");
    stack.remove("def-quiet");
}
