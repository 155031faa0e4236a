//! The shim's process lifecycle, as containerd drives it: `start` (spawn the
//! serving shim, or hand back the pod's existing one), serving, and `delete`
//! (clean up after a shim that died).

use crate::events::Events;
use crate::instance;
use crate::record::TaskRecord;
use crate::task::TaskService;
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, StartOpts};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// CRI marks every container of a pod with its sandbox's id; one shim serves the pod.
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// How long `start` waits for the new shim to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct FurnaceShim {
    namespace: String,
    exit: Arc<ExitSignal>,
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

fn serving(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

/// The shim grouping for the bundle in the current directory: the pod's
/// sandbox id for a CRI container, else the task's own id.
fn grouping(id: &str) -> String {
    oci_spec::runtime::Spec::load("config.json")
        .ok()
        .and_then(|s| s.annotations().as_ref()?.get(CRI_SANDBOX_ID).cloned())
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| id.to_owned())
}

impl containerd_shim::Shim for FurnaceShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        FurnaceShim {
            namespace: args.namespace.clone(),
            exit: Arc::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = grouping(&opts.id);
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
        if serving(&address) {
            containerd_shim::util::write_address(&address)?;
            return Ok(address);
        }
        let exe = std::env::current_exe()
            .map_err(|e| containerd_shim::Error::Other(format!("current exe: {e}")))?;
        let mut command = Command::new(exe);
        command
            .args(["-namespace", &opts.namespace, "-id", &opts.id])
            .args(["-address", &opts.address, "-socket", &address])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if opts.debug {
            command.arg("-debug");
        }
        // Its own session: signals to containerd's process group (a restart)
        // must not reach the shim.
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| containerd_shim::Error::Other(format!("spawning the shim: {e}")))?;
        let deadline = std::time::Instant::now() + LISTEN_TIMEOUT;
        while !serving(&address) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(containerd_shim::Error::Other(format!(
                    "the shim exited ({status}) before listening on {address}"
                )));
            }
            if std::time::Instant::now() > deadline {
                return Err(containerd_shim::Error::Other(format!(
                    "the shim did not listen on {address} within {} s",
                    LISTEN_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd runs `delete` in the bundle when a shim died: remove
    /// whatever the task left.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        if let Some(record) = TaskRecord::load(Path::new(".")) {
            for problem in instance::teardown(&record, None) {
                log::warn!("delete {}: {problem}", record.id);
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut at = Timestamp::new();
        at.seconds = now.as_secs() as i64;
        at.nanos = now.subsec_nanos() as i32;
        let mut resp = DeleteResponse::new();
        resp.exit_status = 128 + libc::SIGKILL as u32;
        resp.exited_at = MessageField::some(at);
        Ok(resp)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        TaskService::new(
            &self.namespace,
            Events::new(&self.namespace, &ttrpc_address, publisher),
            Arc::clone(&self.exit),
        )
    }
}
