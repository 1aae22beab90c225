//! What a handle gives the worker for one request, and what it gets back.
//!
//! A leaf of the crate, so that the handles ([`Caller`](crate::caller::Caller)) and the
//! worker's parts (its inbox, its table of requests in flight, its watch table) can all
//! speak of a call without importing one another.

use discovery_proto::{Request, Response};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::Error;
use crate::watch_channel::NewWatch;

/// What a call receives: the server's response (the parts of a query answer joined into
/// one `Instances`), or why there is none. Error answers are already turned into errors.
pub(crate) type Outcome = Result<Response, Error>;

/// One call handed to the worker.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<Outcome>,
    /// When the caller made the call: the connect timeout counts from here.
    pub(crate) queued_at: Instant,
    /// For a `Watch` request: the watch to open with it.
    pub(crate) watch: Option<NewWatch>,
}
