//! Payloads that are not valid messages decode to an error, never to a panic or a huge
//! allocation: truncations, trailing bytes, unknown variants, lying lengths, random bytes.

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
    // Request id 7, then variant 8: Request has variants 0 to 7.
    expect_malformed::<ClientFrame>(&[7, 8], Some(7));
    // Request id 300 (251 = u16 follows), variant 8.
    expect_malformed::<ClientFrame>(&[251, 0x2c, 0x01, 8], Some(300));
    // A variant index as large as a varint goes.
    expect_malformed::<ClientFrame>(
        &[1, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        Some(1),
    );
}

#[test]
fn unknown_response_variant() {
    // Response has variants 0 to 10.
    expect_malformed::<ServerFrame>(&[9, 11], Some(9));
}

#[test]
fn unknown_error_kind() {
    // Response::Error (6) with kind 15: ErrorKind has kinds 0 to 14.
    expect_malformed::<ServerFrame>(&[1, 6, 15, 0], Some(1));
}

#[test]
fn unknown_ip_version() {
    // Register { service_type: "a", ip: variant 2 ... }: IpAddr has V4 (0) and V6 (1).
    expect_malformed::<ClientFrame>(&[1, 1, 1, b'a', 2, 127, 0, 0, 1, 80, 0], Some(1));
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
    // Instances { instances: [], more: 2 }: a bool is 0 or 1.
    expect_malformed::<ServerFrame>(&[1, 4, 0, 2], Some(1));
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

/// A length inside the payload that claims far more than the payload holds is refused
/// without first allocating what it claims. (A string or vector can never be longer than
/// the payload it is read from, and a payload is at most a frame.)
#[test]
fn lying_lengths_do_not_allocate() {
    let huge = [253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    // Query { service_type } with a string of 2^63 bytes.
    let mut query = vec![1, 4];
    query.extend(huge);
    expect_malformed::<ClientFrame>(&query, Some(1));
    // Register with 2^63 metadata pairs.
    let mut register = vec![1, 1, 1, b'a', 0, 127, 0, 0, 1, 80];
    register.extend(huge);
    expect_malformed::<ClientFrame>(&register, Some(1));
    // Instances with 2^63 instances.
    let mut instances = vec![1, 4];
    instances.extend(huge);
    expect_malformed::<ServerFrame>(&instances, Some(1));
}

/// A last-heartbeat time chrono cannot represent is an error, not a panic.
#[test]
fn timestamp_out_of_range() {
    let id = [0x10; 17];
    for millis in [i64::MAX, i64::MIN] {
        // Instances { [ Instance { id, "a", V4 127.0.0.1, port 80, {}, millis } ], false }
        let mut payload = vec![1, 4, 1];
        payload.extend(id);
        payload.extend([1, b'a', 0, 127, 0, 0, 1, 80, 0, 253]);
        let zigzag = ((millis << 1) ^ (millis >> 63)) as u64;
        payload.extend(zigzag.to_le_bytes());
        payload.push(0);
        expect_malformed::<ServerFrame>(&payload, Some(1));
    }
}
