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
//!       cri/                          0755 root: copies of CRI's /etc/hosts,
//!                                     /etc/hostname and /etc/resolv.conf
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
    let cri = dir.join(CRI_DIR);
    if let Err(e) = std::fs::remove_dir_all(&cri) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(format!("removing {}: {e}", cri.display()));
        }
    }
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

/// Beside the rootfs: the partition's copies of CRI's files.
const CRI_DIR: &str = "cri";
/// CRI's files are a few lines each; anything larger is no hosts file.
const MAX_CRI_FILE: u64 = 64 << 10;

/// Points the spec's binds of CRI's per-container files (`/etc/hosts`,
/// `/etc/hostname`, `/etc/resolv.conf`) at copies in the partition
/// directory (`dir`, from [`claim`]). containerd writes them under its own
/// root, which is `0700 root` on a stock host, so the partition's user
/// namespace could not reach them to bind. Only a plain, world-readable
/// file of at most 64 KiB is copied, so a bind of some private host file
/// at one of those paths (`ctr --mount`) is refused rather than exposed.
pub fn stage_cri_files(spec: &mut oci_spec::runtime::Spec, dir: &Path) -> Result<(), CreateError> {
    let Some(mounts) = spec.mounts_mut() else {
        return Ok(());
    };
    let staged = dir.join(CRI_DIR);
    for m in mounts.iter_mut() {
        let dest = m.destination().to_string_lossy().into_owned();
        let Some(name) = furnace_runtime::policy::CRI_FILES
            .contains(&dest.as_str())
            .then(|| Path::new(&dest).file_name().map(|n| n.to_owned()))
            .flatten()
        else {
            continue;
        };
        let Some(source) = m.source().clone() else {
            continue;
        };
        if !source.starts_with("/") {
            continue;
        }
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&staged)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| CreateError::Failed(format!("creating {}: {e}", staged.display())))?;
        let copy = staged.join(&name);
        copy_public_file(&source, &copy).map_err(|problem| {
            CreateError::Invalid(format!(
                "the bind of {} at {dest} {problem}; CRI's own files are plain and world-readable",
                source.display()
            ))
        })?;
        m.set_source(Some(copy));
    }
    Ok(())
}

fn copy_public_file(source: &Path, copy: &Path) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(source)
        .map_err(|e| format!("cannot be opened: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() || meta.mode() & 0o004 == 0 || meta.len() > MAX_CRI_FILE {
        return Err(format!(
            "is not a plain world-readable file of at most {} KiB",
            MAX_CRI_FILE >> 10
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CRI_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
    std::fs::write(copy, &bytes).map_err(|e| format!("cannot be copied: {e}"))?;
    std::fs::set_permissions(copy, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| format!("cannot be copied: {e}"))
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

    /// containerd's copies sit in a 0700 directory the partition cannot
    /// enter; the spec ends up naming copies it can, and a private file
    /// bound at /etc/hosts is refused rather than copied out.
    #[test]
    fn cri_files_are_copied_where_the_partition_reaches_them_and_private_ones_refused() {
        let namespace = format!("unit-cri-{}", std::process::id());
        let target = claim(&namespace, "app", Some(4242)).unwrap();
        let dir = target.parent().unwrap().to_owned();
        let containerd = tempfile::tempdir().unwrap();
        std::fs::set_permissions(containerd.path(), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let hosts = containerd.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o644)).unwrap();
        let bind = |source: &Path, dest: &str| {
            oci_spec::runtime::MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(source)
                .options(vec!["rbind".to_string(), "ro".to_string()])
                .build()
                .unwrap()
        };
        let proc_mount = oci_spec::runtime::MountBuilder::default()
            .destination("/proc")
            .typ("proc")
            .source("proc")
            .build()
            .unwrap();
        let mut spec = oci_spec::runtime::Spec::default();
        spec.set_mounts(Some(vec![bind(&hosts, "/etc/hosts"), proc_mount.clone()]));
        stage_cri_files(&mut spec, &dir).unwrap();
        let mounts = spec.mounts().clone().unwrap();
        let copy = dir.join("cri/hosts");
        assert_eq!(mounts[0].source().as_deref(), Some(copy.as_path()));
        assert_eq!(mounts[1], proc_mount, "other mounts are left alone");
        assert_eq!(
            std::fs::read_to_string(&copy).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o777, 0o444);

        let private = containerd.path().join("shadow");
        std::fs::write(&private, "root:secret\n").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut spec = oci_spec::runtime::Spec::default();
        spec.set_mounts(Some(vec![bind(&private, "/etc/resolv.conf")]));
        let refused = stage_cri_files(&mut spec, &dir).unwrap_err().to_string();
        assert!(refused.contains("world-readable"), "{refused}");
        assert!(!dir.join("cri/resolv.conf").exists());

        remove(&target).unwrap();
        assert!(!dir.exists(), "the copies go with the partition");
        std::fs::remove_dir(dir.parent().unwrap()).unwrap();
    }
}
