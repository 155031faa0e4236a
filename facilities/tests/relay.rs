//! The relay binary as a real process, between the Rust SDK and the backend
//! library on loopback. (The relay under the shim, in its `fac` partition,
//! is tested end to end in tests/tests/facilities.rs.)

use furnace_api::facilities::{Facilities, Keypair, MessageKind};
use furnace_api::ErrorCode;
use furnace_fac::backend::{AppMessage, AppMessageKind, Backend};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

struct RelayProcess {
    child: Child,
    socket: PathBuf,
}

impl RelayProcess {
    fn start(dir: &Path, name: &str, backend: &str, extra: &[&str]) -> RelayProcess {
        let socket = dir.join(format!("{name}.sock"));
        let storage = dir.join(format!("{name}-storage"));
        let child = Command::new(env!("CARGO_BIN_EXE_furnace-fac-relay"))
            .args(["--listen", socket.to_str().unwrap(), "--backend", backend])
            .args(["--storage", storage.to_str().unwrap()])
            .args(extra)
            .spawn()
            .expect("the relay starts");
        let deadline = Instant::now() + WAIT;
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the relay never bound {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        RelayProcess { child, socket }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Seen = Arc<Mutex<Vec<AppMessage>>>;

/// A backend on a loopback port, in a runtime of its own.
struct TestBackend {
    runtime: tokio::runtime::Runtime,
    backend: Arc<Backend>,
    seen: Seen,
    address: String,
}

fn start_backend(key: &Keypair, allow: &[(&str, &Keypair)], address: &str) -> TestBackend {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let backend = Backend::new(
        key.private.clone(),
        allow
            .iter()
            .map(|(n, k)| (n.to_string(), k.public))
            .collect(),
        Arc::new(move |m: &AppMessage| {
            record.lock().unwrap().push(m.clone());
            let mut reply = b"re:".to_vec();
            reply.extend_from_slice(&m.data);
            reply
        }),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(address))
        .expect("bind");
    let address = listener.local_addr().unwrap().to_string();
    runtime.spawn(backend.clone().serve(listener));
    TestBackend {
        runtime,
        backend,
        seen,
        address,
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn texts(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect()
}

#[test]
fn notify_request_directed_broadcast_and_storage() {
    let dir = tempfile::tempdir().unwrap();
    let (be_key, alpha, beta, stranger) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let be = start_backend(
        &be_key,
        &[("alpha", &alpha), ("beta", &beta)],
        "127.0.0.1:0",
    );
    let ra = RelayProcess::start(dir.path(), "alpha", &be.address, &[]);
    let rb = RelayProcess::start(dir.path(), "beta", &be.address, &[]);
    let rs = RelayProcess::start(dir.path(), "stranger", &be.address, &[]);

    let a = Facilities::connect(&ra.socket, &alpha.private, &be_key.public).unwrap();
    let b = Facilities::connect(&rb.socket, &beta.private, &be_key.public).unwrap();
    a.notify(b"marker-alpha-1").unwrap();
    assert_eq!(a.request(b"ping", WAIT).unwrap(), b"re:ping");
    a.flush(WAIT).unwrap();
    let seen = be.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].app.as_str(), seen[0].kind, &seen[0].data[..]),
        ("alpha", AppMessageKind::Notify, &b"marker-alpha-1"[..])
    );
    assert_eq!(
        (seen[1].app.as_str(), seen[1].kind),
        ("alpha", AppMessageKind::Request)
    );

    // Directed goes to beta alone; broadcast to both.
    b.request(b"hello", WAIT).unwrap();
    wait_until("both sessions", || {
        be.backend.connected() == ["alpha", "beta"]
    });
    assert_eq!(be.backend.notify("beta", b"just-beta").unwrap(), 1);
    assert_eq!(be.backend.broadcast(b"everyone").unwrap(), 2);
    let got = b.receive(WAIT).unwrap().unwrap();
    assert_eq!(
        (got.kind, &got.data[..]),
        (MessageKind::Directed, &b"just-beta"[..])
    );
    assert_eq!(b.receive(WAIT).unwrap().unwrap().data, b"everyone");
    let got = a.receive(WAIT).unwrap().unwrap();
    assert_eq!(
        (got.kind, &got.data[..]),
        (MessageKind::Broadcast, &b"everyone"[..])
    );
    assert_eq!(
        a.receive(Duration::from_millis(200)).unwrap(),
        None,
        "alpha got beta's message"
    );

    // A key not on the allow list is refused at the handshake.
    let s = Facilities::connect(&rs.socket, &stranger.private, &be_key.public).unwrap();
    let e = s.request(b"let me in", WAIT).unwrap_err();
    assert!(
        matches!(e.code, ErrorCode::NotPermitted | ErrorCode::Unavailable),
        "{e}"
    );
    assert!(be.seen.lock().unwrap().iter().all(|m| m.app != "stranger"));
    assert_eq!(
        be.backend.notify("stranger", b"x").unwrap_err().to_string(),
        "app stranger is not on the allow list"
    );

    // Storage.
    let st = a.storage();
    st.put("scan", b"one").unwrap();
    st.put("other", b"two").unwrap();
    assert_eq!(st.get("scan").unwrap(), b"one");
    assert_eq!(st.keys().unwrap(), ["other", "scan"]);
    st.delete("other").unwrap();
    assert_eq!(st.get("other").unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(
        st.put("../x", b"y").unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    drop(be.runtime);
}

#[test]
fn a_wrong_backend_key_is_refused_and_nothing_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (be_key, other, app) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let be = start_backend(&be_key, &[("app", &app)], "127.0.0.1:0");
    let relay = RelayProcess::start(dir.path(), "app", &be.address, &[]);
    // The app pins a key that is not the backend's.
    let fac = Facilities::connect(&relay.socket, &app.private, &other.public).unwrap();
    let e = fac.request(b"secret", WAIT).unwrap_err();
    assert!(
        matches!(e.code, ErrorCode::NotPermitted | ErrorCode::Unavailable),
        "{e}"
    );
    assert!(be.seen.lock().unwrap().is_empty());
}

#[test]
fn notifies_wait_for_a_restarted_backend_and_arrive_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (be_key, app) = (Keypair::generate(), Keypair::generate());
    let be = start_backend(&be_key, &[("app", &app)], "127.0.0.1:0");
    let address = be.address.clone();
    let relay = RelayProcess::start(dir.path(), "app", &address, &[]);
    let fac = Facilities::connect(&relay.socket, &app.private, &be_key.public).unwrap();
    for i in 0..5 {
        fac.notify(format!("m{i}").as_bytes()).unwrap();
    }
    fac.flush(WAIT).unwrap();
    let before = texts(&be.seen);
    drop(be);
    for i in 5..10 {
        fac.notify(format!("m{i}").as_bytes()).unwrap();
    }
    assert_eq!(
        fac.request(b"now?", Duration::from_secs(1))
            .unwrap_err()
            .code,
        ErrorCode::Unavailable
    );
    let be = start_backend(&be_key, &[("app", &app)], &address);
    fac.flush(WAIT).unwrap();
    let mut all = before;
    all.extend(texts(&be.seen));
    let want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(all, want);
}

/// The relay accepted them, so they are delivered though the app that sent
/// them has gone before the backend came up.
#[test]
fn accepted_notifies_outlive_the_app_that_sent_them() {
    let dir = tempfile::tempdir().unwrap();
    let (be_key, app) = (Keypair::generate(), Keypair::generate());
    // A port nobody listens on yet.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let relay = RelayProcess::start(dir.path(), "app", &address, &[]);
    let fac = Facilities::connect(&relay.socket, &app.private, &be_key.public).unwrap();
    for i in 0..3 {
        fac.notify(format!("left-{i}").as_bytes()).unwrap();
    }
    drop(fac);
    let be = start_backend(&be_key, &[("app", &app)], &address);
    wait_until("the notifies of the app that left", || {
        texts(&be.seen).len() >= 3
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(texts(&be.seen), ["left-0", "left-1", "left-2"]);
}

#[test]
fn limits_give_typed_errors_and_the_relay_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (be_key, app) = (Keypair::generate(), Keypair::generate());
    let be = start_backend(&be_key, &[("app", &app)], "127.0.0.1:0");
    let relay = RelayProcess::start(
        dir.path(),
        "app",
        &be.address,
        &[
            "--max-message-bytes",
            "4096",
            "--messages-per-second",
            "20",
            "--storage-quota",
            "100",
        ],
    );
    let fac = Facilities::connect(&relay.socket, &app.private, &be_key.public).unwrap();
    assert_eq!(
        fac.notify(&[0u8; 5000]).unwrap_err().code,
        ErrorCode::LimitExceeded
    );
    let refused = (0..100).filter(|_| fac.notify(b"flood").is_err()).count();
    assert!(refused > 0, "a flood of 100 passed a rate of 20/s");

    let st = fac.storage();
    st.put("k", &[1u8; 50]).unwrap();
    assert_eq!(
        st.put("k", &[2u8; 200]).unwrap_err().code,
        ErrorCode::LimitExceeded
    );
    assert_eq!(st.get("k").unwrap(), [1u8; 50], "the old value stays");

    // Malformed and oversized frames in a session: a typed error back each
    // time, and the relay serves on.
    use furnace_api::fac::v1::{frame::Body, Hello};
    use furnace_api::facilities::{frame, seal::AppHandshake};
    use std::io::Write;
    let mut raw = std::os::unix::net::UnixStream::connect(&relay.socket).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = raw.try_clone().unwrap();
    let (hs, _) = AppHandshake::start(&app.private, &be_key.public).unwrap();
    frame::write(
        &mut writer,
        Body::Hello(Hello {
            noise: hs.hello.clone(),
        }),
    )
    .unwrap();
    let mut next_failure = || loop {
        match frame::read(&mut raw, 1 << 20)
            .unwrap()
            .expect("the relay keeps the session")
        {
            Body::Failed(f) => return ErrorCode::try_from(f.code).unwrap(),
            Body::RelayStatus(_) | Body::Welcome(_) => {}
            other => panic!("{other:?}"),
        }
    };
    writer.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(next_failure(), ErrorCode::InvalidArgument);
    writer.write_all(&8192u32.to_be_bytes()).unwrap();
    writer.write_all(&[0u8; 8192]).unwrap();
    assert_eq!(next_failure(), ErrorCode::LimitExceeded);
    frame::write(
        &mut writer,
        Body::Delivered(furnace_api::fac::v1::Delivered { seq: 1 }),
    )
    .unwrap();
    assert_eq!(next_failure(), ErrorCode::InvalidArgument);
    // The token bucket refills within a second of the flood.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        fac.request(b"still there?", WAIT).unwrap(),
        b"re:still there?"
    );
}
