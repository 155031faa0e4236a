//! The self-defense loop's rule engine (docs/defense.md): one [`Watch`] per
//! partition takes samples of the partition's running totals (seccomp
//! refusals, OOM kills, NOT_PERMITTED and LIMIT_EXCEEDED answers, pause
//! overruns, relay rate-limit hits) and says which rules they fire. It
//! knows nothing of where the totals come from or how a response is
//! carried out: the shim does both. [`AuditLog`] writes each decision down.

mod audit;
mod warden;

pub use audit::{AuditLog, AuditRecord};
pub use furnace_config::{Condition, Response, Rule};
pub use warden::{guard, unix_ms, Guarded};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::collections::VecDeque;

/// A partition's running total of each condition since it started. Each
/// total only grows; a source that cannot be read keeps its last value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals([u64; Condition::ALL.len()]);

impl Totals {
    pub fn get(&self, condition: Condition) -> u64 {
        self.0[condition.index()]
    }

    pub fn set(&mut self, condition: Condition, total: u64) {
        self.0[condition.index()] = total;
    }
}

impl Serialize for Totals {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(Condition::ALL.len()))?;
        for c in Condition::ALL {
            map.serialize_entry(c.name(), &self.get(c))?;
        }
        map.end()
    }
}

/// A rule fired by a sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub rule: Rule,
    pub response: Response,
    /// How many of the rule's condition the window held.
    pub seen: u64,
    /// The sample that fired it.
    pub totals: Totals,
    pub at_ms: u64,
}

/// The rules applied to one partition, and the history they need.
pub struct Watch {
    rules: Vec<(Rule, Response)>,
    /// When each rule last fired; a rule fires again only once its window
    /// has passed since.
    fired_at: Vec<Option<u64>>,
    /// The totals each time they changed, oldest first. The first entry is
    /// the value at or before `now - longest window`, or the start.
    changes: VecDeque<(u64, Totals)>,
    longest_window: u64,
    /// Set once a kill fired: nothing is left to decide.
    ended: bool,
}

impl Watch {
    /// A watch from `start_ms`, when every total is 0. Rules whose
    /// response is not valid (validation refuses them) are left out.
    pub fn new(rules: &[Rule], start_ms: u64) -> Self {
        let rules: Vec<(Rule, Response)> = rules
            .iter()
            .filter_map(|r| Some((r.clone(), r.response()?)))
            .collect();
        let longest_window = rules.iter().map(|(r, _)| r.window_ms).max().unwrap_or(0);
        Watch {
            fired_at: vec![None; rules.len()],
            rules,
            changes: VecDeque::from([(start_ms, Totals::default())]),
            longest_window,
            ended: false,
        }
    }

    /// Whether any rule is left to fire.
    pub fn is_idle(&self) -> bool {
        self.ended || self.rules.is_empty()
    }

    /// Takes the totals sampled at `now_ms` (not before the last sample) and
    /// returns the rules they fire, in rule order.
    pub fn observe(&mut self, now_ms: u64, totals: Totals) -> Vec<Decision> {
        if self.ended {
            return Vec::new();
        }
        let last = self.changes.back().map(|(t, v)| (*t, *v));
        if let Some((at, value)) = last {
            if now_ms < at {
                return Vec::new();
            }
            if value != totals {
                self.changes.push_back((now_ms, totals));
            }
        }
        let horizon = now_ms.saturating_sub(self.longest_window);
        while self.changes.len() > 1 && self.changes[1].0 <= horizon {
            self.changes.pop_front();
        }
        let mut decisions = Vec::new();
        for (i, (rule, response)) in self.rules.iter().enumerate() {
            if let Some(fired) = self.fired_at[i] {
                if now_ms.saturating_sub(fired) < rule.window_ms {
                    continue;
                }
            }
            let since = self.value_at(now_ms.saturating_sub(rule.window_ms));
            let seen = totals.get(rule.when).saturating_sub(since.get(rule.when));
            if seen >= rule.count {
                self.fired_at[i] = Some(now_ms);
                decisions.push(Decision {
                    rule: rule.clone(),
                    response: *response,
                    seen,
                    totals,
                    at_ms: now_ms,
                });
            }
        }
        if decisions.iter().any(|d| d.response == Response::Kill) {
            self.ended = true;
        }
        decisions
    }

    /// The totals as they stood at `at_ms` (the oldest kept, if earlier).
    fn value_at(&self, at_ms: u64) -> Totals {
        let after = self.changes.partition_point(|(t, _)| *t <= at_ms);
        self.changes
            .get(after.saturating_sub(1))
            .map(|(_, v)| *v)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
