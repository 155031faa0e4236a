//! Per-app storage: its rules through the public API, and a relay SIGKILLed
//! in the middle of puts, after which the store holds an old value or a new
//! one, never a torn one.

use furnace_api::facilities::{Facilities, Keypair};
use furnace_fac::storage::{StorageError, Store};
use std::os::unix::fs::symlink;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn values_persist_and_the_quota_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app");
    let mut s = Store::open(&path, 100).unwrap();
    s.put("a", &[1; 49]).unwrap(); // 50 bytes with its key
    s.put("b", &[2; 49]).unwrap(); // exactly the quota
    assert_eq!(s.used(), 100);
    let e = s.put("a", &[3; 50]).unwrap_err();
    assert!(
        matches!(
            e,
            StorageError::QuotaExceeded {
                needed: 101,
                used: 100,
                quota: 100
            }
        ),
        "{e}"
    );
    assert_eq!(s.get("a").unwrap(), [1; 49], "the old value stays");
    assert_eq!(s.used(), 100);
    assert!(matches!(
        s.put("c", &[0; 100]).unwrap_err(),
        StorageError::ValueTooLarge { .. }
    ));
    s.put("a", &[4; 9]).unwrap();
    assert_eq!(s.used(), 60, "a smaller value frees space");
    drop(s);

    // Reopened: the same data; a leftover temp file is removed, not counted.
    std::fs::write(path.join(".tmp-a-1-1"), [9; 30]).unwrap();
    let mut s = Store::open(&path, 100).unwrap();
    assert_eq!(
        (s.used(), s.keys().unwrap()),
        (60, vec!["a".to_string(), "b".to_string()])
    );
    assert!(!path.join(".tmp-a-1-1").exists());
    s.delete("b").unwrap();
    assert!(matches!(
        s.get("b").unwrap_err(),
        StorageError::NotFound { .. }
    ));
    assert!(matches!(
        s.delete("b").unwrap_err(),
        StorageError::NotFound { .. }
    ));

    // A tightened quota: what is there stays readable, only growth fails.
    drop(s);
    let mut s = Store::open(&path, 8).unwrap();
    assert_eq!((s.get("a").unwrap(), s.used()), (vec![4; 9], 10));
    assert!(matches!(
        s.put("b", &[5]).unwrap_err(),
        StorageError::QuotaExceeded { .. }
    ));
    s.put("a", &[6; 2]).unwrap();
    assert_eq!(s.used(), 3);
}

#[test]
fn keys_are_file_names_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), 1 << 20).unwrap();
    let long = "k".repeat(129);
    for bad in [
        "",
        ".hidden",
        "..",
        "a/b",
        "../x",
        "é",
        long.as_str(),
        ".tmp-x",
    ] {
        assert!(
            matches!(
                s.put(bad, b"v").unwrap_err(),
                StorageError::InvalidKey { .. }
            ),
            "{bad:?}"
        );
    }
    s.put(&"k".repeat(128), b"v").unwrap();
    // A symlink planted where a key's file would be is never followed.
    symlink("/etc/hostname", dir.path().join("planted")).unwrap();
    match s.get("planted") {
        Err(StorageError::Io { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ELOOP))
        }
        other => panic!("a planted symlink was read: {other:?}"),
    }
}

#[test]
fn a_relay_killed_during_puts_leaves_no_torn_value() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let socket = dir.path().join("fac.sock");
    let (be, app) = (Keypair::generate(), Keypair::generate());
    let mut relay = Command::new(env!("CARGO_BIN_EXE_furnace-fac-relay"))
        .args([
            "--listen",
            socket.to_str().unwrap(),
            "--backend",
            "127.0.0.1:9",
        ])
        .args([
            "--storage",
            storage.to_str().unwrap(),
            "--storage-quota",
            "67108864",
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the relay never bound its socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let fac = Facilities::connect(&socket, &app.private, &be.public).unwrap();
    // Each value is 4 MiB of one byte, so a torn one would mix two.
    let value = |i: u8| vec![i; 4 << 20];
    fac.storage().put("v", &value(0)).unwrap();
    let writer = std::thread::spawn(move || {
        let mut i = 1u8;
        while fac.storage().put("v", &value(i)).is_ok() {
            i = i.wrapping_add(1);
        }
        i
    });
    std::thread::sleep(Duration::from_millis(300));
    relay.kill().unwrap();
    relay.wait().unwrap();
    let reached = writer.join().unwrap();
    assert!(reached > 1, "no put finished before the kill");
    let s = Store::open(&storage, 64 << 20).unwrap();
    let got = s.get("v").unwrap();
    assert_eq!(got.len(), 4 << 20);
    assert!(got.iter().all(|b| *b == got[0]), "a torn value");
    assert!(
        got[0] == reached || got[0] == reached.wrapping_sub(1),
        "{} after {reached}",
        got[0]
    );
}
