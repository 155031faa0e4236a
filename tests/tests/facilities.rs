//! Facilities under `io.furnace.v1`, real parts only: the real relay, started
//! by the real shim under a real containerd in its `fac` partition, between
//! the probe app and the real `furnace backend`, which runs in a network
//! namespace of its own behind a veth pair (a remote tenant), with `tcpdump`
//! on the host's end of the veth.
//!
//! The tenants and their keys are `furnace_tests::tenants::Tenants`.

use furnace_tests::ids::partition_root_uid;
use furnace_tests::relays::{
    assert_relay_gone, relay_dir, relay_process, relay_processes_anywhere,
};
use furnace_tests::running::RunningApp;
use furnace_tests::stack::strs;
use furnace_tests::tenant::{self, Capture};
use furnace_tests::tenants::{from, lines, lock, Tenants, WAIT};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

fn tenants() -> &'static Tenants {
    static T: OnceLock<Tenants> = OnceLock::new();
    T.get_or_init(|| Tenants::start("fac"))
}

/// The line of `step`.
fn step<'a>(lines: &'a [Value], step: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["step"] == step)
        .unwrap_or_else(|| panic!("no line for {step} in {lines:?}"))
}

fn ok(lines: &[Value], name: &str) -> Value {
    let l = step(lines, name);
    assert_eq!(l["ok"], true, "{name}: {l}");
    l["value"].clone()
}

fn code(lines: &[Value], name: &str) -> String {
    let l = step(lines, name);
    assert_eq!(l["ok"], false, "{name} should fail: {l}");
    l["code"].as_str().unwrap_or_default().to_string()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn notify_request_and_storage_reach_the_backend_sealed_and_storage_persists() {
    let t = tenants();
    let capture = Capture::start(&t.net, &t.keys.path().join("sealed.pcap")).unwrap();
    let id = "fac-basics";
    tenant::remove_storage(id);
    let first = t.run(
        id,
        "alpha",
        &[
            "notify:MARKER-notify-7f3a",
            "request:MARKER-request-c9d2",
            "put:kept=MARKER-stored-51e0",
            "put:gone=x",
            "delete:gone",
            "keys",
            "get:kept",
            "status",
            "flush:10000",
        ],
    );
    assert_eq!(
        ok(&first, "request:MARKER-request-c9d2"),
        "reply-to-MARKER-request-c9d2"
    );
    assert_eq!(ok(&first, "keys"), serde_json::json!(["kept"]));
    assert_eq!(ok(&first, "get:kept"), "MARKER-stored-51e0");
    let status = ok(&first, "status");
    assert_eq!(status["max_message_bytes"], 16 << 20, "{status}");
    assert_eq!(status["storage_quota_bytes"], 16 << 20, "{status}");
    ok(&first, "flush:10000");
    {
        let mut one = lock(&t.one);
        one.wait_message(WAIT, from("alpha", "notify", "MARKER-notify-7f3a"))
            .unwrap();
        one.wait_message(WAIT, from("alpha", "request", "MARKER-request-c9d2"))
            .unwrap();
    }
    // A control: plaintext on this veth is seen by the capture.
    {
        use std::io::Write;
        let mut plain = std::net::TcpStream::connect(t.address(7000)).unwrap();
        plain.write_all(b"CONTROL-plaintext-0b1e").unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let pcap = capture.finish().unwrap();
    assert!(
        tenant::contains(&pcap, b"CONTROL-plaintext-0b1e"),
        "the capture sees plaintext"
    );
    for marker in [
        "MARKER-notify-7f3a",
        "MARKER-request-c9d2",
        "reply-to-MARKER",
        "MARKER-stored-51e0",
    ] {
        assert!(
            !tenant::contains(&pcap, marker.as_bytes()),
            "{marker} crossed the veth in plaintext"
        );
    }

    // The task is gone, its relay with it; its storage stays for the next run.
    assert!(!relay_dir(id).exists(), "the relay's directory is removed");
    assert_relay_gone(id);
    let second = t.run(id, "alpha", &["get:kept", "keys"]);
    assert_eq!(ok(&second, "get:kept"), "MARKER-stored-51e0");
    assert_eq!(ok(&second, "keys"), serde_json::json!(["kept"]));
    // Another tenant (another backend) reusing the id starts empty.
    let other = t.run_with(
        id,
        t.flags("gamma", &t.address(7001), "be2", None),
        &["keys"],
    );
    assert_eq!(ok(&other, "keys"), serde_json::json!([]));
}

#[test]
fn backend_messages_go_to_the_apps_they_name_and_broadcasts_stay_in_the_tenant() {
    let t = tenants();
    // Each app waits for as many messages as it should get, then 3 s more
    // for one it should not.
    let steps = |app: &'static str, expected: usize| {
        let mut s = vec![
            Box::leak(format!("notify:hello-{app}").into_boxed_str()) as &str,
            "flush:10000",
            "ready",
        ];
        s.extend(std::iter::repeat_n("receive:20000", expected));
        s.push("receive:3000");
        s
    };
    let mut alpha = t.spawn(
        "fac-alpha",
        t.flags("alpha", &t.address(7000), "be", None),
        &steps("alpha", 2),
    );
    let mut beta = t.spawn(
        "fac-beta",
        t.flags("beta", &t.address(7000), "be", None),
        &steps("beta", 1),
    );
    let mut gamma = t.spawn(
        "fac-gamma",
        t.flags("gamma", &t.address(7001), "be2", None),
        &steps("gamma", 1),
    );
    for app in [&mut alpha, &mut beta, &mut gamma] {
        app.wait_line(WAIT, |l| l.contains("\"step\":\"ready\""))
            .unwrap();
    }
    // Both tenants send: tenant two's broadcast first, so it has had all
    // the time tenant one's messages take to reach tenant one's apps.
    {
        let mut two = lock(&t.two);
        two.wait_message(WAIT, from("gamma", "notify", "hello-gamma"))
            .unwrap();
        two.app.send_line("broadcast BROADCAST-tenant-two").unwrap();
    }
    {
        let mut one = lock(&t.one);
        one.wait_message(WAIT, from("alpha", "notify", "hello-alpha"))
            .unwrap();
        one.wait_message(WAIT, from("beta", "notify", "hello-beta"))
            .unwrap();
        one.app.send_line("notify alpha DIRECTED-to-alpha").unwrap();
        one.app.send_line("broadcast BROADCAST-tenant-one").unwrap();
    }
    let received = |app: RunningApp| -> Vec<Value> {
        let (status, out) = app.finish(WAIT).unwrap();
        assert!(status.success(), "{status}");
        let all = lines(&out.join("\n"));
        all.iter()
            .filter(|l| l["step"].as_str().is_some_and(|s| s.starts_with("receive")))
            .map(|l| {
                assert_eq!(l["ok"], true, "{l}");
                l["value"].clone()
            })
            .collect()
    };
    let directed = serde_json::json!({"kind": "Directed", "data": "DIRECTED-to-alpha"});
    let broadcast = serde_json::json!({"kind": "Broadcast", "data": "BROADCAST-tenant-one"});
    let broadcast_two = serde_json::json!({"kind": "Broadcast", "data": "BROADCAST-tenant-two"});
    let alpha = received(alpha);
    assert!(
        alpha.len() == 3
            && alpha[..2].contains(&directed)
            && alpha[..2].contains(&broadcast)
            && alpha[2].is_null(),
        "alpha gets its own message and its tenant's broadcast, nothing of tenant two's: {alpha:?}"
    );
    assert_eq!(
        received(beta),
        [broadcast, Value::Null],
        "beta gets its tenant's broadcast only"
    );
    assert_eq!(
        received(gamma),
        [broadcast_two, Value::Null],
        "gamma gets its tenant's broadcast only"
    );
    for id in ["fac-alpha", "fac-beta", "fac-gamma"] {
        t.stack.remove(id);
    }
}

#[test]
fn wrong_and_unknown_keys_are_refused_at_the_handshake_and_nothing_is_delivered() {
    let t = tenants();
    let cases = [
        // Pins tenant two's key while talking to tenant one's backend.
        (
            "fac-wrong-pin",
            t.flags("alpha", &t.address(7000), "be2", None),
            "REFUSED-pin",
        ),
        // An app key tenant one does not allow.
        (
            "fac-not-allowed",
            t.flags("delta", &t.address(7000), "be", None),
            "REFUSED-delta",
        ),
        // Tenant two's app at tenant one's backend.
        (
            "fac-other-tenant",
            t.flags("gamma", &t.address(7000), "be", None),
            "REFUSED-gamma",
        ),
    ];
    for (id, flags, marker) in cases.clone() {
        let notify = format!("notify:{marker}");
        let lines = t.run_with(
            id,
            flags,
            &[&notify, "flush:5000", "request:REFUSED-request"],
        );
        // The relay takes the notify into its outbox while it opens the
        // session; the backend's Refused reaches the SDK as NOT_PERMITTED
        // (api/src/facilities/client.rs, `take`) and ends the session. The
        // flush, which waits for the backend to take that notify, gets it.
        // Only if the Refused was there first does the notify itself fail
        // with it (the SDK refuses to send on a refused session), leaving
        // the flush nothing to wait for. A backend never reached would give
        // DEADLINE_EXCEEDED for the flush and UNAVAILABLE for the request.
        let (n, f) = (step(&lines, &notify), step(&lines, "flush:5000"));
        match (n["ok"].as_bool(), f["ok"].as_bool()) {
            (Some(true), Some(false)) => {
                assert_eq!(f["code"], "NOT_PERMITTED", "{id}: the flush: {lines:?}")
            }
            (Some(false), Some(true)) => {
                assert_eq!(n["code"], "NOT_PERMITTED", "{id}: the notify: {lines:?}")
            }
            _ => panic!("{id}: the notify or else the flush is refused: {lines:?}"),
        }
        assert_eq!(
            code(&lines, "request:REFUSED-request"),
            "NOT_PERMITTED",
            "{id}: {lines:?}"
        );
    }
    let mut one = lock(&t.one);
    std::thread::sleep(Duration::from_secs(1));
    let refusals = one
        .wait_stderr_count("refused a session", cases.len(), WAIT)
        .expect("the backend logs each refusal");
    assert!(refusals >= cases.len(), "{refusals}");
    let delivered = one.messages();
    for (_, _, marker) in cases {
        assert!(
            !delivered.iter().any(|m| m["data"] == marker),
            "{marker} was delivered: {delivered:?}"
        );
    }
}

#[test]
fn the_backend_down_and_back_gets_every_accepted_notify_once_in_order() {
    let t = tenants();
    // The outage backend is this test's alone: the others keep tenant one's.
    let mut one = lock(&t.outage);
    let mut app = t.spawn(
        "fac-outage",
        t.flags("alpha", &t.address(7002), "be", None),
        &[
            "notify:outage-0",
            "flush:10000",
            "ready",
            "sleep:1500",
            "request:outage-request",
            "notify:outage-1",
            "notify:outage-2",
            "notify:outage-3",
            "flush:60000",
        ],
    );
    app.wait_line(WAIT, |l| l.contains("\"step\":\"ready\""))
        .unwrap();
    one.wait_message(WAIT, from("alpha", "notify", "outage-0"))
        .unwrap();
    one.stop();
    std::thread::sleep(Duration::from_secs(4));
    one.restart().unwrap();
    let (status, out) = app.finish(WAIT * 2).unwrap();
    assert!(status.success(), "{status}");
    let lines = lines(&out.join("\n"));
    assert_eq!(code(&lines, "request:outage-request"), "UNAVAILABLE");
    for n in 1..=3 {
        ok(&lines, &format!("notify:outage-{n}"));
    }
    ok(&lines, "flush:60000");
    one.wait_message(WAIT, from("alpha", "notify", "outage-3"))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let got: Vec<String> = one
        .messages()
        .iter()
        .filter_map(|m| m["data"].as_str().map(String::from))
        .filter(|d| d.starts_with("outage-"))
        .collect();
    assert_eq!(
        got,
        ["outage-1", "outage-2", "outage-3"],
        "after the restart: once each, in order"
    );
}

#[test]
fn a_killed_relay_gives_unavailable_and_is_restarted_confined() {
    let t = tenants();
    let id = "fac-relay-kill";
    let mut app = t.spawn(
        id,
        t.flags("beta", &t.address(7000), "be", None),
        &[
            "notify:before-kill",
            "flush:10000",
            "ready",
            "sleep:4000",
            "notify:while-dead",
            "flush:3000",
            "reconnect",
            "notify:after-restart",
            "flush:20000",
        ],
    );
    app.wait_line(WAIT, |l| l.contains("\"step\":\"ready\""))
        .unwrap();
    let first = relay_process(id).expect("the relay runs");
    // The scan `assert_relay_gone` relies on finds it too.
    let scanned = relay_processes_anywhere(id);
    assert!(
        scanned.iter().any(|(pid, _)| *pid == first),
        "the /proc scan finds relay {first}: {scanned:?}"
    );

    // Its confinement, from the host and from its own log.
    let status = std::fs::read_to_string(format!("/proc/{first}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            .unwrap()
    };
    assert_eq!(field("CapEff"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
    // A host id range of its own, not the app's.
    let relay_uid = partition_root_uid(first);
    let app_uid = partition_root_uid(t.stack.task_pid(id).expect("the app runs"));
    assert_ne!(relay_uid, app_uid);
    let own_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        std::fs::read_link(format!("/proc/{first}/ns/net")).unwrap(),
        own_net
    );
    let links = std::process::Command::new("nsenter")
        .args(["-t", &first.to_string(), "-n", "ip", "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    let log = std::fs::read_to_string(relay_dir(id).join("relay/relay.log")).unwrap();
    assert!(
        log.contains("confinement: CapEff=0000000000000000 NoNewPrivs=1 Seccomp=2 uid=0 socket(AF_INET)=EPERM"),
        "{log}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("a new relay", || {
        relay_process(id).is_some_and(|p| p != first)
    });
    let second = relay_process(id).expect("the new relay runs");
    assert_eq!(partition_root_uid(second), relay_uid, "the same range");
    let (status, out) = app.finish(WAIT).unwrap();
    assert!(status.success(), "{status}");
    let lines = lines(&out.join("\n"));
    let dead = lines
        .iter()
        .filter(|l| ["notify:while-dead", "flush:3000"].contains(&l["step"].as_str().unwrap_or("")))
        .find(|l| l["ok"] == false)
        .unwrap_or_else(|| panic!("the dead relay is noticed: {lines:?}"));
    assert_eq!(dead["code"], "UNAVAILABLE", "{dead}");
    ok(&lines, "reconnect");
    ok(&lines, "flush:20000");
    lock(&t.one)
        .wait_message(WAIT, from("beta", "notify", "after-restart"))
        .unwrap();
    assert!(!relay_dir(id).exists());
    assert_relay_gone(id);
}

#[test]
fn limits_bad_frames_and_the_storage_quota_get_typed_errors_and_the_relay_serves_on() {
    let t = tenants();
    let id = "fac-limits";
    tenant::remove_storage(id);
    let started = furnace_defense::unix_ms();
    let lines = t.run_with(
        id,
        t.flags("alpha", &t.address(7000), "be", Some("storage=4Ki")),
        &[
            "status",
            "notify-bytes:16777217",
            "garbage",
            "flood:3000",
            "put-bytes:big=3000",
            "put-bytes:big=5000",
            "get:big",
            "sleep:1100",
            "notify:still-serving",
            "flush:20000",
        ],
    );
    assert_eq!(ok(&lines, "status")["storage_quota_bytes"], 4096);
    assert_eq!(code(&lines, "notify-bytes:16777217"), "LIMIT_EXCEEDED");
    assert_eq!(
        ok(&lines, "garbage"),
        serde_json::json!({"failed": "INVALID_ARGUMENT"})
    );
    let flood = ok(&lines, "flood:3000");
    let refused = flood["LIMIT_EXCEEDED"].as_u64().unwrap_or(0);
    assert!(refused >= 100, "the flood outran the rate: {flood}");
    assert!(flood["ok"].as_u64().unwrap_or(0) > 0, "{flood}");
    // The relay reported its refusals to the shim, whose default rule
    // `relay-rate-event` (100 in 60 s) wrote it down.
    let record = defense_record(started, id, "relay-rate-event");
    let counted = record["evidence"]["relay_rate_limited"].as_u64().unwrap();
    assert!((100..=refused).contains(&counted), "{record} vs {flood}");
    assert_eq!(record["outcome"], "applied", "{record}");
    ok(&lines, "put-bytes:big=3000");
    assert_eq!(code(&lines, "put-bytes:big=5000"), "LIMIT_EXCEEDED");
    assert_eq!(
        ok(&lines, "get:big").as_str().map(str::len),
        Some(3000),
        "the old value is kept"
    );
    ok(&lines, "flush:20000");
    lock(&t.one)
        .wait_message(WAIT, from("alpha", "notify", "still-serving"))
        .unwrap();
}

/// The record of `rule` for task `id` in the default audit log
/// (docs/defense.md), written since `since` (unix ms); waits up to 10 s.
fn defense_record(since: u64, id: &str, rule: &str) -> Value {
    let log = furnace_config::DefenseConfig::default().audit_log;
    let partition = format!("{}/{id}", furnace_tests::containerd::NAMESPACE);
    furnace_tests::audit::wait_for(&log, Duration::from_secs(10), |r| {
        r["partition"] == partition.as_str()
            && r["rule"] == rule
            && r["unix_ms"].as_u64().is_some_and(|t| t >= since)
    })
}

/// The shim copies an app's key for the app to read, so it takes only a key
/// that is root's alone under the provider's `key_root`: a key others may
/// read, and a key outside `key_root`, are refused at create naming the fix,
/// and nothing is set up for either.
#[test]
fn an_app_key_not_roots_alone_or_outside_key_root_is_refused_at_create() {
    let t = tenants();
    let shared = t.keys.path().join("shared.key");
    std::fs::copy(t.key("alpha").with_extension("key"), &shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let elsewhere = outside.path().join("alpha.key");
    std::fs::copy(t.key("alpha").with_extension("key"), &elsewhere).unwrap();
    for (id, key, expected) in [
        ("fac-key-shared", &shared, "chmod 0400"),
        ("fac-key-elsewhere", &elsewhere, "key_root"),
    ] {
        let mut flags = t.flags("alpha", &t.address(7000), "be", None);
        let last = flags.len() - 1;
        flags[last] = format!("furnace.dev/app-key={}", key.display());
        tenant::remove_storage_at_exit(id);
        t.refused_at_create(id, &flags, &["furnace.dev/app-key", expected]);
    }
}

/// The shim dials from the host's network: a backend on the host itself or
/// at the link-local metadata address is refused at create, naming the
/// provider's setting, and nothing is set up for it.
#[test]
fn a_backend_on_the_host_or_link_local_is_refused_at_create() {
    let t = tenants();
    for (id, address) in [
        ("fac-loopback", "127.0.0.1:7000"),
        ("fac-metadata", "169.254.169.254:80"),
    ] {
        let flags = t.flags("alpha", address, "be", None);
        t.refused_at_create(id, &flags, &["refused_backend_networks", address]);
    }
}

/// A shim SIGKILLed under a running app with a relay: containerd's cleanup
/// of the dead shim (`containerd-shim-furnace-v1 delete`, from the task
/// record) removes the relay too, its process, partition and directory.
#[test]
fn the_relay_of_a_dead_shim_is_removed_from_the_task_record() {
    let t = tenants();
    let id = "fac-shim-dies";
    tenant::remove_storage_at_exit(id);
    let flags = t.flags("beta", &t.address(7000), "be", None);
    t.stack
        .run_detached(
            id,
            &strs(&flags),
            &[
                "/furnace-probe",
                "fac",
                "notify:before-the-shim-dies",
                "flush:10000",
                "sleep:600000",
            ],
        )
        .unwrap();
    lock(&t.one)
        .wait_message(WAIT, from("beta", "notify", "before-the-shim-dies"))
        .unwrap();
    let relay = relay_process(id).expect("the relay runs");
    let init = t.stack.task_pid(id).expect("the task runs");
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let shim: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("the init's parent");
    let exe = std::fs::read_link(format!("/proc/{shim}/exe")).unwrap();
    assert!(
        exe.to_string_lossy()
            .ends_with("containerd-shim-furnace-v1"),
        "the init's parent is the shim: {}",
        exe.display()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    t.stack.remove(id);
    wait_for("the relay to be gone", || {
        !Path::new(&format!("/proc/{relay}")).exists()
    });
    wait_for("the relay's directory to be gone", || {
        !relay_dir(id).exists()
    });
    assert_relay_gone(id);
}
