//! The exact bytes of the protocol, as `docs/PROTOCOL.md` describes them to implementers in
//! other languages: if one of these tests has to change, the document (and every client
//! written from it) has to change too.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use chrono::DateTime;
use common::{ERROR_KINDS, error_kind_index, request_index, response_index};
use discovery_proto::encoding::{self, Frame};
use discovery_proto::{
    ClientFrame, DEFAULT_PORT, ErrorKind, Instance, Limits, MAX_FRAME_BYTES, Metadata,
    PROTOCOL_VERSION, Request, Response, SERVER_REQUEST_ID, ServerFrame,
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

const ID: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";
/// The uuid above as it travels: its length (16), then its 16 bytes in the order of its text.
const ID_WIRE: &str = "10 67 e5 50 44 10 b1 42 6f 92 47 bb 68 0e 5f e0 c8";

fn id() -> Uuid {
    Uuid::parse_str(ID).expect("a valid uuid")
}

#[test]
fn constants() {
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(DEFAULT_PORT, 7777);
    assert_eq!(MAX_FRAME_BYTES, 65536);
    assert_eq!(SERVER_REQUEST_ID, 0);
}

#[test]
fn variant_indices() {
    let requests = [
        Request::Hello {
            protocol_version: 1,
            client_name: String::new(),
        },
        Request::Register {
            service_type: String::new(),
            ip: Ipv4Addr::LOCALHOST.into(),
            port: 1,
            metadata: Metadata::new(),
        },
        Request::Heartbeat { id: id() },
        Request::Deregister { id: id() },
        Request::Query {
            service_type: String::new(),
        },
        Request::Ping,
    ];
    for (index, request) in requests.into_iter().enumerate() {
        assert_eq!(usize::from(request_index(&request)), index);
        let payload = encoding::encode(&ClientFrame::new(1, request)).expect("encodes");
        assert_eq!(payload[1], index as u8);
    }
    let responses = [
        Response::Welcome {
            protocol_version: 1,
            ttl: Duration::ZERO,
            limits: limits(),
        },
        Response::Registered { id: id() },
        Response::Ok,
        Response::NotFound,
        Response::Instances {
            instances: vec![],
            more: false,
        },
        Response::Pong,
        Response::Error {
            kind: ErrorKind::Internal,
            message: String::new(),
        },
    ];
    for (index, response) in responses.into_iter().enumerate() {
        assert_eq!(usize::from(response_index(&response)), index);
        let payload = encoding::encode(&ServerFrame::new(1, response)).expect("encodes");
        assert_eq!(payload[1], index as u8);
    }
}

#[test]
fn error_kinds_and_whether_they_close() {
    let closing = [
        ErrorKind::UnsupportedVersion,
        ErrorKind::HelloRequired,
        ErrorKind::TooManyConnections,
        ErrorKind::ShuttingDown,
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
}

/// Unsigned integers: one byte below 251; else a marker byte and the value little-endian:
/// 251 (0xfb) + u16, 252 (0xfc) + u32, 253 (0xfd) + u64. Shown on the request id (u64).
#[test]
fn varint_boundaries() {
    let cases: [(u64, &str); 10] = [
        (0, "00"),
        (1, "01"),
        (250, "fa"),
        (251, "fb fb 00"),
        (300, "fb 2c 01"),
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

#[test]
fn requests() {
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
    check(
        ClientFrame::new(
            2,
            Request::Register {
                service_type: "billing".into(),
                ip: Ipv4Addr::new(10, 0, 0, 5).into(),
                port: 8080,
                metadata: BTreeMap::from([("zone".into(), "eu-1".into())]),
            },
        ),
        // id 2, Register (1), "billing", V4 (0) 10.0.0.5, port 8080 = 0x1f90 (fb + u16),
        // one pair: "zone" => "eu-1".
        r#"02 01 07 "billing" 00 0a 00 00 05 fb 90 1f 01 04 "zone" 04 "eu-1""#,
    );
    check(
        ClientFrame::new(
            3,
            Request::Register {
                service_type: "db".into(),
                ip: Ipv6Addr::LOCALHOST.into(),
                port: 80,
                metadata: Metadata::new(),
            },
        ),
        // V6 (1), then the 16 bytes of ::1, network order.
        r#"03 01 02 "db" 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 50 00"#,
    );
    check(
        ClientFrame::new(
            3,
            Request::Register {
                service_type: "db".into(),
                ip: Ipv4Addr::new(192, 251, 255, 253).into(),
                port: 65535,
                metadata: Metadata::new(),
            },
        ),
        // The octets of an address are plain bytes, never varints, even from 251 up.
        r#"03 01 02 "db" 00 c0 fb ff fd fb ff ff 00"#,
    );
    check(
        ClientFrame::new(4, Request::Heartbeat { id: id() }),
        &format!("04 02 {ID_WIRE}"),
    );
    check(
        ClientFrame::new(5, Request::Deregister { id: id() }),
        &format!("05 03 {ID_WIRE}"),
    );
    check(
        ClientFrame::new(
            6,
            Request::Query {
                service_type: "billing".into(),
            },
        ),
        r#"06 04 07 "billing""#,
    );
    check(ClientFrame::new(7, Request::Ping), "07 05");
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
            },
        ),
        r#"01 01 01 "t" 00 7f 00 00 01 01 03 04 "Zone" 01 "b" 04 "zone" 01 "a" 02 c3 a9 01 "c""#,
    );
}

/// What a peer sends need not be sorted: keys in any order decode, and of a key sent twice
/// the last value wins.
#[test]
fn metadata_from_other_implementations() {
    let unsorted =
        bytes(r#"01 01 01 "t" 00 7f 00 00 01 01 03 01 "b" 01 "1" 01 "a" 01 "2" 01 "b" 01 "3""#);
    let frame: ClientFrame = encoding::decode(&unsorted).expect("decodes");
    let Request::Register { metadata, .. } = frame.request else {
        panic!("not a register: {frame:?}");
    };
    assert_eq!(
        metadata,
        BTreeMap::from([("a".into(), "2".into()), ("b".into(), "3".into())])
    );
}

fn limits() -> Limits {
    Limits {
        max_frame_bytes: 65536,
        max_instances: 1_000_000,
        max_instances_per_type: 100_000,
        max_type_bytes: 255,
        max_metadata_pairs: 64,
        max_metadata_key_bytes: 128,
        max_metadata_value_bytes: 512,
    }
}

#[test]
fn welcome() {
    check(
        ServerFrame::new(
            1,
            Response::Welcome {
                protocol_version: 1,
                ttl: Duration::from_secs(5),
                limits: limits(),
            },
        ),
        // id 1, Welcome (0), version 1, ttl (secs 5, nanos 0), then the limits in order:
        // 65536, 1000000, 100000, 255, 64, 128, 512.
        "01 00 01 05 00 \
         fc 00 00 01 00  fc 40 42 0f 00  fc a0 86 01 00  fb ff 00  40  80  fb 00 02",
    );
    // A duration is whole seconds (u64) then nanoseconds (u32): 1.5 s.
    check(
        ServerFrame::new(
            1,
            Response::Welcome {
                protocol_version: 1,
                ttl: Duration::from_millis(1500),
                limits: limits(),
            },
        ),
        "01 00 01 01 fc 00 65 cd 1d \
         fc 00 00 01 00  fc 40 42 0f 00  fc a0 86 01 00  fb ff 00  40  80  fb 00 02",
    );
}

#[test]
fn short_responses() {
    check(
        ServerFrame::new(2, Response::Registered { id: id() }),
        &format!("02 01 {ID_WIRE}"),
    );
    check(ServerFrame::new(3, Response::Ok), "03 02");
    check(ServerFrame::new(4, Response::NotFound), "04 03");
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
}

#[test]
fn instances() {
    let instance = |millis: i64| Instance {
        id: id(),
        service_type: "billing".into(),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
        port: 8080,
        metadata: BTreeMap::from([("zone".into(), "eu-1".into())]),
        last_heartbeat: DateTime::from_timestamp_millis(millis).expect("in range"),
    };
    check(
        ServerFrame::new(
            6,
            Response::Instances {
                instances: vec![instance(1_700_000_000_123)],
                more: false,
            },
        ),
        // id 6, Instances (4), one instance: id, type, ip, port, metadata, then
        // 1700000000123 ms zigzagged to 3400000000246 = 0x0317_9fca_d0f6 (fd + u64),
        // then more = false.
        &format!(
            r#"06 04 01 {ID_WIRE} 07 "billing" 00 0a 00 00 05 fb 90 1f 01 04 "zone" 04 "eu-1"
               fd f6 d0 ca 9f 17 03 00 00 00"#
        ),
    );
    check(
        ServerFrame::new(
            6,
            Response::Instances {
                instances: vec![],
                more: true,
            },
        ),
        "06 04 00 01",
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
                instances: vec![Instance {
                    id: Uuid::nil(),
                    service_type: String::new(),
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
                "01 04 01 10 {} 00 00 7f 00 00 01 01 00 {spec} 00",
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
        Response::Instances {
            instances: vec![Instance {
                id: Uuid::nil(),
                service_type: String::new(),
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
    let Response::Instances { instances, .. } = back.response else {
        panic!("not instances");
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
