//! The example apps and the Python SDK with a backend, under `io.furnace.v1`:
//! the real relay under the real shim, `furnace backend` in a tenant network
//! namespace (`furnace_tests::tenants::Tenants`), ground truth from QEMU.

use furnace_tests::stack::strs;
use furnace_tests::tenant::remove_storage_at_exit;
use furnace_tests::tenants::{from, lock, Tenants, WAIT};
use serde_json::Value;
use std::sync::OnceLock;

fn tenants() -> &'static Tenants {
    static T: OnceLock<Tenants> = OnceLock::new();
    T.get_or_init(|| Tenants::start("facapps"))
}

/// A message's bytes as `furnace backend` printed them (`data`, or
/// `data_base64` for bytes that are not UTF-8).
fn data_bytes(m: &Value) -> Vec<u8> {
    use base64::Engine;
    match (m["data"].as_str(), m["data_base64"].as_str()) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
        _ => panic!("a message without data: {m}"),
    }
}

/// The example apps with a backend: hidden-procs sends its report, the same
/// JSON it prints; memdump `--to-backend` streams a range of the stopped
/// guest, which the backend's messages rebuild into exactly what QEMU's
/// `pmemsave` writes for it.
#[test]
fn hidden_procs_and_memdump_report_to_the_backend() {
    use furnace_vmi::driver::qemu::QemuGuest;
    use furnace_vmi::driver::VmControl;
    let t = tenants();
    let hidden = t.stack.import("hidden-procs").unwrap();
    let flags = t.flags("alpha", &t.address(7000), "be", None);
    remove_storage_at_exit("fac-hidden");
    let out = t.stack.run_app(
        &hidden,
        "fac-hidden",
        &strs(&flags),
        &["/usr/bin/furnace-hidden-procs", "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let received = lock(&t.one)
        .wait_message(WAIT, |m| {
            m["app"] == "alpha"
                && m["data"]
                    .as_str()
                    .is_some_and(|d| d.contains("furnace-hidden-procs"))
        })
        .unwrap();
    let report: Value = serde_json::from_str(received["data"].as_str().unwrap()).unwrap();
    assert_eq!(report["hidden"], 0, "{report}");
    assert_eq!(report["findings"], printed["findings"]);

    let memdump = t.stack.import("memdump").unwrap();
    let (start, size) = (0x100_0000u64 + 0x3000, 0x20_0000u64 + 0x123);
    let qemu = QemuGuest::attach(&t.stack.guest.dir).unwrap();
    let saved = t.stack.guest.dir.join("pmemsave-fac.bin");
    qemu.pause().unwrap();
    let (start_arg, size_arg) = (format!("{start:#x}"), size.to_string());
    remove_storage_at_exit("fac-memdump");
    let out = t.stack.run_app(
        &memdump,
        "fac-memdump",
        &strs(&flags),
        &[
            "/usr/bin/furnace-memdump",
            "--to-backend",
            "--dump-id",
            "fac-test",
            "--start",
            &start_arg,
            "--length",
            &size_arg,
        ],
    );
    let pmemsave = qemu.qmp_execute(
        "pmemsave",
        Some(serde_json::json!({"val": start, "size": size, "filename": saved.to_str().unwrap()})),
    );
    qemu.resume().unwrap();
    pmemsave.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut one = lock(&t.one);
    one.wait_message(WAIT, |m| {
        m["app"] == "alpha"
            && m["data"]
                .as_str()
                .is_some_and(|d| d.contains("\"type\":\"end\"") && d.contains("fac-test"))
    })
    .unwrap();
    let mut rebuilt = vec![0u8; size as usize];
    let mut chunks = 0;
    for m in one.messages().iter().filter(|m| m["app"] == "alpha") {
        let bytes = data_bytes(m);
        let Some(newline) = bytes.iter().position(|b| *b == b'\n') else {
            continue;
        };
        let Ok(header) = serde_json::from_slice::<Value>(&bytes[..newline]) else {
            continue;
        };
        if header["dump"] != "fac-test" || header["type"] != "chunk" {
            continue;
        }
        let offset = header["offset"].as_u64().unwrap() as usize;
        let body = &bytes[newline + 1..];
        rebuilt[offset..offset + body.len()].copy_from_slice(body);
        chunks += 1;
    }
    assert!(chunks >= 3, "{chunks} chunks");
    let truth = std::fs::read(&saved).unwrap();
    let _ = std::fs::remove_file(&saved);
    assert!(
        rebuilt == truth,
        "the backend's copy of {start:#x}+{size:#x} differs from pmemsave"
    );
}

/// The Python SDK in the Python image, under the app's seccomp list:
/// notify, request and storage through the real relay.
#[test]
fn the_python_sdk_talks_to_the_backend_from_its_partition() {
    let t = tenants();
    let python = t.stack.import("python").unwrap();
    let script = "from furnace_vmi.facilities import Facilities\n\
                  f = Facilities.connect_default()\n\
                  f.notify(b'PY-notify-3c1d')\n\
                  print(f.request(b'PY-request', 5).decode())\n\
                  f.storage.put('py', b'kept')\n\
                  print(f.storage.get('py').decode())\n\
                  f.flush(10)\n";
    let flags = t.flags("beta", &t.address(7000), "be", None);
    remove_storage_at_exit("fac-python");
    let out = t.stack.run_app(
        &python,
        "fac-python",
        &strs(&flags),
        &["/usr/bin/python3", "-c", script],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "reply-to-PY-request\nkept\n"
    );
    lock(&t.one)
        .wait_message(WAIT, from("beta", "notify", "PY-notify-3c1d"))
        .unwrap();
}
