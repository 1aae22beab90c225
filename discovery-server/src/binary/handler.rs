//! Handling a request of the binary protocol: a plain function from the registry and a
//! request to an answer, with no I/O, so that every rule of the protocol can be read in one
//! place and tested alone.

use discovery_proto::{ErrorKind, PROTOCOL_VERSION, Request, RequestId, Response};
use discovery_registry::{Registry, Subscription};

use crate::config::limits_of;

/// What a request is answered with.
#[derive(Debug)]
pub enum Answer {
    /// One frame.
    Response(Response),
    /// A query of this type: the connection writes the answer straight from the registry
    /// into as many `Instances` frames as the frame limit requires.
    Query(String),
    /// A last frame, after which the connection is closed.
    Close(Response),
    /// A watch to open on the connection, which sends its start and changes.
    Watch(Subscription),
    /// The watch opened by this request id to close; the connection answers `Ok` or
    /// `NotFound`.
    Unwatch(RequestId),
}

/// Answers the first frame of a connection, which must be `Hello` in the version we speak.
/// The `Welcome` announces the registry's own TTL and limits.
pub fn hello(registry: &Registry, request: &Request) -> Answer {
    match request {
        Request::Hello {
            protocol_version, ..
        } if *protocol_version == PROTOCOL_VERSION => Answer::Response(Response::Welcome {
            protocol_version: PROTOCOL_VERSION,
            ttl: registry.config().ttl,
            limits: limits_of(registry.config()),
        }),
        Request::Hello {
            protocol_version, ..
        } => Answer::Close(error(
            ErrorKind::UnsupportedVersion,
            format!(
                "protocol version {protocol_version} is not spoken here; this server speaks {PROTOCOL_VERSION}"
            ),
        )),
        _ => Answer::Close(hello_required()),
    }
}

/// The refusal of a connection whose first frame is not `Hello`.
pub fn hello_required() -> Response {
    error(
        ErrorKind::HelloRequired,
        "the first frame of a connection must be Hello",
    )
}

/// Answers a request on a connection that has said `Hello`.
pub fn handle(registry: &Registry, request: Request) -> Answer {
    let response = match request {
        Request::Hello { .. } => error(
            ErrorKind::UnexpectedHello,
            "this connection has already said Hello",
        ),
        Request::Register {
            service_type,
            ip,
            port,
            metadata,
        } => match registry.register(&service_type, ip, port, metadata) {
            Ok(id) => Response::Registered { id },
            Err(e) => error(e.kind(), e.to_string()),
        },
        Request::Heartbeat { id } => found(registry.heartbeat(id).is_ok()),
        Request::Deregister { id } => found(registry.deregister(id).is_ok()),
        Request::Query { service_type } => return Answer::Query(service_type),
        Request::Ping => Response::Pong,
        Request::Watch {
            service_type,
            since,
        } => match registry.watch(&service_type, since) {
            Ok(subscription) => return Answer::Watch(subscription),
            Err(e) => error(e.kind(), e.to_string()),
        },
        Request::Unwatch { watch } => return Answer::Unwatch(watch),
    };
    Answer::Response(response)
}

/// An `Error` answer.
pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

fn found(found: bool) -> Response {
    if found {
        Response::Ok
    } else {
        Response::NotFound
    }
}
