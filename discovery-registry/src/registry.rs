//! The registry's handle: register, heartbeat, update, deregister, query and watch, with no
//! I/O.
//!
//! [`Registry`] is a cheap-to-clone handle around shared state (the private `state` module), in the
//! manner of mini-redis's `Db`. It does no I/O, so it can be tested alone with tokio's
//! paused clock, and a frontend of any protocol calls the same methods.
//!
//! # Liveness
//!
//! An instance is live while less than its TTL has passed since its register or its last
//! heartbeat, measured on [`tokio::time::Instant`] (in nanoseconds since the registry's
//! epoch). Each instance has its own TTL: the one its register asked for, within the
//! configuration's `min_ttl..=max_ttl`, or the configuration's `ttl`. From its deadline on
//! it is gone for every method at once (a query skips it, a heartbeat or a deregister
//! answers not found) even in the moment before the expiry task has freed it, so no answer
//! ever depends on whether that task has run yet.
//!
//! # Revisions
//!
//! Every change (an instance added, updated or removed, of any type, watched or not) takes
//! the next revision of the registry, and the methods that make one return it. A caller
//! that was given a revision (by this registry, or by a peer that served it) can wait until
//! this registry has reached it with [`Registry::reached`].
//!
//! # Not found, and why
//!
//! A call about an id that is not live fails with [`Error::NotFound`], whose `reason` says
//! why the instance went (expired, replaced, deregistered) for as long as the registry
//! remembers: one `max_ttl` after the removal, and only the latest
//! [`RegistryConfig::remembered_removals`] removals.
//!
//! # Limits
//!
//! The caps count live instances only. Expired entries that the task has not freed yet are
//! freed by a register that would otherwise be refused, before it decides (in bounded
//! batches, letting others in between them); a register that replaces an entry of the same
//! endpoint never grows the count and is never refused by the caps on instances.
//!
//! The bytes the entries take in memory are bounded too
//! ([`RegistryConfig::max_registry_bytes`]), counted as the allocator spends them: each
//! entry's share of the slab and the indexes (counted at twice what they use, as containers
//! that grow by doubling may hold), its metadata's box, nodes and strings, each type's
//! interned name and lists, and the deadline index as it stands. A register or an update
//! that would take the total over is refused with [`Error::RegistryBytesLimit`]; a
//! replacement counts only what it adds to the entry it replaces. What a register counts
//! is an upper bound of what the heap grows by, within a factor of two
//! (`tests/registry_bytes.rs` measures both with a counting allocator). Changes from
//! elsewhere ([`Registry::upsert`]) are never refused by the caps, bytes included: a
//! replica must hold what exists; they count in the total all the same.

use std::fmt;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use discovery_proto::{EntryRef, Instance, Metadata, RemoveReason, Revision};
use uuid::Uuid;

use crate::clock::{Clock, Nanos};
use crate::feed::WatchStart;
use crate::members::{BATCH, Members};
use crate::state::{Core, State, nanos};
use crate::subscription::Subscription;
use crate::table::{NewEntry, Timing};
use crate::{Error, RegistryConfig, expiry, rules};

/// A handle to the registry. Clones share the same instances; the expiry task ends by
/// itself once the last handle is dropped.
///
/// ```
/// use std::time::Duration;
/// use discovery_registry::{Error, Metadata, Registry, RegistryConfig, RemoveReason};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), discovery_registry::Error> {
/// let registry = Registry::new(RegistryConfig::default());
/// let id = registry.register("billing", "10.0.0.1".parse().unwrap(), 8080, Metadata::new())?;
/// assert_eq!(registry.query("billing")[0].id, id);
///
/// tokio::time::advance(Duration::from_secs(4)).await;
/// assert!(registry.heartbeat(id).is_ok());
/// tokio::time::advance(Duration::from_secs(5)).await;
/// // Five seconds without a heartbeat: gone, and the registry says why.
/// assert!(registry.query("billing").is_empty());
/// assert_eq!(
///     registry.heartbeat(id),
///     Err(Error::NotFound { reason: Some(RemoveReason::Expired) })
/// );
///
/// // An instance of its own TTL, within the configuration's bounds.
/// let long = registry.register_with_ttl(
///     "billing",
///     "10.0.0.2".parse().unwrap(),
///     8080,
///     Metadata::new(),
///     Some(Duration::from_secs(30)),
/// )?;
/// assert_eq!(long.ttl, Duration::from_secs(30));
/// assert_eq!(registry.revision(), long.revision);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Registry {
    pub(crate) core: Arc<Core>,
}

/// What a register was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// The new instance's id, made by the registry.
    pub id: Uuid,
    /// How long the instance lives without a heartbeat: the TTL asked for, or the
    /// configuration's (cut to a century, [`crate::config::MAX_TTL`]). A heartbeat renews it
    /// by as much.
    pub ttl: Duration,
    /// The revision of the instance's `Added`.
    pub revision: Revision,
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

    /// Registers an instance with the configuration's TTL and returns its new id:
    /// [`Registry::register_with_ttl`] without a TTL of its own.
    ///
    /// # Errors
    ///
    /// As [`Registry::register_with_ttl`].
    pub fn register(
        &self,
        service_type: &str,
        ip: IpAddr,
        port: u16,
        metadata: Metadata,
    ) -> Result<Uuid, Error> {
        self.register_with_ttl(service_type, ip, port, metadata, None)
            .map(|registered| registered.id)
    }

    /// Registers an instance, live for `ttl` (the configuration's `ttl` when `None`) and
    /// renewed by as much at every heartbeat; returns its new id, its TTL and the revision
    /// of its `Added`.
    ///
    /// Registering the same (`service_type`, `ip`, `port`) again replaces the older entry:
    /// its id then answers not found (replaced), and a query lists the endpoint once, with
    /// the new id, metadata and TTL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`] when `ttl` is outside the configuration's
    /// `min_ttl..=max_ttl`; [`Error::InvalidServiceType`], [`Error::InvalidAddress`],
    /// [`Error::InvalidPort`] or [`Error::InvalidMetadata`] when an argument breaks a rule
    /// or a limit of the configuration (an instance too large for one frame of a query
    /// answer among them); [`Error::InstanceLimit`] or [`Error::TypeLimit`] when the
    /// registry or the type already holds its maximum of live instances (never for a
    /// replacement); [`Error::RegistryBytesLimit`] when the instance would take the
    /// registry's memory over its byte bound (for a replacement, when what it adds to the
    /// entry it replaces would).
    pub fn register_with_ttl(
        &self,
        service_type: &str,
        ip: IpAddr,
        port: u16,
        metadata: Metadata,
        ttl: Option<Duration>,
    ) -> Result<Registered, Error> {
        let config = &self.core.config;
        let ttl = match ttl {
            Some(requested) => self.granted(requested)?,
            None => self.core.default_ttl,
        };
        rules::check_instance(config, service_type, ip, port, &metadata)?;

        let id = Uuid::new_v4();
        let clock = self.core.clock;
        let now = clock.now();
        let deadline = now.saturating_add(ttl);

        // At a cap, free what is due first (in batches), then decide on what is left.
        let mut state = expiry::until(&self.core, now, |state| {
            state
                .refusal(service_type, ip, port, &metadata, config)
                .is_none()
        });
        if let Some(refusal) = state.refusal(service_type, ip, port, &metadata, config) {
            return Err(refusal);
        }
        let (_, revision) = state.insert(
            &clock,
            now,
            NewEntry {
                id,
                service_type,
                ip,
                port,
                metadata,
                deadline,
                ttl,
                timing: Timing::Timed,
            },
        );
        // A new entry is the earliest filed deadline rarely (in practice when the index was
        // empty, or when its TTL is shorter than those before it), and the task is woken
        // only then.
        self.wake_if_earliest(state, deadline, Timing::Timed);
        Ok(Registered {
            id,
            ttl: Duration::from_nanos(ttl),
            revision,
        })
    }

    /// `requested` in nanoseconds, if it is a TTL the configuration allows.
    fn granted(&self, requested: Duration) -> Result<Nanos, Error> {
        let RegistryConfig {
            min_ttl, max_ttl, ..
        } = self.core.config;
        if (min_ttl..=max_ttl).contains(&requested) {
            Ok(nanos(requested))
        } else {
            Err(Error::InvalidTtl {
                requested,
                min: min_ttl,
                max: max_ttl,
            })
        }
    }

    /// Keeps an instance live for another of its TTLs from now. An entry held for elsewhere
    /// ([`Registry::upsert`] with [`Lifetime::Held`]) is live, and stays as it is.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the id is unknown or the instance has expired (it must
    /// register again), with the reason it went while that is remembered.
    pub fn heartbeat(&self, id: Uuid) -> Result<(), Error> {
        let clock = self.core.clock;
        let now = clock.now();
        let mut state = self.core.lock();
        let Some(index) = state.table.find(&id) else {
            return Err(state.not_found(&id, now));
        };
        let slot = state.table.slot_mut(index);
        if slot.is_held() {
            Ok(())
        } else if slot.deadline > now {
            // The deadline index keeps the older deadline; the expiry pass files the entry
            // again when that one comes due.
            slot.deadline = now.saturating_add(slot.ttl);
            Ok(())
        } else {
            // Expired but not freed yet: free it now, the task would at this instant.
            state.remove(&clock, now, index, RemoveReason::Expired);
            Err(expired())
        }
    }

    /// Replaces the metadata of a live instance, in place: it keeps its id, its endpoint
    /// and its deadline (an update is not a heartbeat), and its type's watchers see
    /// [`ChangeEvent::Updated`](crate::ChangeEvent::Updated) with the whole instance after
    /// the change. Works on a held entry too. Returns the revision of the change; when
    /// `metadata` is the instance's already, nothing changes and the answer is
    /// [`Registry::revision`].
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the id is unknown or the instance has expired, with the
    /// reason it went while that is remembered; [`Error::InvalidMetadata`] when the
    /// metadata breaks a limit of a register's (the size of the instance in one frame of a
    /// query answer among them); [`Error::RegistryBytesLimit`] when the new metadata takes
    /// more memory than the old and that would take the registry over its byte bound. The
    /// instance is left as it was (an expired one found is freed, as the expiry task
    /// would).
    pub fn update(&self, id: Uuid, metadata: Metadata) -> Result<Revision, Error> {
        let clock = self.core.clock;
        let now = clock.now();
        let mut state = self.core.lock();
        let Some(index) = state.table.find(&id) else {
            return Err(state.not_found(&id, now));
        };
        let slot = state.table.slot(index);
        if !slot.is_live(now) {
            state.remove(&clock, now, index, RemoveReason::Expired);
            return Err(expired());
        }
        // Under the lock, so that the instance checked is the one changed; the rules cost
        // about as much as encoding the instance once.
        let service_type = state.table.type_name(slot);
        rules::check_instance(
            &self.core.config,
            service_type,
            slot.ip(),
            slot.port,
            &metadata,
        )?;
        if *slot.metadata() == metadata {
            return Ok(state.feeds.latest());
        }
        if let Some(refusal) = state.update_refusal(index, &metadata, &self.core.config) {
            return Err(refusal);
        }
        Ok(state.update(&clock, index, metadata))
    }

    /// Removes an instance at once; its type's watchers see it deregistered. Returns the
    /// revision of the removal.
    ///
    /// # Errors
    ///
    /// As [`Registry::remove`].
    pub fn deregister(&self, id: Uuid) -> Result<Revision, Error> {
        self.remove(id, RemoveReason::Deregistered)
    }

    /// Removes an instance at once, telling its watchers `reason`: a client's deregister,
    /// or a removal learned from elsewhere (a replicated catalogue saying it expired, was
    /// replaced or deregistered there). Returns the revision of the removal.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the id is unknown or the instance has expired here (its
    /// watchers are then told it expired), with the reason it went while that is
    /// remembered.
    pub fn remove(&self, id: Uuid, reason: RemoveReason) -> Result<Revision, Error> {
        let clock = self.core.clock;
        let now = clock.now();
        let mut state = self.core.lock();
        let Some(index) = state.table.find(&id) else {
            return Err(state.not_found(&id, now));
        };
        if !state.table.slot(index).is_live(now) {
            state.remove(&clock, now, index, RemoveReason::Expired);
            return Err(expired());
        }
        Ok(state.remove(&clock, now, index, reason))
    }

    /// Adds or updates an instance learned from elsewhere (a store that replicates the
    /// catalogue), under the id it has there, with every rule of a register but the caps
    /// (on instances and on bytes): a replica must hold what exists, or it would answer
    /// differently from its peers. What it holds counts in [`Registry::registry_bytes`]
    /// all the same, so registers and updates are refused while the total is over.
    ///
    /// - An unknown id is added, replacing the entry of the same endpoint if there is one,
    ///   as a register does.
    /// - A known id at the same endpoint is updated in place: its lifetime, and its
    ///   metadata. Its watchers see a changed metadata as
    ///   [`ChangeEvent::Updated`](crate::ChangeEvent::Updated), and nothing when only the
    ///   lifetime changed.
    /// - A known id at another endpoint moves: the old entry goes (`Replaced`) and the new
    ///   one comes.
    ///
    /// With [`Lifetime::Ttl`] the instance lives for its TTL from now, as if registered or
    /// heartbeated here; with [`Lifetime::Held`] it lives until it is removed, and shows
    /// `instance.last_heartbeat` as its last heartbeat.
    ///
    /// # Errors
    ///
    /// The rule the instance breaks, as for [`Registry::register`], and
    /// [`Error::InvalidTtl`] for a TTL outside the configuration's bounds; nothing changes
    /// then.
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
        let now = clock.now();
        let (deadline, ttl, timing) = match lifetime {
            Lifetime::Ttl(requested) => {
                let ttl = self.granted(requested)?;
                (now.saturating_add(ttl), ttl, Timing::Timed)
            }
            Lifetime::Held => (Clock::held(last_heartbeat), 0, Timing::Held),
        };
        let mut state = self.core.lock();
        let same = state
            .table
            .find(&id)
            .filter(|&index| state.table.find_endpoint(&service_type, ip, port) == Some(index));
        // The same id at the same endpoint: its lifetime, and its metadata if it changed.
        if let Some(index) = same {
            state.table.set_timing(index, deadline, ttl, timing);
            if *state.table.slot(index).metadata() != metadata {
                state.update(&clock, index, metadata);
            }
            self.wake_if_earliest(state, deadline, timing);
            return Ok(());
        }
        // Otherwise the old entry of this id goes (replaced), and the new one comes.
        if let Some(old) = state.table.find(&id) {
            state.replace(&clock, now, old);
        }
        state.insert(
            &clock,
            now,
            NewEntry {
                id,
                service_type: &service_type,
                ip,
                port,
                metadata,
                deadline,
                ttl,
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
    /// besides; the lock is taken once per [`BATCH`] of them, so a
    /// big type does not stall other requests (see [`crate::members`] for what a reader
    /// sees).
    pub fn query(&self, service_type: &str) -> Vec<Instance> {
        self.instances(self.members(service_type))
    }

    /// Reads every live instance left in `members` (a copy of a type's list, or a watch's
    /// snapshot), in batches.
    pub fn instances(&self, mut members: Members) -> Vec<Instance> {
        let Some(service_type) = members.type_name.as_deref().map(str::to_owned) else {
            return Vec::new();
        };
        let mut instances = Vec::with_capacity(members.remaining());
        while self.visit(&mut members, |entry| {
            instances.push(Instance {
                id: entry.id,
                service_type: service_type.clone(),
                ip: entry.ip,
                port: entry.port,
                metadata: entry.metadata.clone(),
                last_heartbeat: chrono::DateTime::from_timestamp_millis(entry.last_heartbeat_ms)
                    .unwrap_or(chrono::DateTime::UNIX_EPOCH),
            });
            ControlFlow::Continue(())
        }) {}
        instances
    }

    /// Visits every live instance of `service_type`, in no particular order, as borrowed
    /// views that encode like an [`Entry`](discovery_proto::Entry) (an instance without its
    /// type, which the answer says once): a query answer is written from them without
    /// copying the instances first. The lock is held while each batch of `visit` calls
    /// runs, so it must be quick (encoding is).
    pub fn query_each(&self, service_type: &str, mut visit: impl FnMut(EntryRef<'_>)) {
        let mut members = self.members(service_type);
        while self.visit(&mut members, |entry| {
            visit(entry);
            ControlFlow::Continue(())
        }) {}
    }

    /// A copy of the list of `service_type`'s instances as they are now, to read in
    /// batches with [`Registry::visit`]: 4 bytes per instance, copied under the lock.
    pub fn members(&self, service_type: &str) -> Members {
        let state = self.core.lock();
        let table = &state.table;
        Members::new(
            table.interned(service_type).cloned(),
            table.members(service_type),
        )
    }

    /// Visits the next live instances of `members` under one hold of the lock: at most
    /// [`BATCH`] slots, or fewer when `visit` breaks (the instance it
    /// broke on counts as visited). Returns true while slots are left to read.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use discovery_registry::{Metadata, Registry, RegistryConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), discovery_registry::Error> {
    /// let registry = Registry::new(RegistryConfig::default());
    /// for port in 1..=3 {
    ///     registry.register("db", "10.0.0.1".parse().unwrap(), port, Metadata::new())?;
    /// }
    /// let mut members = registry.members("db");
    /// let mut ports = Vec::new();
    /// // One at a time, as a writer that stops to send what it has would.
    /// while registry.visit(&mut members, |entry| {
    ///     ports.push(entry.port);
    ///     ControlFlow::Break(())
    /// }) {}
    /// ports.sort();
    /// assert_eq!(ports, [1, 2, 3]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn visit(
        &self,
        members: &mut Members,
        mut visit: impl FnMut(EntryRef<'_>) -> ControlFlow<()>,
    ) -> bool {
        let Some(type_name) = members.type_name.clone() else {
            members.next = members.slots.len();
            return false;
        };
        let clock = self.core.clock;
        let now = clock.now();
        let state = self.core.lock();
        let table = &state.table;
        let end = members.slots.len().min(members.next + BATCH);
        while members.next < end {
            let index = members.slots[members.next];
            members.next += 1;
            let Some(slot) = table.member_of(index, &type_name) else {
                continue;
            };
            if !slot.is_live(now) {
                continue;
            }
            let flow = visit(EntryRef {
                id: slot.id,
                ip: slot.ip(),
                port: slot.port,
                metadata: slot.metadata(),
                last_heartbeat_ms: clock.shown_ms(slot.deadline, slot.is_held(), slot.ttl),
            });
            if flow.is_break() {
                break;
            }
        }
        drop(state);
        if members.is_done() {
            // The copy is not needed any more: give its memory back at once.
            *members = Members::default();
            return false;
        }
        true
    }

    /// Every type with at least one live instance, and how many it has, sorted by type.
    ///
    /// Exact: what is due is freed first (in batches, as for a new watch), so the count of
    /// each type's entries under the last hold of the lock is its count of live instances.
    /// Its cost is proportional to the number of types, besides what it frees.
    pub fn types(&self) -> Vec<(String, usize)> {
        let now = self.core.clock.now();
        let state = expiry::until(&self.core, now, |_| false);
        let mut types: Vec<(String, usize)> = state
            .table
            .type_sizes()
            .filter(|&(_, count)| count > 0)
            .map(|(name, count)| (name.to_string(), count))
            .collect();
        drop(state);
        types.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        types
    }

    /// The latest revision given out: that of the last change, of any type (or of the
    /// last new watch feed, which takes one of its own).
    pub fn revision(&self) -> Revision {
        self.core.lock().feeds.latest()
    }

    /// True once this registry has reached `min`: at once when `min` is of another
    /// incarnation (a revision of an earlier run of the server is history here) or no later
    /// than [`Registry::revision`]; otherwise when a change reaches it within `wait`.
    /// False when `wait` passes first.
    ///
    /// For a caller that must not answer from a state older than one it has been told of
    /// (read-your-writes across servers). Waiting costs the changes nothing while no one
    /// waits.
    pub async fn reached(&self, min: Revision, wait: Duration) -> bool {
        let mut revisions = {
            let state = self.core.lock();
            let latest = state.feeds.latest();
            if min.incarnation != latest.incarnation || min.seq <= latest.seq {
                return true;
            }
            // Subscribed under the lock of the look: any later change is sent to it.
            state.feeds.wait_for_revisions()
        };
        let reached = revisions.wait_for(|&seq| seq >= min.seq);
        match tokio::time::Instant::now().checked_add(wait) {
            Some(deadline) => matches!(tokio::time::timeout_at(deadline, reached).await, Ok(Ok(_))),
            // A wait too long for an `Instant` is forever.
            None => reached.await.is_ok(),
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
    /// [`Error::InvalidServiceType`] when the type breaks the rules of a register's type;
    /// [`Error::WatchedTypeLimit`] or [`Error::WatchBytesLimit`] when the type has no feed
    /// and a new one would pass `max_watched_types` or `max_watch_bytes` (feeds waiting out
    /// their window are forgotten first to make room). A refused watch allocates nothing.
    pub fn watch(
        &self,
        service_type: &str,
        since: Option<Revision>,
    ) -> Result<Subscription, Error> {
        self.subscribe(service_type, since, since.is_some())
    }

    /// Checks `service_type` against the rules of a register's type, as [`Registry::watch`]
    /// does first: a frontend that refuses a watch for a limit of its own checks this
    /// before, so that an invalid type is told so whatever else holds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidServiceType`], saying why.
    pub fn check_service_type(&self, service_type: &str) -> Result<(), Error> {
        rules::check_service_type(service_type, &self.core.config)
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
        let (start, position, wake) =
            state
                .feeds
                .subscribe(&service_type, since, tokio::time::Instant::now())?;
        let start = match start {
            Ok(resume) => resume,
            // The instances are read from this copy in batches, as they are sent.
            Err(revision) => WatchStart::Snapshot {
                revision,
                members: Members::new(
                    state.table.interned(&service_type).cloned(),
                    state.table.members(&service_type),
                ),
                reset,
            },
        };
        drop(state);
        // A feed waiting out its window may have been taken up again: the task's next
        // wake-up is recomputed.
        self.core.wake_expiry.notify_one();
        Ok(Subscription::new(
            &self.core,
            service_type,
            start,
            position,
            wake,
        ))
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

    /// The bytes the watch feeds take (their fixed costs and the changes they hold), as
    /// the `max_watch_bytes` bound counts them.
    pub fn watch_bytes(&self) -> usize {
        self.core.lock().feeds.bytes()
    }

    /// The number of entries held in memory. An expired entry the expiry task has not freed
    /// yet still counts, so this shows when memory is freed rather than what is live.
    pub fn len(&self) -> usize {
        self.core.lock().table.len()
    }

    /// What the entries take in memory, in bytes, as the byte bound counts it
    /// ([`RegistryConfig::max_registry_bytes`]): an upper bound of the heap they hold. An
    /// expired entry the expiry task has not freed yet still counts, as for
    /// [`Registry::len`].
    pub fn registry_bytes(&self) -> usize {
        self.core.lock().table.bytes()
    }

    /// How many references the deadline index holds, to live entries and stale ones (of
    /// entries deregistered or replaced since they were filed, which a sweep forgets once
    /// they outnumber the live ones): for tests and measurements of its memory.
    pub fn deadline_references(&self) -> usize {
        self.core.lock().table.deadline_references()
    }

    /// True when no entry is held in memory (see [`Registry::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long an instance learned from elsewhere lives here ([`Registry::upsert`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// This TTL from now, renewed by as much at each heartbeat here: the instance is this
    /// registry's to time, as if its client had registered here. The TTL is the one the
    /// instance was granted where it registered, and must be within this configuration's
    /// `min_ttl..=max_ttl` like a register's.
    Ttl(Duration),
    /// Until it is removed: another server times it, and says when it is gone.
    Held,
}

/// The refusal of a call about an instance found expired (and freed by the call).
fn expired() -> Error {
    Error::NotFound {
        reason: Some(RemoveReason::Expired),
    }
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
        assert!(registry.heartbeat(a1).is_err());

        assert!(registry.deregister(b1).is_ok());
        assert_consistent(&registry);
        assert_eq!(type_count(&registry), 1);

        advance(Duration::from_secs(2)).await;
        assert!(registry.heartbeat(a2).is_ok());
        advance(TTL - Duration::from_secs(2)).await;
        registry.expire_due_now();
        // a1_again expired; a2 was filed again under its new deadline.
        assert!(registry.heartbeat(a1_again).is_err());
        assert_eq!(registry.len(), 1);

        assert!(registry.deregister(a2).is_ok());
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
            assert!(registry.deregister(a).is_ok());
            assert!(registry.deregister(b).is_ok());
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
        assert!(registry.heartbeat(stays).is_ok());
        advance(Duration::from_millis(1)).await;
        let next = expire_due(&registry, usize::MAX);
        let expected = Instant::now() + TTL - Duration::from_millis(1);
        assert_eq!(next, Expiry::Until(expected));
        assert!(registry.heartbeat(goes).is_err());
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
        let expired = Err(Error::NotFound {
            reason: Some(RemoveReason::Expired),
        });
        assert_eq!(registry.heartbeat(by_heartbeat), expired);
        assert_eq!(registry.deregister(by_deregister).map(drop), expired);
        // The heartbeat and the deregister freed theirs; the query left its one to the task.
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.heartbeat(by_query), expired);
        assert!(registry.is_empty());
        assert_consistent(&registry);
    }

    #[tokio::test(start_paused = true)]
    async fn types_are_counted_exactly_with_expired_entries_not_freed() {
        let registry = Registry::without_expiry_task(RegistryConfig {
            ttl: TTL,
            ..RegistryConfig::default()
        });
        register(&registry, "a", 1);
        register(&registry, "a", 2);
        register(&registry, "b", 1);
        advance(Duration::from_secs(1)).await;
        let later = register(&registry, "b", 2);
        advance(TTL - Duration::from_secs(1)).await;
        // Four entries held, one of them live; no task has run.
        assert_eq!(registry.len(), 4);
        assert_eq!(registry.types(), vec![("b".to_string(), 1)]);
        assert_eq!(registry.len(), 1, "the listing freed what was due");
        assert_consistent(&registry);
        assert!(registry.heartbeat(later).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_of_removals_never_holds_more_than_its_bound() {
        let registry = Registry::new(RegistryConfig {
            ttl: TTL,
            remembered_removals: 3,
            ..RegistryConfig::default()
        });
        let remembered = |registry: &Registry| registry.core.lock().removals.len();
        let ids: Vec<Uuid> = (1..=5).map(|last| register(&registry, "a", last)).collect();
        for &id in &ids {
            assert!(registry.deregister(id).is_ok());
            assert!(remembered(&registry) <= 3);
        }
        assert_eq!(remembered(&registry), 3);
        // A mass expiry too.
        for last in 10..30 {
            register(&registry, "b", last);
        }
        advance(TTL).await;
        registry.expire_due_now();
        assert_eq!(remembered(&registry), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_expiry_pass_forgets_old_removals() {
        let max_ttl = Duration::from_secs(60);
        let registry = Registry::without_expiry_task(RegistryConfig {
            ttl: TTL,
            max_ttl,
            ..RegistryConfig::default()
        });
        let id = register(&registry, "a", 1);
        assert!(registry.deregister(id).is_ok());
        assert_eq!(registry.core.lock().removals.len(), 1);
        advance(max_ttl).await;
        registry.expire_due_now();
        assert_eq!(registry.core.lock().removals.len(), 0);
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
        assert!(registry.heartbeat(old).is_err());
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
        assert!(registry.heartbeat(id).is_ok());
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
