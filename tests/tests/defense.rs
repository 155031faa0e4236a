//! The self-defense loop (docs/defense.md) on a real containerd, shim,
//! guest and sidecar: an app that keeps making a call it was not granted
//! is throttled and then killed by the provider's rules, an app beside it
//! on the same guest is left alone, and the audit log says why; an app's
//! refused syscalls, its init's and its exec processes', are answered
//! EPERM and counted exactly.

use furnace_api::Admin;
use furnace_tests::audit;
use furnace_tests::stack::FurnaceStack;
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn stack() -> &'static FurnaceStack {
    static STACK: OnceLock<FurnaceStack> = OnceLock::new();
    STACK.get_or_init(|| FurnaceStack::start("defense").expect("the Furnace stack starts"))
}

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
    let stack = stack();
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
    wait_for_status(stack, "def-hammer", "STOPPED");
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

/// Refused syscalls each test app below makes: the init's, then one exec
/// process's, then a second exec's, which the kill rule ends.
const INIT_REFUSALS: u64 = 7;
const EXEC_REFUSALS: u64 = 5;

fn seccomp_config(dir: &Path, audit_log: &Path) -> std::path::PathBuf {
    let path = dir.join("furnace-seccomp.toml");
    let all = INIT_REFUSALS + EXEC_REFUSALS;
    let rule = |name: &str, count: u64, then: &str| {
        format!(
            "[[defense.rules]]\nname = \"{name}\"\nwhen = \"seccomp_violations\"\ncount = {count}\nwindow_ms = 600000\nthen = \"{then}\"\n"
        )
    };
    let text = format!(
        "allow_exec = true\n[defense]\naudit_log = \"{}\"\npoll_ms = 100\n{}{}{}{}",
        audit_log.display(),
        rule("seccomp-seen", 1, "event"),
        rule("seccomp-all", all, "log"),
        rule("seccomp-more", all + 1, "log"),
        rule("seccomp-kill", all + 20, "kill"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// What `furnace-probe refuse` printed: every call refused EPERM.
fn assert_all_eperm(out: &std::process::Output, made: u64) {
    assert!(
        out.status.success(),
        "refuse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("refuse prints JSON");
    assert_eq!(report["made"], made, "{report}");
    assert_eq!(
        report["outcomes"],
        serde_json::json!({"EPERM": made}),
        "{report}"
    );
}

/// The app's init makes 7 refused syscalls (socket(AF_INET), unshare,
/// chroot, clone(CLONE_NEWNET), round robin) and an exec process 5 more:
/// each gets EPERM, as without the agent. The shim's count is exact: a
/// rule at 12 fires with 12 in its evidence and one at 13 does not. 20
/// more from a second exec fire the kill rule, and the task stops.
#[test]
fn refused_syscalls_are_answered_eperm_and_counted_exactly_into_the_rules() {
    let stack = stack();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = seccomp_config(dir.path(), &audit);
    let config = config.to_str().unwrap();
    let init_refusals = INIT_REFUSALS.to_string();
    stack
        .run_detached(
            "def-seccomp",
            &["--runtime-config-path", config],
            &["/furnace-probe", "refuse", &init_refusals, "hold"],
        )
        .unwrap();
    let seen = wait_for_rule(&audit, "seccomp-seen");
    assert_eq!(seen["condition"], "seccomp_violations", "{seen}");
    let exec_refusals = EXEC_REFUSALS.to_string();
    let exec = |exec_id: &str, count: &str| {
        stack.containerd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            exec_id,
            "def-seccomp",
            "/furnace-probe",
            "refuse",
            count,
        ])
    };
    assert_all_eperm(&exec("refuse-1", &exec_refusals), EXEC_REFUSALS);

    let all = wait_for_rule(&audit, "seccomp-all");
    assert_eq!(
        all["evidence"]["seccomp_violations"],
        INIT_REFUSALS + EXEC_REFUSALS,
        "{all}"
    );
    assert_eq!(
        all["partition"],
        format!("{}/def-seccomp", furnace_tests::containerd::NAMESPACE)
    );
    // Ten samples later, one more would have fired `seccomp-more`.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !audit::records(&audit)
            .iter()
            .any(|r| r["rule"] == "seccomp-more"),
        "a refusal was counted twice: {:?}",
        audit::records(&audit)
    );
    assert_eq!(stack.task_status("def-seccomp").as_deref(), Some("RUNNING"));

    let _ = exec("refuse-2", "20");
    let kill = wait_for_rule(&audit, "seccomp-kill");
    assert_eq!(kill["outcome"], "applied", "{kill}");
    wait_for_status(stack, "def-seccomp", "STOPPED");
    stack.remove("def-seccomp");
}
