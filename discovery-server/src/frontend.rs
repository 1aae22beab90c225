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

use bytes::Buf;
use discovery_proto::ErrorKind;
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

    /// Tells a connection that it is refused, and why, in the protocol's own words, and
    /// closes it, within about [`LINGER`] in all. The stream is lent, not given: the accept
    /// loop may turn its descriptor into a spare afterwards ([`crate::descriptors`]).
    fn refuse<S: Stream>(
        &self,
        stream: &mut S,
        context: &Context,
        refusal: Refusal,
    ) -> impl Future<Output = ()> + Send;
}

/// Why the accept loop turns a connection away before serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server has its maximum of connections (`max_connections`).
    Full,
    /// The peer has its maximum of connections (`max_connections_per_peer`).
    PeerFull,
    /// The process has no file descriptor left for another connection: the connection was
    /// taken with a spare one only to be told so.
    NoDescriptors,
}

impl Refusal {
    /// The error kind a binary client is told.
    pub fn kind(self) -> ErrorKind {
        match self {
            Refusal::Full | Refusal::NoDescriptors => ErrorKind::TooManyConnections,
            Refusal::PeerFull => ErrorKind::PeerConnectionLimit,
        }
    }

    /// The message that goes with it, naming the limit that was hit.
    pub fn message(self, config: &ServerConfig) -> String {
        match self {
            Refusal::Full => format!(
                "the server has its maximum of {} connections",
                config.max_connections
            ),
            Refusal::PeerFull => format!(
                "the server has its maximum of {} connections from this address",
                config.max_connections_per_peer.unwrap_or(0)
            ),
            Refusal::NoDescriptors => {
                "the server has no file descriptor left for another connection".to_owned()
            }
        }
    }
}

/// Writes all of `buf`, cutting the connection off when a write makes no progress for
/// `write_timeout`. Each write that takes bytes starts the wait anew, so a client that keeps
/// reading, however slowly, is never cut off, while one that stops is, whatever the size
/// of the answer (a bound on the whole answer would cut off a steady slow reader of a large
/// one).
pub async fn write_all_progressing<S: AsyncWrite + Unpin, B: Buf>(
    stream: &mut S,
    buf: &mut B,
    write_timeout: Duration,
) -> std::io::Result<()> {
    while buf.has_remaining() {
        match timeout(write_timeout, stream.write_buf(buf)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client took no bytes for the write timeout ({write_timeout:?})"),
                ));
            }
        }
    }
    Ok(())
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
