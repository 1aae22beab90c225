//! One client connection of the binary protocol: the stream, its buffers, and the loop
//! that reads requests and writes answers.
//!
//! The loop owns the reading itself instead of using `Framed`, because two limits need to
//! know what `Framed` hides: the idle timeout runs while no byte of a frame has come, and the
//! frame timeout from the first byte of a frame until its last. Framing and decoding are
//! still the protocol crate's codec, applied to our buffer.
//!
//! Pipelining falls out of the buffers: every complete frame already read is answered into
//! the write buffer, and the write buffer is flushed once, when no complete frame is left.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use discovery_proto::codec::ServerCodec;
use discovery_proto::encoding::ListWriter;
use discovery_proto::{
    ClientFrame, Entry, ErrorKind, RequestId, Response, SERVER_REQUEST_ID, ServerFrame,
};
use discovery_registry::{
    Change, ChangeEvent, Lagged, Members, Registry, Subscription, WatchStart,
};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tokio_stream::{StreamExt, StreamMap};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::handler::{self, Answer};
use crate::Error;
use crate::frontend::{self, Context};
use crate::throttle::{self, TokenBucket};

/// A buffer whose capacity grew past this for a large answer is given back after it, so
/// that an idle connection holds no more than an ordinary answer's worth.
const KEEP_CAPACITY: usize = 2 * (discovery_proto::MAX_FRAME_BYTES + 4);

/// How much is read from the socket at a time, at least.
const READ_CHUNK: usize = 8 * 1024;

/// A client connection and its buffers.
///
/// Generic over the byte stream: the server gives it a TCP socket (or a TLS stream over
/// one), tests and fuzz targets an in-memory pipe (`tokio::io::duplex`).
pub struct Connection<S> {
    stream: S,
    peer: SocketAddr,
    codec: ServerCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Where multi-frame answers are written before they join `write_buf`; kept to reuse
    /// its allocation.
    scratch: Vec<u8>,
    /// When the first byte of the frame now in `read_buf` came, if one has started.
    frame_started: Option<Instant>,
    /// When the last complete frame came (or the connection opened).
    last_frame: Instant,
    /// When the last bytes were read.
    last_read: Instant,
    idle_timeout: Duration,
    frame_timeout: Duration,
    write_timeout: Duration,
    /// The register rate limit of this connection, when there is one.
    registers: Option<TokenBucket>,
    /// The open watches, by the request id of their `Watch`.
    watches: StreamMap<RequestId, Subscription>,
    max_watches: usize,
    /// How many bytes of answers are gathered before they are written out, even in the
    /// middle of a list answer or with more pipelined requests waiting: an eighth of
    /// `--max-answer-buffer-bytes`, so that the buffers' capacities (what waits to be
    /// written, the whole frames of a list answer moved to it, the frame being filled)
    /// stay under the bound together.
    flush_at: usize,
}

/// What waiting for more bytes ended with.
enum Fill {
    /// Bytes were read.
    Data,
    /// The client closed the connection between frames.
    Closed,
    /// No frame came for the idle timeout.
    Idle,
    /// A frame was started but not finished within the frame timeout.
    Stalled,
    /// The server is shutting down.
    Shutdown,
    /// A watch of this connection has a change to send, or fell behind its queue.
    Change(RequestId, Result<Arc<Change>, Lagged>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps an accepted stream; `peer` names it in the logs.
    pub fn new(stream: S, peer: SocketAddr, context: &Context) -> Self {
        let config = &context.config;
        Self {
            stream,
            peer,
            codec: ServerCodec::new(context.max_frame_bytes()),
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(READ_CHUNK),
            scratch: Vec::new(),
            frame_started: None,
            last_frame: Instant::now(),
            last_read: Instant::now(),
            idle_timeout: config.idle_timeout,
            frame_timeout: config.frame_timeout,
            write_timeout: config.write_timeout,
            registers: config
                .register_bucket()
                .map(|(rate, burst)| TokenBucket::new(rate, burst)),
            watches: StreamMap::new(),
            max_watches: config.max_watches_per_connection,
            flush_at: config.max_answer_buffer_bytes / 8,
        }
    }

    /// Serves the connection until the client leaves, breaks a rule that ends it, or the
    /// server shuts down. Requests already read when shutdown begins are still answered.
    pub async fn run(
        mut self,
        context: &Context,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let registry = &context.registry;
        let max_frame_bytes = self.codec.max_frame_bytes();
        let mut greeted = false;
        loop {
            // Answer every complete frame already buffered before touching the socket.
            while let Some(item) = self.next_buffered()? {
                let (request_id, answer) = match item {
                    Ok(ClientFrame {
                        request_id,
                        request,
                    }) if greeted => {
                        if let Some(min) = request.min_revision()
                            && !registry.reached(min, Duration::ZERO).await
                        {
                            // Answers already made go out before the wait, and the wait
                            // is bounded; what it ends with, the answer is made from what
                            // this server has (a single server is the whole truth).
                            self.flush().await?;
                            registry.reached(min, frontend::MIN_REVISION_WAIT).await;
                        }
                        let answer = match self.throttle(&request) {
                            Some(throttled) => Answer::Response(throttled),
                            None => handler::handle(registry, request),
                        };
                        (request_id, answer)
                    }
                    Ok(ClientFrame {
                        request_id,
                        request,
                    }) => (request_id, handler::hello(context, &request)),
                    Err(e) if greeted => {
                        let request_id = e.request_id().unwrap_or(SERVER_REQUEST_ID);
                        let answer = handler::error(ErrorKind::MalformedFrame, e.to_string());
                        (request_id, Answer::Response(answer))
                    }
                    Err(e) => {
                        debug!(peer = %self.peer, error = %e, "first frame did not decode");
                        let request_id = e.request_id().unwrap_or(SERVER_REQUEST_ID);
                        (request_id, Answer::Close(handler::hello_required()))
                    }
                };
                greeted = true;
                if !self
                    .answer(registry, request_id, answer, max_frame_bytes)
                    .await?
                {
                    return self.close().await;
                }
                // A read can hold thousands of small queries with large answers: write out
                // what has piled up rather than hold it all, so a connection's memory stays
                // bounded whatever it pipelines.
                self.flush_if_full().await?;
            }
            // While changes are ready, send them with this flush rather than one by one (up
            // to the same bound: the rest wait in their queues, which are bounded too).
            while self.write_buf.len() < self.flush_at {
                let Some(Some((id, change))) = self.watches.next().now_or_never() else {
                    break;
                };
                self.change(registry, id, change, max_frame_bytes).await?;
            }
            self.flush().await?;
            self.give_back();
            match self.fill(shutdown).await? {
                Fill::Data => {}
                Fill::Closed => return Ok(()),
                Fill::Idle => {
                    debug!(peer = %self.peer, "closing idle connection");
                    return Ok(());
                }
                Fill::Stalled => {
                    debug!(peer = %self.peer, "closing connection stalled mid-frame");
                    return Ok(());
                }
                Fill::Change(id, change) => {
                    self.change(registry, id, change, max_frame_bytes).await?;
                }
                Fill::Shutdown => {
                    let bye =
                        handler::error(ErrorKind::ShuttingDown, "the server is shutting down");
                    self.push(&ServerFrame::new(SERVER_REQUEST_ID, bye))?;
                    return self.close().await;
                }
            }
        }
    }

    /// Encodes an answer into the write buffer, writing out what it gathers as it goes
    /// once it holds more than the flush threshold; false when the connection must close
    /// after it.
    async fn answer(
        &mut self,
        registry: &Registry,
        request_id: RequestId,
        answer: Answer,
        max_frame_bytes: usize,
    ) -> Result<bool, Error> {
        match answer {
            Answer::Response(response) => {
                self.push(&ServerFrame::new(request_id, response))?;
                Ok(true)
            }
            Answer::Close(response) => {
                self.push(&ServerFrame::new(request_id, response))?;
                Ok(false)
            }
            Answer::Query(service_type) => {
                let members = registry.members(&service_type);
                let envelope = |instances, more| Response::Instances {
                    service_type: service_type.clone(),
                    stale_ms: None,
                    instances,
                    more,
                };
                self.stream_members(registry, request_id, members, max_frame_bytes, envelope)
                    .await?;
                Ok(true)
            }
            Answer::Types => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                let mut writer =
                    ListWriter::new(&mut scratch, request_id, max_frame_bytes, |types, more| {
                        Response::Types { types, more }
                    })?;
                for (service_type, instances) in registry.types() {
                    // Encodes as a `TypeCount`; a type is far shorter than a frame.
                    let count = u64::try_from(instances).unwrap_or(u64::MAX);
                    writer.push(&(service_type.as_str(), count))?;
                    if writer.complete_len() >= self.flush_at {
                        self.write_buf
                            .extend_from_slice(writer.drain_complete().as_slice());
                        self.flush().await?;
                    }
                }
                writer.finish();
                self.write_buf.extend_from_slice(&scratch);
                self.scratch = kept(scratch);
                Ok(true)
            }
            Answer::Watch {
                service_type,
                since,
            } => {
                // The connection's own caps before subscribing: a refused watch must cost
                // the registry nothing. An invalid type is told so first.
                let refusal = if let Err(e) = registry.check_service_type(&service_type) {
                    Some(handler::refusal(&e))
                } else if self.watches.contains_key(&request_id) {
                    Some(handler::error(
                        ErrorKind::DuplicateWatch,
                        format!("watch {request_id} is already open on this connection"),
                    ))
                } else if self.watches.len() >= self.max_watches {
                    Some(handler::error(
                        ErrorKind::WatchLimit,
                        format!(
                            "this connection has its maximum of {} open watches",
                            self.max_watches
                        ),
                    ))
                } else {
                    None
                };
                let subscription = match refusal {
                    Some(refusal) => Err(refusal),
                    None => registry
                        .watch(&service_type, since)
                        .map_err(|e| handler::refusal(&e)),
                };
                match subscription {
                    Err(refusal) => self.push(&ServerFrame::new(request_id, refusal))?,
                    Ok(subscription) => {
                        self.open_watch(registry, request_id, subscription, max_frame_bytes)
                            .await?
                    }
                }
                Ok(true)
            }
            Answer::Unwatch(watch) => {
                let response = match self.watches.remove(&watch) {
                    Some(_) => Response::Ok,
                    None => Response::NotFound { reason: None },
                };
                self.push(&ServerFrame::new(request_id, response))?;
                Ok(true)
            }
        }
    }

    /// Sends how a watch starts (a snapshot, or the changes it missed) and keeps it open.
    async fn open_watch(
        &mut self,
        registry: &Registry,
        request_id: RequestId,
        mut subscription: Subscription,
        max_frame_bytes: usize,
    ) -> Result<(), Error> {
        match subscription.take_start() {
            Some(WatchStart::Snapshot {
                revision,
                members,
                reset,
            }) => {
                let envelope = |instances, more| Response::Snapshot {
                    revision,
                    reset,
                    instances,
                    more,
                };
                self.stream_members(registry, request_id, members, max_frame_bytes, envelope)
                    .await?;
            }
            Some(WatchStart::Resume { since, missed }) => {
                self.push(&ServerFrame::new(
                    request_id,
                    Response::Resumed { revision: since },
                ))?;
                for change in missed {
                    self.push(&change_frame(request_id, &change))?;
                    self.flush_if_full().await?;
                }
            }
            None => {}
        }
        self.watches.insert(request_id, subscription);
        Ok(())
    }

    /// Writes a list of instances (a query's answer, a watch's snapshot) in frames built by
    /// `envelope`, reading the type's instances from `members` in batches (the lock is not
    /// held between them) and writing out the whole frames gathered each time they reach
    /// the flush threshold: however large the answer, the connection holds about twice
    /// that threshold, plus the 4 bytes per instance of `members`.
    async fn stream_members(
        &mut self,
        registry: &Registry,
        request_id: RequestId,
        mut members: Members,
        max_frame_bytes: usize,
        envelope: impl Fn(Vec<Entry>, bool) -> Response,
    ) -> Result<(), Error> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut writer = ListWriter::new(&mut scratch, request_id, max_frame_bytes, envelope)?;
        let flush_at = self.flush_at;
        let mut skipped = 0usize;
        loop {
            let more = registry.visit(&mut members, |entry| {
                // Registration refuses any instance too large for a frame, so this only
                // happens if that check and this one ever disagree.
                if writer.push(&entry).is_err() {
                    skipped += 1;
                }
                if writer.complete_len() >= flush_at {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            if writer.complete_len() >= flush_at {
                self.write_buf
                    .extend_from_slice(writer.drain_complete().as_slice());
                self.flush().await?;
            }
            if !more {
                break;
            }
        }
        writer.finish();
        self.write_buf.extend_from_slice(&scratch);
        self.scratch = kept(scratch);
        if skipped > 0 {
            warn!(
                skipped,
                request_id, "instances too large for a frame left out of a list answer"
            );
        }
        Ok(())
    }

    /// Writes out the gathered answers once they reach the flush threshold.
    async fn flush_if_full(&mut self) -> Result<(), Error> {
        if self.write_buf.len() >= self.flush_at {
            self.flush().await?;
        }
        Ok(())
    }

    /// Gives back the memory of a write buffer that grew for a large answer, once it is
    /// written out.
    fn give_back(&mut self) {
        if self.write_buf.is_empty() && self.write_buf.capacity() > KEEP_CAPACITY {
            self.write_buf = BytesMut::with_capacity(READ_CHUNK);
        }
    }

    /// Sends a change of an open watch; a watch that fell behind its queue is sent a reset
    /// snapshot instead of the changes it missed.
    async fn change(
        &mut self,
        registry: &Registry,
        id: RequestId,
        change: Result<Arc<Change>, Lagged>,
        max_frame_bytes: usize,
    ) -> Result<(), Error> {
        match change {
            Ok(change) => self.push(&change_frame(id, &change)),
            Err(Lagged { missed }) => {
                debug!(peer = %self.peer, watch = id, missed, "watcher fell behind; sending a reset");
                let Some(stale) = self.watches.remove(&id) else {
                    return Ok(());
                };
                let fresh = registry.resubscribe(&stale)?;
                drop(stale);
                self.open_watch(registry, id, fresh, max_frame_bytes).await
            }
        }
    }

    fn push(&mut self, frame: &ServerFrame) -> Result<(), Error> {
        Ok(self.codec.encode(frame, &mut self.write_buf)?)
    }

    /// The next complete frame in the read buffer, without reading the socket. An oversize
    /// length is an error that ends the connection.
    fn next_buffered(
        &mut self,
    ) -> Result<Option<Result<ClientFrame, discovery_proto::Error>>, Error> {
        let item = self.codec.decode(&mut self.read_buf)?;
        if item.is_some() {
            // The time of the read that completed the frame: one clock read per read, not
            // one per pipelined frame.
            let now = self.last_read;
            self.last_frame = now;
            // Bytes left over are the start of the next frame, which came with this read.
            self.frame_started = (!self.read_buf.is_empty()).then_some(now);
        }
        Ok(item)
    }

    /// `Throttled` when `request` is a register over this connection's rate; it then
    /// does not reach the registry. Every register the bucket lets through takes a token,
    /// whether the registry then takes it or not: each costs the server the same.
    fn throttle(&mut self, request: &discovery_proto::Request) -> Option<Response> {
        if !matches!(request, discovery_proto::Request::Register { .. }) {
            return None;
        }
        let wait = self.registers.as_mut()?.take().err()?;
        Some(Response::Throttled {
            retry_after_ms: throttle::retry_after_ms(wait),
        })
    }

    /// Writes out every buffered answer. A client that takes no byte of them for the write
    /// timeout is cut off, so that it cannot hold a connection open by not reading; one
    /// that keeps reading, however slowly, is never cut off by it.
    async fn flush(&mut self) -> Result<(), Error> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        frontend::write_all_progressing(&mut self.stream, &mut self.write_buf, self.write_timeout)
            .await?;
        Ok(())
    }

    /// Sends the last answers and closes, so that the client reads them
    /// ([`frontend::close_gracefully`]).
    async fn close(&mut self) -> Result<(), Error> {
        self.flush().await?;
        frontend::close_gracefully(&mut self.stream).await?;
        Ok(())
    }

    /// Waits for more bytes, the end of the stream, a timeout or shutdown, whichever is
    /// first. Cancel-safe: `read_buf` either took bytes or did not.
    async fn fill(&mut self, shutdown: &CancellationToken) -> Result<Fill, Error> {
        // A connection with an open watch is waiting for pushes, not idle.
        let deadline = match self.frame_started {
            Some(started) => frontend::deadline(started, self.frame_timeout),
            None if self.watches.is_empty() => {
                frontend::deadline(self.last_frame, self.idle_timeout)
            }
            None => None,
        };
        let timeout = frontend::sleep_until(deadline);
        self.read_buf.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Ok(Fill::Shutdown),
            read = self.stream.read_buf(&mut self.read_buf) => match read? {
                0 if self.read_buf.is_empty() && !self.codec.mid_frame() => Ok(Fill::Closed),
                0 => Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a frame",
                ))),
                _ => {
                    self.last_read = Instant::now();
                    self.frame_started.get_or_insert(self.last_read);
                    Ok(Fill::Data)
                }
            },
            Some((id, change)) = self.watches.next(), if !self.watches.is_empty() => {
                Ok(Fill::Change(id, change))
            }
            _ = timeout => Ok(if self.frame_started.is_some() {
                Fill::Stalled
            } else {
                Fill::Idle
            }),
        }
    }
}

/// The frame that pushes a change to the watch opened by request `id`.
fn change_frame(id: RequestId, change: &Change) -> ServerFrame {
    let revision = change.revision;
    let response = match &change.event {
        ChangeEvent::Added(instance) => Response::Added {
            revision,
            instance: instance.clone(),
        },
        ChangeEvent::Removed(instance, reason) => Response::Removed {
            revision,
            instance: instance.clone(),
            reason: *reason,
        },
        ChangeEvent::Updated(instance) => Response::Updated {
            revision,
            instance: instance.clone(),
        },
    };
    ServerFrame::new(id, response)
}

/// `buffer` to keep for the next answer, or a new one if a large answer made it grow: the
/// memory of a large answer is given back after it.
fn kept(buffer: Vec<u8>) -> Vec<u8> {
    if buffer.capacity() > KEEP_CAPACITY {
        Vec::new()
    } else {
        buffer
    }
}

/// Refuses a connection with an error frame, then closes it.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    kind: ErrorKind,
    message: &str,
) {
    let mut codec = ServerCodec::default();
    let mut buf = BytesMut::new();
    let frame = ServerFrame::new(
        SERVER_REQUEST_ID,
        Response::Error {
            kind,
            message: message.to_owned(),
        },
    );
    if codec.encode(&frame, &mut buf).is_ok() {
        // A peer that does not take one small frame within a second is not waited for.
        let _ = timeout(frontend::LINGER, stream.write_all_buf(&mut buf)).await;
    }
    let _ = frontend::close_gracefully(stream).await;
}
