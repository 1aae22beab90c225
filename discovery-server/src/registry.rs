//! The in-memory registry: instances, their TTLs, and the one task that expires them.
//!
//! [`Registry`] is a cheap-to-clone handle around shared state, in the manner of
//! mini-redis's `Db`. It does no I/O, so it can be tested alone with tokio's paused clock,
//! and later be put behind a trait next to a distributed backend.
//!
//! # Liveness
//!
//! An instance is live while less than the TTL has passed since its register or its last
//! heartbeat, measured on [`tokio::time::Instant`]. From its deadline on it is gone for
//! every method at once (a query skips it, a heartbeat or a deregister answers not found)
//! even in the moment before the expiry task has freed it, so no answer ever depends on
//! whether that task has run yet. The wall-clock [`Instance::last_heartbeat`] is kept only
//! to show people.
//!
//! # Expiry
//!
//! Every entry is filed once in a deadline index, a `BTreeSet<(Instant, Uuid)>`, and one
//! background task sleeps until the earliest filed deadline. Heartbeats are by far the most
//! frequent request, so a heartbeat only stores the new deadline in its entry and leaves the
//! index alone: when a filed deadline comes due, the task compares it with the entry's real
//! deadline and either frees the entry or files it again under the real one. A filed
//! deadline is therefore never later than the real one, and the task never sleeps past an
//! expiry. Each entry costs the task one visit per TTL at most, however often it heartbeats.
//!
//! # Indexes
//!
//! - `entries`: id -> entry, the only owner of an instance's data.
//! - `types`: type -> (ip, port) -> id. It is both the per-type index (a query visits only
//!   the instances of its type, never all entries) and the endpoint index that makes a
//!   register of a known (type, ip, port) replace the older entry. The type name is interned
//!   as one `Arc<str>` that its entries share, and a type whose last instance goes is removed.
//! - `expirations`: the deadline index above.
//!
//! # Limits
//!
//! The caps count live instances only. Expired entries that the task has not freed yet are
//! freed by a register that would otherwise be refused, before it decides; a register that
//! replaces an entry of the same endpoint never grows the count and is never refused by
//! the caps.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use discovery_proto::{Instance, Metadata, RemoveReason, Revision};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use uuid::Uuid;

use crate::watch::{Change, ChangeEvent, Feeds, WatchStart};
use crate::{Error, RegistryConfig};

/// The longest TTL the registry uses: any longer one is cut to this, so that `now + ttl`
/// can never overflow an `Instant` (a century is forever to a registry).
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
    /// `config.ttl`, cut to [`MAX_TTL`].
    ttl: Duration,
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

struct State {
    entries: HashMap<Uuid, Entry>,
    types: HashMap<Arc<str>, HashMap<SocketAddr, Uuid>>,
    /// Every entry exactly once, under its `filed` deadline.
    expirations: BTreeSet<(Instant, Uuid)>,
    /// The change feeds of watched types; changes are published under the same lock as
    /// they are made, so a watcher sees them in the order they happened.
    feeds: Feeds,
}

struct Entry {
    service_type: Arc<str>,
    addr: SocketAddr,
    /// Shared so that a query can copy it after releasing the lock.
    metadata: Arc<Metadata>,
    /// Gone from this instant on.
    deadline: Instant,
    /// Where the entry sits in `expirations`; never later than `deadline`.
    filed: Instant,
    last_heartbeat: DateTime<Utc>,
}

impl Entry {
    fn instance(&self, id: Uuid) -> Instance {
        Instance {
            id,
            service_type: self.service_type.to_string(),
            ip: self.addr.ip(),
            port: self.addr.port(),
            metadata: Metadata::clone(&self.metadata),
            last_heartbeat: self.last_heartbeat,
        }
    }
}

/// What the expiry task should do after a pass.
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
        let shared = Arc::new(Shared {
            ttl: config.ttl.min(MAX_TTL),
            config,
            state: Mutex::new(State {
                entries: HashMap::new(),
                types: HashMap::new(),
                expirations: BTreeSet::new(),
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

        let addr = SocketAddr::new(ip, port);
        let metadata = Arc::new(metadata);
        let id = Uuid::new_v4();
        let last_heartbeat = Utc::now();
        let now = Instant::now();
        let deadline = now + self.shared.ttl;

        let earliest = {
            let mut state = self.shared.lock();
            if state.refusal(service_type, addr, config).is_some() {
                state.expire_due(now, usize::MAX);
                if let Some(refusal) = state.refusal(service_type, addr, config) {
                    return Err(refusal);
                }
            }
            let service_type = state.insert(service_type, addr, id, deadline);
            let entry = Entry {
                service_type,
                addr,
                metadata,
                deadline,
                filed: deadline,
                last_heartbeat,
            };
            state.feeds.publish(&entry.service_type, || {
                ChangeEvent::Added(entry.instance(id))
            });
            state.entries.insert(id, entry);
            state.expirations.first() == Some(&(deadline, id))
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
        let last_heartbeat = Utc::now();
        let now = Instant::now();
        let mut state = self.shared.lock();
        match state.entries.get_mut(&id) {
            Some(entry) if entry.deadline > now => {
                // The index keeps the older deadline; the expiry task files the entry again
                // when that one comes due.
                entry.deadline = now + self.shared.ttl;
                entry.last_heartbeat = last_heartbeat;
                true
            }
            Some(_) => {
                // Expired but not freed yet: free it now, the task would at this instant.
                state.remove(id, RemoveReason::Expired);
                false
            }
            None => false,
        }
    }

    /// Removes an instance at once. False when the id is unknown or the instance has
    /// expired.
    pub fn deregister(&self, id: Uuid) -> bool {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let Some(entry) = state.entries.get(&id) else {
            return false;
        };
        let live = entry.deadline > now;
        let reason = if live {
            RemoveReason::Deregistered
        } else {
            RemoveReason::Expired
        };
        state.remove(id, reason);
        live
    }

    /// Every live instance of `service_type`, in no particular order.
    ///
    /// Its cost is proportional to the instances of that type, whatever the registry holds
    /// besides; their metadata is copied after the lock is released.
    pub fn query(&self, service_type: &str) -> Vec<Instance> {
        let now = Instant::now();
        let live: Vec<_> = {
            let state = self.shared.lock();
            let Some(ids) = state.types.get(service_type) else {
                return Vec::new();
            };
            ids.values()
                .filter_map(|id| state.entries.get(id).map(|entry| (*id, entry)))
                .filter(|(_, entry)| entry.deadline > now)
                .map(|(id, entry)| {
                    (
                        id,
                        Arc::clone(&entry.service_type),
                        entry.addr,
                        Arc::clone(&entry.metadata),
                        entry.last_heartbeat,
                    )
                })
                .collect()
        };
        live.into_iter()
            .map(
                |(id, service_type, addr, metadata, last_heartbeat)| Instance {
                    id,
                    service_type: service_type.to_string(),
                    ip: addr.ip(),
                    port: addr.port(),
                    metadata: Metadata::clone(&metadata),
                    last_heartbeat,
                },
            )
            .collect()
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
        let now = Instant::now();
        let mut state = self.shared.lock();
        // Free what is due first, so that the snapshot and the changes agree on every
        // instance: none can be missing from both, or be removed without having been seen.
        let _ = state.expire_due(now, usize::MAX);
        let service_type: Arc<str> = match state.types.get_key_value(service_type) {
            Some((interned, _)) => Arc::clone(interned),
            None => Arc::from(service_type),
        };
        let (start, changes) = state.feeds.subscribe(&service_type, since, now);
        let start = match start {
            Ok(resume) => resume,
            Err(revision) => WatchStart::Snapshot {
                revision,
                instances: state.instances(&service_type, now),
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
        self.shared.lock().entries.len()
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

impl State {
    /// Why a register of `addr` under `service_type` would be refused by the caps, counting
    /// every entry held (live or not yet freed).
    fn refusal(
        &self,
        service_type: &str,
        addr: SocketAddr,
        config: &RegistryConfig,
    ) -> Option<Error> {
        let of_type = self.types.get(service_type);
        if of_type.is_some_and(|ids| ids.contains_key(&addr)) {
            return None;
        }
        if self.entries.len() >= config.max_instances {
            return Some(Error::InstanceLimit {
                max: config.max_instances,
            });
        }
        if of_type.map_or(0, HashMap::len) >= config.max_instances_per_type {
            return Some(Error::TypeLimit {
                service_type: service_type.to_owned(),
                max: config.max_instances_per_type,
            });
        }
        None
    }

    /// Files `id` under its type and endpoint and in the deadline index, replacing the entry
    /// that held the endpoint, and returns the interned type name for the new entry.
    fn insert(
        &mut self,
        service_type: &str,
        addr: SocketAddr,
        id: Uuid,
        deadline: Instant,
    ) -> Arc<str> {
        let older = self
            .types
            .get(service_type)
            .and_then(|ids| ids.get(&addr))
            .copied();
        if let Some(older) = older {
            self.remove(older, RemoveReason::Replaced);
        }
        let service_type = match self.types.get_key_value(service_type) {
            Some((interned, _)) => Arc::clone(interned),
            None => Arc::from(service_type),
        };
        self.types
            .entry(Arc::clone(&service_type))
            .or_default()
            .insert(addr, id);
        self.expirations.insert((deadline, id));
        service_type
    }

    /// Frees an entry from every index, and tells its type's watchers why it went.
    fn remove(&mut self, id: Uuid, reason: RemoveReason) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.expirations.remove(&(entry.filed, id));
        if let Some(ids) = self.types.get_mut(&entry.service_type) {
            ids.remove(&entry.addr);
            if ids.is_empty() {
                self.types.remove(&entry.service_type);
            }
        }
        self.feeds.publish(&entry.service_type, || {
            ChangeEvent::Removed(entry.instance(id), reason)
        });
        Some(entry)
    }

    /// The live instances of a type, built under the lock (a watch's snapshot must be taken
    /// in the same step as its subscription).
    fn instances(&self, service_type: &str, now: Instant) -> Vec<Instance> {
        let Some(ids) = self.types.get(service_type) else {
            return Vec::new();
        };
        ids.values()
            .filter_map(|id| self.entries.get(id).map(|entry| (id, entry)))
            .filter(|(_, entry)| entry.deadline > now)
            .map(|(id, entry)| entry.instance(*id))
            .collect()
    }

    /// Handles up to `budget` filed deadlines that are due at `now` (freeing the entries
    /// that have expired and filing the others again under their real deadline), and
    /// forgets the watch feeds whose window has passed.
    fn expire_due(&mut self, now: Instant, budget: usize) -> Expiry {
        let next_forget = self.feeds.forget_due(now);
        match (self.expire_entries(now, budget), next_forget) {
            (Expiry::More, _) => Expiry::More,
            (Expiry::Idle, None) => Expiry::Idle,
            (Expiry::Idle, Some(at)) => Expiry::Until(at),
            (Expiry::Until(at), None) => Expiry::Until(at),
            (Expiry::Until(at), Some(other)) => Expiry::Until(at.min(other)),
        }
    }

    fn expire_entries(&mut self, now: Instant, budget: usize) -> Expiry {
        for _ in 0..budget {
            let Some(&(filed, id)) = self.expirations.first() else {
                return Expiry::Idle;
            };
            if filed > now {
                return Expiry::Until(filed);
            }
            self.expirations.pop_first();
            let Some(entry) = self.entries.get_mut(&id) else {
                // Cannot happen: `remove` takes an entry out of the index with its data.
                continue;
            };
            if entry.deadline > now {
                entry.filed = entry.deadline;
                self.expirations.insert((entry.deadline, id));
            } else {
                // Already out of the index; `remove` finds nothing there to take.
                self.remove(id, RemoveReason::Expired);
            }
        }
        match self.expirations.first() {
            Some(&(filed, _)) if filed <= now => Expiry::More,
            Some(&(filed, _)) => Expiry::Until(filed),
            None => Expiry::Idle,
        }
    }
}

/// The expiry task. It holds only a `Weak` to the state, so that dropping the last
/// [`Registry`] frees everything and, through `Shared`'s `Drop`, ends this task.
async fn expire(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next = match shared.upgrade() {
            Some(shared) => shared.lock().expire_due(Instant::now(), EXPIRY_BATCH),
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

    /// Every entry filed exactly once, never later than its deadline; every entry under its
    /// type and endpoint, sharing the type's interned name; no empty type.
    fn assert_consistent(registry: &Registry) {
        let state = registry.shared.lock();
        assert_eq!(state.expirations.len(), state.entries.len());
        for (id, entry) in &state.entries {
            assert!(state.expirations.contains(&(entry.filed, *id)));
            assert!(entry.filed <= entry.deadline);
            let (name, ids) = state
                .types
                .get_key_value(&*entry.service_type)
                .expect("type indexed");
            assert!(Arc::ptr_eq(name, &entry.service_type));
            assert_eq!(ids.get(&entry.addr), Some(id));
        }
        let indexed: usize = state.types.values().map(HashMap::len).sum();
        assert_eq!(indexed, state.entries.len());
        assert!(state.types.values().all(|ids| !ids.is_empty()));
    }

    fn type_count(registry: &Registry) -> usize {
        registry.shared.lock().types.len()
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
        assert_consistent(&registry);
        assert!(!registry.heartbeat(a1_again));
        assert_eq!(registry.len(), 1);

        assert!(registry.deregister(a2));
        assert_consistent(&registry);
        assert_eq!(type_count(&registry), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_expiry_pass_frees_and_files_again() {
        let (registry, _wake) = Registry::without_expiry_task(config());
        let stays = register(&registry, "a", 1);
        let goes = register(&registry, "a", 2);
        advance(TTL - Duration::from_millis(1)).await;
        assert!(registry.heartbeat(stays));
        advance(Duration::from_millis(1)).await;
        let now = Instant::now();
        let next = registry.shared.lock().expire_due(now, usize::MAX);
        assert!(matches!(next, Expiry::Until(at) if at == now + TTL - Duration::from_millis(1)));
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
        let now = Instant::now();
        assert!(matches!(
            registry.shared.lock().expire_due(now, 2),
            Expiry::More
        ));
        assert_eq!(registry.len(), 3);
        assert!(matches!(
            registry.shared.lock().expire_due(now, 2),
            Expiry::More
        ));
        assert!(matches!(
            registry.shared.lock().expire_due(now, 2),
            Expiry::Idle
        ));
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
