//! The client's configuration: where the servers are, and every timeout with its default.
//!
//! [`ClientBuilder`](crate::ClientBuilder) fills a configuration; the constants here are its
//! defaults, public so that programs can show them or derive their own from them.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use discovery_proto::DEFAULT_PORT;

/// How long a call waits for a connection, across every attempt and backoff, before it
/// fails with [`Error::Unreachable`](crate::Error::Unreachable): 3 s.
///
/// Long enough to ride out a server restart (the backoff has made five or six attempts by
/// then), short next to the default 5 s TTL, so that a caller learns soon that no server
/// is there.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a sent request waits for its answer before it fails with
/// [`Error::Timeout`](crate::Error::Timeout): 5 s.
///
/// A healthy server answers in well under a millisecond; a server silent for this long is
/// taken as hung, and the connection is dropped so the next call can fail over.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait between two rounds of connection attempts: 2 s.
///
/// It bounds how long a recovered server stays unused by a client that is backing off.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The first wait between two rounds of connection attempts, before it doubles: 100 ms.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// How many events may wait for the consumer of one [`Watch`](crate::Watch): 256.
///
/// A consumer that lets more pile up gets [`WatchEvent::Lagged`](crate::WatchEvent::Lagged)
/// and later a reset snapshot instead of the events that did not fit, so a watch never holds
/// more than this many events (and one snapshot) in memory.
pub const DEFAULT_WATCH_BUFFER: usize = 256;

/// How long a connection that carries watches may stay silent before the worker checks it
/// with a `Ping`: 15 s. A server that vanished without closing the connection is then found
/// out within this plus the request timeout, and the watches move to a new connection.
pub(crate) const WATCH_KEEPALIVE: Duration = Duration::from_secs(15);

/// How many calls may wait for the worker task before callers wait to hand theirs over.
pub(crate) const CALL_BUFFER: usize = 1024;

/// How many requests may be on the wire without an answer on one connection.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// Where to reach a server: a socket address, or a host name with a port that is resolved
/// again at every connection attempt (so a name whose addresses change is followed).
///
/// Built from a [`SocketAddr`], an `(IpAddr, u16)` pair or a string such as
/// `"127.0.0.1:7777"`, `"registry.internal:7777"` or `"registry.internal"`; a string
/// without a port gets [`DEFAULT_PORT`].
///
/// ```
/// use discovery_client::config::ServerAddress;
///
/// assert_eq!(ServerAddress::from("registry.internal").to_string(), "registry.internal:7777");
/// assert_eq!(ServerAddress::from("10.0.0.7:9000").to_string(), "10.0.0.7:9000");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddress(Repr);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Repr {
    Socket(SocketAddr),
    Host(String),
}

impl ServerAddress {
    /// The socket address, when this address is one rather than a host name.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.0 {
            Repr::Socket(addr) => Some(*addr),
            Repr::Host(_) => None,
        }
    }

    /// The socket addresses to try, in order.
    pub(crate) async fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        match &self.0 {
            Repr::Socket(addr) => Ok(vec![*addr]),
            Repr::Host(host) => {
                let addrs: Vec<SocketAddr> =
                    tokio::net::lookup_host(host.as_str()).await?.collect();
                if addrs.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{host} resolves to no address"),
                    ));
                }
                Ok(addrs)
            }
        }
    }
}

impl From<SocketAddr> for ServerAddress {
    fn from(addr: SocketAddr) -> Self {
        ServerAddress(Repr::Socket(addr))
    }
}

impl From<(IpAddr, u16)> for ServerAddress {
    fn from((ip, port): (IpAddr, u16)) -> Self {
        ServerAddress(Repr::Socket(SocketAddr::new(ip, port)))
    }
}

impl From<&str> for ServerAddress {
    fn from(text: &str) -> Self {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return addr.into();
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return (ip, DEFAULT_PORT).into();
        }
        if text.contains(':') {
            ServerAddress(Repr::Host(text.to_owned()))
        } else {
            ServerAddress(Repr::Host(format!("{text}:{DEFAULT_PORT}")))
        }
    }
}

impl From<String> for ServerAddress {
    fn from(text: String) -> Self {
        text.as_str().into()
    }
}

impl From<&String> for ServerAddress {
    fn from(text: &String) -> Self {
        text.as_str().into()
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Socket(addr) => addr.fmt(f),
            Repr::Host(host) => f.write_str(host),
        }
    }
}

/// What the builder produced; read by the client and its worker.
#[derive(Debug, Clone)]
pub(crate) struct ClientConfig {
    pub(crate) addresses: Vec<ServerAddress>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) client_name: String,
    pub(crate) watch_buffer: usize,
}

impl ClientConfig {
    /// How long one connection attempt may take: an equal share of the connect timeout, so
    /// that a server that swallows packets cannot use it all before the next address is
    /// tried.
    pub(crate) fn attempt_timeout(&self) -> Duration {
        let share = self.connect_timeout / self.addresses.len().max(1) as u32;
        share
            .max(Duration::from_millis(100))
            .min(self.connect_timeout)
    }
}

/// The name a client gives the server when the program does not choose one: the file name
/// of the running executable, so that server logs say which program connected.
pub(crate) fn default_client_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "discovery-client".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_ports() {
        let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            ServerAddress::from("127.0.0.1:9000").socket_addr(),
            Some(addr)
        );
        assert_eq!(
            ServerAddress::from("::1").socket_addr(),
            Some(SocketAddr::new("::1".parse().unwrap(), DEFAULT_PORT))
        );
        assert_eq!(ServerAddress::from("registry").to_string(), "registry:7777");
        assert_eq!(
            ServerAddress::from("registry:80").to_string(),
            "registry:80"
        );
        assert_eq!(ServerAddress::from("registry").socket_addr(), None);
    }

    #[test]
    fn each_attempt_gets_a_share_of_the_connect_timeout() {
        let mut config = ClientConfig {
            addresses: vec!["a".into(), "b".into()],
            connect_timeout: Duration::from_secs(3),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff_max: DEFAULT_BACKOFF_MAX,
            client_name: String::new(),
            watch_buffer: DEFAULT_WATCH_BUFFER,
        };
        assert_eq!(config.attempt_timeout(), Duration::from_millis(1500));
        config.connect_timeout = Duration::from_millis(50);
        assert_eq!(config.attempt_timeout(), Duration::from_millis(50));
    }
}
