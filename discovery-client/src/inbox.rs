//! What the handles give the worker: the bounded channel of calls, the unbounded channel of
//! watch controls, and the queue of calls taken from the channel and not yet written.
//!
//! The one rule of order lives here: the watch controls sent before a call are applied
//! before the call is queued, so that a watch dropped before a new `watch()` is unwatched
//! on the wire before the new `Watch` goes out (and a new watch does not hit the server's
//! limit because of one that is gone). Calls a server answered `Unavailable` come back to
//! the front of the queue, ahead of the calls made after them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::call::Call;
use crate::config::CALL_BUFFER;
use crate::deadline;
use crate::error::Error;
use crate::watch_channel::Control;
use crate::watches::{Outbox, WatchTable};

/// The worker's inputs from its handles.
#[derive(Debug)]
pub(crate) struct Inbox {
    calls: mpsc::Receiver<Call>,
    /// Messages from watch handles, which must never wait (one comes from `Drop`).
    control: mpsc::UnboundedReceiver<Control>,
    /// Calls taken from the channel and not yet written.
    queue: VecDeque<Call>,
}

/// What came in.
#[derive(Debug)]
pub(crate) enum Input {
    Call(Call),
    Control(Control),
    /// Every handle is gone: nobody can call any more.
    Closed,
}

impl Inbox {
    pub(crate) fn new(
        calls: mpsc::Receiver<Call>,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Self {
        Self {
            calls,
            control,
            queue: VecDeque::new(),
        }
    }

    /// The next call or control. Calls are taken only while the queue has room, controls
    /// only when `controls` is true (a connection the server is closing takes none).
    /// Cancel-safe: nothing is lost when the future is dropped.
    pub(crate) async fn recv(&mut self, controls: bool) -> Input {
        let room = self.queue.len() < CALL_BUFFER;
        tokio::select! {
            call = self.calls.recv(), if room => match call {
                Some(call) => Input::Call(call),
                None => Input::Closed,
            },
            Some(control) = self.control.recv(), if controls => Input::Control(control),
            // Nothing to take now: the caller's other branches decide.
            else => std::future::pending().await,
        }
    }

    /// Queues a call, after applying the controls sent before it.
    pub(crate) fn take_call(
        &mut self,
        call: Call,
        watches: &mut WatchTable,
        out: &mut impl Outbox,
    ) {
        while let Ok(control) = self.control.try_recv() {
            watches.control(control, out);
        }
        self.queue.push_back(call);
    }

    /// Puts calls a server could not serve back at the front of the queue, in their
    /// order, to be written on the next connection.
    pub(crate) fn requeue(&mut self, calls: Vec<Call>) {
        for call in calls.into_iter().rev() {
            self.queue.push_front(call);
        }
    }

    /// True when no call waits to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next call to write, skipping those whose callers have given up.
    pub(crate) fn next_to_write(&mut self) -> Option<Call> {
        while let Some(call) = self.queue.pop_front() {
            if !call.reply.is_closed() {
                return Some(call);
            }
        }
        None
    }

    /// Forgets the calls whose callers have given up; returns when the oldest of the
    /// others was made.
    pub(crate) fn oldest_waiting(&mut self) -> Option<Instant> {
        self.queue.retain(|call| !call.reply.is_closed());
        self.queue.iter().map(|call| call.queued_at).min()
    }

    /// Fails the calls that have waited `waited` for a connection with
    /// [`Error::Unreachable`], giving `last` as the latest failure; a call that a server
    /// refused as `Unavailable` gets that refusal instead.
    pub(crate) fn give_up_waiting(&mut self, waited: Duration, last: Option<Arc<Error>>) {
        let now = Instant::now();
        let (expired, waiting): (VecDeque<Call>, VecDeque<Call>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|call| deadline::has_passed(call.queued_at, waited, now));
        self.queue = waiting;
        for call in expired {
            let error = call.refused.map_or_else(
                || Error::Unreachable {
                    waited,
                    last: last.clone(),
                },
                |refused| *refused,
            );
            // The caller may have gone; then nobody needs the answer.
            let _ = call.reply.send(Err(error));
        }
    }
}
