//! The requests on the wire of the current connection: their ids, the callers waiting for
//! them, their timeouts, the parts of a list answer received so far, and what the client's
//! writes have told it.
//!
//! Requests are numbered from 1 for the life of the worker (a `Hello` takes a number
//! too), so that an answer to a request of an earlier connection can never be taken for
//! one of the current connection. The server answers in order, so the oldest request is
//! the one whose timeout counts: when it passes, nothing behind it could come sooner.
//! Every part of an `Instances` or `Types` answer with `more` starts the timeout again,
//! and the parts are joined into one list for the caller.
//!
//! **Read-your-writes.** The revision of the client's latest change (a `Registered` or
//! `Done` answer) is kept here, and every query, watch, deregister and update is stamped
//! with it as its `min_revision` as it is written, so that a server that has not seen that
//! change yet waits for it before it answers. A registration's heartbeat is stamped with
//! the registration's own revision instead, and only when it is the registration's first
//! request on this connection (see [`Continuity`]).
//!
//! **Unavailable.** A server that answers `Unavailable` cannot serve now; the connection
//! moves on to the next server. A caller's request that is safe to repeat (a query, a
//! watch, a heartbeat, a list of types, a ping) goes back to the worker's queue, to be
//! written on the next connection, as long as its call is younger than the connect
//! timeout; a change (a register, an update, a deregister) is not sent twice and fails
//! with the refusal.

use std::collections::VecDeque;
use std::time::Duration;

use discovery_proto::{
    ClientFrame, Entry, ErrorKind, Request, RequestId, Response, Revision, TypeCount,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::call::{Call, ConnectionNumber, Continuity, Outcome};
use crate::config::ServerAddress;
use crate::deadline;
use crate::error::Error;
use crate::watch_channel::NewWatch;
use crate::watches::Outbox;

/// Where the frames of the current connection go to be written.
pub(crate) type Frames = mpsc::UnboundedSender<ClientFrame>;

/// The requests on the wire, oldest first, and the numbering of new ones.
#[derive(Debug)]
pub(crate) struct InFlight {
    requests: VecDeque<Pending>,
    next_id: RequestId,
    request_timeout: Duration,
    /// How long after it was made a call answered `Unavailable` may still be sent to
    /// another server: the connect timeout, the time a call may wait for a connection.
    retry_budget: Duration,
    /// The connection requests are written on now.
    connection: ConnectionNumber,
    /// The revision of this client's latest change, the `min_revision` of its reads.
    last_write: Option<Revision>,
    /// Calls answered `Unavailable`, to be written again on the next connection.
    retries: Vec<Call>,
}

/// A request on the wire, waiting for its answer.
#[derive(Debug)]
struct Pending {
    id: RequestId,
    /// The caller waiting; `None` for the worker's own requests (`Unwatch`, a watch opened
    /// again on a new connection, a keepalive `Ping`).
    reply: Option<oneshot::Sender<Outcome>>,
    /// When the request fails with a timeout; moved on by every part of a list answer.
    /// `None` when the request timeout is too long to be a point in time: no timeout.
    deadline: Option<Instant>,
    /// The parts of a query answer received so far.
    entries: Vec<Entry>,
    /// The parts of a list of types received so far.
    types: Vec<TypeCount>,
    /// The most any part of a query answer said it may be stale.
    stale_ms: Option<u64>,
    /// For a caller's request that is safe to repeat: what it takes to send it again.
    again: Option<Again>,
}

/// What a request safe to repeat needs to be sent again to another server.
#[derive(Debug)]
pub(crate) struct Again {
    request: Request,
    queued_at: Instant,
    continuity: Option<Continuity>,
}

impl Again {
    /// What it takes to send `call`'s request again, when it is safe to repeat: asking
    /// again changes nothing on a server, so it may go to another one after a server
    /// said it cannot serve it.
    pub(crate) fn of(call: &Call) -> Option<Again> {
        let repeatable = matches!(
            call.request,
            Request::Query { .. }
                | Request::Watch { .. }
                | Request::ListTypes
                | Request::Heartbeat { .. }
                | Request::Ping
        );
        repeatable.then(|| Again {
            request: call.request.clone(),
            queued_at: call.queued_at,
            continuity: call.continuity.clone(),
        })
    }
}

impl Pending {
    /// Gives the caller, if any, its outcome.
    fn finish(self, outcome: Outcome) {
        if let Some(reply) = self.reply {
            // The caller may have gone; then nobody needs the answer.
            let _ = reply.send(outcome);
        }
    }
}

/// What an answer to a request in flight did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Matched {
    /// No request on the wire has this id.
    Unknown,
    /// A part of a list answer; the request goes on.
    Part,
    /// The request got its answer.
    Answered,
    /// The server refused the request; when the refusal also closes the connection, why.
    Refused { closing: Option<String> },
    /// The server cannot serve now (`Unavailable`): the connection should move on to
    /// the next server. The request went back to be sent there, or failed.
    Unavailable { message: String },
}

impl InFlight {
    /// No request yet; each will wait `request_timeout` for its answer, and a call answered
    /// `Unavailable` may be sent to other servers until `retry_budget` after it was made.
    pub(crate) fn new(request_timeout: Duration, retry_budget: Duration) -> Self {
        Self {
            requests: VecDeque::new(),
            next_id: 1,
            request_timeout,
            retry_budget,
            connection: 0,
            last_write: None,
            retries: Vec::new(),
        }
    }

    /// The id of the next request.
    pub(crate) fn take_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A new connection is up: requests are written on it from now on.
    pub(crate) fn new_connection(&mut self) {
        self.connection += 1;
    }

    /// How many requests are on the wire.
    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    /// True when no request is on the wire.
    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// The revision of the client's latest change, if it made one.
    /// Sets the `min_revision` of `request`, about to be written on the current connection:
    /// the client's latest change for a read (query, watch) and for a deregister or an
    /// update that did not set one; for a heartbeat, the registration's revision when it is
    /// the registration's first request on this connection, else none. A request of a
    /// registration also records that the registration has used this connection.
    pub(crate) fn stamp(&self, request: &mut Request, continuity: Option<&Continuity>) {
        let first_here = continuity.and_then(|continuity| continuity.written_on(self.connection));
        match request {
            Request::Heartbeat { min_revision, .. } => *min_revision = first_here,
            Request::Query { min_revision, .. }
            | Request::Watch { min_revision, .. }
            | Request::Deregister { min_revision, .. }
            | Request::Update { min_revision, .. } => {
                if min_revision.is_none() {
                    *min_revision = self.last_write;
                }
            }
            Request::Hello { .. }
            | Request::Register { .. }
            | Request::Ping
            | Request::Unwatch { .. }
            | Request::ListTypes => {}
        }
    }

    /// Records request `id`, just written; `reply` is its caller, if any, and `again`
    /// what it takes to send it elsewhere.
    pub(crate) fn push(
        &mut self,
        id: RequestId,
        reply: Option<oneshot::Sender<Outcome>>,
        again: Option<Again>,
    ) {
        self.requests.push_back(Pending {
            id,
            reply,
            deadline: deadline::after(Instant::now(), self.request_timeout),
            entries: Vec::new(),
            types: Vec::new(),
            stale_ms: None,
            again,
        });
    }

    /// When the oldest request times out; `None` when nothing can time out.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.requests.front().and_then(|request| request.deadline)
    }

    /// Fails the oldest request with a timeout; returns the request timeout.
    pub(crate) fn time_out_oldest(&mut self) -> Duration {
        let after = self.request_timeout;
        if let Some(request) = self.requests.pop_front() {
            request.finish(Err(Error::Timeout { after }));
        }
        after
    }

    /// Applies an answer of the server to request `id`.
    pub(crate) fn on_response(&mut self, id: RequestId, response: Response) -> Matched {
        // Answers come in the order of the requests, so this is the front in practice.
        let Some(position) = self.position(id) else {
            return Matched::Unknown;
        };
        match response {
            Response::Instances {
                service_type,
                stale_ms,
                instances,
                more,
            } => {
                let request = &mut self.requests[position];
                request.entries.extend(instances);
                request.stale_ms = request.stale_ms.max(stale_ms);
                if more {
                    request.deadline = deadline::after(Instant::now(), self.request_timeout);
                    return Matched::Part;
                }
                let Some(mut request) = self.requests.remove(position) else {
                    return Matched::Unknown;
                };
                let instances = std::mem::take(&mut request.entries);
                let stale_ms = request.stale_ms;
                request.finish(Ok(Response::Instances {
                    service_type,
                    stale_ms,
                    instances,
                    more: false,
                }));
                Matched::Answered
            }
            Response::Types { types, more } => {
                let request = &mut self.requests[position];
                request.types.extend(types);
                if more {
                    request.deadline = deadline::after(Instant::now(), self.request_timeout);
                    return Matched::Part;
                }
                let Some(mut request) = self.requests.remove(position) else {
                    return Matched::Unknown;
                };
                let types = std::mem::take(&mut request.types);
                request.finish(Ok(Response::Types { types, more: false }));
                Matched::Answered
            }
            Response::Error {
                kind: ErrorKind::Unavailable,
                message,
            } => {
                let error = Error::Rejected {
                    kind: ErrorKind::Unavailable,
                    message: message.clone(),
                };
                self.unavailable(id, error, None);
                Matched::Unavailable { message }
            }
            Response::Error { kind, message } => {
                let closing = kind
                    .closes_connection()
                    .then(|| closing_reason(kind, &message));
                if let Some(request) = self.requests.remove(position) {
                    request.finish(Err(Error::Rejected { kind, message }));
                }
                Matched::Refused { closing }
            }
            response => {
                if let Response::Registered { revision, .. } | Response::Done { revision } =
                    &response
                {
                    self.note_write(*revision);
                }
                if let Some(request) = self.requests.remove(position) {
                    request.finish(Ok(response));
                }
                Matched::Answered
            }
        }
    }

    /// Request `id` was answered `Unavailable`: its call goes back to be written on the
    /// next connection (with `watch`, for a `Watch` that was opening) while it is safe to
    /// repeat and young enough; otherwise it fails with `error`.
    pub(crate) fn unavailable(&mut self, id: RequestId, error: Error, watch: Option<NewWatch>) {
        let Some(request) = self
            .position(id)
            .and_then(|position| self.requests.remove(position))
        else {
            return;
        };
        let Pending { reply, again, .. } = request;
        let Some(reply) = reply else {
            // The worker's own request: whatever it was for is done again on the next
            // connection anyway.
            return;
        };
        match again {
            Some(again)
                if !reply.is_closed()
                    && !deadline::has_passed(
                        again.queued_at,
                        self.retry_budget,
                        Instant::now(),
                    ) =>
            {
                self.retries.push(Call {
                    request: again.request,
                    reply,
                    queued_at: again.queued_at,
                    watch,
                    continuity: again.continuity,
                    refused: Some(Box::new(error)),
                });
            }
            _ => {
                // The caller may have gone; then nobody needs the answer.
                let _ = reply.send(Err(error));
            }
        }
    }

    /// The calls answered `Unavailable` since the last time, oldest first, to be written
    /// again on the next connection.
    pub(crate) fn take_retries(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.retries)
    }

    /// Completes request `id` with `outcome`; false when no such request is on the wire.
    pub(crate) fn finish(&mut self, id: RequestId, outcome: Outcome) -> bool {
        match self
            .position(id)
            .and_then(|position| self.requests.remove(position))
        {
            Some(request) => {
                request.finish(outcome);
                true
            }
            None => false,
        }
    }

    /// Starts the timeout of request `id` again: a part of its answer came.
    pub(crate) fn touch(&mut self, id: RequestId) {
        let deadline = deadline::after(Instant::now(), self.request_timeout);
        if let Some(request) = self.requests.iter_mut().find(|request| request.id == id) {
            request.deadline = deadline;
        }
    }

    /// The connection to `address` ended: every request on it fails with `Disconnected`.
    /// None is sent again, because it may already have been carried out.
    pub(crate) fn fail_all(&mut self, address: &ServerAddress, reason: &str) {
        for request in self.requests.drain(..) {
            request.finish(Err(Error::Disconnected {
                address: address.clone(),
                reason: reason.to_owned(),
            }));
        }
    }

    /// The watch table's way to the connection: its requests are numbered, written and
    /// timed like the callers'. `frames` is `None` while there is no connection.
    pub(crate) fn outbox<'a>(&'a mut self, frames: Option<&'a Frames>) -> WireOutbox<'a> {
        WireOutbox {
            frames,
            in_flight: self,
        }
    }

    /// A change of this client was made at `revision`: its later reads wait for it. Of
    /// two revisions of one server run the later one is kept; one of another run (a
    /// restarted server) replaces what was kept.
    fn note_write(&mut self, revision: Revision) {
        self.last_write = Some(match self.last_write {
            Some(last) if last.incarnation == revision.incarnation => last.max(revision),
            _ => revision,
        });
    }

    fn position(&self, id: RequestId) -> Option<usize> {
        self.requests.iter().position(|request| request.id == id)
    }
}

/// Why a connection is ending after a refusal of this kind.
pub(crate) fn closing_reason(kind: ErrorKind, message: &str) -> String {
    format!("the server is closing it ({kind:?}: {message})")
}

/// The [`Outbox`] of the watch table: the current connection, if any, and the requests in
/// flight on it.
#[derive(Debug)]
pub(crate) struct WireOutbox<'a> {
    frames: Option<&'a Frames>,
    in_flight: &'a mut InFlight,
}

impl Outbox for WireOutbox<'_> {
    fn send(&mut self, mut request: Request) -> Option<RequestId> {
        let frames = self.frames?;
        let id = self.in_flight.take_id();
        self.in_flight.stamp(&mut request, None);
        // Fails only when the writer has stopped, which the connection loop sees next.
        let _ = frames.send(ClientFrame::new(id, request));
        self.in_flight.push(id, None, None);
        Some(id)
    }

    fn answer(&mut self, id: RequestId, outcome: Outcome) {
        self.in_flight.finish(id, outcome);
    }

    fn touch(&mut self, id: RequestId) {
        self.in_flight.touch(id);
    }

    fn unavailable(&mut self, id: RequestId, error: Error, watch: Option<NewWatch>) {
        self.in_flight.unavailable(id, error, watch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn entry(port: u16) -> Entry {
        Entry {
            id: uuid::Uuid::new_v4(),
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            port,
            metadata: Default::default(),
            last_heartbeat: Default::default(),
        }
    }

    fn revision(incarnation: u64, seq: u64) -> Revision {
        Revision { incarnation, seq }
    }

    fn in_flight() -> InFlight {
        InFlight::new(TIMEOUT, TIMEOUT)
    }

    #[test]
    fn the_parts_of_a_query_answer_are_joined() {
        let mut in_flight = in_flight();
        let id = in_flight.take_id();
        let (reply, mut outcome) = oneshot::channel();
        in_flight.push(id, Some(reply), None);
        let part = Response::Instances {
            service_type: "svc".into(),
            stale_ms: None,
            instances: vec![entry(1)],
            more: true,
        };
        assert_eq!(in_flight.on_response(id, part), Matched::Part);
        let last = Response::Instances {
            service_type: "svc".into(),
            stale_ms: None,
            instances: vec![entry(2)],
            more: false,
        };
        assert_eq!(in_flight.on_response(id, last), Matched::Answered);
        assert!(in_flight.is_empty());
        match outcome.try_recv() {
            Ok(Ok(Response::Instances {
                service_type,
                instances,
                more,
                ..
            })) => {
                assert!(!more);
                assert_eq!(service_type, "svc");
                let ports: Vec<u16> = instances.iter().map(|i| i.port).collect();
                assert_eq!(ports, [1, 2]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_parts_of_a_list_of_types_are_joined() {
        let mut in_flight = in_flight();
        let id = in_flight.take_id();
        let (reply, mut outcome) = oneshot::channel();
        in_flight.push(id, Some(reply), None);
        let count = |name: &str, instances| TypeCount {
            service_type: name.into(),
            instances,
        };
        let part = Response::Types {
            types: vec![count("a", 1)],
            more: true,
        };
        assert_eq!(in_flight.on_response(id, part), Matched::Part);
        let last = Response::Types {
            types: vec![count("b", 2)],
            more: false,
        };
        assert_eq!(in_flight.on_response(id, last), Matched::Answered);
        match outcome.try_recv() {
            Ok(Ok(Response::Types { types, more: false })) => {
                assert_eq!(types, [count("a", 1), count("b", 2)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_that_closes_says_why() {
        let mut in_flight = in_flight();
        let id = in_flight.take_id();
        in_flight.push(id, None, None);
        let refusal = Response::Error {
            kind: ErrorKind::ShuttingDown,
            message: "bye".to_owned(),
        };
        let Matched::Refused {
            closing: Some(reason),
        } = in_flight.on_response(id, refusal)
        else {
            panic!("a closing refusal");
        };
        assert!(reason.contains("bye"), "{reason}");
        assert_eq!(in_flight.on_response(id, Response::Ok), Matched::Unknown);
    }

    #[test]
    fn an_endless_request_timeout_is_no_deadline() {
        let mut in_flight = InFlight::new(Duration::MAX, Duration::MAX);
        let id = in_flight.take_id();
        in_flight.push(id, None, None);
        assert_eq!(in_flight.deadline(), None);
        in_flight.touch(id);
        let part = Response::Instances {
            service_type: "svc".into(),
            stale_ms: None,
            instances: Vec::new(),
            more: true,
        };
        assert_eq!(in_flight.on_response(id, part), Matched::Part);
        assert_eq!(in_flight.deadline(), None);
    }

    #[test]
    fn ids_count_up_from_one_and_a_lost_connection_fails_every_request() {
        let mut in_flight = in_flight();
        assert_eq!(in_flight.take_id(), 1);
        let id = in_flight.take_id();
        assert_eq!(id, 2);
        let (reply, mut outcome) = oneshot::channel();
        in_flight.push(id, Some(reply), None);
        assert!(in_flight.deadline().is_some());
        in_flight.fail_all(&"127.0.0.1:1".into(), "gone");
        assert!(in_flight.is_empty());
        assert!(matches!(
            outcome.try_recv(),
            Ok(Err(Error::Disconnected { .. }))
        ));
    }

    #[test]
    fn reads_wait_for_the_latest_write_of_the_client() {
        let mut in_flight = in_flight();
        let query = || Request::Query {
            service_type: "svc".into(),
            min_revision: None,
        };
        let mut request = query();
        in_flight.stamp(&mut request, None);
        assert_eq!(request.min_revision(), None, "no write yet");

        for (answer, expected) in [
            (revision(1, 5), revision(1, 5)),
            // Answers of one run never make the client forget a later write.
            (revision(1, 3), revision(1, 5)),
            // A restarted server's revisions replace the old run's.
            (revision(2, 1), revision(2, 1)),
        ] {
            let id = in_flight.take_id();
            in_flight.push(id, None, None);
            let done = Response::Done { revision: answer };
            assert_eq!(in_flight.on_response(id, done), Matched::Answered);
            assert_eq!(in_flight.last_write, Some(expected));
        }
        let mut request = query();
        in_flight.stamp(&mut request, None);
        assert_eq!(request.min_revision(), Some(revision(2, 1)));

        // A heartbeat is stamped with its registration's revision, once per connection.
        let continuity = Continuity::new(Some(revision(1, 9)));
        let heartbeat = || Request::Heartbeat {
            id: uuid::Uuid::nil(),
            min_revision: None,
        };
        in_flight.new_connection();
        let mut first = heartbeat();
        in_flight.stamp(&mut first, Some(&continuity));
        assert_eq!(first.min_revision(), Some(revision(1, 9)));
        let mut second = heartbeat();
        in_flight.stamp(&mut second, Some(&continuity));
        assert_eq!(second.min_revision(), None);
        in_flight.new_connection();
        in_flight.stamp(&mut second, Some(&continuity));
        assert_eq!(second.min_revision(), Some(revision(1, 9)));
    }

    #[test]
    fn an_unavailable_server_sends_repeatable_calls_back_and_fails_changes() {
        let mut in_flight = in_flight();
        let unavailable = || Response::Error {
            kind: ErrorKind::Unavailable,
            message: "cut off".into(),
        };
        let (reply, mut query_outcome) = oneshot::channel();
        let query = Call::new(
            Request::Query {
                service_type: "svc".into(),
                min_revision: None,
            },
            reply,
        );
        let (reply, mut update_outcome) = oneshot::channel();
        let update = Call::new(
            Request::Update {
                id: uuid::Uuid::nil(),
                metadata: Default::default(),
                min_revision: None,
            },
            reply,
        );
        assert!(Again::of(&update).is_none(), "a change is not repeated");
        for call in [query, update] {
            let id = in_flight.take_id();
            let again = Again::of(&call);
            in_flight.push(id, Some(call.reply), again);
            assert!(matches!(
                in_flight.on_response(id, unavailable()),
                Matched::Unavailable { .. }
            ));
        }
        let retries = in_flight.take_retries();
        assert_eq!(retries.len(), 1);
        assert!(matches!(retries[0].request, Request::Query { .. }));
        assert!(
            retries[0]
                .refused
                .as_ref()
                .is_some_and(|e| e.is_unavailable())
        );
        assert!(query_outcome.try_recv().is_err(), "the query still waits");
        assert!(matches!(update_outcome.try_recv(), Ok(Err(e)) if e.is_unavailable()));
        assert!(in_flight.take_retries().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_older_than_its_budget_is_not_sent_again() {
        let mut in_flight = in_flight();
        let (reply, mut outcome) = oneshot::channel();
        let call = Call::new(Request::Ping, reply);
        tokio::time::sleep(TIMEOUT).await;
        let id = in_flight.take_id();
        let again = Again::of(&call);
        in_flight.push(id, Some(call.reply), again);
        let unavailable = Response::Error {
            kind: ErrorKind::Unavailable,
            message: "cut off".into(),
        };
        in_flight.on_response(id, unavailable);
        assert!(in_flight.take_retries().is_empty());
        assert!(matches!(outcome.try_recv(), Ok(Err(e)) if e.is_unavailable()));
    }
}
