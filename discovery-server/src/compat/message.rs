//! The messages of the compat protocol: a request's header, checked, and an answer's bytes.

use serde_json::Value;

/// The size of the header length that opens every message.
pub const HEADER_LENGTH_BYTES: usize = 2;

/// The answer to a message that can be read but not served.
pub const ERROR: &str = "ERROR";
/// The answer to a heartbeat of a live instance.
pub const OK: &str = "OK";
/// The answer to a heartbeat of an unknown or expired instance: it must register again.
pub const NOT_FOUND: &str = "NOT FOUND";

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
