//! Walks of kernel lists: the task list (processes) and the module list.

use super::{bad_address, field, LinuxKernel};
use crate::error::{Result, VmiError};
use furnace_api::{Module, Process};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Upper bounds on list walks, so a corrupted or hostile list cannot make a
/// walk run long. `pid_max` tops out at 2^22; modules are far fewer. A cycle
/// is found in at most about three times its distance from the head
/// ([`brent`]), so the bounds only matter for lists that are long and
/// acyclic, which a guest must build for real, node by node.
const MAX_TASKS: usize = 1 << 22;
const MAX_MODULES: usize = 1 << 16;
/// The longest one walk may take, checked every [`CLOCK_EVERY`] nodes.
pub const MAX_WALK_TIME: Duration = Duration::from_millis(500);
const CLOCK_EVERY: usize = 4096;
const TASK_COMM_LEN: usize = 16;

/// The objects of a guest list, and why the walk stopped early, if it did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walk<T> {
    pub entries: Vec<T>,
    /// `None` when the walk came back round to the head.
    pub incomplete: Option<String>,
}

impl<T> Walk<T> {
    /// The entries, or LIMIT_EXCEEDED with the reason the walk stopped.
    pub fn complete(self) -> Result<Vec<T>> {
        match self.incomplete {
            None => Ok(self.entries),
            Some(reason) => Err(VmiError::LimitExceeded(reason)),
        }
    }
}

/// Page-table roots by pid, as one walk of the task list found them.
#[derive(Debug, Clone)]
pub struct AddressSpaces {
    dtb_by_pid: HashMap<u32, u64>,
}

impl AddressSpaces {
    /// The page-table root of process `pid`; kernel threads have none.
    pub fn dtb(&self, pid: u32) -> Result<u64> {
        match self.dtb_by_pid.get(&pid) {
            None => Err(VmiError::NotFound {
                what: "process",
                name: pid.to_string(),
            }),
            Some(0) => Err(VmiError::InvalidArgument(format!(
                "process {pid} is a kernel thread and has no user address space"
            ))),
            Some(&dtb) => Ok(dtb),
        }
    }
}

impl LinuxKernel {
    /// Every process (thread-group leader) on the task list, init_task
    /// excluded, in list order; an error if the list could not be walked
    /// round to its head.
    pub fn processes(&self) -> Result<Vec<Process>> {
        self.process_walk()?.complete()
    }

    /// The task list as far as it can be walked: a forensics tool wants the
    /// processes before a corrupted link, not only an error.
    pub fn process_walk(&self) -> Result<Walk<Process>> {
        let l = &self.layout;
        let init_task = self.relocate(l.symbols.init_task);
        let head = init_task
            .checked_add(l.task_tasks)
            .ok_or_else(|| bad_address(init_task))?;
        let walk = self.list_entries(head, l.task_tasks, MAX_TASKS, "task list")?;
        let mut processes = Vec::with_capacity(walk.entries.len());
        for (i, &task) in walk.entries.iter().enumerate() {
            match self.process_at(task) {
                Ok(p) => processes.push(p),
                // A node the list led to that is no task_struct ends the list there.
                Err(e) => {
                    return Ok(Walk {
                        entries: processes,
                        incomplete: Some(format!(
                            "the task list's entry {i} at {task:#x} is unreadable: {e}"
                        )),
                    })
                }
            }
        }
        Ok(Walk {
            entries: processes,
            incomplete: walk.incomplete,
        })
    }

    /// The process with thread-group id `pid`.
    pub fn process(&self, pid: u32) -> Result<Process> {
        self.processes()?
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| VmiError::NotFound {
                what: "process",
                name: pid.to_string(),
            })
    }

    /// The page-table root of process `pid`; kernel threads have none.
    pub fn process_dtb(&self, pid: u32) -> Result<u64> {
        self.address_spaces()?.dtb(pid)
    }

    /// Every process's page-table root, from one walk of the task list, for
    /// callers that look up many.
    pub fn address_spaces(&self) -> Result<AddressSpaces> {
        let mut dtb_by_pid = HashMap::new();
        // A pid listed twice (a corrupted list) resolves as `process` does: first wins.
        for p in self.processes()? {
            dtb_by_pid.entry(p.pid).or_insert(p.dtb);
        }
        Ok(AddressSpaces { dtb_by_pid })
    }

    fn process_at(&self, task: u64) -> Result<Process> {
        let l = &self.layout;
        let parent = self.read_kernel_u64(field(task, l.task_real_parent)?)?;
        let mm = self.read_kernel_u64(field(task, l.task_mm)?)?;
        let dtb = match mm {
            0 => 0,
            mm => {
                self.kernel_to_physical(self.read_kernel_u64(field(mm, l.mm_pgd)?)?)?
                    .physical
            }
        };
        let cred = self.read_kernel_u64(field(task, l.task_real_cred)?)?;
        Ok(Process {
            pid: self.read_kernel_u32(field(task, l.task_tgid)?)?,
            ppid: self.read_kernel_u32(field(parent, l.task_tgid)?)?,
            name: self.read_kernel_cstring(field(task, l.task_comm)?, TASK_COMM_LEN)?,
            uid: self.read_kernel_u32(field(cred, l.cred_uid)?)?,
            dtb,
            task,
        })
    }

    /// Loaded kernel modules, in list order (most recently loaded first).
    pub fn modules(&self) -> Result<Vec<Module>> {
        let m = &self.layout.module;
        let head = self.relocate(self.layout.symbols.modules);
        let entries = self
            .list_entries(head, m.list, MAX_MODULES, "module list")?
            .complete()?;
        entries
            .into_iter()
            .map(|module| {
                Ok(Module {
                    name: self.read_kernel_cstring(field(module, m.name)?, m.name_len as usize)?,
                    base: self.read_kernel_u64(field(module, m.core_base)?)?,
                    size: u64::from(self.read_kernel_u32(field(module, m.core_size)?)?),
                    address: module,
                })
            })
            .collect()
    }

    /// The containing objects of a circular `list_head` list, starting after
    /// `head`; `link_offset` is where the `list_head` sits in each object.
    /// A walk that cannot come back round to `head` (a cycle that skips it,
    /// an unreadable next pointer, more than `max` nodes, more than
    /// [`MAX_WALK_TIME`]) ends early, with the nodes read before that point
    /// and the reason.
    fn list_entries(
        &self,
        head: u64,
        link_offset: u64,
        max: usize,
        what: &str,
    ) -> Result<Walk<u64>> {
        let next_of = |node: u64| {
            let at = field(node, self.layout.list_next)?;
            self.read_kernel_u64(at)
        };
        let started = Instant::now();
        let mut nodes = Vec::new();
        let mut cycle = Brent::new(head);
        let mut node = next_of(head)?;
        let incomplete = loop {
            if node == head {
                break None;
            }
            if let Some(length) = cycle.step(node) {
                nodes.truncate(brent::first_repeat(&nodes, length));
                break Some(format!(
                    "the {what} has a cycle of {length} entries that skips its head, after {} entries",
                    nodes.len()
                ));
            }
            if nodes.len() == max {
                break Some(format!("the {what} has more than {max} entries"));
            }
            if nodes.len() % CLOCK_EVERY == CLOCK_EVERY - 1 && started.elapsed() > MAX_WALK_TIME {
                break Some(format!(
                    "walking the {what} took over {MAX_WALK_TIME:?}, after {} entries",
                    nodes.len() + 1
                ));
            }
            let next = match next_of(node) {
                Ok(next) => next,
                Err(e) => {
                    break Some(format!(
                        "the {what}'s entry {} at {node:#x} is unreadable: {e}",
                        nodes.len()
                    ))
                }
            };
            nodes.push(node);
            node = next;
        };
        Ok(Walk {
            entries: nodes
                .into_iter()
                .map(|n| n.wrapping_sub(link_offset))
                .collect(),
            incomplete,
        })
    }
}

use brent::Brent;

/// Brent's cycle detection over the nodes of a walk, in O(1) memory: the
/// tortoise jumps to the hare at each power of two, and the hare meeting
/// it means a cycle of `lam` nodes.
mod brent {
    pub struct Brent {
        tortoise: u64,
        power: usize,
        lam: usize,
    }

    impl Brent {
        pub fn new(start: u64) -> Self {
            Brent {
                tortoise: start,
                power: 1,
                lam: 0,
            }
        }

        /// Feeds the next node; `Some(length)` once a cycle is seen.
        pub fn step(&mut self, node: u64) -> Option<usize> {
            self.lam += 1;
            if node == self.tortoise {
                return Some(self.lam);
            }
            if self.lam == self.power {
                self.tortoise = node;
                self.power *= 2;
                self.lam = 0;
            }
            None
        }
    }

    /// How many of `nodes` come before the walk first repeats one, given
    /// that it cycles with period `length`: the first `k` where
    /// `nodes[k] == nodes[k - length]`, or all of them.
    pub fn first_repeat(nodes: &[u64], length: usize) -> usize {
        (length..nodes.len())
            .find(|&k| nodes[k] == nodes[k - length])
            .unwrap_or(nodes.len())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Walks `next` from `head` as `list_entries` does, with Brent only.
        fn walk(next: &dyn Fn(u64) -> u64, head: u64) -> (Vec<u64>, Option<usize>) {
            let mut cycle = Brent::new(head);
            let mut nodes = Vec::new();
            let mut node = next(head);
            while node != head {
                if let Some(length) = cycle.step(node) {
                    nodes.truncate(first_repeat(&nodes, length));
                    return (nodes, Some(length));
                }
                nodes.push(node);
                node = next(node);
            }
            (nodes, None)
        }

        #[test]
        fn a_ring_through_the_head_is_no_cycle() {
            let (nodes, cycle) = walk(&|n| (n + 1) % 10, 0);
            assert_eq!(nodes, (1..10).collect::<Vec<_>>());
            assert_eq!(cycle, None);
        }

        #[test]
        fn a_cycle_that_skips_the_head_yields_each_node_once() {
            for (tail, length) in [(1, 1), (1, 7), (5, 3), (100, 1), (3, 1000), (999, 2)] {
                // head 0 -> 1 -> ... -> tail -> ... -> tail+length-1 -> back to tail
                let next = |n: u64| {
                    if n + 1 == tail + length {
                        tail
                    } else {
                        n + 1
                    }
                };
                let (nodes, cycle) = walk(&next, 0);
                assert_eq!(cycle, Some(length as usize), "tail {tail}, length {length}");
                assert_eq!(
                    nodes,
                    (1..tail + length).collect::<Vec<_>>(),
                    "tail {tail}, length {length}"
                );
            }
        }
    }
}
