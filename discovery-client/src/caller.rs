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

use discovery_proto::{Instance, Metadata, Request, Response, Revision, TypeCount};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use uuid::Uuid;

use crate::call::{Call, Continuity, Outcome};
use crate::config::ClientConfig;
use crate::error::Error;
use crate::grant::Registered;
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

    /// The live instances of `service_type`, rebuilt whole from the compact entries of the
    /// answer.
    pub(crate) async fn query(&self, service_type: String) -> Result<Vec<Instance>, Error> {
        // The worker stamps the client's latest change as the `min_revision`.
        let request = Request::Query {
            service_type,
            min_revision: None,
        };
        match self.call(request).await? {
            Response::Instances {
                service_type,
                instances,
                ..
            } => Ok(instances
                .into_iter()
                .map(|entry| Instance::from_entry(service_type.as_str(), entry))
                .collect()),
            other => Err(unexpected("Query", other)),
        }
    }

    /// Every type with live instances, and how many, sorted by type.
    pub(crate) async fn list_types(&self) -> Result<Vec<TypeCount>, Error> {
        match self.call(Request::ListTypes).await? {
            Response::Types { types, .. } => Ok(types),
            other => Err(unexpected("ListTypes", other)),
        }
    }

    /// Registers `spec` once; what the server granted. `continuity` is that of the
    /// registration it is for, if any.
    pub(crate) async fn register_once(
        &self,
        spec: &ServiceSpec,
        continuity: Option<Continuity>,
    ) -> Result<Registered, Error> {
        let request = Request::Register {
            service_type: spec.service_type.clone(),
            ip: spec.address.ip(),
            port: spec.address.port(),
            metadata: spec.metadata.clone(),
            ttl: spec.ttl,
        };
        match self.call_with(request, None, continuity).await? {
            Response::Registered { id, ttl, revision } => Ok(Registered { id, ttl, revision }),
            other => Err(unexpected("Register", other)),
        }
    }

    /// Heartbeats `id`; `NotFound` when the server does not know it. With a registration's
    /// `continuity`, the worker sends its revision as the `min_revision` of its first
    /// heartbeat on each connection.
    pub(crate) async fn heartbeat(
        &self,
        id: Uuid,
        continuity: Option<Continuity>,
    ) -> Result<(), Error> {
        let request = Request::Heartbeat {
            id,
            min_revision: None,
        };
        match self.call_with(request, None, continuity).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("Heartbeat", other)),
        }
    }

    /// Deregisters `id`; `NotFound` when the server does not know it.
    pub(crate) async fn deregister(&self, id: Uuid) -> Result<(), Error> {
        let request = Request::Deregister {
            id,
            min_revision: None,
        };
        match self.call(request).await? {
            Response::Done { .. } => Ok(()),
            other => Err(unexpected("Deregister", other)),
        }
    }

    /// Replaces the metadata of `id`; the revision of the change, or `NotFound`.
    pub(crate) async fn update(
        &self,
        id: Uuid,
        metadata: Metadata,
        continuity: Option<Continuity>,
    ) -> Result<Revision, Error> {
        let request = Request::Update {
            id,
            metadata,
            min_revision: None,
        };
        match self.call_with(request, None, continuity).await? {
            Response::Done { revision } => Ok(revision),
            other => Err(unexpected("Update", other)),
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
        match self.call_with(request, Some(watch), None).await? {
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
        self.call_with(request, None, None).await
    }

    /// Hands a request, the watch it opens and the registration it is for, if any, to
    /// the worker and waits for its outcome.
    async fn call_with(
        &self,
        request: Request,
        watch: Option<NewWatch>,
        continuity: Option<Continuity>,
    ) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        let mut call = Call::new(request, reply);
        call.watch = watch;
        call.continuity = continuity;
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

/// An answer that does not fit the request; `NotFound` and `Throttled` are the expected
/// "no"s.
fn unexpected(request: &'static str, response: Response) -> Error {
    match response {
        Response::NotFound { reason } => Error::NotFound { reason },
        Response::Throttled { retry_after_ms } => Error::Throttled {
            retry_after: Duration::from_millis(retry_after_ms),
        },
        other => Error::UnexpectedResponse {
            request,
            response: format!("{other:?}"),
        },
    }
}
