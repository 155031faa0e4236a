//! The tables of the provider config and their defaults. Every table is
//! `#[serde(default, deny_unknown_fields)]`: any key may be left out, and a
//! key the schema does not have is an error.

use crate::defense::DefenseConfig;
use crate::units::ByteSize;
use furnace_api::v1::Permission;
use furnace_api::wire::MAX_PAYLOAD;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// CFS period used for every CPU quota, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest CPU share that maps to a usable CFS quota (1 ms per 100 ms).
pub const MIN_CPU: f64 = 0.01;

/// The whole file. The shim reads all of it but `[sidecar]`, the sidecar
/// reads `socket_root` and `[sidecar]`, the CLI reads `socket_root`.
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
    /// What the VMI sidecar allows each app.
    pub sidecar: SidecarConfig,
    /// The facilities relay of an app that names a backend.
    pub facilities: FacilitiesConfig,
    /// The rules by which the shim watches and answers each app partition.
    pub defense: DefenseConfig,
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
            sidecar: SidecarConfig::default(),
            facilities: FacilitiesConfig::default(),
            defense: DefenseConfig::default(),
        }
    }
}

impl ProviderConfig {
    /// The loosest limits an app may ask for.
    pub fn max_limits(&self) -> Limits {
        let d = self.limits.default;
        let m = self.limits.max;
        Limits {
            cpu: m.cpu.unwrap_or(d.cpu),
            memory: m.memory.unwrap_or(d.memory),
            pids: m.pids.unwrap_or(d.pids),
            storage: m.storage.unwrap_or(d.storage),
        }
    }

    /// The permissions that may be granted, as a set.
    pub fn grantable(&self) -> BTreeSet<Permission> {
        self.permissions.grantable.iter().copied().collect()
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
    /// The app's facilities storage quota: key plus value bytes.
    pub storage: ByteSize,
}

impl Default for Limits {
    /// The original research system's numbers: 2 CPUs, 300 MiB, 30 pids.
    fn default() -> Self {
        Limits {
            cpu: 2.0,
            memory: ByteSize::mib(300),
            pids: 30,
            storage: ByteSize::mib(16),
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
    pub storage: Option<ByteSize>,
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

/// The host ids partitions' user namespaces map onto: `ranges` ranges of
/// `size` ids each, from `host_uid` and `host_gid` up. Each partition (an
/// app, or an app's facilities relay) gets a range of its own
/// ([`UserNamespaceConfig::range`]): its container id `n` becomes host id
/// `base + n`, for `n < size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserNamespaceConfig {
    pub host_uid: u32,
    pub host_gid: u32,
    pub size: u32,
    /// How many ranges there are, so how many partitions may run at once.
    pub ranges: u32,
}

impl Default for UserNamespaceConfig {
    fn default() -> Self {
        UserNamespaceConfig {
            host_uid: 100_000,
            host_gid: 100_000,
            size: 65_536,
            ranges: 1024,
        }
    }
}

/// One partition's host ids: container id `n` is host id `host_uid + n`
/// (and `host_gid + n`), for `n < size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub index: u32,
    pub host_uid: u32,
    pub host_gid: u32,
    pub size: u32,
}

impl UserNamespaceConfig {
    /// Range `index`, if there is one.
    pub fn range(&self, index: u32) -> Option<IdRange> {
        if index >= self.ranges {
            return None;
        }
        let offset = index.checked_mul(self.size)?;
        Some(IdRange {
            index,
            host_uid: self.host_uid.checked_add(offset)?,
            host_gid: self.host_gid.checked_add(offset)?,
            size: self.size,
        })
    }

    /// The uids of every range together, as `start..end` (u64, so the end
    /// of the id space fits).
    pub fn uid_span(&self) -> std::ops::Range<u64> {
        let start = u64::from(self.host_uid);
        start..start + u64::from(self.ranges) * u64::from(self.size)
    }
}

/// The `[sidecar]` table: the per-app limits the VMI sidecar enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SidecarConfig {
    /// The largest read (or string) one call may ask for. A reply must fit in
    /// one 4 MiB frame, so this stays a little below that.
    pub max_read_bytes: u64,
    /// The most calls one batch may hold.
    pub max_batch_calls: usize,
    /// Calls one app may have executing at once, over all its connections.
    pub max_in_flight: u32,
    /// Connections one app may hold open.
    pub max_connections: u32,
    /// The longest pause lease granted; also how long a sync event may hold the guest.
    pub max_pause_ms: u32,
    /// Undelivered events a subscription keeps when it asks for no particular number.
    pub default_event_queue: u32,
    /// The most undelivered events a subscription may keep.
    pub max_event_queue: u32,
    /// Events per second one app may receive over all its subscriptions;
    /// the rest are dropped and counted.
    pub max_events_per_second: u32,
    /// Event subscriptions one app may hold.
    pub max_subscriptions: u32,
    /// Undelivered events one app's subscriptions may keep, in bytes as
    /// they would go on the wire; past it, events are dropped and counted.
    pub max_event_bytes_per_app: ByteSize,
    /// The same over every app of the sidecar, so many apps together
    /// cannot grow its memory without bound either.
    pub max_event_bytes: ByteSize,
    /// The host uid and gid of the sidecar's worker, the process that parses
    /// guest memory and serves the apps. Give it ids no account and no
    /// partition uses.
    pub worker_uid: u32,
    pub worker_gid: u32,
}

/// The `[facilities]` table: what the relay of each app allows, where its
/// storage lives, and the cgroup limits of the relay's own partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FacilitiesConfig {
    /// The largest message an app may send or receive.
    pub max_message_bytes: ByteSize,
    /// Messages per second one app may send (a token bucket of one second).
    pub messages_per_second: u32,
    /// Notify bytes accepted but not yet taken by the backend, per session.
    pub max_bytes_in_flight: ByteSize,
    /// Per-app storage lives in `<storage_root>/<namespace>/<id>`, kept
    /// across restarts of the same app id.
    pub storage_root: PathBuf,
    /// Where apps' private keys (`furnace.dev/app-key`) must lie: the shim
    /// gives an app a copy of a root-owned key from under here, and of no
    /// other file.
    pub key_root: PathBuf,
    /// kubelet's root directory. On Kubernetes an app's key is a Secret
    /// kubelet mounts at `/run/furnace/app.key` (docs/kubernetes.md); the
    /// shim takes that mount's file as the app's key only from under here.
    pub kubelet_root: PathBuf,
    /// The relay partition's cgroup limits.
    pub relay: RelayLimits,
    /// Addresses the shim never dials for an app's backend, whatever
    /// `furnace.dev/backend` names: the shim dials from the host's network,
    /// so by default the host itself, link-local (cloud metadata services)
    /// and the unroutable ones.
    pub refused_backend_networks: Vec<ipnet::IpNet>,
}

/// cgroup limits of a relay's partition.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayLimits {
    pub cpu: f64,
    pub memory: ByteSize,
    pub pids: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            cpu: 1.0,
            memory: ByteSize::mib(256),
            pids: 16,
        }
    }
}

impl RelayLimits {
    /// As partition limits, with the app's storage quota (the relay serves it).
    pub fn with_storage(self, storage: ByteSize) -> Limits {
        Limits {
            cpu: self.cpu,
            memory: self.memory,
            pids: self.pids,
            storage,
        }
    }
}

impl Default for FacilitiesConfig {
    fn default() -> Self {
        FacilitiesConfig {
            max_message_bytes: ByteSize::mib(16),
            messages_per_second: 1000,
            max_bytes_in_flight: ByteSize::mib(64),
            storage_root: PathBuf::from("/var/lib/furnace/storage"),
            key_root: PathBuf::from("/etc/furnace/keys"),
            kubelet_root: PathBuf::from("/var/lib/kubelet"),
            relay: RelayLimits::default(),
            refused_backend_networks: [
                "0.0.0.0/8",
                "127.0.0.0/8",
                "169.254.0.0/16",
                "224.0.0.0/4",
                "255.255.255.255/32",
                "::/128",
                "::1/128",
                "fe80::/10",
                "ff00::/8",
            ]
            .iter()
            .map(|n| n.parse().expect("a valid network"))
            .collect(),
        }
    }
}

impl SidecarConfig {
    /// The largest `max_read_bytes` whose reply still fits in one frame
    /// (64 KiB are left for the reply's other fields).
    pub const READ_BYTES_CEILING: u64 = MAX_PAYLOAD as u64 - (64 << 10);
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            max_read_bytes: Self::READ_BYTES_CEILING,
            max_batch_calls: 4096,
            max_in_flight: 8,
            max_connections: 16,
            max_pause_ms: 10_000,
            default_event_queue: 1024,
            max_event_queue: 65_536,
            max_events_per_second: 20_000,
            max_subscriptions: 64,
            max_event_bytes_per_app: ByteSize::mib(16),
            max_event_bytes: ByteSize::mib(64),
            worker_uid: 99_000,
            worker_gid: 99_000,
        }
    }
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
        assert_eq!(c.limits.default.storage, ByteSize(16 << 20));
        assert_eq!(c.facilities.max_message_bytes, ByteSize(16 << 20));
        assert_eq!(c.max_limits(), c.limits.default);
        assert_eq!(c.limits.default.cpu_quota_us(), 200_000);
        assert_eq!(c.seccomp.mode, SeccompMode::Errno);
        assert!(!c.allow_exec);
        assert_eq!(
            c.grantable(),
            [Permission::Read, Permission::Pause, Permission::Events].into()
        );
        assert_eq!(c.sidecar.max_read_bytes, 4_128_768, "below one 4 MiB frame");
        assert_eq!(c.sidecar.max_pause_ms, 10_000);
    }
}
