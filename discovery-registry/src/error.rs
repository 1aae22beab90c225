//! The error type of the registry crate: why a change was refused, or why a configuration
//! cannot be used.

use std::net::IpAddr;
use std::time::Duration;

use discovery_proto::{ErrorKind, RemoveReason};

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
    /// The server has as many watched types (feeds) as it may, none of them waiting out its
    /// window to make room.
    #[error("the server watches its maximum of {max} types")]
    WatchedTypeLimit {
        /// The limit in force.
        max: usize,
    },
    /// The watch feeds take as many bytes as they may: a new feed's fixed cost would pass
    /// the bound.
    #[error("the watch feeds hold their maximum of {max} bytes")]
    WatchBytesLimit {
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
    /// The registry's instances and their metadata take as many bytes of memory as they
    /// may (see [`RegistryConfig::max_registry_bytes`](crate::RegistryConfig::max_registry_bytes)).
    #[error("the registry's instances take their maximum of {max} bytes of memory")]
    RegistryBytesLimit {
        /// The limit in force, in bytes.
        max: usize,
    },
    /// A register asked for a TTL outside the bounds of the configuration.
    #[error("ttl {} is outside {}..{}", shown(.requested), shown(.min), shown(.max))]
    InvalidTtl {
        /// The TTL asked for.
        requested: Duration,
        /// The shortest TTL allowed (`min_ttl`).
        min: Duration,
        /// The longest TTL allowed (`max_ttl`).
        max: Duration,
    },
    /// No live instance has this id: never registered here, or gone.
    #[error("no such instance{}", why(.reason))]
    NotFound {
        /// Why it went, when that is still remembered (see
        /// [`RegistryConfig::remembered_removals`](crate::RegistryConfig::remembered_removals));
        /// `None` for an id never seen here, or forgotten.
        reason: Option<RemoveReason>,
    },
    /// A configuration value is out of its range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A duration as configurations write it (`50ms`, `1h`).
fn shown(duration: &Duration) -> String {
    humantime::format_duration(*duration).to_string()
}

/// The reason of a `NotFound`, in its message.
fn why(reason: &Option<RemoveReason>) -> &'static str {
    match reason {
        None => "",
        Some(RemoveReason::Deregistered) => " (deregistered)",
        Some(RemoveReason::Expired) => " (expired)",
        Some(RemoveReason::Replaced) => " (replaced)",
    }
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
            Error::WatchedTypeLimit { .. } => ErrorKind::WatchedTypeLimit,
            Error::WatchBytesLimit { .. } => ErrorKind::WatchBytesLimit,
            Error::RegistryBytesLimit { .. } => ErrorKind::RegistryBytesLimit,
            Error::InvalidTtl { .. } => ErrorKind::InvalidTtl,
            // A frontend answers `NotFound` for it, never an error; a configuration error
            // never reaches a client.
            Error::NotFound { .. } | Error::Config(_) => ErrorKind::Internal,
        }
    }
}
