//! Bad input gets a clear, typed error and no panic, and the guest is still
//! served correctly afterwards. Each error names its kind as `[CODE]`.

use furnace_api::Process;
use furnace_tests::*;
use furnace_vmi::driver::qemu::QemuGuest;
use serde_json::json;
use std::process::Command;
use std::sync::OnceLock;

fn guest() -> &'static TestGuest {
    static GUEST: OnceLock<TestGuest> = OnceLock::new();
    GUEST.get_or_init(|| TestGuest::start("bad", &[]).expect("the test guest boots"))
}

/// Runs furnace and asserts it failed with `[code]` and every `words` in its message.
fn assert_fails(args: &[&str], code: &str, words: &[&str]) {
    let out = furnace(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "furnace {args:?} succeeded");
    assert!(
        !stderr.contains("panicked"),
        "furnace {args:?} panicked: {stderr}"
    );
    assert!(
        stderr.contains(&format!("[{code}]")),
        "furnace {args:?}: expected [{code}], got: {stderr}"
    );
    for word in words {
        assert!(
            stderr.contains(word),
            "furnace {args:?}: expected {word:?} in: {stderr}"
        );
    }
}

/// The guest still answers correctly after whatever a test threw at it.
fn assert_still_served() {
    let ps: Vec<Process> =
        furnace_json(&["vmi", "ps", "--guest-dir", guest().dir_str(), "--json"]).unwrap();
    assert!(
        ps.iter().any(|p| p.name == "fworker-alpha"),
        "the guest is still read correctly"
    );
}

#[test]
fn a_guest_directory_that_does_not_exist() {
    let dir = format!("{GUEST_ROOT}/no-such-guest-{}", std::process::id());
    assert_fails(
        &["vmi", "ps", "--guest-dir", &dir],
        "INVALID_ARGUMENT",
        &["no such directory", "furnace guest up"],
    );
}

#[test]
fn an_empty_snapshot() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let profile = guest().dir.join("profile.json");
    assert_fails(
        &[
            "vmi",
            "ps",
            "--snapshot",
            file.path().to_str().unwrap(),
            "--profile",
            profile.to_str().unwrap(),
        ],
        "INVALID_ARGUMENT",
        &["empty"],
    );
}

#[test]
fn truncated_snapshots() {
    let g = guest();
    let tmp = tempfile::tempdir().unwrap();
    let (elf, raw) = (tmp.path().join("guest.elf"), tmp.path().join("guest.raw"));
    let qemu = QemuGuest::attach(&g.dir).unwrap();
    qemu.qmp_execute(
        "dump-guest-memory",
        Some(json!({"paging": false, "protocol": format!("file:{}", elf.display())})),
    )
    .unwrap();
    qemu.qmp_execute(
        "pmemsave",
        Some(json!({"val": 0, "size": 1 << 20, "filename": raw})),
    )
    .unwrap();
    let full = std::fs::metadata(&elf).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&elf)
        .unwrap()
        .set_len(full / 2)
        .unwrap();
    let profile = g.dir.join("profile.json");
    let profile = profile.to_str().unwrap();
    // An ELF core says how long it should be: the error says it is truncated.
    assert_fails(
        &[
            "vmi",
            "ps",
            "--snapshot",
            elf.to_str().unwrap(),
            "--profile",
            profile,
        ],
        "INVALID_ARGUMENT",
        &["truncated"],
    );
    // A raw dump cut to its first MiB holds no kernel: nothing is made up.
    assert_fails(
        &[
            "vmi",
            "ps",
            "--snapshot",
            raw.to_str().unwrap(),
            "--profile",
            profile,
        ],
        "NOT_FOUND",
        &["no Linux banner", "truncated snapshot"],
    );
    assert_still_served();
}

#[test]
fn addresses_that_are_not_mapped() {
    let dir = guest().dir_str();
    // A user-space address in the kernel's own page tables.
    assert_fails(
        &["vmi", "read", "--address", "0x1000", "--guest-dir", dir],
        "BAD_ADDRESS",
        &["not mapped"],
    );
    assert_fails(
        &[
            "vmi",
            "translate",
            "--address",
            "0x1000",
            "--guest-dir",
            dir,
        ],
        "BAD_ADDRESS",
        &["not mapped"],
    );
    // Past the end of guest RAM.
    assert_fails(
        &[
            "vmi",
            "read",
            "--physical",
            "--address",
            "0x100000000000",
            "--guest-dir",
            dir,
        ],
        "BAD_ADDRESS",
        &["outside guest memory"],
    );
    // Not canonical: bits 63..47 disagree.
    assert_fails(
        &[
            "vmi",
            "read",
            "--address",
            "0x0000800000000000",
            "--guest-dir",
            dir,
        ],
        "INVALID_ARGUMENT",
        &["canonical"],
    );
    // A process that does not exist.
    assert_fails(
        &[
            "vmi",
            "read",
            "--pid",
            "999999",
            "--address",
            "0x400000",
            "--guest-dir",
            dir,
        ],
        "NOT_FOUND",
        &["process"],
    );
    // A read far larger than one call may make is refused before allocating.
    let out = furnace(&[
        "vmi",
        "read",
        "--address",
        "0xffffffff81000000",
        "--size",
        "1099511627776",
        "--guest-dir",
        dir,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceeds"));
    assert_still_served();
}

#[test]
fn a_profile_that_is_not_a_profile() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"{\"not\": \"isf\"}").unwrap();
    assert_fails(
        &[
            "vmi",
            "ps",
            "--guest-dir",
            guest().dir_str(),
            "--profile",
            file.path().to_str().unwrap(),
        ],
        "INVALID_ARGUMENT",
        &["not a Volatility ISF"],
    );
}

/// A real profile, built from another Debian cloud kernel's real vmlinux.
#[test]
fn a_profile_for_another_kernel() {
    let current = std::fs::read_to_string(guest().dir.join("guest.json")).unwrap();
    let current: serde_json::Value = serde_json::from_str(&current).unwrap();
    let current = current["kernel_release"].as_str().unwrap();
    let other = other_cloud_kernel(current);
    let out = furnace(&["guest", "fetch-kernel", "--release", &other]);
    assert!(
        out.status.success(),
        "fetching {other}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other_dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let profile = format!("{other_dir}/profile.json");
    assert_fails(
        &[
            "vmi",
            "ps",
            "--guest-dir",
            guest().dir_str(),
            "--profile",
            &profile,
        ],
        "PROFILE_MISMATCH",
        &[&other, current, "furnace profile build"],
    );
    assert_still_served();
}

/// Another cloud kernel release of the same series (same module layout) that
/// apt can fetch together with its -dbg package.
fn other_cloud_kernel(current: &str) -> String {
    let series = current.split('-').next().unwrap();
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", "^linux-image-.*-cloud-amd64-dbg$"])
        .output()
        .unwrap();
    let mut releases: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| {
            p.strip_prefix("linux-image-")?
                .strip_suffix("-dbg")
                .map(str::to_owned)
        })
        .filter(|r| r != current && r.split('-').next() == Some(series))
        .collect();
    releases.sort();
    releases.pop().unwrap_or_else(|| {
        panic!("apt knows no cloud kernel besides {current}; run apt-get update")
    })
}

#[test]
fn a_qmp_socket_whose_qemu_died() {
    let doomed = TestGuest::start("dead", &[]).unwrap();
    doomed.kill_qemu().unwrap();
    assert!(
        doomed.dir.join("qmp.sock").exists(),
        "the dead QEMU left its socket behind"
    );
    assert_fails(
        &["vmi", "ps", "--guest-dir", doomed.dir_str()],
        "GUEST_GONE",
        &["QMP", "QEMU"],
    );
    let out = furnace(&["guest", "down", &doomed.name]);
    assert!(
        out.status.success(),
        "guest down cleans up after a dead QEMU: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!doomed.dir.exists());
}
