//! Finding, reading and parsing the file.

use crate::error::ConfigError;
use crate::schema::ProviderConfig;
use crate::DEFAULT_CONFIG_PATH;
use std::path::{Path, PathBuf};

impl ProviderConfig {
    /// Reads and validates the config at `path`. The file must exist.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| e.in_file(path))
    }

    /// Reads [`DEFAULT_CONFIG_PATH`] if it exists, else returns the defaults.
    pub fn load_default() -> Result<Self, ConfigError> {
        Self::load_from(None)
    }

    /// Reads `path` if it exists, else returns the defaults.
    pub fn load_or_default(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        match is_absent(path) {
            true => Ok(Self::default()),
            false => Self::load(path),
        }
    }

    /// The file [`Self::load_from`] reads for `path`: `path` itself, else
    /// [`DEFAULT_CONFIG_PATH`] unless it is absent; `None` means the defaults.
    pub fn file_for(path: Option<&Path>) -> Option<PathBuf> {
        match path {
            Some(path) => Some(path.to_path_buf()),
            None if is_absent(Path::new(DEFAULT_CONFIG_PATH)) => None,
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)),
        }
    }

    /// How the shim, the sidecar and the CLI find the file: the path they
    /// were given (containerd's `ConfigPath`, or `--config`), which must
    /// exist; else [`DEFAULT_CONFIG_PATH`] if it exists; else the defaults.
    pub fn load_from(path: Option<&Path>) -> Result<Self, ConfigError> {
        match Self::file_for(path) {
            Some(file) => Self::load(file),
            None => Ok(Self::default()),
        }
    }

    /// Parses and validates TOML text. Errors name no file; [`Self::load`]'s do.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: ProviderConfig =
            serde_path_to_error::deserialize(toml::Deserializer::new(text))
                .map_err(|e| parse_error(text, e))?;
        config.validate()?;
        Ok(config)
    }

    /// Serialises to TOML (the shape [`Self::from_toml`] reads).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("ProviderConfig always serialises")
    }
}

/// Whether nothing is at `path`. A file that is there but cannot be looked
/// at counts as present, so that reading it reports why.
fn is_absent(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Turns serde's error, which names only the last segment of a key, into
/// one naming the whole dotted key (the path `serde_path_to_error` kept
/// while deserializing) and its line.
fn parse_error(text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let path = e.path().to_string();
    let key = (path != ".").then_some(path);
    let e = e.into_inner();
    let line = e.span().map(|span| line_of(text, span.start));
    let problem = e.message().trim().replace('\n', " ");
    if text.parse::<toml::Table>().is_err() {
        return ConfigError::Syntax {
            file: None,
            line,
            problem,
        };
    }
    let unknown = problem
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once("`, "));
    match (unknown, key) {
        (Some((name, expected)), Some(key)) if key.ends_with(name) => ConfigError::UnknownKey {
            file: None,
            key,
            line,
            expected: expected.to_string(),
        },
        (_, key) => ConfigError::BadValue {
            file: None,
            key,
            line,
            problem,
        },
    }
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ByteSize, MaxLimits, SeccompMode};
    use furnace_api::v1::Permission;
    use std::path::PathBuf;

    /// Writes `text` to a file and loads it; the error must name the file.
    fn load_error(text: &str) -> (ConfigError, String, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("furnace.toml");
        std::fs::write(&path, text).unwrap();
        let err = ProviderConfig::load(&path).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{}: ", path.display())),
            "{message}"
        );
        assert_eq!(err.file(), Some(path.as_path()));
        (err, message, path)
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            ProviderConfig::from_toml("").unwrap(),
            ProviderConfig::default()
        );
    }

    #[test]
    fn round_trip_through_a_file() {
        let mut c = ProviderConfig {
            socket_root: PathBuf::from("/srv/furnace"),
            ..Default::default()
        };
        c.limits.default.cpu = 0.5;
        c.limits.max = MaxLimits {
            cpu: Some(1.0),
            memory: Some(ByteSize::mib(1024)),
            pids: Some(64),
            storage: None,
        };
        c.permissions.grantable = vec![Permission::Read, Permission::Write];
        c.seccomp.mode = SeccompMode::Kill;
        c.allow_exec = true;
        c.sidecar.max_pause_ms = 500;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("furnace.toml");
        std::fs::write(&path, c.to_toml()).unwrap();
        assert_eq!(ProviderConfig::load(&path).unwrap(), c);
        assert_eq!(ProviderConfig::load_or_default(&path).unwrap(), c);
        assert_eq!(ProviderConfig::load_from(Some(&path)).unwrap(), c);
    }

    #[test]
    fn human_sizes_and_partial_sections() {
        let c = ProviderConfig::from_toml(
            "tmp_size = \"8Mi\"\n[limits.default]\nmemory = \"128Mi\"\n[limits.max]\nmemory = \"1Gi\"\ncpu = 4\n",
        )
        .unwrap();
        assert_eq!(c.tmp_size, ByteSize::mib(8));
        assert_eq!(c.limits.default.memory, ByteSize::mib(128));
        assert_eq!(c.limits.default.pids, 30, "unset fields keep their default");
        assert_eq!(c.max_limits().memory, ByteSize::mib(1024));
        assert_eq!(c.max_limits().cpu, 4.0);
        assert_eq!(c.max_limits().pids, 30, "unset max equals the default");
    }

    #[test]
    fn an_unknown_top_level_key_is_named_with_its_file() {
        let (err, message, _) = load_error("socket_root = \"/run/furnace\"\nallow_exce = true\n");
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
        assert_eq!(err.key(), Some("allow_exce"));
        assert!(
            message.contains("unknown key `allow_exce` at line 2"),
            "{message}"
        );
        assert!(
            message.contains("`allow_exec`"),
            "lists the keys: {message}"
        );
        assert!(
            message.contains("remove it or correct its spelling"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_sidecar_key_is_named_by_its_dotted_path() {
        for text in [
            "[sidecar]\nmax_pause_ms = 5\nmax_reed_bytes = 4096\n",
            "sidecar.max_reed_bytes = 4096\n",
            "sidecar = { max_reed_bytes = 4096 }\n",
        ] {
            let (err, message, _) = load_error(text);
            assert_eq!(err.key(), Some("sidecar.max_reed_bytes"), "{text:?}");
            assert!(
                message.contains("unknown key `sidecar.max_reed_bytes`"),
                "{message}"
            );
            assert!(message.contains("`max_read_bytes`"), "{message}");
        }
    }

    #[test]
    fn an_unknown_limits_max_key_is_named_by_its_dotted_path() {
        let (err, message, _) =
            load_error("[limits.default]\ncpu = 1\n[limits.max]\nmemroy = \"1Gi\"\n");
        assert_eq!(err.key(), Some("limits.max.memroy"));
        assert!(
            message.contains("unknown key `limits.max.memroy` at line 4"),
            "{message}"
        );
        let (err, _, _) = load_error("[limits]\nmax.memroy = \"1Gi\"\n");
        assert_eq!(err.key(), Some("limits.max.memroy"));
        let (err, _, _) = load_error("[seccomp]\nmode = \"errno\"\nextra = 1\n");
        assert_eq!(err.key(), Some("seccomp.extra"));
        let (err, _, _) = load_error("[limits.min]\ncpu = 1\n");
        assert_eq!(err.key(), Some("limits.min"));
    }

    #[test]
    fn a_wrong_type_is_named_by_its_dotted_path() {
        for (text, key, words) in [
            ("allow_exec = \"yes\"\n", "allow_exec", "expected a boolean"),
            (
                "[sidecar]\nmax_pause_ms = \"5s\"\n",
                "sidecar.max_pause_ms",
                "u32",
            ),
            ("[limits.max]\npids = -1\n", "limits.max.pids", "-1"),
            (
                "[limits.default]\nmemory = \"128M\"\n",
                "limits.default.memory",
                "128Mi",
            ),
            (
                "[permissions]\ngrantable = [\"read\", 5]\n",
                "permissions.grantable[1]",
                "wanted string",
            ),
            (
                "[seccomp]\nmode = \"log\"\n",
                "seccomp.mode",
                "`errno` or `kill`",
            ),
            ("sidecar = 5\n", "sidecar", "struct SidecarConfig"),
            (
                "[socket_root]\nx = 1\n",
                "socket_root",
                "expected path string",
            ),
        ] {
            let (err, message, _) = load_error(text);
            assert!(
                matches!(err, ConfigError::BadValue { .. }),
                "{text:?}: {err:?}"
            );
            assert_eq!(err.key(), Some(key), "{text:?}: {message}");
            assert!(
                message.contains(&format!("key `{key}` at line")),
                "{message}"
            );
            assert!(message.contains(words), "{message}");
        }
    }

    #[test]
    fn not_toml_at_all_is_a_syntax_error_with_its_line() {
        let (err, message, _) = load_error("allow_exec = true\n[limits\n");
        assert!(
            matches!(err, ConfigError::Syntax { line: Some(2), .. }),
            "{err:?}"
        );
        assert!(message.contains("not valid TOML at line 2"), "{message}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_file() {
        for (text, key) in [
            (
                "[limits.default]\ncpu = 4\n[limits.max]\ncpu = 2\n",
                "limits.default.cpu",
            ),
            ("[limits.max]\npids = 10\n", "limits.default.pids"),
            ("[limits.default]\ncpu = 0\n", "limits.default.cpu"),
            (
                "[user_namespace]\nhost_uid = 0\n",
                "user_namespace.host_uid",
            ),
            ("socket_root = \"run\"\n", "socket_root"),
            (
                "[facilities]\nkey_root = \"/etc/../tmp\"\n",
                "facilities.key_root",
            ),
            ("[facilities]\nkey_root = \"/\"\n", "facilities.key_root"),
            (
                "[facilities]\nkubelet_root = \"kubelet\"\n",
                "facilities.kubelet_root",
            ),
            (
                "[facilities]\nstorage_root = \"storage\"\n",
                "facilities.storage_root",
            ),
            ("[user_namespace]\nranges = 0\n", "user_namespace.ranges"),
            (
                "[user_namespace]\nranges = 70000\n",
                "user_namespace.ranges",
            ),
            ("[sidecar]\nworker_uid = 100001\n", "sidecar.worker_uid"),
            (
                "[defense]\npoll_ms = 10\n",
                "defense.poll_ms",
            ),
            (
                "[defense]\naudit_log = \"audit.jsonl\"\n",
                "defense.audit_log",
            ),
            (
                "[[defense.rules]]\nname = \"t\"\nwhen = \"oom_kills\"\ncount = 1\nwindow_ms = 1000\nthen = \"throttle\"\n",
                "defense.rules[0].then",
            ),
            (
                "[[defense.rules]]\nname = \"k\"\nwhen = \"oom_kills\"\ncount = 1\nwindow_ms = 1000\nthen = \"kill\"\npermission = \"read\"\n",
                "defense.rules[0].then",
            ),
            (
                "[[defense.rules]]\nname = \"w\"\nwhen = \"oom_kills\"\ncount = 1\nwindow_ms = 700000\nthen = \"log\"\n",
                "defense.rules[0].window_ms",
            ),
            (
                "[[defense.rules]]\nname = \"a\"\nwhen = \"oom_kills\"\ncount = 0\nwindow_ms = 1000\nthen = \"log\"\n",
                "defense.rules[0].count",
            ),
            (
                "[[defense.rules]]\nname = \"a\"\nwhen = \"oom_kills\"\ncount = 1\nwindow_ms = 1000\nthen = \"log\"\n[[defense.rules]]\nname = \"a\"\nwhen = \"oom_kills\"\ncount = 1\nwindow_ms = 1000\nthen = \"kill\"\n",
                "defense.rules[1].name",
            ),
            ("tmp_size = 0\n", "tmp_size"),
            (
                "[sidecar]\nmax_read_bytes = 4194304\n",
                "sidecar.max_read_bytes",
            ),
            (
                "[sidecar]\nmax_event_queue = 10\n",
                "sidecar.default_event_queue",
            ),
        ] {
            let (err, message, _) = load_error(text);
            assert!(
                matches!(err, ConfigError::Invalid { .. }),
                "{text:?}: {err:?}"
            );
            assert_eq!(err.key(), Some(key), "{text:?} gave {message}");
            assert!(message.contains(&format!("key `{key}`: ")), "{message}");
        }
        let err = ProviderConfig::from_toml("[permissions]\ngrantable = [\"root\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("provider config: ") && err.contains("root"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_means_defaults_but_a_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert_eq!(
            ProviderConfig::load_or_default(&missing).unwrap(),
            ProviderConfig::default()
        );
        for err in [
            ProviderConfig::load(&missing).unwrap_err(),
            ProviderConfig::load_from(Some(&missing)).unwrap_err(),
        ] {
            assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
            assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
        }
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "allow_exec = \"yes\"\n").unwrap();
        let err = ProviderConfig::load_or_default(&bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(bad.to_str().unwrap()) && err.contains("allow_exec"),
            "{err}"
        );
    }
}
