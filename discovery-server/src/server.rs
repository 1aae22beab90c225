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
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let tracker = TaskTracker::new();
    // Cancelled when the grace runs out: every connection still open is dropped.
    let force = CancellationToken::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;

    let result = loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
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
                warn!(error = %e, pause = ?backoff, "accept failed; pausing");
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
            Err(e) => {
                error!(error = %e, "the listener is unusable");
                break Err(Error::Io(e));
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "refusing connection over the cap");
            let message = format!(
                "the server has its maximum of {} connections",
                config.max_connections
            );
            tracker.spawn(async move {
                connection::refuse(stream, ErrorKind::TooManyConnections, &message).await;
            });
            continue;
        };
        let config = config.clone();
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        let force = force.clone();
        tracker.spawn(async move {
            let connection = Connection::new(stream, peer, &config);
            tokio::select! {
                result = connection.run(registry, &config, &shutdown) => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "connection ended");
                    }
                }
                _ = force.cancelled() => debug!(%peer, "connection closed at the end of the grace"),
            }
            drop(permit);
        });
    };

    // Stop accepting at once: the listener is closed before waiting for connections.
    drop(listener);
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
    result
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
