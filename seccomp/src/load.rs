//! Compiling [`Rules`] into a filter and loading it on the calling process.

use crate::{Op, Rules};
use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

/// What a call outside the list gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultAction {
    /// Fails with this errno.
    Errno(i32),
    /// The whole process is killed.
    KillProcess,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("syscall `{0}` is unknown to libseccomp on this architecture")]
    UnknownSyscall(String),
    #[error("building the seccomp filter: {0}")]
    Build(String),
    #[error("loading the seccomp filter: {0}")]
    Load(String),
}

/// Loads `rules` on every thread of the calling process (TSYNC), with
/// `no_new_privs` set. Other ABIs (i386 through `int 0x80`, x32) kill the
/// process: only the native architecture is in the filter.
pub fn install(rules: &Rules, default: DefaultAction) -> Result<(), LoadError> {
    let build = |e: libseccomp::error::SeccompError| LoadError::Build(e.to_string());
    let default = match default {
        DefaultAction::Errno(errno) => ScmpAction::Errno(errno),
        DefaultAction::KillProcess => ScmpAction::KillProcess,
    };
    let mut filter = ScmpFilterContext::new(default).map_err(build)?;
    filter
        .set_act_badarch(ScmpAction::KillProcess)
        .map_err(build)?;
    filter.set_ctl_nnp(true).map_err(build)?;
    filter.set_ctl_tsync(true).map_err(build)?;
    let syscall = |name: &str| {
        ScmpSyscall::from_name(name).map_err(|_| LoadError::UnknownSyscall(name.to_owned()))
    };
    for name in &rules.allow {
        filter
            .add_rule(ScmpAction::Allow, syscall(name)?)
            .map_err(build)?;
    }
    for rule in &rules.conditional {
        let args: Vec<ScmpArgCompare> = rule
            .args
            .iter()
            .map(|c| {
                let op = match c.op {
                    Op::Eq => ScmpCompareOp::Equal,
                    Op::Ne => ScmpCompareOp::NotEqual,
                    Op::MaskedEq { mask } => ScmpCompareOp::MaskedEqual(mask),
                };
                ScmpArgCompare::new(u32::from(c.index), op, c.value)
            })
            .collect();
        for name in &rule.names {
            filter
                .add_rule_conditional(ScmpAction::Allow, syscall(name)?, &args)
                .map_err(build)?;
        }
    }
    for rule in &rules.errno {
        let errno = i32::try_from(rule.errno).map_err(|_| {
            LoadError::Build(format!(
                "errno {} of {:?} is out of range",
                rule.errno, rule.names
            ))
        })?;
        for name in &rule.names {
            filter
                .add_rule(ScmpAction::Errno(errno), syscall(name)?)
                .map_err(build)?;
        }
    }
    filter.load().map_err(|e| LoadError::Load(e.to_string()))
}
