//! The task that owns the connection: every [`Client`](crate::Client) handle hands its calls
//! to one worker over a bounded channel, in the manner of tower's `buffer`.
//!
//! The worker is the only place that knows about sockets. It connects on demand (no call
//! waiting, no connection attempt), says `Hello`, numbers requests, writes them as they come
//! (pipelining) and matches answers to requests by id, joining the parts of multi-frame
//! query answers. When a connection breaks it fails the requests that were on the wire
//! (they may or may not have been carried out, so they are never sent twice) and, when
//! calls are waiting, connects again: first to the next address in the list, and after a
//! whole round of failed attempts with [`Backoff`].
//!
//! A call that waits longer than the connect timeout for a connection fails with
//! [`Error::Unreachable`]; a request that waits longer than the request timeout for its
//! answer fails with [`Error::Timeout`] and costs the connection, since answers come in
//! order and nothing behind it can come sooner.
//!
//! The socket is split into a read half and a write half that make progress independently
//! inside one `select!`: a writer blocked on a full socket while the server is blocked
//! writing answers the worker does not read would deadlock both.
//!
//! Watches are the worker's too ([`WatchTable`]): a frame whose request id is a watch's
//! goes there instead of to the requests waiting for answers, every new connection
//! subscribes the open watches again from the last revision their consumers were given,
//! and the worker keeps connecting (with backoff, never giving up) while a watch is open,
//! even when no call waits. A connection that carries watches and has been silent for
//! [`WATCH_KEEPALIVE`] is checked with a `Ping`, so that a vanished server is noticed.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use discovery_proto::codec::ClientCodec;
use discovery_proto::{
    ClientFrame, ErrorKind, Instance, PROTOCOL_VERSION, Request, RequestId, Response,
    SERVER_REQUEST_ID, ServerFrame, encoding,
};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::client::ServerInfo;
use crate::config::{
    BACKOFF_INITIAL, CALL_BUFFER, ClientConfig, MAX_IN_FLIGHT, ServerAddress, WATCH_KEEPALIVE,
};
use crate::deadline;
use crate::error::Error;
use crate::watch::{Control, NewWatch, WatchKey};
use crate::watches::{Outbox, WatchTable};

/// What a call receives: the server's response (the parts of a query answer joined into
/// one `Instances`), or why there is none. Error answers are already turned into errors.
pub(crate) type Outcome = Result<Response, Error>;

/// One call handed to the worker.
pub(crate) struct Call {
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<Outcome>,
    /// When the caller made the call: the connect timeout counts from here.
    pub(crate) queued_at: Instant,
    /// For a `Watch` request: the watch to open with it.
    pub(crate) watch: Option<NewWatch>,
}

/// What the worker and its handles share: the server it is on, why it stopped, and the
/// numbering of watches.
#[derive(Debug, Default)]
pub(crate) struct WorkerStatus {
    /// Why the worker stopped, once it has.
    stopped: Mutex<Option<String>>,
    /// The server of the current or last connection.
    server: Mutex<Option<ServerInfo>>,
    /// The key of the next watch.
    next_watch_key: std::sync::atomic::AtomicU64,
}

impl WorkerStatus {
    pub(crate) fn stop_reason(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record_stop(&self, reason: String) {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        stopped.get_or_insert(reason);
    }

    pub(crate) fn server(&self) -> Option<ServerInfo> {
        self.server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_server(&self, info: ServerInfo) {
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(info);
    }

    pub(crate) fn next_watch_key(&self) -> WatchKey {
        self.next_watch_key
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Starts the worker on `runtime`.
pub(crate) fn spawn(
    runtime: &tokio::runtime::Handle,
    config: Arc<ClientConfig>,
    calls: mpsc::Receiver<Call>,
    control: mpsc::UnboundedReceiver<Control>,
    status: Arc<WorkerStatus>,
) {
    let mut worker = Worker::new(config, calls, control, status);
    runtime.spawn(async move {
        // The worker is borrowed, not moved, into the caught future: if it panics, the
        // reason is recorded before the worker (and every reply sender it holds) is dropped.
        let outcome = AssertUnwindSafe(worker.run()).catch_unwind().await;
        if let Err(panic) = outcome {
            let reason = format!("its worker task panicked: {}", panic_message(&*panic));
            warn!("discovery client stopped: {reason}");
            worker.status.record_stop(reason);
        }
    });
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

/// Records a reason when the worker is dropped without having recorded one: its task was
/// cancelled because its runtime shut down.
struct StopGuard(Arc<WorkerStatus>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0
            .record_stop("the tokio runtime that ran its worker task has shut down".to_owned());
    }
}

/// A request on the wire, waiting for its answer.
struct Pending {
    id: RequestId,
    /// The caller waiting; `None` for the worker's own requests (`Unwatch`, a watch opened
    /// again on a new connection, a keepalive `Ping`).
    reply: Option<oneshot::Sender<Outcome>>,
    /// When the request fails with a timeout; moved on by every part of a query answer.
    /// `None` when the request timeout is too long to be a point in time: no timeout.
    deadline: Option<Instant>,
    /// The parts of a query answer received so far.
    instances: Vec<Instance>,
}

impl Pending {
    /// Gives the caller, if any, its outcome.
    fn finish(self, outcome: Outcome) {
        if let Some(reply) = self.reply {
            // The caller may have gone; then nobody needs the answer.
            let _ = reply.send(outcome);
        }
    }
}

/// Where the worker's own requests go while a connection is up.
struct Link {
    frames: mpsc::UnboundedSender<ClientFrame>,
}

/// An established connection, after `Welcome`.
struct Session {
    reader: FramedRead<OwnedReadHalf, ClientCodec>,
    writer: FramedWrite<OwnedWriteHalf, ClientCodec>,
    info: ServerInfo,
    /// Its position in the address list.
    index: usize,
}

/// A connection attempt under way: it yields the index of the address it tried.
type Attempt = std::pin::Pin<Box<dyn Future<Output = (usize, Result<Session, Error>)> + Send>>;

/// What the worker does after a phase.
enum Next {
    Go,
    /// Every handle is gone: nobody can call any more.
    Stop,
}

struct Worker {
    // Declared first, so dropped first: the reason is recorded before the fields below
    // (which hold the callers' reply senders) are dropped.
    _stop_guard: StopGuard,
    status: Arc<WorkerStatus>,
    calls: mpsc::Receiver<Call>,
    /// Messages from `Watch` handles, which must never wait (one comes from `Drop`).
    control: mpsc::UnboundedReceiver<Control>,
    /// The open watches.
    watches: WatchTable,
    /// The current connection, for the worker's own requests.
    link: Option<Link>,
    /// Calls taken from the channel and not yet written.
    queue: VecDeque<Call>,
    /// Requests written and not yet answered, in the order they were written.
    in_flight: VecDeque<Pending>,
    config: Arc<ClientConfig>,
    next_request_id: RequestId,
    /// The address of the next attempt.
    next_address: usize,
    /// Attempts failed since the last connection that answered a request.
    failures: usize,
    backoff: Backoff,
    /// No attempt starts before this: the backoff outlives the calls that waited on it, so
    /// that callers arriving one after another cannot make the worker hammer a dead server.
    next_attempt_at: Instant,
    /// Why the latest attempt failed, for the callers that give up waiting.
    last_error: Option<Arc<Error>>,
}

impl Worker {
    fn new(
        config: Arc<ClientConfig>,
        calls: mpsc::Receiver<Call>,
        control: mpsc::UnboundedReceiver<Control>,
        status: Arc<WorkerStatus>,
    ) -> Self {
        Self {
            _stop_guard: StopGuard(status.clone()),
            status,
            calls,
            control,
            watches: WatchTable::default(),
            link: None,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            backoff: Backoff::new(BACKOFF_INITIAL, config.backoff_max),
            config,
            next_request_id: 1,
            next_address: 0,
            failures: 0,
            next_attempt_at: Instant::now(),
            last_error: None,
        }
    }

    async fn run(&mut self) {
        loop {
            if self.queue.is_empty() && !self.watches.want_connection() {
                // No connection and nothing to do: wait for a call without touching the
                // network.
                tokio::select! {
                    call = self.calls.recv() => match call {
                        Some(call) => self.take_call(call),
                        None => return,
                    },
                    Some(control) = self.control.recv() => self.on_control(control),
                }
                continue;
            }
            let connection = match self.connect().await {
                Ok(Some(connection)) => connection,
                Ok(None) => continue,
                Err(Stop) => return,
            };
            if let Next::Stop = self.serve(connection).await {
                return;
            }
        }
    }

    fn take_request_id(&mut self) -> RequestId {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// Queues a call. The `Watch` handles' messages sent before it are handled first, so
    /// that a dropped watch is unsubscribed before a call made after the drop is written
    /// (a new watch must not hit the server's limit because of it).
    fn take_call(&mut self, call: Call) {
        while let Ok(control) = self.control.try_recv() {
            self.on_control(control);
        }
        self.queue.push_back(call);
    }

    fn on_control(&mut self, control: Control) {
        let (watches, mut out) = self.outbox();
        watches.control(control, &mut out);
    }

    /// The watch table, and the connection its requests and answers go through.
    fn outbox(&mut self) -> (&mut WatchTable, WireOutbox<'_>) {
        let out = WireOutbox {
            link: self.link.as_ref(),
            in_flight: &mut self.in_flight,
            next_request_id: &mut self.next_request_id,
            request_timeout: self.config.request_timeout,
        };
        (&mut self.watches, out)
    }

    /// Connects while calls or watches are waiting; `Ok(None)` when none is left to wait.
    /// Calls give up after the connect timeout; watches never do.
    async fn connect(&mut self) -> Result<Option<Session>, Stop> {
        let mut attempt = self.start_attempt();
        loop {
            self.queue.retain(|call| !call.reply.is_closed());
            let oldest = self.queue.iter().map(|call| call.queued_at).min();
            if oldest.is_none() && !self.watches.want_connection() {
                // Nobody waits any more; the backoff state stays for the next call.
                return Ok(None);
            }
            // A connect timeout too long to be a point in time: the calls wait forever.
            let give_up_at =
                oldest.and_then(|oldest| deadline::after(oldest, self.config.connect_timeout));
            tokio::select! {
                (index, result) = &mut attempt => match result {
                    Ok(connection) => return Ok(Some(connection)),
                    Err(error) => {
                        self.attempt_failed(index, error);
                        attempt = self.start_attempt();
                    }
                },
                call = self.calls.recv(), if self.queue.len() < CALL_BUFFER => match call {
                    Some(call) => self.take_call(call),
                    None => return Err(Stop),
                },
                Some(control) = self.control.recv() => self.on_control(control),
                () = sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {
                    self.give_up_waiting();
                }
            }
        }
    }

    /// The next connection attempt, after the backoff wait if one is due.
    fn start_attempt(&mut self) -> Attempt {
        let index = self.next_address % self.config.addresses.len();
        let address = self.config.addresses[index].clone();
        let start_at = self.next_attempt_at;
        let hello_id = self.take_request_id();
        let client_name = self.config.client_name.clone();
        let attempt_timeout = self.config.attempt_timeout();
        Box::pin(async move {
            sleep_until(start_at).await;
            let result = attempt(address, index, hello_id, client_name, attempt_timeout).await;
            (index, result)
        })
    }

    fn attempt_failed(&mut self, index: usize, error: Error) {
        let address = &self.config.addresses[index];
        if self.failures == 0 {
            warn!(%address, %error, "cannot connect to discovery server; retrying with backoff");
        } else {
            debug!(%address, %error, failures = self.failures, "cannot connect to discovery server");
        }
        self.last_error = Some(Arc::new(error));
        self.failures += 1;
        self.next_address = index + 1;
        self.schedule_next_attempt();
    }

    /// Tries the next address at once, unless a whole round of addresses has failed: then
    /// it waits the next backoff delay.
    fn schedule_next_attempt(&mut self) {
        let now = Instant::now();
        if self.failures % self.config.addresses.len() == 0 {
            let delay = self.backoff.next_delay();
            debug!(?delay, "every address failed; backing off");
            self.next_attempt_at = deadline::saturating_after(now, delay);
        } else {
            self.next_attempt_at = now;
        }
    }

    /// Fails the calls that have waited the whole connect timeout.
    fn give_up_waiting(&mut self) {
        let now = Instant::now();
        let waited = self.config.connect_timeout;
        let (expired, waiting): (VecDeque<Call>, VecDeque<Call>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|call| deadline::has_passed(call.queued_at, waited, now));
        self.queue = waiting;
        for call in expired {
            let error = Error::Unreachable {
                waited,
                last: self.last_error.clone(),
            };
            // The caller may have gone; then nobody needs the answer.
            let _ = call.reply.send(Err(error));
        }
    }

    /// Carries calls over one connection until it ends.
    async fn serve(&mut self, connection: Session) -> Next {
        let Session {
            mut reader,
            writer,
            info,
            index,
        } = connection;
        info!(address = %info.address, peer = %info.peer, ttl = ?info.ttl, "connected to discovery server");
        let address = info.address.clone();
        let max_frame_bytes = info.limits.max_frame_bytes as usize;
        self.status.set_server(info);

        let (frames, to_write) = mpsc::unbounded_channel();
        let write_all = write_frames(writer, to_write);
        tokio::pin!(write_all);
        self.link = Some(Link {
            frames: frames.clone(),
        });
        {
            let (watches, mut out) = self.outbox();
            watches.subscribe_all(&mut out);
        }
        // When the last frame came, for the keepalive of connections that carry watches.
        let mut last_frame = Instant::now();

        let mut answered = false;
        // Set when the server said it is closing the connection: nothing more is written,
        // and what is on the wire is read until the end.
        let mut closing: Option<String> = None;

        let reason = loop {
            if closing.is_none() {
                self.write_queued(&frames, max_frame_bytes);
            }
            let deadline = self.in_flight.front().and_then(|request| request.deadline);
            let check_at = deadline::saturating_after(last_frame, WATCH_KEEPALIVE);
            let keepalive = self.watches.any_subscribed() && self.in_flight.is_empty();
            tokio::select! {
                frame = reader.next() => match frame {
                    None => {
                        break closing.take().unwrap_or_else(|| "the server closed the connection".to_owned())
                    }
                    Some(Err(error)) => break format!("cannot read from the server: {error}"),
                    Some(Ok(Err(error))) => {
                        if let Some(reason) = self.on_undecodable(error) {
                            break reason;
                        }
                    }
                    Some(Ok(Ok(frame))) => {
                        last_frame = Instant::now();
                        if self.on_frame(frame, &mut closing) {
                            answered = true;
                        }
                        if self.in_flight.is_empty() {
                            if let Some(reason) = closing.take() {
                                // Nothing more to wait for on a connection the server is closing.
                                break reason;
                            }
                        }
                    }
                },
                written = &mut write_all => {
                    break match written {
                        Ok(()) => "the writer stopped".to_owned(),
                        Err(error) => format!("cannot write to the server: {error}"),
                    };
                }
                call = self.calls.recv(), if self.queue.len() < CALL_BUFFER => match call {
                    Some(call) => self.take_call(call),
                    None => {
                        self.link = None;
                        return Next::Stop;
                    }
                },
                Some(control) = self.control.recv(), if closing.is_none() => self.on_control(control),
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let after = self.config.request_timeout;
                    if let Some(request) = self.in_flight.pop_front() {
                        request.finish(Err(Error::Timeout { after }));
                    }
                    break format!("the server did not answer within {after:?}");
                }
                () = sleep_until(check_at), if keepalive && closing.is_none() => {
                    let (_, mut out) = self.outbox();
                    out.send(Request::Ping);
                    // Counts as activity, so that only one check is under way at a time.
                    last_frame = Instant::now();
                }
            }
        };
        self.link = None;

        if self.in_flight.is_empty() {
            debug!(%address, %reason, "connection to discovery server ended");
        } else {
            warn!(%address, %reason, in_flight = self.in_flight.len(), "connection to discovery server lost");
        }
        for request in self.in_flight.drain(..) {
            let error = Error::Disconnected {
                address: address.clone(),
                reason: reason.clone(),
            };
            request.finish(Err(error));
        }
        self.watches.connection_lost(&reason);
        self.last_error = Some(Arc::new(Error::Disconnected { address, reason }));
        if !answered {
            // Welcomed and lost without one answer: a server that keeps doing this must
            // not be reconnected to in a tight loop.
            self.failures += 1;
        }
        self.next_address = index + 1;
        self.schedule_next_attempt_after_loss(answered);
        Next::Go
    }

    fn schedule_next_attempt_after_loss(&mut self, answered: bool) {
        if answered {
            // The connection worked: try again at once, on the next address.
            self.next_attempt_at = Instant::now();
        } else {
            self.schedule_next_attempt();
        }
    }

    /// Writes queued calls while the in-flight window has room.
    fn write_queued(
        &mut self,
        frames: &mpsc::UnboundedSender<ClientFrame>,
        max_frame_bytes: usize,
    ) {
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(call) = self.queue.pop_front() else {
                return;
            };
            if call.reply.is_closed() {
                continue;
            }
            let id = self.take_request_id();
            let frame = ClientFrame::new(id, call.request);
            let len = encoding::encoded_len(&frame);
            if len > max_frame_bytes {
                let _ = call.reply.send(Err(Error::RequestTooLarge {
                    len,
                    max: max_frame_bytes,
                }));
                continue;
            }
            // Fails only when the writer has stopped, which the select loop sees next.
            let _ = frames.send(frame);
            if let Some(watch) = call.watch {
                self.watches.open(id, watch);
            }
            self.in_flight.push_back(Pending {
                id,
                reply: Some(call.reply),
                deadline: deadline::after(Instant::now(), self.config.request_timeout),
                instances: Vec::new(),
            });
        }
    }

    /// Handles one frame from the server; true when it completed a request.
    fn on_frame(&mut self, frame: ServerFrame, closing: &mut Option<String>) -> bool {
        if frame.request_id == SERVER_REQUEST_ID {
            match frame.response {
                Response::Error { kind, message } => {
                    if kind == ErrorKind::ShuttingDown {
                        info!(%message, "discovery server shutting down");
                    } else {
                        warn!(?kind, %message, "discovery server error outside any request");
                    }
                    if kind.closes_connection() {
                        *closing = Some(format!("the server is closing it ({kind:?}: {message})"));
                    }
                }
                other => debug!(response = ?other, "ignoring frame outside any request"),
            }
            return false;
        }
        if self.watches.owns(frame.request_id) {
            let (watches, mut out) = self.outbox();
            let answered = watches.on_frame(frame.request_id, frame.response, &mut out);
            if answered {
                self.answered();
            }
            return answered;
        }
        // Answers come in the order of the requests, so this is the front in practice.
        let Some(position) = self
            .in_flight
            .iter()
            .position(|request| request.id == frame.request_id)
        else {
            debug!(
                request_id = frame.request_id,
                "ignoring answer to no pending request"
            );
            return false;
        };
        match frame.response {
            Response::Instances {
                instances,
                more: true,
            } => {
                let request = &mut self.in_flight[position];
                request.instances.extend(instances);
                request.deadline = deadline::after(Instant::now(), self.config.request_timeout);
                false
            }
            Response::Instances {
                instances,
                more: false,
            } => {
                let Some(mut request) = self.in_flight.remove(position) else {
                    return false;
                };
                let mut instances_so_far = std::mem::take(&mut request.instances);
                instances_so_far.extend(instances);
                let joined = Response::Instances {
                    instances: instances_so_far,
                    more: false,
                };
                request.finish(Ok(joined));
                self.answered();
                true
            }
            Response::Error { kind, message } => {
                if kind.closes_connection() {
                    *closing = Some(format!("the server is closing it ({kind:?}: {message})"));
                }
                if let Some(request) = self.in_flight.remove(position) {
                    request.finish(Err(Error::Rejected { kind, message }));
                }
                if closing.is_none() {
                    self.answered();
                }
                true
            }
            response => {
                if let Some(request) = self.in_flight.remove(position) {
                    request.finish(Ok(response));
                }
                self.answered();
                true
            }
        }
    }

    /// A request got an answer: the connection works, so the backoff starts again.
    fn answered(&mut self) {
        self.failures = 0;
        self.backoff.reset();
    }

    /// A frame that did not decode (a newer server's unknown answer, say). Its request
    /// fails and the connection goes on when its id could be read; otherwise nothing can be
    /// matched any more and the connection ends with the returned reason.
    fn on_undecodable(&mut self, error: discovery_proto::Error) -> Option<String> {
        if let Some(id) = error.request_id().filter(|id| self.watches.owns(*id)) {
            let (watches, mut out) = self.outbox();
            watches.on_undecodable(id, error.into(), &mut out);
            return None;
        }
        let position = error
            .request_id()
            .and_then(|id| self.in_flight.iter().position(|request| request.id == id));
        match position.and_then(|position| self.in_flight.remove(position)) {
            Some(request) => {
                request.finish(Err(error.into()));
                None
            }
            None => Some(format!("undecodable frame from the server: {error}")),
        }
    }
}

/// The connection task's way of saying every handle is gone.
struct Stop;

/// The watch table's view of the worker's connection: its own requests are numbered,
/// written and timed like the callers'.
struct WireOutbox<'a> {
    link: Option<&'a Link>,
    in_flight: &'a mut VecDeque<Pending>,
    next_request_id: &'a mut RequestId,
    request_timeout: Duration,
}

impl Outbox for WireOutbox<'_> {
    fn send(&mut self, request: Request) -> Option<RequestId> {
        let link = self.link?;
        let id = *self.next_request_id;
        *self.next_request_id += 1;
        // Fails only when the writer has stopped, which the select loop sees next.
        let _ = link.frames.send(ClientFrame::new(id, request));
        self.in_flight.push_back(Pending {
            id,
            reply: None,
            deadline: deadline::after(Instant::now(), self.request_timeout),
            instances: Vec::new(),
        });
        Some(id)
    }

    fn answer(&mut self, id: RequestId, outcome: Outcome) {
        if let Some(position) = self.in_flight.iter().position(|request| request.id == id) {
            if let Some(request) = self.in_flight.remove(position) {
                request.finish(outcome);
            }
        }
    }

    fn touch(&mut self, id: RequestId) {
        if let Some(request) = self.in_flight.iter_mut().find(|request| request.id == id) {
            request.deadline = deadline::after(Instant::now(), self.request_timeout);
        }
    }
}

/// Writes frames as they come, flushing when no more are immediately waiting, so that a
/// burst of pipelined requests goes out in few writes.
async fn write_frames(
    mut writer: FramedWrite<OwnedWriteHalf, ClientCodec>,
    mut frames: mpsc::UnboundedReceiver<ClientFrame>,
) -> Result<(), discovery_proto::Error> {
    while let Some(frame) = frames.recv().await {
        writer.feed(frame).await?;
        while let Ok(frame) = frames.try_recv() {
            writer.feed(frame).await?;
        }
        SinkExt::<ClientFrame>::flush(&mut writer).await?;
    }
    Ok(())
}

/// One connection attempt: resolve, connect, `Hello`, `Welcome`, all within `limit`.
async fn attempt(
    address: ServerAddress,
    index: usize,
    hello_id: RequestId,
    client_name: String,
    limit: Duration,
) -> Result<Session, Error> {
    let connect_error = |source: io::Error| Error::Connect {
        address: address.clone(),
        source: Arc::new(source),
    };
    let handshake = async {
        let stream = connect_any(&address).await.map_err(connect_error)?;
        // Requests are small and latency matters more than packet count.
        stream.set_nodelay(true).map_err(connect_error)?;
        let peer = stream.peer_addr().map_err(connect_error)?;
        let (read_half, write_half) = stream.into_split();
        let mut reader = FramedRead::new(read_half, ClientCodec::default());
        let mut writer = FramedWrite::new(write_half, ClientCodec::default());
        let hello = Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name,
        };
        writer
            .send(ClientFrame::new(hello_id, hello))
            .await
            .map_err(|e| handshake_error(&address, e))?;
        let frame = match reader.next().await {
            None => {
                return Err(connect_error(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before its Welcome",
                )));
            }
            Some(Err(e) | Ok(Err(e))) => return Err(handshake_error(&address, e)),
            Some(Ok(Ok(frame))) => frame,
        };
        match frame.response {
            Response::Welcome {
                protocol_version,
                ttl,
                limits,
            } if frame.request_id == hello_id => {
                let info = ServerInfo {
                    address: address.clone(),
                    peer,
                    protocol_version,
                    ttl,
                    limits,
                };
                Ok(Session {
                    reader,
                    writer,
                    info,
                    index,
                })
            }
            Response::Error { kind, message } => Err(Error::Rejected { kind, message }),
            other => Err(Error::UnexpectedResponse {
                request: "Hello",
                response: format!("{other:?}"),
            }),
        }
    };
    match timeout(limit, handshake).await {
        Ok(result) => result,
        Err(_) => Err(connect_error(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no Welcome within {limit:?}"),
        ))),
    }
}

/// A failure while saying `Hello`: a broken socket is a failed connection attempt, anything
/// else a protocol error.
fn handshake_error(address: &ServerAddress, error: discovery_proto::Error) -> Error {
    match error {
        discovery_proto::Error::Io(source) => Error::Connect {
            address: address.clone(),
            source: Arc::new(source),
        },
        other => other.into(),
    }
}

/// Connects to the first address the name resolves to that accepts.
async fn connect_any(address: &ServerAddress) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in address.resolve().await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            // A name's addresses are named in the error; a socket address already is.
            Err(error) if address.socket_addr().is_some() => last = Some(error),
            Err(error) => last = Some(connect_context(addr, error)),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to try")))
}

fn connect_context(addr: SocketAddr, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{addr}: {error}"))
}
