//! `furnace keygen` and `furnace backend` as real processes, reached by the
//! Rust SDK through the relay (run here in-process from `furnace_fac`; the
//! relay binary has its own tests in facilities/tests/relay.rs).

use furnace_api::facilities::{keys, Facilities, MessageKind};
use furnace_fac::relay::{Limits, Relay};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn furnace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_furnace"))
}

fn keygen(dir: &Path, name: &str) -> String {
    let out = furnace()
        .arg("keygen")
        .arg(dir.join(name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn keygen_writes_a_private_key_only_root_reads_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let printed = keygen(dir.path(), "alpha");
    let key = dir.path().join("alpha.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let public = std::fs::read_to_string(dir.path().join("alpha.pub")).unwrap();
    assert_eq!(
        public,
        format!("{printed}\n"),
        "one line, the key keygen printed"
    );
    let private = keys::read_private(&key).unwrap();
    assert_eq!(keys::public_of(&private).to_string(), printed);
    let again = furnace()
        .arg("keygen")
        .arg(dir.path().join("alpha"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("alpha.key"));
    assert_eq!(
        keys::read_private(&key).unwrap().0,
        private.0,
        "the old key stays"
    );
}

#[test]
fn the_backend_prints_messages_answers_requests_and_sends_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "be");
    keygen(dir.path(), "alpha");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut backend = Killed(
        furnace()
            .args([
                "backend",
                "--listen",
                &address,
                "--on-request",
                "tr a-z A-Z",
            ])
            .arg("--key")
            .arg(dir.path().join("be.key"))
            .arg("--allow")
            .arg(dir.path().join("alpha.pub"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(backend.0.stdout.take().unwrap()).lines();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let socket = dir.path().join("fac.sock");
    let listener = runtime
        .block_on(async { tokio::net::UnixListener::bind(&socket) })
        .unwrap();
    let relay = Arc::new(Relay {
        broker: None,
        backend: address,
        limits: Limits::default(),
        storage: None,
        backoff: (Duration::from_millis(50), Duration::from_millis(200)),
        rate_limited: Arc::default(),
    });
    runtime.spawn(relay.serve(listener));

    let app_key = keys::read_private(&dir.path().join("alpha.key")).unwrap();
    let be_key = keys::read_public(&dir.path().join("be.pub")).unwrap();
    let fac = Facilities::connect(&socket, &app_key, &be_key).unwrap();
    // The backend process may still be starting: requests are not queued.
    let deadline = std::time::Instant::now() + WAIT;
    while !fac.relay_status().is_some_and(|s| s.backend_connected) {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fac.notify(b"marker-notify").unwrap();
    assert_eq!(fac.request(b"shout this", WAIT).unwrap(), b"SHOUT THIS");
    fac.notify(&[0xff, 0x00]).unwrap();
    fac.flush(WAIT).unwrap();
    let mut next =
        || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert_eq!(
        next(),
        serde_json::json!({"app": "alpha", "type": "notify", "data": "marker-notify"})
    );
    assert_eq!(
        next(),
        serde_json::json!({"app": "alpha", "type": "request", "data": "shout this"})
    );
    assert_eq!(
        next(),
        serde_json::json!({"app": "alpha", "type": "notify", "data_base64": "/wA="})
    );

    let mut stdin = backend.0.stdin.take().unwrap();
    writeln!(stdin, "notify alpha to-alpha").unwrap();
    writeln!(stdin, "broadcast to-all").unwrap();
    let got = fac.receive(WAIT).unwrap().expect("the directed message");
    assert_eq!(
        (got.kind, &got.data[..]),
        (MessageKind::Directed, &b"to-alpha"[..])
    );
    let got = fac.receive(WAIT).unwrap().expect("the broadcast");
    assert_eq!(
        (got.kind, &got.data[..]),
        (MessageKind::Broadcast, &b"to-all"[..])
    );
}
