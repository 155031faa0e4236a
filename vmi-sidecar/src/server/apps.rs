//! Registered apps: their permissions, sockets and live connections.

use super::restrictions::Restrictions;
use crate::driver::{RunState, VmControl};
use crate::error::{Result as VmiResult, VmiError};
use crate::linux::LinuxKernel;
use furnace_api::v1::Permission;
use std::collections::{BTreeSet, HashMap};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

pub struct App {
    pub id: String,
    pub permissions: BTreeSet<Permission>,
    pub socket: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Clones of open connections, so unregistering can close them at once.
    pub(super) connections: Mutex<HashMap<u64, UnixStream>>,
    pub(super) in_flight: AtomicU32,
    pub(super) closed: AtomicBool,
    /// What the self-defense loop counts of the app and has done to it.
    pub(super) restrictions: Restrictions,
    /// A handle on the app's listener, to wake its accept thread.
    listener: Mutex<Option<UnixListener>>,
}

impl App {
    pub(super) fn new(
        id: String,
        permissions: BTreeSet<Permission>,
        socket: PathBuf,
        uid: u32,
        gid: u32,
    ) -> Self {
        App {
            id,
            permissions,
            socket,
            uid,
            gid,
            connections: Mutex::default(),
            in_flight: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            restrictions: Restrictions::default(),
            listener: Mutex::default(),
        }
    }

    pub(super) fn keep_listener(&self, listener: &UnixListener) -> std::io::Result<()> {
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener.try_clone()?);
        Ok(())
    }

    /// Wakes the accept thread (it then sees `closed` and stops).
    pub(super) fn wake_accept(&self) {
        if let Some(listener) = &*self.listener.lock().unwrap_or_else(|p| p.into_inner()) {
            super::wake_accept(listener);
        }
    }

    /// Whether the app was granted `permission` and still holds it.
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission) && !self.restrictions.is_revoked(permission)
    }

    /// The permissions the app still holds.
    pub fn granted(&self) -> BTreeSet<Permission> {
        self.permissions
            .iter()
            .copied()
            .filter(|p| !self.restrictions.is_revoked(*p))
            .collect()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<u64, UnixStream>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
pub struct Registry {
    apps: Mutex<HashMap<String, Arc<App>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<App>>> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `app` unless its id is taken.
    pub fn insert(&self, app: Arc<App>) -> bool {
        let mut apps = self.lock();
        if apps.contains_key(&app.id) {
            return false;
        }
        apps.insert(app.id.clone(), app);
        true
    }

    pub fn get(&self, id: &str) -> Option<Arc<App>> {
        self.lock().get(id).cloned()
    }

    pub fn remove(&self, id: &str) -> Option<Arc<App>> {
        self.lock().remove(id)
    }

    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn all(&self) -> Vec<Arc<App>> {
        let mut apps: Vec<_> = self.lock().values().cloned().collect();
        apps.sort_by(|a, b| a.id.cmp(&b.id));
        apps
    }
}

/// The guest's pause control, reached through the kernel's driver.
pub struct KernelControl(pub Arc<LinuxKernel>);

impl KernelControl {
    fn control(&self) -> VmiResult<&dyn VmControl> {
        self.0
            .driver()
            .control()
            .ok_or(VmiError::Unsupported("pausing this guest"))
    }
}

impl VmControl for KernelControl {
    fn pause(&self) -> VmiResult<()> {
        self.control()?.pause()
    }
    fn resume(&self) -> VmiResult<()> {
        self.control()?.resume()
    }
    fn run_state(&self) -> VmiResult<RunState> {
        self.control()?.run_state()
    }
}
