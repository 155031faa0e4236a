//! The sidecar: serves the VMI API to registered apps, one socket each, and
//! the admin API to the runtime. An app's identity is the socket it connected
//! through; its permissions were fixed when it was registered.

mod admin;
mod apps;
mod batch;
mod connection;
mod events;
mod lease;
mod ops;
mod reply;
mod restrictions;
mod sockets;
mod vmi;

/// The decoders of what apps send, for the fuzz targets in `fuzz/`.
#[doc(hidden)]
pub mod decoders {
    pub use super::batch::{run as run_batch, validate as validate_batch};
    pub use super::connection::serve_frames;
    pub use super::reply::Reply;
}

pub use apps::App;
pub use furnace_config::SidecarConfig;
pub use sockets::{valid_app_id, AppSockets, SocketDir};

use crate::linux::LinuxKernel;
use apps::Registry;
use events::Events;
use lease::Leases;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct Sidecar {
    guest: String,
    kernel: Arc<LinuxKernel>,
    limits: SidecarConfig,
    sockets: Arc<dyn AppSockets>,
    admin: UnixListener,
    admin_path: PathBuf,
    apps: Registry,
    leases: Arc<Leases>,
    events: Events,
    next_connection: AtomicU64,
    stopping: AtomicBool,
    /// Set by the watchdog once QEMU is gone; every call then fails with GUEST_GONE
    /// instead of reading a RAM file nobody updates any more.
    guest_gone: AtomicBool,
}

/// How often the watchdog asks QEMU whether it is still there.
const WATCHDOG_PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

impl Sidecar {
    /// A sidecar for `guest`, serving the admin API on `admin` (bound at
    /// `admin_path`, root only) and binding app sockets through `sockets`.
    /// The kernel's driver must be able to pause the guest.
    pub fn new(
        guest: &str,
        kernel: LinuxKernel,
        limits: SidecarConfig,
        sockets: Arc<dyn AppSockets>,
        admin: UnixListener,
        admin_path: &Path,
    ) -> io::Result<Arc<Self>> {
        let kernel = Arc::new(kernel);
        let control = Arc::new(apps::KernelControl(Arc::clone(&kernel)));
        let events = Events::start(Arc::clone(&kernel), control, &limits)?;
        Ok(Arc::new(Sidecar {
            guest: guest.to_owned(),
            kernel,
            limits,
            sockets,
            admin,
            admin_path: admin_path.to_owned(),
            apps: Registry::default(),
            leases: Leases::start(events.gate()),
            events,
            next_connection: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            guest_gone: AtomicBool::new(false),
        }))
    }

    /// Watches the guest; when QEMU is gone, marks it so calls fail with GUEST_GONE.
    pub fn start_watchdog(self: &Arc<Self>) -> io::Result<()> {
        let sidecar = Arc::clone(self);
        std::thread::Builder::new().name("guest-watchdog".into()).spawn(move || {
            let Some(control) = sidecar.kernel.driver().control() else { return };
            while !sidecar.stopping.load(Ordering::Acquire) {
                if let Err(crate::error::VmiError::GuestGone(reason)) = control.run_state() {
                    tracing::error!(%reason, "the guest is gone; every call now fails with GUEST_GONE");
                    sidecar.guest_gone.store(true, Ordering::Release);
                    return;
                }
                std::thread::sleep(WATCHDOG_PERIOD);
            }
        })?;
        Ok(())
    }

    pub fn guest_gone(&self) -> bool {
        self.guest_gone.load(Ordering::Acquire)
    }

    pub fn admin_socket(&self) -> &Path {
        &self.admin_path
    }

    pub fn kernel(&self) -> &LinuxKernel {
        &self.kernel
    }

    /// Serves the admin socket on a thread.
    pub fn serve_admin(self: &Arc<Self>) -> io::Result<()> {
        let listener = self.admin.try_clone()?;
        let sidecar = Arc::clone(self);
        std::thread::Builder::new()
            .name("admin-accept".into())
            .spawn(move || {
                accept_loop(
                    &listener,
                    || sidecar.stopping.load(Ordering::Acquire),
                    |stream| {
                        let sidecar = Arc::clone(&sidecar);
                        connection::spawn(move || connection::serve_admin(&sidecar, stream));
                    },
                )
            })?;
        Ok(())
    }

    /// Unregisters every app (resuming the guest if anyone held it) and
    /// removes the sockets.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        for id in self.apps.ids() {
            let _ = self.unregister(&id);
        }
        self.leases.stop();
        self.events.stop();
        wake_accept(&self.admin);
    }

    fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts until `closed()` holds. `wake_accept` unblocks a waiting `accept`.
fn accept_loop(
    listener: &UnixListener,
    closed: impl Fn() -> bool,
    mut on_connection: impl FnMut(UnixStream),
) {
    for stream in listener.incoming() {
        if closed() {
            break;
        }
        match stream {
            Ok(stream) => on_connection(stream),
            Err(e) => {
                // Out of descriptors, say: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// Wakes a blocked `accept` on `listener`: on a shut-down listening socket
/// Linux fails it with EINVAL. No connection is needed, so this works where
/// the socket's path cannot be reached.
fn wake_accept(listener: &UnixListener) {
    let _ = nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
}
