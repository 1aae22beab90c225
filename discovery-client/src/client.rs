//! The [`Client`] handle and its [`ClientBuilder`].
//!
//! A `Client` is cheap to clone: every clone hands its calls to the same worker task, which
//! owns the one connection, so a program builds one client and passes clones around. The
//! calls are plain request/answer pairs; [`Client::register`] adds a
//! [`Registration`] that keeps the instance alive, and [`Client::watch`] and
//! [`Client::view`] follow a type's changes as the server pushes them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::{Instance, Limits, Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use uuid::Uuid;

use crate::config::{
    CALL_BUFFER, ClientConfig, DEFAULT_BACKOFF_MAX, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_WATCH_BUFFER, ServerAddress, default_client_name,
};
use crate::error::Error;
use crate::registration::{Registration, ServiceSpec};
use crate::view::ServiceView;
use crate::watch::{Control, NewWatch, Watch};
use crate::worker::{self, Call, WorkerStatus};

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
/// let id = client
///     .register_once(&ServiceSpec::new("billing", "127.0.0.1:8080".parse()?))
///     .await?;
/// let billing = client.query("billing").await?;
/// assert_eq!(billing[0].id, id);
/// # drop(client);
/// # stop.cancel();
/// # server.await??;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    calls: mpsc::Sender<Call>,
    /// For `Watch` handles, which must not wait (they send from `Drop`).
    control: mpsc::UnboundedSender<Control>,
    status: Arc<WorkerStatus>,
    config: Arc<ClientConfig>,
}

/// What the server of the current (or last) connection announced in its `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInfo {
    /// The address from the client's list that this connection went to.
    pub address: ServerAddress,
    /// The socket address it resolved to.
    pub peer: std::net::SocketAddr,
    /// The protocol version the server speaks.
    pub protocol_version: u16,
    /// How long an instance stays live without a heartbeat on that server; a
    /// [`Registration`] heartbeats at a third of it.
    pub ttl: Duration,
    /// The limits the server enforces, to check a request against before sending it.
    pub limits: Limits,
}

impl Client {
    /// A builder with every setting at its default; at least one address must be added.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// Lists the live instances of `service_type`, in no particular order. An answer split
    /// over several frames is joined. An unknown type is an empty list, not an error.
    pub async fn query(&self, service_type: impl Into<String>) -> Result<Vec<Instance>, Error> {
        let request = Request::Query {
            service_type: service_type.into(),
        };
        match self.call(request).await? {
            Response::Instances { instances, .. } => Ok(instances),
            other => Err(unexpected("Query", other)),
        }
    }

    /// Announces an instance once and returns the id the server made for it.
    ///
    /// Nothing keeps it alive: it lives one TTL unless someone heartbeats it. Services use
    /// [`Client::register`]; this is for tools and for programs with their own heartbeat
    /// loop. Registering the same type, ip and port again replaces the older entry.
    ///
    /// Fails with [`Error::Rejected`] when the server refuses the spec (an invalid type,
    /// address or metadata, or a full registry).
    pub async fn register_once(&self, spec: &ServiceSpec) -> Result<Uuid, Error> {
        let request = Request::Register {
            service_type: spec.service_type.clone(),
            ip: spec.address.ip(),
            port: spec.address.port(),
            metadata: spec.metadata.clone(),
        };
        match self.call(request).await? {
            Response::Registered { id } => Ok(id),
            other => Err(unexpected("Register", other)),
        }
    }

    /// Announces an instance and keeps it alive until the returned [`Registration`] is
    /// shut down or dropped.
    ///
    /// This first registration is made before the call returns, so a refused spec or an
    /// unreachable server is an error here; once it has succeeded, the registration never
    /// gives up (see [`Registration`]).
    pub async fn register(&self, spec: ServiceSpec) -> Result<Registration, Error> {
        let id = self.register_once(&spec).await?;
        Ok(Registration::start(self.clone(), spec, id))
    }

    /// Keeps an instance alive for another TTL.
    ///
    /// Fails with [`Error::NotFound`] when the server does not know the id (it expired or
    /// was deregistered): the instance must be registered again, under a new id.
    pub async fn heartbeat(&self, id: Uuid) -> Result<(), Error> {
        match self.call(Request::Heartbeat { id }).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("Heartbeat", other)),
        }
    }

    /// Removes an instance at once, so that no query lists it any more.
    ///
    /// Fails with [`Error::NotFound`] when the server does not know the id; either way, the
    /// instance is not listed afterwards.
    pub async fn deregister(&self, id: Uuid) -> Result<(), Error> {
        match self.call(Request::Deregister { id }).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("Deregister", other)),
        }
    }

    /// Follows the changes of `service_type`: the returned [`Watch`] is a stream whose
    /// first event is a [`WatchEvent::Snapshot`](crate::WatchEvent::Snapshot) of the live
    /// instances, followed by every [`Added`](crate::WatchEvent::Added) and
    /// [`Removed`](crate::WatchEvent::Removed) as they happen.
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
        let service_type = service_type.into();
        let key = self.status.next_watch_key();
        let (events, receiver) = mpsc::channel(self.config.watch_buffer);
        // Made first, so that a call given up or cancelled midway unsubscribes on drop.
        let watch = Watch::new(key, service_type.clone(), receiver, self.clone());
        let request = Request::Watch {
            service_type: service_type.clone(),
            since: None,
        };
        let new = NewWatch {
            key,
            service_type,
            events,
        };
        match self.call_with(request, Some(new)).await? {
            Response::Ok => Ok(watch),
            other => Err(unexpected("Watch", other)),
        }
    }

    /// A live local view of `service_type`'s instances, kept up to date by a background
    /// task that follows a [`Watch`]; see [`ServiceView`].
    ///
    /// Fails like [`Client::watch`]; once made, the view keeps serving the last list it
    /// knew while no server is reachable, and says so in [`ServiceView::status`].
    pub async fn view(&self, service_type: impl Into<String>) -> Result<ServiceView, Error> {
        let watch = self.watch(service_type).await?;
        ServiceView::start(watch).await
    }

    /// Checks that a server answers, connecting first if needed; returns the round trip.
    /// A program can call it at startup to fail early when no server is reachable.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        match self.call(Request::Ping).await? {
            Response::Pong => Ok(start.elapsed()),
            other => Err(unexpected("Ping", other)),
        }
    }

    /// What the server of the current or last connection announced; `None` before the
    /// first connection.
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.status.server()
    }

    /// The TTL of the current or last server; `None` before the first connection.
    pub fn ttl(&self) -> Option<Duration> {
        self.server_info().map(|info| info.ttl)
    }

    /// The client's connect timeout, which bounds how long a call waits for a connection.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.config.connect_timeout
    }

    /// Hands a message to the worker without waiting; lost only when the worker is gone.
    pub(crate) fn control(&self, control: Control) {
        let _ = self.control.send(control);
    }

    /// Hands a request to the worker and waits for its answer.
    async fn call(&self, request: Request) -> Result<Response, Error> {
        self.call_with(request, None).await
    }

    /// Hands a request, and the watch it opens if any, to the worker and waits for its
    /// answer.
    async fn call_with(
        &self,
        request: Request,
        watch: Option<NewWatch>,
    ) -> Result<Response, Error> {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            request,
            reply,
            queued_at: Instant::now(),
            watch,
        };
        // The worker takes calls as fast as they come unless it is swamped; bound the wait
        // so that a call never hangs past its timeouts. (`timeout` takes a wait too long to
        // be a point in time as no limit.)
        let waited = self.config.connect_timeout;
        match timeout(waited, self.calls.send(call)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(self.stopped().await),
            Err(_) => return Err(Error::Timeout { after: waited }),
        }
        match answer.await {
            Ok(answer) => answer,
            Err(_) => Err(self.stopped().await),
        }
    }

    /// Why the worker is gone: it drops a call unanswered only when it stops.
    async fn stopped(&self) -> Error {
        // The worker records why it stopped before it drops its end of the channel; waiting
        // for that end to close makes sure the reason is there to read.
        let _ = timeout(Duration::from_millis(100), self.calls.closed()).await;
        Error::Closed {
            reason: self
                .status
                .stop_reason()
                .unwrap_or_else(|| "its worker task stopped without answering".to_owned()),
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addresses", &self.config.addresses)
            .field("server", &self.status.server().map(|info| info.address))
            .finish_non_exhaustive()
    }
}

/// An answer that does not fit the request; `NotFound` is the one expected "no".
fn unexpected(request: &'static str, response: Response) -> Error {
    match response {
        Response::NotFound => Error::NotFound,
        other => Error::UnexpectedResponse {
            request,
            response: format!("{other:?}"),
        },
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
            incoming,
            control_incoming,
            status.clone(),
        );
        Ok(Client {
            calls,
            control,
            status,
            config,
        })
    }
}
