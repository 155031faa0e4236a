//! Binding the apps' sockets: the one thing the serving sidecar needs done
//! with privilege (the socket belongs to the app's host uid, which only root
//! can give it). The sidecar's unprivileged worker asks the privileged
//! helper for it (`crate::privsep`); the helper does it with a [`SocketDir`].

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

pub trait AppSockets: Send + Sync {
    /// Where app `id`'s socket is (`<dir>/apps/<id>.sock`).
    fn path(&self, id: &str) -> PathBuf;

    /// Binds app `id`'s socket, usable by `uid:gid` alone (mode 0600),
    /// replacing a stale file. `id` has been validated by the caller.
    fn bind(&self, id: &str, uid: u32, gid: u32) -> io::Result<UnixListener>;

    /// Removes app `id`'s socket file.
    fn remove(&self, id: &str);
}

/// A sidecar's socket directory, `<socket_root>/guests/<guest>/`:
/// `admin.sock` and `apps/<id>.sock`.
pub struct SocketDir {
    dir: PathBuf,
}

impl SocketDir {
    /// Creates the directory and `apps/`. Both are traverse-only for
    /// everyone: an app's runtime bind-mounts its socket from inside the
    /// app's user namespace, as the app's host uid, which must reach
    /// `apps/<id>.sock` by path. Nobody else can list the directories, and
    /// each socket, like the guest's RAM and QEMU's sockets, keeps its own
    /// owner-only mode.
    pub fn prepare(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir.join("apps"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(dir.join("apps"), std::fs::Permissions::from_mode(0o711))?;
        Ok(SocketDir {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where app `id`'s socket is in socket directory `dir`.
    pub fn app_path(dir: &Path, id: &str) -> PathBuf {
        dir.join("apps").join(format!("{id}.sock"))
    }

    pub fn admin_path(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Binds `admin.sock`, for root alone.
    pub fn bind_admin(&self) -> io::Result<UnixListener> {
        bind_private(&self.admin_path(), 0, 0)
    }
}

impl AppSockets for SocketDir {
    fn path(&self, id: &str) -> PathBuf {
        Self::app_path(&self.dir, id)
    }

    fn bind(&self, id: &str, uid: u32, gid: u32) -> io::Result<UnixListener> {
        bind_private(&self.path(id), uid, gid)
    }

    fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.path(id));
    }
}

/// Binds a unix socket only `uid:gid` may use (mode 0600), replacing a stale file.
fn bind_private(path: &Path, uid: u32, gid: u32) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = furnace_api::unix_socket::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    Ok(listener)
}

/// The longest app id.
pub const MAX_APP_ID: usize = 64;

/// Whether `id` may name an app (and so a socket file): 1–64 characters of
/// `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn valid_app_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_APP_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}
