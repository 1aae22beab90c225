//! [`WatchEvent`]: the vocabulary a watch speaks, from the first snapshot to the changes
//! and the news about the watch itself.
//!
//! It sits below everything else of the watch machinery because both sides use it: the
//! worker's watch table makes events, and the [`Watch`](crate::Watch) handle and the
//! [`ServiceView`](crate::ServiceView) read them. It is re-exported from
//! [`watch`](crate::watch), where programs find it.

use discovery_proto::{Instance, RemoveReason, Revision};

/// One thing that happened to a watched type, or to the watch itself.
///
/// The first event of a watch is always a `Snapshot`. A consumer that keeps a list of
/// instances replaces it on every `Snapshot`, inserts on `Added`, replaces the entry of the
/// same id on `Updated` and removes on `Removed`; the other events say how current that
/// list is. Revisions of the events that carry one
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
    /// An instance changed its metadata in place: same id, same endpoint, same liveness.
    /// It replaces the instance of the same id.
    Updated {
        /// The type's revision after this change.
        revision: Revision,
        /// The whole instance after the change.
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
    /// as `Added`, `Updated` and `Removed` events.
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
            | WatchEvent::Updated { revision, .. }
            | WatchEvent::Removed { revision, .. }
            | WatchEvent::Resumed { revision } => Some(*revision),
            WatchEvent::Disconnected { .. } | WatchEvent::Lagged => None,
        }
    }
}
