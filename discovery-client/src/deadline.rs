//! Deadlines made from durations that callers and servers choose.
//!
//! `Instant + Duration` panics when the sum overflows, and `Duration::MAX` is a common way
//! to say "no timeout" (a server could announce a TTL as large, too). A panic in the
//! worker would stop it for good, so every deadline of the client is made here, where an
//! overflow means "never".

use std::time::Duration;

use tokio::time::Instant;

/// About thirty years: later than anything a client waits for, and far enough from the
/// limits of the clock to be added to any instant a program sees.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `from + wait`, or `None` when that is beyond what the clock can express: no deadline.
pub(crate) fn after(from: Instant, wait: Duration) -> Option<Instant> {
    from.checked_add(wait)
}

/// `from + wait`, or a point so far ahead that it is never reached when that overflows:
/// for waits that must end in an instant to sleep until, such as a backoff.
pub(crate) fn saturating_after(from: Instant, wait: Duration) -> Instant {
    after(from, wait)
        .or_else(|| after(from, FAR_FUTURE))
        .unwrap_or(from)
}

/// True once `wait` has passed since `from`; never, when `from + wait` overflows.
pub(crate) fn has_passed(from: Instant, wait: Duration, now: Instant) -> bool {
    after(from, wait).is_some_and(|deadline| deadline <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflowing_deadline_is_none_rather_than_a_panic() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), None);
        assert_eq!(
            after(now, Duration::from_secs(1)),
            Some(now + Duration::from_secs(1))
        );
    }

    #[test]
    fn a_saturating_deadline_lies_far_ahead() {
        let now = Instant::now();
        let far = saturating_after(now, Duration::MAX);
        assert!(far >= now + Duration::from_secs(365 * 24 * 60 * 60));
        assert_eq!(
            saturating_after(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
    }

    #[test]
    fn an_endless_wait_never_passes() {
        let now = Instant::now();
        assert!(!has_passed(now, Duration::MAX, now + FAR_FUTURE));
        assert!(has_passed(
            now,
            Duration::from_secs(1),
            now + Duration::from_secs(1)
        ));
        assert!(!has_passed(now, Duration::from_secs(1), now));
    }
}
