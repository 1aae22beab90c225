//! The server's lifecycle: accept connections on every listener, serve each on its own
//! task within the limits, and shut down gracefully.
//!
//! The accept loop knows no protocol: each [`Listener`] pairs a socket with a
//! [`Frontend`], and the loop hands every accepted stream to it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use discovery_registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::Error;
use crate::binary::Binary;
use crate::compat::Compat;
use crate::config::ServerConfig;
use crate::descriptors::{self, Spares};
use crate::frontend::{Context, Frontend, Refusal};
use crate::peer::{PeerCounts, PeerKey};

/// The first pause after an accept error that may pass (such as running out of file
/// descriptors); it doubles on each further error, up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between accept attempts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The most connections being refused at once, for any reason (each takes about a second,
/// to make sure its client reads the refusal); past it, a connection that would be refused
/// is closed at once. A flood of connections over a cap then costs a bounded number of
/// tasks and descriptors.
pub const MAX_REFUSALS: usize = 64;

/// Serves the binary protocol on `listener` until `shutdown` is cancelled, over a new
/// registry made from `config.registry`.
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
    serve(
        vec![Listener::binary(listener)],
        Arc::new(config),
        registry,
        shutdown,
    )
    .await
}

/// A bound socket and the protocol it speaks.
pub struct Listener {
    name: &'static str,
    accept: Box<dyn AcceptLoop>,
}

impl Listener {
    /// `listener` speaking `frontend`'s protocol.
    pub fn new<F: Frontend>(listener: TcpListener, frontend: F) -> Self {
        Listener {
            name: frontend.name(),
            accept: Box::new(Bound {
                listener,
                frontend: Arc::new(frontend),
            }),
        }
    }

    /// `listener` speaking the binary protocol ([`crate::binary`]).
    pub fn binary(listener: TcpListener) -> Self {
        Listener::new(listener, Binary)
    }

    /// `listener` speaking the course's JSON protocol ([`crate::compat`]).
    pub fn compat(listener: TcpListener) -> Self {
        Listener::new(listener, Compat::default())
    }

    /// The name of the protocol it speaks.
    pub fn protocol(&self) -> &'static str {
        self.name
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("protocol", &self.name)
            .finish_non_exhaustive()
    }
}

/// Serves `registry` on every listener until `shutdown` is cancelled, as [`run`] does.
///
/// Every listener serves the one `registry` and shares one connection cap
/// (`config.max_connections` counts the connections of all), one shutdown and one grace.
/// If a listener dies, all stop accepting and the server shuts down as if `shutdown` had
/// been cancelled, then returns that listener's error. The registry's own configuration
/// (its TTL, limits and frame size) is what clients are told and held to; the
/// `registry`, `listen` and `compat_listen` fields of `config` are not used here.
pub async fn serve(
    listeners: Vec<Listener>,
    config: Arc<ServerConfig>,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let tracker = TaskTracker::new();
    // Cancelled when the grace runs out: every connection still open is dropped.
    let force = CancellationToken::new();
    // Cancelled by `shutdown`, or by an accept loop whose listener died, so that the other
    // loops and every connection wind down too.
    let stop = shutdown.child_token();
    let serving = Serving {
        context: Context {
            registry,
            config: config.clone(),
        },
        permits: Arc::new(Semaphore::new(config.max_connections)),
        peers: config.max_connections_per_peer.map(PeerCounts::new),
        refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
        spares: Arc::new(Spares::new()),
        tracker: tracker.clone(),
        force: force.clone(),
        stop,
    };
    // Each loop drops its listener when it ends: accepting stops before connections are
    // waited for.
    let loops = listeners
        .into_iter()
        .map(|listener| listener.accept.run(&serving));
    let results = futures_util::future::join_all(loops).await;

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
    results.into_iter().collect()
}

/// What the accept loops of one server share.
struct Serving {
    context: Context,
    /// One permit per open connection, of any listener.
    permits: Arc<Semaphore>,
    /// The open connections of each peer, when they are capped.
    peers: Option<PeerCounts>,
    /// One permit per connection being refused.
    refusals: Arc<Semaphore>,
    /// The descriptors kept to refuse a connection past the process's limit.
    spares: Arc<Spares>,
    tracker: TaskTracker,
    force: CancellationToken,
    stop: CancellationToken,
}

/// A listener's accept loop, with its protocol's type erased so that listeners of every
/// protocol go in one list, while each loop calls its frontend without dynamic dispatch.
trait AcceptLoop: Send {
    fn run<'a>(
        self: Box<Self>,
        serving: &'a Serving,
    ) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;
}

/// A socket and its frontend.
struct Bound<F> {
    listener: TcpListener,
    frontend: Arc<F>,
}

impl<F: Frontend> AcceptLoop for Bound<F> {
    fn run<'a>(
        self: Box<Self>,
        serving: &'a Serving,
    ) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>> {
        Box::pin(accept_loop(self.listener, self.frontend, serving))
    }
}

/// Accepts connections on `listener` until `serving.stop` is cancelled, serving each on
/// its own task within the connection cap.
async fn accept_loop<F: Frontend>(
    listener: TcpListener,
    frontend: Arc<F>,
    serving: &Serving,
) -> Result<(), Error> {
    let protocol = frontend.name();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = serving.stop.cancelled() => return Ok(()),
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
            Err(e) if descriptors::is_exhausted(&e) && serving.spares.release() => {
                // A spare given back: the connection waiting in the backlog can be taken,
                // to be told that there is no room for it rather than be left to hang.
                let retried = tokio::select! {
                    biased;
                    _ = serving.stop.cancelled() => return Ok(()),
                    accepted = listener.accept() => accepted,
                };
                match retried {
                    Ok((stream, peer)) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        debug!(%peer, protocol, "no descriptor left; refusing the connection");
                        refuse(&frontend, stream, peer, serving, Refusal::NoDescriptors);
                    }
                    Err(e) => {
                        debug!(error = %e, protocol, "accept failed with a spare descriptor");
                        serving.spares.refill();
                    }
                }
                continue;
            }
            Err(e) if is_transient(&e) => {
                warn!(error = %e, pause = ?backoff, protocol, "accept failed; pausing");
                // Out of descriptors with every spare lent to a refusal: the first spare
                // back ends the pause, so that the connections waiting are refused in
                // turn rather than one backoff apart.
                tokio::select! {
                    _ = serving.stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                    () = serving.spares.returned(), if descriptors::is_exhausted(&e) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                serving.spares.refill();
                continue;
            }
            Err(e) => {
                error!(error = %e, protocol, "the listener is unusable");
                serving.stop.cancel();
                return Err(Error::Io(e));
            }
        };
        tune(&stream, peer);
        // Spares given away and not recycled (another loop took their number first) are
        // taken again as soon as descriptors are free.
        serving.spares.refill();
        let slot = match &serving.peers {
            Some(peers) => match peers.admit(PeerKey::of(peer.ip())) {
                Some(slot) => Some(slot),
                None => {
                    refuse(&frontend, stream, peer, serving, Refusal::PeerFull);
                    continue;
                }
            },
            None => None,
        };
        let Ok(permit) = serving.permits.clone().try_acquire_owned() else {
            refuse(&frontend, stream, peer, serving, Refusal::Full);
            continue;
        };
        let frontend = Arc::clone(&frontend);
        let context = serving.context.clone();
        let stop = serving.stop.clone();
        let force = serving.force.clone();
        serving.tracker.spawn(async move {
            tokio::select! {
                result = frontend.serve(stream, peer, &context, &stop) => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "connection ended");
                    }
                }
                _ = force.cancelled() => debug!(%peer, "connection closed at the end of the grace"),
            }
            drop(permit);
            drop(slot);
        });
    }
}

/// Sets the socket options every accepted connection gets.
fn tune(stream: &TcpStream, peer: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    // A connection with an open watch is never idle-closed, so a peer that vanished
    // without a FIN (a crashed host, a dropped route) would hold its slot forever:
    // keepalive probes find it within about a minute.
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive()) {
        debug!(%peer, error = %e, "cannot set TCP keepalive");
    }
    // The write timeout sees progress only when the socket becomes writable again, which
    // by default waits until half of a send buffer of up to 4 MiB has drained: seconds
    // for a slow reader that reads all along. Keeping at most this much unsent in the
    // kernel makes every read of the client visible as progress (and bounds what the
    // kernel holds for a reader that stops).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        debug!(%peer, error = %e, "cannot set TCP_NOTSENT_LOWAT");
    }
}

/// The most bytes a connection's socket holds unsent in the kernel (`TCP_NOTSENT_LOWAT`).
const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Refuses a connection in its protocol's words, on a task of its own, or closes it at
/// once when [`MAX_REFUSALS`] are under way already. Either way its descriptor ends as a
/// spare if spares are missing.
fn refuse<F: Frontend>(
    frontend: &Arc<F>,
    mut stream: TcpStream,
    peer: SocketAddr,
    serving: &Serving,
    refusal: Refusal,
) {
    let Ok(refusing) = serving.refusals.clone().try_acquire_owned() else {
        debug!(%peer, protocol = frontend.name(), ?refusal, "closing refused connection at once");
        close(stream, &serving.spares);
        return;
    };
    debug!(%peer, protocol = frontend.name(), ?refusal, "refusing connection");
    let frontend = Arc::clone(frontend);
    let context = serving.context.clone();
    let force = serving.force.clone();
    let spares = Arc::clone(&serving.spares);
    serving.tracker.spawn(async move {
        tokio::select! {
            () = frontend.refuse(&mut stream, &context, refusal) => {}
            _ = force.cancelled() => {}
        }
        close(stream, &spares);
        drop(refusing);
    });
}

/// Closes a socket, keeping its descriptor as a spare when spares are missing.
fn close(stream: TcpStream, spares: &Spares) {
    match stream.into_std() {
        Ok(stream) => spares.recycle(OwnedFd::from(stream)),
        Err(e) => debug!(error = %e, "cannot take the socket back from the runtime"),
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
