//! One compat connection: read one message within the idle and frame timeouts, answer it,
//! close.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::handler::handle;
use super::message::{HEADER_LENGTH_BYTES, HeaderError, Reply, parse_header};
use crate::Error;
use crate::frontend::{self, Context};
use crate::peer::PeerKey;
use crate::throttle::{PeerBuckets, retry_after_ms};

/// How much is read from the socket at a time, at most.
const READ_CHUNK: usize = 8 * 1024;

/// What reading a request ended with.
enum Read {
    /// A whole message: its content.
    Message(BytesMut),
    /// A message that can be framed but not served, for this reason: answered `ERROR`.
    Refused(String),
    /// The server is shutting down before the message was whole: answered `ERROR`.
    Shutdown,
    /// The bytes cannot be framed, or nothing came: closed without an answer.
    Closed(&'static str),
}

/// Why waiting for bytes stopped before there were enough.
enum Stop {
    /// The client closed before sending anything.
    Left,
    /// The client closed in the middle of a message.
    CutOff,
    /// Nothing came for the idle timeout.
    Idle,
    /// A message was started but not finished within the frame timeout.
    Stalled,
    /// The server is shutting down.
    Shutdown,
}

impl From<Stop> for Read {
    fn from(stop: Stop) -> Read {
        match stop {
            Stop::Left => Read::Closed("the client left without a request"),
            Stop::CutOff => Read::Closed("the client closed mid-message"),
            Stop::Idle => Read::Closed("no request within the idle timeout"),
            Stop::Stalled => Read::Closed("the request was not finished within the frame timeout"),
            Stop::Shutdown => Read::Shutdown,
        }
    }
}

/// One compat connection: the socket, what it has sent so far, and its timeouts.
struct Incoming<S> {
    stream: S,
    buf: BytesMut,
    opened: Instant,
    /// When the first byte came, if one has.
    first_byte: Option<Instant>,
    idle_timeout: Duration,
    frame_timeout: Duration,
    write_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Incoming<S> {
    /// Reads one message: its header length, its header, then its content.
    async fn read_message(
        &mut self,
        max_frame_bytes: usize,
        shutdown: &CancellationToken,
    ) -> Result<Read, Error> {
        if let Some(stop) = self.fill_to(HEADER_LENGTH_BYTES, shutdown).await? {
            return Ok(stop.into());
        }
        let header_len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if header_len > max_frame_bytes {
            return Ok(Read::Closed("a header length over the frame cap"));
        }
        let header_end = HEADER_LENGTH_BYTES + header_len;
        if let Some(stop) = self.fill_to(header_end, shutdown).await? {
            return Ok(stop.into());
        }
        let header = match parse_header(&self.buf[HEADER_LENGTH_BYTES..header_end], max_frame_bytes)
        {
            Ok(header) => header,
            Err(HeaderError::TooLong { .. }) => {
                return Ok(Read::Closed("a content-length over the frame cap"));
            }
            Err(HeaderError::Invalid(why)) => return Ok(Read::Refused(why)),
        };
        let end = header_end + header.content_length;
        if let Some(stop) = self.fill_to(end, shutdown).await? {
            return Ok(stop.into());
        }
        // Bytes after the message are ignored: one request per connection.
        let mut message = self.buf.split_to(end);
        Ok(Read::Message(message.split_off(header_end)))
    }

    /// Reads until `len` bytes have come, or says why not. Nothing that has come is lost
    /// if this is cancelled.
    async fn fill_to(
        &mut self,
        len: usize,
        shutdown: &CancellationToken,
    ) -> Result<Option<Stop>, Error> {
        while self.buf.len() < len {
            let deadline = match self.first_byte {
                Some(first) => frontend::deadline(first, self.frame_timeout),
                None => frontend::deadline(self.opened, self.idle_timeout),
            };
            self.buf.reserve((len - self.buf.len()).min(READ_CHUNK));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(Some(Stop::Shutdown)),
                read = self.stream.read_buf(&mut self.buf) => match read? {
                    0 if self.buf.is_empty() => return Ok(Some(Stop::Left)),
                    0 => return Ok(Some(Stop::CutOff)),
                    _ => {
                        self.first_byte.get_or_insert_with(Instant::now);
                    }
                },
                _ = frontend::sleep_until(deadline) => {
                    let stop = if self.first_byte.is_some() { Stop::Stalled } else { Stop::Idle };
                    return Ok(Some(stop));
                }
            }
        }
        Ok(None)
    }

    /// Writes the answer and closes. A client that takes no byte of it for the write
    /// timeout is cut off; one that keeps reading is not, however large the answer.
    async fn answer(&mut self, reply: &Reply) -> Result<(), Error> {
        let message = reply.encode();
        let mut rest = message.as_slice();
        frontend::write_all_progressing(&mut self.stream, &mut rest, self.write_timeout).await?;
        frontend::close_gracefully(&mut self.stream).await?;
        Ok(())
    }
}

/// Serves one compat connection: reads one message within the idle and frame timeouts,
/// answers it, and closes.
///
/// When `shutdown` is cancelled before the message is whole, the client is answered
/// `ERROR` (the course's clients send their request before they read, so they read it);
/// a message already whole is answered as usual.
///
/// With `buckets` (the register rate limit), a register over its peer's rate is answered
/// `ERROR` without reaching the registry.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    context: &Context,
    shutdown: &CancellationToken,
    buckets: Option<&PeerBuckets>,
) -> Result<(), Error> {
    let config = &context.config;
    let max_frame_bytes = context.max_frame_bytes();
    let mut incoming = Incoming {
        stream,
        buf: BytesMut::new(),
        opened: Instant::now(),
        first_byte: None,
        idle_timeout: config.idle_timeout,
        frame_timeout: config.frame_timeout,
        write_timeout: config.write_timeout,
    };
    let answer = match incoming.read_message(max_frame_bytes, shutdown).await? {
        Read::Message(content) => match throttled(&content, peer, buckets) {
            Some(why) => Err(why),
            None => handle(
                &context.registry,
                &content,
                context.config.max_answer_buffer_bytes,
            ),
        },
        Read::Refused(why) => Err(why),
        Read::Shutdown => Err("the server is shutting down".to_owned()),
        Read::Closed(why) => {
            debug!(%peer, why, "closing compat connection without an answer");
            return Ok(());
        }
    };
    let reply = answer.unwrap_or_else(|why| {
        debug!(%peer, %why, "answering ERROR");
        Reply::error()
    });
    incoming.answer(&reply).await
}

/// Why a register must wait, when `content` is one and its peer's bucket is empty.
///
/// Only looks at the `action` (a second parse of at most one frame, and only when the rate
/// limit is on): whatever else is wrong with the request, [`handle`] finds.
fn throttled(content: &[u8], peer: SocketAddr, buckets: Option<&PeerBuckets>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Action<'a> {
        #[serde(borrow)]
        action: Option<std::borrow::Cow<'a, str>>,
    }
    let buckets = buckets?;
    let action: Action<'_> = serde_json::from_slice(content).ok()?;
    if action.action.as_deref() != Some("register") {
        return None;
    }
    let wait = buckets.take(PeerKey::of(peer.ip())).err()?;
    Some(format!(
        "register rate limit: the next register of this peer is allowed in {} ms",
        retry_after_ms(wait)
    ))
}

/// Refuses a connection over the cap: answers `ERROR` at once, which the course's clients
/// read after sending their request, and closes, all within a second.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let message = Reply::error().encode();
    let refusal = async {
        stream.write_all(&message).await?;
        frontend::close_gracefully(stream).await
    };
    let _ = timeout(frontend::LINGER, refusal).await;
}
