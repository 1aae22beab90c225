//! The worker's [`WatchTable`] of open watches: which request id each has on the current
//! connection, the last revision its consumer was given, the snapshot it is receiving, and
//! its bounded buffer.
//!
//! Frames of a watch carry the id of its `Watch` request, and pushes interleave with the
//! answers to other requests; the worker hands every frame whose id is a watch's here
//! rather than to its queue of requests waiting for answers. The answer that starts a
//! watch (a complete snapshot, `Resumed`, or an error) also completes that request, so its
//! timeout and its caller are handled like any other request's.
//!
//! Delivery never waits: an event that does not fit in the consumer's buffer is dropped,
//! the last free slot gets [`Item::Lagged`], and the watch is unsubscribed until the
//! consumer has read the marker (and so emptied its buffer) and asks for a resync.
//!
//! Snapshots come as compact entries, their type said by the watch; the table rebuilds
//! whole [`Instance`]s so that consumers never see the difference. A frame of a watch that
//! does not decode (a change of a kind this client does not know, from a newer server)
//! reopens the watch from the last revision its consumer was given; if the same frame
//! comes back before the watch got any further, it is reopened without `since`, and the
//! reset snapshot moves it past the frame.

use std::collections::HashMap;

use discovery_proto::{ErrorKind, Instance, Request, RequestId, Response, Revision};
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, warn};

use crate::call::Outcome;
use crate::error::Error;
use crate::event::WatchEvent;
use crate::watch_channel::{Control, Item, NewWatch, WatchKey};

/// What the table needs from the worker's connection.
pub(crate) trait Outbox {
    /// Sends a request of the worker's own on the current connection, with the request
    /// timeout; `None` when there is no connection.
    fn send(&mut self, request: Request) -> Option<RequestId>;
    /// Completes request `id` with `outcome`, if it is still waiting.
    fn answer(&mut self, id: RequestId, outcome: Outcome);
    /// Starts the request timeout of `id` again: a part of its answer came.
    fn touch(&mut self, id: RequestId);
    /// Request `id` was answered `Unavailable`: its caller's call, with `watch` for a
    /// watch that was opening, goes to the next connection if it may, or fails with
    /// `error`.
    fn unavailable(&mut self, id: RequestId, error: Error, watch: Option<NewWatch>);
}

/// What a frame of a watch did to its request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WatchFrame {
    /// A part of a snapshot, a change, or a frame ignored: the request goes on (or is
    /// long done).
    Pushed,
    /// The start of the watch, or a refusal: its request is complete.
    Answered,
    /// The server cannot serve now: the connection should move on to the next server,
    /// where the watch opens again.
    Unavailable {
        /// The server's explanation.
        message: String,
    },
}

/// Every open watch of the client.
#[derive(Debug, Default)]
pub(crate) struct WatchTable {
    watches: HashMap<WatchKey, OpenWatch>,
    /// The watches subscribed on the current connection, by their request id there.
    by_request: HashMap<RequestId, WatchKey>,
}

/// One open watch, as the worker keeps it.
#[derive(Debug)]
struct OpenWatch {
    service_type: String,
    events: tokio::sync::mpsc::Sender<Item>,
    /// The revision of the last event given to the consumer: where its next `Watch`
    /// request resumes.
    revision: Option<Revision>,
    /// The id of its `Watch` on the current connection; `None` while not subscribed.
    request: Option<RequestId>,
    /// Its first snapshot has not come yet: `Client::watch` waits on the request.
    opening: bool,
    /// The parts of a snapshot received so far.
    partial: Option<PartialSnapshot>,
    /// Its buffer filled: unsubscribed, and waiting for the consumer to ask for a resync.
    stale: bool,
    /// Its next `Watch` request starts afresh (no `since`) and its snapshot is a reset.
    reset_next: bool,
    /// The revision it was last reopened from because a frame of it did not decode: a
    /// second such frame at the same revision makes it start afresh instead.
    reopened_at: Option<Revision>,
}

/// A snapshot whose last part has not come yet.
#[derive(Debug)]
struct PartialSnapshot {
    revision: Revision,
    reset: bool,
    instances: Vec<Instance>,
}

/// What became of an event handed to a consumer.
enum Delivery {
    /// In the buffer.
    Sent,
    /// Dropped: the buffer is full, or was earlier and the consumer has not caught up.
    Dropped,
    /// The consumer is gone.
    Gone,
}

impl WatchTable {
    /// Records a watch whose `Watch` request was just written under `request`.
    pub(crate) fn open(&mut self, request: RequestId, new: NewWatch) {
        self.by_request.insert(request, new.key);
        self.watches.insert(
            new.key,
            OpenWatch {
                service_type: new.service_type,
                events: new.events,
                revision: None,
                request: Some(request),
                opening: true,
                partial: None,
                stale: false,
                reset_next: false,
                reopened_at: None,
            },
        );
    }

    /// True when frames with this request id belong to a watch.
    pub(crate) fn owns(&self, request: RequestId) -> bool {
        self.by_request.contains_key(&request)
    }

    /// True when some watch needs a connection (one that is not waiting for its consumer).
    pub(crate) fn want_connection(&self) -> bool {
        self.watches.values().any(|watch| !watch.stale)
    }

    /// True when some watch is subscribed on the current connection.
    pub(crate) fn any_subscribed(&self) -> bool {
        !self.by_request.is_empty()
    }

    /// A new connection is up: subscribes every watch that wants it, resuming from the
    /// last revision its consumer was given.
    pub(crate) fn subscribe_all(&mut self, out: &mut impl Outbox) {
        for (key, watch) in &mut self.watches {
            if watch.request.is_none() && !watch.stale {
                subscribe(*key, watch, &mut self.by_request, out);
            }
        }
    }

    /// The connection ended: watches still opening are dropped (their callers are told by
    /// the failed request), the others are told and wait for the next connection.
    pub(crate) fn connection_lost(&mut self, reason: &str) {
        self.by_request.clear();
        self.watches.retain(|_, watch| {
            if watch.opening {
                return false;
            }
            watch.partial = None;
            if watch.request.take().is_none() {
                // Not subscribed (waiting for its consumer): it has nothing to be told.
                return true;
            }
            let event = WatchEvent::Disconnected {
                reason: reason.to_owned(),
            };
            // Lagging here needs no unsubscribe: the connection is gone.
            !matches!(deliver(watch, event), Delivery::Gone)
        });
    }

    /// A message from a `Watch` handle.
    pub(crate) fn control(&mut self, control: Control, out: &mut impl Outbox) {
        match control {
            Control::Resync(key) => {
                let Some(watch) = self.watches.get_mut(&key) else {
                    return;
                };
                if !watch.stale {
                    return;
                }
                watch.stale = false;
                watch.reset_next = true;
                if watch.request.is_none() {
                    // Without a connection, `subscribe_all` does it on the next one.
                    subscribe(key, watch, &mut self.by_request, out);
                }
            }
            Control::Close(key) => {
                if let Some(mut watch) = self.watches.remove(&key) {
                    unsubscribe(&mut watch, &mut self.by_request, out);
                }
            }
        }
    }

    /// A frame of watch `request` came: what it did to the request.
    pub(crate) fn on_frame(
        &mut self,
        request: RequestId,
        response: Response,
        out: &mut impl Outbox,
    ) -> WatchFrame {
        let Some(&key) = self.by_request.get(&request) else {
            return WatchFrame::Pushed;
        };
        let Some(watch) = self.watches.get_mut(&key) else {
            self.by_request.remove(&request);
            return WatchFrame::Pushed;
        };
        let (event, answered) = match response {
            Response::Snapshot {
                revision,
                reset,
                instances,
                more,
            } => {
                let partial = watch.partial.get_or_insert_with(|| PartialSnapshot {
                    revision,
                    reset,
                    instances: Vec::new(),
                });
                let service_type = &watch.service_type;
                partial.instances.extend(
                    instances
                        .into_iter()
                        .map(|entry| Instance::from_entry(service_type.as_str(), entry)),
                );
                if more {
                    out.touch(request);
                    return WatchFrame::Pushed;
                }
                let Some(partial) = watch.partial.take() else {
                    return WatchFrame::Pushed;
                };
                let reset = partial.reset || std::mem::take(&mut watch.reset_next);
                let event = WatchEvent::Snapshot {
                    revision: partial.revision,
                    instances: partial.instances,
                    reset,
                };
                (event, true)
            }
            Response::Resumed { revision } => (WatchEvent::Resumed { revision }, true),
            Response::Added { revision, instance } => {
                if is_old(watch, revision) {
                    return WatchFrame::Pushed;
                }
                (WatchEvent::Added { revision, instance }, false)
            }
            Response::Updated { revision, instance } => {
                if is_old(watch, revision) {
                    return WatchFrame::Pushed;
                }
                (WatchEvent::Updated { revision, instance }, false)
            }
            Response::Removed {
                revision,
                instance,
                reason,
            } => {
                if is_old(watch, revision) {
                    return WatchFrame::Pushed;
                }
                let event = WatchEvent::Removed {
                    revision,
                    instance,
                    reason,
                };
                (event, false)
            }
            Response::Error {
                kind: ErrorKind::Unavailable,
                message,
            } => {
                let error = Error::Rejected {
                    kind: ErrorKind::Unavailable,
                    message: message.clone(),
                };
                self.by_request.remove(&request);
                if watch.opening {
                    // Its caller is still waiting: the call goes to the next server.
                    if let Some(watch) = self.watches.remove(&key) {
                        let new = NewWatch {
                            key,
                            service_type: watch.service_type,
                            events: watch.events,
                        };
                        out.unavailable(request, error, Some(new));
                    }
                } else {
                    // Open already: it is subscribed again on the next connection, and
                    // its consumer knows its list is not current meanwhile.
                    out.unavailable(request, error, None);
                    watch.request = None;
                    watch.partial = None;
                    let event = WatchEvent::Disconnected {
                        reason: format!("the server cannot serve now ({message})"),
                    };
                    if matches!(deliver(watch, event), Delivery::Gone) {
                        self.watches.remove(&key);
                    }
                }
                return WatchFrame::Unavailable { message };
            }
            Response::Error { kind, message } => {
                return self.refused(key, request, Error::Rejected { kind, message }, out);
            }
            Response::Throttled { retry_after_ms } => {
                let error = Error::Throttled {
                    retry_after: std::time::Duration::from_millis(retry_after_ms),
                };
                return self.refused(key, request, error, out);
            }
            other => {
                debug!(request, response = ?other, "ignoring a frame of a watch that no watch sends");
                return WatchFrame::Pushed;
            }
        };
        let delivery = deliver(watch, event);
        if delivery_advanced(watch) {
            watch.reopened_at = None;
        }
        if answered {
            watch.opening = false;
            out.answer(request, Ok(Response::Ok));
        }
        match delivery {
            Delivery::Sent => {}
            Delivery::Dropped => unsubscribe(watch, &mut self.by_request, out),
            Delivery::Gone => {
                if let Some(mut watch) = self.watches.remove(&key) {
                    unsubscribe(&mut watch, &mut self.by_request, out);
                }
            }
        }
        if answered {
            WatchFrame::Answered
        } else {
            WatchFrame::Pushed
        }
    }

    /// The server refused to open watch `key` (its request `request`): the caller of a
    /// watch still opening gets the error; an open watch ends, rather than be refused
    /// again and again.
    fn refused(
        &mut self,
        key: WatchKey,
        request: RequestId,
        error: Error,
        out: &mut impl Outbox,
    ) -> WatchFrame {
        if let Some(watch) = self.watches.get(&key)
            && !watch.opening
        {
            warn!(service_type = %watch.service_type, %error, "the server refused to open a watch again; it ends");
        }
        out.answer(request, Err(error));
        self.by_request.remove(&request);
        // Dropping its buffer's sender ends the consumer's stream.
        self.watches.remove(&key);
        WatchFrame::Answered
    }

    /// A frame of watch `request` did not decode: the watch may have missed a change, so it
    /// is opened again from the last revision its consumer was given, or afresh (a reset
    /// snapshot) when that already brought the same trouble back; a watch still opening
    /// fails instead, with `error`.
    pub(crate) fn on_undecodable(
        &mut self,
        request: RequestId,
        error: Error,
        out: &mut impl Outbox,
    ) {
        let Some(key) = self.by_request.get(&request).copied() else {
            return;
        };
        let Some(watch) = self.watches.get_mut(&key) else {
            return;
        };
        warn!(service_type = %watch.service_type, %error, "undecodable frame of a watch; opening it again");
        out.answer(request, Err(error));
        unsubscribe(watch, &mut self.by_request, out);
        if watch.opening {
            self.watches.remove(&key);
            return;
        }
        if watch.reopened_at.is_some() && watch.reopened_at == watch.revision {
            // Resuming brought the frame back: start afresh, past it.
            watch.reset_next = true;
            watch.reopened_at = None;
        } else {
            watch.reopened_at = watch.revision;
        }
        subscribe(key, watch, &mut self.by_request, out);
    }
}

/// Sends `Watch` for a watch, from the last revision its consumer was given unless it must
/// start afresh.
fn subscribe(
    key: WatchKey,
    watch: &mut OpenWatch,
    by_request: &mut HashMap<RequestId, WatchKey>,
    out: &mut impl Outbox,
) {
    let since = if watch.reset_next {
        None
    } else {
        watch.revision
    };
    // The outbox stamps it with the client's latest change as its `min_revision`.
    let request = Request::Watch {
        service_type: watch.service_type.clone(),
        since,
        min_revision: None,
    };
    if let Some(id) = out.send(request) {
        watch.request = Some(id);
        by_request.insert(id, key);
    }
}

/// Sends `Unwatch` for a watch subscribed on the current connection; frames of it that
/// are still on their way are ignored from now on.
fn unsubscribe(
    watch: &mut OpenWatch,
    by_request: &mut HashMap<RequestId, WatchKey>,
    out: &mut impl Outbox,
) {
    watch.partial = None;
    if let Some(id) = watch.request.take() {
        by_request.remove(&id);
        out.send(Request::Unwatch { watch: id });
    }
}

/// True when the watch got further than where it was last reopened from.
fn delivery_advanced(watch: &OpenWatch) -> bool {
    watch.reopened_at.is_some() && watch.revision != watch.reopened_at
}

/// True for a change at or before the last revision given to the consumer, of the same
/// server run: the server never sends one, and the consumer must never see one twice.
fn is_old(watch: &OpenWatch, revision: Revision) -> bool {
    let old = watch
        .revision
        .is_some_and(|last| last.incarnation == revision.incarnation && revision <= last);
    if old {
        warn!(service_type = %watch.service_type, %revision, "ignoring a change the watch has already seen");
    }
    old
}

/// Puts an event in the consumer's buffer without waiting. The last free slot is kept for
/// the `Lagged` marker: when only it is left, the marker goes in, the event is dropped and
/// the watch goes stale.
fn deliver(watch: &mut OpenWatch, event: WatchEvent) -> Delivery {
    if watch.stale {
        return Delivery::Dropped;
    }
    if watch.events.is_closed() {
        return Delivery::Gone;
    }
    let revision = event.revision();
    // Only the worker sends, so the capacity can only grow between this check and the send.
    let item = if watch.events.capacity() > 1 {
        Item::Event(event)
    } else {
        debug!(service_type = %watch.service_type, "watch consumer fell behind; dropping events until it catches up");
        watch.stale = true;
        Item::Lagged
    };
    match watch.events.try_send(item) {
        Ok(()) if watch.stale => Delivery::Dropped,
        Ok(()) => {
            if revision.is_some() {
                watch.revision = revision;
            }
            Delivery::Sent
        }
        Err(TrySendError::Closed(_)) => Delivery::Gone,
        Err(TrySendError::Full(_)) => {
            // Cannot happen (see above); treat it as a lag that the consumer will not be
            // told about, rather than lose track.
            watch.stale = true;
            Delivery::Dropped
        }
    }
}
