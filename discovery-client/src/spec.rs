//! [`ServiceSpec`]: what a service announces, the type callers find it by, the address
//! they reach it at, and how long it stays live without a heartbeat.
//!
//! A leaf of the crate: the calls that announce (`Client::register_once`, the heartbeat
//! loop's registers again) and the [`Registration`](crate::Registration) that keeps one
//! alive all take it. It is re-exported from [`registration`](crate::registration).

use std::net::SocketAddr;
use std::time::Duration;

use discovery_proto::Metadata;

/// What to announce: the type of service and where callers reach it.
///
/// ```
/// use std::time::Duration;
/// use discovery_client::ServiceSpec;
///
/// let spec = ServiceSpec::new("billing", "10.0.0.5:8080".parse().unwrap())
///     .with_metadata("version", "1.4.2")
///     .with_metadata("zone", "eu-west-1a")
///     .with_ttl(Duration::from_secs(30));
/// assert_eq!(spec.metadata["zone"], "eu-west-1a");
/// assert_eq!(spec.ttl, Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceSpec {
    /// What the instance provides, such as `billing`; what callers query by.
    pub service_type: String,
    /// Where callers reach it. It must be an address they can connect to: the server
    /// refuses `0.0.0.0` and port 0, so a service listening on all interfaces announces
    /// the address of the interface its callers use.
    pub address: SocketAddr,
    /// Free-form pairs shown to callers (a version, a zone, a weight...).
    pub metadata: Metadata,
    /// How long the instance stays live without a heartbeat; `None` (the default) for
    /// the server's TTL. It must lie within the bounds the server announces
    /// ([`ServerInfo::min_ttl`](crate::ServerInfo::min_ttl) to
    /// [`ServerInfo::max_ttl`](crate::ServerInfo::max_ttl)), or the register is refused
    /// with [`ErrorKind::InvalidTtl`](crate::ErrorKind::InvalidTtl).
    pub ttl: Option<Duration>,
}

impl ServiceSpec {
    /// An instance of `service_type` reachable at `address`, with no metadata.
    pub fn new(service_type: impl Into<String>, address: SocketAddr) -> Self {
        Self {
            service_type: service_type.into(),
            address,
            metadata: Metadata::new(),
            ttl: None,
        }
    }

    /// Adds (or replaces) one metadata pair.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Asks for a TTL of the instance's own instead of the server's: a service that can
    /// afford to be listed a while after it died heartbeats less with a longer one, one
    /// whose callers must stop using it quickly asks for a shorter one. The server says
    /// what it granted ([`Registered::ttl`](crate::Registered::ttl)), and a
    /// [`Registration`](crate::Registration) heartbeats at a third of that.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}
