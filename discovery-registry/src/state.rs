//! What every handle of one registry shares: the configuration, the clocks, and under one
//! lock the table, the change feeds and the memory of removals, with the steps every change
//! is made of.
//!
//! Each change to the table goes through [`State::insert`], [`State::update`] or
//! [`State::remove`], which give it the next revision and publish it to the type's feed
//! under the same lock as they make it: a client's register, an expiry and a change learned
//! from elsewhere reach the watchers alike, in the order they happened. Every removal is
//! remembered there too, with its reason, so that a later call about the id can be told why
//! it is gone.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use discovery_proto::{Instance, Metadata, RemoveReason, Revision};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use uuid::Uuid;

use crate::RegistryConfig;
use crate::clock::{Clock, Nanos};
use crate::config::MAX_TTL;
use crate::error::Error;
use crate::feed::{ChangeEvent, Feeds};
use crate::footprint;
use crate::removals::Removals;
use crate::table::{Due, NewEntry, Removed, SWEEP_STEP, Slot, Table, Timing};

/// `ttl` in nanoseconds, cut to [`MAX_TTL`], so that a deadline in nanoseconds since the
/// epoch can never overflow (a century is forever to a registry): a configuration that was
/// not validated may say more.
pub(crate) fn nanos(ttl: Duration) -> Nanos {
    u64::try_from(ttl.min(MAX_TTL).as_nanos()).unwrap_or(u64::MAX)
}

/// The state behind every handle of one registry.
pub(crate) struct Core {
    pub(crate) config: RegistryConfig,
    /// `config.ttl` in nanoseconds, cut to [`MAX_TTL`]: the TTL of a register that asks
    /// for none of its own.
    pub(crate) default_ttl: Nanos,
    pub(crate) clock: Clock,
    /// A std mutex, not tokio's: every critical section is a few map operations, never held
    /// across an `.await`, and an async mutex would only add cost to each of them.
    state: Mutex<State>,
    /// Wakes the expiry task, when an earlier deadline is filed or when this state is
    /// dropped. Outside `Core` so that the task can wait on it without keeping it alive.
    pub(crate) wake_expiry: Arc<Notify>,
    /// The number of passes the expiry task has made, so that a test can wait for the
    /// task's next pass instead of guessing how long it takes.
    pub(crate) passes: watch::Sender<u64>,
}

impl Drop for Core {
    fn drop(&mut self) {
        // `notify_one` stores a permit if the task is not waiting right now, so it cannot
        // miss this: it wakes, fails to upgrade its `Weak`, and returns.
        self.wake_expiry.notify_one();
    }
}

impl Core {
    /// The state of a new, empty registry.
    pub(crate) fn new(config: RegistryConfig) -> Core {
        let feeds = Feeds::new(
            config.watch_history,
            config.watch_queue,
            config.watch_window,
            config.max_watched_types,
            config.max_watch_bytes,
        );
        let removals = Removals::new(nanos(config.max_ttl), config.remembered_removals);
        Core {
            default_ttl: nanos(config.ttl),
            clock: Clock::new(),
            config,
            state: Mutex::new(State {
                table: Table::new(),
                feeds,
                removals,
            }),
            wake_expiry: Arc::new(Notify::new()),
            passes: watch::Sender::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock can only come from a bug between two map operations; the
        // maps are still memory-safe, so serving on beats failing every request after it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The table, the feeds and the memory of removals, under the registry's lock.
pub(crate) struct State {
    pub(crate) table: Table,
    /// The revisions, and the change feeds of watched types: changes are published under
    /// the same lock as they are made, so a watcher sees them in the order they happened.
    pub(crate) feeds: Feeds,
    /// Why the recently removed ids went, recorded with each removal.
    pub(crate) removals: Removals,
}

/// What the expiry task should do after a pass.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The batch ran out with entries still due: go again, after letting others in.
    More,
    /// Sleep until this instant, the earliest filed deadline.
    Until(Instant),
    /// Nothing is filed: sleep until woken.
    Idle,
}

impl State {
    /// Why a register of (`service_type`, `ip`, `port`) with `metadata` would be refused by
    /// the caps, counting every entry held (live or not yet freed). One that replaces the
    /// entry of its endpoint is never refused by the caps on instances, and by the byte
    /// bound only when what it adds to the entry it replaces would go over.
    pub(crate) fn refusal(
        &self,
        service_type: &str,
        ip: IpAddr,
        port: u16,
        metadata: &Metadata,
        config: &RegistryConfig,
    ) -> Option<Error> {
        let replaced = self.table.find_endpoint(service_type, ip, port);
        let (taken, added) = match replaced {
            // The old entry's reference in the deadline index stays until it is swept,
            // and the new one's is not counted: a replacement counts its difference.
            Some(old) => (
                self.table.cost_of(old),
                self.table.cost_of_new(service_type, metadata, Timing::Held),
            ),
            None => (
                0,
                self.table
                    .cost_of_new(service_type, metadata, Timing::Timed),
            ),
        };
        let bytes = self
            .table
            .bytes()
            .saturating_sub(taken)
            .saturating_add(added);
        if added > taken && bytes > config.max_registry_bytes {
            return Some(Error::RegistryBytesLimit {
                max: config.max_registry_bytes,
            });
        }
        if replaced.is_some() {
            return None;
        }
        if self.table.len() >= config.max_instances {
            return Some(Error::InstanceLimit {
                max: config.max_instances,
            });
        }
        if self.table.members(service_type).len() >= config.max_instances_per_type {
            return Some(Error::TypeLimit {
                service_type: service_type.to_owned(),
                max: config.max_instances_per_type,
            });
        }
        None
    }

    /// Why an update of the entry of slot `index` to `metadata` would be refused: when
    /// what the new metadata adds to the old would take the registry over its byte bound.
    pub(crate) fn update_refusal(
        &self,
        index: u32,
        metadata: &Metadata,
        config: &RegistryConfig,
    ) -> Option<Error> {
        let old = footprint::entry_metadata(self.table.slot(index).metadata());
        let new = footprint::entry_metadata(metadata);
        let bytes = self.table.bytes().saturating_sub(old).saturating_add(new);
        (new > old && bytes > config.max_registry_bytes).then_some(Error::RegistryBytesLimit {
            max: config.max_registry_bytes,
        })
    }

    /// Adds an entry at `now`, replacing the entry of the same endpoint if there is one,
    /// and tells the type's watchers. Returns the new entry's slot and the revision of its
    /// `Added`.
    pub(crate) fn insert(
        &mut self,
        clock: &Clock,
        now: Nanos,
        entry: NewEntry<'_>,
    ) -> (u32, Revision) {
        if let Some(older) = self
            .table
            .find_endpoint(entry.service_type, entry.ip, entry.port)
        {
            self.replace(clock, now, older);
        }
        let index = self.table.insert(entry);
        let State { table, feeds, .. } = self;
        let slot = table.slot(index);
        let revision = feeds.publish(table.type_name(slot), || {
            ChangeEvent::Added(instance(table, clock, slot))
        });
        (index, revision)
    }

    /// Replaces an entry's metadata in place (its id, endpoint and deadline stay), and tells
    /// the type's watchers. Returns the revision of the change.
    pub(crate) fn update(&mut self, clock: &Clock, index: u32, metadata: Metadata) -> Revision {
        self.table.set_metadata(index, metadata);
        let State { table, feeds, .. } = self;
        let slot = table.slot(index);
        feeds.publish(table.type_name(slot), || {
            ChangeEvent::Updated(instance(table, clock, slot))
        })
    }

    /// Frees an entry at `now`, remembers why it went, and tells its type's watchers.
    /// Returns the revision of the removal.
    pub(crate) fn remove(
        &mut self,
        clock: &Clock,
        now: Nanos,
        index: u32,
        reason: RemoveReason,
    ) -> Revision {
        let removed = self.table.remove(index);
        // Its reference in the deadline index is stale now: sweep a few, when stale ones
        // outnumber the live.
        self.table.forget_stale(SWEEP_STEP);
        self.removals.record(now, removed.id, reason);
        publish_removed(&mut self.feeds, clock, removed, reason)
    }

    /// Frees an entry that a new one takes the place of: replaced if it was live at `now`,
    /// expired if its deadline had passed, whether or not the expiry task had freed it yet.
    pub(crate) fn replace(&mut self, clock: &Clock, now: Nanos, index: u32) -> Revision {
        let reason = if self.table.slot(index).is_live(now) {
            RemoveReason::Replaced
        } else {
            RemoveReason::Expired
        };
        self.remove(clock, now, index, reason)
    }

    /// The refusal of a call about `id`, which is not in the table at `now`: with why it
    /// went, while that is remembered.
    pub(crate) fn not_found(&self, id: &Uuid, now: Nanos) -> Error {
        Error::NotFound {
            reason: self.removals.reason(id, now),
        }
    }

    /// True when an expiry pass at `now` would have something to do: an entry to free or
    /// to file again, or a feed to forget.
    pub(crate) fn has_due(&self, clock: &Clock, now: Nanos) -> bool {
        let entries = self.table.earliest_deadline().is_some_and(|at| at <= now);
        let feeds = match (clock.instant(now), self.feeds.next_forget()) {
            (Some(now), Some(at)) => at <= now,
            _ => false,
        };
        entries || feeds
    }

    /// Frees the entries due at `now` (at most `budget` of them), forgets the watch feeds
    /// whose window has passed and the removals remembered long enough; says when to come
    /// back.
    pub(crate) fn expire_due(&mut self, clock: &Clock, now: Nanos, budget: usize) -> Expiry {
        let next_forget = clock
            .instant(now)
            .and_then(|now| self.feeds.forget_due(now));
        let State {
            table,
            feeds,
            removals,
        } = self;
        removals.forget_old(now);
        let due = table.expire_due(now, budget, |table, index| {
            let removed = table.remove(index);
            removals.record(now, removed.id, RemoveReason::Expired);
            publish_removed(feeds, clock, removed, RemoveReason::Expired);
        });
        let due_at = match due {
            Due::More => return Expiry::More,
            Due::Idle => None,
            // A deadline past what an `Instant` holds is never: nothing to wake for.
            Due::Until(at) => clock.instant(at),
        };
        match (due_at, next_forget) {
            (None, None) => Expiry::Idle,
            (Some(at), None) | (None, Some(at)) => Expiry::Until(at),
            (Some(at), Some(other)) => Expiry::Until(at.min(other)),
        }
    }
}

/// The instance a slot holds, as a query lists it.
fn instance(table: &Table, clock: &Clock, slot: &Slot) -> Instance {
    Instance {
        id: slot.id,
        service_type: table.type_name(slot).to_string(),
        ip: slot.ip(),
        port: slot.port,
        metadata: slot.metadata().clone(),
        last_heartbeat: clock.shown(slot.deadline, slot.is_held(), slot.ttl),
    }
}

/// Takes the revision of a removal, and tells the watchers of the entry's type that it
/// went, and why.
fn publish_removed(
    feeds: &mut Feeds,
    clock: &Clock,
    removed: Removed,
    reason: RemoveReason,
) -> Revision {
    let service_type = Arc::clone(&removed.service_type);
    feeds.publish(&service_type, || {
        ChangeEvent::Removed(removed_instance(removed, clock), reason)
    })
}

/// An entry taken out of the table, as the instance it was.
fn removed_instance(removed: Removed, clock: &Clock) -> Instance {
    Instance {
        id: removed.id,
        service_type: removed.service_type.to_string(),
        ip: removed.ip,
        port: removed.port,
        metadata: removed.metadata.map(|m| *m).unwrap_or_default(),
        last_heartbeat: clock.shown(removed.deadline, removed.held, removed.ttl),
    }
}
