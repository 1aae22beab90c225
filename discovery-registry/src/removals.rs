//! The memory of recent removals: which ids went and why, so that a heartbeat, a deregister
//! or an update of an id that is gone can be told whether it expired, was replaced or was
//! deregistered, instead of only "not found". A client that learns its instance expired
//! knows to register again, and one that learns it was replaced knows someone else took its
//! endpoint.
//!
//! The memory is bounded twice. An entry is kept for one `max_ttl` after the removal: a
//! client hears from its instance at least once per TTL, and no TTL is longer, so a client
//! that asks later is not asking about a removal it could have acted on. And it holds at
//! most `remembered_removals` entries, the oldest forgotten first, so that a burst of
//! removals (a mass expiry) costs a fixed amount of memory; 0 remembers nothing.
//!
//! Two structures, both changed under the registry's lock with the removal itself: a queue
//! of (removed at, id) in removal order, which says what to forget next, and a map from id
//! to its reason and the number of its latest queue entry. An id can be removed more than
//! once (an id learned from elsewhere can come back and go again); its older queue entry
//! then leaves the front without taking the newer memory along, since the map names a
//! later number.

use std::collections::{HashMap, VecDeque};

use discovery_proto::RemoveReason;
use uuid::Uuid;

use crate::clock::Nanos;

/// The recent removals, at most `capacity` of them, each for `keep_for`.
#[derive(Debug)]
pub(crate) struct Removals {
    /// How long a removal is remembered, in nanoseconds (`max_ttl`).
    keep_for: Nanos,
    /// The most removals remembered at once.
    capacity: usize,
    /// (removed at, id), oldest first.
    order: VecDeque<(Nanos, Uuid)>,
    /// How many entries have ever left the front of `order`: the entry at position `i` of
    /// `order` is number `popped + i`.
    popped: u64,
    /// Hashed with std's keyed hasher, since ids from elsewhere are not the server's own.
    reasons: HashMap<Uuid, Remembered>,
}

/// What is remembered of one id.
#[derive(Debug, Clone, Copy)]
struct Remembered {
    reason: RemoveReason,
    /// The number of the id's latest entry in `Removals::order`.
    number: u64,
}

impl Removals {
    /// A memory of at most `capacity` removals, each kept for `keep_for` nanoseconds.
    pub(crate) fn new(keep_for: Nanos, capacity: usize) -> Self {
        Self {
            keep_for,
            capacity,
            order: VecDeque::new(),
            popped: 0,
            reasons: HashMap::new(),
        }
    }

    /// Remembers that `id` was removed at `now`, for `reason`, forgetting what is too old
    /// and, at capacity, the oldest removal.
    pub(crate) fn record(&mut self, now: Nanos, id: Uuid, reason: RemoveReason) {
        if self.capacity == 0 {
            return;
        }
        self.forget_old(now);
        while self.order.len() >= self.capacity {
            self.forget_oldest();
        }
        let number = self.popped.wrapping_add(self.order.len() as u64);
        self.order.push_back((now, id));
        self.reasons.insert(id, Remembered { reason, number });
    }

    /// Why `id` was removed, if that happened less than `keep_for` before `now` and is still
    /// remembered.
    pub(crate) fn reason(&self, id: &Uuid, now: Nanos) -> Option<RemoveReason> {
        let remembered = self.reasons.get(id)?;
        let position = usize::try_from(remembered.number.wrapping_sub(self.popped)).ok()?;
        let &(at, _) = self.order.get(position)?;
        (now.saturating_sub(at) < self.keep_for).then_some(remembered.reason)
    }

    /// Forgets the removals made `keep_for` or longer before `now`.
    pub(crate) fn forget_old(&mut self, now: Nanos) {
        while let Some(&(at, _)) = self.order.front() {
            if now.saturating_sub(at) < self.keep_for {
                return;
            }
            self.forget_oldest();
        }
    }

    /// Forgets the oldest removal, unless its id was removed again since.
    fn forget_oldest(&mut self) {
        let Some((_, id)) = self.order.pop_front() else {
            return;
        };
        let number = self.popped;
        self.popped = self.popped.wrapping_add(1);
        if self
            .reasons
            .get(&id)
            .is_some_and(|remembered| remembered.number == number)
        {
            self.reasons.remove(&id);
        }
    }

    /// The number of ids remembered (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        debug_assert!(self.reasons.len() <= self.order.len());
        self.reasons.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Nanos = 1_000;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn a_removal_is_remembered_for_its_time_and_then_forgotten() {
        let mut removals = Removals::new(KEEP, 10);
        removals.record(100, id(1), RemoveReason::Expired);
        assert_eq!(removals.reason(&id(1), 100), Some(RemoveReason::Expired));
        assert_eq!(
            removals.reason(&id(1), 100 + KEEP - 1),
            Some(RemoveReason::Expired)
        );
        assert_eq!(removals.reason(&id(1), 100 + KEEP), None);
        assert_eq!(removals.reason(&id(2), 100), None);
        // Forgotten in memory too, by the next record or pass.
        removals.forget_old(100 + KEEP);
        assert_eq!(removals.len(), 0);
    }

    #[test]
    fn the_oldest_are_forgotten_first_at_capacity() {
        let mut removals = Removals::new(KEEP, 3);
        for n in 1..=5 {
            removals.record(n as Nanos, id(n), RemoveReason::Deregistered);
            assert!(removals.len() <= 3);
            assert!(removals.order.len() <= 3);
        }
        assert_eq!(removals.reason(&id(1), 5), None);
        assert_eq!(removals.reason(&id(2), 5), None);
        for n in 3..=5 {
            assert_eq!(removals.reason(&id(n), 5), Some(RemoveReason::Deregistered));
        }
    }

    #[test]
    fn an_id_removed_again_keeps_its_newer_memory() {
        let mut removals = Removals::new(KEEP, 3);
        // The same id twice at the same instant, as a paused clock allows.
        removals.record(0, id(1), RemoveReason::Replaced);
        removals.record(0, id(1), RemoveReason::Deregistered);
        removals.record(0, id(2), RemoveReason::Expired);
        // The fourth pushes out the older entry of id 1, not its memory.
        removals.record(0, id(3), RemoveReason::Expired);
        assert_eq!(removals.reason(&id(1), 0), Some(RemoveReason::Deregistered));
        assert_eq!(removals.len(), 3);
        // The newer entry's age counts.
        let mut removals = Removals::new(KEEP, 3);
        removals.record(0, id(1), RemoveReason::Replaced);
        removals.record(KEEP / 2, id(1), RemoveReason::Expired);
        removals.forget_old(KEEP);
        assert_eq!(removals.reason(&id(1), KEEP), Some(RemoveReason::Expired));
    }

    #[test]
    fn a_capacity_of_zero_remembers_nothing() {
        let mut removals = Removals::new(KEEP, 0);
        removals.record(0, id(1), RemoveReason::Expired);
        assert_eq!(removals.reason(&id(1), 0), None);
        assert_eq!(removals.len(), 0);
    }
}
