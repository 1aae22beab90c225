//! [`ScriptServer`]: servers the test plays itself. Every connection a client dials to one
//! of its addresses is handed to the test as a [`Peer`], which reads the client's frames
//! and writes whatever frames (or bytes) the test chooses: answers no real server gives
//! (`Unavailable`, `Throttled`), frames of kinds the client does not know, or none at all.
//!
//! It needs nothing of the server crate.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use discovery_proto::codec::ServerCodec;
use discovery_proto::{
    ClientFrame, Entry, Limits, Metadata, PROTOCOL_VERSION, Request, Response, Revision,
    ServerFrame,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::config::ServerAddress;
use crate::dial::{Dial, Dialed};
use crate::testing::PEER;
use crate::{Client, ClientBuilder};

/// Servers at the addresses given, played by the test: [`ScriptServer::accept`] gives the
/// next connection a client made to one of them.
pub(crate) struct ScriptServer {
    dial: ScriptDial,
    /// The addresses, in the client's order.
    addresses: Vec<String>,
    accepted: HashMap<String, mpsc::UnboundedReceiver<Peer>>,
}

/// The client's side: opens pipes to the addresses, and hands the other end to the test.
#[derive(Clone)]
struct ScriptDial {
    inner: Arc<DialInner>,
}

struct DialInner {
    listeners: HashMap<String, mpsc::UnboundedSender<Peer>>,
    dials: AtomicUsize,
}

impl ScriptServer {
    /// Servers at each of `addresses` (any names), all up.
    pub(crate) fn new(addresses: &[&str]) -> Self {
        let mut listeners = HashMap::new();
        let mut accepted = HashMap::new();
        for address in addresses {
            let (sender, receiver) = mpsc::unbounded_channel();
            listeners.insert(key(address), sender);
            accepted.insert(key(address), receiver);
        }
        let inner = DialInner {
            listeners,
            dials: AtomicUsize::new(0),
        };
        Self {
            dial: ScriptDial {
                inner: Arc::new(inner),
            },
            addresses: addresses.iter().map(|address| key(address)).collect(),
            accepted,
        }
    }

    /// A client of these servers, in the order given to [`ScriptServer::new`], with
    /// `builder`'s other settings.
    pub(crate) fn client(&self, builder: ClientBuilder) -> Client {
        match builder
            .addresses(&self.addresses)
            .build_with(self.dial.clone())
        {
            Ok(client) => client,
            Err(error) => panic!("cannot build a scripted client: {error}"),
        }
    }

    /// The next connection a client made to `address`, waiting for one.
    pub(crate) async fn accept(&mut self, address: &str) -> Peer {
        let Some(accepted) = self.accepted.get_mut(&key(address)) else {
            panic!("no scripted server at {address}");
        };
        match accepted.recv().await {
            Some(peer) => peer,
            None => panic!("the scripted server at {address} is gone"),
        }
    }

    /// The next connection a client made to any of the addresses, waiting for one.
    pub(crate) async fn accept_any(&mut self) -> Peer {
        std::future::poll_fn(|cx| {
            for accepted in self.accepted.values_mut() {
                if let std::task::Poll::Ready(Some(peer)) = accepted.poll_recv(cx) {
                    return std::task::Poll::Ready(peer);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The next connection to `address`, greeted with a `Welcome` announcing `ttl`.
    pub(crate) async fn accept_welcomed(&mut self, address: &str, ttl: Duration) -> Peer {
        let mut peer = self.accept(address).await;
        peer.welcome(ttl).await;
        peer
    }

    /// How many times clients dialled, to any address.
    pub(crate) fn dials(&self) -> usize {
        self.dial.inner.dials.load(Ordering::SeqCst)
    }
}

/// How an address name is known: as the client writes it (`a` is `a:7777`).
fn key(name: &str) -> String {
    ServerAddress::from(name).to_string()
}

impl Dial for ScriptDial {
    type Stream = DuplexStream;

    async fn dial(&self, address: &ServerAddress) -> io::Result<Dialed<DuplexStream>> {
        self.inner.dials.fetch_add(1, Ordering::SeqCst);
        let name = address.to_string();
        let Some(listener) = self.inner.listeners.get(&name) else {
            return Err(io::ErrorKind::ConnectionRefused.into());
        };
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let peer = Peer {
            address: name,
            framed: Framed::new(server_end, ServerCodec::default()),
        };
        if listener.send(peer).is_err() {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        Ok(Dialed {
            stream: client_end,
            peer: PEER,
        })
    }
}

/// One connection a client made, from the server's side.
pub(crate) struct Peer {
    /// The address the client dialled.
    pub(crate) address: String,
    framed: Framed<DuplexStream, ServerCodec>,
}

impl Peer {
    /// The next frame from the client; `None` when the connection ended.
    ///
    /// # Panics
    ///
    /// When a frame does not decode: the client must never send one.
    pub(crate) async fn try_recv(&mut self) -> Option<ClientFrame> {
        match self.framed.next().await {
            None | Some(Err(_)) => None,
            Some(Ok(Ok(frame))) => Some(frame),
            Some(Ok(Err(error))) => panic!("the client sent a frame that does not decode: {error}"),
        }
    }

    /// The next frame from the client.
    ///
    /// # Panics
    ///
    /// When the connection ends first.
    pub(crate) async fn recv(&mut self) -> ClientFrame {
        match self.try_recv().await {
            Some(frame) => frame,
            None => panic!("the client closed its connection to {}", self.address),
        }
    }

    /// Sends `response` under `request_id`.
    pub(crate) async fn send(&mut self, request_id: u64, response: Response) {
        let frame = ServerFrame::new(request_id, response);
        if let Err(error) = self.framed.send(frame).await {
            panic!("cannot write to the client: {error}");
        }
    }

    /// Writes one frame of `payload`, whatever it holds, after its length.
    pub(crate) async fn send_raw(&mut self, payload: &[u8]) {
        let mut bytes = u32::try_from(payload.len())
            .expect("a short payload")
            .to_be_bytes()
            .to_vec();
        bytes.extend_from_slice(payload);
        let stream = self.framed.get_mut();
        if let Err(error) = stream.write_all(&bytes).await {
            panic!("cannot write to the client: {error}");
        }
    }

    /// Reads the client's `Hello` and answers a `Welcome` announcing `ttl` (and bounds of
    /// a second to an hour, and the default limits).
    pub(crate) async fn welcome(&mut self, ttl: Duration) {
        let hello = self.recv().await;
        let Request::Hello {
            protocol_version, ..
        } = hello.request
        else {
            panic!("the first frame is not Hello: {hello:?}");
        };
        assert_eq!(protocol_version, PROTOCOL_VERSION);
        let welcome = Response::Welcome {
            protocol_version: PROTOCOL_VERSION,
            ttl,
            min_ttl: Duration::from_secs(1).min(ttl),
            max_ttl: Duration::from_secs(3600).max(ttl),
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(10),
            limits: limits(),
        };
        self.send(hello.request_id, welcome).await;
    }

    /// Answers every request with what `answer` returns for it (nothing: left unanswered),
    /// on a task of its own, until the client closes the connection; every request is
    /// recorded in the returned log with the (virtual) time it came.
    pub(crate) fn serve(
        mut self,
        mut answer: impl FnMut(&ClientFrame) -> Vec<Response> + Send + 'static,
    ) -> Log {
        let log = Log::default();
        let record = log.clone();
        tokio::spawn(async move {
            while let Some(frame) = self.try_recv().await {
                let responses = answer(&frame);
                record.push(frame.clone());
                for response in responses {
                    self.send(frame.request_id, response).await;
                }
            }
            record.close();
        });
        log
    }
}

/// The requests a served [`Peer`] received, with when each came.
#[derive(Clone, Default)]
pub(crate) struct Log {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Default)]
struct LogInner {
    frames: Vec<(Instant, ClientFrame)>,
    closed: bool,
}

impl Log {
    fn push(&self, frame: ClientFrame) {
        self.lock().frames.push((Instant::now(), frame));
    }

    fn close(&self) {
        self.lock().closed = true;
    }

    /// The requests so far, with when each came.
    pub(crate) fn frames(&self) -> Vec<(Instant, ClientFrame)> {
        self.lock().frames.clone()
    }

    /// The requests so far for which `pick` is true, with when each came.
    pub(crate) fn matching(&self, pick: impl Fn(&Request) -> bool) -> Vec<(Instant, Request)> {
        self.lock()
            .frames
            .iter()
            .filter(|(_, frame)| pick(&frame.request))
            .map(|(at, frame)| (*at, frame.request.clone()))
            .collect()
    }

    /// True once the client closed the connection.
    pub(crate) fn closed(&self) -> bool {
        self.lock().closed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The limits a default server announces.
pub(crate) fn limits() -> Limits {
    Limits {
        max_frame_bytes: 65_536,
        max_instances: 1_000_000,
        max_instances_per_type: 100_000,
        max_type_bytes: 255,
        max_metadata_pairs: 64,
        max_metadata_key_bytes: 128,
        max_metadata_value_bytes: 512,
        max_connections: 10_000,
        max_watches_per_connection: 64,
        max_connections_per_peer: None,
        max_watched_types: None,
        max_watch_bytes: None,
        max_answer_buffer_bytes: None,
        max_registry_bytes: None,
        write_timeout: None,
        register_rate: None,
        register_burst: None,
    }
}

/// Revision `seq` of the scripted servers' one run.
pub(crate) fn revision(seq: u64) -> Revision {
    Revision {
        incarnation: 0xc0ffee,
        seq,
    }
}

/// Metadata of `pairs`.
pub(crate) fn metadata(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// An entry of a list answer: a new id at 127.0.0.1:`port` with `pairs`.
pub(crate) fn entry(port: u16, pairs: &[(&str, &str)]) -> Entry {
    Entry {
        id: uuid::Uuid::new_v4(),
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        port,
        metadata: metadata(pairs),
        last_heartbeat: Default::default(),
    }
}
