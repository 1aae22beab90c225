//! Wire types and framing of the discovery service registry.
//!
//! This crate is the protocol and nothing else: it has no sockets and no runtime, so the
//! server, the client, the fuzz targets and a client in another language all read one
//! definition of the bytes on the wire (`docs/PROTOCOL.md` describes them in prose).
//!
//! | module | what it holds |
//! |---|---|
//! | [`message`] | the frames a client and a server exchange, and what they carry |
//! | [`encoding`] | the one place that turns messages into payload bytes and back (bincode 2) |
//! | [`error`] | the crate's error type |
//! | `codec` | with the `codec` feature: a `tokio_util::codec` adapter for `Framed` sockets |
//!
//! A frame on the wire is a 4-byte big-endian length followed by that many bytes of payload;
//! the payload is a [`ClientFrame`] or a [`ServerFrame`] encoded by [`encoding`].
//!
//! ```
//! use discovery_proto::{ClientFrame, Request, encoding};
//!
//! let frame = ClientFrame::new(1, Request::Query { service_type: "billing".into(), min_revision: None });
//! let payload = encoding::encode(&frame)?;
//! let back: ClientFrame = encoding::decode(&payload)?;
//! assert_eq!(back, frame);
//! # Ok::<(), discovery_proto::Error>(())
//! ```

#[cfg(feature = "codec")]
pub mod codec;
pub mod encoding;
pub mod error;
pub mod message;

pub use error::Error;
pub use message::{
    ClientFrame, Entry, EntryRef, ErrorKind, Instance, Limits, Metadata, RemoveReason, Request,
    RequestId, Response, Revision, ServerFrame, TypeCount,
};

/// The version of the protocol this crate speaks, sent in `Hello` and `Welcome`.
///
/// It changes only when a message changes in a way an older peer would misread; adding a
/// variant at the end of an enum does not change it. Version 1 (the first, unreleased)
/// lacked TTLs per instance, updates and the compact answers; a server of version 2
/// refuses a version-1 `Hello` with an error naming both.
pub const PROTOCOL_VERSION: u16 = 2;

/// The TCP port a server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7777;

/// The largest payload any peer may send or accept, in bytes (64 KiB).
///
/// It is the compile-time decode limit of [`encoding`]; a server may announce and enforce a
/// smaller one in [`Limits::max_frame_bytes`], but never a larger one.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// The request id of frames the server sends outside any request, such as a refusal before
/// `Welcome`. Clients number their own requests from 1.
pub const SERVER_REQUEST_ID: RequestId = 0;
