//! Mount points, created in the rootfs before the partition starts.
//!
//! The partition's root is an unprivileged host uid, so libcontainer (which
//! mounts from inside the user namespace) cannot create `/proc`, `/dev` or
//! `/run/furnace` in a root-owned image that lacks them, as a `FROM scratch`
//! image does. The caller, still host root, creates them first, resolving
//! every path inside the rootfs (`openat2` `RESOLVE_IN_ROOT` through
//! libpathrs) so that an image's symlink cannot point the creation at the host.

use oci_spec::runtime::Spec;
use pathrs::{InodeType, Root};
use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Creates the directory each of `spec`'s mounts needs inside `rootfs`: the
/// destination itself, or for a bind mount of a file its parent and an
/// empty file.
pub fn create(rootfs: &Path, spec: &Spec) -> Result<(), String> {
    let root =
        Root::open(rootfs).map_err(|e| format!("opening rootfs {}: {e}", rootfs.display()))?;
    let mode = Permissions::from_mode(0o755);
    for mount in spec.mounts().iter().flatten() {
        let destination = mount.destination();
        let is_file_bind = mount.typ().as_deref() == Some("bind")
            && mount
                .source()
                .as_ref()
                .is_some_and(|s| s.metadata().is_ok_and(|m| !m.is_dir()));
        let dir = if is_file_bind {
            destination.parent().map(Path::to_path_buf)
        } else {
            Some(destination.clone())
        };
        let Some(dir) = dir.map(|d| relative(&d)) else {
            continue;
        };
        if dir.as_os_str().is_empty() {
            continue;
        }
        root.mkdir_all(&dir, &mode)
            .map_err(|e| format!("creating mount point /{} in the rootfs: {e}", dir.display()))?;
        // A file bind needs a file to land on, which the partition could
        // not create in a root-owned directory of the image (CRI's
        // /etc/hosts in an image's /etc).
        // Not under a filesystem the partition mounts itself (its tmpfs at
        // /run/furnace), where libcontainer makes the file.
        let covered = spec.mounts().iter().flatten().any(|m| {
            m.typ().as_deref() != Some("bind")
                && m.destination() != destination
                && destination.starts_with(m.destination())
        });
        let file = relative(destination);
        if is_file_bind && !covered && root.resolve(&file).is_err() {
            root.create(&file, &InodeType::File(Permissions::from_mode(0o644)))
                .map_err(|e| {
                    format!(
                        "creating mount point /{} in the rootfs: {e}",
                        file.display()
                    )
                })?;
        }
    }
    Ok(())
}

fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn spec_with(mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
        let mut spec = Spec::default();
        spec.set_mounts(Some(mounts));
        spec
    }

    #[test]
    fn creates_missing_mount_points_inside_the_rootfs() {
        let rootfs = tempfile::tempdir().unwrap();
        let socket = rootfs.path().join("outside.sock");
        std::fs::write(&socket, b"").unwrap();
        let spec = spec_with(vec![
            MountBuilder::default()
                .destination("/proc")
                .typ("proc")
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/run/furnace")
                .typ("tmpfs")
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/run/furnace/vmi.sock")
                .typ("bind")
                .source(&socket)
                .build()
                .unwrap(),
        ]);
        create(rootfs.path(), &spec).unwrap();
        assert!(rootfs.path().join("proc").is_dir());
        assert!(rootfs.path().join("run/furnace").is_dir());
        assert!(!rootfs.path().join("run/furnace/vmi.sock").exists());
    }

    /// CRI binds /etc/hosts onto an image whose /etc the partition's root
    /// cannot write: the file to bind onto is made beforehand, once.
    #[test]
    fn a_file_bind_into_the_image_gets_its_file() {
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(rootfs.path().join("etc")).unwrap();
        std::fs::write(rootfs.path().join("etc/hostname"), "image\n").unwrap();
        let source = tempfile::NamedTempFile::new().unwrap();
        let bind = |dest: &str| {
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(source.path())
                .build()
                .unwrap()
        };
        let spec = spec_with(vec![bind("/etc/hosts"), bind("/etc/hostname")]);
        create(rootfs.path(), &spec).unwrap();
        create(rootfs.path(), &spec).unwrap();
        assert_eq!(std::fs::read(rootfs.path().join("etc/hosts")).unwrap(), b"");
        assert_eq!(
            std::fs::read_to_string(rootfs.path().join("etc/hostname")).unwrap(),
            "image\n",
            "an image's own file is left as it is"
        );
    }

    #[test]
    fn an_image_symlink_cannot_aim_creation_at_the_host() {
        let rootfs = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path(), rootfs.path().join("proc")).unwrap();
        let spec = spec_with(vec![MountBuilder::default()
            .destination("/proc/sys")
            .typ("proc")
            .build()
            .unwrap()]);
        let _ = create(rootfs.path(), &spec);
        assert!(
            !host.path().join("sys").exists(),
            "created outside the rootfs"
        );
    }
}
