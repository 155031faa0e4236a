//! The `furnace.dev/*` annotations (see DESIGN.md, "Contracts") and the CRI
//! sandbox marker, parsed and checked against the provider config.
//!
//! Nothing here trusts the tenant: every value is validated, permissions and
//! limits beyond the provider's caps are errors (never silently clipped), and
//! an unknown `furnace.dev/` key is an error so a typo such as
//! `furnace.dev/limit` cannot quietly drop a request.

use crate::config::{Limits, ProviderConfig, MIN_CPU};
use crate::error::PolicyError;
use crate::units::{parse_bytes, ByteSize};
use furnace_api::v1::Permission;
use std::collections::{BTreeSet, HashMap};

mod backend;
use backend::parse_backend;
pub use backend::Backend;

pub const GUEST: &str = "furnace.dev/guest";
pub const PERMISSIONS: &str = "furnace.dev/permissions";
pub const BACKEND: &str = "furnace.dev/backend";
pub const BACKEND_KEY: &str = "furnace.dev/backend-key";
pub const APP_KEY: &str = "furnace.dev/app-key";
pub const LIMITS: &str = "furnace.dev/limits";
/// Every `furnace.dev/` key the runtime understands.
pub const KNOWN: [&str; 6] = [GUEST, PERMISSIONS, BACKEND, BACKEND_KEY, APP_KEY, LIMITS];
const PREFIX: &str = "furnace.dev/";

/// Set by containerd's CRI plugin on every container; `sandbox` marks a pod's
/// pause container.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRI_SANDBOX: &str = "sandbox";

/// The kind of partition a spec is hardened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Untrusted tenant code: no network, only the VMI (and facilities) socket.
    App,
    /// The facilities relay for one app: needs the network to reach the
    /// tenant backend. Never chosen from annotations (a tenant could set
    /// them); the shim asks for it explicitly with [`crate::harden_as`].
    Fac,
    /// A CRI pod's pause container: minimal policy, no guest.
    Sandbox,
}

impl Role {
    /// `Sandbox` if the CRI marker says so, else `App`.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Role {
        match annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) {
            Some(CRI_SANDBOX) => Role::Sandbox,
            _ => Role::App,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Fac => "fac",
            Role::Sandbox => "sandbox",
        }
    }
}

/// What an app asked for, after checking against the provider's caps.
#[derive(Clone, Debug, PartialEq)]
pub struct AppRequest {
    pub guest: Option<String>,
    /// requested ∩ grantable (requesting more is an error, so this equals the request).
    pub permissions: BTreeSet<Permission>,
    pub backend: Option<Backend>,
    /// Effective limits: the request, or the provider's defaults.
    pub limits: Limits,
}

/// Parses and checks every annotation for `role`. The guest is required for
/// [`Role::App`] only.
pub fn parse(
    annotations: &HashMap<String, String>,
    config: &ProviderConfig,
    role: Role,
) -> Result<AppRequest, PolicyError> {
    for key in annotations.keys() {
        if key.starts_with(PREFIX) && !KNOWN.contains(&key.as_str()) {
            return Err(PolicyError::annotation(
                key,
                "is not a Furnace annotation",
                format!("remove it or use one of {}", KNOWN.join(", ")),
            ));
        }
    }
    let guest = match annotations.get(GUEST) {
        Some(g) => Some(parse_guest(g)?),
        None if role == Role::App => {
            return Err(PolicyError::annotation(
                GUEST,
                "is missing; a Furnace app must name the guest it introspects",
                format!("add --annotation {GUEST}=<guest name> (ctr) or set it on the pod"),
            ))
        }
        None => None,
    };
    let permissions = parse_permissions(annotations.get(PERMISSIONS).map(String::as_str), config)?;
    let backend = parse_backend(
        annotations.get(BACKEND).map(String::as_str),
        annotations.get(BACKEND_KEY).map(String::as_str),
        annotations.get(APP_KEY).map(String::as_str),
        role == Role::App,
    )?;
    let limits = parse_limits(annotations.get(LIMITS).map(String::as_str), config)?;
    Ok(AppRequest {
        guest,
        permissions,
        backend,
        limits,
    })
}

/// A guest name becomes a path component (`guests/<guest>/`), so it is held
/// to the sidecar's id rule: `[A-Za-z0-9._-]`, at most 64, starting with a
/// letter or digit (which rules out `.` and `..`).
pub fn parse_guest(value: &str) -> Result<String, PolicyError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(PolicyError::annotation(
            GUEST,
            format!("`{value}` is not a valid guest name"),
            "use 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit (the name the sidecar was started with)",
        ));
    }
    Ok(value.to_string())
}

/// The lowercase annotation name of a permission.
pub fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Read => "read",
        Permission::Write => "write",
        Permission::Pause => "pause",
        Permission::Events => "events",
        Permission::Syscalls => "syscalls",
        Permission::Unspecified => "unspecified",
    }
}

fn permission_from_name(name: &str) -> Option<Permission> {
    match name {
        "read" => Some(Permission::Read),
        "write" => Some(Permission::Write),
        "pause" => Some(Permission::Pause),
        "events" => Some(Permission::Events),
        "syscalls" => Some(Permission::Syscalls),
        _ => None,
    }
}

fn names(set: &BTreeSet<Permission>) -> String {
    if set.is_empty() {
        return "none".into();
    }
    set.iter()
        .map(|p| permission_name(*p))
        .collect::<Vec<_>>()
        .join(",")
}

/// `read` by default; otherwise a comma list. Asking for a permission the
/// provider does not grant is an error, not a silent drop: the tenant would
/// otherwise find out only when a call fails.
pub fn parse_permissions(
    value: Option<&str>,
    config: &ProviderConfig,
) -> Result<BTreeSet<Permission>, PolicyError> {
    let grantable = config.grantable();
    let Some(value) = value else {
        // The default request, clipped to what the provider grants.
        return Ok([Permission::Read]
            .into_iter()
            .filter(|p| grantable.contains(p))
            .collect());
    };
    let mut requested = BTreeSet::new();
    for item in value.split(',') {
        let item = item.trim();
        let p = permission_from_name(item).ok_or_else(|| {
            PolicyError::annotation(
                PERMISSIONS,
                format!("`{item}` is not a permission"),
                "use a comma list of read, write, pause, events, syscalls",
            )
        })?;
        requested.insert(p);
    }
    let beyond: BTreeSet<Permission> = requested.difference(&grantable).copied().collect();
    if !beyond.is_empty() {
        return Err(PolicyError::annotation(
            PERMISSIONS,
            format!(
                "asks for {} which this provider does not grant (grantable: {})",
                names(&beyond),
                names(&grantable)
            ),
            "drop those permissions, or ask the provider to add them to permissions.grantable in /etc/furnace/furnace.toml",
        ));
    }
    Ok(requested)
}

/// `cpu=1,memory=128Mi,pids=30,storage=4Mi`, each optional. A value looser than the
/// provider's maximum is an error; an unset one takes the provider default.
pub fn parse_limits(value: Option<&str>, config: &ProviderConfig) -> Result<Limits, PolicyError> {
    let mut limits = config.limits.default;
    let Some(value) = value else {
        return Ok(limits);
    };
    let max = config.max_limits();
    let malformed = |problem: String| {
        PolicyError::annotation(
            LIMITS,
            problem,
            "write it as cpu=<CPUs>,memory=<bytes or Ki/Mi/Gi>,pids=<count>,storage=<bytes or Ki/Mi/Gi>, e.g. cpu=1,memory=128Mi,pids=30,storage=4Mi",
        )
    };
    let too_loose = |what: &str, asked: String, max: String| {
        PolicyError::annotation(
            LIMITS,
            format!("{what}={asked} is looser than this provider's maximum {what}={max}"),
            format!("ask for at most {what}={max}, or ask the provider to raise limits.max.{what}"),
        )
    };
    let mut seen = BTreeSet::new();
    for item in value.split(',') {
        let item = item.trim();
        let (k, v) = item
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| malformed(format!("`{item}` is not key=value")))?;
        if !seen.insert(k.to_string()) {
            return Err(malformed(format!("`{k}` is given twice")));
        }
        match k {
            "cpu" => {
                let plain = !v.is_empty()
                    && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                    && v.bytes().filter(|b| *b == b'.').count() <= 1;
                let cpu: f64 = v
                    .parse()
                    .ok()
                    .filter(|c: &f64| plain && c.is_finite())
                    .ok_or_else(|| malformed(format!("cpu `{v}` is not a number of CPUs")))?;
                if cpu < MIN_CPU {
                    return Err(malformed(format!(
                        "cpu={v} is below the smallest usable quota ({MIN_CPU} CPUs)"
                    )));
                }
                if cpu > max.cpu {
                    return Err(too_loose("cpu", v.to_string(), max.cpu.to_string()));
                }
                limits.cpu = cpu;
            }
            "memory" => {
                let bytes = parse_bytes(v).map_err(|e| malformed(format!("memory {e}")))?;
                if bytes == 0 {
                    return Err(malformed("memory=0 leaves nothing to run in".into()));
                }
                if bytes > max.memory.bytes() {
                    return Err(too_loose("memory", v.to_string(), max.memory.to_string()));
                }
                limits.memory = ByteSize(bytes);
            }
            "pids" => {
                let pids: u64 = v
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| malformed(format!("pids `{v}` is not a positive count")))?;
                if pids > max.pids {
                    return Err(too_loose("pids", v.to_string(), max.pids.to_string()));
                }
                limits.pids = pids;
            }
            "storage" => {
                let bytes = parse_bytes(v).map_err(|e| malformed(format!("storage {e}")))?;
                if bytes > max.storage.bytes() {
                    return Err(too_loose("storage", v.to_string(), max.storage.to_string()));
                }
                limits.storage = ByteSize(bytes);
            }
            other => {
                return Err(malformed(format!(
                    "`{other}` is not a limit (known: cpu, memory, pids, storage)"
                )))
            }
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err_of(r: Result<impl std::fmt::Debug, PolicyError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn role_follows_the_cri_marker_only() {
        assert_eq!(Role::from_annotations(&ann(&[])), Role::App);
        assert_eq!(
            Role::from_annotations(&ann(&[(CRI_CONTAINER_TYPE, "container")])),
            Role::App
        );
        assert_eq!(
            Role::from_annotations(&ann(&[(CRI_CONTAINER_TYPE, "sandbox")])),
            Role::Sandbox
        );
    }

    #[test]
    fn guest_is_required_for_an_app_but_not_a_sandbox() {
        let c = ProviderConfig::default();
        let e = err_of(parse(&ann(&[]), &c, Role::App));
        assert!(e.contains(GUEST) && e.contains("missing"), "{e}");
        let r = parse(&ann(&[]), &c, Role::Sandbox).unwrap();
        assert_eq!(r.guest, None);
        let r = parse(&ann(&[(GUEST, "debian-12")]), &c, Role::App).unwrap();
        assert_eq!(r.guest.as_deref(), Some("debian-12"));
        assert_eq!(r.permissions, [Permission::Read].into());
        assert_eq!(r.limits, c.limits.default);
        assert_eq!(r.backend, None);
    }

    #[test]
    fn guest_names_cannot_escape_the_socket_dir() {
        for bad in [
            "",
            "..",
            ".",
            "../admin",
            "a/b",
            "-x",
            "a b",
            &"x".repeat(65),
        ] {
            let e = err_of(parse_guest(bad));
            assert!(e.contains(GUEST), "{bad:?}: {e}");
        }
        assert_eq!(parse_guest("g1.test_x-2").unwrap(), "g1.test_x-2");
    }

    #[test]
    fn unknown_furnace_keys_are_errors() {
        let c = ProviderConfig::default();
        let e = err_of(parse(
            &ann(&[(GUEST, "g"), ("furnace.dev/limit", "pids=1")]),
            &c,
            Role::App,
        ));
        assert!(e.contains("furnace.dev/limit") && e.contains(LIMITS), "{e}");
        // Other prefixes are none of our business.
        parse(&ann(&[(GUEST, "g"), ("example.com/x", "y")]), &c, Role::App).unwrap();
    }

    #[test]
    fn permissions_within_the_caps_are_granted() {
        let c = ProviderConfig::default();
        let p = parse_permissions(Some("read, pause,events,read"), &c).unwrap();
        assert_eq!(
            p,
            [Permission::Read, Permission::Pause, Permission::Events].into()
        );
    }

    #[test]
    fn permissions_beyond_the_caps_fail_naming_the_annotation() {
        let c = ProviderConfig::default();
        let e = err_of(parse_permissions(Some("read,write,syscalls"), &c));
        assert!(e.contains(PERMISSIONS), "{e}");
        assert!(e.contains("write,syscalls"), "{e}");
        assert!(e.contains("grantable: read,pause,events"), "{e}");
        for bad in ["", "read,,pause", "root", "READ"] {
            let e = err_of(parse_permissions(Some(bad), &c));
            assert!(e.contains(PERMISSIONS), "{bad:?}: {e}");
        }
        // A provider that opts in can grant write.
        let mut c = ProviderConfig::default();
        c.permissions.grantable.push(Permission::Write);
        let p = parse_permissions(Some("write"), &c).unwrap();
        assert_eq!(p, [Permission::Write].into());
    }

    #[test]
    fn the_default_permission_is_clipped_to_the_caps() {
        let mut c = ProviderConfig::default();
        c.permissions.grantable = vec![Permission::Pause];
        assert!(parse_permissions(None, &c).unwrap().is_empty());
    }

    #[test]
    fn limits_tighten_under_the_maximum() {
        let c = ProviderConfig::default();
        let l = parse_limits(Some("cpu=0.5,memory=128Mi,pids=10"), &c).unwrap();
        assert_eq!(l.cpu, 0.5);
        assert_eq!(l.memory, ByteSize::mib(128));
        assert_eq!(l.pids, 10);
        assert_eq!(l.cpu_quota_us(), 50_000);
        // Unset keys keep the provider default.
        let l = parse_limits(Some(" memory = 1048576 "), &c).unwrap();
        assert_eq!(l.memory, ByteSize(1 << 20));
        assert_eq!(l.pids, 30);
        assert_eq!(l.cpu, 2.0);
        assert_eq!(l.storage, ByteSize::mib(16));
        assert_eq!(
            parse_limits(Some("storage=4Mi"), &c).unwrap().storage,
            ByteSize::mib(4)
        );
        // Equal to the maximum is allowed.
        parse_limits(Some("cpu=2,memory=300Mi,pids=30,storage=16Mi"), &c).unwrap();
    }

    #[test]
    fn limits_looser_than_the_maximum_fail_naming_the_annotation() {
        let c = ProviderConfig::default();
        for (v, what) in [
            ("cpu=3", "cpu=3 is looser"),
            ("memory=301Mi", "memory=301Mi is looser"),
            ("memory=1Gi", "memory=1Gi is looser"),
            ("pids=31", "pids=31 is looser"),
            ("storage=17Mi", "storage=17Mi is looser"),
        ] {
            let e = err_of(parse_limits(Some(v), &c));
            assert!(e.contains(LIMITS) && e.contains(what), "{v}: {e}");
            assert!(e.contains("limits.max"), "{v}: {e}");
        }
        // A provider with a higher maximum allows more than its default.
        let c = ProviderConfig::from_toml("[limits.max]\nmemory = \"1Gi\"\n").unwrap();
        assert_eq!(
            parse_limits(Some("memory=1Gi"), &c).unwrap().memory,
            ByteSize(1 << 30)
        );
    }

    #[test]
    fn malformed_limits_fail_naming_the_annotation() {
        let c = ProviderConfig::default();
        for bad in [
            "",
            "cpu",
            "cpu=",
            "cpu=one",
            "cpu=-1",
            "cpu=1e0",
            "cpu=inf",
            "cpu=NaN",
            "cpu=0",
            "cpu=0.001",
            "memory=128M",
            "memory=0",
            "memory=12.5Mi",
            "pids=0",
            "pids=-3",
            "pids=1.5",
            "storage=4M",
            "disk=1Gi",
            "cpu=1,cpu=1",
            "cpu=1;pids=2",
        ] {
            let e = err_of(parse_limits(Some(bad), &c));
            assert!(e.contains(LIMITS), "{bad:?}: {e}");
            assert!(
                e.contains("cpu=1,memory=128Mi,pids=30"),
                "{bad:?} lacks the fix: {e}"
            );
        }
    }
}
