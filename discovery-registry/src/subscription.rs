//! A subscription to the change feed of one type: how it starts, the stream of changes
//! after that, and the guard that tells the feed when its subscriber leaves.
//!
//! A watch, at any level above the registry (a client's `Watch` request, the server's
//! open watches of a connection), is served by one subscription.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::feed::{Change, WatchStart};
use crate::state::Core;

/// A subscription to the changes of one type, from [`crate::Registry::watch`].
///
/// It is a `Stream` of the changes after its start, oldest first. A subscriber that falls
/// more than the queue behind gets an error (`Lagged`) instead of the changes it missed:
/// it must then be sent a reset snapshot, from [`crate::Registry::resubscribe`]. Dropping
/// the subscription ends it; the type's feed is then kept for the history window, for a
/// resume.
#[derive(Debug)]
pub struct Subscription {
    start: Option<WatchStart>,
    changes: BroadcastStream<Arc<Change>>,
    guard: Guard,
}

impl Stream for Subscription {
    type Item = Result<Arc<Change>, BroadcastStreamRecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.changes).poll_next(cx)
    }
}

impl Subscription {
    /// A subscription of `service_type` that starts with `start`; the feed has already
    /// counted it as a subscriber.
    pub(crate) fn new(
        core: &Arc<Core>,
        service_type: Arc<str>,
        start: WatchStart,
        changes: broadcast::Receiver<Arc<Change>>,
    ) -> Self {
        Self {
            start: Some(start),
            changes: BroadcastStream::new(changes),
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
