//! Proptest strategies for every message of the protocol, shared by the test files.
//!
//! Each test file uses only some of them.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use discovery_proto::{
    ClientFrame, ErrorKind, Instance, Limits, Metadata, RemoveReason, Request, RequestId, Response,
    Revision, ServerFrame,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use uuid::Uuid;

/// Every error kind, in variant order. `error_kind_index` fails to compile when a kind is
/// added, which is the cue to add it here too.
pub const ERROR_KINDS: [ErrorKind; 15] = [
    ErrorKind::UnsupportedVersion,
    ErrorKind::HelloRequired,
    ErrorKind::UnexpectedHello,
    ErrorKind::MalformedFrame,
    ErrorKind::InvalidServiceType,
    ErrorKind::InvalidAddress,
    ErrorKind::InvalidPort,
    ErrorKind::InvalidMetadata,
    ErrorKind::InstanceLimit,
    ErrorKind::TypeLimit,
    ErrorKind::TooManyConnections,
    ErrorKind::ShuttingDown,
    ErrorKind::Internal,
    ErrorKind::WatchLimit,
    ErrorKind::DuplicateWatch,
];

/// The variant index of an error kind on the wire (an exhaustive match, no wildcard).
pub fn error_kind_index(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::UnsupportedVersion => 0,
        ErrorKind::HelloRequired => 1,
        ErrorKind::UnexpectedHello => 2,
        ErrorKind::MalformedFrame => 3,
        ErrorKind::InvalidServiceType => 4,
        ErrorKind::InvalidAddress => 5,
        ErrorKind::InvalidPort => 6,
        ErrorKind::InvalidMetadata => 7,
        ErrorKind::InstanceLimit => 8,
        ErrorKind::TypeLimit => 9,
        ErrorKind::TooManyConnections => 10,
        ErrorKind::ShuttingDown => 11,
        ErrorKind::Internal => 12,
        ErrorKind::WatchLimit => 13,
        ErrorKind::DuplicateWatch => 14,
    }
}

/// The variant index of a request on the wire (an exhaustive match, no wildcard).
pub fn request_index(request: &Request) -> u8 {
    match request {
        Request::Hello { .. } => 0,
        Request::Register { .. } => 1,
        Request::Heartbeat { .. } => 2,
        Request::Deregister { .. } => 3,
        Request::Query { .. } => 4,
        Request::Ping => 5,
        Request::Watch { .. } => 6,
        Request::Unwatch { .. } => 7,
    }
}

/// The variant index of a response on the wire (an exhaustive match, no wildcard).
pub fn response_index(response: &Response) -> u8 {
    match response {
        Response::Welcome { .. } => 0,
        Response::Registered { .. } => 1,
        Response::Ok => 2,
        Response::NotFound => 3,
        Response::Instances { .. } => 4,
        Response::Pong => 5,
        Response::Error { .. } => 6,
        Response::Snapshot { .. } => 7,
        Response::Resumed { .. } => 8,
        Response::Added { .. } => 9,
        Response::Removed { .. } => 10,
    }
}

/// Request ids: small ones (one varint byte and the boundaries around 251, 2^16, 2^32)
/// often, any u64 otherwise.
pub fn request_id() -> impl Strategy<Value = RequestId> {
    prop_oneof![
        0u64..300,
        prop::sample::select(vec![
            250,
            251,
            252,
            u64::from(u16::MAX),
            u64::from(u16::MAX) + 1,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ]),
        any::<u64>(),
    ]
}

/// Any UTF-8 text up to `max` characters, non-ASCII included.
pub fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max).prop_map(|chars| chars.into_iter().collect())
}

pub fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

pub fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

pub fn metadata() -> impl Strategy<Value = Metadata> {
    btree_map(text(12), text(24), 0..5)
}

/// Milliseconds from 1900 to 2200: negative ones exercise the zigzag encoding.
pub const MIN_MILLIS: i64 = -2_208_988_800_000;
/// See [`MIN_MILLIS`].
pub const MAX_MILLIS: i64 = 7_258_118_400_000;

/// A wall-clock time at millisecond precision, the precision the wire carries.
pub fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    (MIN_MILLIS..=MAX_MILLIS)
        .prop_map(|ms| DateTime::from_timestamp_millis(ms).expect("in chrono's range"))
}

pub fn instance() -> impl Strategy<Value = Instance> {
    (
        uuid(),
        text(20),
        ip(),
        any::<u16>(),
        metadata(),
        timestamp(),
    )
        .prop_map(
            |(id, service_type, ip, port, metadata, last_heartbeat)| Instance {
                id,
                service_type,
                ip,
                port,
                metadata,
                last_heartbeat,
            },
        )
}

pub fn limits() -> impl Strategy<Value = Limits> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                max_frame_bytes,
                max_instances,
                max_instances_per_type,
                max_type_bytes,
                max_metadata_pairs,
                max_metadata_key_bytes,
                max_metadata_value_bytes,
            )| Limits {
                max_frame_bytes,
                max_instances,
                max_instances_per_type,
                max_type_bytes,
                max_metadata_pairs,
                max_metadata_key_bytes,
                max_metadata_value_bytes,
            },
        )
}

/// Any duration a `Duration` can hold (whole seconds up to u64::MAX, nanoseconds below 1 s).
pub fn duration() -> impl Strategy<Value = Duration> {
    (any::<u64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Duration::new(secs, nanos))
}

pub fn error_kind() -> impl Strategy<Value = ErrorKind> {
    prop::sample::select(ERROR_KINDS.to_vec())
}

pub fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), text(20)).prop_map(|(protocol_version, client_name)| Request::Hello {
            protocol_version,
            client_name,
        }),
        (text(20), ip(), any::<u16>(), metadata()).prop_map(
            |(service_type, ip, port, metadata)| {
                Request::Register {
                    service_type,
                    ip,
                    port,
                    metadata,
                }
            }
        ),
        uuid().prop_map(|id| Request::Heartbeat { id }),
        uuid().prop_map(|id| Request::Deregister { id }),
        text(20).prop_map(|service_type| Request::Query { service_type }),
        Just(Request::Ping),
        (text(20), proptest::option::of(revision())).prop_map(|(service_type, since)| {
            Request::Watch {
                service_type,
                since,
            }
        }),
        request_id().prop_map(|watch| Request::Unwatch { watch }),
    ]
}

pub fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u16>(), duration(), limits()).prop_map(|(protocol_version, ttl, limits)| {
            Response::Welcome {
                protocol_version,
                ttl,
                limits,
            }
        }),
        uuid().prop_map(|id| Response::Registered { id }),
        Just(Response::Ok),
        Just(Response::NotFound),
        (vec(instance(), 0..4), any::<bool>())
            .prop_map(|(instances, more)| Response::Instances { instances, more }),
        Just(Response::Pong),
        (error_kind(), text(40)).prop_map(|(kind, message)| Response::Error { kind, message }),
        (
            revision(),
            any::<bool>(),
            vec(instance(), 0..4),
            any::<bool>()
        )
            .prop_map(|(revision, reset, instances, more)| Response::Snapshot {
                revision,
                reset,
                instances,
                more,
            }),
        revision().prop_map(|revision| Response::Resumed { revision }),
        (revision(), instance())
            .prop_map(|(revision, instance)| Response::Added { revision, instance }),
        (revision(), instance(), remove_reason()).prop_map(|(revision, instance, reason)| {
            Response::Removed {
                revision,
                instance,
                reason,
            }
        }),
    ]
}

pub fn client_frame() -> impl Strategy<Value = ClientFrame> {
    (request_id(), request()).prop_map(|(id, request)| ClientFrame::new(id, request))
}

pub fn server_frame() -> impl Strategy<Value = ServerFrame> {
    (request_id(), response()).prop_map(|(id, response)| ServerFrame::new(id, response))
}

pub fn revision() -> impl Strategy<Value = Revision> {
    (any::<u64>(), any::<u64>()).prop_map(|(incarnation, seq)| Revision { incarnation, seq })
}

pub fn remove_reason() -> impl Strategy<Value = RemoveReason> {
    prop::sample::select(vec![
        RemoveReason::Deregistered,
        RemoveReason::Expired,
        RemoveReason::Replaced,
    ])
}
