//! `[defense]`: the rules by which the shim watches each app partition it
//! runs and answers what it sees (docs/defense.md). A rule names a
//! condition, how many of it within a window fire it, and a response.

use furnace_api::v1::Permission;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefenseConfig {
    /// Every decision is appended here, one JSON object a line.
    pub audit_log: PathBuf,
    /// How often each partition's counters are sampled, in milliseconds.
    pub poll_ms: u32,
    /// Tried in order on every sample. A file that sets `rules` replaces
    /// the defaults; `rules = []` turns the loop off.
    pub rules: Vec<Rule>,
}

impl Default for DefenseConfig {
    fn default() -> Self {
        DefenseConfig {
            audit_log: PathBuf::from("/var/log/furnace/audit.jsonl"),
            poll_ms: 250,
            rules: default_rules(),
        }
    }
}

/// What a rule counts, per partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Syscalls the partition's seccomp filter refused.
    SeccompViolations,
    /// Processes the kernel's OOM killer ended in the partition's memory cgroup.
    OomKills,
    /// Calls the sidecar answered NOT_PERMITTED.
    NotPermitted,
    /// Calls the sidecar answered LIMIT_EXCEEDED.
    LimitExceeded,
    /// Pause leases that ran out before the app resumed the guest.
    PauseOverruns,
    /// Messages the app's facilities relay refused at its rate limit.
    RelayRateLimited,
}

impl Condition {
    pub const ALL: [Condition; 6] = [
        Condition::SeccompViolations,
        Condition::OomKills,
        Condition::NotPermitted,
        Condition::LimitExceeded,
        Condition::PauseOverruns,
        Condition::RelayRateLimited,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Condition::SeccompViolations => "seccomp_violations",
            Condition::OomKills => "oom_kills",
            Condition::NotPermitted => "not_permitted",
            Condition::LimitExceeded => "limit_exceeded",
            Condition::PauseOverruns => "pause_overruns",
            Condition::RelayRateLimited => "relay_rate_limited",
        }
    }

    /// Its place in [`Condition::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How a rule answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseKind {
    /// Only the audit log.
    Log,
    /// The audit log and a containerd event on `/furnace/defense`.
    Event,
    /// The sidecar serves the app's calls at most `calls_per_second`.
    Throttle,
    /// The sidecar takes `permission` from the app.
    Revoke,
    /// The partition is killed (SIGKILL to every process in it).
    Kill,
}

/// One rule. `then = "throttle"` needs `calls_per_second`, `then =
/// "revoke"` needs `permission`; no other response takes either.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Names the rule in the audit log and in events.
    pub name: String,
    pub when: Condition,
    /// How many within `window_ms` fire the rule.
    pub count: u64,
    pub window_ms: u64,
    pub then: ResponseKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<Permission>,
}

/// A rule's response with what it needs, once the rule is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    Log,
    Event,
    Throttle { calls_per_second: u32 },
    Revoke { permission: Permission },
    Kill,
}

impl Response {
    pub fn name(self) -> &'static str {
        match self {
            Response::Log => "log",
            Response::Event => "event",
            Response::Throttle { .. } => "throttle",
            Response::Revoke { .. } => "revoke",
            Response::Kill => "kill",
        }
    }
}

impl Rule {
    /// The typed response; `None` when a parameter is missing or stray
    /// (validation refuses such a rule, naming it).
    pub fn response(&self) -> Option<Response> {
        match (self.then, self.calls_per_second, self.permission) {
            (ResponseKind::Log, None, None) => Some(Response::Log),
            (ResponseKind::Event, None, None) => Some(Response::Event),
            (ResponseKind::Kill, None, None) => Some(Response::Kill),
            (ResponseKind::Throttle, Some(calls_per_second), None) if calls_per_second > 0 => {
                Some(Response::Throttle { calls_per_second })
            }
            (ResponseKind::Revoke, None, Some(permission))
                if permission != Permission::Unspecified =>
            {
                Some(Response::Revoke { permission })
            }
            _ => None,
        }
    }
}

fn rule(name: &str, when: Condition, count: u64, window_ms: u64, then: Response) -> Rule {
    let (kind, calls_per_second, permission) = match then {
        Response::Log => (ResponseKind::Log, None, None),
        Response::Event => (ResponseKind::Event, None, None),
        Response::Throttle { calls_per_second } => {
            (ResponseKind::Throttle, Some(calls_per_second), None)
        }
        Response::Revoke { permission } => (ResponseKind::Revoke, None, Some(permission)),
        Response::Kill => (ResponseKind::Kill, None, None),
    };
    Rule {
        name: name.into(),
        when,
        count,
        window_ms,
        then: kind,
        calls_per_second,
        permission,
    }
}

/// The defaults, documented in docs/defense.md: slow an app that keeps
/// asking for what it was not granted, then end it; take pausing from an
/// app that keeps overrunning its leases; report OOM kills and seccomp
/// refusals, and end a partition that keeps hitting either.
pub fn default_rules() -> Vec<Rule> {
    use Condition::*;
    vec![
        rule(
            "forbidden-calls-throttle",
            NotPermitted,
            20,
            10_000,
            Response::Throttle {
                calls_per_second: 5,
            },
        ),
        rule(
            "forbidden-calls-kill",
            NotPermitted,
            200,
            60_000,
            Response::Kill,
        ),
        rule(
            "limit-exceeded-throttle",
            LimitExceeded,
            100,
            10_000,
            Response::Throttle {
                calls_per_second: 20,
            },
        ),
        rule(
            "pause-overruns-revoke",
            PauseOverruns,
            3,
            60_000,
            Response::Revoke {
                permission: Permission::Pause,
            },
        ),
        rule("oom-event", OomKills, 1, 60_000, Response::Event),
        rule("oom-kill", OomKills, 5, 60_000, Response::Kill),
        rule(
            "seccomp-event",
            SeccompViolations,
            1,
            60_000,
            Response::Event,
        ),
        rule(
            "seccomp-kill",
            SeccompViolations,
            100,
            60_000,
            Response::Kill,
        ),
        rule(
            "relay-rate-event",
            RelayRateLimited,
            100,
            60_000,
            Response::Event,
        ),
    ]
}
