//! A [`Session`]: one connection to a server, from `Hello` to its end, over any byte stream.
//!
//! [`Session::connect`] dials, says `Hello` and waits for `Welcome`, all within one
//! attempt's time. [`Session::serve`] then carries calls until the connection ends: it
//! writes queued calls while the in-flight window has room (pipelining), routes every frame
//! either to the watch table (the frames of a watch carry its request id) or to the
//! requests in flight, times out the oldest request, and checks a silent connection that
//! carries watches with a `Ping`.
//!
//! The stream is split into a read half and a write half that make progress independently
//! inside one `select!`: a writer blocked on a full socket while the server is blocked
//! writing answers the worker does not read would deadlock both.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::codec::ClientCodec;
use discovery_proto::{
    ClientFrame, ErrorKind, PROTOCOL_VERSION, Request, RequestId, Response, SERVER_REQUEST_ID,
    ServerFrame, encoding,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, warn};

use crate::config::{MAX_IN_FLIGHT, ServerAddress, WATCH_KEEPALIVE};
use crate::deadline;
use crate::dial::{Dial, Dialed};
use crate::error::Error;
use crate::in_flight::{Frames, InFlight, Matched, closing_reason};
use crate::inbox::{Inbox, Input};
use crate::status::ServerInfo;
use crate::watches::{Outbox, WatchTable};

/// An established connection, after `Welcome`.
#[derive(Debug)]
pub(crate) struct Session<S> {
    reader: FramedRead<ReadHalf<S>, ClientCodec>,
    writer: FramedWrite<WriteHalf<S>, ClientCodec>,
    info: ServerInfo,
    /// Its position in the address list.
    index: usize,
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The connection ended; its requests have failed and its watches have been told.
    Lost {
        /// The position of its address in the list.
        index: usize,
        address: ServerAddress,
        reason: String,
        /// Some request was completed on it: the connection worked, at least for a while.
        answered: bool,
        /// Some answer was of the kind that proves the server serves (not a refusal that
        /// closes the connection): the backoff may start again.
        worked: bool,
    },
    /// Every handle is gone: nobody can call any more.
    Stop,
}

/// The per-connection state of a session being served, and the worker's state it borrows.
struct Serving<'w> {
    inbox: &'w mut Inbox,
    watches: &'w mut WatchTable,
    in_flight: &'w mut InFlight,
    frames: Frames,
    max_frame_bytes: usize,
    /// Set when the server said it is closing the connection: nothing more is written,
    /// and what is on the wire is read until the end.
    closing: Option<String>,
    answered: bool,
    worked: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    /// One connection attempt to address `index` of the list: dial, `Hello`, `Welcome`,
    /// all within `limit`.
    pub(crate) async fn connect<D: Dial<Stream = S>>(
        dial: &D,
        address: ServerAddress,
        index: usize,
        hello_id: RequestId,
        client_name: String,
        limit: Duration,
    ) -> Result<Self, Error> {
        let connect_error = |source: io::Error| Error::Connect {
            address: address.clone(),
            source: Arc::new(source),
        };
        let handshake = async {
            let Dialed { stream, peer } = dial.dial(&address).await.map_err(connect_error)?;
            let (read_half, write_half) = tokio::io::split(stream);
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

    /// What the server announced in its `Welcome`.
    pub(crate) fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Carries calls over the connection until it ends. Every open watch is subscribed
    /// again first, from the last revision its consumer was given, before any queued call.
    pub(crate) async fn serve(
        self,
        inbox: &mut Inbox,
        watches: &mut WatchTable,
        in_flight: &mut InFlight,
    ) -> Ended {
        let Session {
            mut reader,
            writer,
            info,
            index,
        } = self;
        info!(address = %info.address, peer = %info.peer, ttl = ?info.ttl, "connected to discovery server");
        let address = info.address;

        let (frames, to_write) = mpsc::unbounded_channel();
        let write_all = write_frames(writer, to_write);
        tokio::pin!(write_all);
        let mut serving = Serving {
            inbox,
            watches,
            in_flight,
            frames,
            max_frame_bytes: info.limits.max_frame_bytes as usize,
            closing: None,
            answered: false,
            worked: false,
        };
        {
            let mut out = serving.in_flight.outbox(Some(&serving.frames));
            serving.watches.subscribe_all(&mut out);
        }
        // When the last frame came, for the keepalive of connections that carry watches.
        let mut last_frame = Instant::now();

        let reason = loop {
            if serving.closing.is_none() {
                serving.write_queued();
            }
            let deadline = serving.in_flight.deadline();
            let keepalive = serving.watches.any_subscribed() && serving.in_flight.is_empty();
            let check_at = deadline::saturating_after(last_frame, WATCH_KEEPALIVE);
            let taking_controls = serving.closing.is_none();
            tokio::select! {
                frame = reader.next() => match frame {
                    None => {
                        break serving
                            .closing
                            .take()
                            .unwrap_or_else(|| "the server closed the connection".to_owned());
                    }
                    Some(Err(error)) => break format!("cannot read from the server: {error}"),
                    Some(Ok(Err(error))) => {
                        if let Some(reason) = serving.on_undecodable(error) {
                            break reason;
                        }
                    }
                    Some(Ok(Ok(frame))) => {
                        last_frame = Instant::now();
                        if serving.on_frame(frame) {
                            serving.answered = true;
                        }
                        if serving.in_flight.is_empty()
                            && let Some(reason) = serving.closing.take() {
                                // Nothing more to wait for on a connection the server is closing.
                                break reason;
                            }
                    }
                },
                written = &mut write_all => {
                    break match written {
                        Ok(()) => "the writer stopped".to_owned(),
                        Err(error) => format!("cannot write to the server: {error}"),
                    };
                }
                input = serving.inbox.recv(taking_controls) => match input {
                    Input::Call(call) => {
                        let mut out = serving.in_flight.outbox(Some(&serving.frames));
                        serving.inbox.take_call(call, serving.watches, &mut out);
                    }
                    Input::Control(control) => {
                        let mut out = serving.in_flight.outbox(Some(&serving.frames));
                        serving.watches.control(control, &mut out);
                    }
                    Input::Closed => return Ended::Stop,
                },
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let after = serving.in_flight.time_out_oldest();
                    break format!("the server did not answer within {after:?}");
                }
                () = sleep_until(check_at), if keepalive && serving.closing.is_none() => {
                    let mut out = serving.in_flight.outbox(Some(&serving.frames));
                    out.send(Request::Ping);
                    // Counts as activity, so that only one check is under way at a time.
                    last_frame = Instant::now();
                }
            }
        };

        if serving.in_flight.is_empty() {
            debug!(%address, %reason, "connection to discovery server ended");
        } else {
            warn!(%address, %reason, in_flight = serving.in_flight.len(), "connection to discovery server lost");
        }
        serving.in_flight.fail_all(&address, &reason);
        serving.watches.connection_lost(&reason);
        Ended::Lost {
            index,
            address,
            reason,
            answered: serving.answered,
            worked: serving.worked,
        }
    }
}

impl Serving<'_> {
    /// Writes queued calls while the in-flight window has room.
    fn write_queued(&mut self) {
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(call) = self.inbox.next_to_write() else {
                return;
            };
            let id = self.in_flight.take_id();
            let frame = ClientFrame::new(id, call.request);
            let len = encoding::encoded_len(&frame);
            if len > self.max_frame_bytes {
                let _ = call.reply.send(Err(Error::RequestTooLarge {
                    len,
                    max: self.max_frame_bytes,
                }));
                continue;
            }
            // Fails only when the writer has stopped, which the select loop sees next.
            let _ = self.frames.send(frame);
            if let Some(watch) = call.watch {
                self.watches.open(id, watch);
            }
            self.in_flight.push(id, Some(call.reply));
        }
    }

    /// Handles one frame from the server; true when it completed a request.
    fn on_frame(&mut self, frame: ServerFrame) -> bool {
        if frame.request_id == SERVER_REQUEST_ID {
            match frame.response {
                Response::Error { kind, message } => {
                    if kind == ErrorKind::ShuttingDown {
                        info!(%message, "discovery server shutting down");
                    } else {
                        warn!(?kind, %message, "discovery server error outside any request");
                    }
                    if kind.closes_connection() {
                        self.closing = Some(closing_reason(kind, &message));
                    }
                }
                other => debug!(response = ?other, "ignoring frame outside any request"),
            }
            return false;
        }
        if self.watches.owns(frame.request_id) {
            let mut out = self.in_flight.outbox(Some(&self.frames));
            let answered = self
                .watches
                .on_frame(frame.request_id, frame.response, &mut out);
            if answered {
                self.worked = true;
            }
            return answered;
        }
        match self.in_flight.on_response(frame.request_id, frame.response) {
            Matched::Unknown => {
                debug!(
                    request_id = frame.request_id,
                    "ignoring answer to no pending request"
                );
                false
            }
            Matched::Part => false,
            Matched::Answered => {
                self.worked = true;
                true
            }
            Matched::Refused { closing } => {
                if closing.is_some() {
                    self.closing = closing;
                }
                if self.closing.is_none() {
                    self.worked = true;
                }
                true
            }
        }
    }

    /// A frame that did not decode (a newer server's unknown answer, say). Its request
    /// fails and the connection goes on when its id could be read; otherwise nothing can be
    /// matched any more and the connection ends with the returned reason.
    fn on_undecodable(&mut self, error: discovery_proto::Error) -> Option<String> {
        match error.request_id() {
            Some(id) if self.watches.owns(id) => {
                let mut out = self.in_flight.outbox(Some(&self.frames));
                self.watches.on_undecodable(id, error.into(), &mut out);
                None
            }
            Some(id) => {
                let reason = format!("undecodable frame from the server: {error}");
                if self.in_flight.finish(id, Err(error.into())) {
                    None
                } else {
                    Some(reason)
                }
            }
            None => Some(format!("undecodable frame from the server: {error}")),
        }
    }
}

/// Writes frames as they come, flushing when no more are immediately waiting, so that a
/// burst of pipelined requests goes out in few writes.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: FramedWrite<W, ClientCodec>,
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

/// A failure while saying `Hello`: a broken stream is a failed connection attempt, anything
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
