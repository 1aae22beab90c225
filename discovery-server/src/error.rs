//! The error type of the server crate: why a request was refused, or why the server could
//! not run.

use discovery_proto::ErrorKind;

/// What went wrong in the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The registry refused a change, or its configuration.
    #[error(transparent)]
    Registry(#[from] discovery_registry::Error),
    /// A configuration value is out of its range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A socket operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A frame could not be read or written.
    #[error(transparent)]
    Protocol(#[from] discovery_proto::Error),
}

impl Error {
    /// The kind a client sees in the `Error` answer for this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Registry(e) => e.kind(),
            Error::Protocol(_) => ErrorKind::MalformedFrame,
            Error::Config(_) | Error::Io(_) => ErrorKind::Internal,
        }
    }
}
