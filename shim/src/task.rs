//! The containerd Task API (task.v2) over Furnace partitions. Every RPC of
//! the service is answered here: the init's through [`Instance`], an exec
//! id's through [`crate::exec`] (when the provider allows exec), the rest
//! with a clear refusal (checkpoint UNIMPLEMENTED, no terminals).

use crate::events::Events;
use crate::exec::{self, ExecProcess};
use crate::instance::{CreateParams, Instance, RootfsMount};
use crate::process::{lock, Status};
use crate::{metrics, options};
use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use containerd_shim::protos::api::{self, Empty};
use containerd_shim::protos::events::task as task_events;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code, TtrpcContext};
use containerd_shim::{ExitSignal, Task};
use furnace_runtime::{ProviderConfig, Role};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Exits the reaper saw for pids no task claims yet (an init that died
/// before `Create` returned), kept for the task that will claim them.
const MAX_UNCLAIMED_EXITS: usize = 64;

pub struct TaskService {
    namespace: String,
    events: Arc<Events>,
    tasks: Arc<Mutex<HashMap<String, Arc<Instance>>>>,
    unclaimed_exits: Arc<Mutex<HashMap<u32, u32>>>,
    exit: Arc<ExitSignal>,
}

pub(crate) fn error(code: Code, message: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn api_status(status: Status) -> api::Status {
    match status {
        Status::Created => api::Status::CREATED,
        Status::Running => api::Status::RUNNING,
        Status::Paused => api::Status::PAUSED,
        Status::Stopped => api::Status::STOPPED,
    }
}

pub(crate) fn timestamp(at: SystemTime) -> MessageField<Timestamp> {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    MessageField::some(t)
}

impl TaskService {
    pub fn new(namespace: &str, events: Events, exit: Arc<ExitSignal>) -> Self {
        let service = TaskService {
            namespace: namespace.into(),
            events: Arc::new(events),
            tasks: Arc::default(),
            unclaimed_exits: Arc::default(),
            exit,
        };
        service.watch_exits();
        service
    }

    /// Follows the shim's reaper: an init's or an exec's exit becomes TaskExit.
    fn watch_exits(&self) {
        let subscription = match monitor_subscribe(Topic::Pid) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot follow process exits: {e}");
                return;
            }
        };
        let (tasks, unclaimed, events) = (
            Arc::clone(&self.tasks),
            Arc::clone(&self.unclaimed_exits),
            Arc::clone(&self.events),
        );
        let spawned = std::thread::Builder::new()
            .name("exits".into())
            .spawn(move || {
                for event in subscription.rx.iter() {
                    let Subject::Pid(pid) = event.subject else {
                        continue;
                    };
                    let (pid, code) = (pid as u32, event.exit_code as u32);
                    // Held across the lookup, so a pid being recorded now
                    // either is found or finds its exit here.
                    let mut unclaimed = lock(&unclaimed);
                    match owner_of(&tasks, pid) {
                        Some((task, exec)) => {
                            drop(unclaimed);
                            publish_exit(&events, &task, exec.as_deref(), code)
                        }
                        // A relay's init: its supervisor follows it by pidfd.
                        None if lock(&tasks).values().any(|t| t.relay_owns(pid)) => {}
                        None => {
                            if unclaimed.len() >= MAX_UNCLAIMED_EXITS {
                                unclaimed.clear();
                            }
                            unclaimed.insert(pid, code);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the exit watcher: {e}");
        }
    }

    fn task(&self, id: &str) -> ttrpc::Result<Arc<Instance>> {
        lock(&self.tasks)
            .get(id)
            .cloned()
            .ok_or_else(|| error(Code::NOT_FOUND, format!("task {id} not found")))
    }

    /// One shim serves one pod, and a pod runs one app: each app is a
    /// partition of its own, with its own registration and relay, so a
    /// second app container is refused before anything is set up for it.
    fn refuse_a_second_app(&self, id: &str) -> ttrpc::Result<()> {
        match lock(&self.tasks).values().find(|t| t.role == Role::App) {
            Some(other) => Err(second_app(id, &other.id)),
            None => Ok(()),
        }
    }
}

fn second_app(id: &str, other: &str) -> ttrpc::Error {
    error(
        Code::FAILED_PRECONDITION,
        format!(
            "task {id}: this pod already runs the Furnace app {other}; a pod under io.furnace.v1 runs one app container, so give each app a pod of its own"
        ),
    )
}

type Owner = (Arc<Instance>, Option<Arc<ExecProcess>>);

/// The task whose init, or exec process, is `pid`.
fn owner_of(tasks: &Mutex<HashMap<String, Arc<Instance>>>, pid: u32) -> Option<Owner> {
    for task in lock(tasks).values() {
        if task.pid == pid {
            return Some((Arc::clone(task), None));
        }
        if let Some(exec) = lock(&task.execs).values().find(|e| e.pid() == pid) {
            return Some((Arc::clone(task), Some(Arc::clone(exec))));
        }
    }
    None
}

/// Records the exit of the task's init (`exec` None) or of one of its exec
/// processes, and publishes TaskExit for it, once. Under the task's
/// lifecycle lock, so it always follows TaskStart or TaskExecStarted.
fn publish_exit(events: &Events, task: &Instance, exec: Option<&ExecProcess>, code: u32) {
    let _order = lock(&task.lifecycle);
    let (state, id, pid) = match exec {
        Some(e) => (&e.state, e.id.as_str(), e.pid()),
        None => (&task.init, task.id.as_str(), task.pid),
    };
    if state.set_exited(code) {
        let (_, exit) = state.status();
        let mut event = task_events::TaskExit::new();
        event.container_id = task.id.clone();
        event.id = id.to_owned();
        event.pid = pid;
        event.exit_status = code;
        event.exited_at = timestamp(exit.map_or_else(SystemTime::now, |e| e.at));
        events.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
    }
}

/// `State` of the task's init (`exec` None) or of one of its exec processes.
fn state_of(task: &Instance, exec: Option<&ExecProcess>) -> api::StateResponse {
    let (state, exec_id, pid, [stdin, stdout, stderr]) = match exec {
        Some(e) => (
            &e.state,
            e.id.as_str(),
            e.pid(),
            [&e.stdin, &e.stdout, &e.stderr],
        ),
        None => (
            &task.init,
            "",
            task.pid,
            [&task.stdin, &task.stdout, &task.stderr],
        ),
    };
    let (status, exit) = state.status();
    let mut resp = api::StateResponse::new();
    resp.id = task.id.clone();
    resp.exec_id = exec_id.to_owned();
    resp.bundle = task.bundle.to_string_lossy().into_owned();
    resp.pid = pid;
    resp.status = api_status(status).into();
    resp.stdin = stdin.clone();
    resp.stdout = stdout.clone();
    resp.stderr = stderr.clone();
    if let Some(exit) = exit {
        resp.exit_status = exit.code;
        resp.exited_at = timestamp(exit.at);
    }
    resp
}

impl Task for TaskService {
    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> ttrpc::Result<api::StateResponse> {
        let task = self.task(&req.id)?;
        if req.exec_id.is_empty() {
            return Ok(state_of(&task, None));
        }
        let process = exec::find(&task, &req.exec_id)?;
        Ok(state_of(&task, Some(&process)))
    }

    fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        if lock(&self.tasks).contains_key(&req.id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("task {} already exists", req.id),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(error(
                Code::UNIMPLEMENTED,
                "io.furnace.v1 cannot restore checkpoints",
            ));
        }
        let app_role = crate::instance::role_of(Path::new(&req.bundle)) == Role::App;
        if app_role {
            self.refuse_a_second_app(&req.id)?;
        }
        let config = load_config(req.options.as_ref())?;
        let rootfs = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                fs_type: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let instance = Instance::create(CreateParams {
            namespace: &self.namespace,
            id: &req.id,
            bundle: Path::new(&req.bundle),
            rootfs,
            stdin: &req.stdin,
            stdout: &req.stdout,
            stderr: &req.stderr,
            terminal: req.terminal,
            config: &config,
        })
        .map_err(|e| match e {
            crate::instance::CreateError::Invalid(m) => error(Code::INVALID_ARGUMENT, m),
            crate::instance::CreateError::Failed(m) => error(Code::INTERNAL, m),
        })?;
        let instance = Arc::new(instance);
        let pid = instance.pid;
        let early_exit = {
            let mut unclaimed = lock(&self.unclaimed_exits);
            let mut tasks = lock(&self.tasks);
            // Checked again where it cannot race another create.
            if let Some(other) = app_role
                .then(|| tasks.values().find(|t| t.role == Role::App))
                .flatten()
            {
                let refused = second_app(&req.id, &other.id);
                drop(tasks);
                drop(unclaimed);
                for problem in instance.destroy() {
                    log::warn!("{}: {problem}", req.id);
                }
                return Err(refused);
            }
            tasks.insert(req.id.clone(), Arc::clone(&instance));
            unclaimed.remove(&pid)
        };

        let mut event = task_events::TaskCreate::new();
        event.container_id = req.id.clone();
        event.bundle = req.bundle.clone();
        event.rootfs = req.rootfs.clone();
        let mut io = task_events::TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        event.io = MessageField::some(io);
        event.pid = pid;
        self.events
            .publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event));
        crate::oom::watch(
            &instance.record.cgroups_path,
            &req.id,
            Arc::clone(&self.events),
        );
        crate::defense::watch(
            &instance,
            format!("{}/{}", self.namespace, req.id),
            &config.defense,
            Arc::clone(&self.events),
        );

        // An init that died before we knew its pid.
        if let Some(code) = early_exit {
            publish_exit(&self.events, &instance, None, code);
        }
        let mut resp = api::CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> ttrpc::Result<api::StartResponse> {
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let exec = exec::find(&task, &req.exec_id)?;
            let (pid, early_exit) = {
                let _order = lock(&task.lifecycle);
                exec::start(
                    &task,
                    &exec,
                    &self.namespace,
                    &self.events,
                    &self.unclaimed_exits,
                )?
            };
            if let Some(code) = early_exit {
                publish_exit(&self.events, &task, Some(&exec), code);
            }
            let mut resp = api::StartResponse::new();
            resp.pid = pid;
            return Ok(resp);
        }
        {
            let _order = lock(&task.lifecycle);
            if task.init.status().0 != Status::Created {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is not in the created state", req.id),
                ));
            }
            task.partition()
                .start()
                .map_err(|e| error(Code::INTERNAL, e.to_string()))?;
            task.init.set_status(Status::Running);
            let mut event = task_events::TaskStart::new();
            event.container_id = task.id.clone();
            event.pid = task.pid;
            self.events
                .publish(topics::TASK_START_EVENT_TOPIC, Box::new(event));
        }
        let mut resp = api::StartResponse::new();
        resp.pid = task.pid;
        Ok(resp)
    }

    fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let (pid, exit) = exec::delete(&task, &req.exec_id)?;
            let mut resp = api::DeleteResponse::new();
            resp.pid = pid;
            resp.exit_status = exit.code;
            resp.exited_at = timestamp(exit.at);
            return Ok(resp);
        }
        if matches!(task.init.status().0, Status::Running | Status::Paused) {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("task {} is still running; kill it first", req.id),
            ));
        }
        for problem in task.destroy() {
            log::warn!("delete {}: {problem}", req.id);
        }
        // A created task never started: destroy killed its init.
        let exit = task
            .init
            .wait_for(Duration::from_secs(5))
            .map_or((137, SystemTime::now()), |e| (e.code, e.at));
        lock(&self.tasks).remove(&req.id);

        let mut event = task_events::TaskDelete::new();
        event.container_id = task.id.clone();
        event.id = task.id.clone();
        event.pid = task.pid;
        event.exit_status = exit.0;
        event.exited_at = timestamp(exit.1);
        self.events
            .publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event));

        let mut resp = api::DeleteResponse::new();
        resp.pid = task.pid;
        resp.exit_status = exit.0;
        resp.exited_at = timestamp(exit.1);
        Ok(resp)
    }

    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        let task = self.task(&req.id)?;
        let pids = task
            .cgroups()
            .pids()
            .map_err(|e| error(Code::INTERNAL, e))?;
        let mut resp = api::PidsResponse::new();
        resp.processes = pids
            .into_iter()
            .map(|pid| {
                let mut info = api::ProcessInfo::new();
                info.pid = pid;
                info
            })
            .collect();
        Ok(resp)
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        let task = self.task(&req.id)?;
        task.partition()
            .pause()
            .map_err(|e| error(Code::FAILED_PRECONDITION, e.to_string()))?;
        task.init.set_status(Status::Paused);
        let mut event = task_events::TaskPaused::new();
        event.container_id = task.id.clone();
        self.events
            .publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event));
        Ok(Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        let task = self.task(&req.id)?;
        task.partition()
            .resume()
            .map_err(|e| error(Code::FAILED_PRECONDITION, e.to_string()))?;
        task.init.set_status(Status::Running);
        let mut event = task_events::TaskResumed::new();
        event.container_id = task.id.clone();
        self.events
            .publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event));
        Ok(Empty::new())
    }

    fn checkpoint(&self, _: &TtrpcContext, _: api::CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        Err(error(
            Code::UNIMPLEMENTED,
            "io.furnace.v1 does not checkpoint partitions",
        ))
    }

    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let process = exec::find(&task, &req.exec_id)?;
            exec::kill(&process, req.signal)?;
            return Ok(Empty::new());
        }
        if task.init.status().1.is_some() {
            return Err(error(
                Code::NOT_FOUND,
                format!("task {}: process already finished", req.id),
            ));
        }
        task.partition()
            .kill(req.signal, req.all)
            .map_err(|e| error(Code::INTERNAL, e.to_string()))?;
        Ok(Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        let task = self.task(&req.id)?;
        exec::add(&task, &self.events, &req)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.task(&req.id)?;
        Err(error(
            Code::FAILED_PRECONDITION,
            format!(
                "task {} has no terminal to resize (Furnace apps run without a tty)",
                req.id
            ),
        ))
    }

    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        let task = self.task(&req.id)?;
        if req.stdin {
            if req.exec_id.is_empty() {
                task.init.close_stdin();
            } else {
                exec::find(&task, &req.exec_id)?.state.close_stdin();
            }
        }
        Ok(Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let task = self.task(&req.id)?;
        let value = req
            .resources
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or_default();
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(value).map_err(|e| {
                error(
                    Code::INVALID_ARGUMENT,
                    format!("update: resources are not OCI LinuxResources JSON: {e}"),
                )
            })?;
        let ceiling = task.record.limits.unwrap_or_default();
        let tightened = furnace_runtime::policy::tighten_resources(resources, &ceiling);
        task.cgroups()
            .apply(&tightened)
            .map_err(|e| error(Code::INTERNAL, e))?;
        Ok(Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        let task = self.task(&req.id)?;
        let exit = if req.exec_id.is_empty() {
            task.init.wait()
        } else {
            exec::find(&task, &req.exec_id)?.state.wait()
        };
        let mut resp = api::WaitResponse::new();
        resp.exit_status = exit.code;
        resp.exited_at = timestamp(exit.at);
        Ok(resp)
    }

    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> ttrpc::Result<api::StatsResponse> {
        let task = self.task(&req.id)?;
        let stats = task
            .cgroups()
            .stats()
            .map_err(|e| error(Code::INTERNAL, e))?;
        let metrics = metrics::to_metrics(&stats, furnace_runtime::launcher::cgroups::setup());
        let any = containerd_shim::util::convert_to_any(metrics)
            .map_err(|e| error(Code::INTERNAL, e.to_string()))?;
        let mut resp = api::StatsResponse::new();
        resp.stats = MessageField::some(any);
        Ok(resp)
    }

    fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let task = self.task(&req.id)?;
        let mut resp = api::ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = task.pid;
        resp.version = env!("CARGO_PKG_VERSION").into();
        Ok(resp)
    }

    fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        if lock(&self.tasks).is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}

fn load_config(
    options: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>,
) -> ttrpc::Result<ProviderConfig> {
    let path = options.and_then(options::config_path);
    ProviderConfig::load_from(path.as_deref())
        .map_err(|e| error(Code::INVALID_ARGUMENT, e.to_string()))
}
