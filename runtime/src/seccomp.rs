//! Seccomp allowlists per role, kept as data in `runtime/seccomp/*.json`
//! (the format is `furnace-seccomp`'s) and turned into an OCI
//! `linux.seccomp` here.
//!
//! `masked_eq` conditions are emitted the way youki's libcontainer (our
//! launcher) reads them: OCI `value` is the value compared, `valueTwo` the
//! mask. runc reads the two the other way round; under runc such a rule
//! would never match, which fails closed.

use crate::annotations::Role;
use crate::config::SeccompMode;
use crate::error::PolicyError;
use furnace_seccomp::{Condition, Op};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};
use std::collections::BTreeSet;
use std::path::Path;
use syscalls::x86_64::Sysno;

pub use furnace_seccomp::Rules;

pub const APP_PROFILE: &str = include_str!("../seccomp/app.json");
pub const FAC_PROFILE: &str = include_str!("../seccomp/fac.json");

/// `EPERM`: what a refused syscall returns in errno mode.
pub const EPERM: u32 = 1;

fn profile_text(name: &str) -> Option<&'static str> {
    match name {
        "app" => Some(APP_PROFILE),
        "fac" => Some(FAC_PROFILE),
        _ => None,
    }
}

fn load_rules(role: &'static str) -> Result<Rules, PolicyError> {
    furnace_seccomp::load_rules(role, &profile_text).map_err(|e| PolicyError::SeccompData {
        role,
        problem: e.problem,
    })
}

fn arg(c: &Condition) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(usize::from(c.index))
        .value(c.value);
    match c.op {
        Op::Eq => b.op(LinuxSeccompOperator::ScmpCmpEq),
        Op::Ne => b.op(LinuxSeccompOperator::ScmpCmpNe),
        Op::MaskedEq { mask } => b.op(LinuxSeccompOperator::ScmpCmpMaskedEq).value_two(mask),
    }
    .build()
    .expect("every LinuxSeccompArg field has a default")
}

fn syscall(
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names);
    s.set_action(action);
    s.set_errno_ret(errno_ret);
    s.set_args(args);
    s
}

/// The flattened rules for `role`. The sandbox (pause) container uses the
/// app list: it needs far less, and nothing more.
pub fn rules(role: Role) -> Result<Rules, PolicyError> {
    match role {
        Role::App | Role::Sandbox => load_rules("app"),
        Role::Fac => load_rules("fac"),
    }
}

/// The OCI seccomp section for `role`: default action per `mode`, x86_64
/// only (other ABIs, including i386 via `int 0x80` and x32, hit
/// libseccomp's bad-arch action, which kills), one unconditional ALLOW rule
/// for the list, then the conditional and errno rules.
///
/// With `listener` (errno mode only), what the list refuses is not answered
/// by the kernel but notified to the seccomp agent listening there, the
/// shim, which answers the same EPERM and counts it (docs/defense.md,
/// `seccomp_violations`): every x86_64 syscall the list does not name, and
/// the arguments a conditional rule does not allow. libcontainer takes no
/// notify default action, so these are explicit rules; the default EPERM
/// is left for numbers no table names.
pub fn profile(
    role: Role,
    mode: SeccompMode,
    listener: Option<&Path>,
) -> Result<LinuxSeccomp, PolicyError> {
    let rules = rules(role)?;
    let notify = match (mode, listener) {
        (SeccompMode::Errno, Some(path)) => Some((path, notified(&rules))),
        _ => None,
    };
    let mut syscalls = vec![syscall(
        rules.allow,
        LinuxSeccompAction::ScmpActAllow,
        None,
        None,
    )];
    syscalls.extend(rules.conditional.into_iter().map(|c| {
        let args = c.args.iter().map(arg).collect();
        syscall(c.names, LinuxSeccompAction::ScmpActAllow, None, Some(args))
    }));
    syscalls.extend(rules.errno.into_iter().map(|e| {
        syscall(
            e.names,
            LinuxSeccompAction::ScmpActErrno,
            Some(e.errno),
            None,
        )
    }));
    let mut s = LinuxSeccomp::default();
    if let Some((path, refused)) = notify {
        syscalls.extend(refused);
        s.set_listener_path(Some(path.to_owned()));
    }
    match mode {
        SeccompMode::Errno => {
            s.set_default_action(LinuxSeccompAction::ScmpActErrno);
            s.set_default_errno_ret(Some(EPERM));
        }
        SeccompMode::Kill => {
            s.set_default_action(LinuxSeccompAction::ScmpActKillProcess);
            s.set_default_errno_ret(None);
        }
    }
    s.set_architectures(Some(vec![Arch::ScmpArchX86_64]));
    s.set_syscalls(Some(syscalls));
    Ok(s)
}

/// The NOTIFY rules for what `rules` refuse: one for every named syscall it
/// does not mention, and for each conditional rule the conditions under
/// which it does not match.
fn notified(rules: &Rules) -> Vec<LinuxSyscall> {
    let mentioned: BTreeSet<&str> = rules
        .allow
        .iter()
        .chain(rules.conditional.iter().flat_map(|c| &c.names))
        .chain(rules.errno.iter().flat_map(|e| &e.names))
        .map(String::as_str)
        .collect();
    let unlisted: Vec<String> = Sysno::iter()
        .map(|s| s.name())
        .filter(|name| !mentioned.contains(name))
        .map(String::from)
        .collect();
    let mut out = vec![syscall(
        unlisted,
        LinuxSeccompAction::ScmpActNotify,
        None,
        None,
    )];
    for c in &rules.conditional {
        for refused in refused_when(&c.args).into_iter().flatten() {
            out.push(syscall(
                c.names.clone(),
                LinuxSeccompAction::ScmpActNotify,
                None,
                Some(vec![arg(&refused)]),
            ));
        }
    }
    out
}

/// Conditions any of which makes `allowed` (all of which must hold) false,
/// each one a rule of its own; `None` where one argument condition cannot
/// say it, and then a refusal falls to the default action, uncounted. A
/// `(x & mask) == 0` fails when any bit of `mask` is set in `x`: one rule
/// per bit.
fn refused_when(allowed: &[Condition]) -> Option<Vec<Condition>> {
    let [only] = allowed else { return None };
    let negated = |op| Condition { op, ..*only };
    match only.op {
        Op::Eq => Some(vec![negated(Op::Ne)]),
        Op::Ne => Some(vec![negated(Op::Eq)]),
        Op::MaskedEq { mask } if only.value == 0 => Some(
            (0..64)
                .map(|bit| 1u64 << bit)
                .filter(|b| mask & b != 0)
                .map(|b| Condition {
                    index: only.index,
                    op: Op::MaskedEq { mask: b },
                    value: b,
                })
                .collect(),
        ),
        Op::MaskedEq { .. } => None,
    }
}

/// The x86_64 name of syscall `number`, for logs.
pub fn syscall_name(number: i32) -> Option<&'static str> {
    usize::try_from(number)
        .ok()
        .and_then(Sysno::new)
        .map(|s| s.name())
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
