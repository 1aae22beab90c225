//! The one seam between the accept loop and the protocols: a [`Frontend`] serves an
//! accepted byte stream, or refuses one over the connection cap.
//!
//! Each protocol is a module of the same shape (its messages, a handler that is a plain
//! function from the registry and a request to an answer, and a connection that owns the
//! stream) and one `Frontend` value; adding a listener is such a module and a config
//! field, not edits to the accept loop. Streams are any `AsyncRead + AsyncWrite`, so TLS is
//! a wrapper put around the accepted socket, and tests drive a frontend through
//! `tokio::io::duplex`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use discovery_registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::config::ServerConfig;

/// How long a request whose `min_revision` this server has not reached waits for it before
/// it is answered from what the server has.
pub const MIN_REVISION_WAIT: Duration = Duration::from_secs(1);

/// A byte stream a frontend can serve: a TCP socket, a TLS stream over one, an in-memory
/// pipe.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// What every connection of every frontend is served with.
#[derive(Debug, Clone)]
pub struct Context {
    /// The registry every listener serves.
    pub registry: Registry,
    /// The server's configuration: timeouts and per-connection limits. The registry's own
    /// limits are those of [`Registry::config`].
    pub config: Arc<ServerConfig>,
}

impl Context {
    /// The largest frame payload accepted or sent: the registry's, since every instance it
    /// holds must fit in one.
    pub fn max_frame_bytes(&self) -> usize {
        self.registry.config().max_frame_bytes
    }
}

/// A protocol the server speaks on a listener.
pub trait Frontend: Send + Sync + 'static {
    /// The protocol's name in logs (`binary`, `compat`).
    fn name(&self) -> &'static str;

    /// Serves one accepted connection until its client leaves, it breaks a rule that ends
    /// it, or `stop` is cancelled (then it answers what it has read and says goodbye).
    fn serve<S: Stream>(
        &self,
        stream: S,
        peer: SocketAddr,
        context: &Context,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Tells a connection over the cap that it is refused, in the protocol's own words,
    /// and closes it, within about [`LINGER`] in all.
    fn refuse<S: Stream>(&self, stream: S, context: &Context) -> impl Future<Output = ()> + Send;
}

/// How long a closing connection waits for its client to close too.
pub const LINGER: Duration = Duration::from_secs(1);

/// Closes a stream so that its client reads what it was sent: closing a socket with unread
/// input makes the kernel send a reset, which can destroy answers the client has not read
/// yet. So the write side is shut first, and what the client still sends is read and
/// dropped, for at most [`LINGER`], until it closes too.
pub async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> std::io::Result<()> {
    stream.shutdown().await?;
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = timeout(LINGER, drain).await;
    Ok(())
}

/// `from + after`, or `None` ("never") when that is past what an `Instant` can hold: the
/// durations come from the configuration, which may say "forever" with a huge value.
pub fn deadline(from: Instant, after: Duration) -> Option<Instant> {
    from.checked_add(after)
}

/// Sleeps until `deadline`, or forever when there is none.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
