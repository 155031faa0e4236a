//! Where a partition's root filesystem is mounted, and by whom; its init
//! binary is bound beside it for the same reason.
//!
//! libcontainer mounts the rootfs from inside the partition's user namespace,
//! so every directory on the way to it is looked up as the partition's root:
//! an unprivileged host uid. containerd's bundle,
//! `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/rootfs`, lies under
//! a state directory that may well be `0700 root` (containerd, 1.6 as 2.x,
//! makes a new one 0711 but leaves one that exists as it is), and the bundle
//! itself is `0700 root`. Changing containerd's permissions is not
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

/// Makes [`partition_dir`] for a new task and returns its rootfs mount
/// point, empty. A directory that exists belongs to a task this shim did
/// not create (another containerd's of the same namespace and id, or one not
/// cleaned up): it is refused, and left alone.
pub fn claim(namespace: &str, id: &str, host_gid: Option<u32>) -> Result<PathBuf, CreateError> {
    let dir = partition_dir(namespace, id);
    make_dirs(&dir, host_gid)?;
    Ok(dir.join("rootfs"))
}

/// What [`mount`] puts in a claimed partition directory.
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
}

/// Mounts the partition's rootfs at `target` (from [`claim`]) and binds its
/// init beside it. On failure, [`remove`] undoes what was done.
pub fn mount(target: &Path, files: PartitionFiles<'_>) -> Result<(), CreateError> {
    let PartitionFiles {
        mounts,
        bundle,
        spec_root,
        init,
    } = files;
    match mounts {
        [] => bind(&bundle.join(spec_root), target, "the rootfs")?,
        [m] => containerd_shim::mount::mount_rootfs(
            Some(m.fs_type.as_str()),
            Some(m.source.as_str()),
            &m.options,
            target,
        )
        .map_err(|e| CreateError::Failed(format!("mounting the rootfs ({}): {e}", m.fs_type)))?,
        _ => {
            return Err(CreateError::Invalid(format!(
                "{} rootfs mounts given; io.furnace.v1 takes one (a snapshotter mount)",
                mounts.len()
            )))
        }
    }
    match (init, target.parent()) {
        (Some(init), Some(dir)) => bind_file(init, &dir.join("init"), "furnace-init"),
        _ => Ok(()),
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
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CreateError::Failed(format!(
                "{} exists: a task of this namespace and id is already set up (under another containerd?), or one was not cleaned up; delete that task, or remove the directory once nothing is mounted in it",
                dir.display()
            )),
            _ => failed(dir, e),
        })?;
    if let Some(gid) = host_gid {
        std::os::unix::fs::chown(dir, Some(0), Some(gid)).map_err(|e| failed(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
            .map_err(|e| failed(dir, e))?;
    }
    let rootfs = dir.join("rootfs");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&rootfs)
        .map_err(|e| failed(&rootfs, e))
}

/// Binds the file `source` at `target`, creating `target` empty first.
pub(crate) fn bind_file(source: &Path, target: &Path, what: &str) -> Result<(), CreateError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| CreateError::Failed(format!("creating {}: {e}", target.display())))?;
    bind(source, target, what)
}

fn bind(source: &Path, target: &Path, what: &str) -> Result<(), CreateError> {
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
            "binding {what} {} at {}: {e}",
            source.display(),
            target.display()
        ))
    })
}

/// Unmounts the rootfs at `target` (`<partition_dir>/rootfs`) and the init
/// beside it, and removes what [`claim`] and [`mount`] made; the namespace's directory
/// stays, as another task may be setting up in it. Safe to repeat.
pub fn remove(target: &Path) -> Result<(), String> {
    unmount(target)?;
    // Only what lies under ROOTFS_ROOT is ours to remove.
    let Some(dir) = target.parent().filter(|d| d.starts_with(ROOTFS_ROOT)) else {
        return Ok(());
    };
    let init = dir.join("init");
    unmount(&init)?;
    let gone = |r: std::io::Result<()>, path: &Path| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("removing {}: {e}", path.display()))
        }
        _ => Ok(()),
    };
    gone(std::fs::remove_dir(target), target)?;
    gone(std::fs::remove_file(&init), &init)?;
    gone(std::fs::remove_dir(dir), dir)
}

pub(crate) fn unmount(path: &Path) -> Result<(), String> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("unmounting {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Real directories under ROOTFS_ROOT (the tests run as root, as the shim).
    #[test]
    fn a_partition_directory_is_claimed_once_with_its_modes_and_removed_whole() {
        let namespace = format!("unit-{}", std::process::id());
        let target = claim(&namespace, "one", Some(4242)).unwrap();
        let dir = partition_dir(&namespace, "one");
        assert_eq!(target, dir.join("rootfs"));
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o710, 0, 4242)
        );
        let ns_mode = std::fs::metadata(dir.parent().unwrap()).unwrap().mode() & 0o7777;
        assert_eq!(ns_mode, 0o711);

        let again = claim(&namespace, "one", Some(4242)).unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
        assert!(
            target.is_dir(),
            "the refused claim left the first one alone"
        );

        remove(&target).unwrap();
        assert!(!dir.exists());
        remove(&target).unwrap();
        std::fs::remove_dir(dir.parent().unwrap()).unwrap();
    }
}
