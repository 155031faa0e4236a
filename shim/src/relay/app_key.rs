//! The app's private key (`furnace.dev/app-key`): the provider keeps it
//! under `[facilities] key_root`, root's alone; the shim gives the app a copy
//! that only the app's own host uid can read.
//!
//! A copy, not a bind of the file itself, because the app's host uid is
//! claimed at create (`id_ranges`): no file can be owned by it beforehand.
//! The copy lives in the app's relay directory on `/run` and goes with it.
//! Only files under `key_root` are taken, so naming `/etc/shadow` or the
//! host's ssh key gets a refusal, not a copy.

use crate::instance::CreateError;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path};

/// A Noise private key file is 65 bytes; anything far larger is no key.
const MAX_KEY_BYTES: u64 = 4096;

fn refused(path: &Path, problem: impl std::fmt::Display, fix: &str) -> CreateError {
    CreateError::Invalid(format!(
        "{}: {} {problem}; {fix}",
        furnace_runtime::annotations::APP_KEY,
        path.display()
    ))
}

/// Copies the key at `source` to `copy`, owned by the app's host ids and
/// readable by them alone. `source` must be a plain file (no symlink on
/// the way, one link) under `key_root`, owned by root and closed to
/// everyone else. The checks are made on the open file, so the file
/// checked is the file copied.
pub fn copy_for_app(
    source: &Path,
    key_root: &Path,
    copy: &Path,
    app_ids: (u32, u32),
) -> Result<(), CreateError> {
    let plain = source
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain || !source.starts_with(key_root) || source == key_root {
        return Err(refused(
            source,
            format!(
                "is not a plain path under the provider's key_root, {}",
                key_root.display()
            ),
            &format!(
                "keep app keys there: `furnace keygen {}/NAME`",
                key_root.display()
            ),
        ));
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
    use super::copy_for_app;
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
        copy_for_app(&key, &key_root, &copy, ids).unwrap();
        let meta = std::fs::metadata(&copy).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o400, 4242, 4343)
        );
        assert_eq!(std::fs::read(&copy).unwrap(), b"secret\n");
        let again = copy_for_app(&key, &key_root, &copy, ids).unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
        std::fs::remove_file(&copy).unwrap();

        let refused = |path: &Path, why: &str| {
            let e = copy_for_app(path, &key_root, &copy, ids)
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
        copy_for_app(&key, &key_root, &copy, ids).unwrap();
    }
}
