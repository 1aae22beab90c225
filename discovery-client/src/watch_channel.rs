//! What a [`Watch`](crate::Watch) handle and the worker exchange: the key that names a
//! watch, what opening one hands over, the items of its buffer, and the controls a handle
//! sends back.
//!
//! These types sit below both the handle and the worker's watch table, so that neither
//! has to know the other: the handle only sends [`Control`]s and reads [`Item`]s, the table
//! only reads controls and writes items.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::event::WatchEvent;

/// Names a watch inside one client, across the connections it lives on (its request id
/// changes with every connection).
pub(crate) type WatchKey = u64;

/// A key no other watch of this process has. One counter for the whole process rather
/// than one per client: keys only need to differ within a client, and a `u64` counted up
/// by one never wraps.
pub(crate) fn next_watch_key() -> WatchKey {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What the worker puts in a watch's buffer.
#[derive(Debug)]
pub(crate) enum Item {
    /// An event for the consumer.
    Event(WatchEvent),
    /// The buffer was full, so events were dropped after this point: put in the last free
    /// slot, so that the consumer finds it after every event that fitted.
    Lagged,
}

/// What a watch handle tells the worker, without waiting.
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
