//! Per-app persistent key/value storage on the host, in plain files, under a
//! quota that is really enforced.
//!
//! - **Keys** are 1..=[`MAX_KEY_LEN`] bytes of `[A-Za-z0-9._-]`, not starting
//!   with `.`, so a key maps 1:1 to the file `dir/<key>` and can never name a
//!   temp file, `.` or `..`.
//! - **Accounting**: an entry costs `key.len() + value.len()` bytes and `used`
//!   is the sum over entries. A put that would take `used` above the quota
//!   fails with [`StorageError::QuotaExceeded`] and changes nothing; an entry
//!   bigger than the whole quota is [`StorageError::ValueTooLarge`]. If the
//!   directory already holds more than the quota (quota tightened since), puts
//!   that grow usage fail while deletes and shrinking puts succeed.
//! - **Atomic puts**: the value goes to `dir/.tmp-<key>-<pid>-<n>` (created
//!   new, mode 0600), is synced, renamed over `dir/<key>`, and the directory is
//!   synced. A crash leaves the old value or the new one; [`Store::open`]
//!   removes leftover `.tmp-*` files.
//! - **Hostile contents**: the directory itself must not be a symlink; files
//!   are opened with `O_NOFOLLOW`, so a symlink planted in it is never
//!   followed; files whose names are not keys are ignored (with a warning).
//!   Only regular files count as entries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 128;

const TMP_PREFIX: &str = ".tmp-";
const KEY_RULE: &str = "a key is 1 to 128 bytes of [A-Za-z0-9._-], not starting with '.'";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid key {key:?}: {why} ({KEY_RULE})")]
    InvalidKey { key: String, why: &'static str },
    #[error("an entry of {len} bytes (key plus value) is larger than the quota of {max} bytes")]
    ValueTooLarge { len: u64, max: u64 },
    #[error("storage quota exceeded: the put would use {needed} of {quota} bytes ({used} in use)")]
    QuotaExceeded { needed: u64, used: u64, quota: u64 },
    #[error("no such key {key:?}")]
    NotFound { key: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

/// Attaches a (lazily built) context to an I/O error.
trait Context<T> {
    fn context(self, f: impl FnOnce() -> String) -> Result<T, StorageError>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, f: impl FnOnce() -> String) -> Result<T, StorageError> {
        self.map_err(|source| StorageError::Io {
            context: f(),
            source,
        })
    }
}

/// Checks `key` against the key rules (see the module documentation).
pub fn check_key(key: &str) -> Result<(), StorageError> {
    let why = if key.is_empty() {
        "it is empty"
    } else if key.len() > MAX_KEY_LEN {
        "it is too long"
    } else if key.starts_with('.') {
        "it starts with '.'"
    } else if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        "it has a character outside [A-Za-z0-9._-]"
    } else {
        return Ok(());
    };
    // Keep the error (which is echoed and logged) small whatever the key's size.
    let mut end = key.len().min(MAX_KEY_LEN);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < key.len() { "..." } else { "" };
    Err(StorageError::InvalidKey {
        key: format!("{}{more}", &key[..end]),
        why,
    })
}

fn cost(key: &str, len: u64) -> u64 {
    (key.len() as u64).saturating_add(len)
}

/// One app's storage: a directory of files, one per key.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    quota: u64,
    used: u64,
}

impl Store {
    /// Opens (creating it, mode 0700, if missing) the storage in `dir`,
    /// removes leftover temp files and computes `used` from what is on disk.
    pub fn open(dir: &Path, quota: u64) -> Result<Store, StorageError> {
        let shown = dir.display();
        let mut builder = fs::DirBuilder::new();
        builder
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .context(|| format!("creating {shown}"))?;
        let meta = fs::symlink_metadata(dir).context(|| format!("inspecting {shown}"))?;
        for (bad, errno, what) in [
            (meta.file_type().is_symlink(), libc::ELOOP, "is a symlink"),
            (!meta.is_dir(), libc::ENOTDIR, "is not a directory"),
        ] {
            if bad {
                let e = io::Error::from_raw_os_error(errno);
                return Err(e).context(|| format!("the storage directory {shown} {what}"));
            }
        }
        let mut used = 0u64;
        let listing = || format!("listing the storage directory {shown}");
        for entry in fs::read_dir(dir).context(listing)? {
            let entry = entry.context(listing)?;
            let (path, name) = (entry.path(), entry.file_name());
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed a leftover temp file")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "cannot remove a temp file: {e}")
                    }
                }
            } else if let Err(e) = check_key(&name) {
                tracing::warn!(path = %path.display(), "ignoring a file in storage: {e}");
            } else {
                // DirEntry::metadata does not follow symlinks.
                let meta = entry
                    .metadata()
                    .context(|| format!("inspecting key {name:?}"))?;
                if meta.is_file() {
                    used = used.saturating_add(cost(&name, meta.len()));
                } else {
                    tracing::warn!(path = %path.display(), "ignoring a non-regular file in storage");
                }
            }
        }
        if used > quota {
            tracing::warn!(dir = %shown, used, quota, "storage over its quota: it may only shrink");
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            quota,
            used,
        })
    }

    /// Stores `value` under `key`, atomically replacing any old value.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        check_key(key)?;
        let (new, quota) = (cost(key, value.len() as u64), self.quota);
        if new > quota {
            return Err(StorageError::ValueTooLarge {
                len: new,
                max: quota,
            });
        }
        let path = self.dir.join(key);
        let old = self.cost_on_disk(key)?.unwrap_or(0);
        let (needed, used) = (self.used.saturating_sub(old).saturating_add(new), self.used);
        if needed > quota && needed > used {
            return Err(StorageError::QuotaExceeded {
                needed,
                used,
                quota,
            });
        }
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{key}-{}-{n}", std::process::id()));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            file.write_all(value)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e).context(|| format!("writing the value for key {key:?}"));
        }
        // The new value is in place from here on, whatever the sync says.
        self.used = needed;
        self.sync_dir()
            .context(|| format!("syncing the directory after putting key {key:?}"))
    }

    /// Returns the value stored under `key`.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        check_key(key)?;
        let what = || format!("reading the value for key {key:?}");
        let opened = OpenOptions::new()
            .read(true)
            // O_NONBLOCK so that a planted FIFO cannot hang us; no effect on regular files.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.dir.join(key));
        let mut file = found(key, opened)?.context(what)?;
        let meta = file.metadata().context(what)?;
        if !meta.is_file() {
            return Err(io::Error::other("not a regular file")).context(what);
        }
        let mut value = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut value).context(what)?;
        Ok(value)
    }

    /// Deletes `key` and its value.
    pub fn delete(&mut self, key: &str) -> Result<(), StorageError> {
        check_key(key)?;
        let Some(old) = self.cost_on_disk(key)? else {
            return Err(StorageError::NotFound { key: key.into() });
        };
        found(key, fs::remove_file(self.dir.join(key)))?
            .context(|| format!("deleting key {key:?}"))?;
        self.used = self.used.saturating_sub(old);
        self.sync_dir()
            .context(|| format!("syncing the directory after deleting key {key:?}"))
    }

    /// The keys stored, sorted.
    pub fn keys(&self) -> Result<Vec<String>, StorageError> {
        let what = || format!("listing the storage directory {}", self.dir.display());
        let mut keys = Vec::new();
        for entry in fs::read_dir(&self.dir).context(what)? {
            let entry = entry.context(what)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if check_key(&name).is_ok() && entry.file_type().context(what)?.is_file() {
                keys.push(name);
            }
        }
        keys.sort_unstable();
        Ok(keys)
    }

    /// Bytes in use: the sum of `key.len() + value.len()` over entries.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The quota, in bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// What `dir/<key>` costs: `None` if absent, 0 if it is not a regular
    /// file (never counted, e.g. a planted symlink).
    fn cost_on_disk(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match fs::symlink_metadata(self.dir.join(key)) {
            Ok(m) => Ok(Some(if m.is_file() { cost(key, m.len()) } else { 0 })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context(|| format!("inspecting key {key:?}")),
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// Turns an absent file into `Err(NotFound)`, leaving other results to the caller.
fn found<T>(key: &str, r: io::Result<T>) -> Result<io::Result<T>, StorageError> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(StorageError::NotFound { key: key.into() })
        }
        r => Ok(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn store(quota: u64) -> (tempfile::TempDir, PathBuf, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("app");
        let s = Store::open(&dir, quota).unwrap();
        (tmp, dir, s)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// The error's variant name, or "ok".
    fn kind<T>(r: &Result<T, StorageError>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(StorageError::InvalidKey { .. }) => "InvalidKey",
            Err(StorageError::ValueTooLarge { .. }) => "ValueTooLarge",
            Err(StorageError::QuotaExceeded { .. }) => "QuotaExceeded",
            Err(StorageError::NotFound { .. }) => "NotFound",
            Err(StorageError::Io { .. }) => "Io",
        }
    }

    #[test]
    fn round_trip() {
        let (_t, dir, mut s) = store(1000);
        s.put("b", b"two").unwrap();
        s.put("a.x_y-Z9", b"one").unwrap();
        s.put("empty", b"").unwrap();
        assert_eq!(s.get("b").unwrap(), b"two");
        assert_eq!(s.get("empty").unwrap(), b"");
        assert_eq!(s.keys().unwrap(), ["a.x_y-Z9", "b", "empty"]);
        assert_eq!(s.used(), 4 + 11 + 5);
        assert_eq!((mode(&dir), mode(&dir.join("b"))), (0o700, 0o600));
        s.delete("b").unwrap();
        assert_eq!(kind(&s.get("b")), "NotFound");
        assert_eq!(kind(&s.delete("b")), "NotFound");
        assert_eq!(s.keys().unwrap(), ["a.x_y-Z9", "empty"]);
        assert_eq!(s.used(), 16);
    }

    #[test]
    fn persists_across_reopen() {
        let (_t, dir, mut s) = store(1000);
        s.put("k", b"hello").unwrap();
        s.put("gone", b"x").unwrap();
        s.delete("gone").unwrap();
        drop(s);
        let s = Store::open(&dir, 1000).unwrap();
        assert_eq!(s.get("k").unwrap(), b"hello");
        assert_eq!(s.keys().unwrap(), ["k"]);
        assert_eq!((s.used(), s.quota()), (6, 1000));
    }

    #[test]
    fn key_rules() {
        let (_t, _dir, mut s) = store(1000);
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for key in [
            "", &long, ".hidden", ".tmp-x", "a/b", "..", ".", "é", "a b", "a\0",
        ] {
            assert_eq!(kind(&check_key(key)), "InvalidKey", "{key:?}");
            assert_eq!(kind(&s.put(key, b"v")), "InvalidKey", "{key:?}");
            assert_eq!(kind(&s.get(key)), "InvalidKey", "{key:?}");
            assert_eq!(kind(&s.delete(key)), "InvalidKey", "{key:?}");
        }
        check_key(&"a".repeat(MAX_KEY_LEN)).unwrap();
        check_key("a..b").unwrap();
        let msg = check_key(&"é".repeat(1000)).unwrap_err().to_string();
        assert!(msg.contains("[A-Za-z0-9._-]") && msg.len() < 400, "{msg}");
        assert_eq!(s.used(), 0);
    }

    #[test]
    fn quota_is_enforced() {
        let (_t, dir, mut s) = store(20);
        s.put("a", b"123456789").unwrap(); // 10
        s.put("b", b"123456789").unwrap(); // 20: exactly the quota
        let e = s.put("b", b"1234567890").unwrap_err();
        assert!(
            matches!(
                e,
                StorageError::QuotaExceeded {
                    needed: 21,
                    used: 20,
                    quota: 20
                }
            ),
            "{e:?}"
        );
        assert_eq!(kind(&s.put("c", b"")), "QuotaExceeded");
        assert_eq!(s.get("b").unwrap(), b"123456789");
        assert_eq!(
            (s.used(), s.keys().unwrap()),
            (20, vec!["a".into(), "b".into()])
        );
        s.put("b", b"1").unwrap(); // a smaller value frees space
        assert_eq!(s.used(), 12);
        s.put("c", b"1234567").unwrap();
        assert_eq!(s.used(), 20);
        let e = s.put("d", &[0; 20]).unwrap_err();
        assert!(
            matches!(e, StorageError::ValueTooLarge { len: 21, max: 20 }),
            "{e:?}"
        );
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            3,
            "temp files left behind"
        );
    }

    #[test]
    fn leftovers_removed_and_strangers_ignored() {
        let (_t, dir, mut s) = store(1000);
        s.put("k", b"v").unwrap();
        drop(s);
        fs::write(dir.join(".tmp-k-123-0"), b"half a value").unwrap();
        fs::write(dir.join("not a key"), b"whatever").unwrap();
        fs::create_dir(dir.join("subdir")).unwrap();
        let s = Store::open(&dir, 1000).unwrap();
        assert!(!dir.join(".tmp-k-123-0").exists());
        assert!(dir.join("not a key").exists());
        assert_eq!((s.used(), s.keys().unwrap()), (2, vec!["k".to_string()]));
        assert_eq!(s.get("k").unwrap(), b"v");
    }

    #[test]
    fn planted_symlink_is_not_followed() {
        let (t, dir, _s) = store(1000);
        let target = t.path().join("secret");
        fs::write(&target, b"host secret").unwrap();
        symlink(&target, dir.join("k")).unwrap();
        let mut s = Store::open(&dir, 1000).unwrap();
        assert_eq!((s.used(), s.keys().unwrap()), (0, vec![]));
        match s.get("k") {
            Err(StorageError::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ELOOP))
            }
            other => panic!("{other:?}"),
        }
        s.put("k", b"mine").unwrap(); // replaces the link itself, never writes through it
        assert_eq!((s.get("k").unwrap(), s.used()), (b"mine".to_vec(), 5));
        assert_eq!(fs::read(&target).unwrap(), b"host secret");
        // A planted FIFO neither hangs a get nor counts as an entry.
        let fifo = std::ffi::CString::new(dir.join("f").into_os_string().into_encoded_bytes());
        assert_eq!(unsafe { libc::mkfifo(fifo.unwrap().as_ptr(), 0o600) }, 0);
        assert_eq!(kind(&s.get("f")), "Io");
        assert_eq!(s.keys().unwrap(), ["k"]);
    }

    #[test]
    fn refuses_symlinked_or_non_directory() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        symlink(&real, t.path().join("link")).unwrap();
        fs::write(t.path().join("file"), b"").unwrap();
        assert_eq!(kind(&Store::open(&t.path().join("link"), 10)), "Io");
        assert_eq!(kind(&Store::open(&t.path().join("file"), 10)), "Io");
    }

    #[test]
    fn tightened_quota_allows_only_shrinking() {
        let (_t, dir, mut s) = store(100);
        s.put("a", &[1; 29]).unwrap(); // 30
        s.put("b", &[2; 29]).unwrap(); // 30
        drop(s);
        let mut s = Store::open(&dir, 40).unwrap();
        assert_eq!((s.used(), s.quota()), (60, 40));
        assert_eq!(kind(&s.put("c", b"x")), "QuotaExceeded");
        assert_eq!(kind(&s.put("a", &[1; 30])), "QuotaExceeded");
        assert_eq!((s.get("a").unwrap(), s.used()), (vec![1; 29], 60));
        s.put("a", &[1; 9]).unwrap(); // shrinks to 10, still over the quota
        assert_eq!(s.used(), 40);
        s.delete("b").unwrap();
        assert_eq!(s.used(), 10);
        s.put("c", &[3; 29]).unwrap();
        assert_eq!(s.used(), 40);
    }
}
