//! The provider config file, `/etc/furnace/furnace.toml`: its schema, its
//! defaults, loading and validation. One file serves the shim (which may be
//! pointed elsewhere by containerd's runtime option `ConfigPath`), the VMI
//! sidecar and the `furnace` CLI (both take `--config`).
//!
//! Every key has a default, so no file is needed for a local run. An unknown
//! key is an error naming the file and the full dotted key, so a typo never
//! silently leaves a default in force. The complete example, every key with
//! a comment, is in docs/containerd.md; its shape:
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
//! size = 65536           # ids per partition
//! ranges = 1024           # partitions that may run at once, each with its own ids
//!
//! [sidecar]               # per-app limits of the VMI sidecar
//! max_pause_ms = 10000
//! ```

mod defense;
mod error;
mod load;
mod schema;
pub mod units;
mod validate;

pub use defense::{default_rules, Condition, DefenseConfig, Response, ResponseKind, Rule};
pub use error::ConfigError;
pub use ipnet::IpNet;
pub use schema::{
    FacilitiesConfig, IdRange, Limits, LimitsConfig, MaxLimits, PermissionsConfig, ProviderConfig,
    RelayLimits, SeccompConfig, SeccompMode, SidecarConfig, UserNamespaceConfig, CPU_PERIOD_US,
    MIN_CPU,
};
pub use units::ByteSize;
pub use validate::MAX_WINDOW_MS;

/// Where the provider config lives unless containerd's `ConfigPath` (or a
/// `--config`) says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/furnace/furnace.toml";
