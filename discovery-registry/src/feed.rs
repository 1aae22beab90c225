//! The change feeds of watched types: revisions, a bounded history for resuming, and the
//! channel that wakes a type's watchers and no one else.
//!
//! Every change to any type (an instance added, updated, or removed with its reason) takes
//! the next revision, watched or not, so that a caller can ask whether the registry has
//! reached a revision ([`crate::Registry::reached`]). A type gets a feed when it is first
//! watched; from then on each of its changes is also kept in the feed's history and sent
//! on the feed's broadcast channel, which only that type's watchers receive. The feed
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
//! The broadcast channel is bounded: a watcher that falls more than its capacity behind
//! sees `Lagged` and is sent a reset snapshot instead, so no watcher makes the server
//! buffer without bound.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::{Instance, RemoveReason, Revision};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

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
    history: usize,
    queue: usize,
    window: Duration,
}

#[derive(Debug)]
struct Feed {
    sender: broadcast::Sender<Arc<Change>>,
    /// The latest changes, oldest first, at most `Feeds::history` of them.
    history: VecDeque<Arc<Change>>,
    /// `history` holds every change with a revision after this one.
    floor: u64,
    /// The type's latest revision.
    revision: u64,
    watchers: usize,
    /// When the feed may be forgotten, once it has no watcher.
    keep_until: Instant,
}

impl Feeds {
    /// Feeds that keep `history` changes per type, queue `queue` changes per watcher, and
    /// outlive their last watcher by `window`.
    pub(crate) fn new(history: usize, queue: usize, window: Duration) -> Self {
        Self {
            incarnation: uuid::Uuid::new_v4().as_u64_pair().0,
            seq: 0,
            reached: watch::Sender::new(0),
            feeds: HashMap::new(),
            forget: BTreeSet::new(),
            history,
            queue: queue.max(1),
            window,
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
        let Some(feed) = self.feeds.get_mut(service_type) else {
            return revision;
        };
        let change = Arc::new(Change {
            revision,
            event: event(),
        });
        feed.revision = self.seq;
        feed.history.push_back(Arc::clone(&change));
        while feed.history.len() > self.history {
            match feed.history.pop_front() {
                Some(oldest) => feed.floor = oldest.revision.seq,
                None => break,
            }
        }
        // No receiver is not an error: the feed may be waiting out its window.
        let _ = feed.sender.send(change);
        revision
    }

    /// Subscribes to `service_type`, creating its feed if needed. Returns how the watch
    /// starts (`None` when it needs a snapshot, which the registry takes under the same
    /// lock) and the receiver of the changes that follow.
    pub(crate) fn subscribe(
        &mut self,
        service_type: &Arc<str>,
        since: Option<Revision>,
        now: Instant,
    ) -> (
        Result<WatchStart, Revision>,
        broadcast::Receiver<Arc<Change>>,
    ) {
        if !self.feeds.contains_key(service_type) {
            // A new feed takes a revision of its own, so that no `since` from before it (when
            // the type's changes were not kept) can be taken for resumable.
            self.next_seq();
        }
        let feed = match self.feeds.entry(Arc::clone(service_type)) {
            Entry::Occupied(feed) => feed.into_mut(),
            Entry::Vacant(slot) => slot.insert(Feed {
                sender: broadcast::Sender::new(self.queue),
                history: VecDeque::new(),
                floor: self.seq,
                revision: self.seq,
                watchers: 0,
                keep_until: now,
            }),
        };
        let incarnation = self.incarnation;
        feed.watchers += 1;
        let receiver = feed.sender.subscribe();
        let start = match since {
            Some(since)
                if since.incarnation == incarnation
                    && (feed.floor..=feed.revision).contains(&since.seq) =>
            {
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
                seq: feed.revision,
            }),
        };
        (start, receiver)
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
                self.feeds.remove(&service_type);
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
}
