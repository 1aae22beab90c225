//! A [`Session`]: one connection to a server, from `Hello` to its end, over any byte stream.
//!
//! [`Session::connect`] dials, says `Hello` and waits for `Welcome`, all within one
//! attempt's time. [`Session::serve`] then carries calls until the connection ends: it
//! writes queued calls while the in-flight window has room (pipelining), routes every frame
//! either to the watch table (the frames of a watch carry its request id) or to the
//! requests in flight, times out the oldest request, and checks a silent connection that
//! carries watches with a `Ping`.
//!
//! Two answers make it leave a server that is still up: a refusal that closes the
//! connection (`ShuttingDown`), and `Unavailable`, from a server of a cluster that cannot
//! serve now. Either way nothing more is written on the connection; what is on the wire is
//! read, then the session ends and the worker connects to the next address. The calls a
//! server answered `Unavailable` and may be repeated go back to the worker's queue.
//!
//! A frame that does not decode (a newer server's answer of a kind this client does not
//! know, say) fails the request whose id its first bytes give, or reopens the watch it
//! belongs to, and the connection goes on; only a frame without a readable id ends it.
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
use crate::in_flight::{Again, Frames, InFlight, Matched, closing_reason};
use crate::inbox::{Inbox, Input};
use crate::status::ServerInfo;
use crate::watches::{Outbox, WatchFrame, WatchTable};

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
                    min_ttl,
                    max_ttl,
                    idle_timeout,
                    frame_timeout,
                    limits,
                } if frame.request_id == hello_id => {
                    let info = ServerInfo {
                        address: address.clone(),
                        peer,
                        protocol_version,
                        ttl,
                        min_ttl,
                        max_ttl,
                        idle_timeout,
                        frame_timeout,
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

        in_flight.new_connection();
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
    /// Writes queued calls while the in-flight window has room, each stamped with the
    /// `min_revision` it carries on this connection.
    fn write_queued(&mut self) {
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(mut call) = self.inbox.next_to_write() else {
                return;
            };
            let id = self.in_flight.take_id();
            self.in_flight
                .stamp(&mut call.request, call.continuity.as_ref());
            let again = Again::of(&call);
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
            self.in_flight.push(id, Some(call.reply), again);
        }
    }

    /// Handles one frame from the server; true when it completed a request.
    fn on_frame(&mut self, frame: ServerFrame) -> bool {
        let completed = self.route(frame);
        // Calls the server could not serve wait for the next connection.
        let retries = self.in_flight.take_retries();
        if !retries.is_empty() {
            self.inbox.requeue(retries);
        }
        completed
    }

    /// Hands a frame to whatever it belongs to; true when it completed a request.
    fn route(&mut self, frame: ServerFrame) -> bool {
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
            return match self
                .watches
                .on_frame(frame.request_id, frame.response, &mut out)
            {
                WatchFrame::Pushed => false,
                WatchFrame::Answered => {
                    self.worked = true;
                    true
                }
                WatchFrame::Unavailable { message } => {
                    self.leave_unavailable(&message);
                    false
                }
            };
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
            Matched::Unavailable { message } => {
                self.leave_unavailable(&message);
                // Not an answer that proves the server serves: a round of servers that
                // all answer so is backed off like a round that cannot be reached.
                false
            }
        }
    }

    /// The server cannot serve now: write nothing more here, read what is on the wire,
    /// then move on to the next server.
    fn leave_unavailable(&mut self, message: &str) {
        if self.closing.is_none() {
            info!(%message, "discovery server cannot serve now; moving on to the next one");
            self.closing = Some(format!("the server cannot serve now ({message})"));
        }
    }

    /// A frame that did not decode (a newer server's answer of a kind this client does not
    /// know, say). When its id could be read, the request of that id fails with a protocol
    /// error (the watch of that id is opened again) and the connection goes on: the length
    /// prefix keeps the stream in step. Without an id, nothing can be matched any more and
    /// the connection ends with the returned reason.
    fn on_undecodable(&mut self, error: discovery_proto::Error) -> Option<String> {
        match error.request_id() {
            Some(id) if self.watches.owns(id) => {
                let mut out = self.in_flight.outbox(Some(&self.frames));
                self.watches.on_undecodable(id, error.into(), &mut out);
                None
            }
            Some(id) => {
                warn!(request_id = id, %error, "undecodable frame from the server; its request fails");
                if !self.in_flight.finish(id, Err(error.into())) {
                    debug!(
                        request_id = id,
                        "the undecodable frame answers no pending request"
                    );
                }
                None
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use discovery_proto::{ErrorKind, Instance, Request, Response, TypeCount};
    use tokio::time::Instant;

    use crate::testing::ScriptServer;
    use crate::testing::script::{entry, metadata, revision};
    use crate::{Client, Error, ServiceSpec, WatchEvent};

    const TTL: Duration = Duration::from_secs(5);

    fn unavailable() -> Response {
        Response::Error {
            kind: ErrorKind::Unavailable,
            message: "cut off from the store".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_answer_in_compact_parts_is_rebuilt_whole() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let query = tokio::spawn({
            let client = client.clone();
            async move { client.query("billing").await }
        });
        let mut peer = servers.accept_welcomed("a", TTL).await;
        let frame = peer.recv().await;
        assert_eq!(
            frame.request,
            Request::Query {
                service_type: "billing".into(),
                min_revision: None
            }
        );
        let (first, second) = (entry(8080, &[("version", "1")]), entry(8081, &[]));
        for (part, more) in [(first.clone(), true), (second.clone(), false)] {
            let answer = Response::Instances {
                service_type: "billing".into(),
                stale_ms: None,
                instances: vec![part],
                more,
            };
            peer.send(frame.request_id, answer).await;
        }
        let instances = query.await.unwrap().unwrap();
        assert_eq!(
            instances,
            [
                Instance::from_entry("billing", first),
                Instance::from_entry("billing", second)
            ]
        );
        assert_eq!(instances[0].service_type, "billing");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_carry_the_revision_of_the_clients_latest_write() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let peer = {
            let ping = tokio::spawn({
                let client = client.clone();
                async move { client.ping().await }
            });
            let mut peer = servers.accept_welcomed("a", TTL).await;
            let frame = peer.recv().await;
            peer.send(frame.request_id, Response::Pong).await;
            ping.await.unwrap().unwrap();
            peer
        };
        let id = uuid::Uuid::new_v4();
        let log = peer.serve(move |frame| match &frame.request {
            Request::Register { .. } => vec![Response::Registered {
                id,
                ttl: TTL,
                revision: revision(4),
            }],
            Request::Deregister { .. } => vec![Response::Done {
                revision: revision(6),
            }],
            Request::Query { service_type, .. } => vec![Response::Instances {
                service_type: service_type.clone(),
                stale_ms: None,
                instances: Vec::new(),
                more: false,
            }],
            Request::ListTypes => vec![
                Response::Types {
                    types: vec![TypeCount {
                        service_type: "a".into(),
                        instances: 1,
                    }],
                    more: true,
                },
                Response::Types {
                    types: vec![TypeCount {
                        service_type: "b".into(),
                        instances: 2,
                    }],
                    more: false,
                },
            ],
            _ => Vec::new(),
        });

        client.query("billing").await.unwrap();
        let spec = ServiceSpec::new("billing", "127.0.0.1:8080".parse().unwrap());
        let granted = client.register_once(&spec).await.unwrap();
        assert_eq!((granted.id, granted.revision), (id, revision(4)));
        client.query("billing").await.unwrap();
        let types = client.list_types().await.unwrap();
        let names: Vec<(&str, u64)> = types
            .iter()
            .map(|count| (count.service_type.as_str(), count.instances))
            .collect();
        assert_eq!(names, [("a", 1), ("b", 2)]);
        client.deregister(id).await.unwrap();
        client.query("billing").await.unwrap();

        let stamps: Vec<Option<_>> = log
            .frames()
            .into_iter()
            .filter(|(_, frame)| {
                matches!(
                    frame.request,
                    Request::Query { .. } | Request::Deregister { .. }
                )
            })
            .map(|(_, frame)| frame.request.min_revision())
            .collect();
        assert_eq!(
            stamps,
            [
                None,
                Some(revision(4)),
                Some(revision(4)),
                Some(revision(6))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecodable_answer_fails_its_request_and_the_connection_goes_on() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let query = tokio::spawn({
            let client = client.clone();
            async move { client.query("billing").await }
        });
        let mut peer = servers.accept_welcomed("a", TTL).await;
        let frame = peer.recv().await;
        // The request's id, then a variant no version of `Response` has.
        let id = u8::try_from(frame.request_id).unwrap();
        peer.send_raw(&[id, 200]).await;
        let error = query.await.unwrap().unwrap_err();
        assert!(matches!(error, Error::Protocol(_)), "{error:?}");

        let ping = tokio::spawn({
            let client = client.clone();
            async move { client.ping().await }
        });
        let frame = peer.recv().await;
        assert_eq!(frame.request, Request::Ping);
        peer.send(frame.request_id, Response::Pong).await;
        ping.await.unwrap().unwrap();
        assert_eq!(servers.dials(), 1, "on the same connection");
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_without_a_readable_id_ends_the_connection() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let ping = tokio::spawn({
            let client = client.clone();
            async move { client.ping().await }
        });
        let mut peer = servers.accept_welcomed("a", TTL).await;
        let frame = peer.recv().await;
        // 0xff starts no varint: nothing of the frame can be matched.
        peer.send_raw(&[0xff]).await;
        assert!(peer.try_recv().await.is_none(), "the client hung up");
        let error = ping.await.unwrap().unwrap_err();
        assert!(error.is_connection(), "{error:?}");
        drop(frame);

        let ping = tokio::spawn({
            let client = client.clone();
            async move { client.ping().await }
        });
        let mut peer = servers.accept_welcomed("a", TTL).await;
        let frame = peer.recv().await;
        peer.send(frame.request_id, Response::Pong).await;
        ping.await.unwrap().unwrap();
        assert_eq!(servers.dials(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecodable_frame_of_a_watch_reopens_it_from_its_last_revision() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let opening = tokio::spawn({
            let client = client.clone();
            async move { client.watch("billing").await }
        });
        let mut peer = servers.accept_welcomed("a", TTL).await;
        let watch = peer.recv().await;
        let present = entry(8080, &[]);
        let snapshot = Response::Snapshot {
            revision: revision(5),
            reset: false,
            instances: vec![present.clone()],
            more: false,
        };
        peer.send(watch.request_id, snapshot).await;
        let mut events = opening.await.unwrap().unwrap();
        match events.recv().await {
            Some(WatchEvent::Snapshot {
                revision: at,
                instances,
                reset: false,
            }) => {
                assert_eq!(at, revision(5));
                assert_eq!(instances, [Instance::from_entry("billing", present)]);
            }
            other => panic!("{other:?}"),
        }

        // A push of a kind this client does not know: the watch resumes from revision 5.
        peer.send_raw(&[u8::try_from(watch.request_id).unwrap(), 200])
            .await;
        let unwatch = peer.recv().await;
        assert_eq!(
            unwatch.request,
            Request::Unwatch {
                watch: watch.request_id
            }
        );
        peer.send(unwatch.request_id, Response::Ok).await;
        let again = peer.recv().await;
        let Request::Watch {
            since,
            service_type,
            ..
        } = &again.request
        else {
            panic!("{again:?}");
        };
        assert_eq!(
            (service_type.as_str(), *since),
            ("billing", Some(revision(5)))
        );
        peer.send(
            again.request_id,
            Response::Resumed {
                revision: revision(5),
            },
        )
        .await;
        assert_eq!(
            events.recv().await,
            Some(WatchEvent::Resumed {
                revision: revision(5)
            })
        );

        // The same frame again before any progress: resuming would bring it back once
        // more, so the watch starts afresh.
        peer.send_raw(&[u8::try_from(again.request_id).unwrap(), 200])
            .await;
        let unwatch = peer.recv().await;
        peer.send(unwatch.request_id, Response::Ok).await;
        let afresh = peer.recv().await;
        assert!(
            matches!(afresh.request, Request::Watch { since: None, .. }),
            "{afresh:?}"
        );
        let reset = Response::Snapshot {
            revision: revision(7),
            reset: false,
            instances: Vec::new(),
            more: false,
        };
        peer.send(afresh.request_id, reset).await;
        assert!(matches!(
            events.recv().await,
            Some(WatchEvent::Snapshot { reset: true, .. })
        ));
        assert_eq!(servers.dials(), 1, "all on one connection");
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_a_server_cannot_serve_is_asked_of_the_next_one() {
        let mut servers = ScriptServer::new(&["a", "b"]);
        let client = servers.client(Client::builder());
        let query = tokio::spawn({
            let client = client.clone();
            async move { client.query("billing").await }
        });
        let mut peer_a = servers.accept_welcomed("a", TTL).await;
        let frame = peer_a.recv().await;
        peer_a.send(frame.request_id, unavailable()).await;
        assert!(peer_a.try_recv().await.is_none(), "the client left a");

        let mut peer_b = servers.accept_welcomed("b", TTL).await;
        let frame = peer_b.recv().await;
        assert!(matches!(frame.request, Request::Query { .. }));
        let present = entry(8080, &[]);
        let answer = Response::Instances {
            service_type: "billing".into(),
            stale_ms: None,
            instances: vec![present.clone()],
            more: false,
        };
        peer_b.send(frame.request_id, answer).await;
        let instances = query.await.unwrap().unwrap();
        assert_eq!(instances, [Instance::from_entry("billing", present)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_a_server_cannot_serve_is_not_sent_again() {
        let mut servers = ScriptServer::new(&["a", "b"]);
        let client = servers.client(Client::builder());
        let update = tokio::spawn({
            let client = client.clone();
            async move {
                let id = uuid::Uuid::new_v4();
                client.update(id, metadata(&[("v", "2")])).await
            }
        });
        let mut peer_a = servers.accept_welcomed("a", TTL).await;
        let frame = peer_a.recv().await;
        assert!(matches!(frame.request, Request::Update { .. }));
        peer_a.send(frame.request_id, unavailable()).await;
        let error = update.await.unwrap().unwrap_err();
        assert!(error.is_unavailable(), "{error:?}");
        assert!(peer_a.try_recv().await.is_none(), "the client left a");

        // The next call goes to the next server; the update was not resent.
        let ping = tokio::spawn({
            let client = client.clone();
            async move { client.ping().await }
        });
        let mut peer_b = servers.accept_welcomed("b", TTL).await;
        let frame = peer_b.recv().await;
        assert_eq!(frame.request, Request::Ping);
        peer_b.send(frame.request_id, Response::Pong).await;
        ping.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_no_server_can_serve_fails_with_the_refusal_within_the_connect_timeout() {
        let mut servers = ScriptServer::new(&["a", "b"]);
        let timeout = Duration::from_secs(1);
        let client = servers.client(Client::builder().connect_timeout(timeout));
        let started = Instant::now();
        let query = tokio::spawn({
            let client = client.clone();
            async move { client.query("billing").await }
        });
        let refusing = tokio::spawn(async move {
            loop {
                let mut peer = servers.accept_any().await;
                peer.welcome(TTL).await;
                let _log = peer.serve(|_| vec![unavailable()]);
                if servers.dials() > 50 {
                    return servers.dials();
                }
            }
        });
        let error = query.await.unwrap().unwrap_err();
        assert!(error.is_unavailable(), "{error:?}");
        let took = started.elapsed();
        assert!(
            took >= timeout && took <= timeout + Duration::from_millis(10),
            "{took:?}"
        );
        // A round of servers that all refuse is backed off like one that cannot be
        // reached: a few attempts a second, not a busy loop.
        assert!(!refusing.is_finished(), "no busy loop");
        refusing.abort();
    }
}
