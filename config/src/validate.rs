//! The checks serde cannot make: ranges, and the order of default and max.

use crate::defense::{DefenseConfig, ResponseKind};
use crate::error::ConfigError;
use crate::schema::{FacilitiesConfig, Limits, ProviderConfig, SidecarConfig, MIN_CPU};
use furnace_api::v1::Permission;
use furnace_api::wire::MAX_PAYLOAD;
use std::path::{Component, Path};

impl ProviderConfig {
    /// Checks values serde cannot: ranges, ordering of default and max.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.socket_root.is_absolute() {
            return Err(ConfigError::invalid(
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
        if d.storage > m.storage {
            return Err(exceeds(
                "storage",
                d.storage.to_string(),
                m.storage.to_string(),
            ));
        }
        if self
            .permissions
            .grantable
            .contains(&Permission::Unspecified)
        {
            return Err(ConfigError::invalid(
                "permissions.grantable",
                "`unspecified` is not a permission",
                "list only read, write, pause, events and syscalls",
            ));
        }
        let u = self.user_namespace;
        for (key, base) in [
            ("user_namespace.host_uid", u.host_uid),
            ("user_namespace.host_gid", u.host_gid),
        ] {
            if base == 0 {
                return Err(ConfigError::invalid(
                    key,
                    "must not be 0: the app would be root on the host",
                    "map to an unused unprivileged range, e.g. host_uid = host_gid = 100000",
                ));
            }
        }
        if u.size == 0 {
            return Err(ConfigError::invalid(
                "user_namespace.size",
                "0 ids would map nobody",
                "use a size between 1 and 65536 with a base such as 100000",
            ));
        }
        if u.ranges == 0 {
            return Err(ConfigError::invalid(
                "user_namespace.ranges",
                "0 ranges would let no partition run",
                "use a count such as 1024 (the default): one per partition that may run at once",
            ));
        }
        let span = u64::from(u.ranges) * u64::from(u.size);
        if u64::from(u.host_uid.max(u.host_gid)) + span > u64::from(u32::MAX) {
            return Err(ConfigError::invalid(
                "user_namespace.ranges",
                format!(
                    "{} ranges of {} ids do not fit the host id space above the base ids",
                    u.ranges, u.size
                ),
                "use fewer ranges, smaller ones, or a lower base",
            ));
        }
        for (key, id, base) in [
            ("sidecar.worker_uid", self.sidecar.worker_uid, u.host_uid),
            ("sidecar.worker_gid", self.sidecar.worker_gid, u.host_gid),
        ] {
            if (u64::from(base)..u64::from(base) + span).contains(&u64::from(id)) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{id} lies inside the ids the partitions' user namespaces map onto"),
                    "give the worker an id outside [user_namespace]'s ranges, e.g. 99000 (the default)",
                ));
            }
        }
        if self.tmp_size.bytes() == 0 {
            return Err(ConfigError::invalid(
                "tmp_size",
                "0 bytes would give tmpfs its default of half the host's RAM",
                "set a small size such as \"16Mi\"",
            ));
        }
        self.sidecar.validate()?;
        self.facilities.validate()?;
        self.defense.validate()
    }
}

/// An absolute path of plain names only (no `.`, `..`), and not `/` itself.
fn plain_absolute(key: &str, path: &Path, example: &str) -> Result<(), ConfigError> {
    let clean = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !path.is_absolute() || !clean || path == Path::new("/") {
        return Err(ConfigError::invalid(
            key,
            format!("`{}` is not a plain absolute path below /", path.display()),
            format!("use an absolute path such as {example}"),
        ));
    }
    Ok(())
}

/// The longest window a rule may count over; the loop keeps that much history.
pub const MAX_WINDOW_MS: u64 = 600_000;

impl DefenseConfig {
    /// Checks the `[defense]` table (keys named `defense.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        plain_absolute(
            "defense.audit_log",
            &self.audit_log,
            "/var/log/furnace/audit.jsonl",
        )?;
        if !(50..=10_000).contains(&self.poll_ms) {
            return Err(ConfigError::invalid(
                "defense.poll_ms",
                format!("{} ms is not between 50 and 10000", self.poll_ms),
                "use a period such as 250 (the default)",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |field: &str| format!("defense.rules[{i}].{field}");
            let valid_name = !rule.name.is_empty()
                && rule.name.len() <= 64
                && rule
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !valid_name {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("{:?} is not 1-64 characters of [A-Za-z0-9_.-]", rule.name),
                    "name the rule, e.g. \"forbidden-calls-throttle\"",
                ));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("another rule is already named {:?}", rule.name),
                    "give each rule its own name: the audit log cites it",
                ));
            }
            if rule.count == 0 {
                return Err(ConfigError::invalid(
                    key("count"),
                    "0 would fire the rule with nothing seen",
                    "use a count of at least 1",
                ));
            }
            if rule.window_ms < u64::from(self.poll_ms) || rule.window_ms > MAX_WINDOW_MS {
                return Err(ConfigError::invalid(
                    key("window_ms"),
                    format!(
                        "{} ms is not between defense.poll_ms ({}) and {MAX_WINDOW_MS}",
                        rule.window_ms, self.poll_ms
                    ),
                    "use a window such as 10000 (10 s)",
                ));
            }
            if rule.response().is_none() {
                let fix = match rule.then {
                    ResponseKind::Throttle => {
                        "`then = \"throttle\"` takes `calls_per_second` (at least 1) and no `permission`"
                    }
                    ResponseKind::Revoke => {
                        "`then = \"revoke\"` takes `permission` (e.g. \"pause\") and no `calls_per_second`"
                    }
                    _ => "only throttle takes `calls_per_second`, only revoke takes `permission`",
                };
                return Err(ConfigError::invalid(
                    key("then"),
                    "the response's parameters are missing or do not belong to it",
                    fix,
                ));
            }
        }
        Ok(())
    }
}

impl FacilitiesConfig {
    /// Checks the `[facilities]` table (keys named `facilities.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes.bytes() == 0 || self.max_message_bytes.bytes() > 64 << 20 {
            return Err(ConfigError::invalid(
                "facilities.max_message_bytes",
                format!("{} is not between 1 byte and 64Mi", self.max_message_bytes),
                "use a size such as \"16Mi\" (the default)",
            ));
        }
        if self.messages_per_second == 0 {
            return Err(ConfigError::invalid(
                "facilities.messages_per_second",
                "0 would let no message through",
                "use a rate such as 1000 (the default)",
            ));
        }
        if self.max_bytes_in_flight < self.max_message_bytes {
            return Err(ConfigError::invalid(
                "facilities.max_bytes_in_flight",
                format!(
                    "{} is less than facilities.max_message_bytes = {}, so the largest message could never be sent",
                    self.max_bytes_in_flight, self.max_message_bytes
                ),
                "raise facilities.max_bytes_in_flight to at least max_message_bytes",
            ));
        }
        plain_absolute(
            "facilities.storage_root",
            &self.storage_root,
            "/var/lib/furnace/storage",
        )?;
        plain_absolute("facilities.key_root", &self.key_root, "/etc/furnace/keys")?;
        plain_absolute(
            "facilities.kubelet_root",
            &self.kubelet_root,
            "/var/lib/kubelet",
        )?;
        check_limits(
            "facilities.relay",
            &self.relay.with_storage(crate::ByteSize(0)),
        )
    }
}

impl SidecarConfig {
    /// Checks the `[sidecar]` table (keys named `sidecar.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_read_bytes == 0 || self.max_read_bytes > Self::READ_BYTES_CEILING {
            return Err(ConfigError::invalid(
                "sidecar.max_read_bytes",
                format!(
                    "{} does not leave a reply room in one {MAX_PAYLOAD}-byte frame",
                    self.max_read_bytes
                ),
                format!(
                    "use a size between 1 and {} (the default)",
                    Self::READ_BYTES_CEILING
                ),
            ));
        }
        if self.default_event_queue > self.max_event_queue {
            return Err(ConfigError::invalid(
                "sidecar.default_event_queue",
                format!(
                    "{} is more than sidecar.max_event_queue = {}",
                    self.default_event_queue, self.max_event_queue
                ),
                "lower sidecar.default_event_queue or raise sidecar.max_event_queue",
            ));
        }
        if self.max_event_bytes_per_app.bytes() < 64 << 10 {
            return Err(ConfigError::invalid(
                "sidecar.max_event_bytes_per_app",
                format!(
                    "{} cannot hold even a few events with long paths",
                    self.max_event_bytes_per_app
                ),
                "use at least \"64Ki\"; the default is \"16Mi\"",
            ));
        }
        if self.max_event_bytes < self.max_event_bytes_per_app {
            return Err(ConfigError::invalid(
                "sidecar.max_event_bytes",
                format!(
                    "{} is less than sidecar.max_event_bytes_per_app = {}",
                    self.max_event_bytes, self.max_event_bytes_per_app
                ),
                "raise sidecar.max_event_bytes (default \"64Mi\") or lower the per-app budget",
            ));
        }
        for (key, id) in [
            ("sidecar.worker_uid", self.worker_uid),
            ("sidecar.worker_gid", self.worker_gid),
        ] {
            if id == 0 {
                return Err(ConfigError::invalid(
                    key,
                    "0 is root: the worker parses guest memory and must not be",
                    "use an id no account or partition uses, e.g. 99000 (the default)",
                ));
            }
        }
        Ok(())
    }
}

fn check_limits(section: &str, l: &Limits) -> Result<(), ConfigError> {
    if !l.cpu.is_finite() || l.cpu < MIN_CPU {
        return Err(ConfigError::invalid(
            format!("{section}.cpu"),
            format!("{} is not a usable CPU count", l.cpu),
            format!("use a number of CPUs of at least {MIN_CPU}, e.g. 2.0"),
        ));
    }
    if l.memory.bytes() == 0 {
        return Err(ConfigError::invalid(
            format!("{section}.memory"),
            "0 bytes",
            "set a memory limit such as \"300Mi\"",
        ));
    }
    if l.pids == 0 || l.pids > i64::MAX as u64 {
        return Err(ConfigError::invalid(
            format!("{section}.pids"),
            format!("{} is not a usable pids limit", l.pids),
            "set a positive number such as 30",
        ));
    }
    Ok(())
}

fn exceeds(what: &str, default: String, max: String) -> ConfigError {
    ConfigError::invalid(
        format!("limits.default.{what}"),
        format!("{default} is looser than limits.max.{what} = {max}"),
        format!("lower limits.default.{what} or raise limits.max.{what}"),
    )
}
