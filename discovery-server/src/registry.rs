//! The in-memory registry: instances, their TTLs, and the one task that expires them.
//!
//! [`Registry`] is a cheap-to-clone handle around shared state, in the manner of
//! mini-redis's `Db`. It does no I/O, so it can be tested alone with tokio's paused clock,
//! and later be put behind a trait next to a distributed backend. The entries themselves
//! live in a compact table of slots and indexes (the private `table` module).
//!
//! # Liveness
//!
//! An instance is live while less than the TTL has passed since its register or its last
//! heartbeat, measured on [`tokio::time::Instant`] (in nanoseconds since the registry's
//! epoch). From its deadline on it is gone for every method at once (a query skips it, a
//! heartbeat or a deregister answers not found) even in the moment before the expiry task
//! has freed it, so no answer ever depends on whether that task has run yet.
//!
//! The wall-clock [`Instance::last_heartbeat`] is only shown to people. It is not stored:
//! it is the deadline less the TTL, read on the wall clock of the registry's start plus the
//! monotonic time since, which is the register's or the heartbeat's time and costs no
//! bytes per entry.
//!
//! # Expiry
//!
//! Every entry is filed once in a deadline index (the table's wheel of millisecond buckets),
//! and one background task sleeps until the earliest bucket. Heartbeats are by far the most
//! frequent request, so a heartbeat only stores the new deadline in its slot and leaves the
//! index alone: when a bucket comes due, the task compares each entry's real deadline with
//! now and either frees the entry or files it again under its real deadline. Each entry
//! costs the task one visit per TTL at most, however often it heartbeats; a bucket is never
//! later than its entries' deadlines by more than the millisecond it rounds up to.
//!
//! # Limits
//!
//! The caps count live instances only. Expired entries that the task has not freed yet are
//! freed by a register that would otherwise be refused, before it decides; a register that
//! replaces an entry of the same endpoint never grows the count and is never refused by
//! the caps.

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use discovery_proto::{Instance, InstanceRef, Metadata, RemoveReason, Revision};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use uuid::Uuid;

use crate::table::{Due, Nanos, Removed, Slot, Table};
use crate::watch::{Change, ChangeEvent, Feeds, WatchStart};
use crate::{Error, RegistryConfig};

/// The longest TTL the registry uses: any longer one is cut to this, so that deadlines in
/// nanoseconds since the epoch can never overflow (a century is forever to a registry).
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The most entries the expiry task handles per hold of the lock: when a million entries
/// come due at once, requests still get the lock between batches.
const EXPIRY_BATCH: usize = 1024;

/// How many characters of an offending metadata key an error message quotes.
const KEY_PREVIEW_CHARS: usize = 32;

/// A handle to the registry. Clones share the same instances; the expiry task ends by
/// itself once the last handle is dropped.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

struct Shared {
    config: RegistryConfig,
    /// `config.ttl` in nanoseconds, cut to [`MAX_TTL`].
    ttl: Nanos,
    clock: Clock,
    /// A std mutex, not tokio's: every critical section is a few map operations, never held
    /// across an `.await`, and an async mutex would only add cost to each of them.
    state: Mutex<State>,
    /// Wakes the expiry task, when an earlier deadline is filed or when this state is
    /// dropped. Outside `Shared` so that the task can wait on it without keeping it alive.
    wake_expiry: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // `notify_one` stores a permit if the task is not waiting right now, so it cannot
        // miss this: it wakes, fails to upgrade its `Weak`, and returns.
        self.wake_expiry.notify_one();
    }
}

/// The registry's two clocks, read from one start: deadlines are monotonic nanoseconds
/// since `epoch`, and the wall-clock time shown for one is `wall_epoch` plus as much.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Instant,
    wall_epoch: DateTime<Utc>,
    /// `wall_epoch` in milliseconds since the Unix epoch.
    wall_epoch_ms: i64,
}

impl Clock {
    fn new() -> Self {
        let wall_epoch = Utc::now();
        Self {
            epoch: Instant::now(),
            wall_epoch,
            wall_epoch_ms: wall_epoch.timestamp_millis(),
        }
    }

    fn now(&self) -> Nanos {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, at: Nanos) -> Instant {
        self.epoch + Duration::from_nanos(at)
    }

    /// [`Clock::wall`] in milliseconds since the Unix epoch, with integers only: what a
    /// query answer carries, computed for every instance it lists.
    fn wall_ms(&self, at: Nanos) -> i64 {
        let since_epoch = i64::try_from(at / 1_000_000).unwrap_or(i64::MAX);
        self.wall_epoch_ms.saturating_add(since_epoch)
    }

    /// The wall-clock time of `at`, to the millisecond (what the wire carries).
    fn wall(&self, at: Nanos) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.wall_ms(at)).unwrap_or(self.wall_epoch)
    }
}

struct State {
    /// `Shared::ttl`, here too so that the state can tell the instances it removes.
    ttl: Nanos,
    table: Table,
    /// The change feeds of watched types; changes are published under the same lock as
    /// they are made, so a watcher sees them in the order they happened.
    feeds: Feeds,
}

/// What the expiry task should do after a pass.
#[derive(Debug, PartialEq, Eq)]
enum Expiry {
    /// The batch ran out with entries still due: go again, after letting others in.
    More,
    /// Sleep until this instant, the earliest filed deadline.
    Until(Instant),
    /// Nothing is filed: sleep until woken.
    Idle,
}

impl Registry {
    /// A new, empty registry with `config`'s TTL and limits.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (with its time driver), since it spawns the expiry task.
    pub fn new(config: RegistryConfig) -> Registry {
        let (registry, wake_expiry) = Registry::without_expiry_task(config);
        tokio::spawn(expire(Arc::downgrade(&registry.shared), wake_expiry));
        registry
    }

    /// The registry and what wakes its expiry task, before that task is spawned: the unit
    /// tests below use it to reach states the task would clean up before a test could look.
    fn without_expiry_task(config: RegistryConfig) -> (Registry, Arc<Notify>) {
        let wake_expiry = Arc::new(Notify::new());
        let feeds = Feeds::new(
            config.watch_history,
            config.watch_queue,
            config.watch_window,
        );
        let ttl = u64::try_from(config.ttl.min(MAX_TTL).as_nanos()).unwrap_or(u64::MAX);
        let shared = Arc::new(Shared {
            ttl,
            clock: Clock::new(),
            config,
            state: Mutex::new(State {
                ttl,
                table: Table::new(),
                feeds,
            }),
            wake_expiry: Arc::clone(&wake_expiry),
        });
        (Registry { shared }, wake_expiry)
    }

    /// The TTL and limits this registry enforces.
    pub fn config(&self) -> &RegistryConfig {
        &self.shared.config
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
    /// configuration; [`Error::InstanceLimit`] or [`Error::TypeLimit`] when the registry or
    /// the type already holds its maximum of live instances (never for a replacement).
    pub fn register(
        &self,
        service_type: &str,
        ip: IpAddr,
        port: u16,
        metadata: Metadata,
    ) -> Result<Uuid, Error> {
        let config = &self.shared.config;
        validate_service_type(service_type, config)?;
        validate_ip(ip)?;
        if port == 0 {
            return Err(Error::InvalidPort);
        }
        validate_metadata(&metadata, config)?;

        let id = Uuid::new_v4();
        let clock = self.shared.clock;
        let now = clock.now();
        let deadline = now.saturating_add(self.shared.ttl);

        let earliest = {
            let mut state = self.shared.lock();
            let older = state.table.find_endpoint(service_type, ip, port);
            if older.is_none() && state.refusal(service_type, config).is_some() {
                state.expire_due(&clock, now, usize::MAX);
                if let Some(refusal) = state.refusal(service_type, config) {
                    return Err(refusal);
                }
            }
            // The endpoint may have been freed by the pass above: look again.
            if let Some(older) = state.table.find_endpoint(service_type, ip, port) {
                state.remove(&clock, older, RemoveReason::Replaced);
            }
            let index = state
                .table
                .insert(id, service_type, ip, port, metadata, deadline);
            let State { table, feeds, ttl } = &mut *state;
            let slot = table.slot(index);
            feeds.publish(table.type_name(slot), || {
                ChangeEvent::Added(instance(table, &clock, *ttl, slot))
            });
            state.table.is_earliest(deadline)
        };
        // Every other filed deadline is at most its own register's `now + ttl`, so the new
        // entry is rarely the earliest (in practice when the index was empty), and the task
        // is woken only then.
        if earliest {
            self.shared.wake_expiry.notify_one();
        }
        Ok(id)
    }

    /// Keeps an instance live for another TTL from now. False when the id is unknown or
    /// the instance has expired: it must register again.
    pub fn heartbeat(&self, id: Uuid) -> bool {
        let clock = self.shared.clock;
        let now = clock.now();
        let mut state = self.shared.lock();
        let Some(index) = state.table.find(&id) else {
            return false;
        };
        let slot = state.table.slot_mut(index);
        if slot.deadline > now {
            // The wheel keeps the older deadline; the expiry task files the entry again
            // when that one comes due.
            slot.deadline = now.saturating_add(self.shared.ttl);
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
        let clock = self.shared.clock;
        let now = clock.now();
        let mut state = self.shared.lock();
        let Some(index) = state.table.find(&id) else {
            return false;
        };
        let live = state.table.slot(index).deadline > now;
        let reason = if live {
            RemoveReason::Deregistered
        } else {
            RemoveReason::Expired
        };
        state.remove(&clock, index, reason);
        live
    }

    /// Every live instance of `service_type`, in no particular order.
    ///
    /// Its cost is proportional to the instances of that type, whatever the registry holds
    /// besides.
    pub fn query(&self, service_type: &str) -> Vec<Instance> {
        let clock = self.shared.clock;
        let now = clock.now();
        let state = self.shared.lock();
        state.instances(&clock, service_type, now)
    }

    /// Visits every live instance of `service_type`, in no particular order, as borrowed
    /// views that encode like [`Instance`]: a query answer is written from them without
    /// copying the instances first. The lock is held while `visit` runs, so it must be
    /// quick (encoding is).
    pub fn query_each(&self, service_type: &str, mut visit: impl FnMut(InstanceRef<'_>)) {
        let clock = self.shared.clock;
        let now = clock.now();
        let state = self.shared.lock();
        let table = &state.table;
        for &index in table.members(service_type) {
            let slot = table.slot(index);
            if slot.deadline > now {
                visit(InstanceRef {
                    id: slot.id,
                    service_type: table.type_name(slot),
                    ip: slot.ip(),
                    port: slot.port,
                    metadata: slot.metadata(),
                    last_heartbeat_ms: clock.wall_ms(slot.deadline.saturating_sub(state.ttl)),
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
    pub fn resubscribe(&self, subscription: &Subscription) -> Result<Subscription, Error> {
        self.subscribe(&subscription.guard.service_type, None, true)
    }

    fn subscribe(
        &self,
        service_type: &str,
        since: Option<Revision>,
        reset: bool,
    ) -> Result<Subscription, Error> {
        validate_service_type(service_type, &self.shared.config)?;
        let clock = self.shared.clock;
        let now = clock.now();
        let mut state = self.shared.lock();
        // Free what is due first, so that the snapshot and the changes agree on every
        // instance: none can be missing from both, or be removed without having been seen.
        let _ = state.expire_due(&clock, now, usize::MAX);
        let service_type: Arc<str> = match state.table.interned(service_type) {
            Some(interned) => Arc::clone(interned),
            None => Arc::from(service_type),
        };
        let (start, changes) = state
            .feeds
            .subscribe(&service_type, since, clock.instant(now));
        let start = match start {
            Ok(resume) => resume,
            Err(revision) => WatchStart::Snapshot {
                revision,
                instances: state.instances(&clock, &service_type, now),
                reset,
            },
        };
        drop(state);
        // A new feed may have a deadline to forget it before the expiry task's next wake.
        self.shared.wake_expiry.notify_one();
        Ok(Subscription {
            start: Some(start),
            changes: BroadcastStream::new(changes),
            guard: WatchGuard {
                shared: Arc::downgrade(&self.shared),
                service_type,
            },
        })
    }

    /// The number of types with a watch feed (watched now, or within the window).
    pub fn watched_types(&self) -> usize {
        self.shared.lock().feeds.len()
    }

    /// The number of entries held in memory. An expired entry the expiry task has not freed
    /// yet still counts, so this shows when memory is freed rather than what is live.
    pub fn len(&self) -> usize {
        self.shared.lock().table.len()
    }

    /// True when no entry is held in memory (see [`Registry::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock can only come from a bug between two map operations; the
        // maps are still memory-safe, so serving on beats failing every request after it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
        last_heartbeat: clock.wall(slot.deadline.saturating_sub(ttl)),
    }
}

impl State {
    /// Why a register of a new endpoint of `service_type` would be refused by the caps,
    /// counting every entry held (live or not yet freed).
    fn refusal(&self, service_type: &str, config: &RegistryConfig) -> Option<Error> {
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

    /// Frees an entry, and tells its type's watchers why it went.
    fn remove(&mut self, clock: &Clock, index: u32, reason: RemoveReason) {
        let removed = self.table.remove(index);
        let ttl = self.ttl;
        let service_type = Arc::clone(&removed.service_type);
        self.feeds.publish(&service_type, || {
            ChangeEvent::Removed(removed_instance(removed, clock, ttl), reason)
        });
    }

    /// The live instances of a type.
    fn instances(&self, clock: &Clock, service_type: &str, now: Nanos) -> Vec<Instance> {
        self.table
            .members(service_type)
            .iter()
            .map(|&index| self.table.slot(index))
            .filter(|slot| slot.deadline > now)
            .map(|slot| instance(&self.table, clock, self.ttl, slot))
            .collect()
    }

    /// Frees the entries due at `now` (at most `budget` of them) and forgets the watch
    /// feeds whose window has passed; says when to come back.
    fn expire_due(&mut self, clock: &Clock, now: Nanos, budget: usize) -> Expiry {
        let next_forget = self.feeds.forget_due(clock.instant(now));
        let State { table, feeds, ttl } = self;
        let due = table.expire_due(now, budget, |table, index| {
            let removed = table.remove(index);
            let service_type = Arc::clone(&removed.service_type);
            feeds.publish(&service_type, || {
                ChangeEvent::Removed(
                    removed_instance(removed, clock, *ttl),
                    RemoveReason::Expired,
                )
            });
        });
        match (due, next_forget) {
            (Due::More, _) => Expiry::More,
            (Due::Idle, None) => Expiry::Idle,
            (Due::Idle, Some(at)) => Expiry::Until(at),
            (Due::Until(at), None) => Expiry::Until(clock.instant(at)),
            (Due::Until(at), Some(other)) => Expiry::Until(clock.instant(at).min(other)),
        }
    }
}

/// An entry taken out of the table, as the instance it was.
fn removed_instance(removed: Removed, clock: &Clock, ttl: Nanos) -> Instance {
    Instance {
        id: removed.id,
        service_type: removed.service_type.to_string(),
        ip: removed.ip,
        port: removed.port,
        metadata: removed.metadata.map(|m| *m).unwrap_or_default(),
        last_heartbeat: clock.wall(removed.deadline.saturating_sub(ttl)),
    }
}

/// The expiry task. It holds only a `Weak` to the state, so that dropping the last
/// [`Registry`] frees everything and, through `Shared`'s `Drop`, ends this task.
async fn expire(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next = match shared.upgrade() {
            Some(shared) => {
                let clock = shared.clock;
                shared.lock().expire_due(&clock, clock.now(), EXPIRY_BATCH)
            }
            None => return,
        };
        match next {
            Expiry::More => tokio::task::yield_now().await,
            Expiry::Until(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            Expiry::Idle => wake.notified().await,
        }
    }
}

fn validate_service_type(service_type: &str, config: &RegistryConfig) -> Result<(), Error> {
    if service_type.is_empty() {
        return Err(Error::InvalidServiceType("the type is empty".into()));
    }
    if service_type.len() > config.max_type_bytes {
        return Err(Error::InvalidServiceType(format!(
            "the type is {} bytes, over the limit of {}",
            service_type.len(),
            config.max_type_bytes
        )));
    }
    if let Some((at, c)) = service_type.char_indices().find(|(_, c)| c.is_control()) {
        return Err(Error::InvalidServiceType(format!(
            "the type has the control character {c:?} at byte {at}"
        )));
    }
    Ok(())
}

/// Refuses addresses nobody can connect to. An IPv4-mapped IPv6 address is judged as the
/// IPv4 address it carries, so that `::ffff:0.0.0.0` does not slip through.
fn validate_ip(ip: IpAddr) -> Result<(), Error> {
    let usable = match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
            None => !(v6.is_unspecified() || v6.is_multicast()),
        },
    };
    if usable {
        Ok(())
    } else {
        Err(Error::InvalidAddress(ip))
    }
}

fn validate_metadata(metadata: &Metadata, config: &RegistryConfig) -> Result<(), Error> {
    if metadata.len() > config.max_metadata_pairs {
        return Err(Error::InvalidMetadata(format!(
            "{} pairs, over the limit of {}",
            metadata.len(),
            config.max_metadata_pairs
        )));
    }
    for (key, value) in metadata {
        if key.is_empty() {
            return Err(Error::InvalidMetadata("a key is empty".into()));
        }
        if key.len() > config.max_metadata_key_bytes {
            return Err(Error::InvalidMetadata(format!(
                "key {:?} is {} bytes, over the key limit of {}",
                preview(key),
                key.len(),
                config.max_metadata_key_bytes
            )));
        }
        if value.len() > config.max_metadata_value_bytes {
            return Err(Error::InvalidMetadata(format!(
                "the value of key {:?} is {} bytes, over the value limit of {}",
                preview(key),
                value.len(),
                config.max_metadata_value_bytes
            )));
        }
    }
    Ok(())
}

/// The start of `key`, so that an error about a 60 KiB key does not quote all of it.
fn preview(key: &str) -> String {
    match key.char_indices().nth(KEY_PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}...", &key[..cut]),
        None => key.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    //! What the public API cannot show: the indexes stay consistent with each other, empty
    //! types are removed, and the paths taken only before the expiry task has run.

    use std::net::Ipv4Addr;

    use tokio::time::advance;

    use super::*;

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
        registry.shared.lock().table.assert_consistent();
    }

    fn type_count(registry: &Registry) -> usize {
        registry.shared.lock().table.type_count()
    }

    fn expire_due(registry: &Registry, budget: usize) -> Expiry {
        let clock = registry.shared.clock;
        registry
            .shared
            .lock()
            .expire_due(&clock, clock.now(), budget)
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
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
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
        let state = registry.shared.lock();
        assert!(state.table.slot_count() <= 2, "freed slots are reused");
    }

    #[tokio::test(start_paused = true)]
    async fn the_expiry_pass_frees_and_files_again() {
        let (registry, _wake) = Registry::without_expiry_task(config());
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
        let (registry, _wake) = Registry::without_expiry_task(RegistryConfig {
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
        let (registry, _wake) = Registry::without_expiry_task(config());
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
        let (registry, _wake) = Registry::without_expiry_task(config());
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
        let (registry, _wake) = Registry::without_expiry_task(config());
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
        let start = registry.shared.clock.wall(0);
        let id = register(&registry, "a", 1);
        assert_eq!(registry.query("a")[0].last_heartbeat, start);
        advance(Duration::from_millis(1500)).await;
        assert!(registry.heartbeat(id));
        let shown = registry.query("a")[0].last_heartbeat;
        assert_eq!(shown - start, chrono::TimeDelta::milliseconds(1500));
    }
}

/// A subscription to the changes of one type, from [`Registry::watch`].
///
/// It is a `Stream` of the changes after its start, oldest first. A subscriber that falls
/// more than the queue behind gets an error (`Lagged`) instead of the changes it missed:
/// it must then be sent a reset snapshot, from [`Registry::resubscribe`]. Dropping the
/// subscription ends it; the type's feed is then kept for the history window, for a
/// resume.
#[derive(Debug)]
pub struct Subscription {
    start: Option<WatchStart>,
    changes: BroadcastStream<Arc<Change>>,
    guard: WatchGuard,
}

impl Stream for Subscription {
    type Item = Result<Arc<Change>, BroadcastStreamRecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.changes).poll_next(cx)
    }
}

impl Subscription {
    /// How the subscription starts: a snapshot or the missed changes. `None` once taken.
    pub fn take_start(&mut self) -> Option<WatchStart> {
        self.start.take()
    }

    /// The watched type.
    pub fn service_type(&self) -> &str {
        &self.guard.service_type
    }
}

/// Tells the registry that a watcher left, when its subscription is dropped.
#[derive(Debug)]
struct WatchGuard {
    shared: Weak<Shared>,
    service_type: Arc<str>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared
                .lock()
                .feeds
                .unsubscribe(&self.service_type, Instant::now());
            shared.wake_expiry.notify_one();
        }
    }
}
