//! How the worker gets a byte stream to a server: the [`Dial`] seam and its TCP default.
//!
//! Everything above this module (the handshake, the connection loop with its framed read
//! and write halves) is generic over the stream a dialer returns, so that another
//! transport (TLS, say) is a dialer that wraps [`Tcp`] and nothing else changes.
//! `ClientBuilder` uses [`Tcp`].

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::ServerAddress;

/// Opens byte streams to servers.
///
/// One attempt is one call to [`Dial::dial`]; the caller bounds it with the attempt
/// timeout, so an implementation need not time itself out.
pub(crate) trait Dial: Send + Sync + 'static {
    /// The stream a connection is carried over.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens a stream to `address`, and says which socket address it reached (for logs
    /// and [`ServerInfo::peer`](crate::ServerInfo::peer)).
    fn dial(
        &self,
        address: &ServerAddress,
    ) -> impl Future<Output = io::Result<Dialed<Self::Stream>>> + Send;
}

/// A stream a dialer opened.
#[derive(Debug)]
pub(crate) struct Dialed<S> {
    pub(crate) stream: S,
    /// The socket address it reached.
    pub(crate) peer: SocketAddr,
}

/// Plain TCP: the first of the name's addresses that accepts, with `TCP_NODELAY`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tcp;

impl Dial for Tcp {
    type Stream = TcpStream;

    async fn dial(&self, address: &ServerAddress) -> io::Result<Dialed<TcpStream>> {
        let stream = connect_any(address).await?;
        // Requests are small and latency matters more than packet count.
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        Ok(Dialed { stream, peer })
    }
}

/// Connects to the first address the name resolves to that accepts.
async fn connect_any(address: &ServerAddress) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in address.resolve().await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            // A name's addresses are named in the error; a socket address already is.
            Err(error) if address.socket_addr().is_some() => last = Some(error),
            Err(error) => last = Some(connect_context(addr, error)),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to try")))
}

fn connect_context(addr: SocketAddr, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{addr}: {error}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::testing::{PEER, PipeServer};
    use crate::{Client, ServiceSpec, WatchEvent};

    #[tokio::test]
    async fn the_client_works_over_any_byte_stream() {
        // In-memory pipes instead of TCP: the whole client runs over them unchanged.
        let server = PipeServer::start(Duration::from_secs(5));
        let client = server.client(Client::builder());

        let mut watch = client.watch("billing").await.unwrap();
        assert!(matches!(
            watch.recv().await,
            Some(WatchEvent::Snapshot { .. })
        ));
        let spec = ServiceSpec::new("billing", "127.0.0.1:8080".parse().unwrap());
        let id = client.register_once(&spec).await.unwrap().id;
        match watch.recv().await {
            Some(WatchEvent::Added { instance, .. }) => assert_eq!(instance.id, id),
            other => panic!("{other:?}"),
        }
        let found = client.query("billing").await.unwrap();
        assert_eq!(found.iter().map(|i| i.id).collect::<Vec<_>>(), [id]);
        client.heartbeat(id).await.unwrap();
        assert_eq!(client.server_info().unwrap().peer, PEER);
        assert_eq!(server.dials(), 1, "one connection carried it all");
    }
}
