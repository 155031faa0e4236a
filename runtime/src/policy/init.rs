//! PID 1 of the partition: Furnace's own minimal init (`furnace-init`, the
//! `init/` crate) runs the app as its child, so that SIGTERM and SIGINT end
//! every app whatever its language, and orphans are reaped (docs/shim.md,
//! "PID 1").

use super::mounts::{mount, socket_dir};
use super::*;

/// Where the host's init is bound inside the partition, in the runtime's
/// own tmpfs ([`SOCKET_DIR`]).
pub const INIT_PATH: &str = "/run/furnace/init";

/// Runs the app under the host's init, bound from `init_source` (an
/// absolute host path, the shim's bind of the init in the partition's own
/// directory): binds it read-only, nosuid, nodev at [`INIT_PATH`] (after the
/// [`SOCKET_DIR`] tmpfs, which is added if the spec has none) and prepends
/// `INIT_PATH --` to `process.args`. libcontainer applies the process's
/// user, seccomp filter and `no_new_privs` before it execs the init, so the
/// init runs under exactly the app's policy. A spec that already has it is
/// left as it is (the mount is not repeated, the args are not prefixed
/// twice).
pub fn pid1_init(spec: &mut Spec, init_source: &Path) -> Result<(), PolicyError> {
    let plain = init_source.is_absolute()
        && init_source
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(PolicyError::Init {
            problem: format!("`{}` is not a plain absolute path", init_source.display()),
            fix: "pass the host path of furnace-init, e.g. next to containerd-shim-furnace-v1"
                .into(),
        });
    }
    let process = super::process_of(spec)?;
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(PolicyError::spec(
            "process.args",
            "is empty",
            "name the program to run (the image's entrypoint and command, or ctr run's arguments)",
        ));
    }
    if !has_init(&args) {
        let mut under_init = vec![INIT_PATH.to_string(), "--".to_string()];
        under_init.extend(args);
        process.set_args(Some(under_init));
    }

    let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
    if !mounts
        .iter()
        .any(|m| m.destination() == Path::new(SOCKET_DIR))
    {
        mounts.push(socket_dir());
    }
    mounts.retain(|m| m.destination() != Path::new(INIT_PATH));
    let mut bind = mount(INIT_PATH, "bind", "", &["bind", "ro", "nosuid", "nodev"]);
    bind.set_source(Some(init_source.to_path_buf()));
    mounts.push(bind);
    Ok(())
}

/// Whether `args` already run under the init.
fn has_init(args: &[String]) -> bool {
    args.len() >= 2 && args[0] == INIT_PATH && args[1] == "--"
}

/// The init step as `role` takes it: apps and relays run under the init
/// (required); a CRI sandbox's pause process is an init itself and gets
/// none (refused if given).
pub fn init_for_role(
    spec: &mut Spec,
    role: Role,
    init_source: Option<&Path>,
) -> Result<(), PolicyError> {
    match (role, init_source) {
        (Role::Sandbox, None) => Ok(()),
        (Role::Sandbox, Some(_)) => Err(PolicyError::Init {
            problem: "the sandbox role runs its pause process as PID 1, which reaps and handles signals itself".into(),
            fix: "pass no init for a CRI sandbox".into(),
        }),
        (_, Some(init)) => pid1_init(spec, init),
        (_, None) => Err(PolicyError::Init {
            problem: format!(
                "the {} role runs under furnace-init as PID 1, but no init was given",
                role.name()
            ),
            fix: "pass the host path of furnace-init (installed next to containerd-shim-furnace-v1)"
                .into(),
        }),
    }
}
