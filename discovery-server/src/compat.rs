//! The course's JSON socket protocol, on an optional second listener (`--compat-listen`),
//! so that the course's Python services can use this registry without changing a line.
//! `docs/COMPAT.md` describes the bytes.
//!
//! One request per connection: the client sends one message, reads one message, and the
//! server closes. A message is a 2-byte big-endian header length, a JSON header with four
//! keys (`byteorder`, `content-type`, `content-encoding`, `content-length`), and
//! `content-length` bytes of content.
//!
//! The module has the same three layers as the typed protocol:
//!
//! - framing: [`parse_header`] checks a request's header, [`Reply::encode`] writes an answer;
//! - handling: [`handle`], a plain function from the registry and a request's content to
//!   an answer, with no I/O;
//! - the connection: [`serve_connection`] reads one message within the idle and frame
//!   timeouts, answers it and closes; [`refuse`] turns away a connection over the cap.
//!
//! The accept loop is the server's own (see [`crate::server::serve_with_compat`]), so both
//! listeners share the connection cap, the shutdown and its grace, and the registry.
//!
//! # What is answered, what is closed
//!
//! Every message that can be framed is answered: with its answer, or with `ERROR` as
//! `text/plain` when it cannot be served (a header that is not JSON or lacks one of its
//! keys, content that is not a JSON object, an unknown action, a missing or mistyped key,
//! an invalid ip or port, a refusal by the registry). The connection is closed without an
//! answer only where the bytes cannot be framed: a header length or a `content-length`
//! over the server's frame cap, a stream that ends mid-message, or a message not finished
//! within the frame timeout.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use discovery_proto::{Instance, Metadata};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use uuid::Uuid;

use crate::config::ServerConfig;
use crate::{Error, Registry, handler};

/// The size of the header length that opens every message.
pub const HEADER_LENGTH_BYTES: usize = 2;

/// The answer to a message that can be read but not served.
pub const ERROR: &str = "ERROR";
/// The answer to a heartbeat of a live instance.
pub const OK: &str = "OK";
/// The answer to a heartbeat of an unknown or expired instance: it must register again.
pub const NOT_FOUND: &str = "NOT FOUND";

/// How much is read from the socket at a time, at most.
const READ_CHUNK: usize = 8 * 1024;

/// How long a connection that has answered waits for its client to close too, and how
/// long a refusal over the connection cap may take in all.
const LINGER: Duration = Duration::from_secs(1);

/// An answer: its content type and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `text/plain`: a new instance's UUID, [`OK`], [`NOT_FOUND`] or [`ERROR`].
    Plain(String),
    /// `text/json`: the content, which is JSON text.
    Json(String),
}

impl Reply {
    /// The `ERROR` answer.
    pub fn error() -> Reply {
        Reply::Plain(ERROR.to_owned())
    }

    /// The value of the header's `content-type`.
    pub fn content_type(&self) -> &'static str {
        match self {
            Reply::Plain(_) => "text/plain",
            Reply::Json(_) => "text/json",
        }
    }

    /// The content, UTF-8.
    pub fn content(&self) -> &str {
        match self {
            Reply::Plain(content) | Reply::Json(content) => content,
        }
    }

    /// The whole message: header length, header and content. The header is written as
    /// Python's `json.dumps` writes it, with the keys in the course's order.
    ///
    /// ```
    /// use discovery_server::compat::Reply;
    ///
    /// let bytes = Reply::Plain("OK".into()).encode();
    /// let header = br#"{"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8", "content-length": 2}"#;
    /// assert_eq!(&bytes[..2], &(header.len() as u16).to_be_bytes());
    /// assert_eq!(&bytes[2..2 + header.len()], header);
    /// assert_eq!(&bytes[2 + header.len()..], b"OK");
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let content = self.content().as_bytes();
        let header = format!(
            r#"{{"byteorder": "little", "content-type": "{}", "content-encoding": "utf-8", "content-length": {}}}"#,
            self.content_type(),
            content.len()
        );
        let header_len = u16::try_from(header.len()).expect("an answer's header is ~100 bytes");
        let mut message = Vec::with_capacity(HEADER_LENGTH_BYTES + header.len() + content.len());
        message.extend_from_slice(&header_len.to_be_bytes());
        message.extend_from_slice(header.as_bytes());
        message.extend_from_slice(content);
        message
    }
}

/// What a request's header announces, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The number of content bytes that follow the header.
    pub content_length: usize,
}

/// Why a request's header was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The header announces more content than the frame cap allows: the message cannot
    /// be framed, and the connection is closed without an answer.
    TooLong {
        /// The `content-length` announced.
        content_length: u64,
        /// The frame cap in force.
        max: usize,
    },
    /// The header is not a JSON object with the four keys and their values: answered
    /// `ERROR`.
    Invalid(String),
}

/// Checks a request's header (the bytes after the header length).
///
/// It must be a JSON object, in any key order and spacing, with
/// - `byteorder`: `"little"` or `"big"`,
/// - `content-type`: `"text/json"` (every request's content is JSON),
/// - `content-encoding`: `"utf-8"` (or `"utf8"`, in any case),
/// - `content-length`: an integer from 0 to `max_content_bytes`.
///
/// Other keys are ignored. A `content-length` over `max_content_bytes` is
/// [`HeaderError::TooLong`], whatever else is wrong with the header.
pub fn parse_header(bytes: &[u8], max_content_bytes: usize) -> Result<Header, HeaderError> {
    let invalid = HeaderError::Invalid;
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("the header is not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(invalid("the header is not a JSON object".into()));
    };
    let content_length = fields
        .get("content-length")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid("content-length must be a non-negative integer".into()))?;
    let content_length = match usize::try_from(content_length) {
        Ok(len) if len <= max_content_bytes => len,
        _ => {
            return Err(HeaderError::TooLong {
                content_length,
                max: max_content_bytes,
            });
        }
    };
    let text = |key: &str| -> Result<&str, HeaderError> {
        fields
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("the header has no {key} string")))
    };
    let byteorder = text("byteorder")?;
    if byteorder != "little" && byteorder != "big" {
        return Err(invalid(format!(
            "byteorder {byteorder:?} is neither \"little\" nor \"big\""
        )));
    }
    let content_type = text("content-type")?;
    if content_type != "text/json" {
        return Err(invalid(format!(
            "content-type {content_type:?}: a request's content is \"text/json\""
        )));
    }
    let encoding = text("content-encoding")?;
    if !(encoding.eq_ignore_ascii_case("utf-8") || encoding.eq_ignore_ascii_case("utf8")) {
        return Err(invalid(format!(
            "content-encoding {encoding:?}: only \"utf-8\" is spoken"
        )));
    }
    Ok(Header { content_length })
}

/// Answers a request's content: a plain function from the registry and the content to
/// an answer, with no I/O.
///
/// `Err(why)` is answered [`ERROR`]; `why` is for the logs. Registers are checked as the
/// typed protocol checks them: by the registry, and against `max_frame_bytes` so that a
/// typed query can always carry the instance.
pub fn handle(
    registry: &Registry,
    max_frame_bytes: usize,
    content: &[u8],
) -> Result<Reply, String> {
    let value: Value =
        serde_json::from_slice(content).map_err(|e| format!("the content is not JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("the content is not a JSON object".into());
    };
    match text(&fields, "action")? {
        "register" => {
            let service_type = text(&fields, "type")?;
            let ip_text = text(&fields, "ip")?;
            let ip: IpAddr = ip_text
                .parse()
                .map_err(|_| format!("ip {ip_text:?} is not an IPv4 or IPv6 address"))?;
            let port = fields
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|port| u16::try_from(port).ok())
                .ok_or_else(|| "port must be an integer from 1 to 65535".to_owned())?;
            let id = handler::register(
                registry,
                max_frame_bytes,
                service_type,
                ip,
                port,
                Metadata::new(),
            )
            .map_err(|e| e.to_string())?;
            Ok(Reply::Plain(id.hyphenated().to_string()))
        }
        "heartbeat" => {
            let uuid = text(&fields, "uuid")?;
            let id =
                Uuid::try_parse(uuid).map_err(|e| format!("uuid {uuid:?} is not a UUID: {e}"))?;
            let answer = if registry.heartbeat(id) {
                OK
            } else {
                NOT_FOUND
            };
            Ok(Reply::Plain(answer.to_owned()))
        }
        "query" => {
            let service_type = text(&fields, "type")?;
            Ok(Reply::Json(query_content(&registry.query(service_type))))
        }
        other => Err(format!("unknown action {other:?}")),
    }
}

/// The string value of `key`.
fn text<'a>(fields: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match fields.get(key) {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!("{key} must be a string, not {other}")),
        None => Err(format!("the request has no {key}")),
    }
}

/// The content of a query answer: a JSON string whose text is a JSON list of
/// `{"ip": ..., "port": ...}` objects, both written as Python's `json.dumps` writes them.
///
/// The inner text holds only ASCII digits, letters, dots and colons besides its own
/// punctuation, so escaping its quotes is all the outer encoding does, as in Python.
fn query_content(instances: &[Instance]) -> String {
    let mut list = String::from("[");
    for (i, instance) in instances.iter().enumerate() {
        if i > 0 {
            list.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(
            list,
            r#"{{"ip": "{}", "port": {}}}"#,
            instance.ip, instance.port
        );
    }
    list.push(']');
    Value::String(list).to_string()
}

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
struct Incoming {
    stream: TcpStream,
    buf: BytesMut,
    opened: Instant,
    /// When the first byte came, if one has.
    first_byte: Option<Instant>,
    idle_timeout: Duration,
    frame_timeout: Duration,
}

impl Incoming {
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
                Some(first) => first + self.frame_timeout,
                None => self.opened + self.idle_timeout,
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
                _ = sleep_until(deadline) => {
                    let stop = if self.first_byte.is_some() { Stop::Stalled } else { Stop::Idle };
                    return Ok(Some(stop));
                }
            }
        }
        Ok(None)
    }

    /// Writes the answer and closes. A client that does not take it within the frame
    /// timeout is cut off.
    async fn answer(&mut self, reply: &Reply) -> Result<(), Error> {
        let message = reply.encode();
        match timeout(self.frame_timeout, self.stream.write_all(&message)).await {
            Ok(written) => written?,
            Err(_) => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "client did not read its answer within the frame timeout",
                )));
            }
        }
        close(&mut self.stream).await?;
        Ok(())
    }
}

/// Shuts the write side, then reads and drops what the client still sends until it
/// closes too, for at most [`LINGER`]: closing a socket with unread input makes the kernel
/// send a reset, which can destroy an answer the client has not read yet.
async fn close(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.shutdown().await?;
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = timeout(LINGER, drain).await;
    Ok(())
}

/// Serves one compat connection: reads one message within the idle and frame timeouts,
/// answers it, and closes.
///
/// When `shutdown` is cancelled before the message is whole, the client is answered
/// `ERROR` (the course's clients send their request before they read, so they read it);
/// a message already whole is answered as usual.
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    registry: Registry,
    config: &ServerConfig,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let mut incoming = Incoming {
        stream,
        buf: BytesMut::new(),
        opened: Instant::now(),
        first_byte: None,
        idle_timeout: config.idle_timeout,
        frame_timeout: config.frame_timeout,
    };
    let answer = match incoming
        .read_message(config.max_frame_bytes, shutdown)
        .await?
    {
        Read::Message(content) => handle(&registry, config.max_frame_bytes, &content),
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

/// Refuses a connection over the cap: answers `ERROR` at once, which the course's clients
/// read after sending their request, and closes, all within a second.
pub async fn refuse(mut stream: TcpStream) {
    let message = Reply::error().encode();
    let refusal = async {
        stream.write_all(&message).await?;
        close(&mut stream).await
    };
    let _ = timeout(LINGER, refusal).await;
}

#[cfg(test)]
mod tests {
    //! The framing and handling rules, without sockets; `tests/compat.rs` drives the real
    //! server with real bytes.

    use super::*;

    const CAP: usize = 65536;

    fn header(text: &str) -> Result<Header, HeaderError> {
        parse_header(text.as_bytes(), CAP)
    }

    #[test]
    fn a_header_in_any_order_and_spacing_is_read() {
        let parsed = header(
            r#"{"content-length":12,"content-encoding":"UTF-8","content-type":"text/json","byteorder":"big","extra":1}"#,
        );
        assert_eq!(parsed, Ok(Header { content_length: 12 }));
    }

    #[test]
    fn each_missing_or_wrong_header_value_is_invalid() {
        let full = [
            ("byteorder", r#""little""#),
            ("content-type", r#""text/json""#),
            ("content-encoding", r#""utf-8""#),
            ("content-length", "5"),
        ];
        for skip in 0..full.len() {
            let text = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, (k, v))| format!("\"{k}\": {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let parsed = header(&format!("{{{text}}}"));
            assert!(
                matches!(parsed, Err(HeaderError::Invalid(_))),
                "without {}: {parsed:?}",
                full[skip].0
            );
        }
        for bad in [
            r#"{"byteorder": "middle", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 5}"#,
            r#"{"byteorder": "little", "content-type": "binary", "content-encoding": "utf-8", "content-length": 5}"#,
            r#"{"byteorder": "little", "content-type": "text/json", "content-encoding": "latin-1", "content-length": 5}"#,
            r#"{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": "5"}"#,
            r#"{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": -1}"#,
            r#"{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 5.0}"#,
            "[1, 2]",
            "not json",
            "",
        ] {
            assert!(matches!(header(bad), Err(HeaderError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn content_over_the_cap_cannot_be_framed() {
        let text = r#"{"content-length": 1025}"#;
        assert_eq!(
            parse_header(text.as_bytes(), 1024),
            Err(HeaderError::TooLong {
                content_length: 1025,
                max: 1024
            })
        );
        let text = r#"{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 1024}"#;
        assert_eq!(
            parse_header(text.as_bytes(), 1024),
            Ok(Header {
                content_length: 1024
            })
        );
    }

    fn call(registry: &Registry, content: &str) -> Result<Reply, String> {
        handle(registry, CAP, content.as_bytes())
    }

    #[tokio::test]
    async fn each_action_answers_as_the_course_expects() {
        let registry = Registry::new(crate::RegistryConfig::default());
        let query = r#"{"action": "query", "type": "hive"}"#;
        assert_eq!(call(&registry, query), Ok(Reply::Json(r#""[]""#.into())));

        let register =
            r#"{"action": "register", "ip": "127.0.0.1", "port": 65433, "type": "hive"}"#;
        let Ok(Reply::Plain(id)) = call(&registry, register) else {
            panic!("a register answers a UUID");
        };
        assert_eq!(id.len(), 36);
        assert_eq!(
            call(&registry, query),
            Ok(Reply::Json(
                r#""[{\"ip\": \"127.0.0.1\", \"port\": 65433}]""#.into()
            ))
        );
        let heartbeat = format!(r#"{{"action": "heartbeat", "uuid": "{id}"}}"#);
        assert_eq!(call(&registry, &heartbeat), Ok(Reply::Plain(OK.into())));
        let unknown = format!(r#"{{"action": "heartbeat", "uuid": "{}"}}"#, Uuid::new_v4());
        assert_eq!(
            call(&registry, &unknown),
            Ok(Reply::Plain(NOT_FOUND.into()))
        );

        let register =
            r#"{"action": "register", "ip": "0:0:0:0:0:0:0:1", "port": 1, "type": "six"}"#;
        assert!(call(&registry, register).is_ok());
        let query = r#"{"action": "query", "type": "six"}"#;
        assert_eq!(
            call(&registry, query),
            Ok(Reply::Json(r#""[{\"ip\": \"::1\", \"port\": 1}]""#.into()))
        );
    }

    #[tokio::test]
    async fn what_cannot_be_served_is_refused() {
        let registry = Registry::new(crate::RegistryConfig::default());
        for content in [
            "",
            "not json",
            "[]",
            r#"{"type": "hive"}"#,
            r#"{"action": 1}"#,
            r#"{"action": "deregister", "uuid": "c1a6cd0f-0000-4000-8000-000000000000"}"#,
            r#"{"action": "register", "ip": "127.0.0.1", "port": 80}"#,
            r#"{"action": "register", "ip": "localhost", "port": 80, "type": "hive"}"#,
            r#"{"action": "register", "ip": "0.0.0.0", "port": 80, "type": "hive"}"#,
            r#"{"action": "register", "ip": "127.0.0.1", "port": 0, "type": "hive"}"#,
            r#"{"action": "register", "ip": "127.0.0.1", "port": 66554, "type": "hive"}"#,
            r#"{"action": "register", "ip": "127.0.0.1", "port": "80", "type": "hive"}"#,
            r#"{"action": "register", "ip": "127.0.0.1", "port": 80.0, "type": "hive"}"#,
            r#"{"action": "register", "ip": "127.0.0.1", "port": 80, "type": ""}"#,
            r#"{"action": "heartbeat", "uuid": "c1a6cd0f"}"#,
            r#"{"action": "heartbeat", "id": "c1a6cd0f-0000-4000-8000-000000000000"}"#,
            r#"{"action": "query", "type": null}"#,
        ] {
            assert!(call(&registry, content).is_err(), "{content}");
        }
        assert!(registry.is_empty());
    }
}
