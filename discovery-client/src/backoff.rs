//! Exponential backoff with equal jitter, for the waits between rounds of connection
//! attempts.
//!
//! The wait starts at [`BACKOFF_INITIAL`](crate::config::BACKOFF_INITIAL) (100 ms), doubles
//! after every failed round and is capped at the configured maximum. The jitter is "equal
//! jitter": a wait of `d` becomes a random duration in `[d/2, d]`. Full jitter (`[0, d]`)
//! spreads clients a little better but may draw waits near zero, which against a dead
//! server is close to a busy loop; equal jitter still spreads clients that lost the same
//! server at the same moment, and keeps every wait at least half its nominal length.

use std::time::Duration;

/// The state of one backoff sequence; `reset` it after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A sequence starting at `initial` and capped at `max`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// The wait before the next attempt, with jitter; each call doubles the next one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal();
        self.failures = self.failures.saturating_add(1);
        let half = nominal / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Starts the sequence again from the initial wait.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait before jitter: `initial * 2^failures`, capped.
    fn nominal(&self) -> Duration {
        let factor = 1u32 << self.failures.min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_initial_wait_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let nominal = [100, 200, 400, 800, 1600, 2000, 2000];
        for expected in nominal {
            let expected = Duration::from_millis(expected);
            let delay = backoff.next_delay();
            assert!(
                delay >= expected / 2 && delay <= expected,
                "{delay:?} outside [{:?}, {expected:?}]",
                expected / 2
            );
        }
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_secs(2));
        }
    }

    #[test]
    fn reset_starts_again() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn a_cap_below_the_initial_wait_wins() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(10));
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }
}
