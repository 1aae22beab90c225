//! A subscription to the change feed of one type: how it starts, the stream of changes
//! after that, and the guard that tells the feed when its subscriber leaves.
//!
//! A watch, at any level above the registry (a client's `Watch` request, the server's
//! open watches of a connection), is served by one subscription. It holds no queue of its
//! own: it is a position in its feed's history, woken by the feed's latest revision, and it
//! takes the changes after its position (a small batch at a time) when it is polled.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;

use crate::feed::{Change, Taken, WatchStart};
use crate::state::Core;

/// A subscriber fell behind: the changes after its position are no longer kept for it
/// (it was more than `--watch-queue` changes behind, or the bytes bound dropped them). It
/// must be sent a reset snapshot, from [`crate::Registry::resubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the watcher fell {missed} changes behind")]
pub struct Lagged {
    /// About how many changes it missed.
    pub missed: u64,
}

/// A subscription to the changes of one type, from [`crate::Registry::watch`].
///
/// It is a `Stream` of the changes after its start, oldest first. A subscriber that falls
/// behind gets [`Lagged`] instead of the changes it missed, then the changes after the
/// feed's latest revision. Dropping the subscription ends it; the type's feed is then kept
/// for the history window, for a resume.
#[derive(Debug)]
pub struct Subscription {
    start: Option<WatchStart>,
    /// The revision of the last change taken.
    position: u64,
    /// Changes taken from the feed and not yet yielded: at most a batch.
    pending: VecDeque<Arc<Change>>,
    /// True when the feed may have changes after `position` not taken yet.
    dirty: bool,
    wake: WatchStream<u64>,
    guard: Guard,
}

impl Stream for Subscription {
    type Item = Result<Arc<Change>, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.pending.pop_front() {
                this.position = change.revision.seq;
                return Poll::Ready(Some(Ok(change)));
            }
            if this.dirty {
                let Some(core) = this.guard.core.upgrade() else {
                    return Poll::Ready(None);
                };
                let taken = core
                    .lock()
                    .feeds
                    .take(&this.guard.service_type, this.position);
                match taken {
                    Taken::Changes(changes) => {
                        this.dirty = changes.len() == crate::feed::TAKE_BATCH;
                        if !changes.is_empty() {
                            this.pending.extend(changes);
                            continue;
                        }
                    }
                    Taken::Lagged(missed, latest) => {
                        this.position = latest;
                        this.dirty = false;
                        return Poll::Ready(Some(Err(Lagged { missed })));
                    }
                    Taken::Gone => return Poll::Ready(None),
                }
            }
            match Pin::new(&mut this.wake).poll_next(cx) {
                Poll::Ready(Some(_)) => this.dirty = true,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Subscription {
    /// A subscription of `service_type` that starts with `start` at revision `position`;
    /// the feed has already counted it as a subscriber.
    pub(crate) fn new(
        core: &Arc<Core>,
        service_type: Arc<str>,
        start: WatchStart,
        position: u64,
        wake: watch::Receiver<u64>,
    ) -> Self {
        // A resume's changes up to the feed's latest come with its start.
        Self {
            start: Some(start),
            position,
            pending: VecDeque::new(),
            dirty: false,
            wake: WatchStream::from_changes(wake),
            guard: Guard {
                core: Arc::downgrade(core),
                service_type,
            },
        }
    }

    /// How the subscription starts: a snapshot or the missed changes. `None` once taken.
    pub fn take_start(&mut self) -> Option<WatchStart> {
        self.start.take()
    }

    /// The watched type.
    pub fn service_type(&self) -> &str {
        &self.guard.service_type
    }
}

/// Tells the feed that a subscriber left, when its subscription is dropped.
#[derive(Debug)]
struct Guard {
    core: Weak<Core>,
    service_type: Arc<str>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.lock()
                .feeds
                .unsubscribe(&self.service_type, Instant::now());
            core.wake_expiry.notify_one();
        }
    }
}
