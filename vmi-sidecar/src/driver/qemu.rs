//! A live QEMU guest, reached through its guest directory:
//! - `ram`: guest RAM as a shared file (`memory-backend-file,share=on`), mapped
//!   here so reads are memcpy, not monitor round trips;
//! - `qmp.sock`: run state, pause/resume, vCPU registers and the memory map,
//!   through a [`Monitor`];
//! - `gdb.sock`: the gdbstub breakpoint events need, through a [`DebuggerLink`].
//!
//! [`QemuGuest::attach`] reaches the sockets itself, as a root tool does.
//! A sidecar's unprivileged worker builds its guest with
//! [`QemuGuest::from_parts`] from what the privileged helper handed it.

use super::gdb::{Accelerator, DebuggerLink, GdbSocket};
use super::monitor::{Monitor, MonitorCommand, MonitorControl, QmpSocket};
use super::{
    Driver, MappedRam, RamBacked, RamRegion, Registers, RunState, VcpuRegisters, VmControl,
};
use crate::error::{Result, VmiError};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The memory-backend id Furnace's guests use for RAM (`-object memory-backend-file,id=pc.ram`).
pub const RAM_BACKEND_ID: &str = "pc.ram";

pub struct QemuGuest {
    dir: PathBuf,
    ram: MappedRam,
    monitor: Box<dyn Monitor>,
    debugger: Box<dyn DebuggerLink>,
    /// The QMP socket, where this process may use all of QMP (a root tool).
    qmp: Option<QmpSocket>,
}

impl QemuGuest {
    pub fn attach(dir: &Path) -> Result<Self> {
        let ram_path = checked_ram_path(dir)?;
        let qmp_socket = dir.join("qmp.sock");
        let regions = ram_regions(dir, &QmpSocket::new(&qmp_socket))?;
        let ram = MappedRam::open(&ram_path, regions, true)?;
        Ok(QemuGuest {
            dir: dir.to_owned(),
            ram,
            monitor: Box::new(QmpSocket::new(&qmp_socket)),
            debugger: Box::new(GdbSocket::new(&dir.join("gdb.sock"))),
            qmp: Some(QmpSocket::new(&qmp_socket)),
        })
    }

    /// A guest whose RAM is already mapped and whose monitor and debugger
    /// are reached through someone else (the sidecar's helper).
    pub fn from_parts(
        dir: &Path,
        ram: MappedRam,
        monitor: Box<dyn Monitor>,
        debugger: Box<dyn DebuggerLink>,
    ) -> Self {
        QemuGuest {
            dir: dir.to_owned(),
            ram,
            monitor,
            debugger,
            qmp: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs any QMP command on the guest's monitor: only a guest attached
    /// by [`QemuGuest::attach`] may.
    pub fn qmp_execute(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.qmp
            .as_ref()
            .ok_or(VmiError::Unsupported(
                "arbitrary QMP commands through the sidecar's helper",
            ))?
            .execute(command, arguments)
    }

    /// Whether the guest runs under KVM or QEMU's translator (QMP `query-kvm`).
    pub fn accelerator(&self) -> Result<Accelerator> {
        let kvm = self.monitor.run(&MonitorCommand::QueryKvm)?;
        match kvm.get("enabled").and_then(Value::as_bool) {
            Some(true) => Ok(Accelerator::Kvm),
            Some(false) => Ok(Accelerator::Tcg),
            None => Err(VmiError::Qmp(format!("query-kvm: no `enabled` in {kvm}"))),
        }
    }
}

/// `dir/ram`, once `dir` is a guest directory with a RAM file.
pub fn checked_ram_path(dir: &Path) -> Result<PathBuf> {
    let bad = |reason: &str| VmiError::BadGuestDir {
        path: dir.to_owned(),
        reason: reason.to_owned(),
    };
    if !dir.is_dir() {
        return Err(bad(
            "no such directory; start the guest with `furnace guest up NAME`",
        ));
    }
    let ram_path = dir.join("ram");
    if !ram_path.is_file() {
        return Err(bad(
            "it has no `ram` file; was QEMU started with a shared memory-backend-file?",
        ));
    }
    Ok(ram_path)
}

/// The RAM regions of guest directory `dir`, from the memory map `monitor` reports.
pub fn ram_regions(dir: &Path, monitor: &dyn Monitor) -> Result<Vec<RamRegion>> {
    let mtree = hmp_text(monitor, &MonitorCommand::MemoryMap)?;
    let regions = parse_ram_regions(&mtree, RAM_BACKEND_ID);
    if regions.is_empty() {
        let excerpt: String = mtree.chars().take(200).collect();
        return Err(VmiError::BadGuestDir {
            path: dir.to_owned(),
            reason: format!(
                "QEMU's memory map has no region of the RAM backend `{RAM_BACKEND_ID}` (`info mtree -f` began {excerpt:?})"
            ),
        });
    }
    Ok(regions)
}

fn hmp_text(monitor: &dyn Monitor, command: &MonitorCommand) -> Result<String> {
    match monitor.run(command)? {
        Value::String(text) => Ok(text),
        other => Err(VmiError::Qmp(format!(
            "{command:?}: expected text, got {other}"
        ))),
    }
}

impl RamBacked for QemuGuest {
    fn ram(&self) -> &MappedRam {
        &self.ram
    }
}

impl VmControl for QemuGuest {
    fn pause(&self) -> Result<()> {
        MonitorControl(self.monitor.as_ref()).pause()
    }

    fn resume(&self) -> Result<()> {
        MonitorControl(self.monitor.as_ref()).resume()
    }

    fn run_state(&self) -> Result<RunState> {
        MonitorControl(self.monitor.as_ref()).run_state()
    }
}

impl VcpuRegisters for QemuGuest {
    fn vcpu_count(&self) -> Result<u32> {
        let cpus = self.monitor.run(&MonitorCommand::QueryCpusFast)?;
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
        parse_registers(&hmp_text(
            self.monitor.as_ref(),
            &MonitorCommand::Registers { vcpu },
        )?)
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

    fn debugger(&self) -> Option<&dyn DebuggerLink> {
        Some(self.debugger.as_ref())
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
