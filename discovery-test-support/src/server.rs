//! A real server in the test's runtime: the library's own accept loop on 127.0.0.1, over a
//! registry the test can look into, stopped gracefully at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use discovery_server::server::{self, Listener};
use discovery_server::{Error, Registry, ServerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::PATIENCE;

/// A server running on its own task, on a port of its own.
#[derive(Debug)]
pub struct TestServer {
    /// Where the binary protocol is served.
    pub addr: SocketAddr,
    /// Where the compat protocol is served, when it was asked for.
    pub compat: Option<SocketAddr>,
    /// The registry the server serves, to look into or change behind its back.
    pub registry: Registry,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

/// How a test server is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration; its `listen` and `compat_listen` are not used.
    pub config: ServerConfig,
    /// Where to listen; port 0 for a free port. The address of a server stopped a moment
    /// ago may be reused (tokio's listener sets `SO_REUSEADDR`).
    pub addr: SocketAddr,
    /// Also serve the compat protocol, on a free port.
    pub compat: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: ServerConfig::default(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            compat: false,
        }
    }
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    /// A server with `config`.
    pub async fn with_config(config: ServerConfig) -> Self {
        Self::with(Options {
            config,
            ..Options::default()
        })
        .await
    }

    /// A server whose instances live for `ttl`.
    pub async fn with_ttl(ttl: Duration) -> Self {
        Self::with_config(config_with_ttl(ttl)).await
    }

    /// A server started as `options` say.
    pub async fn with(options: Options) -> Self {
        let Options {
            config,
            addr,
            compat,
        } = options;
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"));
        let addr = listener.local_addr().expect("a bound address");
        let mut listeners = vec![Listener::binary(listener)];
        let compat = if compat {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let compat = listener.local_addr().expect("a bound address");
            listeners.push(Listener::compat(listener));
            Some(compat)
        } else {
            None
        };
        config.validate().expect("a valid test configuration");
        let registry = Registry::new(config.registry.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::serve(
            listeners,
            Arc::new(config),
            registry.clone(),
            shutdown.clone(),
        ));
        Self {
            addr,
            compat,
            registry,
            shutdown,
            task,
        }
    }

    /// Where the binary protocol is served.
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// The compat listener's address.
    ///
    /// # Panics
    ///
    /// When the server was started without one.
    pub fn compat_addr(&self) -> SocketAddr {
        self.compat
            .expect("a server started with a compat listener")
    }

    /// Begins the shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts the server down and waits for it, failing the test if that takes longer than
    /// [`PATIENCE`] or ends in an error.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.stopped().await;
    }

    /// Waits for the server to end (after [`TestServer::begin_shutdown`]).
    pub async fn stopped(self) {
        timeout(PATIENCE, self.task)
            .await
            .expect("the server stops within the deadline")
            .expect("the server task did not panic")
            .expect("the server ended without error");
    }
}

/// The default configuration with instances that live for `ttl`, its TTL bounds widened to
/// admit `ttl` if they do not (tests use TTLs shorter than a second).
pub fn config_with_ttl(ttl: Duration) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.registry.ttl = ttl;
    config.registry.min_ttl = config.registry.min_ttl.min(ttl);
    config.registry.max_ttl = config.registry.max_ttl.max(ttl);
    config
}

/// An address where nothing listens: a port of 127.0.0.1 that was bound, then released.
pub fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("a bound address")
}
