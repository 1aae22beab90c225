//! The requests on the wire of the current connection: their ids, the callers waiting for
//! them, their timeouts, and the parts of a query answer received so far.
//!
//! Requests are numbered from 1 for the life of the worker (a `Hello` takes a number
//! too), so that an answer to a request of an earlier connection can never be taken for
//! one of the current connection. The server answers in order, so the oldest request is
//! the one whose timeout counts: when it passes, nothing behind it could come sooner.
//! Every part of an `Instances { more: true }` answer starts the timeout again, and the
//! parts are joined into one list for the caller.

use std::collections::VecDeque;
use std::time::Duration;

use discovery_proto::{ClientFrame, ErrorKind, Instance, Request, RequestId, Response};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::call::Outcome;
use crate::config::ServerAddress;
use crate::deadline;
use crate::error::Error;
use crate::watches::Outbox;

/// Where the frames of the current connection go to be written.
pub(crate) type Frames = mpsc::UnboundedSender<ClientFrame>;

/// The requests on the wire, oldest first, and the numbering of new ones.
#[derive(Debug)]
pub(crate) struct InFlight {
    requests: VecDeque<Pending>,
    next_id: RequestId,
    request_timeout: Duration,
}

/// A request on the wire, waiting for its answer.
#[derive(Debug)]
struct Pending {
    id: RequestId,
    /// The caller waiting; `None` for the worker's own requests (`Unwatch`, a watch opened
    /// again on a new connection, a keepalive `Ping`).
    reply: Option<oneshot::Sender<Outcome>>,
    /// When the request fails with a timeout; moved on by every part of a query answer.
    /// `None` when the request timeout is too long to be a point in time: no timeout.
    deadline: Option<Instant>,
    /// The parts of a query answer received so far.
    instances: Vec<Instance>,
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
    /// A part of a query answer; the request goes on.
    Part,
    /// The request got its answer.
    Answered,
    /// The server refused the request; when the refusal also closes the connection, why.
    Refused { closing: Option<String> },
}

impl InFlight {
    /// No request yet; each will wait `request_timeout` for its answer.
    pub(crate) fn new(request_timeout: Duration) -> Self {
        Self {
            requests: VecDeque::new(),
            next_id: 1,
            request_timeout,
        }
    }

    /// The id of the next request.
    pub(crate) fn take_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// How many requests are on the wire.
    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    /// True when no request is on the wire.
    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Records request `id`, just written; `reply` is its caller, if any.
    pub(crate) fn push(&mut self, id: RequestId, reply: Option<oneshot::Sender<Outcome>>) {
        self.requests.push_back(Pending {
            id,
            reply,
            deadline: deadline::after(Instant::now(), self.request_timeout),
            instances: Vec::new(),
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
                instances,
                more: true,
            } => {
                let request = &mut self.requests[position];
                request.instances.extend(instances);
                request.deadline = deadline::after(Instant::now(), self.request_timeout);
                Matched::Part
            }
            Response::Instances {
                instances,
                more: false,
            } => {
                let Some(mut request) = self.requests.remove(position) else {
                    return Matched::Unknown;
                };
                let mut joined = std::mem::take(&mut request.instances);
                joined.extend(instances);
                request.finish(Ok(Response::Instances {
                    instances: joined,
                    more: false,
                }));
                Matched::Answered
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
                if let Some(request) = self.requests.remove(position) {
                    request.finish(Ok(response));
                }
                Matched::Answered
            }
        }
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
    fn send(&mut self, request: Request) -> Option<RequestId> {
        let frames = self.frames?;
        let id = self.in_flight.take_id();
        // Fails only when the writer has stopped, which the connection loop sees next.
        let _ = frames.send(ClientFrame::new(id, request));
        self.in_flight.push(id, None);
        Some(id)
    }

    fn answer(&mut self, id: RequestId, outcome: Outcome) {
        self.in_flight.finish(id, outcome);
    }

    fn touch(&mut self, id: RequestId) {
        self.in_flight.touch(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(port: u16) -> Instance {
        Instance {
            id: uuid::Uuid::new_v4(),
            service_type: "svc".to_owned(),
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            port,
            metadata: Default::default(),
            last_heartbeat: Default::default(),
        }
    }

    #[test]
    fn the_parts_of_a_query_answer_are_joined() {
        let mut in_flight = InFlight::new(Duration::from_secs(5));
        let id = in_flight.take_id();
        let (reply, mut outcome) = oneshot::channel();
        in_flight.push(id, Some(reply));
        let part = Response::Instances {
            instances: vec![instance(1)],
            more: true,
        };
        assert_eq!(in_flight.on_response(id, part), Matched::Part);
        let last = Response::Instances {
            instances: vec![instance(2)],
            more: false,
        };
        assert_eq!(in_flight.on_response(id, last), Matched::Answered);
        assert!(in_flight.is_empty());
        match outcome.try_recv() {
            Ok(Ok(Response::Instances { instances, more })) => {
                assert!(!more);
                let ports: Vec<u16> = instances.iter().map(|i| i.port).collect();
                assert_eq!(ports, [1, 2]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_that_closes_says_why() {
        let mut in_flight = InFlight::new(Duration::from_secs(5));
        let id = in_flight.take_id();
        in_flight.push(id, None);
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
        let mut in_flight = InFlight::new(Duration::MAX);
        let id = in_flight.take_id();
        in_flight.push(id, None);
        assert_eq!(in_flight.deadline(), None);
        in_flight.touch(id);
        let part = Response::Instances {
            instances: Vec::new(),
            more: true,
        };
        assert_eq!(in_flight.on_response(id, part), Matched::Part);
        assert_eq!(in_flight.deadline(), None);
    }

    #[test]
    fn ids_count_up_from_one_and_a_lost_connection_fails_every_request() {
        let mut in_flight = InFlight::new(Duration::from_secs(5));
        assert_eq!(in_flight.take_id(), 1);
        let id = in_flight.take_id();
        assert_eq!(id, 2);
        let (reply, mut outcome) = oneshot::channel();
        in_flight.push(id, Some(reply));
        assert!(in_flight.deadline().is_some());
        in_flight.fail_all(&"127.0.0.1:1".into(), "gone");
        assert!(in_flight.is_empty());
        assert!(matches!(
            outcome.try_recv(),
            Ok(Err(Error::Disconnected { .. }))
        ));
    }
}
