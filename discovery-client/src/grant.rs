//! [`Registered`]: what a server granted a register, the id, the TTL and the revision.
//!
//! A leaf of the crate, like [`ServiceSpec`](crate::ServiceSpec): the one-shot
//! [`Client::register_once`](crate::Client::register_once) returns it, and a
//! [`Registration`](crate::Registration) keeps the latest one. It is re-exported from
//! [`registration`](crate::registration).

use std::time::Duration;

use discovery_proto::Revision;
use uuid::Uuid;

/// What the server granted a register.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let server_address = listener.local_addr()?;
/// # let stop = tokio_util::sync::CancellationToken::new();
/// # let server = tokio::spawn(discovery_server::server::run(listener, Default::default(), stop.clone()));
/// use std::time::Duration;
/// use discovery_client::{Client, ServiceSpec};
///
/// let client = Client::builder().address(server_address).build()?;
/// let spec = ServiceSpec::new("billing", "127.0.0.1:8080".parse()?).with_ttl(Duration::from_secs(2));
/// let granted = client.register_once(&spec).await?;
/// assert_eq!(granted.ttl, Duration::from_secs(2));
/// // A program with its own loop heartbeats well within the TTL granted.
/// client.heartbeat(granted.id).await?;
/// # drop(client);
/// # stop.cancel();
/// # server.await??;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Registered {
    /// The id the server made for the instance, to heartbeat, update and deregister it
    /// with.
    pub id: Uuid,
    /// How long the instance stays live without a heartbeat: the TTL the spec asked for,
    /// or the server's when it asked for none. Heartbeat well within it (a
    /// [`Registration`](crate::Registration) does every third of it).
    pub ttl: Duration,
    /// The revision of the register: a later query or watch of this client waits for it on
    /// whichever server it goes to, so that the client reads its own write.
    pub revision: Revision,
}
