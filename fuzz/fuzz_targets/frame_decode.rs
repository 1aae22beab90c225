//! Arbitrary bytes as a payload and as a stream of frames: decoding never panics, whatever
//! decodes encodes again to the same message, and the codec's answer does not depend on
//! how the stream was cut into reads.
//!
//! Run from `fuzz/`: `cargo +nightly fuzz run frame_decode -- -runs=10000000`.

#![no_main]

use bytes::BytesMut;
use discovery_proto::codec::{ClientCodec, FrameCodec, ServerCodec};
use discovery_proto::encoding::{self, Frame};
use discovery_proto::{ClientFrame, MAX_FRAME_BYTES, ServerFrame};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// The smallest frame limit a server accepts: oversize lengths are then cheap to reach.
const SMALL_FRAME_BYTES: usize = 1024;

fuzz_target!(|data: &[u8]| {
    round_trip::<ClientFrame>(data);
    round_trip::<ServerFrame>(data);
    for max in [MAX_FRAME_BYTES, SMALL_FRAME_BYTES] {
        same_however_cut(ServerCodec::new(max), ServerCodec::new(max), data);
        same_however_cut(ClientCodec::new(max), ClientCodec::new(max), data);
    }
});

/// A payload that decodes re-encodes to a message that decodes to the same value, and the
/// re-encoding is stable: encoding that value again gives the same bytes.
fn round_trip<F: Frame + PartialEq + std::fmt::Debug>(payload: &[u8]) {
    let Ok(frame) = encoding::decode::<F>(payload) else {
        return;
    };
    let bytes = encoding::encode(&frame).expect("a decoded frame encodes");
    let again: F = encoding::decode(&bytes).expect("an encoded frame decodes");
    assert_eq!(again, frame, "decode(encode(x)) == x");
    let bytes_again = encoding::encode(&again).expect("a decoded frame encodes");
    assert_eq!(bytes_again, bytes, "the encoding of a value is stable");
}

/// What a codec made of a stream, comparable across runs: each frame or the text of its
/// decoding error, and the text of the stream's error if it ended in one.
type Outcome<In> = Vec<Result<Result<In, String>, String>>;

/// Decodes `data` through `whole` in one buffer, and through `pieces` in reads of 1 to 7
/// bytes; both must give the same frames and the same end.
fn same_however_cut<In, Out>(
    mut whole: FrameCodec<In, Out>,
    mut pieces: FrameCodec<In, Out>,
    data: &[u8],
) where
    In: Frame + PartialEq + std::fmt::Debug,
{
    let at_once = decode_all(&mut whole, &mut BytesMut::from(data), true);

    let mut buf = BytesMut::new();
    let mut cut = Vec::new();
    let mut rest = data;
    let mut step = 0;
    while !rest.is_empty() {
        let take = (step % 7 + 1).min(rest.len());
        step += 1;
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        let done = decode_all(&mut pieces, &mut buf, rest.is_empty());
        let fatal = matches!(done.last(), Some(Err(_)));
        cut.extend(done);
        if fatal {
            break;
        }
    }
    if data.is_empty() {
        cut = decode_all(&mut pieces, &mut buf, true);
    }
    assert_eq!(cut, at_once, "the same frames whatever the reads");
}

/// Decodes every frame in `buf`, then the end of the stream if `eof`; a stream error ends
/// the list (the connection would end there).
fn decode_all<In, Out>(
    codec: &mut FrameCodec<In, Out>,
    buf: &mut BytesMut,
    eof: bool,
) -> Outcome<In>
where
    In: Frame,
{
    let mut out = Vec::new();
    loop {
        let before = buf.len();
        let item = if eof {
            codec.decode_eof(buf)
        } else {
            codec.decode(buf)
        };
        match item {
            Ok(Some(frame)) => {
                assert!(buf.len() < before, "a frame consumes bytes");
                out.push(Ok(frame.map_err(|e| {
                    assert!(!e.is_fatal(), "a payload error leaves the stream in step");
                    e.to_string()
                })));
            }
            Ok(None) => {
                if eof {
                    assert!(buf.is_empty() && !codec.mid_frame(), "a clean end is clean");
                }
                return out;
            }
            Err(e) => {
                out.push(Err(e.to_string()));
                return out;
            }
        }
    }
}
