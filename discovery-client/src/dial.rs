//! How the worker opens a TCP connection to a server: resolve the address (again at every
//! attempt, so a name whose addresses change is followed), try its addresses in order, and
//! set `TCP_NODELAY`.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::config::ServerAddress;

/// Connects to `address`; returns the stream and the socket address it reached.
pub(crate) async fn dial_tcp(address: &ServerAddress) -> io::Result<(TcpStream, SocketAddr)> {
    let stream = connect_any(address).await?;
    // Requests are small and latency matters more than packet count.
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    Ok((stream, peer))
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
