//! Handling a request of the binary protocol: a plain function from the registry and a
//! request to an answer, with no I/O, so that every rule of the protocol can be read in one
//! place and tested alone.

use discovery_proto::{ErrorKind, PROTOCOL_VERSION, Request, RequestId, Response};
use discovery_registry::{Error as RegistryError, Registered, Registry};

use crate::frontend::Context;

/// What a request is answered with.
#[derive(Debug)]
pub enum Answer {
    /// One frame.
    Response(Response),
    /// A query of this type: the connection writes the answer straight from the registry
    /// into as many `Instances` frames as the frame limit requires.
    Query(String),
    /// The list of types: the connection writes it into as many `Types` frames as the
    /// frame limit requires.
    Types,
    /// A last frame, after which the connection is closed.
    Close(Response),
    /// A watch of this type to open on the connection, which checks its own caps first (so
    /// that a refused watch costs the registry nothing), then subscribes and sends the
    /// start and the changes.
    Watch {
        /// The type to watch.
        service_type: String,
        /// Where the client's knowledge stops, to resume from.
        since: Option<discovery_proto::Revision>,
    },
    /// The watch opened by this request id to close; the connection answers `Ok` or
    /// `NotFound`.
    Unwatch(RequestId),
}

/// Answers the first frame of a connection, which must be `Hello` in the version we speak.
/// The `Welcome` announces the registry's own TTLs and limits (it may have been made
/// elsewhere than from the server's configuration), and the server's timeouts and limits.
pub fn hello(context: &Context, request: &Request) -> Answer {
    let (server, registry) = (&context.config, context.registry.config());
    match request {
        Request::Hello {
            protocol_version, ..
        } if *protocol_version == PROTOCOL_VERSION => Answer::Response(Response::Welcome {
            protocol_version: PROTOCOL_VERSION,
            ttl: registry.ttl,
            min_ttl: registry.min_ttl,
            max_ttl: registry.max_ttl,
            idle_timeout: server.idle_timeout,
            frame_timeout: server.frame_timeout,
            limits: server.limits_with(registry),
        }),
        Request::Hello {
            protocol_version, ..
        } => Answer::Close(error(
            ErrorKind::UnsupportedVersion,
            format!(
                "protocol version {protocol_version} is not spoken here; this server speaks version {PROTOCOL_VERSION}"
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

/// Answers a request on a connection that has said `Hello`. A request's `min_revision` has
/// been waited for already, by the connection.
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
            ttl,
        } => match registry.register_with_ttl(&service_type, ip, port, metadata, ttl) {
            Ok(Registered { id, ttl, revision }) => Response::Registered { id, ttl, revision },
            Err(e) => refusal(&e),
        },
        Request::Heartbeat { id, .. } => match registry.heartbeat(id) {
            Ok(()) => Response::Ok,
            Err(e) => refusal(&e),
        },
        Request::Deregister { id, .. } => match registry.deregister(id) {
            Ok(revision) => Response::Done { revision },
            Err(e) => refusal(&e),
        },
        Request::Update { id, metadata, .. } => match registry.update(id, metadata) {
            Ok(revision) => Response::Done { revision },
            Err(e) => refusal(&e),
        },
        Request::Query { service_type, .. } => return Answer::Query(service_type),
        Request::ListTypes => return Answer::Types,
        Request::Ping => Response::Pong,
        Request::Watch {
            service_type,
            since,
            ..
        } => {
            return Answer::Watch {
                service_type,
                since,
            };
        }
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

/// The answer to a request the registry refused: `NotFound`, with the reason it remembers,
/// or an error of the refusal's kind.
pub fn refusal(e: &RegistryError) -> Response {
    match e {
        RegistryError::NotFound { reason } => Response::NotFound { reason: *reason },
        e => error(e.kind(), e.to_string()),
    }
}
