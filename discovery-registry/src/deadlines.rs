//! The deadline index: references to slots, in buckets of one millisecond, earliest first.
//!
//! An entry is filed once per TTL at most: a heartbeat only moves the deadline in its slot,
//! and when the bucket comes due the expiry pass frees the entry or files it again under its
//! real deadline. A reference carries the slot's generation, so that one to a slot freed
//! (or reused) since is recognised and dropped: a deregister does not search the index.
//!
//! Such stale references would otherwise stay until their old deadline (with a TTL of an
//! hour, every register and deregister pair would leave 8 bytes behind for an hour), so the
//! index can be swept: the table starts a sweep once stale references outnumber live ones,
//! and each removal then carries it on by a few references, which keeps the index within
//! about twice the live entries while no call does more than a bounded amount of work.

use std::collections::BTreeMap;

use crate::clock::Nanos;
use crate::footprint;

/// The width of a bucket, in nanoseconds (1 ms).
const TICK: Nanos = 1_000_000;

/// A slot number and the generation it had when it was filed.
pub(crate) type Reference = (u32, u32);

/// Buckets of references by the millisecond their deadlines round up to.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    buckets: BTreeMap<u64, Vec<Reference>>,
    /// The references filed, in every bucket.
    references: usize,
    /// Where a sweep in progress goes on from: a bucket, and how many of its references
    /// were kept already.
    sweep: Option<(u64, usize)>,
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
        self.references += 1;
    }

    /// The number of references filed, live or stale.
    pub(crate) fn len(&self) -> usize {
        self.references
    }

    /// What the index holds in memory (see [`footprint::deadline_index`]).
    pub(crate) fn bytes(&self) -> usize {
        footprint::deadline_index(self.buckets.len(), self.references)
    }

    /// True while a sweep is in progress.
    pub(crate) fn sweeping(&self) -> bool {
        self.sweep.is_some()
    }

    /// Starts a sweep from the earliest bucket, unless one is in progress.
    pub(crate) fn start_sweep(&mut self) {
        if self.sweep.is_none() {
            self.sweep = Some((0, 0));
        }
    }

    /// Carries a sweep in progress on by up to `budget` references: those `current` says
    /// are stale are dropped (the order in a bucket does not matter), an emptied bucket
    /// goes, and one left under half full gives its memory back. The sweep ends at the
    /// last bucket. References filed meanwhile are live, and one of a bucket taken and put
    /// back may be skipped: a sweep only frees memory, and the next one finds what it left.
    pub(crate) fn sweep(&mut self, mut budget: usize, mut current: impl FnMut(Reference) -> bool) {
        let Some((mut tick, mut kept)) = self.sweep else {
            return;
        };
        while budget > 0 {
            let Some((&at, bucket)) = self.buckets.range_mut(tick..).next() else {
                self.sweep = None;
                return;
            };
            if at != tick {
                (tick, kept) = (at, 0);
            }
            while kept < bucket.len() && budget > 0 {
                budget -= 1;
                if current(bucket[kept]) {
                    kept += 1;
                } else {
                    bucket.swap_remove(kept);
                    self.references -= 1;
                }
            }
            if kept < bucket.len() {
                break;
            }
            if bucket.is_empty() {
                self.buckets.remove(&at);
            } else if bucket.len() < bucket.capacity() / 2 {
                bucket.shrink_to_fit();
            }
            match at.checked_add(1) {
                Some(next) => (tick, kept) = (next, 0),
                None => {
                    self.sweep = None;
                    return;
                }
            }
        }
        self.sweep = Some((tick, kept));
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
        let bucket = entry.remove();
        self.references -= bucket.len();
        Ok((tick, bucket))
    }

    /// Puts back the part of a taken bucket that was not handled.
    pub(crate) fn put_back(&mut self, tick: u64, rest: Vec<Reference>) {
        self.references += rest.len();
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
        assert_eq!(deadlines.len(), 0);
    }

    #[test]
    fn a_sweep_drops_stale_references_a_budget_at_a_time() {
        let mut deadlines = Deadlines::default();
        // 1,000 references in one bucket and one each in 10 more; the odd slots are stale.
        for slot in 0..1_000 {
            deadlines.file((slot, 0), TICK);
        }
        for slot in 1_000..1_010 {
            deadlines.file((slot, 0), (2 + u64::from(slot)) * TICK);
        }
        assert_eq!(deadlines.len(), 1_010);
        let before = deadlines.bytes();
        deadlines.sweep(usize::MAX, |_| false);
        assert_eq!(deadlines.len(), 1_010, "no sweep was started");
        deadlines.start_sweep();
        let mut examined = 0;
        while deadlines.sweeping() {
            let mut calls = 0;
            deadlines.sweep(7, |(slot, _)| {
                calls += 1;
                slot % 2 == 0
            });
            assert!(calls <= 7, "a sweep step examines no more than its budget");
            examined += calls;
        }
        assert_eq!(examined, 1_010);
        assert_eq!(deadlines.len(), 505);
        assert!(deadlines.bytes() < before);
        let (_, first) = deadlines.take_due(TICK).expect("due");
        assert_eq!(first.len(), 500);
        assert!(first.iter().all(|(slot, _)| slot % 2 == 0));
        assert!(
            first.capacity() < 1_000,
            "a bucket left under half full is shrunk"
        );
        // The lone stale buckets went; the lone live ones stay.
        let mut rest = 0;
        while let Ok((_, bucket)) = deadlines.take_due(u64::MAX) {
            rest += bucket.len();
        }
        assert_eq!(rest, 5);
        assert_eq!(deadlines.len(), 0);
    }
}
