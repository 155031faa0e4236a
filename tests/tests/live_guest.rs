//! End-to-end: a real Debian kernel booted under QEMU, read from outside by
//! `furnace vmi`, live and from both snapshot formats, compared against the
//! guest's own `ps`, `/proc/modules` and `/proc/kallsyms`.

use furnace_api::{Module, Process, Symbol};
use furnace_tests::*;
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::PhysicalMemory;
use serde_json::json;
use std::path::Path;
use std::sync::OnceLock;

fn guest() -> &'static TestGuest {
    static GUEST: OnceLock<TestGuest> = OnceLock::new();
    GUEST.get_or_init(|| TestGuest::start("live", &[]).expect("the test guest boots"))
}

#[test]
fn live_ps_equals_the_guests_own_ps() {
    let dir = guest().dir_str();
    guest().assert_ps_matches(|_| furnace_json(&["vmi", "ps", "--guest-dir", dir, "--json"]));
}

/// Saves the paused guest's memory with `save(qemu, file)` and reads the
/// process list from that file.
fn assert_snapshot_ps_matches(name: &str, save: impl Fn(&QemuGuest, &Path) -> anyhow::Result<()>) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(name);
    let profile = guest().dir.join("profile.json");
    guest().assert_ps_matches(|qemu| {
        save(qemu, &file)?;
        furnace_json(&[
            "vmi",
            "ps",
            "--snapshot",
            file.to_str().unwrap(),
            "--profile",
            profile.to_str().unwrap(),
            "--json",
        ])
    });
}

#[test]
fn pmemsave_raw_dump_ps_equals_the_guests_own_ps() {
    assert_snapshot_ps_matches("guest.raw", |qemu, file| {
        let arguments = json!({"val": 0, "size": qemu.physical_size(), "filename": file});
        qemu.qmp_execute("pmemsave", Some(arguments))?;
        Ok(())
    });
}

#[test]
fn dump_guest_memory_elf_ps_equals_the_guests_own_ps() {
    assert_snapshot_ps_matches("guest.elf", |qemu, file| {
        let arguments = json!({"paging": false, "protocol": format!("file:{}", file.display())});
        qemu.qmp_execute("dump-guest-memory", Some(arguments))?;
        Ok(())
    });
}

#[test]
fn modules_equal_proc_modules() {
    let g = guest();
    let truth = furnace::guest::console::modules(&g.dir, GROUND_TRUTH_TIMEOUT).unwrap();
    assert!(!truth.is_empty(), "the workload loads modules");
    let seen: Vec<Module> =
        furnace_json(&["vmi", "modules", "--guest-dir", g.dir_str(), "--json"]).unwrap();
    let truth: Vec<(String, u64)> = truth.into_iter().map(|m| (m.name, m.size)).collect();
    let seen: Vec<(String, u64)> = seen.into_iter().map(|m| (m.name, m.size)).collect();
    assert_eq!(seen, truth, "module list (name, size) in list order");
}

#[test]
fn symbols_equal_the_guests_kallsyms() {
    let g = guest();
    let kallsyms = furnace::guest::console::boot_kallsyms(&g.dir).unwrap();
    assert!(kallsyms.len() >= 2);
    for (name, address) in kallsyms {
        let seen: Vec<Symbol> =
            furnace_json(&["vmi", "sym", &name, "--guest-dir", g.dir_str(), "--json"]).unwrap();
        assert_eq!(
            seen[0].address, address,
            "{name}: VMI says {:#x}, the guest's kallsyms {address:#x}",
            seen[0].address
        );
    }
}

#[test]
fn reads_of_the_banner_agree_between_virtual_and_physical() {
    let g = guest();
    let sym: Vec<Symbol> = furnace_json(&[
        "vmi",
        "sym",
        "linux_banner",
        "--guest-dir",
        g.dir_str(),
        "--json",
    ])
    .unwrap();
    let address = format!("{:#x}", sym[0].address);
    let virt: serde_json::Value = furnace_json(&[
        "vmi",
        "read",
        "--address",
        &address,
        "--size",
        "14",
        "--guest-dir",
        g.dir_str(),
        "--json",
    ])
    .unwrap();
    assert_eq!(virt["hex"], hex_of(b"Linux version "));
    let t: furnace_api::Translation = furnace_json(&[
        "vmi",
        "translate",
        "--address",
        &address,
        "--guest-dir",
        g.dir_str(),
        "--json",
    ])
    .unwrap();
    let physical = format!("{:#x}", t.physical_address);
    let phys: serde_json::Value = furnace_json(&[
        "vmi",
        "read",
        "--physical",
        "--address",
        &physical,
        "--size",
        "14",
        "--guest-dir",
        g.dir_str(),
        "--json",
    ])
    .unwrap();
    assert_eq!(phys["hex"], virt["hex"]);
}

#[test]
fn user_memory_of_a_process_translates_through_its_own_page_tables() {
    let g = guest();
    let ps: Vec<Process> =
        furnace_json(&["vmi", "ps", "--guest-dir", g.dir_str(), "--json"]).unwrap();
    let worker = ps.iter().find(|p| p.name == "fworker-alpha").unwrap();
    // busybox is a static non-PIE ELF loaded at 0x400000: its first bytes are the ELF magic.
    let pid = worker.pid.to_string();
    let read: serde_json::Value = furnace_json(&[
        "vmi",
        "read",
        "--pid",
        &pid,
        "--address",
        "0x400000",
        "--size",
        "4",
        "--guest-dir",
        g.dir_str(),
        "--json",
    ])
    .unwrap();
    assert_eq!(read["hex"], hex_of(b"\x7fELF"));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
