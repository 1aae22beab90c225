//! The frames a client and a server exchange, and what they carry.
//!
//! Every type here derives serde's `Serialize` and `Deserialize` plainly: bincode encodes an
//! enum by the index of its variant, so new variants go at the end of an enum and no serde
//! attribute that skips, flattens or retags a field may be used (they corrupt bincode data).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Numbers a request so that its answer can be matched to it. Clients count from 1; the
/// server uses [`SERVER_REQUEST_ID`](crate::SERVER_REQUEST_ID) (0) outside any request.
pub type RequestId = u64;

/// Free-form key/value pairs an instance registers with (a version, a zone, a weight...).
/// Sorted by key, so that an instance always encodes to the same bytes.
pub type Metadata = BTreeMap<String, String>;

/// One request from a client, with the id its answer will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the client; echoed in every frame that answers this request.
    pub request_id: RequestId,
    /// What the client asks.
    pub request: Request,
}

impl ClientFrame {
    /// A frame carrying `request` under `request_id`.
    pub fn new(request_id: RequestId, request: Request) -> Self {
        Self {
            request_id,
            request,
        }
    }
}

/// One answer from the server, with the id of the request it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFrame {
    /// The id of the request answered, or 0 for a frame sent outside any request.
    pub request_id: RequestId,
    /// The answer.
    pub response: Response,
}

impl ServerFrame {
    /// A frame carrying `response` under `request_id`.
    pub fn new(request_id: RequestId, response: Response) -> Self {
        Self {
            request_id,
            response,
        }
    }
}

/// What a client can ask. New variants go at the end (see `docs/PROTOCOL.md` for the rule a
/// peer follows with a variant it does not know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The first frame of every connection: the server answers [`Response::Welcome`], or an
    /// error of kind [`ErrorKind::UnsupportedVersion`] and closes the connection.
    Hello {
        /// The [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) the client speaks.
        protocol_version: u16,
        /// A name for the server's logs (a program name, a host); may be empty.
        client_name: String,
    },
    /// Announce an instance. Answered by [`Response::Registered`] with a new id, or an error.
    /// Registering the same (`service_type`, `ip`, `port`) again replaces the older entry.
    Register {
        /// What the instance provides, such as `billing`.
        service_type: String,
        /// Where callers reach it.
        ip: IpAddr,
        /// Where callers reach it; 1 to 65535.
        port: u16,
        /// Free-form pairs shown to callers.
        metadata: Metadata,
        /// How long the instance stays live without a heartbeat; `None` for the server's
        /// TTL. Outside the bounds of [`Response::Welcome`] it is refused with
        /// [`ErrorKind::InvalidTtl`].
        ttl: Option<Duration>,
    },
    /// Keep an instance alive for another TTL (its own). Answered by [`Response::Ok`], or
    /// [`Response::NotFound`] when the id is unknown or expired: the instance must register
    /// again.
    Heartbeat {
        /// The id [`Response::Registered`] gave.
        id: Uuid,
        /// The revision of the client's last change (its register, or an update): a server
        /// that has not seen it yet waits for it a moment before it answers, so that a
        /// heartbeat sent to another server after a failover finds the instance.
        min_revision: Option<Revision>,
    },
    /// Remove an instance at once. Answered by [`Response::Done`] or [`Response::NotFound`].
    Deregister {
        /// The id [`Response::Registered`] gave.
        id: Uuid,
        /// As in `Heartbeat`.
        min_revision: Option<Revision>,
    },
    /// List the live instances of a type. Answered by one or more [`Response::Instances`].
    Query {
        /// The type to list.
        service_type: String,
        /// A revision the answer must include (the client's own last change, to read its
        /// own writes on another server): a server that has not seen it yet waits for it
        /// a moment before it answers.
        min_revision: Option<Revision>,
    },
    /// Check that the connection is alive. Answered by [`Response::Pong`].
    Ping,
    /// Subscribe to the changes of a type on this connection. Answered by
    /// [`Response::Snapshot`] frames (the instances now, with the type's revision), or, when
    /// `since` can be resumed, by [`Response::Resumed`] and the changes missed since then;
    /// after either, by [`Response::Added`], [`Response::Updated`] and
    /// [`Response::Removed`] pushes as changes happen. Every frame of the subscription
    /// carries this request's id, until `Unwatch`.
    Watch {
        /// The type to watch.
        service_type: String,
        /// The last revision the client has seen, from an earlier subscription: the server
        /// sends only what happened after it, or a snapshot marked `reset` when it cannot.
        since: Option<Revision>,
        /// As in `Query`: the snapshot includes this revision.
        min_revision: Option<Revision>,
    },
    /// End the subscription opened by the `Watch` request with this id. Answered by
    /// [`Response::Ok`], after which no frame of that subscription follows, or
    /// [`Response::NotFound`].
    Unwatch {
        /// The request id of the `Watch`.
        watch: RequestId,
    },
    /// List every type with live instances, and how many. Answered by one or more
    /// [`Response::Types`].
    ListTypes,
    /// Replace an instance's metadata, keeping its id and its liveness (an update is not a
    /// heartbeat). Answered by [`Response::Done`] or [`Response::NotFound`]; watchers of the
    /// type receive [`Response::Updated`].
    Update {
        /// The id [`Response::Registered`] gave.
        id: Uuid,
        /// The whole new metadata: pairs not in it are gone.
        metadata: Metadata,
        /// As in `Heartbeat`.
        min_revision: Option<Revision>,
    },
}

impl Request {
    /// The revision this request asks the server to have seen before it answers, if any.
    pub fn min_revision(&self) -> Option<Revision> {
        match self {
            Request::Heartbeat { min_revision, .. }
            | Request::Deregister { min_revision, .. }
            | Request::Query { min_revision, .. }
            | Request::Watch { min_revision, .. }
            | Request::Update { min_revision, .. } => *min_revision,
            Request::Hello { .. }
            | Request::Register { .. }
            | Request::Ping
            | Request::Unwatch { .. }
            | Request::ListTypes => None,
        }
    }
}

/// What a server answers. New variants go at the end (see `docs/PROTOCOL.md` for the rule a
/// peer follows with a variant it does not know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to `Hello`: what the server speaks, its TTLs and timeouts, and the limits
    /// it enforces, so that a client can check before it sends.
    Welcome {
        /// The [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) the server speaks.
        protocol_version: u16,
        /// How long an instance registered without a TTL of its own stays live after its
        /// register or its last heartbeat.
        ttl: Duration,
        /// The shortest TTL a `Register` may ask for.
        min_ttl: Duration,
        /// The longest TTL a `Register` may ask for.
        max_ttl: Duration,
        /// How long a connection may go without a frame from its client before the server
        /// closes it: a client that has nothing to send pings more often than this.
        idle_timeout: Duration,
        /// How long a client has to finish a frame once its first byte came.
        frame_timeout: Duration,
        /// The limits the server enforces.
        limits: Limits,
    },
    /// The answer to `Register`.
    Registered {
        /// The id the server made for the new instance, to heartbeat and deregister with.
        id: Uuid,
        /// The TTL granted: heartbeat well within it (the client library does every third
        /// of it).
        ttl: Duration,
        /// The revision of this change: a `min_revision` for reading one's own write on
        /// another server.
        revision: Revision,
    },
    /// The request succeeded and has nothing to say.
    Ok,
    /// The instance (or the watch, for `Unwatch`) is unknown or expired.
    NotFound {
        /// Why the id is gone, when the server still remembers (it does for a while after
        /// the removal); `None` when it does not know the id at all.
        reason: Option<RemoveReason>,
    },
    /// Part of the answer to `Query`. An answer too large for one frame comes as several
    /// frames with the same request id, `more` true on every one but the last.
    Instances {
        /// The type queried, said once for the instances of the frame.
        service_type: String,
        /// How old the answer may be, in milliseconds, when a server of a cluster answers
        /// from a catalogue it cannot confirm is current (only when its operator allows
        /// it); `None` for a current answer, which a single server always gives.
        stale_ms: Option<u64>,
        /// The live instances in this part.
        instances: Vec<Entry>,
        /// True when more frames of this answer follow.
        more: bool,
    },
    /// The answer to `Ping`.
    Pong,
    /// The request failed; the connection goes on unless the kind says otherwise.
    Error {
        /// What kind of failure, for programs.
        kind: ErrorKind,
        /// What went wrong, for people.
        message: String,
    },
    /// Part of the instances of a watched type, as of `revision`. Like `Instances`, it may
    /// span several frames, `more` true on all but the last. `reset` is false for the first
    /// snapshot of a `Watch` without `since`, and true when the client's view must be
    /// replaced: its `since` could not be resumed, or it fell too far behind the changes.
    Snapshot {
        /// The type's revision this snapshot is as of; changes after it follow.
        revision: Revision,
        /// True when this snapshot replaces what the client knew rather than starting it.
        reset: bool,
        /// The live instances in this part, of the watched type.
        instances: Vec<Entry>,
        /// True when more frames of this snapshot follow.
        more: bool,
    },
    /// The answer to a `Watch` whose `since` could be resumed: the changes after `since`
    /// follow, then live changes, with no snapshot.
    Resumed {
        /// The `since` of the request.
        revision: Revision,
    },
    /// An instance of the watched type appeared.
    Added {
        /// The type's revision after this change.
        revision: Revision,
        /// The new instance.
        instance: Instance,
    },
    /// An instance of the watched type is gone.
    Removed {
        /// The type's revision after this change.
        revision: Revision,
        /// The instance as it was last.
        instance: Instance,
        /// Why it is gone.
        reason: RemoveReason,
    },
    /// Part of the answer to `ListTypes`, sorted by type; split into frames like
    /// `Instances`.
    Types {
        /// The types in this part, each with its live instance count.
        types: Vec<TypeCount>,
        /// True when more frames of this answer follow.
        more: bool,
    },
    /// An instance of the watched type changed its metadata in place: same id, same
    /// endpoint, same liveness.
    Updated {
        /// The type's revision after this change.
        revision: Revision,
        /// The whole instance after the change.
        instance: Instance,
    },
    /// The answer to `Update` and `Deregister`: the change is made.
    Done {
        /// The revision of this change, as in `Registered`.
        revision: Revision,
    },
    /// A rate limit refused the request: nothing changed; the same request may succeed
    /// after the delay.
    Throttled {
        /// How long to wait before sending it again, in milliseconds.
        retry_after_ms: u64,
    },
}

/// A point in the history of a type's instances, as a watch sees it.
///
/// Revisions of one server run are ordered and never reused, even across types; the
/// `incarnation`, chosen at random when the server starts, tells a revision from an earlier
/// run, which the server answers with a reset snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Revision {
    /// The server run that made this revision.
    pub incarnation: u64,
    /// The change count within that run.
    pub seq: u64,
}

impl std::fmt::Display for Revision {
    /// `incarnation-seq`, the incarnation in 16 hex digits: the text form scripts store.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{}", self.incarnation, self.seq)
    }
}

impl std::str::FromStr for Revision {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("{text:?} is not a revision (INCARNATION-SEQ, e.g. 00c0ffee00c0ffee-42)");
        let (incarnation, seq) = text.split_once('-').ok_or_else(bad)?;
        Ok(Revision {
            incarnation: u64::from_str_radix(incarnation, 16).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// Why an instance left a watched type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RemoveReason {
    /// Its owner deregistered it.
    Deregistered,
    /// Its TTL passed without a heartbeat.
    Expired,
    /// A register of the same (type, ip, port) replaced it; an `Added` of the new id follows.
    Replaced,
}

/// The kinds of [`Response::Error`]. New kinds go at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The client's protocol version is not spoken here; the connection is closed.
    UnsupportedVersion,
    /// The first frame was not `Hello`; the connection is closed.
    HelloRequired,
    /// A second `Hello` on a connection that already had one.
    UnexpectedHello,
    /// The frame did not decode as a request; the connection goes on.
    MalformedFrame,
    /// The service type is empty, too long or has control characters.
    InvalidServiceType,
    /// The ip is not an address a caller can connect to (unspecified, multicast, broadcast).
    InvalidAddress,
    /// The port is 0.
    InvalidPort,
    /// The metadata has too many pairs, or a key or value that is too long.
    InvalidMetadata,
    /// The server holds as many instances as it may.
    InstanceLimit,
    /// The type holds as many instances as it may.
    TypeLimit,
    /// The server has as many connections as it may; the connection is closed.
    TooManyConnections,
    /// The server is shutting down; the connection is closed.
    ShuttingDown,
    /// The request was understood but the server failed to carry it out.
    Internal,
    /// The connection has as many open watches as it may.
    WatchLimit,
    /// A `Watch` reused the request id of a watch still open on the connection.
    DuplicateWatch,
    /// A `Register` asked for a TTL outside the bounds of [`Response::Welcome`].
    InvalidTtl,
    /// The server cannot serve this request now (a server of a cluster cut off from its
    /// store): try the next server, and keep the registration, its id and its heartbeats;
    /// never register again because of it. A single server never answers it.
    Unavailable,
    /// The server has change feeds for as many watched types as it may.
    WatchedTypeLimit,
    /// The server holds as many bytes of watch feeds and queues as it may.
    WatchBytesLimit,
    /// The server holds as many bytes of instances and metadata as it may.
    RegistryBytesLimit,
    /// The server has as many connections from this peer as it may; the connection is
    /// closed.
    PeerConnectionLimit,
}

impl ErrorKind {
    /// True when the server closes the connection after sending this error.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorKind::UnsupportedVersion
                | ErrorKind::HelloRequired
                | ErrorKind::TooManyConnections
                | ErrorKind::ShuttingDown
                | ErrorKind::PeerConnectionLimit
        )
    }
}

/// The limits a server enforces, announced in [`Response::Welcome`].
///
/// The bounds that are `Option` are off (`None`) unless the server's operator set them, or
/// until the server enforces them; every other one is always in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest frame payload the server accepts or sends, in bytes.
    pub max_frame_bytes: u32,
    /// The most live instances the server holds in total.
    pub max_instances: u64,
    /// The most live instances of one type.
    pub max_instances_per_type: u64,
    /// The longest service type, in bytes.
    pub max_type_bytes: u32,
    /// The most metadata pairs of one instance.
    pub max_metadata_pairs: u32,
    /// The longest metadata key, in bytes.
    pub max_metadata_key_bytes: u32,
    /// The longest metadata value, in bytes.
    pub max_metadata_value_bytes: u32,
    /// The most open connections to the server, from every client together.
    pub max_connections: u64,
    /// The most watches open at once on one connection.
    pub max_watches_per_connection: u32,
    /// The most connections from one peer (an IPv6 peer counted per /64).
    pub max_connections_per_peer: Option<u32>,
    /// The most types with a change feed at once, for every connection together.
    pub max_watched_types: Option<u64>,
    /// The most bytes of watch feeds, their histories and queues, together.
    pub max_watch_bytes: Option<u64>,
    /// The most bytes a connection holds for answers not yet written.
    pub max_answer_buffer_bytes: Option<u64>,
    /// The most bytes of instances and metadata the server holds.
    pub max_registry_bytes: Option<u64>,
    /// How long a write to a client may make no progress before the connection ends.
    pub write_timeout: Option<Duration>,
    /// The registers per second a connection may make in the long run.
    pub register_rate: Option<u32>,
    /// The registers a connection may make at once above that rate.
    pub register_burst: Option<u32>,
}

/// A live instance, as a query lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The id the server gave it when it registered.
    pub id: Uuid,
    /// What it provides.
    pub service_type: String,
    /// Where callers reach it.
    pub ip: IpAddr,
    /// Where callers reach it.
    pub port: u16,
    /// The pairs it registered with.
    pub metadata: Metadata,
    /// The wall-clock time of its register or last heartbeat, for people to read; on the
    /// wire, milliseconds since the Unix epoch (liveness itself runs on the server's
    /// monotonic clock, never on this).
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub last_heartbeat: DateTime<Utc>,
}

impl Instance {
    /// The instance an [`Entry`] of an answer about `service_type` stands for.
    pub fn from_entry(service_type: impl Into<String>, entry: Entry) -> Instance {
        let Entry {
            id,
            ip,
            port,
            metadata,
            last_heartbeat,
        } = entry;
        Instance {
            id,
            service_type: service_type.into(),
            ip,
            port,
            metadata,
            last_heartbeat,
        }
    }

    /// The instance as an [`Entry`], its type said elsewhere.
    pub fn into_entry(self) -> Entry {
        Entry {
            id: self.id,
            ip: self.ip,
            port: self.port,
            metadata: self.metadata,
            last_heartbeat: self.last_heartbeat,
        }
    }
}

/// An instance in an answer about one type (`Instances`, `Snapshot`): an [`Instance`]
/// without its type, which the frame says once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// See [`Instance::id`].
    pub id: Uuid,
    /// See [`Instance::ip`].
    pub ip: IpAddr,
    /// See [`Instance::port`].
    pub port: u16,
    /// See [`Instance::metadata`].
    pub metadata: Metadata,
    /// See [`Instance::last_heartbeat`].
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub last_heartbeat: DateTime<Utc>,
}

/// An entry borrowed from wherever a server keeps it, which encodes to exactly the bytes of
/// the [`Entry`] with the same fields: a server writes answers from its own storage with
/// it, without building an `Entry` per answer.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EntryRef<'a> {
    /// See [`Instance::id`].
    pub id: Uuid,
    /// See [`Instance::ip`].
    pub ip: IpAddr,
    /// See [`Instance::port`].
    pub port: u16,
    /// See [`Instance::metadata`].
    pub metadata: &'a Metadata,
    /// [`Instance::last_heartbeat`] as it travels: milliseconds since the Unix epoch.
    pub last_heartbeat_ms: i64,
}

/// A type and how many live instances it has, as `ListTypes` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCount {
    /// The type.
    pub service_type: String,
    /// Its live instances.
    pub instances: u64,
}
