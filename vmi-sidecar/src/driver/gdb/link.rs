//! How a driver reaches its guest's gdbstub, and who cleans up after an
//! owner that died attached.
//!
//! Whoever holds the debugger connection marks it, from attach to detach,
//! with a file beside the socket (`gdb.sock.owner`, holding a pid). Found
//! at start, the marker means the last owner died attached: the guest is
//! stopped, at a breakpoint or by the lost connection, and QEMU still holds
//! the breakpoints. A `?` on a new connection makes QEMU drop them all; then
//! the guest may run, as whatever held it died with its owner.

use super::GdbClient;
use crate::driver::VmControl;
use crate::error::Result;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub trait DebuggerLink: Send + Sync {
    /// A fresh connection to the stub, marked as this process's until
    /// [`DebuggerLink::release`].
    fn open(&self) -> Result<UnixStream>;

    /// Says the connection is being closed cleanly: breakpoints removed and
    /// the guest left as its users want it. Call it before closing.
    fn release(&self);

    /// Frees a guest that a previous owner left stopped with breakpoints
    /// set (its marker is still there); whether one was freed.
    fn free_stranded(&self, control: &dyn VmControl) -> Result<bool>;
}

/// The gdbstub's socket in the guest directory, reached directly (as root).
pub struct GdbSocket {
    path: PathBuf,
}

impl GdbSocket {
    pub fn new(path: &Path) -> Self {
        GdbSocket {
            path: path.to_owned(),
        }
    }

    fn marker(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".owner");
        PathBuf::from(name)
    }
}

impl DebuggerLink for GdbSocket {
    fn open(&self) -> Result<UnixStream> {
        let stream = crate::driver::connect_qemu_socket(&self.path, "gdb")?;
        if let Err(e) = std::fs::write(self.marker(), std::process::id().to_string()) {
            tracing::warn!(error = %e, "could not mark the debugger as ours; a crash would leave the guest stopped");
        }
        Ok(stream)
    }

    fn release(&self) {
        let _ = std::fs::remove_file(self.marker());
    }

    fn free_stranded(&self, control: &dyn VmControl) -> Result<bool> {
        let marker = self.marker();
        if !marker.exists() {
            return Ok(false);
        }
        tracing::warn!(marker = %marker.display(), "a previous owner died with the debugger attached; clearing its breakpoints and resuming the guest");
        let stream = crate::driver::connect_qemu_socket(&self.path, "gdb")?;
        GdbClient::over(stream)?.stop_reason()?;
        control.resume()?;
        let _ = std::fs::remove_file(&marker);
        Ok(true)
    }
}
