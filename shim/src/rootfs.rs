//! Where a partition's root filesystem is mounted, and by whom; its init
//! binary is bound beside it for the same reason.
//!
//! libcontainer mounts the rootfs from inside the partition's user namespace,
//! so every directory on the way to it is looked up as the partition's root:
//! an unprivileged host uid. containerd's bundle,
//! `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/rootfs`, lies under
//! a state directory that may well be `0700 root` (containerd 2.x makes it
//! 0711, but does not chmod one that exists, and 1.6 leaves it as found), and
//! the bundle itself is `0700 root`. Changing containerd's permissions is not
//! ours to do, so the shim mounts the rootfs (as host root, before anything
//! enters the user namespace) at a path Furnace owns instead:
//!
//! ```text
//! /run/furnace/rootfs/                0711 root
//!   <namespace>/                      0711 root
//!     <id>/                           0710 root:<the partition's host gid>
//!       rootfs/                       the snapshot mount (or a bind of spec.root.path)
//!       init                          a bind of the host's furnace-init
//! ```
//!
//! Only root and the partition's own gid can enter `<id>`; nobody but root
//! can list the directories above it. The spec's `root.path` is set to the
//! mount, and its bind of the init takes `<id>/init` as its source, so the
//! directory the shim is installed in need not be open to the partition
//! either. docs/shim.md has the reasoning and what runc and containerd do.

use crate::instance::CreateError;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Parent of every partition's rootfs mount.
pub const ROOTFS_ROOT: &str = "/run/furnace/rootfs";

/// One mount containerd passed in `Create` (a snapshotter's overlay, usually).
pub struct RootfsMount {
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

/// `<ROOTFS_ROOT>/<namespace>/<id>`: the directory that holds the mount.
pub fn partition_dir(namespace: &str, id: &str) -> PathBuf {
    Path::new(ROOTFS_ROOT).join(namespace).join(id)
}

/// `<partition_dir>/init`: where [`mount`] binds the host's init, the
/// source of the partition's own bind of it.
pub fn init_path(namespace: &str, id: &str) -> PathBuf {
    partition_dir(namespace, id).join("init")
}

/// What [`mount`] puts under [`partition_dir`].
pub struct PartitionFiles<'a> {
    /// containerd's rootfs mounts; with none (`ctr run --rootfs DIR`),
    /// `spec_root` (the spec's `root.path`, relative to the bundle) is
    /// bind-mounted instead.
    pub mounts: &'a [RootfsMount],
    pub bundle: &'a Path,
    pub spec_root: &'a Path,
    /// The host's `furnace-init`, bound at [`init_path`]; `None` for a
    /// partition that runs without it (a CRI sandbox).
    pub init: Option<&'a Path>,
    /// The partition's mapped gid, `None` for a partition without a user
    /// namespace (a CRI sandbox).
    pub host_gid: Option<u32>,
}

/// Mounts the partition's rootfs under [`partition_dir`], binds its init
/// there, and returns the rootfs mount point. On failure nothing is left.
pub fn mount(namespace: &str, id: &str, files: PartitionFiles<'_>) -> Result<PathBuf, CreateError> {
    let PartitionFiles {
        mounts,
        bundle,
        spec_root,
        init,
        host_gid,
    } = files;
    let dir = partition_dir(namespace, id);
    let target = dir.join("rootfs");
    if mounts.len() > 1 {
        return Err(CreateError::Invalid(format!(
            "{} rootfs mounts given; io.furnace.v1 takes one (a snapshotter mount)",
            mounts.len()
        )));
    }
    let mounted = make_dirs(&dir, host_gid)
        .and_then(|()| match mounts.first() {
            None => bind(&bundle.join(spec_root), &target),
            Some(m) => containerd_shim::mount::mount_rootfs(
                Some(m.fs_type.as_str()),
                Some(m.source.as_str()),
                &m.options,
                &target,
            )
            .map_err(|e| CreateError::Failed(format!("mounting the rootfs ({}): {e}", m.fs_type))),
        })
        .and_then(|()| match init {
            Some(init) => bind_file(init, &dir.join("init")),
            None => Ok(()),
        });
    match mounted {
        Ok(()) => Ok(target),
        Err(e) => {
            let _ = remove(&target);
            Err(e)
        }
    }
}

fn make_dirs(dir: &Path, host_gid: Option<u32>) -> Result<(), CreateError> {
    let failed = |path: &Path, e: std::io::Error| {
        CreateError::Failed(format!("creating {}: {e}", path.display()))
    };
    let parent = dir.parent().expect("partition_dir has a parent");
    // Traverse-only for everyone: the names below are not secret, but nobody
    // may list them.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(parent)
        .map_err(|e| failed(parent, e))?;
    for ancestor in [parent, parent.parent().expect("ROOTFS_ROOT")] {
        std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| failed(ancestor, e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(dir, e)),
    }
    if let Some(gid) = host_gid {
        std::os::unix::fs::chown(dir, Some(0), Some(gid)).map_err(|e| failed(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
            .map_err(|e| failed(dir, e))?;
    }
    let rootfs = dir.join("rootfs");
    match std::fs::DirBuilder::new().mode(0o755).create(&rootfs) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(failed(&rootfs, e)),
    }
}

/// Binds the file `source` at `target`, creating `target` empty first.
fn bind_file(source: &Path, target: &Path) -> Result<(), CreateError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
        .map_err(|e| CreateError::Failed(format!("creating {}: {e}", target.display())))?;
    bind(source, target)
}

fn bind(source: &Path, target: &Path) -> Result<(), CreateError> {
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        CreateError::Failed(format!(
            "binding the rootfs {} at {}: {e}",
            source.display(),
            target.display()
        ))
    })
}

/// Unmounts the rootfs at `target` (`<partition_dir>/rootfs`) and the init
/// beside it, and removes what [`mount`] made, the directories of the
/// namespace and above only when empty. Safe to repeat.
pub fn remove(target: &Path) -> Result<(), String> {
    unmount(target)?;
    // Only what lies under ROOTFS_ROOT is ours to remove.
    if !target.starts_with(ROOTFS_ROOT) {
        return Ok(());
    }
    let _ = std::fs::remove_dir(target);
    if let Some(init) = target.parent().map(|dir| dir.join("init")) {
        unmount(&init)?;
        let _ = std::fs::remove_file(init);
    }
    let mut dir = target.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(ROOTFS_ROOT) && *d != Path::new(ROOTFS_ROOT)) {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

fn unmount(path: &Path) -> Result<(), String> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("unmounting {}: {e}", path.display())),
    }
}
