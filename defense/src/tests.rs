use super::*;
use furnace_config::{default_rules, ResponseKind};

fn rule(name: &str, when: Condition, count: u64, window_ms: u64, then: ResponseKind) -> Rule {
    Rule {
        name: name.into(),
        when,
        count,
        window_ms,
        then,
        calls_per_second: (then == ResponseKind::Throttle).then_some(5),
        permission: None,
    }
}

fn totals(pairs: &[(Condition, u64)]) -> Totals {
    let mut t = Totals::default();
    for (c, v) in pairs {
        t.set(*c, *v);
    }
    t
}

fn fired(decisions: &[Decision]) -> Vec<&str> {
    decisions.iter().map(|d| d.rule.name.as_str()).collect()
}

use Condition::NotPermitted;

#[test]
fn a_rule_fires_when_its_window_holds_its_count_and_not_before() {
    let rules = [rule("t", NotPermitted, 10, 1_000, ResponseKind::Throttle)];
    let mut w = Watch::new(&rules, 0);
    assert!(w.observe(100, totals(&[(NotPermitted, 9)])).is_empty());
    let d = w.observe(200, totals(&[(NotPermitted, 10)]));
    assert_eq!(fired(&d), ["t"]);
    assert_eq!(d[0].seen, 10);
    assert_eq!(
        d[0].response,
        Response::Throttle {
            calls_per_second: 5
        }
    );
    assert_eq!(d[0].totals.get(NotPermitted), 10);
}

#[test]
fn counts_older_than_the_window_do_not_count() {
    let rules = [rule("t", NotPermitted, 10, 1_000, ResponseKind::Log)];
    let mut w = Watch::new(&rules, 0);
    // 6 early, 6 more 1.5 s later: never 10 within one second.
    assert!(w.observe(100, totals(&[(NotPermitted, 6)])).is_empty());
    assert!(w.observe(1_600, totals(&[(NotPermitted, 12)])).is_empty());
    assert!(w.observe(1_900, totals(&[(NotPermitted, 15)])).is_empty());
    // By 2.5 s the total is 22, and 6 at 1.5 s: 16 within the last second.
    assert_eq!(
        fired(&w.observe(2_500, totals(&[(NotPermitted, 22)]))),
        ["t"]
    );
}

#[test]
fn a_fired_rule_rests_for_its_window_then_fires_again() {
    let rules = [rule("t", NotPermitted, 2, 1_000, ResponseKind::Event)];
    let mut w = Watch::new(&rules, 0);
    assert_eq!(fired(&w.observe(100, totals(&[(NotPermitted, 2)]))), ["t"]);
    assert!(w.observe(600, totals(&[(NotPermitted, 10)])).is_empty());
    assert_eq!(
        fired(&w.observe(1_100, totals(&[(NotPermitted, 12)]))),
        ["t"]
    );
}

#[test]
fn a_kill_ends_the_watch_and_rules_fire_in_order() {
    let rules = [
        rule("throttle", NotPermitted, 5, 10_000, ResponseKind::Throttle),
        rule("kill", NotPermitted, 8, 10_000, ResponseKind::Kill),
        rule("after", NotPermitted, 1, 10_000, ResponseKind::Log),
    ];
    let mut w = Watch::new(&rules, 0);
    assert_eq!(
        fired(&w.observe(100, totals(&[(NotPermitted, 5)]))),
        ["throttle", "after"]
    );
    assert_eq!(
        fired(&w.observe(200, totals(&[(NotPermitted, 9)]))),
        ["kill"]
    );
    assert!(w.is_idle());
    assert!(w.observe(30_000, totals(&[(NotPermitted, 99)])).is_empty());
}

#[test]
fn each_condition_is_counted_on_its_own() {
    let rules = [rule(
        "oom",
        Condition::OomKills,
        1,
        60_000,
        ResponseKind::Event,
    )];
    let mut w = Watch::new(&rules, 0);
    assert!(w.observe(100, totals(&[(NotPermitted, 1000)])).is_empty());
    let d = w.observe(
        200,
        totals(&[(NotPermitted, 1000), (Condition::OomKills, 1)]),
    );
    assert_eq!(fired(&d), ["oom"]);
    assert_eq!(d[0].seen, 1);
}

#[test]
fn a_total_that_goes_backwards_or_a_sample_from_the_past_fires_nothing() {
    let rules = [rule("t", NotPermitted, 1, 1_000, ResponseKind::Log)];
    let mut w = Watch::new(&rules, 0);
    assert!(w.observe(500, totals(&[(NotPermitted, 0)])).is_empty());
    w.observe(600, totals(&[(NotPermitted, 5)]));
    assert!(w.observe(100, totals(&[(NotPermitted, 500)])).is_empty());
    let mut w = Watch::new(&rules, 0);
    w.observe(100, totals(&[(NotPermitted, 50)]));
    assert!(w.observe(5_000, totals(&[(NotPermitted, 3)])).is_empty());
}

#[test]
fn history_is_bounded_by_the_longest_window() {
    let rules = [rule("t", NotPermitted, u64::MAX, 1_000, ResponseKind::Log)];
    let mut w = Watch::new(&rules, 0);
    for i in 1..=100_000u64 {
        w.observe(i * 50, totals(&[(NotPermitted, i)]));
    }
    assert!(w.changes.len() <= 1_000 / 50 + 2, "{}", w.changes.len());
}

#[test]
fn the_default_rules_are_all_valid_and_a_bad_one_is_left_out() {
    let defaults = default_rules();
    assert!(defaults.iter().all(|r| r.response().is_some()));
    let mut bad = rule("bad", NotPermitted, 1, 1_000, ResponseKind::Revoke);
    bad.permission = None;
    let w = Watch::new(&[bad], 0);
    assert!(w.is_idle());
}

#[test]
fn the_audit_log_holds_one_json_line_per_decision_with_its_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    let rules = [rule("t", NotPermitted, 1, 1_000, ResponseKind::Throttle)];
    let mut w = Watch::new(&rules, 0);
    let d = w.observe(100, totals(&[(NotPermitted, 3), (Condition::OomKills, 1)]));
    log.write(&AuditRecord::of(
        &d[0],
        "ns/app",
        1_700_000_000_000,
        "applied".into(),
    ))
    .unwrap();
    AuditLog::open(&path)
        .unwrap()
        .write(&AuditRecord::of(
            &d[0],
            "ns/other",
            1,
            "failed: gone".into(),
        ))
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["partition"], "ns/app");
    assert_eq!(lines[0]["rule"], "t");
    assert_eq!(lines[0]["condition"], "not_permitted");
    assert_eq!(lines[0]["response"], "throttle");
    assert_eq!(lines[0]["calls_per_second"], 5);
    assert_eq!(lines[0]["seen"], 3);
    assert_eq!(lines[0]["evidence"]["oom_kills"], 1);
    assert_eq!(lines[1]["outcome"], "failed: gone");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let link = dir.path().join("logs/link.jsonl");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(AuditLog::open(&link).is_err(), "a symlinked log is refused");
}

/// A fake partition: every sample adds 5 refusals; responses are recorded.
struct Hammering {
    samples: std::cell::Cell<u64>,
    responses: std::cell::RefCell<Vec<&'static str>>,
}

impl Guarded for Hammering {
    fn sample(&self, last: &Totals) -> Totals {
        self.samples.set(self.samples.get() + 1);
        let mut t = *last;
        t.set(NotPermitted, last.get(NotPermitted) + 5);
        t
    }
    fn respond(&self, decision: &Decision, record: &AuditRecord) -> Result<(), String> {
        assert_eq!(record.rule, decision.rule.name);
        self.responses.borrow_mut().push(decision.response.name());
        match decision.response {
            Response::Revoke { .. } => Err("no such permission".into()),
            _ => Ok(()),
        }
    }
    fn is_gone(&self) -> bool {
        self.samples.get() > 100
    }
}

#[test]
fn the_loop_carries_out_each_decision_writes_it_down_and_ends_at_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
    let mut revoke = rule("revoke", NotPermitted, 10, 60_000, ResponseKind::Revoke);
    revoke.permission = Some(furnace_api::v1::Permission::Pause);
    let config = furnace_config::DefenseConfig {
        audit_log: dir.path().join("unused"),
        poll_ms: 50,
        rules: vec![
            rule("throttle", NotPermitted, 10, 60_000, ResponseKind::Throttle),
            revoke,
            rule("kill", NotPermitted, 20, 60_000, ResponseKind::Kill),
        ],
    };
    let fake = Hammering {
        samples: Default::default(),
        responses: Default::default(),
    };
    guard(&fake, "ns/hammer", &config, Some(&log));
    assert_eq!(*fake.responses.borrow(), ["throttle", "revoke", "kill"]);
    assert_eq!(fake.samples.get(), 4, "ended at the kill");
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let outcomes: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["outcome"].to_string())
        .collect();
    assert_eq!(
        outcomes,
        [
            "\"applied\"",
            "\"failed: no such permission\"",
            "\"applied\""
        ]
    );
}
