//! The server's lifecycle: accept connections, serve each on its own task within the
//! limits, and shut down gracefully.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::ErrorKind;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::compat;
use crate::config::ServerConfig;
use crate::connection::{self, Connection};
use crate::{Error, Registry};

/// The first pause after an accept error that may pass (such as running out of file
/// descriptors); it doubles on each further error, up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between accept attempts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves the registry on `listener` until `shutdown` is cancelled.
///
/// On cancellation it stops accepting, lets each connection answer the requests it has
/// already read and send a `ShuttingDown` error, waits up to `config.shutdown_grace` for the
/// connections to close, closes those still open, and returns. The `listen` field of the
/// configuration is not used: the listener is bound by the caller, which may choose port 0.
///
/// ```
/// use discovery_server::config::ServerConfig;
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), discovery_server::Error> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let shutdown = CancellationToken::new();
/// let server = tokio::spawn(discovery_server::server::run(
///     listener,
///     ServerConfig::default(),
///     shutdown.clone(),
/// ));
/// // ... clients talk to the server ...
/// shutdown.cancel();
/// server.await.expect("the server task panicked")?;
/// # Ok(())
/// # }
/// ```
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let registry = Registry::new(config.registry.clone());
    serve(listener, Arc::new(config), registry, shutdown).await
}

/// Like [`run`], over a registry the caller made and keeps a handle to (tests and
/// embedders use it to look into the registry, or to serve one registry on two listeners).
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    serve_with_compat(listener, None, config, registry, shutdown).await
}

/// Like [`serve`], and also the course's JSON protocol ([`crate::compat`]) on `compat`
/// when one is given.
///
/// Both listeners serve the one `registry` and share one connection cap
/// (`config.max_connections` counts the connections of both), one shutdown and one grace.
/// If either listener dies, both stop accepting and the server shuts down as if
/// `shutdown` had been cancelled, then returns that listener's error. As with [`run`], the
/// `listen` and `compat_listen` fields of the configuration are not used: the caller binds.
pub async fn serve_with_compat(
    listener: TcpListener,
    compat: Option<TcpListener>,
    config: Arc<ServerConfig>,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let tracker = TaskTracker::new();
    // Cancelled when the grace runs out: every connection still open is dropped.
    let force = CancellationToken::new();
    // Cancelled by `shutdown`, or by an accept loop whose listener died, so that the other
    // loop and every connection wind down too.
    let stop = shutdown.child_token();
    let shared = Shared {
        config: config.clone(),
        registry,
        permits: Arc::new(Semaphore::new(config.max_connections)),
        tracker: tracker.clone(),
        force: force.clone(),
        stop,
    };
    let compat_loop = async {
        match compat {
            Some(compat) => accept_loop(compat, Protocol::Compat, &shared).await,
            None => Ok(()),
        }
    };
    // Each loop drops its listener when it ends: accepting stops before connections are
    // waited for.
    let (typed, compat) =
        tokio::join!(accept_loop(listener, Protocol::Typed, &shared), compat_loop);

    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        info!(
            open = tracker.len(),
            "shutdown grace over; closing the remaining connections"
        );
        force.cancel();
        tracker.wait().await;
    }
    typed.and(compat)
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// The typed, framed protocol of `discovery-proto`.
    Typed,
    /// The course's JSON socket protocol ([`crate::compat`]).
    Compat,
}

/// What the accept loops of one server share.
struct Shared {
    config: Arc<ServerConfig>,
    registry: Registry,
    /// One permit per open connection, of either protocol.
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    force: CancellationToken,
    stop: CancellationToken,
}

/// Accepts connections on `listener` until `shared.stop` is cancelled, serving each on
/// its own task within the connection cap.
async fn accept_loop(
    listener: TcpListener,
    protocol: Protocol,
    shared: &Shared,
) -> Result<(), Error> {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) if is_per_connection(&e) => {
                debug!(error = %e, "accept failed for one connection");
                continue;
            }
            Err(e) if is_transient(&e) => {
                warn!(error = %e, pause = ?backoff, ?protocol, "accept failed; pausing");
                tokio::select! {
                    _ = shared.stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
            Err(e) => {
                error!(error = %e, ?protocol, "the listener is unusable");
                shared.stop.cancel();
                return Err(Error::Io(e));
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        // A connection with an open watch is never idle-closed, so a peer that vanished
        // without a FIN (a crashed host, a dropped route) would hold its slot forever:
        // keepalive probes find it within about a minute.
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive()) {
            debug!(%peer, error = %e, "cannot set TCP keepalive");
        }
        let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
            debug!(%peer, ?protocol, "refusing connection over the cap");
            let max_connections = shared.config.max_connections;
            shared.tracker.spawn(async move {
                match protocol {
                    Protocol::Typed => {
                        let message =
                            format!("the server has its maximum of {max_connections} connections");
                        connection::refuse(stream, ErrorKind::TooManyConnections, &message).await;
                    }
                    Protocol::Compat => compat::refuse(stream).await,
                }
            });
            continue;
        };
        let config = shared.config.clone();
        let registry = shared.registry.clone();
        let stop = shared.stop.clone();
        let force = shared.force.clone();
        shared.tracker.spawn(async move {
            let served = async {
                match protocol {
                    Protocol::Typed => {
                        let connection = Connection::new(stream, peer, &config);
                        connection.run(registry, &config, &stop).await
                    }
                    Protocol::Compat => {
                        compat::serve_connection(stream, peer, registry, &config, &stop).await
                    }
                }
            };
            tokio::select! {
                result = served => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "connection ended");
                    }
                }
                _ = force.cancelled() => debug!(%peer, "connection closed at the end of the grace"),
            }
            drop(permit);
        });
    }
}

/// Probes after 30 s of silence, then every 10 s; Linux gives up after 3 unanswered ones.
fn keepalive() -> socket2::TcpKeepalive {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    #[cfg(target_os = "linux")]
    let keepalive = keepalive.with_retries(3);
    keepalive
}

/// Errors that concern only the connection being accepted.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Errors that may pass, such as running out of file descriptors or memory.
fn is_transient(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS and ENOMEM have no stable ErrorKind of their own: only a few
    // kinds say for sure that the listener itself is broken, and every other error is
    // treated as one that may pass.
    !matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::NotConnected | io::ErrorKind::Unsupported
    )
}
