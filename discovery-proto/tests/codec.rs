//! The `tokio_util` codec: framing across split and joined reads, oversize lengths, bad
//! payloads, the encoder's limit and the end of a stream.
//!
//! Needs the crate's `codec` feature: `cargo test -p discovery-proto --features codec`, or
//! `cargo test --workspace` (the server enables the feature, and Cargo unifies features
//! across the workspace).
#![cfg(feature = "codec")]

mod common;

use bytes::{BufMut, BytesMut};
use common::{client_frame, server_frame};
use discovery_proto::codec::{ClientCodec, ServerCodec};
use discovery_proto::encoding;
use discovery_proto::{ClientFrame, Error, MAX_FRAME_BYTES, Metadata, Request, ServerFrame};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

/// The bytes a codec writes for `frame`: the 4-byte big-endian length, then the payload.
fn wire_of_client(frame: &ClientFrame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    ClientCodec::default()
        .encode(frame, &mut buf)
        .expect("encodes");
    buf.to_vec()
}

fn wire_of_server(frame: &ServerFrame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    ServerCodec::default()
        .encode(frame, &mut buf)
        .expect("encodes");
    buf.to_vec()
}

/// A length prefix followed by `payload`.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Decodes one whole item, panicking on anything else.
fn decode_one<D: Decoder<Error = Error>>(codec: &mut D, buf: &mut BytesMut) -> D::Item {
    match codec.decode(buf) {
        Ok(Some(item)) => item,
        Ok(None) => panic!("incomplete with {} bytes buffered", buf.len()),
        Err(e) => panic!("stream error: {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A client frame written by the client's codec is read by the server's, and the other
    /// way round; the wire is the length then exactly `encoding::encode`'s payload.
    #[test]
    fn client_frames_through_the_codecs(frame in client_frame()) {
        let wire = wire_of_client(&frame);
        prop_assert_eq!(&wire[..], &framed(&encoding::encode(&frame)?)[..]);
        let mut buf = BytesMut::from(&wire[..]);
        let back = decode_one(&mut ServerCodec::default(), &mut buf)?;
        prop_assert_eq!(back, frame);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn server_frames_through_the_codecs(frame in server_frame()) {
        let wire = wire_of_server(&frame);
        prop_assert_eq!(&wire[..], &framed(&encoding::encode(&frame)?)[..]);
        let mut buf = BytesMut::from(&wire[..]);
        let back = decode_one(&mut ClientCodec::default(), &mut buf)?;
        prop_assert_eq!(back, frame);
        prop_assert!(buf.is_empty());
    }

    /// A frame arriving in two reads, split at any byte, is incomplete until its last byte
    /// and then decodes, whatever the split.
    #[test]
    fn split_at_every_byte(frame in client_frame()) {
        let wire = wire_of_client(&frame);
        for split in 0..wire.len() {
            let mut codec = ServerCodec::default();
            let mut buf = BytesMut::from(&wire[..split]);
            prop_assert!(
                matches!(codec.decode(&mut buf), Ok(None)),
                "decoded from the first {} of {} bytes", split, wire.len()
            );
            buf.extend_from_slice(&wire[split..]);
            let back = decode_one(&mut codec, &mut buf)?;
            prop_assert_eq!(&back, &frame, "split at {}", split);
            prop_assert!(buf.is_empty());
        }
    }

    /// Several frames in one read decode one by one, in order; a frame cut short at the
    /// end waits for the rest; bytes arriving one at a time decode the same.
    #[test]
    fn many_frames_in_one_buffer(frames in vec(server_frame(), 1..8), cut in 1usize..16) {
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend(wire_of_server(frame));
        }
        let mut codec = ClientCodec::default();
        let mut buf = BytesMut::from(&wire[..]);
        let next = wire_of_server(&frames[0]);
        let cut = cut.min(next.len() - 1);
        buf.extend_from_slice(&next[..cut]);
        for frame in &frames {
            prop_assert_eq!(&decode_one(&mut codec, &mut buf)?, frame);
        }
        prop_assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(&next[cut..]);
        prop_assert_eq!(&decode_one(&mut codec, &mut buf)?, &frames[0]);
        prop_assert!(buf.is_empty());

        // Byte by byte, with the same codec: its state must carry across calls.
        let mut decoded = Vec::new();
        for byte in &wire {
            buf.put_u8(*byte);
            if let Some(item) = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                decoded.push(item?);
            }
        }
        prop_assert_eq!(decoded, frames);
    }

    /// A payload that does not decode, within a valid length, is an item error: the stream
    /// is still in step and the next frame decodes.
    #[test]
    fn garbage_payload_then_a_good_frame(garbage in vec(any::<u8>(), 0..64),
                                          frame in client_frame()) {
        let mut buf = BytesMut::from(&framed(&garbage)[..]);
        buf.extend_from_slice(&wire_of_client(&frame));
        let mut codec = ServerCodec::default();
        match decode_one(&mut codec, &mut buf) {
            Ok(lucky) => prop_assert_eq!(encoding::decode::<ClientFrame>(&garbage)?, lucky),
            Err(e) => prop_assert!(!e.is_fatal(), "{}", e),
        }
        prop_assert_eq!(decode_one(&mut codec, &mut buf)?, frame);
    }
}

#[test]
fn bad_payloads_are_item_errors_with_the_request_id() {
    let mut codec = ServerCodec::default();
    // An empty payload, an unknown request (variant 10) and a frame with trailing bytes.
    let mut buf = BytesMut::from(&framed(&[])[..]);
    buf.extend(framed(&[42, 10]));
    buf.extend(framed(&[43, 5, 0xff]));
    buf.extend(framed(&[44, 5]));
    match decode_one(&mut codec, &mut buf) {
        Err(
            e @ Error::Malformed {
                request_id: None, ..
            },
        ) => assert!(!e.is_fatal()),
        other => panic!("{other:?}"),
    }
    match decode_one(&mut codec, &mut buf) {
        Err(
            e @ Error::Malformed {
                request_id: Some(42),
                ..
            },
        ) => assert!(!e.is_fatal()),
        other => panic!("{other:?}"),
    }
    match decode_one(&mut codec, &mut buf) {
        Err(
            e @ Error::TrailingBytes {
                request_id: 43,
                extra: 1,
            },
        ) => assert!(!e.is_fatal()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        decode_one(&mut codec, &mut buf).expect("decodes"),
        ClientFrame::new(44, Request::Ping)
    );
    assert!(buf.is_empty());
}

/// Asserts that the 4 bytes `header`, alone in the buffer, are refused as too large.
fn assert_too_large(codec: &mut ServerCodec, header: u32) {
    let mut buf = BytesMut::with_capacity(4);
    buf.put_u32(header);
    let capacity = buf.capacity();
    match codec.decode(&mut buf) {
        Err(e @ Error::FrameTooLarge { len, max }) => {
            assert!(e.is_fatal());
            assert_eq!(len, header as usize);
            assert_eq!(max, codec.max_frame_bytes());
        }
        other => panic!("length {header}: {other:?}"),
    }
    // Refused before anything was reserved for the payload.
    assert_eq!(buf.capacity(), capacity, "length {header}");
}

#[test]
fn oversize_lengths_are_fatal_before_the_payload() {
    let mut codec = ServerCodec::default();
    assert_eq!(codec.max_frame_bytes(), MAX_FRAME_BYTES);
    assert_too_large(&mut codec, u32::MAX);
    assert_too_large(&mut codec, MAX_FRAME_BYTES as u32 + 1);

    let mut small = ServerCodec::new(1024);
    assert_eq!(small.max_frame_bytes(), 1024);
    assert_too_large(&mut small, 1025);
    assert_too_large(&mut small, u32::MAX);

    // Exactly the limit is a frame like any other: the codec waits for its payload.
    let mut buf = BytesMut::new();
    buf.put_u32(1024);
    assert!(matches!(small.decode(&mut buf), Ok(None)));
}

/// The limit applies to each frame, including one after a good frame in the same read.
#[test]
fn oversize_length_after_a_good_frame() {
    let mut codec = ServerCodec::new(1024);
    let mut buf = BytesMut::from(&wire_of_client(&ClientFrame::new(1, Request::Ping))[..]);
    buf.put_u32(1025);
    assert_eq!(
        decode_one(&mut codec, &mut buf).expect("decodes"),
        ClientFrame::new(1, Request::Ping)
    );
    assert!(matches!(
        codec.decode(&mut buf),
        Err(Error::FrameTooLarge { len: 1025, .. })
    ));
}

#[test]
fn a_limit_over_the_protocol_maximum_is_capped() {
    assert_eq!(
        ServerCodec::new(usize::MAX).max_frame_bytes(),
        MAX_FRAME_BYTES
    );
    assert_eq!(
        ClientCodec::new(MAX_FRAME_BYTES + 1).max_frame_bytes(),
        MAX_FRAME_BYTES
    );
}

/// A query whose payload is exactly `len` bytes.
fn query_of_len(len: usize) -> ClientFrame {
    // id 1 (1 byte), Query (1), the string's length (3 bytes from 251 on), the string,
    // no `min_revision` (1).
    let text = len - 3 - if len - 4 < 251 { 1 } else { 3 };
    let frame = ClientFrame::new(
        1,
        Request::Query {
            service_type: "x".repeat(text),
            min_revision: None,
        },
    );
    assert_eq!(encoding::encoded_len(&frame), len);
    frame
}

#[test]
fn encoder_refuses_frames_over_its_limit_and_leaves_the_buffer_alone() {
    let mut codec = ClientCodec::new(1024);
    let mut buf = BytesMut::new();
    codec
        .encode(&ClientFrame::new(1, Request::Ping), &mut buf)
        .expect("encodes");
    let before = buf.clone();

    match codec.encode(&query_of_len(1025), &mut buf) {
        Err(Error::FrameTooLarge {
            len: 1025,
            max: 1024,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(buf, before);

    let big = ClientFrame::new(
        2,
        Request::Register {
            service_type: "t".into(),
            ip: [127, 0, 0, 1].into(),
            port: 1,
            metadata: Metadata::from([("k".into(), "v".repeat(MAX_FRAME_BYTES))]),
            ttl: None,
        },
    );
    assert!(matches!(
        ClientCodec::default().encode(&big, &mut buf),
        Err(Error::FrameTooLarge {
            max: MAX_FRAME_BYTES,
            ..
        })
    ));
    assert_eq!(buf, before);

    // Exactly the limit goes out, and comes back in through a codec of the same limit.
    codec.encode(&query_of_len(1024), &mut buf).expect("fits");
    assert_eq!(buf.len(), before.len() + 4 + 1024);
    let mut server = ServerCodec::new(1024);
    assert_eq!(
        decode_one(&mut server, &mut buf).expect("decodes"),
        ClientFrame::new(1, Request::Ping)
    );
    assert_eq!(
        decode_one(&mut server, &mut buf).expect("decodes"),
        query_of_len(1024)
    );
}

/// At the end of the stream, nothing left is a clean end; any part of a frame is an error.
#[test]
fn end_of_stream_mid_frame_is_an_error() {
    let wire = wire_of_client(&ClientFrame::new(
        1,
        Request::Query {
            service_type: "billing".into(),
            min_revision: None,
        },
    ));
    for cut in 1..wire.len() {
        let mut codec = ServerCodec::default();
        let mut buf = BytesMut::from(&wire[..cut]);
        // Whether or not it has looked at the bytes before the stream ended.
        if cut % 2 == 0 {
            assert!(matches!(codec.decode(&mut buf), Ok(None)));
        }
        match codec.decode_eof(&mut buf) {
            Err(e) => assert!(e.is_fatal(), "cut at {cut}: {e}"),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }

    let mut codec = ServerCodec::default();
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(codec.decode_eof(&mut buf), Ok(Some(Ok(_)))));
    assert!(matches!(codec.decode_eof(&mut buf), Ok(None)));
}
