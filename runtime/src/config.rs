//! The provider config, `/etc/furnace/furnace.toml` (or containerd's runtime
//! option `ConfigPath`). Every field has a default, so no file is needed for
//! a local run; unknown keys are an error so a typo never silently loosens
//! nothing.
//!
//! ```toml
//! socket_root = "/run/furnace"
//! allow_exec = false
//! tmp_size = "16Mi"
//! tmp_exec = false
//!
//! [limits.default]        # what an app gets without `furnace.dev/limits`
//! cpu = 2.0               # CPUs, may be fractional
//! memory = "300Mi"        # or plain bytes
//! pids = 30
//!
//! [limits.max]            # the most `furnace.dev/limits` may ask for;
//! cpu = 2.0               # each field defaults to limits.default's
//!
//! [permissions]
//! grantable = ["read", "pause", "events"]
//!
//! [seccomp]
//! mode = "errno"          # or "kill"
//!
//! [user_namespace]
//! host_uid = 100000
//! host_gid = 100000
//! size = 65536
//! ```

use crate::error::PolicyError;
use crate::units::ByteSize;
use furnace_api::v1::Permission;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where the provider config lives unless containerd's `ConfigPath` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/furnace/furnace.toml";

/// CFS period used for every CPU quota, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest CPU share that maps to a usable CFS quota (1 ms per 100 ms).
pub const MIN_CPU: f64 = 0.01;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Root of Furnace's sockets on the host (`<root>/guests/<guest>/…`).
    pub socket_root: PathBuf,
    pub limits: LimitsConfig,
    pub permissions: PermissionsConfig,
    pub seccomp: SeccompConfig,
    pub user_namespace: UserNamespaceConfig,
    /// Whether `exec` into an app container is allowed (the shim refuses it otherwise).
    pub allow_exec: bool,
    /// Size of the app's `/tmp` tmpfs (counted against its memory limit).
    pub tmp_size: ByteSize,
    /// Whether files in `/tmp` may be executed. Off by default: with a
    /// read-only root this means only the image's own binaries run.
    pub tmp_exec: bool,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            socket_root: PathBuf::from("/run/furnace"),
            limits: LimitsConfig::default(),
            permissions: PermissionsConfig::default(),
            seccomp: SeccompConfig::default(),
            user_namespace: UserNamespaceConfig::default(),
            allow_exec: false,
            tmp_size: ByteSize::mib(16),
            tmp_exec: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Limits an app gets when it asks for nothing.
    pub default: Limits,
    /// The loosest limits `furnace.dev/limits` may ask for. An unset field
    /// equals the corresponding `default` field.
    pub max: MaxLimits,
}

/// cgroup limits for one partition.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// CPUs' worth of CFS quota (2.0 = 200 ms per 100 ms period).
    pub cpu: f64,
    /// Memory limit in bytes (swap is not added on top).
    pub memory: ByteSize,
    /// Maximum number of tasks (processes and threads).
    pub pids: u64,
}

impl Default for Limits {
    /// The original research system's numbers: 2 CPUs, 300 MiB, 30 pids.
    fn default() -> Self {
        Limits {
            cpu: 2.0,
            memory: ByteSize::mib(300),
            pids: 30,
        }
    }
}

impl Limits {
    /// CFS quota in microseconds for [`CPU_PERIOD_US`].
    pub fn cpu_quota_us(&self) -> i64 {
        (self.cpu * CPU_PERIOD_US as f64).round() as i64
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaxLimits {
    pub cpu: Option<f64>,
    pub memory: Option<ByteSize>,
    pub pids: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionsConfig {
    /// The VMI permissions an app may be granted. `write` (guest memory
    /// writes) and `syscalls` (syscall tracing) are off unless the provider
    /// opts in.
    pub grantable: Vec<Permission>,
}

impl Default for PermissionsConfig {
    fn default() -> Self {
        PermissionsConfig {
            grantable: vec![Permission::Read, Permission::Pause, Permission::Events],
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeccompConfig {
    pub mode: SeccompMode,
}

/// What a syscall outside the allowlist gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// `EPERM`, so programs can fall back.
    #[default]
    Errno,
    /// The whole partition is killed (`SCMP_ACT_KILL_PROCESS`).
    Kill,
}

/// The host id range an app's user namespace maps onto: container id `n`
/// becomes host id `host_uid + n`, for `n < size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserNamespaceConfig {
    pub host_uid: u32,
    pub host_gid: u32,
    pub size: u32,
}

impl Default for UserNamespaceConfig {
    fn default() -> Self {
        UserNamespaceConfig {
            host_uid: 100_000,
            host_gid: 100_000,
            size: 65_536,
        }
    }
}

impl ProviderConfig {
    /// Reads and validates the config at `path`. The file must exist.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::ConfigIo {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            PolicyError::ConfigParse { message, .. } => PolicyError::ConfigParse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Reads [`DEFAULT_CONFIG_PATH`] if it exists, else returns the defaults.
    pub fn load_default() -> Result<Self, PolicyError> {
        Self::load_or_default(DEFAULT_CONFIG_PATH)
    }

    /// Reads `path` if it exists, else returns the defaults.
    pub fn load_or_default(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        match std::fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(PolicyError::ConfigIo {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let config: ProviderConfig =
            toml::from_str(text).map_err(|e| PolicyError::ConfigParse {
                path: PathBuf::from("<text>"),
                message: e.to_string().trim().replace('\n', " "),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Serialises to TOML (the shape [`Self::from_toml`] reads).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("ProviderConfig always serialises")
    }

    /// The loosest limits an app may ask for.
    pub fn max_limits(&self) -> Limits {
        let d = self.limits.default;
        let m = self.limits.max;
        Limits {
            cpu: m.cpu.unwrap_or(d.cpu),
            memory: m.memory.unwrap_or(d.memory),
            pids: m.pids.unwrap_or(d.pids),
        }
    }

    /// The permissions that may be granted, as a set.
    pub fn grantable(&self) -> BTreeSet<Permission> {
        self.permissions.grantable.iter().copied().collect()
    }

    /// Checks values serde cannot: ranges, ordering of default and max.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !self.socket_root.is_absolute() {
            return Err(PolicyError::config(
                "socket_root",
                format!("`{}` is not an absolute path", self.socket_root.display()),
                "use an absolute path such as /run/furnace",
            ));
        }
        for (section, l) in [
            ("limits.default", self.limits.default),
            ("limits.max", self.max_limits()),
        ] {
            check_limits(section, &l)?;
        }
        let (d, m) = (self.limits.default, self.max_limits());
        if d.cpu > m.cpu {
            return Err(exceeds("cpu", d.cpu.to_string(), m.cpu.to_string()));
        }
        if d.memory > m.memory {
            return Err(exceeds(
                "memory",
                d.memory.to_string(),
                m.memory.to_string(),
            ));
        }
        if d.pids > m.pids {
            return Err(exceeds("pids", d.pids.to_string(), m.pids.to_string()));
        }
        if self
            .permissions
            .grantable
            .contains(&Permission::Unspecified)
        {
            return Err(PolicyError::config(
                "permissions.grantable",
                "`unspecified` is not a permission",
                "list only read, write, pause, events and syscalls",
            ));
        }
        let u = self.user_namespace;
        if u.host_uid == 0 || u.host_gid == 0 {
            return Err(PolicyError::config(
                "user_namespace",
                "host_uid and host_gid must not be 0: the app would be root on the host",
                "map to an unused unprivileged range, e.g. host_uid = host_gid = 100000",
            ));
        }
        if u.size == 0
            || u.host_uid.checked_add(u.size - 1).is_none()
            || u.host_gid.checked_add(u.size - 1).is_none()
        {
            return Err(PolicyError::config(
                "user_namespace.size",
                format!(
                    "{} does not fit the host id space above the base ids",
                    u.size
                ),
                "use a size between 1 and 65536 with a base such as 100000",
            ));
        }
        if self.tmp_size.bytes() == 0 {
            return Err(PolicyError::config(
                "tmp_size",
                "0 bytes would give tmpfs its default of half the host's RAM",
                "set a small size such as \"16Mi\"",
            ));
        }
        Ok(())
    }
}

fn check_limits(section: &str, l: &Limits) -> Result<(), PolicyError> {
    if !l.cpu.is_finite() || l.cpu < MIN_CPU {
        return Err(PolicyError::config(
            format!("{section}.cpu"),
            format!("{} is not a usable CPU count", l.cpu),
            format!("use a number of CPUs of at least {MIN_CPU}, e.g. 2.0"),
        ));
    }
    if l.memory.bytes() == 0 {
        return Err(PolicyError::config(
            format!("{section}.memory"),
            "0 bytes",
            "set a memory limit such as \"300Mi\"",
        ));
    }
    if l.pids == 0 || l.pids > i64::MAX as u64 {
        return Err(PolicyError::config(
            format!("{section}.pids"),
            format!("{} is not a usable pids limit", l.pids),
            "set a positive number such as 30",
        ));
    }
    Ok(())
}

fn exceeds(what: &str, default: String, max: String) -> PolicyError {
    PolicyError::config(
        format!("limits.default.{what}"),
        format!("{default} is looser than limits.max.{what} = {max}"),
        format!("lower limits.default.{what} or raise limits.max.{what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_designs_numbers() {
        let c = ProviderConfig::default();
        c.validate().unwrap();
        assert_eq!(c.socket_root, PathBuf::from("/run/furnace"));
        assert_eq!(c.limits.default.cpu, 2.0);
        assert_eq!(c.limits.default.memory, ByteSize(300 * 1024 * 1024));
        assert_eq!(c.limits.default.pids, 30);
        assert_eq!(c.max_limits(), c.limits.default);
        assert_eq!(c.limits.default.cpu_quota_us(), 200_000);
        assert_eq!(c.seccomp.mode, SeccompMode::Errno);
        assert!(!c.allow_exec);
        assert_eq!(
            c.grantable(),
            [Permission::Read, Permission::Pause, Permission::Events].into()
        );
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
        c.limits.max.memory = Some(ByteSize::mib(1024));
        c.permissions.grantable = vec![Permission::Read, Permission::Write];
        c.seccomp.mode = SeccompMode::Kill;
        c.allow_exec = true;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("furnace.toml");
        std::fs::write(&path, c.to_toml()).unwrap();
        assert_eq!(ProviderConfig::load(&path).unwrap(), c);
        assert_eq!(ProviderConfig::load_or_default(&path).unwrap(), c);
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
    fn unknown_keys_are_rejected_naming_the_key() {
        for (text, key) in [
            ("socket_rot = \"/run/furnace\"\n", "socket_rot"),
            ("[limits.default]\nmem = 5\n", "mem"),
            ("[seccomp]\nmode = \"errno\"\nextra = 1\n", "extra"),
        ] {
            let err = ProviderConfig::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
            assert!(err.contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn bad_values_name_the_field() {
        for (text, field) in [
            (
                "[limits.default]\ncpu = 4\n[limits.max]\ncpu = 2\n",
                "limits.default.cpu",
            ),
            ("[limits.max]\npids = 10\n", "limits.default.pids"),
            ("[limits.default]\ncpu = 0\n", "limits.default.cpu"),
            ("[user_namespace]\nhost_uid = 0\n", "user_namespace"),
            ("socket_root = \"run\"\n", "socket_root"),
            ("tmp_size = 0\n", "tmp_size"),
        ] {
            let err = ProviderConfig::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(field), "{text:?} gave {err}");
        }
        let err = ProviderConfig::from_toml("[seccomp]\nmode = \"log\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("errno") && err.contains("kill"), "{err}");
        let err = ProviderConfig::from_toml("[permissions]\ngrantable = [\"root\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("root"), "{err}");
    }

    #[test]
    fn missing_file_means_defaults_but_a_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert_eq!(
            ProviderConfig::load_or_default(&missing).unwrap(),
            ProviderConfig::default()
        );
        assert!(matches!(
            ProviderConfig::load(&missing),
            Err(PolicyError::ConfigIo { .. })
        ));
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
