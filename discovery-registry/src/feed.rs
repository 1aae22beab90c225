//! The change feeds of watched types: revisions, a bounded history for resuming, and the
//! channel that wakes a type's watchers and no one else.
//!
//! Every change to any type (an instance added, updated, or removed with its reason) takes
//! the next revision, watched or not, so that a caller can ask whether the registry has
//! reached a revision ([`crate::Registry::reached`]). A type gets a feed when it is first
//! watched; from then on each of its changes is also kept in the feed's history, and the
//! feed's latest revision wakes that type's watchers and no one else. The feed
//! outlives its last watcher by a window, so that a client that reconnects within it can
//! resume where it stopped; then it is forgotten, whether the type still has instances or
//! not, and unwatched types cost no more than the count.
//!
//! Revisions come from one counter for the whole registry, never reused within a run, so a
//! revision can never be mistaken for one of another type or of an earlier feed of the same
//! type; the incarnation, chosen at random when the registry starts, tells them from the
//! revisions of an earlier run. Whoever waits for a revision subscribes to a `watch`
//! channel of the counter, which is sent to only while someone does: a change nobody waits
//! for costs one check of the receiver count.
//!
//! A feed holds one bounded structure, its history: the latest changes, at most
//! `max(--watch-history, --watch-queue)` of them, and, together with every other feed's,
//! at most `--max-watch-bytes` (the oldest changes of any feed are dropped first past it).
//! A watcher is not a queue of its own: it is a position in its feed's history, woken by
//! a `watch` channel of the feed's latest revision, and it takes the changes after its
//! position when it is polled. One that falls more than `--watch-queue` changes behind, or
//! whose next change was dropped from the history, is told it lagged and is sent a reset
//! snapshot instead, so no watcher makes the server buffer without bound. Nothing is
//! allocated up front for a feed beyond its map entry (there is no ring of `--watch-queue`
//! slots), and a feed is made only once the caps (`--max-watched-types`, and the bytes
//! bound for its fixed cost) allow it; a feed waiting out its window makes room first.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::{Instance, RemoveReason, Revision};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::footprint;
use crate::members::Members;

/// One change to a watched type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The type's revision after the change.
    pub revision: Revision,
    /// What changed.
    pub event: ChangeEvent,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    /// The instance appeared.
    Added(Instance),
    /// The instance's metadata changed in place: the same id and endpoint, and the same
    /// deadline. It carries the whole instance after the change.
    Updated(Instance),
    /// The instance is gone, for this reason.
    Removed(Instance, RemoveReason),
}

/// How a new subscription starts.
#[derive(Debug)]
pub enum WatchStart {
    /// With the instances of the type as of `revision`. `reset` when it replaces what the
    /// client knew: its `since` could not be resumed.
    Snapshot {
        /// The type's revision the snapshot starts from: the changes that follow are those
        /// after it.
        revision: Revision,
        /// The type's instances, to read in batches with
        /// [`Registry::visit`](crate::Registry::visit) as they are sent (or all at once with
        /// [`Registry::instances`](crate::Registry::instances)). An instance that changes
        /// after `revision` and before its batch is read as it is after the change, whose
        /// event then follows: applying that event again changes nothing.
        members: Members,
        /// True when a `since` was given and could not be resumed.
        reset: bool,
    },
    /// With the changes after the client's `since`, which could be resumed.
    Resume {
        /// The client's `since`.
        since: Revision,
        /// Every change after `since`, oldest first.
        missed: Vec<Arc<Change>>,
    },
}

/// The feeds of every watched type, and what decides when to forget them. Lives inside the
/// registry's state, under its lock, so that a change and its publication are one step.
#[derive(Debug)]
pub(crate) struct Feeds {
    incarnation: u64,
    /// The last revision given out, for any type.
    seq: u64,
    /// `seq`, for those waiting for a revision; sent to only while one of them waits.
    reached: watch::Sender<u64>,
    feeds: HashMap<Arc<str>, Feed>,
    /// Feeds whose last watcher left, under the instant they may be forgotten.
    forget: BTreeSet<(Instant, Arc<str>)>,
    /// Every change held in a history, oldest first, by revision and type: the order in
    /// which they are dropped when the bytes bound is reached.
    held: VecDeque<(u64, Arc<str>)>,
    /// The bytes the feeds take: their fixed costs and the changes they hold.
    bytes: usize,
    /// How many changes a feed keeps: the larger of the history and the queue, since a
    /// watcher a queue behind must still find its changes.
    keep: usize,
    /// How many changes behind a watcher may fall before it is sent a reset.
    queue: usize,
    /// How many changes behind a `since` may be and still be resumed.
    history: usize,
    window: Duration,
    max_feeds: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Feed {
    /// The latest changes, oldest first, at most `Feeds::keep` of them.
    history: VecDeque<Arc<Change>>,
    /// `history` holds every change with a revision after this one.
    floor: u64,
    /// The type's latest revision, sent to its watchers each time it grows.
    revision: watch::Sender<u64>,
    watchers: usize,
    /// When the feed may be forgotten, once it has no watcher.
    keep_until: Instant,
    /// What the feed costs besides its changes.
    fixed_bytes: usize,
}

impl Feed {
    fn latest(&self) -> u64 {
        *self.revision.borrow()
    }
}

/// What a feed costs in memory besides its changes: its map entry, its name (twice, as a
/// key and in a watcher's guard), its wake-up channel.
fn fixed_bytes(service_type: &str) -> usize {
    footprint::alloc(std::mem::size_of::<(Arc<str>, Feed)>() + 8)
        + footprint::alloc(service_type.len() + 16)
        + footprint::alloc(std::mem::size_of::<watch::Sender<u64>>() + 96)
}

/// What a change held in a history costs: its shared allocation and the instance's heap.
fn change_bytes(change: &Change) -> usize {
    let instance = match &change.event {
        ChangeEvent::Added(instance)
        | ChangeEvent::Updated(instance)
        | ChangeEvent::Removed(instance, _) => instance,
    };
    footprint::alloc(std::mem::size_of::<Change>() + 16)
        + footprint::instance_heap(instance)
        + std::mem::size_of::<(u64, Arc<str>)>()
}

/// What a watcher takes from its feed when polled.
#[derive(Debug)]
pub(crate) enum Taken {
    /// The changes after its position, oldest first (none: nothing new).
    Changes(Vec<Arc<Change>>),
    /// It fell behind: this many changes after its position are not there for it any
    /// more; the feed's latest revision is the second.
    Lagged(u64, u64),
    /// The feed is gone.
    Gone,
}

/// The most changes a watcher takes under one hold of the lock.
pub(crate) const TAKE_BATCH: usize = 64;

impl Feeds {
    /// Feeds that keep `history` changes per type, let a watcher fall `queue` changes behind,
    /// outlive their last watcher by `window`, and hold at most `max_feeds` feeds and
    /// `max_bytes` bytes.
    pub(crate) fn new(
        history: usize,
        queue: usize,
        window: Duration,
        max_feeds: usize,
        max_bytes: usize,
    ) -> Self {
        let queue = queue.max(1);
        Self {
            incarnation: uuid::Uuid::new_v4().as_u64_pair().0,
            seq: 0,
            reached: watch::Sender::new(0),
            feeds: HashMap::new(),
            forget: BTreeSet::new(),
            held: VecDeque::new(),
            bytes: 0,
            keep: history.max(queue),
            queue,
            history,
            window,
            max_feeds,
            max_bytes,
        }
    }

    /// The latest revision given out.
    pub(crate) fn latest(&self) -> Revision {
        Revision {
            incarnation: self.incarnation,
            seq: self.seq,
        }
    }

    /// A receiver of the latest revision's `seq`, sent each time it grows from now on. The
    /// caller compares with [`Feeds::latest`] under the same lock, so that no change can
    /// fall between its look and its subscription.
    pub(crate) fn wait_for_revisions(&self) -> watch::Receiver<u64> {
        self.reached.subscribe()
    }

    /// Takes the next revision, and tells whoever waits for one.
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        if self.reached.receiver_count() > 0 {
            self.reached.send_replace(self.seq);
        }
        self.seq
    }

    /// Takes the next revision for a change to `service_type`, and publishes the change to
    /// the type's watchers if it has a feed. `event` is only built when it does, so
    /// unwatched types pay nothing but the count. Returns the change's revision.
    pub(crate) fn publish(
        &mut self,
        service_type: &str,
        event: impl FnOnce() -> ChangeEvent,
    ) -> Revision {
        let seq = self.next_seq();
        let revision = Revision {
            incarnation: self.incarnation,
            seq,
        };
        let Some((name, _)) = self.feeds.get_key_value(service_type) else {
            return revision;
        };
        let name = Arc::clone(name);
        let Some(feed) = self.feeds.get_mut(service_type) else {
            return revision;
        };
        let change = Arc::new(Change {
            revision,
            event: event(),
        });
        self.bytes += change_bytes(&change);
        self.held.push_back((seq, name));
        feed.history.push_back(change);
        while feed.history.len() > self.keep {
            if let Some(oldest) = feed.history.pop_front() {
                feed.floor = oldest.revision.seq;
                self.bytes = self.bytes.saturating_sub(change_bytes(&oldest));
            }
        }
        // Watchers that wait are woken; none is not an error (the window).
        feed.revision.send_replace(seq);
        self.trim();
        revision
    }

    /// Drops the oldest changes held, of any feed, until the bytes are within the bound.
    fn trim(&mut self) {
        while self.bytes > self.max_bytes {
            let Some((seq, service_type)) = self.held.pop_front() else {
                return;
            };
            let Some(feed) = self.feeds.get_mut(&service_type) else {
                continue;
            };
            // Dropped already if the history's count bound took it.
            if feed
                .history
                .front()
                .is_some_and(|oldest| oldest.revision.seq == seq)
                && let Some(oldest) = feed.history.pop_front()
            {
                feed.floor = seq;
                self.bytes = self.bytes.saturating_sub(change_bytes(&oldest));
            }
        }
        // Entries of changes the count bound dropped are forgotten as they reach the front.
        while let Some((seq, service_type)) = self.held.front() {
            let stale = self
                .feeds
                .get(service_type)
                .is_none_or(|feed| feed.history.front().is_none_or(|f| f.revision.seq > *seq));
            if !stale {
                break;
            }
            self.held.pop_front();
        }
    }

    /// Makes room for one more feed of `fixed` bytes: forgets feeds waiting out their
    /// window, oldest first, while the caps would be passed.
    fn make_room(&mut self, fixed: usize) -> Result<(), Error> {
        loop {
            let full = self.feeds.len() >= self.max_feeds;
            let fixed_total: usize = self.fixed_total();
            let too_big = fixed_total + fixed > self.max_bytes;
            if !full && !too_big {
                // The changes held give way to a new feed's fixed cost.
                self.bytes += fixed;
                self.trim();
                self.bytes -= fixed;
                return Ok(());
            }
            let Some((_, service_type)) = self.forget.pop_first() else {
                return Err(if full {
                    Error::WatchedTypeLimit {
                        max: self.max_feeds,
                    }
                } else {
                    Error::WatchBytesLimit {
                        max: self.max_bytes,
                    }
                });
            };
            if self
                .feeds
                .get(&service_type)
                .is_some_and(|feed| feed.watchers == 0)
            {
                self.remove_feed(&service_type);
            }
        }
    }

    /// The fixed costs of every feed.
    fn fixed_total(&self) -> usize {
        self.feeds.values().map(|feed| feed.fixed_bytes).sum()
    }

    fn remove_feed(&mut self, service_type: &Arc<str>) {
        if let Some(feed) = self.feeds.remove(service_type) {
            let held: usize = feed.history.iter().map(|c| change_bytes(c)).sum();
            self.bytes = self
                .bytes
                .saturating_sub(held)
                .saturating_sub(feed.fixed_bytes);
        }
    }

    /// Subscribes to `service_type`, creating its feed if the caps allow. Returns how the
    /// watch starts (`Err(revision)` when it needs a snapshot, which the registry takes under
    /// the same lock), the watcher's position and its wake-up receiver.
    ///
    /// # Errors
    ///
    /// [`Error::WatchedTypeLimit`] or [`Error::WatchBytesLimit`] when a new feed would pass a
    /// cap and no feed waiting out its window can make room; nothing is allocated then.
    #[allow(clippy::type_complexity)]
    pub(crate) fn subscribe(
        &mut self,
        service_type: &Arc<str>,
        since: Option<Revision>,
        now: Instant,
    ) -> Result<(Result<WatchStart, Revision>, u64, watch::Receiver<u64>), Error> {
        if !self.feeds.contains_key(service_type) {
            let fixed = fixed_bytes(service_type);
            self.make_room(fixed)?;
            // A new feed takes a revision of its own, so that no `since` from before it (when
            // the type's changes were not kept) can be taken for resumable.
            let seq = self.next_seq();
            self.bytes += fixed;
            self.feeds.insert(
                Arc::clone(service_type),
                Feed {
                    history: VecDeque::new(),
                    floor: seq,
                    revision: watch::Sender::new(seq),
                    watchers: 0,
                    keep_until: now,
                    fixed_bytes: fixed,
                },
            );
        }
        let incarnation = self.incarnation;
        let Some(feed) = self.feeds.get_mut(service_type) else {
            return Err(Error::WatchedTypeLimit {
                max: self.max_feeds,
            });
        };
        feed.watchers += 1;
        let latest = feed.latest();
        let receiver = feed.revision.subscribe();
        let resumable = |since: Revision| {
            since.incarnation == incarnation
                && (feed.floor..=latest).contains(&since.seq)
                && feed
                    .history
                    .iter()
                    .rev()
                    .take(self.history + 1)
                    .filter(|change| change.revision.seq > since.seq)
                    .count()
                    <= self.history
        };
        let start = match since {
            Some(since) if resumable(since) => {
                let missed = feed
                    .history
                    .iter()
                    .filter(|change| change.revision.seq > since.seq)
                    .cloned()
                    .collect();
                Ok(WatchStart::Resume { since, missed })
            }
            _ => Err(Revision {
                incarnation,
                seq: latest,
            }),
        };
        Ok((start, latest, receiver))
    }

    /// The changes of `service_type` after `position`, for a watcher there: at most a batch,
    /// or that it lagged.
    pub(crate) fn take(&self, service_type: &str, position: u64) -> Taken {
        let Some(feed) = self.feeds.get(service_type) else {
            return Taken::Gone;
        };
        if position < feed.floor {
            return Taken::Lagged(feed.latest().saturating_sub(position), feed.latest());
        }
        let start = feed
            .history
            .partition_point(|change| change.revision.seq <= position);
        let behind = feed.history.len() - start;
        if behind > self.queue {
            return Taken::Lagged((behind - self.queue) as u64, feed.latest());
        }
        Taken::Changes(
            feed.history
                .range(start..)
                .take(TAKE_BATCH)
                .cloned()
                .collect(),
        )
    }

    /// A watcher of `service_type` left. The feed is kept for the window, then forgotten
    /// unless someone watches it again.
    pub(crate) fn unsubscribe(&mut self, service_type: &Arc<str>, now: Instant) {
        let Some(feed) = self.feeds.get_mut(service_type) else {
            return;
        };
        feed.watchers = feed.watchers.saturating_sub(1);
        if feed.watchers == 0 {
            // A window too long for an `Instant` keeps the feed for as long as the registry.
            if let Some(keep_until) = now.checked_add(self.window) {
                feed.keep_until = keep_until;
                self.forget.insert((keep_until, Arc::clone(service_type)));
            }
        }
    }

    /// Forgets the feeds whose window has passed with no watcher; returns when the next
    /// one may be due.
    pub(crate) fn forget_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some((at, service_type)) = self.forget.first().cloned() {
            if at > now {
                return Some(at);
            }
            self.forget.pop_first();
            let expired = self
                .feeds
                .get(&service_type)
                .is_some_and(|feed| feed.watchers == 0 && feed.keep_until <= now);
            if expired {
                self.remove_feed(&service_type);
            }
        }
        None
    }

    /// When the next feed may be forgotten, if one waits for that.
    pub(crate) fn next_forget(&self) -> Option<Instant> {
        self.forget.first().map(|(at, _)| *at)
    }

    /// The number of types with a feed.
    pub(crate) fn len(&self) -> usize {
        self.feeds.len()
    }

    /// The bytes the feeds take, as [`footprint`] counts them.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}
