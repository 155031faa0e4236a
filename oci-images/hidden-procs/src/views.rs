//! The two kernel views of "which processes exist", and where they disagree.
//!
//! - The task list: `init_task.tasks`, which the sidecar walks for
//!   `ListProcesses` and which `ps`-style tools trust. Rootkits unlink
//!   themselves from it (the classic DKOM hide).
//! - The pid idr: `init_pid_ns.idr`, the xarray of every `struct pid`, from
//!   which the kernel looks tasks up by number (`find_task_by_pid_ns`,
//!   `/proc` readdir). A task whose pid's `tasks[PIDTYPE_PID]` leads to it,
//!   and which leads its thread group, is a process.
//!
//! A process in one view and not the other is reported.

use crate::xarray::{self, KernelMemory, NodeLayout};
use furnace_api::{ApiError, Vmi};
use serde::Serialize;
use std::collections::BTreeMap;

/// A pid namespace holds at most `PID_MAX_LIMIT` (2^22) pids.
const MAX_PIDS: usize = 1 << 22;
const TASK_COMM_LEN: usize = 16;

/// Kernel addresses and struct offsets the idr view needs, from the guest's profile.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    init_pid_ns: u64,
    /// `pid_namespace.idr` + `idr.idr_rt` + `xarray.xa_head`.
    ns_xa_head: u64,
    node: NodeLayout,
    /// `pid.tasks[PIDTYPE_PID].first` (`PIDTYPE_PID` is 0).
    pid_first_task: u64,
    /// `pid.numbers[0].nr`: the number in the init namespace.
    pid_number: u64,
    task_pid_links: u64,
    task_group_leader: u64,
    task_comm: u64,
}

impl Layout {
    pub fn of(vmi: &Vmi) -> Result<Layout, ApiError> {
        let at = |structure: &str, member: &str| vmi.member_offset(structure, member);
        Ok(Layout {
            init_pid_ns: vmi.symbol_address("init_pid_ns")?,
            ns_xa_head: at("pid_namespace", "idr")?
                + at("idr", "idr_rt")?
                + at("xarray", "xa_head")?,
            node: NodeLayout {
                shift: at("xa_node", "shift")?,
                slots: at("xa_node", "slots")?,
            },
            pid_first_task: at("pid", "tasks")? + at("hlist_head", "first")?,
            pid_number: at("pid", "numbers")? + at("upid", "nr")?,
            task_pid_links: at("task_struct", "pid_links")?,
            task_group_leader: at("task_struct", "group_leader")?,
            task_comm: at("task_struct", "comm")?,
        })
    }
}

/// A process as one view has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub pid: u32,
    pub name: String,
    /// The `task_struct`'s kernel address: what both views are matched on.
    pub task: u64,
}

/// One view: processes by task address.
pub type View = BTreeMap<u64, Seen>;

pub fn task_list(vmi: &Vmi) -> Result<View, ApiError> {
    Ok(vmi
        .processes()?
        .into_iter()
        .map(|p| {
            let seen = Seen {
                pid: p.pid,
                name: p.name,
                task: p.task,
            };
            (p.task, seen)
        })
        .collect())
}

/// Guest kernel memory through the app's VMI socket.
pub struct Kernel<'a>(pub &'a Vmi);

impl KernelMemory for Kernel<'_> {
    fn read(&self, address: u64, size: usize) -> Result<Vec<u8>, String> {
        self.0
            .read_virtual(0, address, size as u64)
            .map_err(|e| e.to_string())
    }
}

impl Kernel<'_> {
    fn bytes_at<const N: usize>(&self, address: u64) -> Result<[u8; N], String> {
        self.read(address, N)?
            .try_into()
            .map_err(|_| format!("a short read at {address:#x}"))
    }

    fn u64_at(&self, address: u64) -> Result<u64, String> {
        self.bytes_at(address).map(u64::from_le_bytes)
    }

    fn u32_at(&self, address: u64) -> Result<u32, String> {
        self.bytes_at(address).map(u32::from_le_bytes)
    }
}

/// Every thread-group leader the pid idr leads to.
pub fn pid_idr(kernel: &Kernel, layout: &Layout) -> Result<View, String> {
    let head = kernel.u64_at(layout.init_pid_ns + layout.ns_xa_head)?;
    let pids = xarray::elements(kernel, layout.node, head, MAX_PIDS).map_err(|e| e.to_string())?;
    let mut view = View::new();
    for pid in pids {
        let first = kernel.u64_at(pid + layout.pid_first_task)?;
        if first == 0 {
            // A pid kept alive only as a process group or session id.
            continue;
        }
        let task = first.checked_sub(layout.task_pid_links).ok_or_else(|| {
            format!("struct pid at {pid:#x} leads to {first:#x}, which is no task's pid_links")
        })?;
        if kernel.u64_at(task + layout.task_group_leader)? != task {
            continue; // a thread: its leader stands for the process
        }
        let number = kernel.u32_at(pid + layout.pid_number)?;
        let comm: [u8; TASK_COMM_LEN] = kernel.bytes_at(task + layout.task_comm)?;
        let name = comm.split(|&b| b == 0).next().unwrap_or_default();
        view.insert(
            task,
            Seen {
                pid: number,
                name: String::from_utf8_lossy(name).into_owned(),
                task,
            },
        );
    }
    Ok(view)
}

/// Which view a reported process is missing from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingFrom {
    TaskList,
    PidIdr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub process: Seen,
    pub missing_from: MissingFrom,
}

/// The processes in exactly one of the two views, by pid.
pub fn compare(task_list: &View, pid_idr: &View) -> Vec<Finding> {
    let only = |a: &View, b: &View, missing_from| {
        a.iter()
            .filter(|(task, _)| !b.contains_key(task))
            .map(|(_, seen)| Finding {
                process: seen.clone(),
                missing_from,
            })
            .collect::<Vec<_>>()
    };
    let mut findings = only(pid_idr, task_list, MissingFrom::TaskList);
    findings.extend(only(task_list, pid_idr, MissingFrom::PidIdr));
    findings.sort_by_key(|f| f.process.pid);
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(processes: &[(u32, &str, u64)]) -> View {
        processes
            .iter()
            .map(|&(pid, name, task)| {
                let seen = Seen {
                    pid,
                    name: name.into(),
                    task,
                };
                (task, seen)
            })
            .collect()
    }

    #[test]
    fn agreeing_views_report_nothing() {
        let both = view(&[(1, "init", 0x1000), (2, "kthreadd", 0x2000)]);
        assert!(compare(&both, &both.clone()).is_empty());
    }

    #[test]
    fn each_side_of_a_disagreement_is_named() {
        let task_list = view(&[(1, "init", 0x1000), (9, "decoy", 0x9000)]);
        let pid_idr = view(&[(1, "init", 0x1000), (7, "rootkit", 0x7000)]);
        let findings = compare(&task_list, &pid_idr);
        assert_eq!(findings.len(), 2);
        assert_eq!(
            (findings[0].process.pid, findings[0].missing_from),
            (7, MissingFrom::TaskList)
        );
        assert_eq!(
            (findings[1].process.pid, findings[1].missing_from),
            (9, MissingFrom::PidIdr)
        );
    }

    #[test]
    fn a_pid_reused_by_another_task_is_two_findings() {
        let task_list = view(&[(5, "old", 0x5000)]);
        let pid_idr = view(&[(5, "new", 0x6000)]);
        assert_eq!(compare(&task_list, &pid_idr).len(), 2);
    }
}
