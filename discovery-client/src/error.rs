//! The error type of the client: why a call failed, in a form a program can act on.
//!
//! Every call returns [`Error`]. Programs branch on its predicates rather than on its
//! variants, which may grow: [`Error::is_not_found`] (register again, unless
//! [`Error::not_found_reason`] says another register replaced the instance),
//! [`Error::is_connection`] (no server could carry the call: retry later),
//! [`Error::is_timeout`] (a server took too long), [`Error::is_throttled`] (a rate limit:
//! retry after [`Error::retry_after`]), [`Error::is_rejected`] (the server refused the
//! request, with its [`ErrorKind`] and message).
//!
//! The error is `Clone`, because one failed connection attempt is the answer to every call
//! that was waiting for it; sources that are not `Clone` themselves are kept behind an `Arc`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::{ErrorKind, RemoveReason};

use crate::config::ServerAddress;

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server does not know the instance: it never existed, expired, was deregistered,
    /// or another register of the same type and endpoint replaced it. Whoever owns it must
    /// register it again, unless it was replaced: then another process announces that
    /// endpoint now, and registering again would take it back from that process.
    #[error("the server does not know this instance{}", describe_reason(*reason))]
    NotFound {
        /// Why the instance is gone, when the server still remembers it (it does for a
        /// while after the removal); `None` when it does not know the id at all.
        reason: Option<RemoveReason>,
    },

    /// A rate limit of the server refused the request; nothing changed, and the same
    /// request may succeed after `retry_after`. A [`Registration`](crate::Registration)
    /// waits that long and registers again on its own.
    #[error("the server is rate-limiting this client; retry after {retry_after:?}")]
    Throttled {
        /// How long the server asks the client to wait before sending it again.
        retry_after: Duration,
    },

    /// The server understood the request and refused it. The connection goes on unless
    /// `kind.closes_connection()`.
    #[error("the server refused the request ({kind:?}): {message}")]
    Rejected {
        /// What kind of refusal, for programs.
        kind: ErrorKind,
        /// The server's explanation, for people.
        message: String,
    },

    /// The call waited its whole connect timeout and no server could be reached.
    #[error("no discovery server reachable within {waited:?}{}", describe_last(last.as_deref()))]
    Unreachable {
        /// How long the call waited: the client's connect timeout.
        waited: Duration,
        /// Why the most recent connection attempt failed, if one had finished by then.
        last: Option<Arc<Error>>,
    },

    /// One attempt to connect to one server failed: the name did not resolve, the TCP
    /// connection was refused, or no `Welcome` came in time. Found as the `last` cause of
    /// [`Error::Unreachable`].
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The server that was tried.
        address: ServerAddress,
        /// What the operating system or the handshake said.
        #[source]
        source: Arc<io::Error>,
    },

    /// The connection broke after the request was sent and before its answer came. The
    /// server may or may not have carried the request out; the client does not resend it.
    #[error(
        "connection to {address} lost before the answer came ({reason}); the request may or may not have been carried out"
    )]
    Disconnected {
        /// The server the request was sent to.
        address: ServerAddress,
        /// Why the connection ended.
        reason: String,
    },

    /// The server did not answer within the request timeout, or the call could not even be
    /// handed to the client's worker within the connect timeout because its queue stayed
    /// full. A connection whose server stops answering is dropped and the next call goes to
    /// the next address.
    #[error("no answer within {after:?}")]
    Timeout {
        /// How long the call waited.
        after: Duration,
    },

    /// The request would not fit in one frame under the server's limit; it was not sent.
    #[error("request of {len} bytes is over the server's frame limit of {max} bytes")]
    RequestTooLarge {
        /// The encoded size of the request.
        len: usize,
        /// The limit the server announced.
        max: usize,
    },

    /// A frame from the server did not decode, or the handshake went wrong at the protocol
    /// level.
    #[error("protocol error: {0}")]
    Protocol(#[source] Arc<discovery_proto::Error>),

    /// The server answered with a response that does not fit the request (a server bug or a
    /// protocol mismatch).
    #[error("unexpected answer to {request}: {response}")]
    UnexpectedResponse {
        /// The request that was sent.
        request: &'static str,
        /// What came back, for people.
        response: String,
    },

    /// The client's worker task has stopped, so no call can be carried any more; `reason`
    /// says why (its runtime shut down, or it panicked).
    #[error("the discovery client has stopped: {reason}")]
    Closed {
        /// Why the worker stopped.
        reason: String,
    },

    /// The client could not be built as configured.
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// True when the server does not know the instance: it must be registered again
    /// (unless it was replaced, see [`Error::not_found_reason`]).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// Why the instance is gone, for [`Error::NotFound`] when the server remembers;
    /// `None` for any other error or when it does not.
    pub fn not_found_reason(&self) -> Option<RemoveReason> {
        match self {
            Error::NotFound { reason } => *reason,
            _ => None,
        }
    }

    /// True when the instance is gone because another register of the same type, ip and
    /// port replaced it: someone else announces that endpoint now.
    pub fn is_replaced(&self) -> bool {
        self.not_found_reason() == Some(RemoveReason::Replaced)
    }

    /// True when a rate limit refused the request (see [`Error::Throttled`]).
    pub fn is_throttled(&self) -> bool {
        matches!(self, Error::Throttled { .. })
    }

    /// How long to wait before trying again, for [`Error::Throttled`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Throttled { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// True when a server answered that it cannot serve the request now
    /// ([`ErrorKind::Unavailable`]: a server of a cluster cut off from its store). The
    /// client has moved on to the next server already; a request that is safe to repeat
    /// (a query, a watch, a heartbeat) was tried there within its time, so this is what
    /// it gets only when no server could carry it, or for a change (a register, an update,
    /// a deregister), which is not sent twice.
    pub fn is_unavailable(&self) -> bool {
        self.kind() == Some(ErrorKind::Unavailable)
    }

    /// True when the call failed for want of a working connection: no server reachable
    /// within the connect timeout, or the connection broke while the call was in flight.
    /// Such a call can be retried later; the client reconnects on its own.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. } | Error::Connect { .. } | Error::Disconnected { .. }
        )
    }

    /// True when a server was connected but did not answer in time (see
    /// [`Error::Timeout`]). A connect timeout is reported by [`Error::is_connection`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// True when the server refused the request with an error answer; [`Error::kind`] and
    /// the message say why.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Error::Rejected { .. })
    }

    /// The server's kind of refusal, for an error it answered; `None` for failures on the
    /// client's side.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Rejected { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl From<discovery_proto::Error> for Error {
    fn from(error: discovery_proto::Error) -> Self {
        Error::Protocol(Arc::new(error))
    }
}

/// The tail of [`Error::NotFound`]'s message: the reason, when known.
fn describe_reason(reason: Option<RemoveReason>) -> &'static str {
    match reason {
        Some(RemoveReason::Expired) => " (it expired)",
        Some(RemoveReason::Deregistered) => " (it was deregistered)",
        Some(RemoveReason::Replaced) => {
            " (another register of the same type and endpoint replaced it)"
        }
        None => " (unknown, expired or deregistered)",
    }
}

/// The tail of [`Error::Unreachable`]'s message: the last attempt's failure, if any.
fn describe_last(last: Option<&Error>) -> String {
    match last {
        Some(error) => format!(" (last attempt: {error})"),
        None => " (no connection attempt finished in that time)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_sort_failures() {
        let unreachable = Error::Unreachable {
            waited: Duration::from_secs(3),
            last: Some(Arc::new(Error::Connect {
                address: ServerAddress::from("127.0.0.1:1"),
                source: Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)),
            })),
        };
        assert!(unreachable.is_connection());
        assert!(!unreachable.is_timeout());
        assert!(unreachable.to_string().contains("127.0.0.1:1"));

        let rejected = Error::Rejected {
            kind: ErrorKind::InvalidPort,
            message: "port 0".into(),
        };
        assert!(rejected.is_rejected());
        assert_eq!(rejected.kind(), Some(ErrorKind::InvalidPort));
        assert!(!rejected.is_connection());

        let gone = Error::NotFound { reason: None };
        assert!(gone.is_not_found());
        assert!(!gone.is_replaced());
        let replaced = Error::NotFound {
            reason: Some(RemoveReason::Replaced),
        };
        assert!(replaced.is_not_found() && replaced.is_replaced());
        assert!(replaced.to_string().contains("replaced"), "{replaced}");

        let throttled = Error::Throttled {
            retry_after: Duration::from_millis(250),
        };
        assert!(throttled.is_throttled() && !throttled.is_rejected());
        assert_eq!(throttled.retry_after(), Some(Duration::from_millis(250)));

        let unavailable = Error::Rejected {
            kind: ErrorKind::Unavailable,
            message: "cut off from the store".into(),
        };
        assert!(unavailable.is_unavailable() && unavailable.is_rejected());
        assert!(
            Error::Timeout {
                after: Duration::from_secs(5)
            }
            .is_timeout()
        );
    }

    #[test]
    fn unreachable_without_an_attempt_says_so() {
        let error = Error::Unreachable {
            waited: Duration::from_millis(500),
            last: None,
        };
        assert!(error.to_string().contains("no connection attempt finished"));
    }
}
