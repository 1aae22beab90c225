//! The one place that turns messages into payload bytes and back.
//!
//! The payload encoding is bincode 2 through serde, with its standard configuration
//! (little-endian, variable-length integers). Every call to bincode in the project is in
//! this module: moving to another encoding is a change to this file alone.
//!
//! # What decoding may allocate
//!
//! Never more than the bytes left in the payload can back: a length prefix is not believed
//! before the bytes it announces are there. bincode itself would allocate (and zero) a
//! string's claimed length before reading it, and let serde reserve up to 1 MiB for a
//! list's claimed count; [`decode`] therefore runs bincode's deserializer through the
//! adapter of the private `bounded` module, which reads strings and byte strings as
//! borrowed from the payload (their bytes are checked to be there, then copied exactly),
//! reserves nothing for a list or a map ahead of its items, and refuses at once a list or
//! a map that claims more items than the payload has bytes. What a malformed frame costs
//! is then bounded by its length, which the framing caps at [`MAX_FRAME_BYTES`]. The
//! module's own documentation says why this and not a per-frame decode limit.

mod bounded;

use std::io::Write;

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bincode::error::DecodeError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Entry, Error, Instance, MAX_FRAME_BYTES, RequestId, Response, ServerFrame};

/// bincode's decode limit, in bytes.
///
/// The limit is not a count of the bytes read: bincode charges it for what decoding claims
/// (string and integer reads, container lengths), so a full 64 KiB frame of small instances
/// goes over a limit of 64 KiB. It does not bound what decoding allocates (the `bounded`
/// adapter does, by the bytes present); it stays as a last guard on the total claimed,
/// 64 times the largest frame, which no valid frame comes near.
const DECODE_LIMIT: usize = MAX_FRAME_BYTES * 64;

type Config = Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT>>;

/// The bincode configuration of the protocol, built once.
const CONFIG: Config = bincode::config::standard().with_limit::<DECODE_LIMIT>();

/// The most bytes a frame that carries an instance adds around it, beyond the instance's
/// own fields (its type among them). A `Snapshot` has the largest envelope, with the
/// request id (a varint of at most 9 bytes), the variant index (1), the revision (two
/// varints, at most 18), `reset` (1), the vector length (at most 9) and `more` (1), rounded
/// up; an `Instances` frame has its type once (counted in the instance's fields), `stale_ms`
/// (at most 10) and less; an `Added`, `Updated` or `Removed` push carries the revision and
/// at most a reason byte. A server refuses to register an instance that would not fit in a
/// frame with this much around it.
const INSTANCES_FRAME_OVERHEAD: usize = 40;

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

/// Appends the encoding of any value of the protocol (a part of a message) to `out`; the
/// pieces of a message written one by one add up to the message's encoding.
pub fn encode_value_into<T: Serialize, W: Write>(value: &T, out: &mut W) -> Result<usize, Error> {
    bincode::serde::encode_into_std_write(value, out, CONFIG)
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
///
/// What it allocates is bounded by the payload's length, whatever lengths the payload
/// claims (see the module's documentation).
pub fn decode<F: Frame>(payload: &[u8]) -> Result<F, Error> {
    let root = bounded::Root::<F>::new(payload.len());
    match bincode::serde::seed_decode_from_slice(root, payload, CONFIG) {
        Ok((frame, used)) if used == payload.len() => Ok(frame),
        Ok((frame, used)) => Err(Error::TrailingBytes {
            request_id: frame.request_id(),
            extra: payload.len() - used,
        }),
        Err(e) => Err(Error::Malformed {
            request_id: peek_request_id(payload),
            reason: match e {
                // A refusal of the `bounded` adapter, whose text says it all (bincode's
                // own display would wrap it in the variant's name).
                DecodeError::OtherString(text) => text,
                e => e.to_string(),
            },
        }),
    }
}

/// Reads the request id at the start of a payload that may not decode as a whole.
pub fn peek_request_id(payload: &[u8]) -> Option<RequestId> {
    bincode::serde::decode_from_slice::<RequestId, _>(payload, CONFIG)
        .ok()
        .map(|(id, _)| id)
}

/// Splits the answer to a query of `service_type` into `Instances` frames of at most
/// `max_frame_bytes` each, `more` set on all but the last. An empty answer is one frame with
/// no instances.
///
/// Fails with [`Error::FrameTooLarge`] only if a single instance cannot fit in a frame of
/// that size, which a server prevents by refusing such an instance at register.
pub fn instance_frames(
    request_id: RequestId,
    service_type: &str,
    entries: Vec<Entry>,
    max_frame_bytes: usize,
) -> Result<Vec<ServerFrame>, Error> {
    split_list(request_id, entries, max_frame_bytes, |instances, more| {
        Response::Instances {
            service_type: service_type.to_owned(),
            stale_ms: None,
            instances,
            more,
        }
    })
}

/// Splits a list into as many frames as `max_frame_bytes` requires, each built by
/// `envelope(part, more)`: `Instances` for a query, `Snapshot` for a watch, `Types` for the
/// list of types.
///
/// The frames are those a [`ListWriter`] writes, decoded: one implementation decides where
/// a frame ends.
pub fn split_list<T: Serialize>(
    request_id: RequestId,
    items: Vec<T>,
    max_frame_bytes: usize,
    envelope: impl Fn(Vec<T>, bool) -> Response,
) -> Result<Vec<ServerFrame>, Error> {
    let mut bytes = Vec::new();
    let mut writer = ListWriter::new(&mut bytes, request_id, max_frame_bytes, envelope)?;
    for item in &items {
        writer.push(item)?;
    }
    writer.finish();
    let mut frames = Vec::new();
    let mut rest = bytes.as_slice();
    while let Some((head, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*head) as usize;
        let (payload, tail) = tail.split_at(len.min(tail.len()));
        frames.push(decode(payload)?);
        rest = tail;
    }
    Ok(frames)
}

/// Room for the item count of a frame: a varint of at most 3 bytes (`fb` and a u16), since
/// a frame holds at most 64 KiB and no item of a real answer encodes to fewer than 2 bytes
/// (a `TypeCount` of an empty type; an entry takes at least 25), so that a count stays
/// below 65,536; [`ListWriter::push`] also closes a frame at 65,535 items, for any smaller
/// item.
const COUNT_ROOM: usize = 3;

/// Writes a list answer (a query's instances, a watch's snapshot, the types) as whole
/// frames, length prefix included, straight into an output buffer, one item at a time: a
/// server encodes from its own storage (an [`EntryRef`](crate::EntryRef) per instance)
/// without building the answer first, and each item is encoded once.
///
/// A frame is closed when the next item would take it over `max_frame_bytes`; its item
/// count, unknown until then, is written into room kept for it.
///
/// ```
/// use discovery_proto::{Response, encoding::ListWriter};
///
/// let mut out = Vec::new();
/// let writer = ListWriter::new(&mut out, 7, 65536, |instances, more| Response::Instances {
///     service_type: "db".into(),
///     stale_ms: None,
///     instances,
///     more,
/// })?;
/// writer.finish();
/// // The length prefix, then id 7, Instances (4), "db", no `stale_ms`, no instances,
/// // `more` false.
/// assert_eq!(out, [0, 0, 0, 8, 7, 4, 2, b'd', b'b', 0, 0, 0]);
/// # Ok::<(), discovery_proto::Error>(())
/// ```
#[derive(Debug)]
pub struct ListWriter<'a> {
    out: &'a mut Vec<u8>,
    /// The payload of every frame up to its item count.
    prefix: Vec<u8>,
    max: usize,
    /// Where the current frame's length prefix is in `out`.
    frame: usize,
    count: usize,
}

impl<'a> ListWriter<'a> {
    /// Starts an answer to `request_id` in frames built by `envelope`, whose list and
    /// `more` must be its last two fields (as in `Instances`, `Snapshot` and `Types`).
    pub fn new<T>(
        out: &'a mut Vec<u8>,
        request_id: RequestId,
        max_frame_bytes: usize,
        envelope: impl Fn(Vec<T>, bool) -> Response,
    ) -> Result<Self, Error> {
        let template = encode(&ServerFrame::new(request_id, envelope(Vec::new(), false)))?;
        // An empty list is the count 0, and `more` false is 0: both last.
        let Some(prefix) = template.strip_suffix(&[0, 0]) else {
            return Err(Error::Encode(
                "the envelope must end with its list and `more`".into(),
            ));
        };
        let mut writer = Self {
            out,
            prefix: prefix.to_vec(),
            max: max_frame_bytes.min(MAX_FRAME_BYTES),
            frame: 0,
            count: 0,
        };
        writer.open();
        Ok(writer)
    }

    /// Appends one item of the envelope's list (for instances, anything that encodes as an
    /// [`Entry`] does).
    ///
    /// The item's type is not checked against the envelope's: whatever `instance` encodes
    /// to is written as one item, so the caller must push what the list holds (an
    /// [`EntryRef`](crate::EntryRef), not an instance with its type, into `Instances`).
    ///
    /// Fails with [`Error::FrameTooLarge`], writing nothing, when the item would not fit in
    /// a frame alone; the answer can go on without it.
    pub fn push<T: Serialize>(&mut self, instance: &T) -> Result<(), Error> {
        let start = self.out.len();
        if let Err(e) = encode_value_into(instance, &mut *self.out) {
            self.out.truncate(start);
            return Err(e);
        }
        // The payload with `more` (1 byte) still to come.
        let len = self.out.len() - self.frame - 4 + 1;
        if len > self.max || self.count == usize::from(u16::MAX) {
            let instance = self.out.split_off(start);
            let alone = 4 + self.prefix.len() + COUNT_ROOM + instance.len() + 1;
            if self.count == 0 || alone - 4 > self.max {
                return Err(Error::FrameTooLarge {
                    len: alone - 4,
                    max: self.max,
                });
            }
            self.close(true);
            self.open();
            self.out.extend_from_slice(&instance);
        }
        self.count += 1;
        Ok(())
    }

    /// How many bytes of the output come before the frame being filled (the whole frames
    /// written, and what the output held before): those a server may send before the
    /// answer is finished, to stream a long list under a bound of its memory.
    pub fn complete_len(&self) -> usize {
        self.frame
    }

    /// Takes the bytes before the frame being filled out of the output (see
    /// [`ListWriter::complete_len`]): the bytes to send now, so that a long answer never
    /// sits in memory whole. What is written after them is the same as if they had stayed.
    pub fn drain_complete(&mut self) -> std::vec::Drain<'_, u8> {
        let complete = self.frame;
        self.frame = 0;
        self.out.drain(..complete)
    }

    /// Closes the last frame.
    pub fn finish(mut self) {
        self.close(false);
    }

    fn open(&mut self) {
        self.frame = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        self.out.extend_from_slice(&self.prefix);
        self.out.extend_from_slice(&[0; COUNT_ROOM]);
        self.count = 0;
    }

    fn close(&mut self, more: bool) {
        self.out.push(u8::from(more));
        let at = self.frame + 4 + self.prefix.len();
        // The shortest form of the count, as the encoder would write it.
        if self.count < 251 {
            self.out[at] = self.count as u8;
            let end = self.out.len();
            self.out.copy_within(at + COUNT_ROOM..end, at + 1);
            self.out.truncate(end - (COUNT_ROOM - 1));
        } else {
            self.out[at] = 251;
            let count = u16::try_from(self.count).unwrap_or(u16::MAX);
            self.out[at + 1..at + 3].copy_from_slice(&count.to_le_bytes());
        }
        // At most MAX_FRAME_BYTES, so it fits in u32.
        let len = (self.out.len() - self.frame - 4) as u32;
        self.out[self.frame..self.frame + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// The most bytes `instance` takes in any frame that carries it (alone in an `Instances` or
/// `Snapshot` frame, or in a push), with that frame's overhead: a server refuses to
/// register an instance for which this exceeds its frame limit.
pub fn instance_frame_len(instance: &Instance) -> usize {
    instance_frame_len_of(instance)
}

/// Like [`instance_frame_len`], for anything that encodes as an [`Instance`] does, such as
/// a tuple of its fields in order: a server checks a register this way without building
/// the instance.
pub fn instance_frame_len_of<T: Serialize>(instance_fields: &T) -> usize {
    INSTANCES_FRAME_OVERHEAD.saturating_add(encoded_len(instance_fields))
}
