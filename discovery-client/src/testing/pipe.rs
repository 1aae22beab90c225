//! [`PipeServer`]: a server made of the server crate's own connection code, reached
//! through in-memory pipes by a [`Dial`] of its own, on the test's runtime.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use discovery_server::binary::Connection;
use discovery_server::frontend::Context;
use discovery_server::{Registry, ServerConfig};
use tokio::io::DuplexStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ServerAddress;
use crate::dial::{Dial, Dialed};
use crate::testing::PEER;
use crate::{Client, ClientBuilder};

/// A server reached through pipes; it can be taken down and restarted with an empty
/// registry, as a crashed and restarted process would be.
#[derive(Clone)]
pub(crate) struct PipeServer {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<ServerConfig>,
    /// The registry while the server is up; `None` while it is down.
    registry: Mutex<Option<Registry>>,
    /// Ends every connection open now, at once, without a goodbye.
    cut: Mutex<CancellationToken>,
    /// How many times a client dialled, up or down.
    dials: AtomicUsize,
}

impl PipeServer {
    /// A server with the default configuration and `ttl`, up.
    pub(crate) fn start(ttl: Duration) -> Self {
        let mut config = ServerConfig::default();
        config.registry.ttl = ttl;
        let registry = Registry::new(config.registry.clone());
        Self {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                registry: Mutex::new(Some(registry)),
                cut: Mutex::new(CancellationToken::new()),
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

    /// Drops every connection at once and refuses new ones, forgetting the registry.
    pub(crate) fn crash(&self) {
        *lock(&self.inner.registry) = None;
        let mut cut = lock(&self.inner.cut);
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Serves again, with an empty registry.
    pub(crate) fn restart(&self) {
        let registry = Registry::new(self.inner.config.registry.clone());
        *lock(&self.inner.registry) = Some(registry);
    }

    /// The ids the registry lists for `service_type`; empty while down.
    pub(crate) fn listed(&self, service_type: &str) -> Vec<Uuid> {
        lock(&self.inner.registry)
            .as_ref()
            .map(|registry| registry.query(service_type))
            .unwrap_or_default()
            .into_iter()
            .map(|instance| instance.id)
            .collect()
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
        let Some(registry) = lock(&self.inner.registry).clone() else {
            return Err(io::ErrorKind::ConnectionRefused.into());
        };
        let cut = lock(&self.inner.cut).clone();
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let context = Context {
            registry,
            config: Arc::clone(&self.inner.config),
        };
        let connection = Connection::new(server_end, PEER, &context);
        tokio::spawn(async move {
            let never = CancellationToken::new();
            tokio::select! {
                _ = connection.run(&context, &never) => {}
                () = cut.cancelled() => {}
            }
        });
        Ok(Dialed {
            stream: client_end,
            peer: PEER,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
