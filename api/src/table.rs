//! The plain-text tables `furnace vmi ps|modules` and the example apps print,
//! so a tenant's app and the provider's CLI show a guest the same way.

use crate::v1::{Module, Process};
use std::fmt::Write;

/// One row per process: PID, PPID, UID, NAME, then the task address and page-table root.
pub fn processes(processes: &[Process]) -> String {
    let mut out = format!(
        "{:>7} {:>7} {:>6} {:<16} {:>18} {:>12}\n",
        "PID", "PPID", "UID", "NAME", "TASK", "DTB"
    );
    for p in processes {
        let _ = writeln!(
            out,
            "{:>7} {:>7} {:>6} {:<16} {:#18x} {:#12x}",
            p.pid, p.ppid, p.uid, p.name, p.task, p.dtb
        );
    }
    out
}

/// One row per module: NAME, BASE, SIZE (bytes).
pub fn modules(modules: &[Module]) -> String {
    let mut out = format!("{:<24} {:>18} {:>10}\n", "NAME", "BASE", "SIZE");
    for m in modules {
        let _ = writeln!(out, "{:<24} {:#18x} {:>10}", m.name, m.base, m.size);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_row_lines_up_under_its_header() {
        let table = processes(&[Process {
            pid: 42,
            ppid: 1,
            name: "fworker-alpha".into(),
            uid: 1000,
            dtb: 0x1234000,
            task: 0xffff_8880_0123_4000,
        }]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(header, ["PID", "PPID", "UID", "NAME", "TASK", "DTB"]);
        assert_eq!(
            row,
            [
                "42",
                "1",
                "1000",
                "fworker-alpha",
                "0xffff888001234000",
                "0x1234000"
            ]
        );
        assert_eq!(lines[0].find("NAME"), lines[1].find("fworker-alpha"));
    }

    #[test]
    fn a_module_row_gives_name_base_and_size() {
        let table = modules(&[Module {
            name: "crc32_generic".into(),
            base: 0xffff_ffff_c000_0000,
            size: 12288,
            address: 0,
        }]);
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row, ["crc32_generic", "0xffffffffc0000000", "12288"]);
    }
}
