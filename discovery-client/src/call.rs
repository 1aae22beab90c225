//! What a handle gives the worker for one request, and what it gets back.
//!
//! A leaf of the crate, so that the handles ([`Caller`](crate::caller::Caller)) and the
//! worker's parts (its inbox, its table of requests in flight, its watch table) can all
//! speak of a call without importing one another.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use discovery_proto::{Request, Response, Revision};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::Error;
use crate::watch_channel::NewWatch;

/// What a call receives: the server's response (the parts of a list answer joined into
/// one `Instances` or `Types`), or why there is none. Error answers are already turned
/// into errors.
pub(crate) type Outcome = Result<Response, Error>;

/// One call handed to the worker.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<Outcome>,
    /// When the caller made the call: the connect timeout counts from here, and so does
    /// the time a call answered `Unavailable` may spend on other servers.
    pub(crate) queued_at: Instant,
    /// For a `Watch` request: the watch to open with it.
    pub(crate) watch: Option<NewWatch>,
    /// For the requests of a registration: which connection it last used, so that its
    /// first heartbeat on another one carries the revision of its last change.
    pub(crate) continuity: Option<Continuity>,
    /// The refusal of an earlier attempt (a server answered `Unavailable`): what the caller
    /// gets, rather than `Unreachable`, if no other server carries the call in time.
    pub(crate) refused: Option<Box<Error>>,
}

impl Call {
    /// A call of `request`, answered on `reply`, made now.
    pub(crate) fn new(request: Request, reply: oneshot::Sender<Outcome>) -> Self {
        Self {
            request,
            reply,
            queued_at: Instant::now(),
            watch: None,
            continuity: None,
            refused: None,
        }
    }
}

/// Connections are numbered from 1 by the worker; 0 is "none yet".
pub(crate) type ConnectionNumber = u64;

/// What a registration's requests carry so that a server it has not talked to yet learns
/// which of its changes to wait for.
///
/// The worker stamps each request of the registration as it writes it: it records the
/// connection the request goes out on, and a heartbeat that is the first of the
/// registration on that connection (after a reconnect or a failover) carries `revision`
/// as its `min_revision`; later ones carry none. Recording at write time, not when the
/// call is made, is what makes it exact: only the worker knows which connection a request
/// ends up on.
#[derive(Debug, Clone)]
pub(crate) struct Continuity {
    /// The revision of the registration's latest change (its register, or an update).
    pub(crate) revision: Option<Revision>,
    /// The connection its latest request went out on; shared by the registration's loop
    /// and the worker.
    pub(crate) last_connection: Arc<AtomicU64>,
}

impl Continuity {
    /// A registration's requests, none written yet, whose latest change is `revision`.
    pub(crate) fn new(revision: Option<Revision>) -> Self {
        Self {
            revision,
            last_connection: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The same registration after a change of revision `revision`.
    pub(crate) fn at(&self, revision: Revision) -> Self {
        Self {
            revision: Some(revision),
            last_connection: Arc::clone(&self.last_connection),
        }
    }

    /// Records that a request of the registration goes out on `connection`; the
    /// `min_revision` of a heartbeat doing so: the revision when it is the first on that
    /// connection, else none.
    pub(crate) fn written_on(&self, connection: ConnectionNumber) -> Option<Revision> {
        let last = self.last_connection.swap(connection, Ordering::Relaxed);
        if last == connection {
            None
        } else {
            self.revision
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_request_on_a_connection_carries_the_revision() {
        let revision = Revision {
            incarnation: 1,
            seq: 7,
        };
        let continuity = Continuity::new(Some(revision));
        assert_eq!(continuity.written_on(1), Some(revision));
        assert_eq!(continuity.written_on(1), None);
        let later = continuity.at(Revision { seq: 9, ..revision });
        assert_eq!(later.written_on(2), Some(Revision { seq: 9, ..revision }));
        // The two share which connection was used last.
        assert_eq!(continuity.written_on(2), None);
        assert_eq!(Continuity::new(None).written_on(1), None);
    }
}
