//! The registry's handle: register, heartbeat, deregister, query and watch, with no I/O.
//!
//! [`Registry`] is a cheap-to-clone handle around shared state (the private `state` module), in the
//! manner of mini-redis's `Db`. It does no I/O, so it can be tested alone with tokio's
//! paused clock, and a frontend of any protocol calls the same methods.
//!
//! # Liveness
//!
//! An instance is live while less than the TTL has passed since its register or its last
//! heartbeat, measured on [`tokio::time::Instant`] (in nanoseconds since the registry's
//! epoch). From its deadline on it is gone for every method at once (a query skips it, a
//! heartbeat or a deregister answers not found) even in the moment before the expiry task
//! has freed it, so no answer ever depends on whether that task has run yet.
//!
//! # Limits
//!
//! The caps count live instances only. Expired entries that the task has not freed yet are
//! freed by a register that would otherwise be refused, before it decides (in bounded
//! batches, letting others in between them); a register that replaces an entry of the same
//! endpoint never grows the count and is never refused by the caps.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, MutexGuard};

use discovery_proto::{Instance, InstanceRef, Metadata, RemoveReason, Revision};
use uuid::Uuid;

use crate::clock::{Clock, Nanos};
use crate::feed::WatchStart;
use crate::state::{Core, State};
use crate::subscription::Subscription;
use crate::table::{NewEntry, Timing};
use crate::{Error, RegistryConfig, expiry, rules};

/// A handle to the registry. Clones share the same instances; the expiry task ends by
/// itself once the last handle is dropped.
///
/// ```
/// use std::time::Duration;
/// use discovery_registry::{Metadata, Registry, RegistryConfig};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), discovery_registry::Error> {
/// let registry = Registry::new(RegistryConfig::default());
/// let id = registry.register("billing", "10.0.0.1".parse().unwrap(), 8080, Metadata::new())?;
/// assert_eq!(registry.query("billing")[0].id, id);
///
/// tokio::time::advance(Duration::from_secs(4)).await;
/// assert!(registry.heartbeat(id));
/// tokio::time::advance(Duration::from_secs(5)).await;
/// // Five seconds without a heartbeat: gone.
/// assert!(registry.query("billing").is_empty());
/// assert!(!registry.heartbeat(id));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Registry {
    pub(crate) core: Arc<Core>,
}

impl Registry {
    /// A new, empty registry with `config`'s TTL and limits.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (with its time driver), since it spawns the expiry task.
    pub fn new(config: RegistryConfig) -> Registry {
        let registry = Registry::without_expiry_task(config);
        let wake = Arc::clone(&registry.core.wake_expiry);
        tokio::spawn(expiry::run(Arc::downgrade(&registry.core), wake));
        registry
    }

    /// The registry before its expiry task is spawned: the unit tests use it to reach
    /// states the task would clean up before a test could look.
    pub(crate) fn without_expiry_task(config: RegistryConfig) -> Registry {
        Registry {
            core: Arc::new(Core::new(config)),
        }
    }

    /// The TTL and limits this registry enforces.
    pub fn config(&self) -> &RegistryConfig {
        &self.core.config
    }

    /// Registers an instance and returns its new id, live for one TTL.
    ///
    /// Registering the same (`service_type`, `ip`, `port`) again replaces the older entry:
    /// its id then answers not found, and a query lists the endpoint once, with the new id
    /// and metadata.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidServiceType`], [`Error::InvalidAddress`], [`Error::InvalidPort`] or
    /// [`Error::InvalidMetadata`] when an argument breaks a rule or a limit of the
    /// configuration (an instance too large for one frame of a query answer among them);
    /// [`Error::InstanceLimit`] or [`Error::TypeLimit`] when the registry or the type
    /// already holds its maximum of live instances (never for a replacement).
    pub fn register(
        &self,
        service_type: &str,
        ip: IpAddr,
        port: u16,
        metadata: Metadata,
    ) -> Result<Uuid, Error> {
        let config = &self.core.config;
        rules::check_instance(config, service_type, ip, port, &metadata)?;

        let id = Uuid::new_v4();
        let clock = self.core.clock;
        let now = clock.now();
        let deadline = now.saturating_add(self.core.ttl);

        // At a cap, free what is due first (in batches), then decide on what is left.
        let mut state = expiry::until(&self.core, now, |state| {
            state.table.find_endpoint(service_type, ip, port).is_some()
                || state.refusal(service_type, config).is_none()
        });
        if state.table.find_endpoint(service_type, ip, port).is_none()
            && let Some(refusal) = state.refusal(service_type, config)
        {
            return Err(refusal);
        }
        state.insert(
            &clock,
            NewEntry {
                id,
                service_type,
                ip,
                port,
                metadata,
                deadline,
                timing: Timing::Timed,
            },
        );
        // Every other filed deadline is at most its own register's `now + ttl`, so the new
        // entry is rarely the earliest (in practice when the index was empty), and the task
        // is woken only then.
        let earliest = state.table.is_earliest(deadline);
        drop(state);
        if earliest {
            self.core.wake_expiry.notify_one();
        }
        Ok(id)
    }

    /// Keeps an instance live for another TTL from now. False when the id is unknown or
    /// the instance has expired: it must register again. An entry held for elsewhere
    /// ([`Registry::upsert`] with [`Lifetime::Held`]) is live, and stays as it is.
    pub fn heartbeat(&self, id: Uuid) -> bool {
        let clock = self.core.clock;
        let now = clock.now();
        let mut state = self.core.lock();
        let Some(index) = state.table.find(&id) else {
            return false;
        };
        let slot = state.table.slot_mut(index);
        if slot.is_held() {
            true
        } else if slot.deadline > now {
            // The deadline index keeps the older deadline; the expiry pass files the entry
            // again when that one comes due.
            slot.deadline = now.saturating_add(self.core.ttl);
            true
        } else {
            // Expired but not freed yet: free it now, the task would at this instant.
            state.remove(&clock, index, RemoveReason::Expired);
            false
        }
    }

    /// Removes an instance at once. False when the id is unknown or the instance has
    /// expired.
    pub fn deregister(&self, id: Uuid) -> bool {
        self.remove(id, RemoveReason::Deregistered)
    }

    /// Removes an instance at once, telling its watchers `reason`: a client's deregister,
    /// or a removal learned from elsewhere (a replicated catalogue saying it expired, was
    /// replaced or deregistered there). False when the id is unknown or the instance has
    /// expired here (its watchers are then told it expired).
    pub fn remove(&self, id: Uuid, reason: RemoveReason) -> bool {
        let clock = self.core.clock;
        let now = clock.now();
        let mut state = self.core.lock();
        let Some(index) = state.table.find(&id) else {
            return false;
        };
        let live = state.table.slot(index).is_live(now);
        let reason = if live { reason } else { RemoveReason::Expired };
        state.remove(&clock, index, reason);
        live
    }

    /// Adds or updates an instance learned from elsewhere (a store that replicates the
    /// catalogue), under the id it has there, with every rule of a register but the caps:
    /// a replica must hold what exists, or it would answer differently from its peers.
    ///
    /// - An unknown id is added, replacing the entry of the same endpoint if there is one,
    ///   as a register does.
    /// - A known id at the same endpoint is updated in place: its metadata, and its
    ///   lifetime. Its watchers see a changed metadata as the old instance `Replaced`, then
    ///   the new one `Added` (with the same id), until the protocol has an update event.
    /// - A known id at another endpoint moves: the old entry goes (`Replaced`) and the new
    ///   one comes.
    ///
    /// With [`Lifetime::Ttl`] the instance lives for one TTL from now, as if registered or
    /// heartbeated here; with [`Lifetime::Held`] it lives until it is removed, and shows
    /// `instance.last_heartbeat` as its last heartbeat.
    ///
    /// # Errors
    ///
    /// The rule the instance breaks, as for [`Registry::register`]; nothing changes then.
    pub fn upsert(&self, instance: Instance, lifetime: Lifetime) -> Result<(), Error> {
        let Instance {
            id,
            service_type,
            ip,
            port,
            metadata,
            last_heartbeat,
        } = instance;
        rules::check_instance(&self.core.config, &service_type, ip, port, &metadata)?;
        let clock = self.core.clock;
        let (deadline, timing) = match lifetime {
            Lifetime::Ttl => (clock.now().saturating_add(self.core.ttl), Timing::Timed),
            Lifetime::Held => (Clock::held(last_heartbeat), Timing::Held),
        };
        let mut state = self.core.lock();
        let same = state
            .table
            .find(&id)
            .filter(|&index| state.table.find_endpoint(&service_type, ip, port) == Some(index));
        // The same id at the same endpoint with the same metadata: only its lifetime.
        if let Some(index) = same
            && *state.table.slot(index).metadata() == metadata
        {
            state.table.set_timing(index, deadline, timing);
            self.wake_if_earliest(state, deadline, timing);
            return Ok(());
        }
        // Otherwise the old entry of this id goes (replaced), and the new one comes.
        if let Some(old) = state.table.find(&id) {
            state.remove(&clock, old, RemoveReason::Replaced);
        }
        state.insert(
            &clock,
            NewEntry {
                id,
                service_type: &service_type,
                ip,
                port,
                metadata,
                deadline,
                timing,
            },
        );
        self.wake_if_earliest(state, deadline, timing);
        Ok(())
    }

    /// Releases the lock, and wakes the expiry task if a timed `deadline` is now the
    /// earliest filed.
    fn wake_if_earliest(&self, state: MutexGuard<'_, State>, deadline: Nanos, timing: Timing) {
        let earliest = timing == Timing::Timed && state.table.is_earliest(deadline);
        drop(state);
        if earliest {
            self.core.wake_expiry.notify_one();
        }
    }
    /// Every live instance of `service_type`, in no particular order.
    ///
    /// Its cost is proportional to the instances of that type, whatever the registry holds
    /// besides.
    pub fn query(&self, service_type: &str) -> Vec<Instance> {
        let clock = self.core.clock;
        let now = clock.now();
        self.core.lock().instances(&clock, service_type, now)
    }

    /// Visits every live instance of `service_type`, in no particular order, as borrowed
    /// views that encode like [`Instance`]: a query answer is written from them without
    /// copying the instances first. The lock is held while `visit` runs, so it must be
    /// quick (encoding is).
    pub fn query_each(&self, service_type: &str, mut visit: impl FnMut(InstanceRef<'_>)) {
        let clock = self.core.clock;
        let now = clock.now();
        let state = self.core.lock();
        let table = &state.table;
        for &index in table.members(service_type) {
            let slot = table.slot(index);
            if slot.is_live(now) {
                visit(InstanceRef {
                    id: slot.id,
                    service_type: table.type_name(slot),
                    ip: slot.ip(),
                    port: slot.port,
                    metadata: slot.metadata(),
                    last_heartbeat_ms: clock.shown_ms(slot.deadline, slot.is_held(), state.ttl),
                });
            }
        }
    }

    /// Subscribes to the changes of `service_type`.
    ///
    /// Without `since`, or with a `since` that cannot be resumed (from another run of the
    /// server, or older than the type's history), the subscription starts with a snapshot
    /// of the live instances; with a resumable `since`, with every change after it. Either
    /// way the changes that follow come through the [`Subscription`] stream, with nothing
    /// lost or doubled between the start and them: both are taken under one lock.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidServiceType`] when the type breaks the rules of a register's type.
    pub fn watch(
        &self,
        service_type: &str,
        since: Option<Revision>,
    ) -> Result<Subscription, Error> {
        self.subscribe(service_type, since, since.is_some())
    }

    /// A new subscription to the same type as `subscription` that starts with a snapshot
    /// marked as a reset: what a watcher that fell behind its queue is sent instead.
    ///
    /// # Errors
    ///
    /// As [`Registry::watch`].
    pub fn resubscribe(&self, subscription: &Subscription) -> Result<Subscription, Error> {
        self.subscribe(subscription.service_type(), None, true)
    }

    fn subscribe(
        &self,
        service_type: &str,
        since: Option<Revision>,
        reset: bool,
    ) -> Result<Subscription, Error> {
        rules::check_service_type(service_type, &self.core.config)?;
        let clock = self.core.clock;
        let now = clock.now();
        // Free what is due at `now` first (in batches), so that the snapshot and the
        // changes agree on every instance: none can be missing from both, or be removed
        // without having been seen. An entry that comes due between two batches is in the
        // snapshot, and its removal among the changes.
        let mut state = expiry::until(&self.core, now, |_| false);
        let service_type: Arc<str> = match state.table.interned(service_type) {
            Some(interned) => Arc::clone(interned),
            None => Arc::from(service_type),
        };
        let (start, changes) =
            state
                .feeds
                .subscribe(&service_type, since, tokio::time::Instant::now());
        let start = match start {
            Ok(resume) => resume,
            Err(revision) => WatchStart::Snapshot {
                revision,
                instances: state.instances(&clock, &service_type, now),
                reset,
            },
        };
        drop(state);
        // A feed waiting out its window may have been taken up again: the task's next
        // wake-up is recomputed.
        self.core.wake_expiry.notify_one();
        Ok(Subscription::new(&self.core, service_type, start, changes))
    }

    /// Frees now what the expiry task would free at this instant, in the same bounded
    /// batches. The task does this by itself; a test on a paused clock calls it to see the
    /// effect of an expiry without depending on when the task gets to run.
    pub fn expire_due_now(&self) {
        let now = self.core.clock.now();
        drop(expiry::until(&self.core, now, |_| false));
    }

    /// Waits until the expiry task itself has done everything due at this instant: freed
    /// the entries whose deadline has come, filed again those heartbeated since, forgotten
    /// the feeds whose window has passed. Returns at once when nothing is due.
    ///
    /// For tests on a paused clock that show what the task does on its own, without
    /// guessing how many times to yield to it. A task that never runs makes this wait
    /// forever, so such a test bounds it with a timeout.
    pub async fn expiry_caught_up(&self) {
        let clock = self.core.clock;
        let mut passes = self.core.passes.subscribe();
        loop {
            passes.mark_unchanged();
            if !self.core.lock().has_due(&clock, clock.now()) {
                return;
            }
            if passes.changed().await.is_err() {
                return;
            }
        }
    }

    /// The number of types with a watch feed (watched now, or within the window).
    pub fn watched_types(&self) -> usize {
        self.core.lock().feeds.len()
    }

    /// The number of entries held in memory. An expired entry the expiry task has not freed
    /// yet still counts, so this shows when memory is freed rather than what is live.
    pub fn len(&self) -> usize {
        self.core.lock().table.len()
    }

    /// True when no entry is held in memory (see [`Registry::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long an instance learned from elsewhere lives here ([`Registry::upsert`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// One TTL from now, renewed by heartbeats here: the instance is this registry's to
    /// time, as if its client had registered here.
    Ttl,
    /// Until it is removed: another server times it, and says when it is gone.
    Held,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! What the public API cannot show: the indexes stay consistent with each other, empty
    //! types are removed, and the paths taken only before the expiry task has run.

    use std::net::Ipv4Addr;

    use tokio::time::advance;

    use super::*;
    use crate::state::Expiry;
    use std::time::Duration;
    use tokio::time::Instant;

    const TTL: Duration = Duration::from_secs(5);

    fn config() -> RegistryConfig {
        RegistryConfig {
            ttl: TTL,
            max_instances: 3,
            max_instances_per_type: 2,
            ..RegistryConfig::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn register(registry: &Registry, service_type: &str, last: u8) -> Uuid {
        registry
            .register(service_type, ip(last), 80, Metadata::new())
            .expect("valid and under the caps")
    }

    fn assert_consistent(registry: &Registry) {
        registry.core.lock().table.assert_consistent();
    }

    fn type_count(registry: &Registry) -> usize {
        registry.core.lock().table.type_count()
    }

    fn expire_due(registry: &Registry, budget: usize) -> Expiry {
        let clock = registry.core.clock;
        registry.core.lock().expire_due(&clock, clock.now(), budget)
    }

    #[tokio::test(start_paused = true)]
    async fn indexes_stay_consistent_and_empty_types_go() {
        let registry = Registry::new(config());
        let a1 = register(&registry, "a", 1);
        let a2 = register(&registry, "a", 2);
        let b1 = register(&registry, "b", 1);
        assert_consistent(&registry);
        assert_eq!(type_count(&registry), 2);

        let a1_again = register(&registry, "a", 1);
        assert_consistent(&registry);
        assert!(!registry.heartbeat(a1));

        assert!(registry.deregister(b1));
        assert_consistent(&registry);
        assert_eq!(type_count(&registry), 1);

        advance(Duration::from_secs(2)).await;
        assert!(registry.heartbeat(a2));
        advance(TTL - Duration::from_secs(2)).await;
        registry.expire_due_now();
        // a1_again expired; a2 was filed again under its new deadline.
        assert!(!registry.heartbeat(a1_again));
        assert_eq!(registry.len(), 1);

        assert!(registry.deregister(a2));
        assert_eq!(type_count(&registry), 0);
        assert!(registry.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn slots_and_types_are_reused() {
        let registry = Registry::new(config());
        for round in 0..50 {
            let a = register(&registry, "a", 1);
            let b = register(&registry, if round % 2 == 0 { "b" } else { "c" }, 2);
            assert_consistent(&registry);
            assert!(registry.deregister(a));
            assert!(registry.deregister(b));
            assert_consistent(&registry);
        }
        let state = registry.core.lock();
        assert!(state.table.slot_count() <= 2, "freed slots are reused");
    }

    #[tokio::test(start_paused = true)]
    async fn the_expiry_pass_frees_and_files_again() {
        let registry = Registry::without_expiry_task(config());
        let stays = register(&registry, "a", 1);
        let goes = register(&registry, "a", 2);
        advance(TTL - Duration::from_millis(1)).await;
        assert!(registry.heartbeat(stays));
        advance(Duration::from_millis(1)).await;
        let next = expire_due(&registry, usize::MAX);
        let expected = Instant::now() + TTL - Duration::from_millis(1);
        assert_eq!(next, Expiry::Until(expected));
        assert!(!registry.heartbeat(goes));
        assert_eq!(registry.len(), 1);
        assert_consistent(&registry);
    }

    #[tokio::test(start_paused = true)]
    async fn the_expiry_pass_works_in_batches() {
        let registry = Registry::without_expiry_task(RegistryConfig {
            ttl: TTL,
            ..RegistryConfig::default()
        });
        for last in 1..=5 {
            register(&registry, "a", last);
        }
        advance(TTL).await;
        assert_eq!(expire_due(&registry, 2), Expiry::More);
        assert_eq!(registry.len(), 3);
        assert_consistent(&registry);
        assert_eq!(expire_due(&registry, 2), Expiry::More);
        assert_eq!(expire_due(&registry, 2), Expiry::Idle);
        assert!(registry.is_empty());
        assert_consistent(&registry);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_entry_not_yet_freed_is_gone_to_every_method() {
        let registry = Registry::without_expiry_task(config());
        let by_heartbeat = register(&registry, "a", 1);
        let by_deregister = register(&registry, "a", 2);
        let by_query = register(&registry, "b", 1);
        advance(TTL).await;
        assert_eq!(registry.len(), 3);

        assert!(registry.query("b").is_empty());
        assert!(!registry.heartbeat(by_heartbeat));
        assert!(!registry.deregister(by_deregister));
        // The heartbeat and the deregister freed theirs; the query left its one to the task.
        assert_eq!(registry.len(), 1);
        assert!(!registry.heartbeat(by_query));
        assert!(registry.is_empty());
        assert_consistent(&registry);
    }

    #[tokio::test(start_paused = true)]
    async fn a_register_at_a_cap_frees_expired_entries_first() {
        let registry = Registry::without_expiry_task(config());
        register(&registry, "a", 1);
        register(&registry, "a", 2);
        register(&registry, "b", 1);
        advance(TTL).await;
        // Both caps are reached by entries held, none of them live.
        let id = register(&registry, "a", 3);
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.query("a")[0].id, id);
        assert_consistent(&registry);
    }

    #[tokio::test(start_paused = true)]
    async fn replacing_an_expired_entry_at_the_cap_is_a_plain_register() {
        let registry = Registry::without_expiry_task(config());
        let old = register(&registry, "a", 1);
        advance(TTL).await;
        let new = register(&registry, "a", 1);
        assert!(!registry.heartbeat(old));
        assert_eq!(registry.query("a").len(), 1);
        assert_eq!(registry.query("a")[0].id, new);
        assert_eq!(registry.len(), 1);
        assert_consistent(&registry);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wall_clock_time_is_the_register_or_the_heartbeat() {
        let registry = Registry::new(config());
        let start = registry.core.clock.wall(0);
        let id = register(&registry, "a", 1);
        assert_eq!(registry.query("a")[0].last_heartbeat, start);
        advance(Duration::from_millis(1500)).await;
        assert!(registry.heartbeat(id));
        let shown = registry.query("a")[0].last_heartbeat;
        assert_eq!(shown - start, chrono::TimeDelta::milliseconds(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_register_at_a_cap_frees_more_than_one_batch_of_expired_entries() {
        // More due entries than one hold of the lock handles, most of other types: the
        // register frees what it needs in batches, and is accepted.
        let registry = Registry::without_expiry_task(RegistryConfig {
            ttl: TTL,
            max_instances: 3_000,
            max_instances_per_type: 500,
            ..RegistryConfig::default()
        });
        let ip_of = |n: u32| IpAddr::from(n.to_be_bytes());
        for n in 0..3_000u32 {
            let service_type = format!("type-{}", n % 6);
            registry
                .register(&service_type, ip_of(0x0a00_0000 + n), 80, Metadata::new())
                .unwrap();
        }
        advance(TTL).await;
        const { assert!(3_000 > 2 * crate::expiry::BATCH) };
        assert_eq!(registry.len(), 3_000);
        let id = registry
            .register("type-0", ip(1), 8080, Metadata::new())
            .unwrap();
        assert_eq!(registry.query("type-0")[0].id, id);
        assert_consistent(&registry);
    }
}
