//! The course's JSON socket protocol, on an optional second listener (`--compat-listen`),
//! so that the course's Python services can use this registry without changing a line.
//! `docs/COMPAT.md` describes the bytes.
//!
//! One request per connection: the client sends one message, reads one message, and the
//! server closes. A message is a 2-byte big-endian header length, a JSON header with four
//! keys (`byteorder`, `content-type`, `content-encoding`, `content-length`), and
//! `content-length` bytes of content.
//!
//! The module has the same three layers as every frontend:
//!
//! - messages ([`message`]): [`parse_header`] checks a request's header, [`Reply::encode`]
//!   writes an answer;
//! - handling ([`handler`]): [`handle`], a plain function from the registry and a request's
//!   content to an answer, with no I/O;
//! - the connection ([`connection`]): [`serve_connection`] reads one message within the
//!   idle and frame timeouts, answers it and closes; [`refuse`] turns away a connection over
//!   the cap.
//!
//! The accept loop is the server's own ([`crate::server`]), so every listener shares the
//! connection cap, the shutdown and its grace, and the registry.
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

pub mod connection;
pub mod handler;
pub mod message;

use std::net::SocketAddr;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::frontend::{Context, Frontend, Refusal, Stream};
use crate::throttle::PeerBuckets;

pub use connection::{refuse, serve_connection};
pub use handler::handle;
pub use message::{
    ERROR, HEADER_LENGTH_BYTES, Header, HeaderError, NOT_FOUND, OK, Reply, parse_header,
};

/// The course's JSON protocol, as a [`Frontend`].
#[derive(Debug, Default)]
pub struct Compat {
    /// The register rate limit's buckets, one per peer (a compat connection carries one
    /// request, so a bucket per connection would never empty); made on the first
    /// connection, from the configuration it is served with.
    buckets: OnceLock<PeerBuckets>,
}

impl Frontend for Compat {
    fn name(&self) -> &'static str {
        "compat"
    }

    async fn serve<S: Stream>(
        &self,
        stream: S,
        peer: SocketAddr,
        context: &Context,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let buckets = context
            .config
            .register_bucket()
            .map(|(rate, burst)| self.buckets.get_or_init(|| PeerBuckets::new(rate, burst)));
        serve_connection(stream, peer, context, stop, buckets).await
    }

    async fn refuse<S: Stream>(&self, stream: &mut S, _context: &Context, _refusal: Refusal) {
        // The course's protocol has one word for every refusal.
        refuse(stream).await;
    }
}

#[cfg(test)]
mod tests {
    //! The framing and handling rules, without sockets; `tests/compat.rs` drives the real
    //! server with real bytes.

    use super::*;
    use crate::Registry;
    use uuid::Uuid;

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

    /// Finding 10 of issue 15: every number over the cap, however large and in whatever
    /// form, cannot be framed; within the cap, only a non-negative integer is a length.
    #[test]
    fn every_over_cap_length_cannot_be_framed_however_large() {
        let with_length = |length: &str| {
            format!(
                r#"{{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": {length}}}"#
            )
        };
        let huge = format!("1{}", "0".repeat(400));
        for (length, announced) in [
            ("1025", 1025),
            ("18446744073709551615", u64::MAX),
            // 2^64 and past: serde_json reads these as floats.
            ("18446744073709551616", u64::MAX),
            ("340282366920938463463374607431768211456", u64::MAX),
            ("1e20", u64::MAX),
            ("1025.5", 1025),
            // Past a float's range: serde_json refuses the header, which is scanned.
            (huge.as_str(), u64::MAX),
            ("1e400", u64::MAX),
        ] {
            assert_eq!(
                parse_header(with_length(length).as_bytes(), 1024),
                Err(HeaderError::TooLong {
                    content_length: announced,
                    max: 1024
                }),
                "{}",
                &length[..length.len().min(40)]
            );
        }
        // Whatever else the header holds, a valid object or not.
        for header in [
            format!(r#"{{"content-length": {huge}}}"#),
            format!(r#"{{"a": [1, {{"b": "}}"}}], "content-length": {huge}, "c": tru}}"#),
            format!(r#"{{"content-length": 5, "content-length": {huge}}}"#),
            format!(r#"{{"content-length": 1e999, "x": {huge}}}"#),
        ] {
            assert!(
                matches!(
                    parse_header(header.as_bytes(), 1024),
                    Err(HeaderError::TooLong { .. })
                ),
                "{}",
                &header[..header.len().min(80)]
            );
        }
        // Within the cap or below zero, anything but an integer is invalid; so is a huge
        // number that is not content-length, or not a JSON number.
        for header in [
            with_length("5.0"),
            with_length("-1"),
            with_length(&format!("-{huge}")),
            with_length("-1e400"),
            with_length(&format!("+{huge}")),
            with_length("Infinity"),
            with_length(&format!("0{huge}")),
            with_length(&format!("\"{huge}\"")),
            format!(r#"{{"content-length": 5, "other": {huge}}}"#),
            format!(r#"[{huge}]"#),
            format!(r#"{{"content-length": {huge}"#),
        ] {
            assert!(
                matches!(
                    parse_header(header.as_bytes(), 1024),
                    Err(HeaderError::Invalid(_))
                ),
                "{}",
                &header[..header.len().min(80)]
            );
        }
    }

    fn call(registry: &Registry, content: &str) -> Result<Reply, String> {
        handle(registry, content.as_bytes(), 1 << 20)
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
