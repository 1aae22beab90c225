//! The [`Client`] handle and its [`ClientBuilder`].
//!
//! A `Client` is cheap to clone: every clone hands its calls to the same worker task, which
//! owns the one connection, so a program builds one client and passes clones around. The
//! calls are plain request/answer pairs; [`Client::register`] adds a
//! [`Registration`] that keeps the instance alive, and [`Client::watch`] and
//! [`Client::view`] follow a type's changes as the server pushes them.
//!
//! The client reads its own writes: every query and watch waits, on whichever server it
//! goes to, for the latest change this client made (a register, an update, a deregister),
//! so that a caller that registered an instance finds it even on a server of a cluster
//! that learns of it a moment later.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::{Instance, Metadata, Revision, TypeCount};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::call::Continuity;
use crate::caller::Caller;
use crate::config::{
    CALL_BUFFER, ClientConfig, DEFAULT_BACKOFF_MAX, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_WATCH_BUFFER, ServerAddress, default_client_name,
};
use crate::dial::{Dial, Tcp};
use crate::error::Error;
use crate::grant::Registered;
use crate::registration::Registration;
use crate::spec::ServiceSpec;
use crate::status::WorkerStatus;
use crate::view::ServiceView;
use crate::watch::Watch;
use crate::worker;

// Defined below the worker, which fills it in; its home for programs is here, next to
// `Client::server_info`.
pub use crate::status::ServerInfo;

/// A handle to the discovery servers: find services, announce them, keep them alive.
///
/// Clones share one worker task and one connection; connecting, reconnecting, failing
/// over and numbering requests are the worker's business. Calls made at the same time are
/// pipelined on that connection.
///
/// Built with [`Client::builder`]. Every call waits at most the connect timeout for a
/// connection and then the request timeout for its answer.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let server_address = listener.local_addr()?;
/// # let stop = tokio_util::sync::CancellationToken::new();
/// # let server = tokio::spawn(discovery_server::server::run(listener, Default::default(), stop.clone()));
/// use discovery_client::{Client, ServiceSpec};
///
/// let client = Client::builder().address(server_address).build()?;
/// let granted = client
///     .register_once(&ServiceSpec::new("billing", "127.0.0.1:8080".parse()?))
///     .await?;
/// let billing = client.query("billing").await?;
/// assert_eq!(billing[0].id, granted.id);
/// let types = client.list_types().await?;
/// assert_eq!((types[0].service_type.as_str(), types[0].instances), ("billing", 1));
/// # drop(client);
/// # stop.cancel();
/// # server.await??;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    caller: Caller,
}

impl Client {
    /// A builder with every setting at its default; at least one address must be added.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// Lists the live instances of `service_type`, in no particular order. An answer split
    /// over several frames is joined. An unknown type is an empty list, not an error.
    ///
    /// A server that answers `Unavailable` (a server of a cluster cut off from its store)
    /// is left for the next address, and the query is asked there, within the connect
    /// timeout.
    pub async fn query(&self, service_type: impl Into<String>) -> Result<Vec<Instance>, Error> {
        self.caller.query(service_type.into()).await
    }

    /// Lists every type that has live instances, with how many, sorted by type. An answer
    /// split over several frames is joined.
    pub async fn list_types(&self) -> Result<Vec<TypeCount>, Error> {
        self.caller.list_types().await
    }

    /// Announces an instance once and returns what the server granted: the id it made for
    /// it, its TTL, and the revision of the change.
    ///
    /// Nothing keeps it alive: it lives one TTL (the spec's, or the server's) unless
    /// someone heartbeats it. Services use [`Client::register`]; this is for tools and for
    /// programs with their own heartbeat loop. Registering the same type, ip and port again
    /// replaces the older entry.
    ///
    /// Fails with [`Error::Rejected`] when the server refuses the spec (an invalid type,
    /// address, metadata or TTL, or a full registry), and with [`Error::Throttled`] when a
    /// rate limit refuses it for now.
    pub async fn register_once(&self, spec: &ServiceSpec) -> Result<Registered, Error> {
        self.caller.register_once(spec, None).await
    }

    /// Announces an instance and keeps it alive until the returned [`Registration`] is
    /// shut down or dropped.
    ///
    /// This first registration is made before the call returns, so a refused spec, a
    /// throttled register or an unreachable server is an error here; once it has
    /// succeeded, the registration never gives up, unless another register takes its
    /// endpoint (see [`Registration`]).
    pub async fn register(&self, spec: ServiceSpec) -> Result<Registration, Error> {
        let continuity = Continuity::new(None);
        let granted = self
            .caller
            .register_once(&spec, Some(continuity.clone()))
            .await?;
        let continuity = continuity.at(granted.revision);
        Ok(Registration::start(
            self.caller.clone(),
            spec,
            granted,
            continuity,
        ))
    }

    /// Keeps an instance alive for another TTL (its own).
    ///
    /// Fails with [`Error::NotFound`] when the server does not know the id; its `reason`
    /// says why when the server remembers: it expired or was deregistered (register it
    /// again, under a new id), or another register of the same endpoint replaced it.
    pub async fn heartbeat(&self, id: Uuid) -> Result<(), Error> {
        self.caller.heartbeat(id, None).await
    }

    /// Removes an instance at once, so that no query lists it any more.
    ///
    /// Fails with [`Error::NotFound`] when the server does not know the id (with the
    /// reason, as for [`Client::heartbeat`]); either way, the instance is not listed
    /// afterwards.
    pub async fn deregister(&self, id: Uuid) -> Result<(), Error> {
        self.caller.deregister(id).await
    }

    /// Replaces the metadata of an instance with `metadata` (pairs not in it are gone),
    /// keeping its id and its liveness: an update is not a heartbeat. Watchers of the type
    /// receive [`WatchEvent::Updated`](crate::WatchEvent::Updated). Returns the revision
    /// of the change.
    ///
    /// Fails with [`Error::NotFound`] (and its reason) when the server does not know the
    /// id, and with [`Error::Rejected`] when it refuses the metadata. A
    /// [`Registration`] has its own [`Registration::set_metadata`], which also makes the
    /// new metadata the one it registers again with.
    pub async fn update(&self, id: Uuid, metadata: Metadata) -> Result<Revision, Error> {
        self.caller.update(id, metadata, None).await
    }

    /// Follows the changes of `service_type`: the returned [`Watch`] is a stream whose
    /// first event is a [`WatchEvent::Snapshot`](crate::WatchEvent::Snapshot) of the live
    /// instances, followed by every [`Added`](crate::WatchEvent::Added),
    /// [`Updated`](crate::WatchEvent::Updated) and [`Removed`](crate::WatchEvent::Removed)
    /// as they happen.
    ///
    /// Returns once the server has accepted the watch and its snapshot is in the stream, so
    /// a failure to start is an error here, like any call's: [`Error::Unreachable`] when
    /// no server answered within the connect timeout, [`Error::Rejected`] for an invalid
    /// type or a connection at the server's watch limit. Once started, the watch never
    /// gives up: it outlives outages and failovers, resuming where it stopped (see
    /// [`Watch`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let server_address = listener.local_addr()?;
    /// # let stop = tokio_util::sync::CancellationToken::new();
    /// # let server = tokio::spawn(discovery_server::server::run(listener, Default::default(), stop.clone()));
    /// use discovery_client::{Client, ServiceSpec, WatchEvent};
    /// use futures_util::StreamExt;
    ///
    /// let client = Client::builder().address(server_address).build()?;
    /// client.register_once(&ServiceSpec::new("billing", "127.0.0.1:8080".parse()?)).await?;
    ///
    /// let mut watch = client.watch("billing").await?;
    /// while let Some(event) = watch.next().await {
    ///     match event {
    ///         WatchEvent::Snapshot { revision, instances, .. } => {
    ///             println!("{} instances at {revision}", instances.len());
    ///             # break;
    ///         }
    ///         WatchEvent::Added { instance, .. } => println!("+ {}", instance.id),
    ///         WatchEvent::Updated { instance, .. } => println!("~ {}", instance.id),
    ///         WatchEvent::Removed { instance, reason, .. } => println!("- {} ({reason:?})", instance.id),
    ///         other => println!("{other:?}"),
    ///     }
    /// }
    /// # drop((watch, client));
    /// # stop.cancel();
    /// # server.await??;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch(&self, service_type: impl Into<String>) -> Result<Watch, Error> {
        Watch::open(self.caller.clone(), service_type.into()).await
    }

    /// A live local view of `service_type`'s instances, kept up to date by a background
    /// task that follows a [`Watch`]; see [`ServiceView`].
    ///
    /// Fails like [`Client::watch`]; once made, the view keeps serving the last list it
    /// knew while no server is reachable, and says so in [`ServiceView::status`].
    pub async fn view(&self, service_type: impl Into<String>) -> Result<ServiceView, Error> {
        let watch = Watch::open(self.caller.clone(), service_type.into()).await?;
        ServiceView::start(watch).await
    }

    /// Checks that a server answers, connecting first if needed; returns the round trip.
    /// A program can call it at startup to fail early when no server is reachable.
    pub async fn ping(&self) -> Result<Duration, Error> {
        self.caller.ping().await
    }

    /// What the server of the current or last connection announced; `None` before the
    /// first connection.
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.caller.server_info()
    }

    /// The TTL of the current or last server, which an instance registered without a TTL
    /// of its own gets; `None` before the first connection.
    pub fn ttl(&self) -> Option<Duration> {
        self.caller.ttl()
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The caller prints the addresses and the current server, under the name `Client`.
        self.caller.fmt(f)
    }
}

/// Configures and builds a [`Client`]. Setters take and return the builder by value.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), discovery_client::Error> {
/// use std::time::Duration;
/// use discovery_client::Client;
///
/// // Two servers: the second is used when the first cannot be reached.
/// let client = Client::builder()
///     .address("10.0.0.7:7777")
///     .address("10.0.0.8:7777")
///     .connect_timeout(Duration::from_secs(1))
///     .client_name("billing-api")
///     .build()?; // does not connect yet
/// # drop(client);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ClientBuilder {
    config: ClientConfig,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientBuilder {
    /// A builder with no address and every setting at its default.
    pub fn new() -> Self {
        Self {
            config: ClientConfig {
                addresses: Vec::new(),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                backoff_max: DEFAULT_BACKOFF_MAX,
                client_name: default_client_name(),
                watch_buffer: DEFAULT_WATCH_BUFFER,
            },
        }
    }

    /// Adds a server to the end of the list. The client uses the first that answers,
    /// moving on to the next when a connection fails or breaks. No default: at least one
    /// address is needed.
    pub fn address(mut self, address: impl Into<ServerAddress>) -> Self {
        self.config.addresses.push(address.into());
        self
    }

    /// Replaces the list of servers with `addresses`, in the order to try them.
    pub fn addresses<A: Into<ServerAddress>>(
        mut self,
        addresses: impl IntoIterator<Item = A>,
    ) -> Self {
        self.config.addresses = addresses.into_iter().map(Into::into).collect();
        self
    }

    /// How long a call waits for a connection, across every attempt and backoff, before it
    /// fails with [`Error::Unreachable`]. Each single attempt gets an equal share of it per
    /// address, so that a server that swallows packets cannot use it all. `Duration::MAX`
    /// means no limit. Default [`DEFAULT_CONNECT_TIMEOUT`] (3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// How long a sent request waits for its answer before it fails with
    /// [`Error::Timeout`]; the connection is then taken as hung and dropped. Each frame of a
    /// long query answer starts the wait again. `Duration::MAX` means no limit. Default
    /// [`DEFAULT_REQUEST_TIMEOUT`] (5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// The longest wait between two rounds of connection attempts. Waits start at 100 ms
    /// and double, with jitter, up to this cap; it bounds how long a recovered server stays
    /// unused. Default [`DEFAULT_BACKOFF_MAX`] (2 s).
    pub fn backoff_max(mut self, max: Duration) -> Self {
        self.config.backoff_max = max;
        self
    }

    /// The name the client gives in its `Hello`, for the server's logs. Default: the file
    /// name of the running executable.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.config.client_name = name.into();
        self
    }

    /// How many events may wait for the consumer of each [`Watch`] (at least 2). A
    /// consumer that lets more pile up is sent [`WatchEvent::Lagged`](crate::WatchEvent::Lagged)
    /// and later a reset snapshot, instead of the events that did not fit; the worker never
    /// waits for it. Default [`DEFAULT_WATCH_BUFFER`] (256).
    ///
    /// [`DEFAULT_WATCH_BUFFER`]: crate::config::DEFAULT_WATCH_BUFFER
    pub fn watch_buffer(mut self, events: usize) -> Self {
        self.config.watch_buffer = events;
        self
    }

    /// Builds the client and starts its worker task, without connecting: the first call
    /// connects.
    ///
    /// Must be called inside a tokio runtime, which then runs the worker. Fails with
    /// [`Error::Config`] outside one, without an address, with a zero timeout or backoff
    /// cap, or with a watch buffer under 2.
    pub fn build(self) -> Result<Client, Error> {
        self.build_with(Tcp)
    }

    /// [`ClientBuilder::build`] with another transport than plain TCP.
    pub(crate) fn build_with<D: Dial>(self, dial: D) -> Result<Client, Error> {
        let config = self.config;
        if config.addresses.is_empty() {
            return Err(Error::Config("no server address given".into()));
        }
        let zero = [
            ("connect timeout", config.connect_timeout),
            ("request timeout", config.request_timeout),
            ("backoff cap", config.backoff_max),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, value)| value.is_zero()) {
            return Err(Error::Config(format!(
                "the {name} must be longer than zero"
            )));
        }
        if config.watch_buffer < 2 {
            return Err(Error::Config(
                "the watch buffer must hold at least 2 events".into(),
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config(
                "build() must be called inside a tokio runtime, which runs the client's worker"
                    .into(),
            )
        })?;
        let config = Arc::new(config);
        let status = Arc::new(WorkerStatus::default());
        let (calls, incoming) = mpsc::channel(CALL_BUFFER);
        let (control, control_incoming) = mpsc::unbounded_channel();
        worker::spawn(
            &runtime,
            config.clone(),
            dial,
            incoming,
            control_incoming,
            status.clone(),
        );
        Ok(Client {
            caller: Caller::new(calls, control, status, config),
        })
    }
}
