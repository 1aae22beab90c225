//! What every handle of one registry shares: the configuration, the clocks, and under one
//! lock the table and the change feeds, with the steps every change is made of.
//!
//! Each change to the table goes through [`State::insert`] or [`State::remove`], which
//! publish it to the type's feed under the same lock as they make it: a client's register,
//! an expiry and a change learned from elsewhere reach the watchers alike, in the order
//! they happened.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use discovery_proto::{Instance, RemoveReason};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::RegistryConfig;
use crate::clock::{Clock, Nanos};
use crate::error::Error;
use crate::feed::{ChangeEvent, Feeds};
use crate::table::{Due, NewEntry, Removed, Slot, Table};

/// The longest TTL the registry uses: any longer one is cut to this, so that deadlines in
/// nanoseconds since the epoch can never overflow (a century is forever to a registry).
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The state behind every handle of one registry.
pub(crate) struct Core {
    pub(crate) config: RegistryConfig,
    /// `config.ttl` in nanoseconds, cut to [`MAX_TTL`].
    pub(crate) ttl: Nanos,
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
        );
        let ttl = u64::try_from(config.ttl.min(MAX_TTL).as_nanos()).unwrap_or(u64::MAX);
        Core {
            ttl,
            clock: Clock::new(),
            config,
            state: Mutex::new(State {
                ttl,
                table: Table::new(),
                feeds,
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

/// The table and the feeds, under the registry's lock.
pub(crate) struct State {
    /// `Core::ttl`, here too so that the state can tell the instances it removes.
    pub(crate) ttl: Nanos,
    pub(crate) table: Table,
    /// The change feeds of watched types; changes are published under the same lock as
    /// they are made, so a watcher sees them in the order they happened.
    pub(crate) feeds: Feeds,
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
    /// Why a register of a new endpoint of `service_type` would be refused by the caps,
    /// counting every entry held (live or not yet freed).
    pub(crate) fn refusal(&self, service_type: &str, config: &RegistryConfig) -> Option<Error> {
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

    /// Adds an entry, replacing the entry of the same endpoint if there is one, and tells
    /// the type's watchers. Returns the new entry's slot.
    pub(crate) fn insert(&mut self, clock: &Clock, entry: NewEntry<'_>) -> u32 {
        if let Some(older) = self
            .table
            .find_endpoint(entry.service_type, entry.ip, entry.port)
        {
            self.remove(clock, older, RemoveReason::Replaced);
        }
        let index = self.table.insert(entry);
        self.publish_added(clock, index);
        index
    }

    /// Tells the watchers of an entry's type that it is there.
    pub(crate) fn publish_added(&mut self, clock: &Clock, index: u32) {
        let State { table, feeds, ttl } = self;
        let slot = table.slot(index);
        feeds.publish(table.type_name(slot), || {
            ChangeEvent::Added(instance(table, clock, *ttl, slot))
        });
    }

    /// Frees an entry, and tells its type's watchers why it went.
    pub(crate) fn remove(&mut self, clock: &Clock, index: u32, reason: RemoveReason) {
        let removed = self.table.remove(index);
        publish_removed(&mut self.feeds, clock, self.ttl, removed, reason);
    }

    /// The live instances of a type.
    pub(crate) fn instances(&self, clock: &Clock, service_type: &str, now: Nanos) -> Vec<Instance> {
        self.table
            .members(service_type)
            .iter()
            .map(|&index| self.table.slot(index))
            .filter(|slot| slot.is_live(now))
            .map(|slot| instance(&self.table, clock, self.ttl, slot))
            .collect()
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

    /// Frees the entries due at `now` (at most `budget` of them) and forgets the watch
    /// feeds whose window has passed; says when to come back.
    pub(crate) fn expire_due(&mut self, clock: &Clock, now: Nanos, budget: usize) -> Expiry {
        let next_forget = clock
            .instant(now)
            .and_then(|now| self.feeds.forget_due(now));
        let State { table, feeds, ttl } = self;
        let due = table.expire_due(now, budget, |table, index| {
            let removed = table.remove(index);
            publish_removed(feeds, clock, *ttl, removed, RemoveReason::Expired);
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
fn instance(table: &Table, clock: &Clock, ttl: Nanos, slot: &Slot) -> Instance {
    Instance {
        id: slot.id,
        service_type: table.type_name(slot).to_string(),
        ip: slot.ip(),
        port: slot.port,
        metadata: slot.metadata().clone(),
        last_heartbeat: clock.shown(slot.deadline, slot.is_held(), ttl),
    }
}

/// Tells the watchers of a removed entry's type that it went, and why.
fn publish_removed(
    feeds: &mut Feeds,
    clock: &Clock,
    ttl: Nanos,
    removed: Removed,
    reason: RemoveReason,
) {
    let service_type = Arc::clone(&removed.service_type);
    feeds.publish(&service_type, || {
        ChangeEvent::Removed(removed_instance(removed, clock, ttl), reason)
    });
}

/// An entry taken out of the table, as the instance it was.
fn removed_instance(removed: Removed, clock: &Clock, ttl: Nanos) -> Instance {
    Instance {
        id: removed.id,
        service_type: removed.service_type.to_string(),
        ip: removed.ip,
        port: removed.port,
        metadata: removed.metadata.map(|m| *m).unwrap_or_default(),
        last_heartbeat: clock.shown(removed.deadline, removed.held, ttl),
    }
}
