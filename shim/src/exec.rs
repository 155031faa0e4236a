//! Exec processes: more processes in a running task, when the provider
//! config allows it (`allow_exec`). Each runs as the init does (user,
//! no capabilities, `no_new_privs`, the same seccomp filter, every
//! namespace and cgroup: `policy::exec_process` and the launcher's join).

use crate::events::Events;
use crate::instance::Instance;
use crate::process::{lock, Exit, ProcessState, Status};
use crate::stdio;
use crate::task::error;
use containerd_shim::protos::api;
use containerd_shim::protos::events::task as task_events;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use oci_spec::runtime::{Process, Spec};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct ExecProcess {
    pub id: String,
    process: Process,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pid: Mutex<Option<u32>>,
    pub state: ProcessState,
}

impl ExecProcess {
    /// Its pid once started (0 before, as containerd expects).
    pub fn pid(&self) -> u32 {
        lock(&self.pid).unwrap_or(0)
    }
}

/// `Exec`: checks the request against the policy and records the process;
/// nothing runs until `Start`.
pub fn add(task: &Instance, events: &Events, req: &api::ExecProcessRequest) -> ttrpc::Result<()> {
    if !task.allow_exec {
        return Err(error(
            Code::FAILED_PRECONDITION,
            format!(
                "exec into Furnace task {} is refused: the provider config does not allow it (set allow_exec = true in furnace.toml)",
                req.id
            ),
        ));
    }
    if req.exec_id.is_empty() {
        return Err(error(
            Code::INVALID_ARGUMENT,
            "exec: an exec id is required",
        ));
    }
    if task.init.status().0 != Status::Running {
        return Err(error(
            Code::FAILED_PRECONDITION,
            format!("exec into task {}: it is not running", req.id),
        ));
    }
    let mut requested: Process = req
        .spec
        .as_ref()
        .ok_or("no process spec")
        .map_err(str::to_owned)
        .and_then(|any| serde_json::from_slice(&any.value).map_err(|e| e.to_string()))
        .map_err(|e| {
            error(
                Code::INVALID_ARGUMENT,
                format!("exec {}: the spec is not an OCI process: {e}", req.exec_id),
            )
        })?;
    if req.terminal {
        requested.set_terminal(Some(true));
    }
    let spec_path = task.bundle.join("config.json");
    let init = Spec::load(&spec_path)
        .ok()
        .and_then(|s| s.process().clone())
        .ok_or_else(|| {
            error(
                Code::INTERNAL,
                format!("exec: cannot read the task's spec {}", spec_path.display()),
            )
        })?;
    let process = furnace_runtime::policy::exec_process(&init, &requested)
        .map_err(|e| error(Code::INVALID_ARGUMENT, format!("exec {}: {e}", req.exec_id)))?;

    let mut execs = lock(&task.execs);
    if execs.contains_key(&req.exec_id) {
        return Err(error(
            Code::ALREADY_EXISTS,
            format!("task {} already has exec process {}", req.id, req.exec_id),
        ));
    }
    execs.insert(
        req.exec_id.clone(),
        Arc::new(ExecProcess {
            id: req.exec_id.clone(),
            process,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            pid: Mutex::new(None),
            state: ProcessState::new(None),
        }),
    );
    let mut event = task_events::TaskExecAdded::new();
    event.container_id = task.id.clone();
    event.exec_id = req.exec_id.clone();
    events.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event));
    Ok(())
}

/// `Start` of an exec id: opens its stdio and runs it in the partition.
/// The caller holds the task's lifecycle lock, so TaskExecStarted precedes
/// the process's TaskExit. Returns the pid, and the exit code if the
/// process already exited before its pid was recorded (`unclaimed`, the
/// reaper's exits of unknown pids).
pub fn start(
    task: &Instance,
    exec: &ExecProcess,
    namespace: &str,
    events: &Events,
    unclaimed: &Mutex<HashMap<u32, u32>>,
) -> ttrpc::Result<(u32, Option<u32>)> {
    if exec.state.status().0 != Status::Created {
        return Err(error(
            Code::FAILED_PRECONDITION,
            format!("exec process {} was already started", exec.id),
        ));
    }
    let io = stdio::open(namespace, &task.id, &exec.stdin, &exec.stdout, &exec.stderr)
        .map_err(|e| error(Code::INVALID_ARGUMENT, e.to_string()))?;
    let pid = task
        .partition()
        .exec(&task.bundle, task.pid, exec.process.clone(), io.container)
        .map_err(|e| error(Code::INTERNAL, e.to_string()))?;
    exec.state.set_stdin(io.stdin);
    let early_exit = {
        let mut unclaimed = lock(unclaimed);
        *lock(&exec.pid) = Some(pid);
        unclaimed.remove(&pid)
    };
    exec.state.set_status(Status::Running);
    let mut event = task_events::TaskExecStarted::new();
    event.container_id = task.id.clone();
    event.exec_id = exec.id.clone();
    event.pid = pid;
    events.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event));
    Ok((pid, early_exit))
}

/// `Kill` of an exec id: the signal goes to that process alone.
pub fn kill(exec: &ExecProcess, signal: u32) -> ttrpc::Result<()> {
    let pid = exec.pid();
    if pid == 0 || exec.state.status().1.is_some() {
        return Err(error(
            Code::NOT_FOUND,
            format!("exec process {} is not running", exec.id),
        ));
    }
    let signal = nix::sys::signal::Signal::try_from(signal as i32)
        .map_err(|_| error(Code::INVALID_ARGUMENT, format!("{signal} is not a signal")))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
        .map_err(|e| error(Code::INTERNAL, format!("kill exec {}: {e}", exec.id)))
}

/// `Delete` of an exec id: forgets a process that has exited (or never
/// started) and returns its exit.
pub fn delete(task: &Instance, exec_id: &str) -> ttrpc::Result<(u32, Exit)> {
    let mut execs = lock(&task.execs);
    let exec = execs
        .get(exec_id)
        .ok_or_else(|| not_found(&task.id, exec_id))?;
    let exit = match exec.state.status() {
        (Status::Created, _) => Exit {
            code: 0,
            at: std::time::SystemTime::now(),
        },
        (_, Some(exit)) => exit,
        _ => {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("exec process {exec_id} is still running; kill it first"),
            ))
        }
    };
    let pid = exec.pid();
    execs.remove(exec_id);
    Ok((pid, exit))
}

pub fn find(task: &Instance, exec_id: &str) -> ttrpc::Result<Arc<ExecProcess>> {
    lock(&task.execs)
        .get(exec_id)
        .cloned()
        .ok_or_else(|| not_found(&task.id, exec_id))
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    error(
        Code::NOT_FOUND,
        format!("task {id} has no exec process {exec_id}"),
    )
}
