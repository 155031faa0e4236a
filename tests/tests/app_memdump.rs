//! `furnace/memdump:dev` under `io.furnace.v1` against the real guest: with
//! the guest stopped over QMP, the app's gzip stream, decompressed, equals
//! what QEMU's own `pmemsave` writes for the same range, byte for byte.

use furnace_tests::stack::FurnaceStack;
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::{PhysicalMemory, VmControl};
use serde_json::json;
use std::io::Read;
use std::sync::{Mutex, OnceLock};

const APP: &str = "/usr/bin/furnace-memdump";

fn stack() -> &'static (FurnaceStack, String) {
    static STACK: OnceLock<(FurnaceStack, String)> = OnceLock::new();
    STACK.get_or_init(|| {
        let s = FurnaceStack::start("memdump").expect("the Furnace stack starts");
        let image = s.import("memdump").expect("the image imports");
        (s, image)
    })
}

/// The offset of the first byte where `a` and `b` differ, if any (lengths included).
fn first_difference(mut a: impl Read, mut b: impl Read) -> Option<u64> {
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return (b.read(&mut y).unwrap() != 0).then_some(offset);
        }
        b.read_exact(&mut y[..n]).ok()?;
        if let Some(i) = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q) {
            return Some(offset + i as u64);
        }
        offset += n as u64;
    }
}

/// Held while a test has the guest stopped: one test's resume must not land
/// in another's dump.
static STOPPED: Mutex<()> = Mutex::new(());

fn dump_equals_pmemsave(id: &str, start: u64, length: Option<u64>) {
    let (s, image) = stack();
    let qemu = QemuGuest::attach(&s.guest.dir).unwrap();
    let size = length.unwrap_or_else(|| qemu.physical_size() - start);
    let saved = s.guest.dir.join(format!("pmemsave-{id}.bin"));
    let (start_arg, length_arg) = (format!("{start:#x}"), size.to_string());
    let mut argv = vec![APP, "--start", &start_arg];
    if length.is_some() {
        argv.extend(["--length", &length_arg]);
    }
    let stopped = STOPPED.lock().unwrap_or_else(|p| p.into_inner());
    qemu.pause().unwrap();
    let out = s.run_app(image, id, &[], &argv);
    let pmemsave = qemu.qmp_execute(
        "pmemsave",
        Some(json!({"val": start, "size": size, "filename": saved.to_str().unwrap()})),
    );
    qemu.resume().unwrap();
    drop(stopped);
    pmemsave.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "memdump failed ({}): {stderr}",
        out.status
    );
    assert!(stderr.contains(&format!("{size} bytes in")), "{stderr}");
    let dump = flate2::read::GzDecoder::new(out.stdout.as_slice());
    let file = std::fs::File::open(&saved).unwrap();
    let differs = first_difference(dump, file);
    let _ = std::fs::remove_file(&saved);
    assert_eq!(
        differs, None,
        "the dump and pmemsave differ at offset {differs:#x?} of {start:#x}+{size:#x}"
    );
}

#[test]
fn a_dump_of_all_guest_memory_equals_pmemsave() {
    dump_equals_pmemsave("all", 0, None);
}

#[test]
fn a_dump_of_a_range_equals_pmemsave_of_that_range() {
    dump_equals_pmemsave("range", 0x100_0000 + 0x3000, Some(0x80_0000 + 0x123));
}

#[test]
fn a_range_past_the_end_of_memory_is_refused_before_any_output() {
    let (s, image) = stack();
    let out = s.run_app(image, "past-end", &[], &[APP, "--start", "4G"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "no partial dump on stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("past the end of guest memory"), "{stderr}");
}
