//! The deadline index: references to slots, in buckets of one millisecond, earliest first.
//!
//! An entry is filed once per TTL at most: a heartbeat only moves the deadline in its slot,
//! and when the bucket comes due the expiry pass frees the entry or files it again under its
//! real deadline. A reference carries the slot's generation, so that one to a slot freed
//! (or reused) since is recognised and dropped: a deregister does not search the index.

use std::collections::BTreeMap;

use crate::clock::Nanos;

/// The width of a bucket, in nanoseconds (1 ms).
const TICK: Nanos = 1_000_000;

/// A slot number and the generation it had when it was filed.
pub(crate) type Reference = (u32, u32);

/// Buckets of references by the millisecond their deadlines round up to.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    buckets: BTreeMap<u64, Vec<Reference>>,
}

/// The bucket of a deadline: deadlines round up, so a bucket is never early.
fn tick_of(deadline: Nanos) -> u64 {
    deadline.div_ceil(TICK)
}

impl Deadlines {
    /// Files `reference` under `deadline`.
    pub(crate) fn file(&mut self, reference: Reference, deadline: Nanos) {
        self.buckets
            .entry(tick_of(deadline))
            .or_default()
            .push(reference);
    }

    /// Takes the earliest bucket if it is due at `now`; otherwise says when it will be
    /// (`Err(Some(at))`), or that nothing is filed (`Err(None)`).
    pub(crate) fn take_due(&mut self, now: Nanos) -> Result<(u64, Vec<Reference>), Option<Nanos>> {
        let Some(entry) = self.buckets.first_entry() else {
            return Err(None);
        };
        let at = entry.key().saturating_mul(TICK);
        if at > now {
            return Err(Some(at));
        }
        let tick = *entry.key();
        Ok((tick, entry.remove()))
    }

    /// Puts back the part of a taken bucket that was not handled.
    pub(crate) fn put_back(&mut self, tick: u64, rest: Vec<Reference>) {
        self.buckets.entry(tick).or_default().extend(rest);
    }

    /// When the earliest bucket comes due, if anything is filed.
    pub(crate) fn earliest(&self) -> Option<Nanos> {
        self.buckets
            .first_key_value()
            .map(|(&tick, _)| tick.saturating_mul(TICK))
    }

    /// True when `deadline` falls in the earliest bucket.
    pub(crate) fn is_earliest(&self, deadline: Nanos) -> bool {
        self.buckets.first_key_value().map(|(&tick, _)| tick) == Some(tick_of(deadline))
    }

    /// How many times `reference` is filed, and whether one of them is no later than
    /// `deadline` (for tests).
    #[cfg(test)]
    pub(crate) fn filed(&self, reference: Reference, deadline: Nanos) -> (usize, bool) {
        let count = self
            .buckets
            .values()
            .flatten()
            .filter(|&&r| r == reference)
            .count();
        let in_time = self
            .buckets
            .iter()
            .find(|(_, refs)| refs.contains(&reference))
            .is_some_and(|(&tick, _)| tick <= tick_of(deadline));
        (count, in_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_and_come_due_in_order() {
        let mut deadlines = Deadlines::default();
        deadlines.file((1, 0), 2 * TICK + 1);
        deadlines.file((2, 0), TICK);
        assert_eq!(deadlines.earliest(), Some(TICK));
        assert!(deadlines.is_earliest(TICK - 1));
        assert_eq!(deadlines.take_due(TICK - 1), Err(Some(TICK)));
        assert_eq!(deadlines.take_due(TICK), Ok((1, vec![(2, 0)])));
        // 2 ms + 1 ns rounds up to the 3 ms bucket.
        assert_eq!(deadlines.take_due(2 * TICK + 1), Err(Some(3 * TICK)));
        let (tick, refs) = deadlines.take_due(3 * TICK).expect("due");
        deadlines.put_back(tick, refs);
        assert_eq!(deadlines.earliest(), Some(3 * TICK));
        assert!(deadlines.take_due(3 * TICK).is_ok());
        assert_eq!(deadlines.take_due(u64::MAX), Err(None));
    }
}
