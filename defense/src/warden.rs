//! The loop itself: sample a partition, apply the rules, carry out and
//! write down what they decide, until the partition is gone.

use crate::{AuditLog, AuditRecord, Decision, Totals, Watch};
use furnace_config::DefenseConfig;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The partition a [`guard`] loop watches: where its totals come from and
/// how a decision is carried out. The shim's task is one; the unit tests'
/// fake another.
pub trait Guarded {
    /// The partition's totals now; a source that cannot be read keeps its
    /// value in `last`.
    fn sample(&self, last: &Totals) -> Totals;
    /// Carries out `decision`'s response; the error says why it could not be.
    fn respond(&self, decision: &Decision, record: &AuditRecord) -> Result<(), String>;
    /// Whether the partition is gone, which ends the loop.
    fn is_gone(&self) -> bool;
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Watches `guarded` by `config`'s rules every `poll_ms` until it is gone
/// or a kill was decided. Each decision is carried out, then written to
/// `audit` with its outcome (and to the log if that fails).
pub fn guard(
    guarded: &dyn Guarded,
    partition: &str,
    config: &DefenseConfig,
    audit: Option<&AuditLog>,
) {
    let start = Instant::now();
    let period = Duration::from_millis(config.poll_ms.into());
    let mut watch = Watch::new(&config.rules, 0);
    let mut totals = Totals::default();
    while !watch.is_idle() && !guarded.is_gone() {
        std::thread::sleep(period);
        totals = guarded.sample(&totals);
        let now = start.elapsed().as_millis() as u64;
        for decision in watch.observe(now, totals) {
            let mut record = AuditRecord::of(&decision, partition, unix_ms(), "applied".into());
            if let Err(e) = guarded.respond(&decision, &record) {
                record.outcome = format!("failed: {e}");
            }
            log::warn!(
                "{partition}: rule {} ({} {} in {} ms): {} {}",
                decision.rule.name,
                decision.seen,
                decision.rule.when.name(),
                decision.rule.window_ms,
                decision.response.name(),
                record.outcome
            );
            if let Some(Err(e)) = audit.map(|log| log.write(&record)) {
                log::error!(
                    "{partition}: the audit log {} refused a record: {e}",
                    audit
                        .map(|l| l.path().display().to_string())
                        .unwrap_or_default()
                );
            }
        }
    }
}
