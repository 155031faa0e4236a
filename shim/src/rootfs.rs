//! Where a partition's root filesystem is mounted, and by whom.
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
//! ```
//!
//! Only root and the partition's own gid can enter `<id>`; nobody but root
//! can list the directories above it. The spec's `root.path` is set to the
//! mount. docs/shim.md has the reasoning and what runc and containerd do.

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

/// Mounts the partition's rootfs under [`partition_dir`] and returns the
/// mount point. `mounts` are containerd's rootfs mounts; with none (`ctr run
/// --rootfs DIR`), `spec_root` (the spec's `root.path`, relative to the
/// bundle) is bind-mounted instead. `host_gid` is the partition's mapped gid,
/// `None` for a partition without a user namespace (a CRI sandbox).
pub fn mount(
    namespace: &str,
    id: &str,
    bundle: &Path,
    mounts: &[RootfsMount],
    spec_root: &Path,
    host_gid: Option<u32>,
) -> Result<PathBuf, CreateError> {
    let dir = partition_dir(namespace, id);
    let target = dir.join("rootfs");
    if mounts.len() > 1 {
        return Err(CreateError::Invalid(format!(
            "{} rootfs mounts given; io.furnace.v1 takes one (a snapshotter mount)",
            mounts.len()
        )));
    }
    let mounted = make_dirs(&dir, host_gid).and_then(|()| match mounts.first() {
        None => bind(&bundle.join(spec_root), &target),
        Some(m) => containerd_shim::mount::mount_rootfs(
            Some(m.fs_type.as_str()),
            Some(m.source.as_str()),
            &m.options,
            &target,
        )
        .map_err(|e| CreateError::Failed(format!("mounting the rootfs ({}): {e}", m.fs_type))),
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

/// Unmounts the rootfs at `target` (`<partition_dir>/rootfs`) and removes
/// the directories [`mount`] made, those of the namespace and above only
/// when empty. Safe to repeat.
pub fn remove(target: &Path) -> Result<(), String> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(format!("unmounting {}: {e}", target.display())),
    }
    // Only directories under ROOTFS_ROOT are ours to remove.
    if !target.starts_with(ROOTFS_ROOT) {
        return Ok(());
    }
    let _ = std::fs::remove_dir(target);
    let mut dir = target.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(ROOTFS_ROOT) && *d != Path::new(ROOTFS_ROOT)) {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}
