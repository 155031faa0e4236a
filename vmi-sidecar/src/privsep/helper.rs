//! The privileged helper: what the worker may ask of root, and nothing more.
//!
//! It holds the guest's QMP and gdbstub sockets and the socket directory.
//! It serves the fixed set of [`Request`]s, answering anything else with
//! `Refused` and a log line, and parses no guest memory: QMP replies come
//! from QEMU and go back to the worker as they are, and so do the stub's.
//!
//! When the worker goes, whatever it held goes back: a guest it paused is
//! resumed, a debugger session it did not release has its breakpoints
//! cleared, and the app sockets it had bound are removed.

use super::gdb_filter::{self, SessionEnd};
use super::wire::{Channel, Reply, Request, MAX_REQUEST};
use crate::driver::gdb::{DebuggerLink, GdbSocket};
use crate::driver::monitor::{Monitor, MonitorCommand, MonitorControl, QmpSocket};
use crate::driver::VmControl;
use crate::server::{valid_app_id, AppSockets, SocketDir};
use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Helper {
    qmp: QmpSocket,
    gdb: GdbSocket,
    sockets: SocketDir,
    /// Set while a `stop` of the worker's has not been followed by a `cont`.
    paused_by_worker: AtomicBool,
    debugger: Mutex<Option<DebuggerSession>>,
    bound: Mutex<BTreeSet<String>>,
}

struct DebuggerSession {
    released: Arc<AtomicBool>,
    /// The worker's end, to end the session from here.
    worker_end: UnixStream,
    thread: std::thread::JoinHandle<()>,
}

impl Helper {
    pub fn new(guest_dir: &Path, sockets: SocketDir) -> Arc<Self> {
        Arc::new(Helper {
            qmp: QmpSocket::new(&guest_dir.join("qmp.sock")),
            gdb: GdbSocket::new(&guest_dir.join("gdb.sock")),
            sockets,
            paused_by_worker: AtomicBool::new(false),
            debugger: Mutex::new(None),
            bound: Mutex::default(),
        })
    }

    pub fn monitor(&self) -> &dyn Monitor {
        &self.qmp
    }

    pub fn sockets(&self) -> &SocketDir {
        &self.sockets
    }

    /// Frees a guest a previous sidecar left stopped under its debugger.
    pub fn free_stranded_guest(&self) {
        if let Err(e) = self.gdb.free_stranded(&MonitorControl(&self.qmp)) {
            tracing::error!(error = %e, "could not free the guest from a previous sidecar's debugger");
        }
    }

    /// Serves the worker's requests until it closes its end, then takes
    /// back what it held.
    pub fn serve(self: &Arc<Self>, channel: Channel) {
        let mut buf = vec![0u8; MAX_REQUEST];
        loop {
            let (reply, fd) = match channel.recv(&mut buf) {
                Ok((0, _)) => break,
                Ok((len, _)) => self.answer(&buf[..len]),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::warn!(error = %e, "refused a request from the worker");
                    (refused(e.to_string()), None)
                }
                Err(e) => {
                    tracing::error!(error = %e, "the worker's channel failed");
                    break;
                }
            };
            let bytes = serde_json::to_vec(&reply).expect("a reply serializes");
            if let Err(e) = channel.send(&bytes, fd.as_ref().map(AsFd::as_fd)) {
                tracing::error!(error = %e, "could not answer the worker");
                break;
            }
        }
        self.take_back();
    }

    fn answer(self: &Arc<Self>, bytes: &[u8]) -> (Reply, Option<OwnedFd>) {
        let request = match Request::decode_strict(bytes) {
            Ok(r) => r,
            Err(e) => {
                let shown: String = String::from_utf8_lossy(bytes).chars().take(200).collect();
                tracing::warn!(request = %shown, error = %e, "refused a request the helper does not serve");
                return (
                    refused(format!("not a request the helper serves: {e}")),
                    None,
                );
            }
        };
        match request {
            Request::Monitor { command } => (self.monitor_command(&command), None),
            Request::OpenDebugger => match self.open_debugger() {
                Ok(fd) => (Reply::Done, Some(fd)),
                Err(reply) => (reply, None),
            },
            Request::ReleaseDebugger => {
                if let Some(session) = &*self.lock_debugger() {
                    session.released.store(true, Ordering::Release);
                }
                (Reply::Done, None)
            }
            Request::BindApp { id, uid, gid } => self.bind_app(&id, uid, gid),
            Request::RemoveApp { id } => {
                if self.lock_bound().remove(&id) {
                    self.sockets.remove(&id);
                }
                (Reply::Done, None)
            }
        }
    }

    fn monitor_command(&self, command: &MonitorCommand) -> Reply {
        match self.qmp.run(command) {
            Ok(value) => {
                match command {
                    MonitorCommand::Stop => self.paused_by_worker.store(true, Ordering::Release),
                    MonitorCommand::Cont => self.paused_by_worker.store(false, Ordering::Release),
                    _ => {}
                }
                Reply::Value { value }
            }
            Err(e) => Reply::failed(&e),
        }
    }

    fn bind_app(&self, id: &str, uid: u32, gid: u32) -> (Reply, Option<OwnedFd>) {
        if !valid_app_id(id) {
            tracing::warn!(app = %id, "refused to bind a socket for an invalid app id");
            return (refused(format!("app id {id:?} is not valid")), None);
        }
        match self.sockets.bind(id, uid, gid) {
            Ok(listener) => {
                self.lock_bound().insert(id.to_owned());
                (Reply::Done, Some(OwnedFd::from(listener)))
            }
            Err(e) => (
                Reply::failed(&crate::VmiError::io(
                    format!("binding {}", self.sockets.path(id).display()),
                    e,
                )),
                None,
            ),
        }
    }

    fn open_debugger(self: &Arc<Self>) -> Result<OwnedFd, Reply> {
        let mut slot = self.lock_debugger();
        // The worker runs one session at a time: one it asks anew for is
        // one it has let go of. Its filter thread may still be winding down
        // (and clearing the marker); wait for that before the new one writes it.
        if let Some(session) = slot.take() {
            let _ = session.worker_end.shutdown(std::net::Shutdown::Both);
            let _ = session.thread.join();
        }
        let stub = self.gdb.open().map_err(|e| Reply::failed(&e))?;
        let io = |e: std::io::Error| Reply::failed(&crate::VmiError::io("the debugger session", e));
        let (worker_end, filter_end) = UnixStream::pair().map_err(io)?;
        let released = Arc::new(AtomicBool::new(false));
        let helper = Arc::clone(self);
        let session_released = Arc::clone(&released);
        let thread = std::thread::Builder::new()
            .name("gdb-filter".into())
            .spawn(move || {
                let end = gdb_filter::run(filter_end, stub);
                helper.debugger_ended(&end, session_released.load(Ordering::Acquire));
            })
            .map_err(io)?;
        let keep = worker_end.try_clone().map_err(io)?;
        *slot = Some(DebuggerSession {
            released,
            worker_end: keep,
            thread,
        });
        Ok(OwnedFd::from(worker_end))
    }

    fn debugger_ended(&self, end: &SessionEnd, released: bool) {
        if let SessionEnd::Refused(what) = end {
            tracing::warn!(refused = %what, "ended the worker's debugger session: it sent a packet the helper does not forward");
        }
        if released {
            self.gdb.release();
        } else {
            tracing::warn!(
                ?end,
                "the worker's debugger session ended unreleased; clearing its breakpoints"
            );
            self.free_stranded_guest();
        }
    }

    /// Gives back what a departed worker held.
    fn take_back(&self) {
        if let Some(session) = self.lock_debugger().take() {
            let _ = session.worker_end.shutdown(std::net::Shutdown::Both);
            let _ = session.thread.join();
        }
        if self.paused_by_worker.swap(false, Ordering::AcqRel) {
            tracing::warn!("the worker left the guest paused; resuming it");
            if let Err(e) = MonitorControl(&self.qmp).resume() {
                tracing::error!(error = %e, "could not resume the guest");
            }
        }
        for id in std::mem::take(&mut *self.lock_bound()) {
            self.sockets.remove(&id);
        }
    }

    fn lock_debugger(&self) -> std::sync::MutexGuard<'_, Option<DebuggerSession>> {
        self.debugger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_bound(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn refused(reason: String) -> Reply {
    Reply::Refused { reason }
}
