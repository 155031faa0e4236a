//! What the provider's self-defense loop sees of an app and may do to it
//! (docs/defense.md): the calls the sidecar refused it, a throttle on its
//! calls, and permissions taken back. Set through the admin API's
//! `Restrict`, read through `GetApp`.

use furnace_api::v1::Permission;
use furnace_api::{ApiError, ErrorCode};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A call that would wait longer than this for its turn is refused instead,
/// so a throttled app cannot pile up calls that hold connection threads.
const MAX_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Restrictions {
    not_permitted: AtomicU64,
    limit_exceeded: AtomicU64,
    /// A bit per `Permission` value.
    revoked: AtomicU32,
    /// Set once `pacer` holds a throttle, so an unthrottled call takes no lock.
    throttled: AtomicBool,
    pacer: Mutex<Option<Pacer>>,
}

/// Spaces calls `interval` apart: each takes the next free slot.
struct Pacer {
    calls_per_second: u32,
    interval: Duration,
    next: Instant,
}

fn bit(permission: Permission) -> u32 {
    1 << (permission as i32 as u32 % 32)
}

impl Restrictions {
    /// Counts a refusal the app got, by its code.
    pub fn count(&self, code: ErrorCode) {
        let counter = match code {
            ErrorCode::NotPermitted => &self.not_permitted,
            ErrorCode::LimitExceeded => &self.limit_exceeded,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn not_permitted(&self) -> u64 {
        self.not_permitted.load(Ordering::Relaxed)
    }

    pub fn limit_exceeded(&self) -> u64 {
        self.limit_exceeded.load(Ordering::Relaxed)
    }

    pub fn revoke(&self, permission: Permission) {
        self.revoked.fetch_or(bit(permission), Ordering::AcqRel);
    }

    pub fn is_revoked(&self, permission: Permission) -> bool {
        self.revoked.load(Ordering::Acquire) & bit(permission) != 0
    }

    fn pacer(&self) -> std::sync::MutexGuard<'_, Option<Pacer>> {
        self.pacer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves the app at most `calls_per_second` from now on; a tighter
    /// throttle already in force stays.
    pub fn throttle(&self, calls_per_second: u32) {
        if calls_per_second == 0 {
            return;
        }
        let mut pacer = self.pacer();
        if pacer
            .as_ref()
            .is_some_and(|p| p.calls_per_second <= calls_per_second)
        {
            return;
        }
        *pacer = Some(Pacer {
            calls_per_second,
            interval: Duration::from_secs(1) / calls_per_second,
            next: Instant::now(),
        });
        self.throttled.store(true, Ordering::Release);
    }

    /// The throttle in force; 0 for none.
    pub fn calls_per_second(&self) -> u32 {
        self.pacer().as_ref().map_or(0, |p| p.calls_per_second)
    }

    /// Waits for the call's turn under the throttle, if any. A call whose
    /// turn is more than [`MAX_WAIT`] away is refused, and takes no turn.
    pub fn pace(&self) -> Result<(), ApiError> {
        if !self.throttled.load(Ordering::Acquire) {
            return Ok(());
        }
        let wait = {
            let mut guard = self.pacer();
            let Some(pacer) = guard.as_mut() else {
                return Ok(());
            };
            let now = Instant::now();
            let slot = pacer.next.max(now);
            let wait = slot - now;
            if wait > MAX_WAIT {
                return Err(ApiError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "the provider throttled this app to {} calls a second (docs/defense.md); too many calls are waiting",
                        pacer.calls_per_second
                    ),
                ));
            }
            pacer.next = slot + pacer.interval;
            wait
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_code() {
        let r = Restrictions::default();
        r.count(ErrorCode::NotPermitted);
        r.count(ErrorCode::NotPermitted);
        r.count(ErrorCode::LimitExceeded);
        r.count(ErrorCode::NotFound);
        assert_eq!((r.not_permitted(), r.limit_exceeded()), (2, 1));
    }

    #[test]
    fn a_revoked_permission_stays_revoked_and_others_do_not() {
        let r = Restrictions::default();
        r.revoke(Permission::Pause);
        assert!(r.is_revoked(Permission::Pause));
        assert!(!r.is_revoked(Permission::Read));
        assert!(!r.is_revoked(Permission::Events));
    }

    /// The tighter of two throttles stays; a call whose turn is more than
    /// MAX_WAIT away is refused and takes no turn. Turns, not time, are checked.
    #[test]
    fn a_throttle_keeps_the_tighter_rate_and_refuses_calls_far_behind() {
        let r = Restrictions::default();
        assert_eq!(r.calls_per_second(), 0);
        r.throttle(10);
        r.throttle(50);
        assert_eq!(r.calls_per_second(), 10, "the tighter throttle stays");
        r.throttle(1000);
        r.pacer().as_mut().unwrap().next = Instant::now() + MAX_WAIT * 2;
        let refused = r.pace().unwrap_err();
        assert_eq!(refused.code, ErrorCode::LimitExceeded);
        assert!(
            refused.message.contains("10 calls a second"),
            "{}",
            refused.message
        );
        r.pacer().as_mut().unwrap().next = Instant::now();
        r.pace().unwrap();
        let next = r.pacer().as_ref().unwrap().next;
        assert!(next > Instant::now(), "a turn was taken");
    }
}
