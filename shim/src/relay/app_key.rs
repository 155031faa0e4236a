//! The app's private key (`furnace.dev/app-key`): the provider keeps it
//! under `[facilities] key_root`, root's alone; the shim gives the app a copy
//! that only the app's own host uid can read.
//!
//! A copy, not a bind of the file itself, because the app's host uid is
//! claimed at create (`id_ranges`): no file can be owned by it beforehand.
//! The copy lives in the app's relay directory on `/run` and goes with it.
//! Only files under `key_root` are taken, so naming `/etc/shadow` or the
//! host's ssh key gets a refusal, not a copy.
//!
//! On Kubernetes the key is a Secret: the operator mounts it (`subPath`) at
//! the partition's key path, and kubelet's bind of it reaches the shim as a
//! mount in the spec, from under `[facilities] kubelet_root`. That mount is
//! taken out of the spec (the partition gets the same copy as from the
//! annotation) and its file stands for `furnace.dev/app-key`.

use crate::instance::CreateError;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path};

/// Takes a bind of the app's key at the partition's key path out of the
/// spec and names its source as `furnace.dev/app-key`; returns whether it
/// did. Both at once is refused: one key, from one place.
pub fn take_mounted_key(
    spec: &mut oci_spec::runtime::Spec,
    annotations: &mut std::collections::HashMap<String, String>,
) -> Result<bool, CreateError> {
    let key_path = Path::new(furnace_runtime::policy::APP_KEY);
    let Some(mounts) = spec.mounts_mut() else {
        return Ok(false);
    };
    let Some(at) = mounts.iter().position(|m| m.destination() == key_path) else {
        return Ok(false);
    };
    let annotation = furnace_runtime::annotations::APP_KEY;
    if annotations.contains_key(annotation) {
        return Err(CreateError::Invalid(format!(
            "{annotation} is set and a volume is mounted at {}; give the app one key: the annotation (ctr) or the Secret (Kubernetes)",
            key_path.display()
        )));
    }
    let mount = mounts.remove(at);
    let source = mount.source().clone().ok_or_else(|| {
        CreateError::Invalid(format!("the mount at {} has no source", key_path.display()))
    })?;
    annotations.insert(annotation.into(), source.display().to_string());
    Ok(true)
}

/// A Noise private key file is 65 bytes; anything far larger is no key.
const MAX_KEY_BYTES: u64 = 4096;

fn refused(path: &Path, problem: impl std::fmt::Display, fix: &str) -> CreateError {
    CreateError::Invalid(format!(
        "{}: {} {problem}; {fix}",
        furnace_runtime::annotations::APP_KEY,
        path.display()
    ))
}

/// Where an app's key may come from.
pub enum KeyRoot<'a> {
    /// `[facilities] key_root`, for `furnace.dev/app-key`.
    Provider(&'a Path),
    /// `[facilities] kubelet_root`, for a Secret kubelet mounted.
    Kubelet(&'a Path),
}

/// Copies the key at `source` to `copy`, owned by the app's host ids and
/// readable by them alone. `source` must be a plain file (no symlink on
/// the way, one link) under `root`, owned by root and closed to
/// everyone else. The checks are made on the open file, so the file
/// checked is the file copied.
pub fn copy_for_app(
    source: &Path,
    root: KeyRoot<'_>,
    copy: &Path,
    app_ids: (u32, u32),
) -> Result<(), CreateError> {
    let plain = source
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let (key_root, problem, fix) = match root {
        KeyRoot::Provider(r) => (
            r,
            format!("is not a plain path under the provider's key_root, {}", r.display()),
            format!("keep app keys there: `furnace keygen {}/NAME`", r.display()),
        ),
        KeyRoot::Kubelet(r) => (
            r,
            format!("is mounted at the key path but is not a plain path under kubelet's root, {}", r.display()),
            "give the app its key as a Secret volume (FurnaceApp appKeySecretRef), or set [facilities] kubelet_root".to_string(),
        ),
    };
    if !plain || !source.starts_with(key_root) || source == key_root {
        return Err(refused(source, problem, &fix));
    }
    if std::fs::canonicalize(source).is_ok_and(|c| c != source) {
        return Err(refused(
            source,
            "goes through a symlink",
            "name the file itself",
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(source)
        .map_err(|e| refused(source, e, "check the path"))?;
    let meta = file
        .metadata()
        .map_err(|e| refused(source, e, "check the path"))?;
    let mode = meta.mode() & 0o7777;
    let fix = format!(
        "the key must be root's alone: `chown 0:0 {0}; chmod 0400 {0}`",
        source.display()
    );
    let problem = if !meta.file_type().is_file() {
        Some("is not a plain file".to_string())
    } else if meta.nlink() != 1 {
        Some(format!("has {} hard links", meta.nlink()))
    } else if meta.uid() != 0 || mode & 0o077 != 0 {
        Some(format!(
            "(mode {mode:o}, owner {}:{}) is not root's alone",
            meta.uid(),
            meta.gid()
        ))
    } else if meta.len() > MAX_KEY_BYTES {
        Some(format!("is {} bytes, too large for a key", meta.len()))
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(refused(source, problem, &fix));
    }
    let mut key = Vec::with_capacity(meta.len() as usize);
    (&mut file)
        .take(MAX_KEY_BYTES)
        .read_to_end(&mut key)
        .map_err(|e| refused(source, e, "check the file"))?;

    let failed = |e: std::io::Error| CreateError::Failed(format!("{}: {e}", copy.display()));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(copy)
        .map_err(failed)?;
    std::os::unix::fs::fchown(&out, Some(app_ids.0), Some(app_ids.1)).map_err(failed)?;
    out.write_all(&key).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::{copy_for_app, take_mounted_key, KeyRoot};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    /// Real files (the tests run as root, as the shim).
    #[test]
    fn only_a_plain_root_only_file_under_key_root_is_copied_and_the_copy_is_the_apps() {
        let dir = tempfile::tempdir().unwrap();
        let key_root = dir.path().join("keys");
        std::fs::create_dir(&key_root).unwrap();
        let key = key_root.join("app.key");
        std::fs::write(&key, "secret\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let ids = (4242, 4343);
        let copy = dir.path().join("copy.key");
        copy_for_app(&key, KeyRoot::Provider(&key_root), &copy, ids).unwrap();
        let meta = std::fs::metadata(&copy).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o400, 4242, 4343)
        );
        assert_eq!(std::fs::read(&copy).unwrap(), b"secret\n");
        let again = copy_for_app(&key, KeyRoot::Provider(&key_root), &copy, ids).unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
        std::fs::remove_file(&copy).unwrap();

        let refused = |path: &Path, why: &str| {
            let e = copy_for_app(path, KeyRoot::Provider(&key_root), &copy, ids)
                .unwrap_err()
                .to_string();
            assert!(e.contains("furnace.dev/app-key") && e.contains(why), "{e}");
            assert!(!copy.exists(), "nothing copied for {}", path.display());
        };
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        refused(&key, "not root's alone");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&key, Some(4242), None).unwrap();
        refused(&key, "chown 0:0");
        std::os::unix::fs::chown(&key, Some(0), None).unwrap();

        let outside = dir.path().join("outside.key");
        std::fs::copy(&key, &outside).unwrap();
        refused(&outside, "key_root");
        refused(&key_root.join("../outside.key"), "key_root");
        refused(&key_root, "key_root");
        let link = key_root.join("link.key");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        refused(&link, "symlink");
        let hard = key_root.join("hard.key");
        std::fs::hard_link(&key, &hard).unwrap();
        refused(&hard, "2 hard links");
        std::fs::remove_file(&hard).unwrap();
        let sub = key_root.join("sub");
        std::fs::create_dir(&sub).unwrap();
        refused(&sub, "not a plain file");
        let fifo = key_root.join("fifo.key");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        refused(&fifo, "not a plain file");
        let big = key_root.join("big.key");
        std::fs::write(&big, vec![b'k'; 5000]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o400)).unwrap();
        refused(&big, "too large");
        refused(&key_root.join("missing.key"), "No such file");
        copy_for_app(&key, KeyRoot::Provider(&key_root), &copy, ids).unwrap();
    }

    fn spec_with_key_mount(source: &str) -> oci_spec::runtime::Spec {
        let mount = oci_spec::runtime::MountBuilder::default()
            .destination(furnace_runtime::policy::APP_KEY)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap();
        let mut spec = oci_spec::runtime::Spec::default();
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(mount);
        spec.set_mounts(Some(mounts));
        spec
    }

    /// kubelet's bind of the Secret becomes the key the annotation would
    /// name, and leaves the spec; with the annotation set too it is refused.
    #[test]
    fn a_mounted_key_stands_for_the_annotation_once() {
        let annotation = furnace_runtime::annotations::APP_KEY;
        let source = "/var/lib/kubelet/pods/u/volume-subpaths/furnace-app-key/app/0";
        let mut spec = spec_with_key_mount(source);
        let before = spec.mounts().as_ref().unwrap().len();
        let mut annotations = std::collections::HashMap::new();
        assert!(take_mounted_key(&mut spec, &mut annotations).unwrap());
        assert_eq!(annotations[annotation], source);
        assert_eq!(spec.mounts().as_ref().unwrap().len(), before - 1);
        assert!(
            !take_mounted_key(&mut spec, &mut annotations).unwrap(),
            "taken once"
        );

        let mut spec = spec_with_key_mount(source);
        let mut both = std::collections::HashMap::from([(
            annotation.to_string(),
            "/etc/furnace/keys/a.key".to_string(),
        )]);
        let e = take_mounted_key(&mut spec, &mut both)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one key"), "{e}");
    }

    #[test]
    fn a_mounted_key_from_outside_kubelets_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kubelet = dir.path().join("kubelet");
        std::fs::create_dir(&kubelet).unwrap();
        let stray = dir.path().join("stray.key");
        std::fs::write(&stray, "secret\n").unwrap();
        std::fs::set_permissions(&stray, std::fs::Permissions::from_mode(0o400)).unwrap();
        let copy = dir.path().join("copy.key");
        let e = copy_for_app(&stray, KeyRoot::Kubelet(&kubelet), &copy, (4242, 4343))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kubelet's root") && e.contains("appKeySecretRef"),
            "{e}"
        );
        assert!(!copy.exists());
    }
}
