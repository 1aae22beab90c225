//! The one helper of the client's tests: real servers on 127.0.0.1 that can be stopped
//! and started again on the same address, a proxy that can cut connections without
//! stopping its server, and polling with generous deadlines.

#![allow(dead_code)] // each test binary uses its own part of the helper

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery_client::{Client, ClientBuilder, Uuid};
use discovery_server::config::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

/// The TTL of the test servers: short, so that expiry and restarts are seen quickly.
pub const TTL: Duration = Duration::from_secs(1);

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(25);

/// A server running in the test's runtime.
pub struct TestServer {
    address: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), discovery_server::Error>>,
}

impl TestServer {
    /// A server on a free port of 127.0.0.1.
    pub async fn start(ttl: Duration) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), ttl).await
    }

    /// A server on `address`, which may be the address of a server stopped a moment ago
    /// (the listener sets `SO_REUSEADDR`).
    pub async fn start_on(address: SocketAddr, ttl: Duration) -> Self {
        let listener = TcpListener::bind(address)
            .await
            .unwrap_or_else(|e| panic!("cannot bind {address}: {e}"));
        let address = listener.local_addr().unwrap();
        let mut config = ServerConfig::default();
        config.registry.ttl = ttl;
        config.shutdown_grace = Duration::from_secs(2);
        let stop = CancellationToken::new();
        let task = tokio::spawn(discovery_server::server::run(
            listener,
            config,
            stop.clone(),
        ));
        Self {
            address,
            stop,
            task,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops the server and waits until it has closed its listener and connections.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server did not stop within 10 s")
            .expect("the server task panicked")
            .expect("the server failed");
    }
}

/// An address where nothing listens: a port that was bound, then released.
pub fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A client builder for `address` with the defaults the tests rely on.
pub fn builder(address: SocketAddr) -> ClientBuilder {
    Client::builder()
        .address(address)
        .client_name("client-tests")
}

/// A client of `address` with default settings.
pub fn client(address: SocketAddr) -> Client {
    builder(address).build().unwrap()
}

/// The ids a query of `service_type` lists.
pub async fn listed(client: &Client, service_type: &str) -> Vec<Uuid> {
    client
        .query(service_type)
        .await
        .unwrap_or_else(|e| panic!("query {service_type}: {e}"))
        .into_iter()
        .map(|instance| instance.id)
        .collect()
}

/// Polls `check` until it gives a value, and panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < give_up, "{what}: not within {deadline:?}");
        sleep(POLL).await;
    }
}

/// A TCP proxy on 127.0.0.1 in front of a server, in the test's runtime: it forwards every
/// connection it accepts, and can cut them all at once, or refuse new ones for a while,
/// without the server knowing anything happened.
pub struct Proxy {
    address: SocketAddr,
    /// Whether it forwards new connections, and the token that ends the current ones;
    /// one lock, so that no connection slips through between a check and a cut.
    state: Arc<Mutex<(bool, CancellationToken)>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 that forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new((true, CancellationToken::new())));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let cut = {
                    let state = shared.lock().unwrap();
                    state.0.then(|| state.1.clone())
                };
                // Down: the connection is closed at once, like a server that is not there.
                let Some(cut) = cut else { continue };
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Self {
            address,
            state,
            task,
        }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every connection open now; new ones are forwarded as before.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.1.cancel();
        state.1 = CancellationToken::new();
    }

    /// Closes every connection open now, and closes new ones at once until [`Proxy::up`].
    pub fn down(&self) {
        let mut state = self.state.lock().unwrap();
        state.0 = false;
        state.1.cancel();
        state.1 = CancellationToken::new();
    }

    /// Forwards new connections again.
    pub fn up(&self) {
        self.state.lock().unwrap().0 = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.lock().unwrap().1.cancel();
    }
}
