//! A live QEMU guest, reached through its guest directory:
//! - `ram`: guest RAM as a shared file (`memory-backend-file,share=on`), mapped
//!   here so reads are memcpy, not monitor round trips;
//! - `qmp.sock`: run state, pause/resume, vCPU registers and the memory map.
//!
//! QEMU serves one client per QMP socket at a time, so the driver connects for
//! each operation and lets go at once: a second tool on the same guest (the
//! CLI beside a sidecar, a test pausing the guest) waits milliseconds, not
//! forever. A connection costs well under a millisecond.

use super::gdb::Accelerator;
use super::qmp::QmpClient;
use super::{
    Driver, MappedRam, RamBacked, RamRegion, Registers, RunState, VcpuRegisters, VmControl,
};
use crate::error::{Result, VmiError};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The memory-backend id Furnace's guests use for RAM (`-object memory-backend-file,id=pc.ram`).
pub const RAM_BACKEND_ID: &str = "pc.ram";

pub struct QemuGuest {
    dir: PathBuf,
    ram: MappedRam,
    qmp_socket: PathBuf,
    /// Serializes this process's QMP operations.
    qmp_lock: Mutex<()>,
}

impl QemuGuest {
    pub fn attach(dir: &Path) -> Result<Self> {
        let bad = |reason: String| VmiError::BadGuestDir {
            path: dir.to_owned(),
            reason,
        };
        if !dir.is_dir() {
            return Err(bad(
                "no such directory; start the guest with `furnace guest up NAME`".into(),
            ));
        }
        let ram_path = dir.join("ram");
        if !ram_path.is_file() {
            return Err(bad(
                "it has no `ram` file; was QEMU started with a shared memory-backend-file?".into(),
            ));
        }
        let qmp_socket = dir.join("qmp.sock");
        let mtree = QmpClient::connect(&qmp_socket)?.human_monitor("info mtree -f", None)?;
        let regions = parse_ram_regions(&mtree, RAM_BACKEND_ID);
        if regions.is_empty() {
            let excerpt: String = mtree.chars().take(200).collect();
            return Err(bad(format!(
                "QEMU's memory map has no region of the RAM backend `{RAM_BACKEND_ID}` (`info mtree -f` began {excerpt:?})"
            )));
        }
        let ram = MappedRam::open(&ram_path, regions, true)?;
        Ok(QemuGuest {
            dir: dir.to_owned(),
            ram,
            qmp_socket,
            qmp_lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs a QMP command on the guest's monitor.
    pub fn qmp_execute(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.with_qmp(|qmp| qmp.execute(command, arguments))
    }

    /// Whether the guest runs under KVM or QEMU's translator (QMP `query-kvm`).
    pub fn accelerator(&self) -> Result<Accelerator> {
        let kvm = self.qmp_execute("query-kvm", None)?;
        match kvm.get("enabled").and_then(Value::as_bool) {
            Some(true) => Ok(Accelerator::Kvm),
            Some(false) => Ok(Accelerator::Tcg),
            None => Err(VmiError::Qmp(format!("query-kvm: no `enabled` in {kvm}"))),
        }
    }

    fn with_qmp<T>(&self, f: impl FnOnce(&mut QmpClient) -> Result<T>) -> Result<T> {
        // The lock guards no data, so a panic elsewhere cannot leave it inconsistent.
        let _serialized = self
            .qmp_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut QmpClient::connect(&self.qmp_socket)?)
    }
}

impl RamBacked for QemuGuest {
    fn ram(&self) -> &MappedRam {
        &self.ram
    }
}

impl VmControl for QemuGuest {
    fn pause(&self) -> Result<()> {
        self.qmp_execute("stop", None).map(drop)
    }

    fn resume(&self) -> Result<()> {
        self.qmp_execute("cont", None).map(drop)
    }

    fn run_state(&self) -> Result<RunState> {
        let status = self.qmp_execute("query-status", None)?;
        Ok(match status.get("status").and_then(Value::as_str) {
            Some("running") => RunState::Running,
            Some("paused") => RunState::Paused,
            Some(other) => RunState::Other(other.to_owned()),
            None => {
                return Err(VmiError::Qmp(format!(
                    "query-status: no status in {status}"
                )))
            }
        })
    }
}

impl VcpuRegisters for QemuGuest {
    fn vcpu_count(&self) -> Result<u32> {
        let cpus = self.qmp_execute("query-cpus-fast", None)?;
        let count = cpus
            .as_array()
            .ok_or_else(|| VmiError::Qmp(format!("query-cpus-fast: expected a list, got {cpus}")))?
            .len();
        Ok(count as u32)
    }

    fn registers(&self, vcpu: u32) -> Result<Registers> {
        let count = self.vcpu_count()?;
        if vcpu >= count {
            return Err(VmiError::InvalidArgument(format!(
                "vCPU {vcpu} does not exist; the guest has {count}"
            )));
        }
        let text = self.with_qmp(|qmp| qmp.human_monitor("info registers", Some(vcpu)))?;
        parse_registers(&text)
    }
}

impl Driver for QemuGuest {
    fn describe(&self) -> String {
        format!("qemu guest at {}", self.dir.display())
    }

    fn control(&self) -> Option<&dyn VmControl> {
        Some(self)
    }

    fn vcpu_registers(&self) -> Option<&dyn VcpuRegisters> {
        Some(self)
    }

    fn debugger_socket(&self) -> Option<std::path::PathBuf> {
        Some(self.dir.join("gdb.sock"))
    }
}

/// Reads the RAM regions of `backend` from `info mtree -f`: the flat view
/// serving the `memory` address space (views are listed in no fixed order),
/// whose lines look like
/// `  0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000 KVM`.
pub fn parse_ram_regions(mtree: &str, backend: &str) -> Vec<RamRegion> {
    let mut regions = Vec::new();
    let mut in_memory_view = false;
    for line in mtree.lines() {
        let line = line.trim();
        if line.starts_with("FlatView") {
            if in_memory_view {
                break;
            }
            continue;
        }
        if let Some(space) = line.strip_prefix("AS \"") {
            in_memory_view |= space.starts_with("memory\"");
            continue;
        }
        if in_memory_view {
            regions.extend(parse_region_line(line, backend));
        }
    }
    regions
}

fn parse_region_line(line: &str, backend: &str) -> Option<RamRegion> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let (start, end) = (
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    );
    let (attrs, target) = rest.split_once("): ")?;
    if !(attrs.ends_with(", ram") || attrs.ends_with(", rom")) {
        return None;
    }
    let mut words = target.split_whitespace();
    if words.next() != Some(backend) {
        return None;
    }
    let file_offset = words
        .next()
        .and_then(|w| w.strip_prefix('@'))
        .and_then(|w| u64::from_str_radix(w, 16).ok())
        .unwrap_or(start);
    Some(RamRegion {
        guest_address: start,
        len: end - start + 1,
        file_offset,
    })
}

/// Parses the text of HMP `info registers` for one x86-64 vCPU.
pub fn parse_registers(text: &str) -> Result<Registers> {
    let normalized = text.replace(" =", "=");
    let mut words = normalized.split_whitespace().peekable();
    let mut regs = Registers::default();
    let mut seen_cr3 = false;
    const GPR: [&str; 16] = [
        "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11", "R12",
        "R13", "R14", "R15",
    ];
    while let Some(word) = words.next() {
        let Some((name, value)) = word.split_once('=') else {
            continue;
        };
        let Ok(value) = u64::from_str_radix(value, 16) else {
            continue;
        };
        // Segment lines read `FS=selector base limit flags`: the base follows.
        let next_hex = |words: &mut std::iter::Peekable<std::str::SplitWhitespace>| {
            words
                .next()
                .and_then(|w| u64::from_str_radix(w, 16).ok())
                .unwrap_or(0)
        };
        match name {
            "RIP" => regs.rip = value,
            "RFL" => regs.rflags = value,
            "CR0" => regs.cr0 = value,
            "CR2" => regs.cr2 = value,
            "CR3" => {
                regs.cr3 = value;
                seen_cr3 = true;
            }
            "CR4" => regs.cr4 = value,
            "EFER" => regs.efer = value,
            "FS" => regs.fs_base = next_hex(&mut words),
            "GS" => regs.gs_base = next_hex(&mut words),
            _ => {
                if let Some(i) = GPR.iter().position(|g| *g == name) {
                    regs.gpr[i] = value;
                }
            }
        }
    }
    if !seen_cr3 {
        return Err(VmiError::Qmp(format!(
            "`info registers` had no CR3: {text:?}"
        )));
    }
    regs.rsp = regs.gpr[7];
    Ok(regs)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Output of `info mtree -f` from QEMU 7.2 for a 512 MiB `pc` guest (trimmed).
    const MTREE: &str = "FlatView #0
 AS \"i440FX\", root: bus master container
 Root memory region: bus master container
  0000000000000000-ffffffffffffffff (prio 0, i/o): bus master container

FlatView #1
 AS \"memory\", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  00000000000c0000-00000000000dffff (prio 0, rom): pc.ram @00000000000c0000
  00000000000e0000-00000000000fffff (prio 1, rom): isa-bios
  0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #2
 AS \"cpu-smm-0\", root: memory
  0000000000000000-000000001fffffff (prio 0, ram): pc.ram
";

    #[test]
    fn mtree_regions_follow_the_ram_backend_only() {
        let regions = parse_ram_regions(MTREE, "pc.ram");
        assert_eq!(
            regions,
            vec![
                RamRegion {
                    guest_address: 0,
                    len: 0xa0000,
                    file_offset: 0
                },
                RamRegion {
                    guest_address: 0xc0000,
                    len: 0x20000,
                    file_offset: 0xc0000
                },
                RamRegion {
                    guest_address: 0x100000,
                    len: 0x1ff00000,
                    file_offset: 0x100000
                },
            ]
        );
    }

    #[test]
    fn registers_parse_from_hmp_text() {
        let text =
            "RAX=0000000000000001 RBX=0000000000000002 RCX=0000000000000003 RDX=0000000000000004
RSI=0000000000000005 RDI=0000000000000006 RBP=0000000000000007 RSP=ffffffff82003e80
R8 =0000000000000008 R9 =0000000000000009 R10=000000000000000a R11=000000000000000b
R12=000000000000000c R13=000000000000000d R14=000000000000000e R15=000000000000000f
RIP=ffffffff81e3b2ab RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
FS =0000 00007f0000001000 00000000 00000000
GS =0000 ffff88801f600000 00000000 00000000
CR0=80050033 CR2=00007f3c1d2e1000 CR3=0000000002c0a000 CR4=00350ef0
EFER=0000000000000d01
";
        let regs = parse_registers(text).unwrap();
        assert_eq!(regs.rip, 0xffffffff81e3b2ab);
        assert_eq!(regs.cr3, 0x2c0a000);
        assert_eq!(regs.cr4, 0x350ef0);
        assert_eq!(regs.efer, 0xd01);
        assert_eq!(regs.gs_base, 0xffff88801f600000);
        assert_eq!(regs.fs_base, 0x7f0000001000);
        assert_eq!(regs.gpr[8], 8);
        assert_eq!(regs.rsp, 0xffffffff82003e80);
    }

    #[test]
    fn registers_without_cr3_are_an_error() {
        assert!(parse_registers("garbage").is_err());
    }
}
