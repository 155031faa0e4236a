//! Where an app's relay lives on the host, and who may enter what:
//!
//! ```text
//! <socket_root>/fac/                      0711 root
//!   <namespace>/                          0711 root
//!     <id>/                               0711 root
//!       fac.sock                          0600 the app's host uid: the listener the shim holds
//!       backend.pub                       0644 root: the pin, from furnace.dev/backend-key
//!       app.key                           0400 the app's host uid: its copy of furnace.dev/app-key
//!       relay/                            0710 root:<the relay's host gid>: its bundle
//!         config.json                     root: the hardened spec (the bundle is closed to others)
//!         rootfs/                         empty, read-only in the partition
//!         init, furnace-fac-relay         binds of the host's binaries
//!         broker.sock                     0600 the relay's host uid
//!         relay.log                       0600 root: the relay's stderr
//! <storage_root>/<namespace>/<tenant>/<id>/   0700 the relay's host uid: storage, kept
//!                                         (<tenant>: the backend's public key, in hex),
//!                                         handed to each new relay's uid at start
//! ```
//!
//! The binaries are bound inside the relay's own directory for the reason
//! `rootfs.rs` gives for the init: the shim's install directory need not be
//! open to the partition.

use crate::instance::CreateError;
use crate::rootfs::{bind_file, unmount};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The paths of one app's relay.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayDirs {
    /// `<socket_root>/fac/<namespace>/<id>`.
    pub root: PathBuf,
    /// `<storage_root>/<namespace>/<tenant>/<id>`.
    pub storage: PathBuf,
}

impl RelayDirs {
    /// `tenant` names the tenant's storage: its backend's public key. So a
    /// later task of the same namespace and id gets the store back only if
    /// it talks to the same backend: another tenant reusing an id starts
    /// empty.
    pub fn new(
        socket_root: &Path,
        storage_root: &Path,
        namespace: &str,
        tenant: &furnace_api::facilities::PublicKey,
        id: &str,
    ) -> Self {
        let tenant: String = tenant.0.iter().map(|b| format!("{b:02x}")).collect();
        RelayDirs {
            root: socket_root.join("fac").join(namespace).join(id),
            storage: storage_root.join(namespace).join(tenant).join(id),
        }
    }
    pub fn app_socket(&self) -> PathBuf {
        self.root.join("fac.sock")
    }
    pub fn backend_key(&self) -> PathBuf {
        self.root.join("backend.pub")
    }
    pub fn app_key(&self) -> PathBuf {
        self.root.join("app.key")
    }
    pub fn bundle(&self) -> PathBuf {
        self.root.join("relay")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }
    pub fn init(&self) -> PathBuf {
        self.bundle().join("init")
    }
    pub fn program(&self) -> PathBuf {
        self.bundle().join(furnace_runtime::launcher::RELAY_BIN)
    }
    pub fn broker(&self) -> PathBuf {
        self.bundle().join("broker.sock")
    }
    pub fn log(&self) -> PathBuf {
        self.bundle().join("relay.log")
    }
}

fn failed(path: &Path, e: std::io::Error) -> CreateError {
    CreateError::Failed(format!("{}: {e}", path.display()))
}

fn dir(path: &Path, mode: u32) -> Result<(), CreateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| failed(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| failed(path, e))
}

/// Owner and mode of `path`, set after it was made.
pub fn own(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), CreateError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| failed(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| failed(path, e))
}

/// Makes the relay's own directory, which must not exist yet: one that
/// does belongs to a task this shim did not create, and is left alone.
pub fn claim(dirs: &RelayDirs) -> Result<(), CreateError> {
    for ancestor in dirs.root.ancestors().skip(1).take(2) {
        dir(ancestor, 0o711)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o711)
        .create(&dirs.root)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CreateError::Failed(format!(
                "{} exists: a relay of this namespace and id is already set up (under another containerd?), or one was not cleaned up; delete that task, or remove the directory once nothing is mounted in it",
                dirs.root.display()
            )),
            _ => failed(&dirs.root, e),
        })
}

/// Fills the [`claim`]ed directory and binds the binaries in; makes the
/// storage directory, or reuses it.
pub fn create(
    dirs: &RelayDirs,
    relay_ids: (u32, u32),
    init: &Path,
    program: &Path,
) -> Result<(), CreateError> {
    let (uid, gid) = relay_ids;
    dir(&dirs.bundle(), 0o710)?;
    own(&dirs.bundle(), 0, gid, 0o710)?;
    dir(&dirs.rootfs(), 0o755)?;
    bind_file(init, &dirs.init(), "furnace-init")?;
    bind_file(program, &dirs.program(), "the facilities relay")?;

    if let Some(parent) = dirs.storage.parent() {
        for ancestor in parent.ancestors().take(3) {
            dir(ancestor, 0o711)?;
        }
    }
    dir(&dirs.storage, 0o700)?;
    own(&dirs.storage, uid, gid, 0o700)?;
    hand_over(&dirs.storage, uid, gid)
}

/// Gives the entries of a kept store to this relay's host ids: each relay
/// runs under a host id range of its own, so the last relay of this app
/// wrote them as other ids. The store is flat; links are changed, never
/// followed.
fn hand_over(storage: &Path, uid: u32, gid: u32) -> Result<(), CreateError> {
    let dir = std::fs::File::open(storage).map_err(|e| failed(storage, e))?;
    for entry in std::fs::read_dir(storage).map_err(|e| failed(storage, e))? {
        let entry = entry.map_err(|e| failed(storage, e))?;
        nix::unistd::fchownat(
            Some(std::os::fd::AsRawFd::as_raw_fd(&dir)),
            entry.file_name().as_os_str(),
            Some(uid.into()),
            Some(gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| failed(&entry.path(), e.into()))?;
    }
    Ok(())
}

/// Removes what [`create`] made but the storage. Safe to repeat; returns
/// what could not be removed.
pub fn remove(dirs: &RelayDirs) -> Vec<String> {
    let mut problems = Vec::new();
    for bound in [dirs.init(), dirs.program()] {
        if let Err(e) = unmount(&bound) {
            problems.push(e);
        }
    }
    if !problems.is_empty() {
        // Never remove a directory something may still be mounted in.
        return problems;
    }
    match std::fs::remove_dir_all(&dirs.root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            problems.push(format!("removing {}: {e}", dirs.root.display()))
        }
        _ => {}
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Real directories and binds (the tests run as root, as the shim).
    #[test]
    fn made_with_their_modes_refused_twice_removed_but_the_storage() {
        let scratch = tempfile::tempdir().unwrap();
        let dirs = RelayDirs::new(
            &scratch.path().join("sockets"),
            &scratch.path().join("storage"),
            "ns",
            &furnace_api::facilities::PublicKey([0xab; 32]),
            "app",
        );
        assert_eq!(
            dirs.storage,
            scratch
                .path()
                .join("storage/ns")
                .join("ab".repeat(32))
                .join("app")
        );
        let binary = scratch.path().join("binary");
        std::fs::write(&binary, b"#!").unwrap();
        claim(&dirs).unwrap();
        create(&dirs, (4242, 4343), &binary, &binary).unwrap();
        let mode = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.mode() & 0o7777, m.uid(), m.gid())
        };
        assert_eq!(mode(&dirs.root), (0o711, 0, 0));
        assert_eq!(mode(&dirs.bundle()), (0o710, 0, 4343));
        assert_eq!(mode(&dirs.storage), (0o700, 4242, 4343));
        assert_eq!(std::fs::read(dirs.program()).unwrap(), b"#!");

        let again = claim(&dirs).unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
        assert!(
            dirs.program().exists(),
            "the refused claim left the first one alone"
        );

        std::fs::write(dirs.storage.join("kept"), b"v").unwrap();
        assert!(remove(&dirs).is_empty());
        assert!(!dirs.root.exists());
        assert!(
            dirs.storage.join("kept").exists(),
            "storage outlives the task"
        );
        assert!(remove(&dirs).is_empty(), "safe to repeat");
        claim(&dirs).unwrap();
        create(&dirs, (4444, 4545), &binary, &binary).unwrap();
        let kept = mode(&dirs.storage.join("kept"));
        assert_eq!(
            (kept.1, kept.2),
            (4444, 4545),
            "the next relay, under other ids, owns the kept entries"
        );
        assert!(remove(&dirs).is_empty());
    }
}
