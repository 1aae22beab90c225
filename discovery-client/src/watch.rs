//! [`Watch`]: the changes of one service type, pushed by the server, as a `Stream` of
//! [`WatchEvent`]s that survives reconnections.
//!
//! A watch starts with a [`WatchEvent::Snapshot`] of the type's live instances, then
//! reports every change as [`WatchEvent::Added`], [`WatchEvent::Updated`] (new metadata,
//! same id) or [`WatchEvent::Removed`], each with the type's new
//! [`Revision`](crate::Revision). Applying the events in order to the snapshot gives the instances
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

use discovery_proto::Request;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::caller::Caller;
use crate::error::Error;
use crate::watch_channel::{Control, Item, NewWatch, WatchKey, next_watch_key};

// Defined below the watch machinery (both the worker and the handles use it); its home
// for programs is here, next to the `Watch` that yields it.
pub use crate::event::WatchEvent;

/// The changes of one service type, as a [`Stream`] of [`WatchEvent`]s; made by
/// [`Client::watch`](crate::Client::watch).
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
/// let id = client.register_once(&ServiceSpec::new("billing", "127.0.0.1:8080".parse()?)).await?.id;
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
    caller: Caller,
}

impl Watch {
    /// Opens a watch of `service_type` through `caller`'s worker; returns once the server
    /// has accepted it and its first snapshot is in the buffer.
    pub(crate) async fn open(caller: Caller, service_type: String) -> Result<Watch, Error> {
        let key = next_watch_key();
        let (events, receiver) = mpsc::channel(caller.watch_buffer());
        // Made first, so that a call given up or cancelled midway unsubscribes on drop.
        let watch = Watch {
            key,
            service_type: service_type.clone(),
            events: receiver,
            caller: caller.clone(),
        };
        // The worker stamps the client's latest change as the `min_revision`, so that the
        // snapshot includes what this client registered just before.
        let request = Request::Watch {
            service_type: service_type.clone(),
            since: None,
            min_revision: None,
        };
        let new = NewWatch {
            key,
            service_type,
            events,
        };
        caller.open_watch(request, new).await?;
        Ok(watch)
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
                self.caller.control(Control::Resync(self.key));
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
        self.caller.control(Control::Close(self.key));
    }
}
