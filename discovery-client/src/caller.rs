//! [`Caller`]: the crate's own handle to the worker, which the public handles are made of.
//!
//! [`Client`](crate::Client), [`Registration`](crate::Registration) and
//! [`Watch`](crate::Watch) each hold one. It sits below all three so that none of them has
//! to import another: it hands a request to the worker and waits for its outcome, sends
//! watch controls, reads what the worker published, and turns answers into the typed
//! results of the few requests that more than one handle makes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::{Instance, Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use uuid::Uuid;

use crate::call::{Call, Outcome};
use crate::config::ClientConfig;
use crate::error::Error;
use crate::spec::ServiceSpec;
use crate::status::{ServerInfo, WorkerStatus};
use crate::watch_channel::{Control, NewWatch};

/// A cheap-to-clone handle to one worker.
#[derive(Clone)]
pub(crate) struct Caller {
    calls: mpsc::Sender<Call>,
    /// For watch handles, which must not wait (they send from `Drop`).
    control: mpsc::UnboundedSender<Control>,
    status: Arc<WorkerStatus>,
    config: Arc<ClientConfig>,
}

impl Caller {
    pub(crate) fn new(
        calls: mpsc::Sender<Call>,
        control: mpsc::UnboundedSender<Control>,
        status: Arc<WorkerStatus>,
        config: Arc<ClientConfig>,
    ) -> Self {
        Self {
            calls,
            control,
            status,
            config,
        }
    }

    /// The live instances of `service_type`.
    pub(crate) async fn query(&self, service_type: String) -> Result<Vec<Instance>, Error> {
        match self.call(Request::Query { service_type }).await? {
            Response::Instances { instances, .. } => Ok(instances),
            other => Err(unexpected("Query", other)),
        }
    }

    /// Registers `spec` once; the id the server made.
    pub(crate) async fn register_once(&self, spec: &ServiceSpec) -> Result<Uuid, Error> {
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

    /// Heartbeats `id`; `NotFound` when the server does not know it.
    pub(crate) async fn heartbeat(&self, id: Uuid) -> Result<(), Error> {
        match self.call(Request::Heartbeat { id }).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("Heartbeat", other)),
        }
    }

    /// Deregisters `id`; `NotFound` when the server does not know it.
    pub(crate) async fn deregister(&self, id: Uuid) -> Result<(), Error> {
        match self.call(Request::Deregister { id }).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("Deregister", other)),
        }
    }

    /// A round trip to the server.
    pub(crate) async fn ping(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        match self.call(Request::Ping).await? {
            Response::Pong => Ok(start.elapsed()),
            other => Err(unexpected("Ping", other)),
        }
    }

    /// Opens a watch: sends its `Watch` request with what the worker needs to deliver its
    /// events, and waits until the watch has started.
    pub(crate) async fn open_watch(&self, request: Request, watch: NewWatch) -> Result<(), Error> {
        match self.call_with(request, Some(watch)).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("Watch", other)),
        }
    }

    /// What the server of the current or last connection announced.
    pub(crate) fn server_info(&self) -> Option<ServerInfo> {
        self.status.server()
    }

    /// The TTL of the current or last server.
    pub(crate) fn ttl(&self) -> Option<Duration> {
        self.server_info().map(|info| info.ttl)
    }

    /// The client's connect timeout, which bounds how long a call waits for a connection.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.config.connect_timeout
    }

    /// How many events may wait for the consumer of one watch.
    pub(crate) fn watch_buffer(&self) -> usize {
        self.config.watch_buffer
    }

    /// Hands a message to the worker without waiting; lost only when the worker is gone.
    pub(crate) fn control(&self, control: Control) {
        let _ = self.control.send(control);
    }

    /// Hands a request to the worker and waits for its outcome.
    async fn call(&self, request: Request) -> Outcome {
        self.call_with(request, None).await
    }

    /// Hands a request, and the watch it opens if any, to the worker and waits for its
    /// outcome.
    async fn call_with(&self, request: Request, watch: Option<NewWatch>) -> Outcome {
        let (reply, outcome) = oneshot::channel();
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
        match outcome.await {
            Ok(outcome) => outcome,
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

impl fmt::Debug for Caller {
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
