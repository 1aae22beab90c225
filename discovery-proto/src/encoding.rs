//! The one place that turns messages into payload bytes and back.
//!
//! The payload encoding is bincode 2 through serde, with its standard configuration
//! (little-endian, variable-length integers) and a decode limit, so that a length inside a
//! payload can never make the decoder allocate much more than a frame could hold. Every call
//! to bincode in the project is in this module: moving to another encoding is a change to
//! this file alone.

use std::io::Write;

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Instance, MAX_FRAME_BYTES, RequestId, Response, ServerFrame};

/// bincode's decode limit, in bytes.
///
/// The limit is not a count of the bytes read: bincode charges it for what decoding claims
/// (string and integer reads, container lengths), so a full 64 KiB frame of small instances
/// goes over a limit of 64 KiB. What bounds the work of a frame is its length, which the
/// framing caps at [`MAX_FRAME_BYTES`]; this limit, 64 times that, is a second guard
/// against a length inside a payload that claims more than any frame could hold.
const DECODE_LIMIT: usize = MAX_FRAME_BYTES * 64;

type Config = Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT>>;

/// The bincode configuration of the protocol, built once.
const CONFIG: Config = bincode::config::standard().with_limit::<DECODE_LIMIT>();

/// The most bytes a frame that carries instances adds around them: a `Snapshot` has the
/// largest envelope, with the request id (a varint of at most 9 bytes), the variant index
/// (1), the revision (two varints, at most 18), `reset` (1), the vector length (at most 9)
/// and `more` (1), rounded up. A server refuses to register an instance that would not fit
/// in a frame with this much around it.
const INSTANCES_FRAME_OVERHEAD: usize = 40;

/// How much longer a vector's length varint can be than the one byte of an empty vector's.
const MAX_LENGTH_GROWTH: usize = 8;

/// A message that travels as one frame: [`ClientFrame`](crate::ClientFrame) or
/// [`ServerFrame`]. Both start with their request id.
pub trait Frame: Serialize + DeserializeOwned {
    /// The id this frame carries.
    fn request_id(&self) -> RequestId;
}

impl Frame for crate::ClientFrame {
    fn request_id(&self) -> RequestId {
        self.request_id
    }
}

impl Frame for ServerFrame {
    fn request_id(&self) -> RequestId {
        self.request_id
    }
}

/// Encodes `frame` into a new payload (without the length prefix).
pub fn encode<F: Frame>(frame: &F) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Appends the payload of `frame` to `out`, without an intermediate buffer.
pub fn encode_into<F: Frame, W: Write>(frame: &F, out: &mut W) -> Result<usize, Error> {
    bincode::serde::encode_into_std_write(frame, out, CONFIG)
        .map_err(|e| Error::Encode(e.to_string()))
}

/// The number of bytes `value` encodes to, without encoding it anywhere.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    let mut counter = bincode::enc::write::SizeWriter::default();
    match bincode::serde::encode_into_writer(value, &mut counter, CONFIG) {
        Ok(()) => counter.bytes_written,
        // Only a failing `Serialize` impl gets here, and none of ours fails.
        Err(_) => usize::MAX,
    }
}

/// Decodes one whole payload. Bytes left over after the message are an error, as is
/// anything that does not decode; neither ever panics.
pub fn decode<F: Frame>(payload: &[u8]) -> Result<F, Error> {
    match bincode::serde::decode_from_slice::<F, _>(payload, CONFIG) {
        Ok((frame, used)) if used == payload.len() => Ok(frame),
        Ok((frame, used)) => Err(Error::TrailingBytes {
            request_id: frame.request_id(),
            extra: payload.len() - used,
        }),
        Err(e) => Err(Error::Malformed {
            request_id: peek_request_id(payload),
            reason: e.to_string(),
        }),
    }
}

/// Reads the request id at the start of a payload that may not decode as a whole.
pub fn peek_request_id(payload: &[u8]) -> Option<RequestId> {
    bincode::serde::decode_from_slice::<RequestId, _>(payload, CONFIG)
        .ok()
        .map(|(id, _)| id)
}

/// Splits the answer to a query into `Instances` frames of at most `max_frame_bytes` each,
/// `more` set on all but the last. An empty answer is one frame with no instances.
///
/// Fails with [`Error::FrameTooLarge`] only if a single instance cannot fit in a frame of
/// that size, which a server prevents by refusing such an instance at register.
pub fn instance_frames(
    request_id: RequestId,
    instances: Vec<Instance>,
    max_frame_bytes: usize,
) -> Result<Vec<ServerFrame>, Error> {
    split_instances(request_id, instances, max_frame_bytes, |instances, more| {
        Response::Instances { instances, more }
    })
}

/// Splits instances into as many frames as `max_frame_bytes` requires, each built by
/// `envelope(part, more)`: `Instances` for a query, `Snapshot` for a watch.
pub fn split_instances(
    request_id: RequestId,
    instances: Vec<Instance>,
    max_frame_bytes: usize,
    envelope: impl Fn(Vec<Instance>, bool) -> Response,
) -> Result<Vec<ServerFrame>, Error> {
    let budget = max_frame_bytes.min(MAX_FRAME_BYTES);
    // The envelope's own size, with room for the vector's length to grow.
    let overhead = encoded_len(&ServerFrame::new(request_id, envelope(Vec::new(), true)))
        .saturating_add(MAX_LENGTH_GROWTH);
    let mut frames = Vec::new();
    let mut part = Vec::new();
    let mut used = overhead;
    for instance in instances {
        let len = encoded_len(&instance);
        if overhead + len > budget {
            return Err(Error::FrameTooLarge {
                len: overhead + len,
                max: budget,
            });
        }
        if used + len > budget {
            let full = std::mem::take(&mut part);
            frames.push(ServerFrame::new(request_id, envelope(full, true)));
            used = overhead;
        }
        used += len;
        part.push(instance);
    }
    frames.push(ServerFrame::new(request_id, envelope(part, false)));
    Ok(frames)
}

/// The encoded size of `instance` inside an `Instances` frame, with that frame's overhead:
/// a server refuses to register an instance for which this exceeds its frame limit.
pub fn instance_frame_len(instance: &Instance) -> usize {
    instance_frame_len_of(instance)
}

/// Like [`instance_frame_len`], for anything that encodes as an [`Instance`] does, such as
/// a tuple of its fields in order: a server checks a register this way without building
/// the instance.
pub fn instance_frame_len_of<T: Serialize>(instance_fields: &T) -> usize {
    INSTANCES_FRAME_OVERHEAD.saturating_add(encoded_len(instance_fields))
}
