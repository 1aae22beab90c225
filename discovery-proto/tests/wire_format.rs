//! The exact bytes of the protocol, as `docs/PROTOCOL.md` describes them to implementers in
//! other languages: if one of these tests has to change, the document (and every client
//! written from it) has to change too. `the_document_shows_what_the_encoder_writes` reads
//! the hex dumps of the document itself and compares them with the encoder's output.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use chrono::DateTime;
use common::{
    ERROR_KINDS, REMOVE_REASONS, error_kind_index, remove_reason_index, request_index,
    response_index,
};
use discovery_proto::encoding::{self, Frame};
use discovery_proto::{
    ClientFrame, DEFAULT_PORT, Entry, ErrorKind, Instance, Limits, MAX_FRAME_BYTES, Metadata,
    PROTOCOL_VERSION, RemoveReason, Request, Response, Revision, SERVER_REQUEST_ID, ServerFrame,
    TypeCount,
};
use uuid::Uuid;

/// Bytes from space-separated hex pairs; `"text"` in quotes stands for its UTF-8 bytes.
fn bytes(spec: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for part in spec.split_whitespace() {
        if let Some(text) = part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
            out.extend_from_slice(text.as_bytes());
        } else {
            out.push(u8::from_str_radix(part, 16).unwrap_or_else(|_| panic!("bad hex {part}")));
        }
    }
    out
}

/// `frame` encodes to exactly `spec` and decodes back from it.
fn check<F: Frame + PartialEq + std::fmt::Debug>(frame: F, spec: &str) {
    let expected = bytes(spec);
    let payload = encoding::encode(&frame).expect("encodes");
    assert_eq!(payload, expected, "{frame:?}");
    let back: F = encoding::decode(&expected).expect("decodes");
    assert_eq!(back, frame);
}

/// `frame` as it travels: the 4-byte big-endian length, then the payload.
fn wire<F: Frame>(frame: &F) -> Vec<u8> {
    let payload = encoding::encode(frame).expect("encodes");
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend(payload);
    out
}

const ID: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";
/// The uuid above as it travels: its length (16), then its 16 bytes in the order of its text.
const ID_WIRE: &str = "10 67 e5 50 44 10 b1 42 6f 92 47 bb 68 0e 5f e0 c8";

fn id() -> Uuid {
    Uuid::parse_str(ID).expect("a valid uuid")
}

/// A revision of a small incarnation, so that its bytes are short: `07 {seq}`.
fn revision(seq: u64) -> Revision {
    Revision {
        incarnation: 7,
        seq,
    }
}

fn zone(value: &str) -> Metadata {
    BTreeMap::from([("zone".into(), value.into())])
}

/// The entry of the instance the tests list: billing at 10.0.0.5:8080, zone eu-1, last
/// heartbeat 1700000000123 ms after the epoch.
fn entry() -> Entry {
    Entry {
        id: id(),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
        port: 8080,
        metadata: zone("eu-1"),
        last_heartbeat: DateTime::from_timestamp_millis(1_700_000_000_123).expect("in range"),
    }
}

/// The entry's bytes: id, V4 10.0.0.5, port 8080 (fb + u16), one pair, then 1700000000123
/// ms zigzagged to 3400000000246 = 0x0317_9fca_d0f6 (fd + u64).
const ENTRY_WIRE: &str = r#"10 67 e5 50 44 10 b1 42 6f 92 47 bb 68 0e 5f e0 c8 00 0a 00 00 05 fb 90 1f
       01 04 "zone" 04 "eu-1" fd f6 d0 ca 9f 17 03 00 00"#;

/// The same as an instance: the id, then the type, then the rest of the entry.
const INSTANCE_WIRE: &str = r#"10 67 e5 50 44 10 b1 42 6f 92 47 bb 68 0e 5f e0 c8 07 "billing" 00 0a 00 00 05 fb 90 1f
       01 04 "zone" 04 "eu-1" fd f6 d0 ca 9f 17 03 00 00"#;

fn instance() -> Instance {
    Instance::from_entry("billing", entry())
}

#[test]
fn constants() {
    assert_eq!(PROTOCOL_VERSION, 2);
    assert_eq!(DEFAULT_PORT, 7777);
    assert_eq!(MAX_FRAME_BYTES, 65536);
    assert_eq!(SERVER_REQUEST_ID, 0);
}

/// One of every request, in variant order.
fn every_request() -> Vec<Request> {
    vec![
        Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: String::new(),
        },
        Request::Register {
            service_type: String::new(),
            ip: Ipv4Addr::LOCALHOST.into(),
            port: 1,
            metadata: Metadata::new(),
            ttl: None,
        },
        Request::Heartbeat {
            id: id(),
            min_revision: None,
        },
        Request::Deregister {
            id: id(),
            min_revision: None,
        },
        Request::Query {
            service_type: String::new(),
            min_revision: None,
        },
        Request::Ping,
        Request::Watch {
            service_type: String::new(),
            since: None,
            min_revision: None,
        },
        Request::Unwatch { watch: 1 },
        Request::ListTypes,
        Request::Update {
            id: id(),
            metadata: Metadata::new(),
            min_revision: None,
        },
    ]
}

/// One of every response, in variant order.
fn every_response() -> Vec<Response> {
    vec![
        Response::Welcome {
            protocol_version: PROTOCOL_VERSION,
            ttl: Duration::ZERO,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            frame_timeout: Duration::ZERO,
            limits: default_limits(),
        },
        Response::Registered {
            id: id(),
            ttl: Duration::ZERO,
            revision: revision(1),
        },
        Response::Ok,
        Response::NotFound { reason: None },
        Response::Instances {
            service_type: String::new(),
            stale_ms: None,
            instances: vec![],
            more: false,
        },
        Response::Pong,
        Response::Error {
            kind: ErrorKind::Internal,
            message: String::new(),
        },
        Response::Snapshot {
            revision: revision(1),
            reset: false,
            instances: vec![],
            more: false,
        },
        Response::Resumed {
            revision: revision(1),
        },
        Response::Added {
            revision: revision(1),
            instance: instance(),
        },
        Response::Removed {
            revision: revision(1),
            instance: instance(),
            reason: RemoveReason::Expired,
        },
        Response::Types {
            types: vec![],
            more: false,
        },
        Response::Updated {
            revision: revision(1),
            instance: instance(),
        },
        Response::Done {
            revision: revision(1),
        },
        Response::Throttled { retry_after_ms: 0 },
    ]
}

/// Each variant's index, as `docs/PROTOCOL.md` tables them: 10 requests, 15 responses.
#[test]
fn variant_indices() {
    let requests = every_request();
    assert_eq!(requests.len(), 10);
    for (index, request) in requests.into_iter().enumerate() {
        assert_eq!(usize::from(request_index(&request)), index);
        let payload = encoding::encode(&ClientFrame::new(1, request)).expect("encodes");
        assert_eq!(payload[1], index as u8);
    }
    let responses = every_response();
    assert_eq!(responses.len(), 15);
    for (index, response) in responses.into_iter().enumerate() {
        assert_eq!(usize::from(response_index(&response)), index);
        let payload = encoding::encode(&ServerFrame::new(1, response)).expect("encodes");
        assert_eq!(payload[1], index as u8);
    }
}

#[test]
fn error_kinds_and_whether_they_close() {
    assert_eq!(ERROR_KINDS.len(), 21);
    let closing = [
        ErrorKind::UnsupportedVersion,
        ErrorKind::HelloRequired,
        ErrorKind::TooManyConnections,
        ErrorKind::ShuttingDown,
        ErrorKind::PeerConnectionLimit,
    ];
    for (index, kind) in ERROR_KINDS.into_iter().enumerate() {
        assert_eq!(usize::from(error_kind_index(kind)), index);
        // Error (6), kind, message "" (length 0).
        let frame = ServerFrame::new(
            0,
            Response::Error {
                kind,
                message: String::new(),
            },
        );
        check(frame, &format!("00 06 {index:02x} 00"));
        assert_eq!(
            kind.closes_connection(),
            closing.contains(&kind),
            "{kind:?}"
        );
    }
    // The kinds of version 2, by name, at the indices the document gives them.
    for (kind, index) in [
        (ErrorKind::InvalidTtl, "0f"),
        (ErrorKind::Unavailable, "10"),
        (ErrorKind::WatchedTypeLimit, "11"),
        (ErrorKind::WatchBytesLimit, "12"),
        (ErrorKind::RegistryBytesLimit, "13"),
        (ErrorKind::PeerConnectionLimit, "14"),
    ] {
        check(
            ServerFrame::new(
                2,
                Response::Error {
                    kind,
                    message: "no".into(),
                },
            ),
            &format!(r#"02 06 {index} 02 "no""#),
        );
    }
}

/// A remove reason is an enum without fields: 0 Deregistered, 1 Expired, 2 Replaced.
#[test]
fn remove_reasons() {
    for (index, reason) in REMOVE_REASONS.into_iter().enumerate() {
        assert_eq!(usize::from(remove_reason_index(reason)), index);
        // NotFound (3), reason: Some (01), the reason.
        check(
            ServerFrame::new(
                1,
                Response::NotFound {
                    reason: Some(reason),
                },
            ),
            &format!("01 03 01 {index:02x}"),
        );
    }
}

/// Unsigned integers: one byte below 251; else a marker byte and the value little-endian:
/// 251 (0xfb) + u16, 252 (0xfc) + u32, 253 (0xfd) + u64. Shown on the request id (u64).
#[test]
fn varint_boundaries() {
    let cases: [(u64, &str); 11] = [
        (0, "00"),
        (1, "01"),
        (250, "fa"),
        (251, "fb fb 00"),
        (300, "fb 2c 01"),
        (8080, "fb 90 1f"),
        (65535, "fb ff ff"),
        (65536, "fc 00 00 01 00"),
        (u64::from(u32::MAX), "fc ff ff ff ff"),
        (1 << 32, "fd 00 00 00 00 01 00 00 00"),
        (u64::MAX, "fd ff ff ff ff ff ff ff ff"),
    ];
    for (id, spec) in cases {
        check(ClientFrame::new(id, Request::Ping), &format!("{spec} 05"));
    }
}

/// An option is `00` for none, or `01` then the value: shown on each kind of option the
/// protocol has (a revision, a duration, a u64, a u32, a remove reason).
#[test]
fn options() {
    let query = |min_revision| {
        ClientFrame::new(
            1,
            Request::Query {
                service_type: "a".into(),
                min_revision,
            },
        )
    };
    check(query(None), r#"01 04 01 "a" 00"#);
    check(query(Some(revision(3))), r#"01 04 01 "a" 01 07 03"#);
    let stale = |stale_ms| {
        ServerFrame::new(
            1,
            Response::Instances {
                service_type: "a".into(),
                stale_ms,
                instances: vec![],
                more: false,
            },
        )
    };
    check(stale(None), r#"01 04 01 "a" 00 00 00"#);
    check(stale(Some(0)), r#"01 04 01 "a" 01 00 00 00"#);
    check(stale(Some(1500)), r#"01 04 01 "a" 01 fb dc 05 00 00"#);
    check(
        ServerFrame::new(1, Response::NotFound { reason: None }),
        "01 03 00",
    );
}

#[test]
fn requests() {
    check(
        ClientFrame::new(
            1,
            Request::Hello {
                protocol_version: 2,
                client_name: "py".into(),
            },
        ),
        r#"01 00 02 02 "py""#,
    );
    let register = |ip: IpAddr, port, metadata, ttl| Request::Register {
        service_type: "billing".into(),
        ip,
        port,
        metadata,
        ttl,
    };
    check(
        ClientFrame::new(
            2,
            register(Ipv4Addr::new(10, 0, 0, 5).into(), 8080, zone("eu-1"), None),
        ),
        // id 2, Register (1), "billing", V4 (0) 10.0.0.5, port 8080 = 0x1f90 (fb + u16),
        // one pair: "zone" => "eu-1", no ttl.
        r#"02 01 07 "billing" 00 0a 00 00 05 fb 90 1f 01 04 "zone" 04 "eu-1" 00"#,
    );
    check(
        ClientFrame::new(
            2,
            register(
                Ipv4Addr::new(10, 0, 0, 5).into(),
                8080,
                zone("eu-1"),
                Some(Duration::from_secs(30)),
            ),
        ),
        // The same with a ttl of its own: Some (01), secs 30, nanos 0.
        r#"02 01 07 "billing" 00 0a 00 00 05 fb 90 1f 01 04 "zone" 04 "eu-1" 01 1e 00"#,
    );
    check(
        ClientFrame::new(
            3,
            register(
                Ipv6Addr::LOCALHOST.into(),
                80,
                Metadata::new(),
                Some(Duration::from_millis(1500)),
            ),
        ),
        // V6 (1), then the 16 bytes of ::1, network order; a ttl of 1.5 s.
        r#"03 01 07 "billing" 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 50 00
           01 01 fc 00 65 cd 1d"#,
    );
    check(
        ClientFrame::new(
            3,
            register(
                Ipv4Addr::new(192, 251, 255, 253).into(),
                65535,
                Metadata::new(),
                None,
            ),
        ),
        // The octets of an address are plain bytes, never varints, even from 251 up.
        r#"03 01 07 "billing" 00 c0 fb ff fd fb ff ff 00 00"#,
    );
    check(
        ClientFrame::new(
            4,
            Request::Heartbeat {
                id: id(),
                min_revision: None,
            },
        ),
        &format!("04 02 {ID_WIRE} 00"),
    );
    check(
        ClientFrame::new(
            4,
            Request::Heartbeat {
                id: id(),
                min_revision: Some(revision(300)),
            },
        ),
        &format!("04 02 {ID_WIRE} 01 07 fb 2c 01"),
    );
    check(
        ClientFrame::new(
            5,
            Request::Deregister {
                id: id(),
                min_revision: None,
            },
        ),
        &format!("05 03 {ID_WIRE} 00"),
    );
    check(
        ClientFrame::new(
            5,
            Request::Deregister {
                id: id(),
                min_revision: Some(revision(1)),
            },
        ),
        &format!("05 03 {ID_WIRE} 01 07 01"),
    );
    check(
        ClientFrame::new(
            6,
            Request::Query {
                service_type: "billing".into(),
                min_revision: None,
            },
        ),
        r#"06 04 07 "billing" 00"#,
    );
    check(ClientFrame::new(7, Request::Ping), "07 05");
    let watch = |since, min_revision| {
        ClientFrame::new(
            8,
            Request::Watch {
                service_type: "billing".into(),
                since,
                min_revision,
            },
        )
    };
    check(watch(None, None), r#"08 06 07 "billing" 00 00"#);
    check(
        watch(Some(revision(4)), None),
        r#"08 06 07 "billing" 01 07 04 00"#,
    );
    check(
        watch(None, Some(revision(5))),
        r#"08 06 07 "billing" 00 01 07 05"#,
    );
    check(
        watch(Some(revision(4)), Some(revision(5))),
        r#"08 06 07 "billing" 01 07 04 01 07 05"#,
    );
    check(
        ClientFrame::new(9, Request::Unwatch { watch: 8 }),
        "09 07 08",
    );
    check(ClientFrame::new(10, Request::ListTypes), "0a 08");
    check(
        ClientFrame::new(
            11,
            Request::Update {
                id: id(),
                metadata: zone("eu-2"),
                min_revision: None,
            },
        ),
        &format!(r#"0b 09 {ID_WIRE} 01 04 "zone" 04 "eu-2" 00"#),
    );
    check(
        ClientFrame::new(
            11,
            Request::Update {
                id: id(),
                metadata: Metadata::new(),
                min_revision: Some(revision(6)),
            },
        ),
        &format!("0b 09 {ID_WIRE} 00 01 07 06"),
    );
}

/// `Hello` has the same layout in every version, so that a server can read the version of
/// any client and refuse it by name: a version-1 `Hello` is a `Hello` with version 1.
#[test]
fn a_version_1_hello_reads_as_a_hello() {
    check(
        ClientFrame::new(
            1,
            Request::Hello {
                protocol_version: 1,
                client_name: "py".into(),
            },
        ),
        r#"01 00 01 02 "py""#,
    );
    // A version a u16 holds but one byte does not.
    check(
        ClientFrame::new(
            1,
            Request::Hello {
                protocol_version: 65535,
                client_name: String::new(),
            },
        ),
        "01 00 fb ff ff 00",
    );
}

/// Metadata keys travel in the order of their UTF-8 bytes (a sorted map), each key then
/// its value.
#[test]
fn metadata_order() {
    let metadata = BTreeMap::from([
        ("zone".to_owned(), "a".to_owned()),
        ("Zone".to_owned(), "b".to_owned()),
        ("é".to_owned(), "c".to_owned()),
    ]);
    check(
        ClientFrame::new(
            1,
            Request::Register {
                service_type: "t".into(),
                ip: Ipv4Addr::LOCALHOST.into(),
                port: 1,
                metadata,
                ttl: None,
            },
        ),
        r#"01 01 01 "t" 00 7f 00 00 01 01 03 04 "Zone" 01 "b" 04 "zone" 01 "a" 02 c3 a9 01 "c" 00"#,
    );
}

/// What a peer sends need not be sorted: keys in any order decode, and of a key sent twice
/// the last value wins.
#[test]
fn metadata_from_other_implementations() {
    let unsorted =
        bytes(r#"01 01 01 "t" 00 7f 00 00 01 01 03 01 "b" 01 "1" 01 "a" 01 "2" 01 "b" 01 "3" 00"#);
    let frame: ClientFrame = encoding::decode(&unsorted).expect("decodes");
    let Request::Register { metadata, .. } = frame.request else {
        panic!("not a register: {frame:?}");
    };
    assert_eq!(
        metadata,
        BTreeMap::from([("a".into(), "2".into()), ("b".into(), "3".into())])
    );
}

/// The limits a server of the default configuration announces: the bounds that are
/// optional are all off.
fn default_limits() -> Limits {
    Limits {
        max_frame_bytes: 65536,
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

/// The bytes of `default_limits`: 65536, 1000000, 100000, 255, 64, 128, 512, 10000, 64,
/// then eight options, none.
const DEFAULT_LIMITS_WIRE: &str = "fc 00 00 01 00  fc 40 42 0f 00  fc a0 86 01 00  fb ff 00  40  80  \
     fb 00 02  fb 10 27  40  00 00 00 00 00 00 00 00";

fn welcome(ttl: Duration, limits: Limits) -> ServerFrame {
    ServerFrame::new(
        1,
        Response::Welcome {
            protocol_version: 2,
            ttl,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(10),
            limits,
        },
    )
}

#[test]
fn welcome_frames() {
    // id 1, Welcome (0), version 2, ttl 5 s, min_ttl 1 s, max_ttl 3600 s (fb + u16),
    // idle_timeout 60 s, frame_timeout 10 s (each secs then nanos), then the limits.
    check(
        welcome(Duration::from_secs(5), default_limits()),
        &format!("01 00 02 05 00 01 00 fb 10 0e 00 3c 00 0a 00 {DEFAULT_LIMITS_WIRE}"),
    );
    // A duration is whole seconds (u64) then nanoseconds (u32): 1.5 s.
    check(
        welcome(Duration::from_millis(1500), default_limits()),
        &format!("01 00 02 01 fc 00 65 cd 1d 01 00 fb 10 0e 00 3c 00 0a 00 {DEFAULT_LIMITS_WIRE}"),
    );
}

/// Each optional limit in its place, alone set, with a value whose bytes say which it is.
#[test]
fn limits_in_order() {
    let set = |f: fn(&mut Limits)| {
        let mut limits = default_limits();
        f(&mut limits);
        limits
    };
    let cases: [(Limits, &str); 8] = [
        (
            set(|l| l.max_connections_per_peer = Some(1)),
            "01 01 00 00 00 00 00 00 00",
        ),
        (
            set(|l| l.max_watched_types = Some(2)),
            "00 01 02 00 00 00 00 00 00",
        ),
        (
            set(|l| l.max_watch_bytes = Some(3)),
            "00 00 01 03 00 00 00 00 00",
        ),
        (
            set(|l| l.max_answer_buffer_bytes = Some(4)),
            "00 00 00 01 04 00 00 00 00",
        ),
        (
            set(|l| l.max_registry_bytes = Some(5)),
            "00 00 00 00 01 05 00 00 00",
        ),
        (
            set(|l| l.write_timeout = Some(Duration::from_secs(6))),
            "00 00 00 00 00 01 06 00 00 00",
        ),
        (
            set(|l| l.register_rate = Some(7)),
            "00 00 00 00 00 00 01 07 00",
        ),
        (
            set(|l| l.register_burst = Some(8)),
            "00 00 00 00 00 00 00 01 08",
        ),
    ];
    let always = "fc 00 00 01 00  fc 40 42 0f 00  fc a0 86 01 00  fb ff 00  40  80  \
                  fb 00 02  fb 10 27  40";
    for (limits, optional) in cases {
        check(
            welcome(Duration::from_secs(5), limits),
            &format!("01 00 02 05 00 01 00 fb 10 0e 00 3c 00 0a 00 {always} {optional}"),
        );
    }
}

#[test]
fn short_responses() {
    check(
        ServerFrame::new(
            2,
            Response::Registered {
                id: id(),
                ttl: Duration::from_secs(5),
                revision: revision(1),
            },
        ),
        // The id, the ttl granted (5 s), the revision (incarnation 7, seq 1).
        &format!("02 01 {ID_WIRE} 05 00 07 01"),
    );
    check(ServerFrame::new(3, Response::Ok), "03 02");
    check(
        ServerFrame::new(4, Response::NotFound { reason: None }),
        "04 03 00",
    );
    check(
        ServerFrame::new(
            4,
            Response::NotFound {
                reason: Some(RemoveReason::Expired),
            },
        ),
        "04 03 01 01",
    );
    check(ServerFrame::new(5, Response::Pong), "05 05");
    check(
        ServerFrame::new(
            0,
            Response::Error {
                kind: ErrorKind::ShuttingDown,
                message: "bye".into(),
            },
        ),
        r#"00 06 0b 03 "bye""#,
    );
    check(
        ServerFrame::new(
            6,
            Response::Resumed {
                revision: revision(9),
            },
        ),
        "06 08 07 09",
    );
    check(
        ServerFrame::new(
            7,
            Response::Done {
                revision: Revision {
                    incarnation: u64::MAX,
                    seq: 251,
                },
            },
        ),
        "07 0d fd ff ff ff ff ff ff ff ff fb fb 00",
    );
    check(
        ServerFrame::new(
            8,
            Response::Throttled {
                retry_after_ms: 250,
            },
        ),
        "08 0e fa",
    );
    check(
        ServerFrame::new(
            8,
            Response::Throttled {
                retry_after_ms: 1000,
            },
        ),
        "08 0e fb e8 03",
    );
}

/// A query's answer says its type once, then entries without it.
#[test]
fn instances() {
    check(
        ServerFrame::new(
            6,
            Response::Instances {
                service_type: "billing".into(),
                stale_ms: None,
                instances: vec![entry()],
                more: false,
            },
        ),
        // id 6, Instances (4), "billing", no stale_ms, one entry, more = false.
        &format!(r#"06 04 07 "billing" 00 01 {ENTRY_WIRE} 00"#),
    );
    check(
        ServerFrame::new(
            6,
            Response::Instances {
                service_type: "billing".into(),
                stale_ms: Some(1500),
                instances: vec![entry(), entry()],
                more: true,
            },
        ),
        // stale_ms Some(1500) = 0x05dc (fb + u16), two entries, more = true.
        &format!(r#"06 04 07 "billing" 01 fb dc 05 02 {ENTRY_WIRE} {ENTRY_WIRE} 01"#),
    );
    check(
        ServerFrame::new(
            6,
            Response::Instances {
                service_type: "db".into(),
                stale_ms: None,
                instances: vec![],
                more: true,
            },
        ),
        r#"06 04 02 "db" 00 00 01"#,
    );
}

/// A watch's snapshot carries entries too: the watch said the type.
#[test]
fn snapshots() {
    check(
        ServerFrame::new(
            5,
            Response::Snapshot {
                revision: revision(1),
                reset: false,
                instances: vec![entry()],
                more: false,
            },
        ),
        // id 5, Snapshot (7), revision 7-1, reset false, one entry, more false.
        &format!("05 07 07 01 00 01 {ENTRY_WIRE} 00"),
    );
    check(
        ServerFrame::new(
            5,
            Response::Snapshot {
                revision: revision(2),
                reset: true,
                instances: vec![],
                more: true,
            },
        ),
        "05 07 07 02 01 00 01",
    );
}

/// The pushes of a watch carry whole instances, type included.
#[test]
fn pushes() {
    check(
        ServerFrame::new(
            5,
            Response::Added {
                revision: revision(2),
                instance: instance(),
            },
        ),
        &format!("05 09 07 02 {INSTANCE_WIRE}"),
    );
    for (reason, index) in [
        (RemoveReason::Deregistered, "00"),
        (RemoveReason::Expired, "01"),
        (RemoveReason::Replaced, "02"),
    ] {
        check(
            ServerFrame::new(
                5,
                Response::Removed {
                    revision: revision(3),
                    instance: instance(),
                    reason,
                },
            ),
            &format!("05 0a 07 03 {INSTANCE_WIRE} {index}"),
        );
    }
    check(
        ServerFrame::new(
            5,
            Response::Updated {
                revision: revision(4),
                instance: instance(),
            },
        ),
        &format!("05 0c 07 04 {INSTANCE_WIRE}"),
    );
}

#[test]
fn types() {
    check(
        ServerFrame::new(
            8,
            Response::Types {
                types: vec![
                    TypeCount {
                        service_type: "billing".into(),
                        instances: 1,
                    },
                    TypeCount {
                        service_type: "db".into(),
                        instances: 300,
                    },
                ],
                more: false,
            },
        ),
        // id 8, Types (11), two: "billing" 1, "db" 300 (fb + u16), more false.
        r#"08 0b 02 07 "billing" 01 02 "db" fb 2c 01 00"#,
    );
    check(
        ServerFrame::new(
            8,
            Response::Types {
                types: vec![],
                more: false,
            },
        ),
        "08 0b 00 00",
    );
}

/// Signed integers (only the last-heartbeat milliseconds) are zigzagged, then written as
/// unsigned varints: 0 → 0, -1 → 1, 1 → 2, -2 → 3, ...
#[test]
fn zigzag_timestamps() {
    let cases: [(i64, &str); 7] = [
        (0, "00"),
        (-1, "01"),
        (1, "02"),
        (-2, "03"),
        (125, "fa"),
        (-126, "fb fb 00"),
        (-1000, "fb cf 07"),
    ];
    for (millis, spec) in cases {
        let frame = ServerFrame::new(
            1,
            Response::Instances {
                service_type: String::new(),
                stale_ms: None,
                instances: vec![Entry {
                    id: Uuid::nil(),
                    ip: Ipv4Addr::LOCALHOST.into(),
                    port: 1,
                    metadata: Metadata::new(),
                    last_heartbeat: DateTime::from_timestamp_millis(millis).expect("in range"),
                }],
                more: false,
            },
        );
        check(
            frame,
            &format!(
                "01 04 00 00 01 10 {} 00 7f 00 00 01 01 00 {spec} 00",
                "00 ".repeat(16)
            ),
        );
    }
}

/// A time with more precision than milliseconds loses it on the wire (rounded toward
/// negative infinity, as `timestamp_millis` does).
#[test]
fn sub_millisecond_times_truncate() {
    let precise = DateTime::from_timestamp(1_700_000_000, 123_456_789).expect("in range");
    let frame = ServerFrame::new(
        1,
        Response::Snapshot {
            revision: revision(1),
            reset: false,
            instances: vec![Entry {
                id: Uuid::nil(),
                ip: Ipv4Addr::LOCALHOST.into(),
                port: 1,
                metadata: Metadata::new(),
                last_heartbeat: precise,
            }],
            more: false,
        },
    );
    let back: ServerFrame =
        encoding::decode(&encoding::encode(&frame).expect("encodes")).expect("decodes");
    let Response::Snapshot { instances, .. } = back.response else {
        panic!("not a snapshot");
    };
    assert_eq!(
        instances[0].last_heartbeat.timestamp_millis(),
        1_700_000_000_123
    );
    assert_eq!(
        instances[0].last_heartbeat.timestamp_subsec_nanos(),
        123_000_000
    );
}

/// A frame of the document: which way it goes, and the message.
#[derive(Debug)]
enum Shown {
    C(ClientFrame),
    S(ServerFrame),
}

impl Shown {
    fn wire(&self) -> Vec<u8> {
        match self {
            Shown::C(frame) => wire(frame),
            Shown::S(frame) => wire(frame),
        }
    }
}

/// The values of the document's exchange: one instance, its id, and the revisions of the
/// server run (incarnation 0x5f3c9a21d4e807b6).
mod doc {
    use super::*;

    pub fn id() -> Uuid {
        Uuid::parse_str("3541fb90-3f71-4c61-acc5-57f23323c3ee").expect("a valid uuid")
    }

    pub fn revision(seq: u64) -> Revision {
        Revision {
            incarnation: 0x5f3c_9a21_d4e8_07b6,
            seq,
        }
    }

    pub fn entry(zone_value: &str) -> Entry {
        Entry {
            id: id(),
            ip: Ipv4Addr::new(10, 0, 0, 5).into(),
            port: 8080,
            metadata: zone(zone_value),
            last_heartbeat: DateTime::from_timestamp_millis(1_796_001_676_359).expect("in range"),
        }
    }

    pub fn register(ttl: Option<Duration>) -> Request {
        Request::Register {
            service_type: "billing".into(),
            ip: Ipv4Addr::new(10, 0, 0, 5).into(),
            port: 8080,
            metadata: zone("eu-1"),
            ttl,
        }
    }

    pub fn hello(protocol_version: u16) -> Request {
        Request::Hello {
            protocol_version,
            client_name: "py".into(),
        }
    }

    pub fn heartbeat(min_revision: Option<Revision>) -> Request {
        Request::Heartbeat {
            id: id(),
            min_revision,
        }
    }

    /// The exchange of § 8, in order.
    pub fn exchange() -> Vec<Shown> {
        use Shown::{C, S};
        vec![
            C(ClientFrame::new(1, hello(2))),
            S(ServerFrame::new(
                1,
                Response::Welcome {
                    protocol_version: 2,
                    ttl: Duration::from_secs(5),
                    min_ttl: Duration::from_secs(1),
                    max_ttl: Duration::from_secs(3600),
                    idle_timeout: Duration::from_secs(60),
                    frame_timeout: Duration::from_secs(10),
                    limits: default_limits(),
                },
            )),
            C(ClientFrame::new(2, register(None))),
            S(ServerFrame::new(
                2,
                Response::Registered {
                    id: id(),
                    ttl: Duration::from_secs(5),
                    revision: revision(1),
                },
            )),
            C(ClientFrame::new(3, heartbeat(None))),
            S(ServerFrame::new(3, Response::Ok)),
            C(ClientFrame::new(
                4,
                Request::Query {
                    service_type: "billing".into(),
                    min_revision: None,
                },
            )),
            S(ServerFrame::new(
                4,
                Response::Instances {
                    service_type: "billing".into(),
                    stale_ms: None,
                    instances: vec![entry("eu-1")],
                    more: false,
                },
            )),
            C(ClientFrame::new(
                5,
                Request::Watch {
                    service_type: "billing".into(),
                    since: None,
                    min_revision: Some(revision(1)),
                },
            )),
            S(ServerFrame::new(
                5,
                Response::Snapshot {
                    revision: revision(1),
                    reset: false,
                    instances: vec![entry("eu-1")],
                    more: false,
                },
            )),
            C(ClientFrame::new(
                6,
                Request::Update {
                    id: id(),
                    metadata: zone("eu-2"),
                    min_revision: None,
                },
            )),
            S(ServerFrame::new(
                6,
                Response::Done {
                    revision: revision(2),
                },
            )),
            S(ServerFrame::new(
                5,
                Response::Updated {
                    revision: revision(2),
                    instance: Instance::from_entry("billing", entry("eu-2")),
                },
            )),
            C(ClientFrame::new(7, Request::Unwatch { watch: 5 })),
            S(ServerFrame::new(7, Response::Ok)),
            C(ClientFrame::new(8, Request::ListTypes)),
            S(ServerFrame::new(
                8,
                Response::Types {
                    types: vec![TypeCount {
                        service_type: "billing".into(),
                        instances: 1,
                    }],
                    more: false,
                },
            )),
            C(ClientFrame::new(
                9,
                Request::Deregister {
                    id: id(),
                    min_revision: None,
                },
            )),
            S(ServerFrame::new(
                9,
                Response::Done {
                    revision: revision(3),
                },
            )),
            C(ClientFrame::new(10, heartbeat(None))),
            S(ServerFrame::new(
                10,
                Response::NotFound {
                    reason: Some(RemoveReason::Deregistered),
                },
            )),
            C(ClientFrame::new(11, Request::Ping)),
            S(ServerFrame::new(11, Response::Pong)),
        ]
    }

    /// The frames § 8 takes apart byte by byte, in the order it shows them: most from the
    /// exchange, then frames the exchange does not have.
    pub fn annotated() -> Vec<Shown> {
        let exchange = exchange();
        // Hello, Welcome, Register, Registered, Heartbeat and Ok, Query, Instances, Watch,
        // Snapshot, Update, Done, Updated, ListTypes, Types, NotFound.
        let mut shown: Vec<Shown> = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16, 20]
            .into_iter()
            .map(|i| match &exchange[i] {
                Shown::C(frame) => Shown::C(frame.clone()),
                Shown::S(frame) => Shown::S(frame.clone()),
            })
            .collect();
        shown.extend([
            Shown::C(ClientFrame::new(2, register(Some(Duration::from_secs(30))))),
            Shown::S(ServerFrame::new(
                2,
                Response::Registered {
                    id: id(),
                    ttl: Duration::from_secs(30),
                    revision: revision(1),
                },
            )),
            Shown::C(ClientFrame::new(3, heartbeat(Some(revision(1))))),
            Shown::S(ServerFrame::new(3, Response::NotFound { reason: None })),
            Shown::S(ServerFrame::new(
                4,
                Response::Instances {
                    service_type: "billing".into(),
                    stale_ms: Some(1500),
                    instances: vec![],
                    more: false,
                },
            )),
            Shown::S(ServerFrame::new(
                2,
                Response::Throttled {
                    retry_after_ms: 250,
                },
            )),
            Shown::C(ClientFrame::new(1, hello(1))),
            Shown::S(ServerFrame::new(
                1,
                Response::Error {
                    kind: ErrorKind::UnsupportedVersion,
                    message: "protocol version 1 is not spoken here; this server speaks \
                              version 2"
                        .into(),
                },
            )),
        ]);
        shown
    }
}

/// The text of `docs/PROTOCOL.md` from the heading that starts with `from` to the next
/// heading of the same level.
fn document_section(from: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let text = std::fs::read_to_string(path).expect("docs/PROTOCOL.md is readable");
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in the document"));
    let rest = &text[start + from.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The ```text blocks of a piece of Markdown, each as its lines.
fn text_blocks(markdown: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```text") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => block.push(line),
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "a text block is not closed");
    blocks
}

/// The bytes at the start of an annotated line: hex pairs separated by single spaces, up
/// to two spaces or the end of the line; a line that starts with anything else is a
/// comment. A line that starts like bytes and then is not is a mistake of the document.
fn line_bytes(line: &str) -> Vec<u8> {
    let line = line.trim_start();
    let hex = line.split("  ").next().unwrap_or("");
    let is_pair = |t: &str| t.len() == 2 && t.chars().all(|c| c.is_ascii_hexdigit());
    let tokens: Vec<&str> = hex.split(' ').collect();
    if !is_pair(tokens[0]) {
        return Vec::new();
    }
    tokens
        .iter()
        .map(|t| {
            assert!(is_pair(t), "{t:?} in the bytes of {line:?}");
            u8::from_str_radix(t, 16).expect("hex")
        })
        .collect()
}

/// Cuts a stream of whole frames at their length prefixes.
fn frames_of(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "a length prefix cut short: {rest:02x?}");
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        assert!(
            rest.len() >= 4 + len,
            "a frame of {len} bytes with {} shown",
            rest.len() - 4
        );
        frames.push(rest[..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    frames
}

/// Every byte the document shows in § 8 is what the encoder writes: the exchange line by
/// line, and each frame taken apart byte by byte, in order.
#[test]
fn the_document_shows_what_the_encoder_writes() {
    let section = document_section("## 8. ");
    let blocks = text_blocks(&section);
    let (exchange, annotated) = blocks.split_first().expect("§ 8 has text blocks");

    // The exchange: `C→S` or `S→C`, then hex pairs; a line that starts with spaces goes on
    // with the frame above it.
    let mut shown: Vec<(bool, Vec<u8>)> = Vec::new();
    for line in exchange {
        let (client, hex) = if let Some(hex) = line.strip_prefix("C→S") {
            (Some(true), hex)
        } else if let Some(hex) = line.strip_prefix("S→C") {
            (Some(false), hex)
        } else {
            (None, *line)
        };
        let pairs: Vec<u8> = hex
            .split_whitespace()
            .map(|t| u8::from_str_radix(t, 16).unwrap_or_else(|_| panic!("{t:?} in {line:?}")))
            .collect();
        match (client, shown.last_mut()) {
            (Some(client), _) => shown.push((client, pairs)),
            (None, Some((_, frame))) => frame.extend(pairs),
            (None, None) => panic!("the exchange starts with {line:?}"),
        }
    }
    let expected = doc::exchange();
    assert_eq!(shown.len(), expected.len(), "frames in the exchange");
    for (i, ((client, bytes), frame)) in shown.iter().zip(&expected).enumerate() {
        assert_eq!(
            *client,
            matches!(frame, Shown::C(_)),
            "direction of frame {i}"
        );
        assert_eq!(bytes, &frame.wire(), "frame {i} of the exchange: {frame:?}");
    }

    // The frames taken apart: every block is whole frames, length first.
    let stream: Vec<u8> = annotated
        .iter()
        .flat_map(|block| block.iter().flat_map(|line| line_bytes(line)))
        .collect();
    let shown = frames_of(&stream);
    let expected = doc::annotated();
    for (i, (bytes, frame)) in shown.iter().zip(&expected).enumerate() {
        assert_eq!(bytes, &frame.wire(), "annotated frame {i}: {frame:?}");
    }
    assert_eq!(shown.len(), expected.len(), "annotated frames");
}
