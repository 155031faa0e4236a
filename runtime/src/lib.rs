//! Furnace's partition policy as pure transforms of an OCI runtime spec:
//! `(Spec, annotations, provider config) → Spec`. Nothing here needs root or
//! touches the host, so the whole policy is visible and testable in the spec.
//!
//! - [`config`]: the provider config (`/etc/furnace/furnace.toml`), the
//!   `furnace-config` crate re-exported;
//! - [`annotations`]: the `furnace.dev/*` contract and the role;
//! - [`policy`]: the hardening steps, one function each;
//! - [`seccomp`]: the per-role syscall allowlists (data in `runtime/seccomp/`);
//! - [`launcher`]: running a hardened bundle with libcontainer, from a
//!   single-threaded helper process.

pub mod annotations;
pub mod error;
pub mod launcher;
pub mod policy;
pub mod seccomp;

pub use annotations::{AppRequest, Backend, Role};
pub use error::PolicyError;
pub use furnace_config as config;
pub use furnace_config::units;
pub use furnace_config::{ConfigError, IdRange, Limits, ProviderConfig, SeccompMode};
pub use policy::{HostBinds, KeyFiles, RelayFiles, FAC_SOCKET, VMI_SOCKET};

use oci_spec::runtime::Spec;
use std::collections::HashMap;

/// A hardened spec plus what the shim needs to finish the job.
#[derive(Clone, Debug)]
pub struct Hardened {
    pub spec: Spec,
    pub role: Role,
    /// Guest (None for a sandbox without one), effective permissions, backend.
    pub request: AppRequest,
    /// The cgroup limits in force (the request, tightened by the spec's own).
    pub limits: Limits,
    /// Host uid/gid the container process runs as (its user namespace
    /// mapping of `process.user`), for owning the app's socket. None when no
    /// user namespace is added (sandbox).
    pub host_uid: Option<u32>,
    pub host_gid: Option<u32>,
    /// What was stripped from the spec, for the shim to log.
    pub notes: Vec<String>,
}

/// Hardens `spec` for the role its annotations imply: a CRI sandbox if
/// `io.kubernetes.cri.container-type=sandbox`, else an app.
pub fn harden(
    spec: Spec,
    annotations: &HashMap<String, String>,
    config: &ProviderConfig,
    binds: &HostBinds,
) -> Result<Hardened, PolicyError> {
    harden_as(
        Role::from_annotations(annotations),
        spec,
        annotations,
        config,
        binds,
    )
}

/// Hardens `spec` for an explicit role. Only the shim picks [`Role::Fac`],
/// for the facilities relay it starts itself.
pub fn harden_as(
    role: Role,
    mut spec: Spec,
    annotations: &HashMap<String, String>,
    config: &ProviderConfig,
    binds: &HostBinds,
) -> Result<Hardened, PolicyError> {
    config.validate()?;
    let request = annotations::parse(annotations, config, role)?;
    let mut notes = Vec::new();

    policy::read_only_root(&mut spec)?;
    policy::drop_privileges(&mut spec)?;
    policy::namespaces(&mut spec, role);
    let ids = match (role, &binds.ids) {
        (Role::App | Role::Fac, Some(range)) => Some(policy::user_namespace(&mut spec, range)?),
        (Role::App | Role::Fac, None) => {
            return Err(PolicyError::Bind {
                which: "ids",
                problem: "a partition needs a host id range of its own, and none was given".into(),
                fix: "claim one of [user_namespace]'s ranges for it first".into(),
            })
        }
        (Role::Sandbox, Some(_)) => {
            return Err(PolicyError::Bind {
                which: "ids",
                problem: "a sandbox gets no user namespace, so no id range".into(),
                fix: "claim ranges for apps and relays only".into(),
            })
        }
        (Role::Sandbox, None) => None,
    };
    // The relay's partition has the provider's limits for relays, not an app's.
    let wanted = match role {
        Role::Fac => config.facilities.relay.with_storage(request.limits.storage),
        _ => request.limits,
    };
    let limits = policy::resources(&mut spec, &wanted, &mut notes);
    policy::masked_and_readonly_paths(&mut spec);
    policy::strip_host_reach(&mut spec, &mut notes);
    policy::mounts(&mut spec, role, config, binds, &mut notes)?;
    policy::init_for_role(&mut spec, role, binds.init.as_deref())?;
    let listener = match role {
        Role::App => binds.seccomp_listener.as_deref(),
        Role::Fac | Role::Sandbox => None,
    };
    policy::seccomp(&mut spec, role, config, listener)?;

    Ok(Hardened {
        spec,
        role,
        request,
        limits,
        host_uid: ids.map(|(u, _)| u),
        host_gid: ids.map(|(_, g)| g),
        notes,
    })
}

#[cfg(test)]
mod tests;
