//! Which of `[user_namespace]`'s host id ranges each partition holds, so no
//! two partitions (apps or relays) ever share host uids: the sidecar's
//! peer-uid check then tells one app from another, and per-uid kernel
//! limits are each partition's own.
//!
//! A claim is a file `<dir>/<index>` holding its owner, `<bundle> <role>`.
//! It is made with `link(2)` from a file already holding the owner, which
//! fails if the name exists, so two shims racing for a range cannot both
//! win, and a claim never exists without its owner in it. The files live in
//! `/run`: they outlive a shim that died (so a restarted one does not hand
//! out a range still in use) and go with the host's processes at reboot.
//! They are released by owner, not from the task record, so a shim dying
//! between a claim and its record still leaves `delete` what to release.

use furnace_runtime::config::UserNamespaceConfig;
use furnace_runtime::IdRange;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The claims of this host's shims.
pub const CLAIMS_DIR: &str = "/run/furnace/id-ranges";

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("all {ranges} host id ranges of [user_namespace] are held by running partitions; stop one, or have the provider raise user_namespace.ranges")]
    Exhausted { ranges: u32 },
    #[error("claiming a host id range in {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// One shim's view of the claims in a directory.
pub struct IdClaims {
    dir: PathBuf,
}

/// Who holds a range: the task's bundle and which of its partitions.
pub fn owner(bundle: &Path, role: &str) -> String {
    format!("{} {role}", bundle.display())
}

impl IdClaims {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        IdClaims { dir: dir.into() }
    }

    pub fn system() -> Self {
        Self::new(CLAIMS_DIR)
    }

    fn io(&self, source: std::io::Error) -> ClaimError {
        ClaimError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Claims the lowest free range for `owner`.
    pub fn claim(&self, ns: &UserNamespaceConfig, owner: &str) -> Result<IdRange, ClaimError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.io(e))?;
        let staged = self.dir.join(format!(
            ".claim-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staged)
            .map_err(|e| self.io(e))?;
        let staged_owner = file.write_all(owner.as_bytes());
        drop(file);
        let claimed = staged_owner.map_err(|e| self.io(e)).and_then(|()| {
            for index in 0..ns.ranges {
                let Some(range) = ns.range(index) else { break };
                match std::fs::hard_link(&staged, self.dir.join(index.to_string())) {
                    Ok(()) => return Ok(range),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(self.io(e)),
                }
            }
            Err(ClaimError::Exhausted { ranges: ns.ranges })
        });
        let _ = std::fs::remove_file(&staged);
        claimed
    }

    /// Releases every range `owner` holds; returns what could not be
    /// released. Safe to repeat.
    pub fn release(&self, owner: &str) -> Vec<String> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => return vec![format!("listing {}: {e}", self.dir.display())],
        };
        let mut problems = Vec::new();
        for entry in entries.flatten() {
            let is_claim = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            let path = entry.path();
            if is_claim && std::fs::read(&path).is_ok_and(|held| held == owner.as_bytes()) {
                if let Err(e) = std::fs::remove_file(&path) {
                    problems.push(format!("releasing host id range {}: {e}", path.display()));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(ranges: u32) -> UserNamespaceConfig {
        UserNamespaceConfig {
            ranges,
            ..UserNamespaceConfig::default()
        }
    }

    #[test]
    fn each_owner_gets_the_lowest_free_range_until_none_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let claims = IdClaims::new(dir.path().join("id-ranges"));
        let config = ns(3);
        let a = claims.claim(&config, "/b/a app").unwrap();
        let b = claims.claim(&config, "/b/b app").unwrap();
        let b_relay = claims.claim(&config, "/b/b relay").unwrap();
        assert_eq!((a.index, b.index, b_relay.index), (0, 1, 2));
        assert_eq!(b.host_uid, config.host_uid + config.size);
        let e = claims.claim(&config, "/b/c app").unwrap_err();
        assert!(
            matches!(e, ClaimError::Exhausted { ranges: 3 }),
            "{e}: {e:?}"
        );

        // A restarted shim sees the same claims: they are files.
        let restarted = IdClaims::new(dir.path().join("id-ranges"));
        assert!(restarted.release("/b/a app").is_empty());
        assert!(restarted.release("/b/a app").is_empty(), "safe to repeat");
        assert_eq!(restarted.claim(&config, "/b/c app").unwrap().index, 0);
        // Releasing one owner leaves the others' ranges held.
        assert!(restarted.release("/b/b relay").is_empty());
        assert_eq!(restarted.claim(&config, "/b/d app").unwrap().index, 2);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("id-ranges"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 3, "no staged file is left: {left:?}");
    }

    #[test]
    fn racing_shims_never_share_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let config = ns(64);
        let got: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let dir = dir.path().to_path_buf();
                    s.spawn(move || {
                        let claims = IdClaims::new(dir);
                        (0..8)
                            .map(|i| claims.claim(&config, &format!("/b/{t}-{i} app")))
                            .map(|r| r.unwrap().index)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, (0..64).collect::<Vec<_>>(), "{got:?}");
    }
}
