//! [`ServiceSpec`]: what a service announces, the type callers find it by and the address
//! they reach it at.
//!
//! A leaf of the crate: the calls that announce (`Client::register_once`, the heartbeat
//! loop's registers again) and the [`Registration`](crate::Registration) that keeps one
//! alive all take it. It is re-exported from [`registration`](crate::registration).

use std::net::SocketAddr;

use discovery_proto::Metadata;

/// What to announce: the type of service and where callers reach it.
///
/// ```
/// use discovery_client::ServiceSpec;
///
/// let spec = ServiceSpec::new("billing", "10.0.0.5:8080".parse().unwrap())
///     .with_metadata("version", "1.4.2")
///     .with_metadata("zone", "eu-west-1a");
/// assert_eq!(spec.metadata["zone"], "eu-west-1a");
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
}

impl ServiceSpec {
    /// An instance of `service_type` reachable at `address`, with no metadata.
    pub fn new(service_type: impl Into<String>, address: SocketAddr) -> Self {
        Self {
            service_type: service_type.into(),
            address,
            metadata: Metadata::new(),
        }
    }

    /// Adds (or replaces) one metadata pair.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}
