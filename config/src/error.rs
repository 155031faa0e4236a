//! The one error type of the provider config. Every message names the file
//! (when the config came from one), the dotted key at fault where there is
//! one, and says what to do.

use std::path::{Path, PathBuf};

/// Where every key is documented, for the messages.
const KEYS_DOC: &str = "docs/containerd.md lists every key";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: missing where a path was given, or unreadable.
    #[error("cannot read provider config {}: {source}; check the path (containerd's runtime option `ConfigPath`, or `--config`) and the file's permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The text is not TOML at all.
    #[error("{}not valid TOML{}: {problem}; fix the syntax", origin(file), at(*line))]
    Syntax {
        file: Option<PathBuf>,
        line: Option<usize>,
        problem: String,
    },

    /// A key the schema does not have (a typo included: nothing is ignored,
    /// so a misspelt limit never silently leaves the default in force).
    #[error("{}unknown key `{key}`{} ({expected}); remove it or correct its spelling ({KEYS_DOC})", origin(file), at(*line))]
    UnknownKey {
        file: Option<PathBuf>,
        /// The full dotted path, e.g. `sidecar.max_reed_bytes`.
        key: String,
        line: Option<usize>,
        /// The keys its table does take, as serde words it.
        expected: String,
    },

    /// A value of the wrong type or form (`allow_exec = "yes"`, `memory = "128M"`).
    #[error("{}{}{}: {problem}; fix the value ({KEYS_DOC} and its type)", origin(file), key_part(key), at(*line))]
    BadValue {
        file: Option<PathBuf>,
        /// The full dotted path, when it could be found.
        key: Option<String>,
        line: Option<usize>,
        problem: String,
    },

    /// A well-formed value that cannot be used: out of range, or a default
    /// looser than its maximum.
    #[error("{}key `{key}`: {problem}; {fix}", origin(file))]
    Invalid {
        file: Option<PathBuf>,
        key: String,
        problem: String,
        fix: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            file: None,
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The dotted key at fault, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::BadValue { key, .. } => key.as_deref(),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }

    /// The file the config came from, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            ConfigError::Read { path, .. } => Some(path),
            ConfigError::Syntax { file, .. }
            | ConfigError::UnknownKey { file, .. }
            | ConfigError::BadValue { file, .. }
            | ConfigError::Invalid { file, .. } => file.as_deref(),
        }
    }

    /// Names `path` as the file the config came from.
    pub(crate) fn in_file(mut self, path: &Path) -> Self {
        match &mut self {
            ConfigError::Read { .. } => {}
            ConfigError::Syntax { file, .. }
            | ConfigError::UnknownKey { file, .. }
            | ConfigError::BadValue { file, .. }
            | ConfigError::Invalid { file, .. } => *file = Some(path.to_path_buf()),
        }
        self
    }
}

fn origin(file: &Option<PathBuf>) -> String {
    match file {
        Some(path) => format!("{}: ", path.display()),
        None => "provider config: ".into(),
    }
}

fn at(line: Option<usize>) -> String {
    line.map(|n| format!(" at line {n}")).unwrap_or_default()
}

fn key_part(key: &Option<String>) -> String {
    match key {
        Some(key) => format!("key `{key}`"),
        None => "a value".into(),
    }
}
