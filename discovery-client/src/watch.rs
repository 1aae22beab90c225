//! [`Watch`]: the changes of one service type, pushed by the server, as a `Stream` of
//! [`WatchEvent`]s that survives reconnections.
//!
//! A watch starts with a [`WatchEvent::Snapshot`] of the type's live instances, then
//! reports every change as [`WatchEvent::Added`] or [`WatchEvent::Removed`], each with the
//! type's new [`Revision`]. Applying the events in order to the snapshot gives the instances
//! the server lists, at every revision.
//!
//! When the connection breaks, the watch says [`WatchEvent::Disconnected`] and the client's
//! worker subscribes again on the next connection with the last revision the consumer was
//! given. The server then sends either exactly the changes missed meanwhile (the watch says
//! [`WatchEvent::Resumed`] and they follow as ordinary events, none lost or doubled), or,
//! when it no longer holds them (another server, a restart, an outage longer than its
//! history), a new snapshot with `reset: true` that replaces what the consumer knew.
//!
//! The worker never waits for a consumer: each watch has a bounded buffer (see
//! [`ClientBuilder::watch_buffer`](crate::ClientBuilder::watch_buffer)). A consumer that
//! lets it fill up gets [`WatchEvent::Lagged`] after the events that fitted; the worker
//! drops what follows and unsubscribes, and once the consumer has read the `Lagged` it
//! subscribes again and sends a snapshot with `reset: true`. Memory stays bounded and the
//! consumer ends up consistent; other calls on the client are never held up.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use discovery_proto::{Instance, RemoveReason, Revision};
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::client::Client;

/// Names a watch inside one client, across the connections it lives on (its request id
/// changes with every connection).
pub(crate) type WatchKey = u64;

/// What the worker puts in a watch's buffer.
#[derive(Debug)]
pub(crate) enum Item {
    /// An event for the consumer.
    Event(WatchEvent),
    /// The buffer was full, so events were dropped after this point: put in the last free
    /// slot, so that the consumer finds it after every event that fitted.
    Lagged,
}

/// What a [`Watch`] tells the worker, without waiting.
#[derive(Debug)]
pub(crate) enum Control {
    /// The consumer read [`Item::Lagged`]: its buffer has room again, so subscribe anew.
    Resync(WatchKey),
    /// The watch was dropped: unsubscribe and forget it.
    Close(WatchKey),
}

/// What the worker needs to open a watch, handed over with its `Watch` request.
#[derive(Debug)]
pub(crate) struct NewWatch {
    pub(crate) key: WatchKey,
    pub(crate) service_type: String,
    pub(crate) events: mpsc::Sender<Item>,
}

/// One thing that happened to a watched type, or to the watch itself.
///
/// The first event of a watch is always a `Snapshot`. A consumer that keeps a list of
/// instances replaces it on every `Snapshot`, inserts on `Added` and removes on `Removed`;
/// the other events say how current that list is. Revisions of the events that carry one
/// only grow, except that a `Snapshot` with `reset: true` may start from any revision (it
/// may come from another server, or from a restarted one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// Every live instance of the type as of `revision`, joined from however many frames
    /// the server sent it in. It replaces whatever the consumer knew.
    Snapshot {
        /// The type's revision this snapshot is as of.
        revision: Revision,
        /// The live instances, in no particular order.
        instances: Vec<Instance>,
        /// False for the first snapshot of a watch; true when it replaces an earlier view:
        /// the missed changes could not be resumed after a reconnection, or the consumer
        /// fell behind (after [`WatchEvent::Lagged`]).
        reset: bool,
    },
    /// An instance appeared (registered, or registered again after it was forgotten).
    Added {
        /// The type's revision after this change.
        revision: Revision,
        /// The new instance.
        instance: Instance,
    },
    /// An instance is gone.
    Removed {
        /// The type's revision after this change.
        revision: Revision,
        /// The instance as it was last.
        instance: Instance,
        /// Why: deregistered, expired, or replaced by a register of the same type, ip and
        /// port (an `Added` of the new instance follows at once).
        reason: RemoveReason,
    },
    /// The connection to the server broke (or the server shut down). The watch keeps
    /// trying to reconnect, failing over between the client's addresses with backoff; what
    /// the consumer knows is stale until a `Resumed` or a `Snapshot` comes.
    Disconnected {
        /// Why the connection ended, for people.
        reason: String,
    },
    /// The watch is current again after a `Disconnected`: the server still held the
    /// changes made since `revision` (the last one the consumer was given), and they follow
    /// as `Added` and `Removed` events.
    Resumed {
        /// The revision the watch resumed from.
        revision: Revision,
    },
    /// The consumer did not keep up: its buffer filled, so later events were dropped. A
    /// `Snapshot` with `reset: true` follows (once the server has sent it) and makes the
    /// consumer current again.
    Lagged,
}

impl WatchEvent {
    /// The type's revision after this event, for the events that carry one.
    pub fn revision(&self) -> Option<Revision> {
        match self {
            WatchEvent::Snapshot { revision, .. }
            | WatchEvent::Added { revision, .. }
            | WatchEvent::Removed { revision, .. }
            | WatchEvent::Resumed { revision } => Some(*revision),
            WatchEvent::Disconnected { .. } | WatchEvent::Lagged => None,
        }
    }
}

/// The changes of one service type, as a [`Stream`] of [`WatchEvent`]s; made by
/// [`Client::watch`].
///
/// It lives across reconnections and server restarts (see the [module](self) for how), and
/// ends (`None`) only when the client's worker stops or a server refuses to open the watch
/// again on a new connection (a server with a lower watch limit, say), which is logged.
///
/// Dropping it unsubscribes: the worker sends `Unwatch` and forgets the watch.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let server_address = listener.local_addr()?;
/// # let stop = tokio_util::sync::CancellationToken::new();
/// # let server = tokio::spawn(discovery_server::server::run(listener, Default::default(), stop.clone()));
/// use discovery_client::{Client, RemoveReason, ServiceSpec, WatchEvent};
///
/// let client = Client::builder().address(server_address).build()?;
/// let mut watch = client.watch("billing").await?;
/// let Some(WatchEvent::Snapshot { instances, reset: false, .. }) = watch.recv().await else {
///     panic!("a watch starts with a snapshot");
/// };
/// assert!(instances.is_empty());
///
/// let id = client.register_once(&ServiceSpec::new("billing", "127.0.0.1:8080".parse()?)).await?;
/// match watch.recv().await {
///     Some(WatchEvent::Added { instance, .. }) => assert_eq!(instance.id, id),
///     other => panic!("{other:?}"),
/// }
/// client.deregister(id).await?;
/// match watch.recv().await {
///     Some(WatchEvent::Removed { instance, reason, .. }) => {
///         assert_eq!(instance.id, id);
///         assert_eq!(reason, RemoveReason::Deregistered);
///     }
///     other => panic!("{other:?}"),
/// }
/// # drop((watch, client));
/// # stop.cancel();
/// # server.await??;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a watch does nothing unless its events are read"]
pub struct Watch {
    key: WatchKey,
    service_type: String,
    events: mpsc::Receiver<Item>,
    /// Keeps the worker alive, and carries `Control` messages to it.
    client: Client,
}

impl Watch {
    pub(crate) fn new(
        key: WatchKey,
        service_type: String,
        events: mpsc::Receiver<Item>,
        client: Client,
    ) -> Self {
        Self {
            key,
            service_type,
            events,
            client,
        }
    }

    /// The watched type.
    pub fn service_type(&self) -> &str {
        &self.service_type
    }

    /// The next event; `None` once the watch has ended. The same as `StreamExt::next`,
    /// without importing a stream trait. Cancel-safe: an event is never lost by dropping
    /// the future.
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        match ready!(self.events.poll_recv(cx)) {
            Some(Item::Event(event)) => Poll::Ready(Some(event)),
            Some(Item::Lagged) => {
                // Everything before the marker has been read: there is room for a snapshot.
                self.client.control(Control::Resync(self.key));
                Poll::Ready(Some(WatchEvent::Lagged))
            }
            None => Poll::Ready(None),
        }
    }
}

impl Stream for Watch {
    type Item = WatchEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.client.control(Control::Close(self.key));
    }
}
