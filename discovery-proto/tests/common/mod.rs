//! Proptest strategies for every message of the protocol, shared by the test files.
//!
//! Each test file uses only some of them.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use discovery_proto::{
    ClientFrame, Entry, ErrorKind, Instance, Limits, Metadata, RemoveReason, Request, RequestId,
    Response, Revision, ServerFrame, TypeCount,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use uuid::Uuid;

/// Every error kind, in variant order. `error_kind_index` fails to compile when a kind is
/// added, which is the cue to add it here too.
pub const ERROR_KINDS: [ErrorKind; 21] = [
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
    ErrorKind::InvalidTtl,
    ErrorKind::Unavailable,
    ErrorKind::WatchedTypeLimit,
    ErrorKind::WatchBytesLimit,
    ErrorKind::RegistryBytesLimit,
    ErrorKind::PeerConnectionLimit,
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
        ErrorKind::InvalidTtl => 15,
        ErrorKind::Unavailable => 16,
        ErrorKind::WatchedTypeLimit => 17,
        ErrorKind::WatchBytesLimit => 18,
        ErrorKind::RegistryBytesLimit => 19,
        ErrorKind::PeerConnectionLimit => 20,
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
        Request::ListTypes => 8,
        Request::Update { .. } => 9,
    }
}

/// The variant index of a response on the wire (an exhaustive match, no wildcard).
pub fn response_index(response: &Response) -> u8 {
    match response {
        Response::Welcome { .. } => 0,
        Response::Registered { .. } => 1,
        Response::Ok => 2,
        Response::NotFound { .. } => 3,
        Response::Instances { .. } => 4,
        Response::Pong => 5,
        Response::Error { .. } => 6,
        Response::Snapshot { .. } => 7,
        Response::Resumed { .. } => 8,
        Response::Added { .. } => 9,
        Response::Removed { .. } => 10,
        Response::Types { .. } => 11,
        Response::Updated { .. } => 12,
        Response::Done { .. } => 13,
        Response::Throttled { .. } => 14,
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
    (text(20), entry()).prop_map(|(service_type, entry)| Instance::from_entry(service_type, entry))
}

/// An instance without its type, as `Instances` and `Snapshot` carry it.
pub fn entry() -> impl Strategy<Value = Entry> {
    (uuid(), ip(), any::<u16>(), metadata(), timestamp()).prop_map(
        |(id, ip, port, metadata, last_heartbeat)| Entry {
            id,
            ip,
            port,
            metadata,
            last_heartbeat,
        },
    )
}

pub fn type_count() -> impl Strategy<Value = TypeCount> {
    (text(20), any::<u64>()).prop_map(|(service_type, instances)| TypeCount {
        service_type,
        instances,
    })
}

/// Every field of `Limits`, each optional one `None` (off) a quarter of the time.
pub fn limits() -> impl Strategy<Value = Limits> {
    use proptest::option::of;
    let always = (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
    );
    let optional = (
        of(any::<u32>()),
        of(any::<u64>()),
        of(any::<u64>()),
        of(any::<u64>()),
        of(any::<u64>()),
        of(duration()),
        of(any::<u32>()),
        of(any::<u32>()),
    );
    (always, optional).prop_map(
        |(
            (
                max_frame_bytes,
                max_instances,
                max_instances_per_type,
                max_type_bytes,
                max_metadata_pairs,
                max_metadata_key_bytes,
                max_metadata_value_bytes,
                max_connections,
                max_watches_per_connection,
            ),
            (
                max_connections_per_peer,
                max_watched_types,
                max_watch_bytes,
                max_answer_buffer_bytes,
                max_registry_bytes,
                write_timeout,
                register_rate,
                register_burst,
            ),
        )| Limits {
            max_frame_bytes,
            max_instances,
            max_instances_per_type,
            max_type_bytes,
            max_metadata_pairs,
            max_metadata_key_bytes,
            max_metadata_value_bytes,
            max_connections,
            max_watches_per_connection,
            max_connections_per_peer,
            max_watched_types,
            max_watch_bytes,
            max_answer_buffer_bytes,
            max_registry_bytes,
            write_timeout,
            register_rate,
            register_burst,
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

/// A `min_revision` (or a `since`): absent half the time.
pub fn maybe_revision() -> impl Strategy<Value = Option<Revision>> {
    proptest::option::of(revision())
}

pub fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), text(20)).prop_map(|(protocol_version, client_name)| Request::Hello {
            protocol_version,
            client_name,
        }),
        (
            text(20),
            ip(),
            any::<u16>(),
            metadata(),
            proptest::option::of(duration())
        )
            .prop_map(|(service_type, ip, port, metadata, ttl)| {
                Request::Register {
                    service_type,
                    ip,
                    port,
                    metadata,
                    ttl,
                }
            }),
        (uuid(), maybe_revision())
            .prop_map(|(id, min_revision)| Request::Heartbeat { id, min_revision }),
        (uuid(), maybe_revision())
            .prop_map(|(id, min_revision)| Request::Deregister { id, min_revision }),
        (text(20), maybe_revision()).prop_map(|(service_type, min_revision)| Request::Query {
            service_type,
            min_revision
        }),
        Just(Request::Ping),
        (text(20), maybe_revision(), maybe_revision()).prop_map(
            |(service_type, since, min_revision)| Request::Watch {
                service_type,
                since,
                min_revision,
            }
        ),
        request_id().prop_map(|watch| Request::Unwatch { watch }),
        Just(Request::ListTypes),
        (uuid(), metadata(), maybe_revision()).prop_map(|(id, metadata, min_revision)| {
            Request::Update {
                id,
                metadata,
                min_revision,
            }
        }),
    ]
}

pub fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (
            any::<u16>(),
            (duration(), duration(), duration()),
            (duration(), duration()),
            limits()
        )
            .prop_map(
                |(
                    protocol_version,
                    (ttl, min_ttl, max_ttl),
                    (idle_timeout, frame_timeout),
                    limits,
                )| {
                    Response::Welcome {
                        protocol_version,
                        ttl,
                        min_ttl,
                        max_ttl,
                        idle_timeout,
                        frame_timeout,
                        limits,
                    }
                }
            ),
        (uuid(), duration(), revision()).prop_map(|(id, ttl, revision)| Response::Registered {
            id,
            ttl,
            revision
        }),
        Just(Response::Ok),
        proptest::option::of(remove_reason()).prop_map(|reason| Response::NotFound { reason }),
        (
            text(20),
            proptest::option::of(any::<u64>()),
            vec(entry(), 0..4),
            any::<bool>()
        )
            .prop_map(
                |(service_type, stale_ms, instances, more)| Response::Instances {
                    service_type,
                    stale_ms,
                    instances,
                    more,
                }
            ),
        Just(Response::Pong),
        (error_kind(), text(40)).prop_map(|(kind, message)| Response::Error { kind, message }),
        (revision(), any::<bool>(), vec(entry(), 0..4), any::<bool>()).prop_map(
            |(revision, reset, instances, more)| Response::Snapshot {
                revision,
                reset,
                instances,
                more,
            }
        ),
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
        (vec(type_count(), 0..6), any::<bool>())
            .prop_map(|(types, more)| Response::Types { types, more }),
        (revision(), instance())
            .prop_map(|(revision, instance)| Response::Updated { revision, instance }),
        revision().prop_map(|revision| Response::Done { revision }),
        any::<u64>().prop_map(|retry_after_ms| Response::Throttled { retry_after_ms }),
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
    prop::sample::select(REMOVE_REASONS.to_vec())
}

/// Every remove reason, in variant order (see `remove_reason_index`).
pub const REMOVE_REASONS: [RemoveReason; 3] = [
    RemoveReason::Deregistered,
    RemoveReason::Expired,
    RemoveReason::Replaced,
];

/// The variant index of a remove reason on the wire (an exhaustive match, no wildcard).
pub fn remove_reason_index(reason: RemoveReason) -> u8 {
    match reason {
        RemoveReason::Deregistered => 0,
        RemoveReason::Expired => 1,
        RemoveReason::Replaced => 2,
    }
}
