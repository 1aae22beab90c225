//! The error type of the registry crate: why a change was refused, or why a configuration
//! cannot be used.

use std::net::IpAddr;

use discovery_proto::ErrorKind;

/// Why the registry refused a change, or a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service type is empty, too long or has control characters.
    #[error("invalid service type: {0}")]
    InvalidServiceType(String),
    /// The ip is not an address a caller could connect to.
    #[error("invalid ip {0}: not an address a caller can connect to")]
    InvalidAddress(IpAddr),
    /// The port is 0.
    #[error("invalid port 0: ports run from 1 to 65535")]
    InvalidPort,
    /// The metadata breaks one of the limits.
    #[error("invalid metadata: {0}")]
    InvalidMetadata(String),
    /// The registry holds as many instances as it may.
    #[error("the registry holds its maximum of {max} instances")]
    InstanceLimit {
        /// The limit in force.
        max: usize,
    },
    /// The type holds as many instances as it may.
    #[error("type {service_type:?} holds its maximum of {max} instances")]
    TypeLimit {
        /// The type that is full.
        service_type: String,
        /// The limit in force.
        max: usize,
    },
    /// A configuration value is out of its range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// The kind a client sees in the `Error` answer for this refusal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidServiceType(_) => ErrorKind::InvalidServiceType,
            Error::InvalidAddress(_) => ErrorKind::InvalidAddress,
            Error::InvalidPort => ErrorKind::InvalidPort,
            Error::InvalidMetadata(_) => ErrorKind::InvalidMetadata,
            Error::InstanceLimit { .. } => ErrorKind::InstanceLimit,
            Error::TypeLimit { .. } => ErrorKind::TypeLimit,
            Error::Config(_) => ErrorKind::Internal,
        }
    }
}
