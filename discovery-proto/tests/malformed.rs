//! Payloads that are not valid messages decode to an error, never to a panic or a huge
//! allocation: truncations, trailing bytes, unknown variants, lying lengths, random bytes.
//!
//! This test binary counts what each thread allocates (`allocation-counter` is its global
//! allocator), so that what a lying length makes the decoder allocate is asserted in bytes.

mod common;

use common::{client_frame, server_frame};
use discovery_proto::encoding::{self, Frame};
use discovery_proto::{ClientFrame, Error, RequestId, ServerFrame};
use proptest::collection::vec;
use proptest::prelude::*;

/// The number of bytes the varint of `id` takes.
fn varint_len(id: RequestId) -> usize {
    match id {
        0..=250 => 1,
        251..=0xFFFF => 3,
        0x1_0000..=0xFFFF_FFFF => 5,
        _ => 9,
    }
}

/// Every strict prefix of `payload` fails to decode as `F`, with the request id when the
/// prefix holds all of it.
fn check_prefixes<F: Frame + std::fmt::Debug>(
    payload: &[u8],
    request_id: RequestId,
) -> Result<(), TestCaseError> {
    for end in 0..payload.len() {
        match encoding::decode::<F>(&payload[..end]) {
            Err(Error::Malformed {
                request_id: peeked, ..
            }) => {
                let expected = (end >= varint_len(request_id)).then_some(request_id);
                prop_assert_eq!(peeked, expected, "prefix of {} bytes", end);
            }
            other => prop_assert!(false, "prefix of {end} bytes decoded to {other:?}"),
        }
    }
    Ok(())
}

/// A valid payload followed by `garbage` is `TrailingBytes` with the message's id.
fn check_trailing<F: Frame + std::fmt::Debug>(
    payload: &[u8],
    garbage: &[u8],
    request_id: RequestId,
) -> Result<(), TestCaseError> {
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(garbage);
    match encoding::decode::<F>(&bytes) {
        Err(e @ Error::TrailingBytes { .. }) => {
            prop_assert!(!e.is_fatal());
            prop_assert_eq!(e.request_id(), Some(request_id));
            let Error::TrailingBytes { extra, .. } = e else {
                unreachable!()
            };
            prop_assert_eq!(extra, garbage.len());
        }
        other => prop_assert!(false, "decoded to {other:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn truncated_client_frames_are_errors(frame in client_frame()) {
        check_prefixes::<ClientFrame>(&encoding::encode(&frame)?, frame.request_id)?;
    }

    #[test]
    fn truncated_server_frames_are_errors(frame in server_frame()) {
        check_prefixes::<ServerFrame>(&encoding::encode(&frame)?, frame.request_id)?;
    }

    #[test]
    fn trailing_bytes_after_a_client_frame(frame in client_frame(),
                                           garbage in vec(any::<u8>(), 1..32)) {
        check_trailing::<ClientFrame>(&encoding::encode(&frame)?, &garbage, frame.request_id)?;
    }

    #[test]
    fn trailing_bytes_after_a_server_frame(frame in server_frame(),
                                           garbage in vec(any::<u8>(), 1..32)) {
        check_trailing::<ServerFrame>(&encoding::encode(&frame)?, &garbage, frame.request_id)?;
    }

    /// Random bytes decode to something or to an error, as either kind of frame.
    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        check_no_panic(&bytes)?;
    }

    /// Valid frames with a few bytes overwritten reach deeper into the decoder than random
    /// bytes do.
    #[test]
    fn mutated_frames_never_panic(frame in server_frame(),
                                  request in client_frame(),
                                  edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        for mut bytes in [encoding::encode(&frame)?, encoding::encode(&request)?] {
            for (at, byte) in &edits {
                let i = at.index(bytes.len());
                bytes[i] = *byte;
            }
            check_no_panic(&bytes)?;
        }
    }
}

/// Decodes `bytes` both ways; whatever decodes must survive its own round trip. (The bytes
/// themselves need not come back: the decoder accepts over-long varints.)
fn check_no_panic(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(frame) = encoding::decode::<ClientFrame>(bytes) {
        let again: ClientFrame = encoding::decode(&encoding::encode(&frame)?)?;
        prop_assert_eq!(again, frame);
    }
    if let Ok(frame) = encoding::decode::<ServerFrame>(bytes) {
        let again: ServerFrame = encoding::decode(&encoding::encode(&frame)?)?;
        prop_assert_eq!(again, frame);
    }
    Ok(())
}

/// Decodes `payload`, expecting a non-fatal `Malformed` error carrying `request_id`.
fn expect_malformed<F: Frame + std::fmt::Debug>(payload: &[u8], request_id: Option<RequestId>) {
    match encoding::decode::<F>(payload) {
        Err(e @ Error::Malformed { .. }) => {
            assert!(!e.is_fatal(), "{e}");
            assert_eq!(e.request_id(), request_id, "{e}");
        }
        Err(other) => panic!(
            "{:02x?}: wrong error {other:?}",
            &payload[..payload.len().min(64)]
        ),
        Ok(frame) => {
            let shown = format!("{frame:?}");
            panic!(
                "{:02x?} decoded to {}",
                &payload[..payload.len().min(64)],
                &shown[..shown.len().min(200)]
            );
        }
    }
}

#[test]
fn unknown_request_variant() {
    // Request id 7, then variant 10: Request has variants 0 to 9.
    expect_malformed::<ClientFrame>(&[7, 10], Some(7));
    // Request id 300 (251 = u16 follows), variant 10.
    expect_malformed::<ClientFrame>(&[251, 0x2c, 0x01, 10], Some(300));
    // A variant index as large as a varint goes.
    expect_malformed::<ClientFrame>(
        &[1, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        Some(1),
    );
}

#[test]
fn unknown_response_variant() {
    // Response has variants 0 to 14.
    expect_malformed::<ServerFrame>(&[9, 15], Some(9));
    expect_malformed::<ServerFrame>(&[9, 251, 0x00, 0x01], Some(9));
}

#[test]
fn unknown_error_kind() {
    // Response::Error (6) with kind 21: ErrorKind has kinds 0 to 20.
    expect_malformed::<ServerFrame>(&[1, 6, 21, 0], Some(1));
}

#[test]
fn unknown_remove_reason() {
    // NotFound (3) with a reason of variant 3: RemoveReason has 0 to 2.
    expect_malformed::<ServerFrame>(&[1, 3, 1, 3], Some(1));
    // NotFound with no option byte at all, as version 1 sent it.
    expect_malformed::<ServerFrame>(&[1, 3], Some(1));
}

#[test]
fn unknown_ip_version() {
    // Register { service_type: "a", ip: variant 2 ... }: IpAddr has V4 (0) and V6 (1).
    expect_malformed::<ClientFrame>(&[1, 1, 1, b'a', 2, 127, 0, 0, 1, 80, 0, 0], Some(1));
    // The same bytes with V4 decode: it was the variant.
    assert!(encoding::decode::<ClientFrame>(&[1, 1, 1, b'a', 0, 127, 0, 0, 1, 80, 0, 0]).is_ok());
}

/// An option is `00` (none) or `01` and the value; any other tag is an error, whichever
/// option it is.
#[test]
fn option_tags_other_than_0_and_1() {
    // Query "a" with a `min_revision` tag of 2.
    expect_malformed::<ClientFrame>(&[1, 4, 1, b'a', 2, 0, 0], Some(1));
    // Register "a" 127.0.0.1:80 {} with a `ttl` tag of 2.
    expect_malformed::<ClientFrame>(&[1, 1, 1, b'a', 0, 127, 0, 0, 1, 80, 0, 2, 5, 0], Some(1));
    // Instances "a" with a `stale_ms` tag of 2.
    expect_malformed::<ServerFrame>(&[1, 4, 1, b'a', 2, 0, 0, 0], Some(1));
    // With a tag of 1 (and a value) or 0 instead, the same bytes decode: it was the tag.
    assert!(encoding::decode::<ClientFrame>(&[1, 4, 1, b'a', 1, 0, 0]).is_ok());
    assert!(
        encoding::decode::<ClientFrame>(&[1, 1, 1, b'a', 0, 127, 0, 0, 1, 80, 0, 1, 5, 0]).is_ok()
    );
    assert!(encoding::decode::<ServerFrame>(&[1, 4, 1, b'a', 1, 0, 0, 0]).is_ok());
}

/// A duration whose seconds and nanoseconds together overflow is an error, not a panic.
/// (Nanoseconds of a second or more that do not overflow are carried into the seconds:
/// `docs/PROTOCOL.md` tells senders to keep them below 1,000,000,000.)
#[test]
fn durations_that_overflow() {
    use discovery_proto::Request;
    // Register "a" 127.0.0.1:80 {} ttl { secs: u64::MAX, nanos: 1,000,000,000 }.
    let mut register = vec![1, 1, 1, b'a', 0, 127, 0, 0, 1, 80, 0, 1, 253];
    register.extend(u64::MAX.to_le_bytes());
    register.push(252);
    register.extend(1_000_000_000u32.to_le_bytes());
    expect_malformed::<ClientFrame>(&register, Some(1));
    // The same with 1 s in nanoseconds and 4 s: read as 5 s.
    let mut carried = vec![1, 1, 1, b'a', 0, 127, 0, 0, 1, 80, 0, 1, 4, 252];
    carried.extend(1_000_000_000u32.to_le_bytes());
    let frame: ClientFrame = encoding::decode(&carried).expect("decodes");
    let Request::Register { ttl, .. } = frame.request else {
        panic!("not a register: {frame:?}");
    };
    assert_eq!(ttl, Some(std::time::Duration::from_secs(5)));
}

/// Frames of version 1 whose layout changed do not decode as version 2, so that a peer
/// of the other version is never misread: it gets `MalformedFrame` (after a `Hello`, which
/// did not change and is refused by version). The bytes are those of version 1's
/// document.
#[test]
fn version_1_frames_that_changed_do_not_decode() {
    let v1 = |spec: &[u8]| spec.to_vec();
    let id = [
        0x10, 0x35, 0x41, 0xfb, 0x90, 0x3f, 0x71, 0x4c, 0x61, 0xac, 0xc5, 0x57, 0xf2, 0x33, 0x23,
        0xc3, 0xee,
    ];
    // Register (no ttl), Heartbeat and Deregister (no min_revision), Query, Watch.
    let mut register = v1(&[2, 1, 7]);
    register.extend(b"billing");
    register.extend([0, 10, 0, 0, 5, 0xfb, 0x90, 0x1f, 1, 4]);
    register.extend(b"zone");
    register.push(4);
    register.extend(b"eu-1");
    expect_malformed::<ClientFrame>(&register, Some(2));
    for variant in [2, 3] {
        let mut heartbeat = v1(&[3, variant]);
        heartbeat.extend(id);
        expect_malformed::<ClientFrame>(&heartbeat, Some(3));
    }
    let mut query = v1(&[4, 4, 7]);
    query.extend(b"billing");
    expect_malformed::<ClientFrame>(&query, Some(4));
    let mut watch = v1(&[5, 6, 7]);
    watch.extend(b"billing");
    watch.push(0);
    expect_malformed::<ClientFrame>(&watch, Some(5));

    // Welcome (7 limits, no TTL bounds), Registered (the id alone), NotFound, Instances.
    let welcome = [
        1, 0, 1, 5, 0, 0xfc, 0, 0, 1, 0, 0xfc, 0x40, 0x42, 0x0f, 0, 0xfc, 0xa0, 0x86, 1, 0, 0xfb,
        0xff, 0, 0x40, 0x80, 0xfb, 0, 2,
    ];
    expect_malformed::<ServerFrame>(&welcome, Some(1));
    let mut registered = v1(&[2, 1]);
    registered.extend(id);
    expect_malformed::<ServerFrame>(&registered, Some(2));
    expect_malformed::<ServerFrame>(&[3, 3], Some(3));
    let mut instances = v1(&[4, 4, 1]);
    instances.extend(id);
    instances.push(7);
    instances.extend(b"billing");
    instances.extend([0, 10, 0, 0, 5, 0xfb, 0x90, 0x1f, 1, 4]);
    instances.extend(b"zone");
    instances.push(4);
    instances.extend(b"eu-1");
    instances.extend([0xfd, 0x8e, 0x78, 0x15, 0x54, 0x44, 0x03, 0, 0, 0]);
    expect_malformed::<ServerFrame>(&instances, Some(4));
}

#[test]
fn empty_payload() {
    expect_malformed::<ClientFrame>(&[], None);
    expect_malformed::<ServerFrame>(&[], None);
}

#[test]
fn invalid_values_inside_known_variants() {
    // Query with a service type that is not UTF-8.
    expect_malformed::<ClientFrame>(&[1, 4, 2, 0xc3, 0x28], Some(1));
    // Instances { "", no stale_ms, instances: [], more: 2 }: a bool is 0 or 1.
    expect_malformed::<ServerFrame>(&[1, 4, 0, 0, 0, 2], Some(1));
    // Snapshot { revision 1-2, reset: 2, ... }.
    expect_malformed::<ServerFrame>(&[1, 7, 1, 2, 2, 0, 0], Some(1));
    // Heartbeat with a 15-byte id: a uuid is 16 bytes.
    let mut heartbeat = vec![1, 2, 15];
    heartbeat.extend([0xab; 15]);
    expect_malformed::<ClientFrame>(&heartbeat, Some(1));
    // Hello with its u16 protocol version written with the u32 marker (252).
    expect_malformed::<ClientFrame>(&[1, 0, 252, 1, 0, 0, 0, 0], Some(1));
    // A request id over u64 is no varint at all (254 is reserved for u128).
    expect_malformed::<ClientFrame>(
        &[254, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
        None,
    );
}

/// Over-long varints (a small value written with a wider marker) are accepted and read as
/// the value they carry; `docs/PROTOCOL.md` tells senders not to write them.
#[test]
fn over_long_varints_are_read_as_their_value() {
    use discovery_proto::Request;
    // Request id 5 as 251 + u16, as 252 + u32 and as 253 + u64.
    for id in [
        &[251, 5, 0][..],
        &[252, 5, 0, 0, 0],
        &[253, 5, 0, 0, 0, 0, 0, 0, 0],
    ] {
        let mut payload = id.to_vec();
        payload.push(5);
        let frame: ClientFrame = encoding::decode(&payload).expect("decodes");
        assert_eq!(frame, ClientFrame::new(5, Request::Ping));
    }
    // A variant index (a u32) as 251 + u16.
    let frame: ClientFrame = encoding::decode(&[1, 251, 5, 0]).expect("decodes");
    assert_eq!(frame, ClientFrame::new(1, Request::Ping));
}

/// The most a failed decode may hold at once: the text of its error and what formatting
/// it takes. Nothing in it scales with what the payload claims.
const ERROR_ROOM: u64 = 512;

/// Decodes `payload` as `F`, expecting `Malformed` with `request_id`; returns the error's
/// reason and the most bytes the decode held at once, on this thread.
fn malformed_peak<F: Frame + std::fmt::Debug>(
    payload: &[u8],
    request_id: Option<RequestId>,
) -> (String, u64) {
    let mut outcome = None;
    let info = allocation_counter::measure(|| {
        outcome = Some(encoding::decode::<F>(payload));
    });
    match outcome {
        Some(Err(Error::Malformed {
            request_id: peeked,
            reason,
        })) => {
            assert_eq!(peeked, request_id, "{reason}");
            (reason, info.bytes_max)
        }
        other => panic!("{payload:02x?}: expected Malformed, got {other:?}"),
    }
}

/// Asserts that decoding `payload` fails as `Malformed` holding at most [`ERROR_ROOM`]
/// bytes, and returns the reason.
fn refused_within_room<F: Frame + std::fmt::Debug>(payload: &[u8]) -> String {
    let (reason, peak) = malformed_peak::<F>(payload, Some(1));
    assert!(
        peak <= ERROR_ROOM,
        "{:02x?} ({} bytes): the decoder held {peak} bytes at once ({reason})",
        &payload[..payload.len().min(32)],
        payload.len()
    );
    reason
}

/// A varint of `n` as bincode writes it, in its widest form (253 and a u64) when `wide`.
fn varint(n: u64, wide: bool) -> Vec<u8> {
    match n {
        0..=250 if !wide => vec![n as u8],
        _ if n <= u64::from(u32::MAX) && !wide => {
            let mut bytes = vec![252];
            bytes.extend((n as u32).to_le_bytes());
            bytes
        }
        _ => {
            let mut bytes = vec![253];
            bytes.extend(n.to_le_bytes());
            bytes
        }
    }
}

/// The counter sees the decoder's allocations: a string of 1,000 bytes that is there is
/// counted, and allocated once at its length (not zeroed at a claimed size first).
#[test]
fn the_allocation_counter_sees_the_decoder() {
    let mut query = vec![1, 4];
    query.extend(varint(1000, false));
    query.extend([b'x'; 1000]);
    query.push(0);
    let mut decoded = None;
    let info = allocation_counter::measure(|| {
        decoded = Some(encoding::decode::<ClientFrame>(&query));
    });
    assert!(matches!(decoded, Some(Ok(_))), "{decoded:?}");
    assert!(info.bytes_max >= 1000, "{info:?}");
    assert!(info.bytes_total < 1000 + ERROR_ROOM, "{info:?}");
}

/// Finding 7 of issue 15: a 14-byte frame (a 10-byte payload) whose string claims just
/// under the 4 MiB decode limit used to make the decoder allocate and zero the claimed
/// 4 MiB (about 290 µs of CPU). It is refused holding no more than an error's text,
/// whatever the claim, under the limit or over it.
#[test]
fn a_string_claiming_megabytes_allocates_nothing_for_it() {
    for claim in [
        1 << 10,
        1 << 20,
        (4 << 20) - 64,
        u64::from(u32::MAX),
        1 << 62,
    ] {
        // Query { service_type: a string of `claim` bytes, of which 3 are there }.
        let mut query = vec![1, 4];
        query.extend(varint(claim, claim > u64::from(u32::MAX)));
        query.extend(b"abc");
        if claim == (4 << 20) - 64 {
            assert_eq!(4 + query.len(), 14, "the frame of the finding");
        }
        let reason = refused_within_room::<ClientFrame>(&query);
        assert!(
            reason.contains("UnexpectedEnd") || reason.contains("LimitExceeded"),
            "{claim}: {reason}"
        );
    }
    // The same lie deeper down: a metadata key of an instance in an `Instances` answer.
    // Instances { "a", no stale_ms, [ Entry { id, 127.0.0.1:80, { key of 4 MiB - 64 } } ] }
    let mut instances = vec![1, 4, 1, b'a', 0, 1, 16];
    instances.extend([0xab; 16]);
    instances.extend([0, 127, 0, 0, 1, 80, 1]);
    instances.extend(varint((4 << 20) - 64, false));
    instances.extend(b"zone");
    refused_within_room::<ServerFrame>(&instances);
}

/// A list or a map that claims millions of items in a small payload is refused at once,
/// saying so, and nothing is reserved for the items: serde would otherwise reserve up to
/// 1 MiB for a claimed count before reading the first item.
#[test]
fn lists_and_maps_claiming_millions_allocate_nothing_for_them() {
    for claim in [3_000_000, u64::from(u32::MAX), 1 << 63] {
        let wide = claim > u64::from(u32::MAX);
        let count = varint(claim, wide);
        let with = |head: &[u8], tail: &[u8]| {
            let mut payload = head.to_vec();
            payload.extend(&count);
            payload.extend(tail);
            payload
        };
        let id = [16; 17];
        let mut update = vec![1, 9];
        update.extend(id);
        let client = [
            // Register "a" 127.0.0.1:80 with `claim` metadata pairs.
            with(
                &[1, 1, 1, b'a', 0, 127, 0, 0, 1, 80],
                &[1, b'k', 1, b'v', 0],
            ),
            // Update of an id with `claim` metadata pairs.
            with(&update, &[1, b'k', 1, b'v']),
        ];
        let server = [
            // Instances of "a" with `claim` entries.
            with(&[1, 4, 1, b'a', 0], &[0]),
            // Snapshot at revision 1-2, not a reset, with `claim` entries.
            with(&[1, 7, 1, 2, 0], &[0]),
            // Types with `claim` types.
            with(&[1, 11], &[1, b'a', 1, 0]),
        ];
        for payload in &client {
            let reason = refused_within_room::<ClientFrame>(payload);
            assert!(
                reason.contains(&format!("map of {claim} items cannot fit in a payload of")),
                "{reason}"
            );
        }
        for payload in &server {
            let reason = refused_within_room::<ServerFrame>(payload);
            assert!(
                reason.contains(&format!("list of {claim} items cannot fit in a payload of")),
                "{reason}"
            );
        }
    }
}

/// A count that the payload could hold but does not is refused when the items run out,
/// having reserved nothing for the missing ones: a `Types` frame that claims as many types
/// as it has bytes, with one there.
#[test]
fn a_count_within_the_payload_but_short_of_items() {
    let mut types = vec![1, 11, 251];
    types.extend(600u16.to_le_bytes());
    types.extend([1, b'a', 1]);
    types.extend([0xff; 590]);
    let (reason, peak) = malformed_peak::<ServerFrame>(&types, Some(1));
    assert!(peak <= ERROR_ROOM + 256, "held {peak} bytes ({reason})");
}

/// A last-heartbeat time chrono cannot represent is an error, not a panic.
#[test]
fn timestamp_out_of_range() {
    let id = [0x10; 17];
    for millis in [i64::MAX, i64::MIN] {
        // Instances { "a", None, [ Entry { id, V4 127.0.0.1, port 80, {}, millis } ], false }
        let mut payload = vec![1, 4, 1, b'a', 0, 1];
        payload.extend(id);
        payload.extend([0, 127, 0, 0, 1, 80, 0, 253]);
        let zigzag = ((millis << 1) ^ (millis >> 63)) as u64;
        payload.extend(zigzag.to_le_bytes());
        payload.push(0);
        expect_malformed::<ServerFrame>(&payload, Some(1));
        // The same frame with a time in range decodes: it was the time.
        let mut fine = payload.clone();
        let at = fine.len() - 9;
        fine[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(
            encoding::decode::<ServerFrame>(&fine).is_ok(),
            "{fine:02x?}"
        );
    }
}
