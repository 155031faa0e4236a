//! Task-list walks a client makes through the SDK, call by call or as linked
//! batches: shared by the sidecar tests (which check they agree) and the
//! round-trip benchmark (which times them).

use anyhow::{bail, ensure, Context, Result};
use furnace_api::v1::{self, call::Op};
use furnace_api::{Batch, CallRef, Vmi};

const TASK_COMM_LEN: u64 = 16;
/// A guard against a list that never returns to its head.
const MAX_TASKS: usize = 1 << 16;

pub type PidNames = Vec<(u32, String)>;

/// Offsets a client walk needs, resolved through the socket.
struct TaskLayout {
    head: u64,
    tasks: u64,
    tgid: u64,
    comm: u64,
    next: u64,
}

const MEMBERS: [(&str, &str); 4] = [
    ("task_struct", "tasks"),
    ("task_struct", "tgid"),
    ("task_struct", "comm"),
    ("list_head", "next"),
];

/// (a) The task list one SDK call at a time: a symbol, four member offsets,
/// then a next pointer, a tgid and a comm per task.
pub fn walk_per_call(vmi: &Vmi) -> Result<PidNames> {
    let init_task = vmi.symbol_address("init_task")?;
    let [tasks, tgid, comm, next] = MEMBERS.map(|(s, m)| vmi.member_offset(s, m));
    let (tasks, tgid, comm, next) = (tasks?, tgid?, comm?, next?);
    let head = init_task + tasks;
    let mut out = Vec::new();
    let mut node = vmi.read_u64(0, head + next)?;
    while node != head {
        ensure!(out.len() < MAX_TASKS, "the task list does not end");
        let task = node - tasks;
        out.push((
            vmi.read_u32(0, task + tgid)?,
            vmi.read_string(0, task + comm, TASK_COMM_LEN)?,
        ));
        node = vmi.read_u64(0, node + next)?;
    }
    Ok(out)
}

/// The symbol and the member offsets in one (unlinked) batch.
fn task_layout(vmi: &Vmi) -> Result<TaskLayout> {
    let mut b = Batch::new();
    let symbol = b.symbol_address("init_task");
    let members = MEMBERS.map(|(structure, member)| {
        b.push(Op::MemberOffset(v1::MemberOffsetRequest {
            structure: structure.into(),
            member: member.into(),
        }))
    });
    let r = vmi.batch(&b)?;
    if let Some(e) = r.error {
        bail!("layout batch failed: {e}");
    }
    let int = |c: CallRef| r.integer(c).context("an integer result");
    let [tasks, tgid, comm, next] = members.map(int);
    let (tasks, tgid, comm, next) = (tasks?, tgid?, comm?, next?);
    Ok(TaskLayout {
        head: int(symbol)? + tasks,
        tasks,
        tgid,
        comm,
        next,
    })
}

/// (b) The task list as linked batches of `per_batch` tasks: each next
/// pointer is read at `next` + the previous one, each tgid and comm at
/// (offset - tasks offset) + its node. The client stops at the head; calls
/// a batch runs past it read init_task and the list's start again, harmlessly.
pub fn walk_batched(vmi: &Vmi, per_batch: usize) -> Result<PidNames> {
    let l = task_layout(vmi)?;
    let mut out = Vec::new();
    let mut start = l.head;
    loop {
        let mut b = Batch::new();
        let mut calls = Vec::with_capacity(per_batch);
        let mut prev: Option<CallRef> = None;
        for _ in 0..per_batch {
            let node = match prev {
                None => b.read_integer(0, start + l.next, 8),
                Some(p) => {
                    let c = b.read_integer(0, l.next, 8);
                    b.add_address(c, p)
                }
            };
            let tgid = b.read_integer(0, l.tgid.wrapping_sub(l.tasks), 4);
            b.add_address(tgid, node);
            let comm = b.read_string(0, l.comm.wrapping_sub(l.tasks), TASK_COMM_LEN);
            b.add_address(comm, node);
            calls.push((node, tgid, comm));
            prev = Some(node);
        }
        let r = vmi.batch(&b)?;
        if let Some(e) = r.error {
            bail!("task batch failed: {e}");
        }
        for &(node, tgid, comm) in &calls {
            let node = r.integer(node).context("a next pointer")?;
            if node == l.head {
                return Ok(out);
            }
            ensure!(out.len() < MAX_TASKS, "the task list does not end");
            out.push((
                r.integer(tgid).context("a tgid")? as u32,
                r.text(comm).context("a comm")?.to_owned(),
            ));
            start = node;
        }
    }
}
