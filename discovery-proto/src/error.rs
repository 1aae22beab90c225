//! The error type of the protocol crate.
//!
//! Decoding errors keep the request id when it could be read, so that a server can answer a
//! malformed request under the id the client is waiting on.

use crate::RequestId;

/// What went wrong while encoding, decoding or framing a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload is not a valid message. The stream is still in step (the length prefix
    /// delimited the frame), so a connection can answer with an error and go on.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// The request id at the start of the payload, when at least that much was readable.
        request_id: Option<RequestId>,
        /// What the decoder objected to.
        reason: String,
    },
    /// The payload decoded, but bytes were left over after the message.
    #[error("malformed frame: {extra} trailing bytes after the message")]
    TrailingBytes {
        /// The request id of the message that did decode.
        request_id: RequestId,
        /// How many bytes were left.
        extra: usize,
    },
    /// A frame is larger than the limit in force. On receipt this ends the connection:
    /// the payload is not read, so the stream can no longer be trusted to be in step.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    FrameTooLarge {
        /// The length of the frame, as announced or as encoded.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A message could not be encoded (it never happens for the types of this crate, but
    /// the encoder's signature admits it).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The underlying stream failed, or ended in the middle of a frame.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// True when the stream is out of step or gone and the connection must end; false when
    /// only one frame was bad and the next one can be read.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::FrameTooLarge { .. } | Error::Io(_))
    }

    /// The request id of the frame that failed, when it could be read.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Error::Malformed { request_id, .. } => *request_id,
            Error::TrailingBytes { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }
}
