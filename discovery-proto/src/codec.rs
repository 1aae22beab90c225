//! A `tokio_util::codec` adapter, so that a `Framed` socket reads and writes whole messages.
//!
//! Framing is `LengthDelimitedCodec`'s: a 4-byte big-endian length, then the payload. The
//! length is checked against the limit before a byte of the payload is buffered, so a peer
//! announcing 4 GiB costs nothing but the end of its connection.
//!
//! The decoder separates two kinds of failure, because they call for different answers:
//! a payload that does not decode is an `Ok(Some(Err(..)))` item (the stream is still in
//! step, the connection can answer and go on), while an oversize length or a stream cut off
//! mid-frame is an `Err(..)` of the stream (the connection must end).

use std::marker::PhantomData;

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::encoding::{self, Frame};
use crate::{ClientFrame, Error, MAX_FRAME_BYTES, ServerFrame};

/// Reads frames of type `In` and writes frames of type `Out`.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    framing: LengthDelimitedCodec,
    max_frame_bytes: usize,
    /// True while `framing` has read a length and waits for the payload: the buffer then
    /// starts with payload bytes, not with a length to check.
    in_payload: bool,
    _frames: PhantomData<fn(Out) -> In>,
}

/// The server's side: reads [`ClientFrame`]s, writes [`ServerFrame`]s.
pub type ServerCodec = FrameCodec<ClientFrame, ServerFrame>;

/// The client's side: reads [`ServerFrame`]s, writes [`ClientFrame`]s.
pub type ClientCodec = FrameCodec<ServerFrame, ClientFrame>;

impl<In, Out> FrameCodec<In, Out> {
    /// A codec that accepts and sends payloads of at most `max_frame_bytes` bytes, itself
    /// capped at [`MAX_FRAME_BYTES`].
    pub fn new(max_frame_bytes: usize) -> Self {
        let max_frame_bytes = max_frame_bytes.min(MAX_FRAME_BYTES);
        let framing = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(max_frame_bytes)
            .new_codec();
        Self {
            framing,
            max_frame_bytes,
            in_payload: false,
            _frames: PhantomData,
        }
    }

    /// True while a frame has begun and not ended in bytes this codec has taken from the
    /// buffer: an empty buffer then does not mean the stream is between frames.
    pub fn mid_frame(&self) -> bool {
        self.in_payload
    }

    /// The payload limit this codec enforces.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    /// A codec with the protocol's maximum frame size.
    fn default() -> Self {
        Self::new(MAX_FRAME_BYTES)
    }
}

impl<In: Frame, Out> Decoder for FrameCodec<In, Out> {
    type Item = Result<In, Error>;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Error> {
        // `LengthDelimitedCodec` refuses an oversize length too, but without saying how
        // large it was; checking first gives the peer's number to the logs.
        let has_head = !self.in_payload && src.len() >= 4;
        if has_head {
            let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
            if len > self.max_frame_bytes {
                return Err(Error::FrameTooLarge {
                    len,
                    max: self.max_frame_bytes,
                });
            }
        }
        match self.framing.decode(src)? {
            Some(payload) => {
                self.in_payload = false;
                Ok(Some(encoding::decode(&payload)))
            }
            None => {
                // A whole head was there and the payload is not: `framing` consumed the
                // head and now waits for the payload.
                self.in_payload |= has_head;
                Ok(None)
            }
        }
    }

    /// Like `decode`, at the end of the stream: nothing left is a clean end, and any part
    /// of a frame is an error. (The default would take a stream that ended right after a
    /// length, which `framing` has already consumed, for a clean end.)
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Error> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() && !self.in_payload => Ok(None),
            None => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the stream ended in the middle of a frame",
            ))),
        }
    }
}

impl<In, Out: Frame> Encoder<&Out> for FrameCodec<In, Out> {
    type Error = Error;

    fn encode(&mut self, frame: &Out, dst: &mut BytesMut) -> Result<(), Error> {
        let start = dst.len();
        dst.put_u32(0);
        let mut writer = dst.writer();
        let written = encoding::encode_into(frame, &mut writer);
        let dst = writer.into_inner();
        match written {
            Ok(len) if len <= self.max_frame_bytes => {
                // `len` fits in u32: it is at most MAX_FRAME_BYTES.
                dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
                Ok(())
            }
            Ok(len) => {
                dst.truncate(start);
                Err(Error::FrameTooLarge {
                    len,
                    max: self.max_frame_bytes,
                })
            }
            Err(e) => {
                dst.truncate(start);
                Err(e)
            }
        }
    }
}

impl<In, Out: Frame> Encoder<Out> for FrameCodec<In, Out> {
    type Error = Error;

    fn encode(&mut self, frame: Out, dst: &mut BytesMut) -> Result<(), Error> {
        Encoder::<&Out>::encode(self, &frame, dst)
    }
}
