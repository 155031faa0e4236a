//! The worker's side of the helper: the driver's monitor and debugger, and
//! the app sockets, each one a typed request.

use super::wire::{Channel, Reply, Request, MAX_REPLY};
use crate::driver::gdb::DebuggerLink;
use crate::driver::monitor::{Monitor, MonitorCommand};
use crate::driver::VmControl;
use crate::error::{Result, VmiError};
use crate::server::AppSockets;
use serde_json::Value;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The channel to the privileged helper. One request is in flight at a time.
pub struct HelperClient {
    channel: Mutex<Channel>,
}

impl HelperClient {
    pub fn new(channel: Channel) -> Arc<Self> {
        Arc::new(HelperClient {
            channel: Mutex::new(channel),
        })
    }

    /// Sends `request` and returns the helper's reply and descriptor.
    pub fn call(&self, request: &Request) -> Result<(Reply, Option<OwnedFd>)> {
        let bytes = serde_json::to_vec(request).expect("a request serializes");
        self.call_raw(&bytes)
    }

    /// Sends `bytes` as they are: [`HelperClient::call`], and the
    /// confinement check's attempts at requests that do not exist.
    pub fn call_raw(&self, bytes: &[u8]) -> Result<(Reply, Option<OwnedFd>)> {
        let lost =
            |e: std::io::Error| VmiError::GuestGone(format!("the sidecar's helper is gone ({e})"));
        let channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        channel.send(bytes, None).map_err(lost)?;
        let mut buf = vec![0u8; MAX_REPLY];
        let (len, fd) = channel.recv(&mut buf).map_err(lost)?;
        if len == 0 {
            return Err(VmiError::GuestGone(
                "the sidecar's helper closed its channel".into(),
            ));
        }
        let reply: Reply = serde_json::from_slice(&buf[..len])
            .map_err(|e| VmiError::Qmp(format!("an unreadable reply from the helper: {e}")))?;
        match reply.clone().into_error() {
            Some(error) => Err(error),
            None => Ok((reply, fd)),
        }
    }

    fn call_for_fd(&self, request: &Request) -> Result<OwnedFd> {
        match self.call(request)? {
            (Reply::Done, Some(fd)) => Ok(fd),
            (reply, _) => Err(VmiError::Qmp(format!(
                "the helper answered {request:?} with {reply:?} and no descriptor"
            ))),
        }
    }
}

/// The guest's monitor, through the helper.
pub struct HelperMonitor(pub Arc<HelperClient>);

impl Monitor for HelperMonitor {
    fn run(&self, command: &MonitorCommand) -> Result<Value> {
        let request = Request::Monitor {
            command: command.clone(),
        };
        match self.0.call(&request)? {
            (Reply::Value { value }, _) => Ok(value),
            (reply, _) => Err(VmiError::Qmp(format!(
                "the helper answered {command:?} with {reply:?}"
            ))),
        }
    }
}

/// The gdbstub, through the helper's packet filter.
pub struct HelperDebugger(pub Arc<HelperClient>);

impl DebuggerLink for HelperDebugger {
    fn open(&self) -> Result<UnixStream> {
        Ok(UnixStream::from(
            self.0.call_for_fd(&Request::OpenDebugger)?,
        ))
    }

    fn release(&self) {
        if let Err(e) = self.0.call(&Request::ReleaseDebugger) {
            tracing::warn!(error = %e, "could not tell the helper the debugger was released");
        }
    }

    /// The helper freed any stranded guest before it started this worker.
    fn free_stranded(&self, _control: &dyn VmControl) -> Result<bool> {
        Ok(false)
    }
}

/// App sockets, bound by the helper in the sidecar's socket directory.
pub struct HelperSockets {
    pub client: Arc<HelperClient>,
    /// The socket directory, for the paths apps are told.
    pub dir: PathBuf,
}

impl HelperSockets {
    pub fn new(client: Arc<HelperClient>, dir: &Path) -> Self {
        HelperSockets {
            client,
            dir: dir.to_owned(),
        }
    }
}

impl AppSockets for HelperSockets {
    fn path(&self, id: &str) -> PathBuf {
        crate::server::SocketDir::app_path(&self.dir, id)
    }

    fn bind(&self, id: &str, uid: u32, gid: u32) -> std::io::Result<UnixListener> {
        let request = Request::BindApp {
            id: id.to_owned(),
            uid,
            gid,
        };
        let fd = self
            .client
            .call_for_fd(&request)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(UnixListener::from(fd))
    }

    fn remove(&self, id: &str) {
        let request = Request::RemoveApp { id: id.to_owned() };
        if let Err(e) = self.client.call(&request) {
            tracing::warn!(app = %id, error = %e, "the helper did not remove the app's socket");
        }
    }
}
