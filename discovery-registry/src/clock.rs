//! The registry's two clocks, read from one start: deadlines are monotonic nanoseconds
//! since an epoch on [`tokio::time::Instant`] (so that tests can pause time), and the
//! wall-clock time shown for a deadline is the wall clock of the start plus as much.
//!
//! The wall-clock time of an instance's last heartbeat is therefore not stored: it is
//! derived from its deadline, to the millisecond (what the wire carries), and costs no
//! bytes per entry.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Nanoseconds since the registry's epoch.
pub(crate) type Nanos = u64;

/// The registry's epoch on both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
    wall_epoch: DateTime<Utc>,
    /// `wall_epoch` in milliseconds since the Unix epoch.
    wall_epoch_ms: i64,
}

impl Clock {
    /// A clock whose epoch is now.
    pub(crate) fn new() -> Self {
        let wall_epoch = Utc::now();
        Self {
            epoch: Instant::now(),
            wall_epoch,
            wall_epoch_ms: wall_epoch.timestamp_millis(),
        }
    }

    /// Now, in nanoseconds since the epoch.
    pub(crate) fn now(&self) -> Nanos {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant of `at`, or `None` past what an `Instant` can hold.
    pub(crate) fn instant(&self, at: Nanos) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_nanos(at))
    }

    /// [`Clock::wall`] in milliseconds since the Unix epoch, with integers only: what a
    /// query answer carries, computed for every instance it lists.
    pub(crate) fn wall_ms(&self, at: Nanos) -> i64 {
        let since_epoch = i64::try_from(at / 1_000_000).unwrap_or(i64::MAX);
        self.wall_epoch_ms.saturating_add(since_epoch)
    }

    /// The wall-clock time of `at`, to the millisecond.
    #[cfg(test)]
    pub(crate) fn wall(&self, at: Nanos) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.wall_ms(at)).unwrap_or(self.wall_epoch)
    }

    /// The last heartbeat an entry shows, in milliseconds since the Unix epoch: a timed
    /// entry's deadline less its own TTL, on this clock; a held entry keeps the time it was
    /// given ([`Clock::held`]).
    pub(crate) fn shown_ms(&self, deadline: Nanos, held: bool, ttl: Nanos) -> i64 {
        if held {
            i64::try_from(deadline / 1_000_000).unwrap_or(i64::MAX)
        } else {
            self.wall_ms(deadline.saturating_sub(ttl))
        }
    }

    /// [`Clock::shown_ms`] as a time.
    pub(crate) fn shown(&self, deadline: Nanos, held: bool, ttl: Nanos) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.shown_ms(deadline, held, ttl))
            .unwrap_or(self.wall_epoch)
    }

    /// What a held entry keeps in its deadline field: the wall-clock time it shows, in
    /// nanoseconds since the Unix epoch (0 for a time before it), since a held entry has
    /// no deadline here and its time may be older than this clock's epoch.
    pub(crate) fn held(wall: DateTime<Utc>) -> Nanos {
        u64::try_from(wall.timestamp_millis())
            .unwrap_or(0)
            .saturating_mul(1_000_000)
    }
}
