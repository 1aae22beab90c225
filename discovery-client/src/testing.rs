//! For the unit tests: a server made of the server crate's own connection code, reached
//! through in-memory pipes by a [`Dial`] of its own, on the test's runtime.
//!
//! It runs the whole client over a stream that is not TCP, as any other transport would.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use discovery_server::connection::Connection;
use discovery_server::{Registry, ServerConfig};
use tokio::io::DuplexStream;
use tokio_util::sync::CancellationToken;

use crate::config::ServerAddress;
use crate::dial::{Dial, Dialed};
use crate::{Client, ClientBuilder};

/// The peer address the pipes report.
pub(crate) const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7777);

/// A server reached through pipes.
#[derive(Clone)]
pub(crate) struct PipeServer {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    registry: Registry,
    /// How many times a client dialled.
    dials: AtomicUsize,
}

impl PipeServer {
    /// A server with the default configuration and `ttl`.
    pub(crate) fn start(ttl: Duration) -> Self {
        let mut config = ServerConfig::default();
        config.registry.ttl = ttl;
        let registry = Registry::new(config.registry.clone());
        Self {
            inner: Arc::new(Inner {
                config,
                registry,
                dials: AtomicUsize::new(0),
            }),
        }
    }

    /// A client of this server, with `builder`'s settings.
    pub(crate) fn client(&self, builder: ClientBuilder) -> Client {
        match builder.address("pipe.invalid").build_with(self.clone()) {
            Ok(client) => client,
            Err(error) => panic!("cannot build a pipe client: {error}"),
        }
    }

    /// How many times clients dialled so far.
    pub(crate) fn dials(&self) -> usize {
        self.inner.dials.load(Ordering::SeqCst)
    }
}

impl Dial for PipeServer {
    type Stream = DuplexStream;

    async fn dial(&self, _: &ServerAddress) -> io::Result<Dialed<DuplexStream>> {
        self.inner.dials.fetch_add(1, Ordering::SeqCst);
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let connection = Connection::new(server_end, PEER, &self.inner.config);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let never = CancellationToken::new();
            let _ = connection
                .run(inner.registry.clone(), &inner.config, &never)
                .await;
        });
        Ok(Dialed {
            stream: client_end,
            peer: PEER,
        })
    }
}
