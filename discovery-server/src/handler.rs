//! Handling a request: a plain function from the registry and a request to an answer, with
//! no I/O, so that every rule of the protocol can be read in one place and tested alone.

use std::net::IpAddr;

use discovery_proto::encoding;
use discovery_proto::{ErrorKind, Metadata, PROTOCOL_VERSION, Request, RequestId, Response};
use uuid::Uuid;

use crate::config::ServerConfig;
use crate::registry::Subscription;
use crate::{Error, Registry};

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
pub fn hello(config: &ServerConfig, request: &Request) -> Answer {
    match request {
        Request::Hello {
            protocol_version, ..
        } if *protocol_version == PROTOCOL_VERSION => Answer::Response(Response::Welcome {
            protocol_version: PROTOCOL_VERSION,
            ttl: config.registry.ttl,
            limits: config.limits(),
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
pub fn handle(registry: &Registry, max_frame_bytes: usize, request: Request) -> Answer {
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
        } => match register(registry, max_frame_bytes, &service_type, ip, port, metadata) {
            Ok(id) => Response::Registered { id },
            Err(e) => error(e.kind(), e.to_string()),
        },
        Request::Heartbeat { id } => found(registry.heartbeat(id)),
        Request::Deregister { id } => found(registry.deregister(id)),
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

/// Registers an instance, refusing one that could not be sent in a query answer within
/// `max_frame_bytes`: the one register of both listeners.
pub fn register(
    registry: &Registry,
    max_frame_bytes: usize,
    service_type: &str,
    ip: IpAddr,
    port: u16,
    metadata: Metadata,
) -> Result<Uuid, Error> {
    // The same fields in the same order encode to the same bytes as the instance would, and
    // the largest timestamp stands in for the real one: no instance is built to measure it.
    let fields = (Uuid::nil(), service_type, ip, port, &metadata, i64::MAX);
    let len = encoding::instance_frame_len_of(&fields);
    if len > max_frame_bytes {
        return Err(Error::InvalidMetadata(format!(
            "the instance would take {len} bytes in a query answer, over this server's frame limit of {max_frame_bytes}"
        )));
    }
    registry.register(service_type, ip, port, metadata)
}
