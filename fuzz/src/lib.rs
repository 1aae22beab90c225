//! What the fuzz targets and the seed generator share: how a target reads its input, and
//! real frames to start the corpora from.
//!
//! | item | for |
//! |---|---|
//! | [`Setup`] | the first byte of a `connection` input: how the rest is delivered |
//! | [`framed`], [`client_frame`] | a payload or a request as it travels, length first |
//! | [`sample_requests`], [`sample_responses`] | one or more of every message, for seeds |

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use discovery_proto::{
    ClientFrame, ErrorKind, Instance, Limits, PROTOCOL_VERSION, RemoveReason, Request, Response,
    Revision, ServerFrame, TypeCount, encoding,
};

/// The service type of the instance the `connection` target registers before the stream.
pub const KEPT_TYPE: &str = "kept";
/// The port of that instance, on 127.0.0.1.
pub const KEPT_PORT: u16 = 7000;

/// How the `connection` target delivers an input: read from its first byte, so that the
/// fuzzer explores each choice with the same bytes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Send a valid `Hello` before the input, so that the input reaches the handling of
    /// requests rather than stopping at the first-frame check (bit 0).
    pub hello: bool,
    /// The capacity of the in-memory pipe, in bytes: small ones deliver frames in pieces
    /// (bits 1-2: 1, 7, 64 or 8192).
    pub pipe_capacity: usize,
    /// Run the server with its smallest frame limit, 1024 bytes, instead of 64 KiB, so that
    /// query answers split into several frames and oversize frames are cheap (bit 3).
    pub small_frames: bool,
    /// Begin the server's shutdown once the whole input is written, so that the input
    /// also exercises the answers to what was read before it and the goodbye (bit 4).
    pub shut_down: bool,
}

const PIPE_CAPACITIES: [usize; 4] = [1, 7, 64, 8192];

impl Setup {
    /// Splits an input into its setup and the bytes to send.
    pub fn parse(data: &[u8]) -> (Setup, &[u8]) {
        let Some((&first, rest)) = data.split_first() else {
            return (Setup::from_byte(0), data);
        };
        (Setup::from_byte(first), rest)
    }

    fn from_byte(byte: u8) -> Setup {
        Setup {
            hello: byte & 1 != 0,
            pipe_capacity: PIPE_CAPACITIES[usize::from((byte >> 1) & 3)],
            small_frames: byte & 8 != 0,
            shut_down: byte & 16 != 0,
        }
    }

    /// The first byte of an input with this setup.
    pub fn to_byte(self) -> u8 {
        let capacity = PIPE_CAPACITIES
            .iter()
            .position(|&c| c == self.pipe_capacity)
            .unwrap_or(3) as u8;
        u8::from(self.hello)
            | capacity << 1
            | u8::from(self.small_frames) << 3
            | u8::from(self.shut_down) << 4
    }
}

/// A payload as it travels: its 4-byte big-endian length, then the payload.
pub fn framed(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a payload under 4 GiB");
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// A request as it travels, length first.
pub fn client_frame(request_id: u64, request: Request) -> Vec<u8> {
    let payload =
        encoding::encode(&ClientFrame::new(request_id, request)).expect("requests encode");
    framed(&payload)
}

/// The `Hello` a client of this protocol version opens with.
pub fn hello() -> Request {
    Request::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "fuzz".into(),
    }
}

fn metadata() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("version".to_owned(), "1.2.3".to_owned()),
        ("zone".to_owned(), "eu-1".to_owned()),
    ])
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// One or more of every request, with plausible and edge-case fields.
pub fn sample_requests() -> Vec<Request> {
    let id = uuid_of(7);
    let revision = Revision {
        incarnation: 1,
        seq: 2,
    };
    vec![
        hello(),
        Request::Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            client_name: String::new(),
        },
        // The version before, which a server refuses by name.
        Request::Hello {
            protocol_version: PROTOCOL_VERSION - 1,
            client_name: "v1".into(),
        },
        Request::Register {
            service_type: "billing".into(),
            ip: localhost(),
            port: 8080,
            metadata: metadata(),
            ttl: None,
        },
        Request::Register {
            service_type: KEPT_TYPE.into(),
            ip: localhost(),
            port: KEPT_PORT,
            metadata: BTreeMap::new(),
            ttl: None,
        },
        // A TTL of its own, within the default bounds, and one below them.
        Request::Register {
            service_type: "v6".into(),
            ip: "::1".parse().expect("an ipv6 address"),
            port: 1,
            metadata: BTreeMap::new(),
            ttl: Some(Duration::from_secs(30)),
        },
        Request::Register {
            service_type: "short".into(),
            ip: localhost(),
            port: 2,
            metadata: BTreeMap::new(),
            ttl: Some(Duration::from_millis(1)),
        },
        Request::Register {
            service_type: String::new(),
            ip: IpAddr::from([0, 0, 0, 0]),
            port: 0,
            metadata: BTreeMap::from([(String::new(), String::new())]),
            ttl: Some(Duration::new(u64::MAX, 999_999_999)),
        },
        Request::Heartbeat {
            id,
            min_revision: None,
        },
        // A revision of another incarnation than the server's: answered at once.
        Request::Heartbeat {
            id,
            min_revision: Some(revision),
        },
        Request::Deregister {
            id,
            min_revision: None,
        },
        Request::Query {
            service_type: "billing".into(),
            min_revision: None,
        },
        Request::Query {
            service_type: KEPT_TYPE.into(),
            min_revision: Some(revision),
        },
        Request::Ping,
        Request::Watch {
            service_type: "billing".into(),
            since: None,
            min_revision: None,
        },
        Request::Watch {
            service_type: KEPT_TYPE.into(),
            since: Some(revision),
            min_revision: Some(revision),
        },
        Request::Unwatch { watch: 12 },
        Request::ListTypes,
        Request::Update {
            id,
            metadata: metadata(),
            min_revision: None,
        },
        Request::Update {
            id,
            metadata: BTreeMap::new(),
            min_revision: Some(revision),
        },
    ]
}

/// One or more of every response.
pub fn sample_responses() -> Vec<Response> {
    let instance = Instance {
        id: uuid_of(9),
        service_type: "billing".into(),
        ip: localhost(),
        port: 8080,
        metadata: metadata(),
        last_heartbeat: chrono_epoch_plus(1_700_000_000_000),
    };
    let entry = instance.clone().into_entry();
    let revision = Revision {
        incarnation: 0xc0ff_ee00,
        seq: 42,
    };
    vec![
        Response::Welcome {
            protocol_version: PROTOCOL_VERSION,
            ttl: Duration::from_secs(5),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(10),
            limits: Limits {
                max_frame_bytes: 65536,
                max_instances: 1_000_000,
                max_instances_per_type: 100_000,
                max_type_bytes: 255,
                max_metadata_pairs: 64,
                max_metadata_key_bytes: 128,
                max_metadata_value_bytes: 512,
                max_connections: 10_000,
                max_watches_per_connection: 64,
                max_connections_per_peer: Some(16),
                max_watched_types: Some(1_000),
                max_watch_bytes: None,
                max_answer_buffer_bytes: Some(1 << 20),
                max_registry_bytes: None,
                write_timeout: Some(Duration::from_secs(10)),
                register_rate: Some(100),
                register_burst: None,
            },
        },
        Response::Registered {
            id: uuid_of(3),
            ttl: Duration::from_secs(5),
            revision,
        },
        Response::Ok,
        Response::NotFound { reason: None },
        Response::NotFound {
            reason: Some(RemoveReason::Replaced),
        },
        Response::Instances {
            service_type: "billing".into(),
            stale_ms: None,
            instances: vec![entry.clone()],
            more: false,
        },
        Response::Instances {
            service_type: "billing".into(),
            stale_ms: Some(1500),
            instances: vec![],
            more: true,
        },
        Response::Pong,
        Response::Error {
            kind: ErrorKind::MalformedFrame,
            message: "malformed frame".into(),
        },
        Response::Error {
            kind: ErrorKind::PeerConnectionLimit,
            message: String::new(),
        },
        Response::Snapshot {
            revision,
            reset: true,
            instances: vec![entry],
            more: true,
        },
        Response::Resumed { revision },
        Response::Added {
            revision,
            instance: instance.clone(),
        },
        Response::Removed {
            revision,
            instance: instance.clone(),
            reason: RemoveReason::Expired,
        },
        Response::Types {
            types: vec![TypeCount {
                service_type: "billing".into(),
                instances: 3,
            }],
            more: false,
        },
        Response::Updated { revision, instance },
        Response::Done { revision },
        Response::Throttled {
            retry_after_ms: 250,
        },
    ]
}

/// A server frame as it travels, length first.
pub fn server_frame(request_id: u64, response: Response) -> Vec<u8> {
    let payload =
        encoding::encode(&ServerFrame::new(request_id, response)).expect("responses encode");
    framed(&payload)
}

/// A fixed id, so that the seeds are the same on every run.
fn uuid_of(n: u8) -> uuid::Uuid {
    uuid::Uuid::from_bytes([n; 16])
}

fn chrono_epoch_plus(millis: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(millis).expect("a time in range")
}
