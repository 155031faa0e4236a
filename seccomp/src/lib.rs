//! Seccomp allowlists kept as data (JSON), one file per role.
//!
//! The format is deliberately small:
//! - `allow`: syscall names allowed unconditionally;
//! - `allow_if`: names allowed only when every argument condition holds
//!   (several entries for one name are alternatives);
//! - `errno`: names answered with a specific errno instead of the default;
//! - `extends`: another role whose lists are included first.
//!
//! The partition policy (`furnace-runtime`) turns [`Rules`] into an OCI
//! `linux.seccomp`; the VMI sidecar's worker compiles them with libseccomp
//! and loads them on itself ([`load`], feature `load`).

#[cfg(feature = "load")]
mod load;
#[cfg(feature = "load")]
pub use load::{install, DefaultAction, LoadError};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("seccomp profile `{role}`: {problem}")]
pub struct DataError {
    pub role: String,
    pub problem: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    role: String,
    #[allow(dead_code)]
    about: String,
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    allow_if: Vec<ConditionalEntry>,
    #[serde(default)]
    errno: Vec<ErrnoEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionalEntry {
    names: Vec<String>,
    args: Vec<ConditionEntry>,
    #[allow(dead_code)]
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionEntry {
    index: u8,
    op: OpName,
    value: u64,
    #[serde(default)]
    mask: Option<u64>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum OpName {
    Eq,
    Ne,
    MaskedEq,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrnoEntry {
    names: Vec<String>,
    errno: u32,
    #[allow(dead_code)]
    reason: String,
}

/// How one argument is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    /// `(argument & mask) == value`.
    MaskedEq {
        mask: u64,
    },
}

/// One argument condition: argument `index` (0–5) compared with `value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Condition {
    pub index: u8,
    pub op: Op,
    pub value: u64,
}

/// Names allowed when every condition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conditional {
    pub names: Vec<String>,
    pub args: Vec<Condition>,
}

/// Names answered with `errno`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrnoRule {
    pub names: Vec<String>,
    pub errno: u32,
}

/// The rules of one role, flattened over `extends`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub allow: Vec<String>,
    pub conditional: Vec<Conditional>,
    pub errno: Vec<ErrnoRule>,
}

/// How deep `extends` may chain.
const MAX_EXTENDS: usize = 4;

/// Loads `role`, whose text (and that of any role it extends) `profile_text` returns.
pub fn load_rules(
    role: &str,
    profile_text: &dyn Fn(&str) -> Option<&'static str>,
) -> Result<Rules, DataError> {
    load_at_depth(role, profile_text, 0)
}

fn load_at_depth(
    role: &str,
    profile_text: &dyn Fn(&str) -> Option<&'static str>,
    depth: usize,
) -> Result<Rules, DataError> {
    let bad = |problem: String| DataError {
        role: role.to_owned(),
        problem,
    };
    let text = profile_text(role).ok_or_else(|| bad("no such profile".into()))?;
    let p: Profile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if p.role != role {
        return Err(bad(format!("says role `{}`", p.role)));
    }
    let mut rules = match p.extends.as_deref() {
        Some(_) if depth >= MAX_EXTENDS => return Err(bad("extends too deeply".into())),
        Some(parent) if profile_text(parent).is_none() => {
            return Err(bad(format!("extends unknown profile `{parent}`")))
        }
        Some(parent) => load_at_depth(parent, profile_text, depth + 1)?,
        None => Rules::default(),
    };
    rules.allow.extend(p.allow);
    for entry in p.allow_if {
        let mut args = Vec::with_capacity(entry.args.len());
        for a in &entry.args {
            if a.index > 5 {
                return Err(bad(format!(
                    "{:?}: argument index {} > 5",
                    entry.names, a.index
                )));
            }
            let op = match (a.op, a.mask) {
                (OpName::Eq, None) => Op::Eq,
                (OpName::Ne, None) => Op::Ne,
                (OpName::MaskedEq, Some(mask)) => Op::MaskedEq { mask },
                (op, mask) => {
                    return Err(bad(format!(
                    "{:?}: op {op:?} with mask {mask:?} (masked_eq needs a mask, the others none)",
                    entry.names
                )))
                }
            };
            args.push(Condition {
                index: a.index,
                op,
                value: a.value,
            });
        }
        rules.conditional.push(Conditional {
            names: entry.names,
            args,
        });
    }
    rules.errno.extend(p.errno.into_iter().map(|e| ErrnoRule {
        names: e.names,
        errno: e.errno,
    }));
    Ok(rules)
}

impl Rules {
    /// Every name that any rule allows, unconditionally or not.
    pub fn allowed_names(&self) -> impl Iterator<Item = &str> {
        self.allow
            .iter()
            .chain(self.conditional.iter().flat_map(|c| c.names.iter()))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(role: &str) -> Option<&'static str> {
        match role {
            "base" => Some(
                r#"{"role":"base","about":"","allow":["read"],
                "allow_if":[{"names":["socket"],"args":[{"index":0,"op":"eq","value":1}],"reason":""}],
                "errno":[{"names":["clone3"],"errno":38,"reason":""}]}"#,
            ),
            "child" => Some(r#"{"role":"child","about":"","extends":"base","allow":["write"]}"#),
            "loop" => Some(r#"{"role":"loop","about":"","extends":"loop"}"#),
            "masked" => Some(
                r#"{"role":"masked","about":"","allow_if":[{"names":["clone"],"args":[{"index":0,"op":"masked_eq","value":0}],"reason":""}]}"#,
            ),
            "wrong" => Some(r#"{"role":"other","about":""}"#),
            "typo" => Some(r#"{"role":"typo","about":"","alow":[]}"#),
            _ => None,
        }
    }

    #[test]
    fn extends_includes_the_parent_first() {
        let r = load_rules("child", &texts).unwrap();
        assert_eq!(r.allow, ["read", "write"]);
        assert_eq!(
            r.conditional,
            [Conditional {
                names: vec!["socket".into()],
                args: vec![Condition {
                    index: 0,
                    op: Op::Eq,
                    value: 1
                }]
            }]
        );
        assert_eq!(r.errno[0].errno, 38);
        assert_eq!(
            r.allowed_names().collect::<Vec<_>>(),
            ["read", "write", "socket"]
        );
    }

    #[test]
    fn malformed_profiles_are_errors_naming_the_role() {
        for (role, needle) in [
            ("loop", "too deeply"),
            ("masked", "needs a mask"),
            ("wrong", "says role"),
            ("typo", "unknown field"),
            ("absent", "no such profile"),
        ] {
            let e = load_rules(role, &texts).unwrap_err();
            assert_eq!(e.role, role);
            assert!(e.to_string().contains(needle), "{role}: {e}");
        }
    }
}
