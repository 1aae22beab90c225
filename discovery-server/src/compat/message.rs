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
        /// The `content-length` announced: its whole part if it was written with a
        /// fraction or an exponent, [`u64::MAX`] past that.
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
/// Other keys are ignored. A `content-length` that is a number over `max_content_bytes` is
/// [`HeaderError::TooLong`], whatever else is wrong with the header and however large the
/// number: past `u64` (which JSON parsers read as a float), and past even a float's range
/// (which serde_json refuses to read at all, so the header is scanned for it). A number
/// within the cap that is not a non-negative integer (`5.0`, `-1`) is
/// [`HeaderError::Invalid`].
pub fn parse_header(bytes: &[u8], max_content_bytes: usize) -> Result<Header, HeaderError> {
    let invalid = HeaderError::Invalid;
    let too_long = |content_length| HeaderError::TooLong {
        content_length,
        max: max_content_bytes,
    };
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => {
            if let Some(length) = raw_member(bytes, "content-length")
                .and_then(number_value)
                .filter(|length| *length > max_content_bytes as f64)
            {
                return Err(too_long(float_to_u64(length)));
            }
            return Err(invalid(format!("the header is not JSON: {e}")));
        }
    };
    let Value::Object(fields) = value else {
        return Err(invalid("the header is not a JSON object".into()));
    };
    let not_a_length = || invalid("content-length must be a non-negative integer".into());
    let Some(Value::Number(number)) = fields.get("content-length") else {
        return Err(not_a_length());
    };
    let content_length = match (number.as_u64(), number.as_f64()) {
        (Some(length), _) => match usize::try_from(length) {
            Ok(len) if len <= max_content_bytes => len,
            _ => return Err(too_long(length)),
        },
        // Past u64, or written as a float: over the cap it cannot be framed either way.
        (None, Some(length)) if length > max_content_bytes as f64 => {
            return Err(too_long(float_to_u64(length)));
        }
        (None, _) => return Err(not_a_length()),
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

/// A length read as a float, as a `u64` for [`HeaderError::TooLong`]: the whole part,
/// [`u64::MAX`] past it.
fn float_to_u64(length: f64) -> u64 {
    // `as` saturates: infinity and anything past u64 become u64::MAX.
    length as u64
}

/// The value of a JSON number's text, if `text` is one as JSON writes numbers (an optional
/// minus, no leading zeros, an optional fraction and exponent); infinite when it is beyond
/// a float's range. Rust's own parser accepts more (`+5`, `.5`, `inf`), hence the check.
fn number_value(text: &[u8]) -> Option<f64> {
    let digits = |at: usize| {
        text[at.min(text.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut at = usize::from(text.first() == Some(&b'-'));
    let whole = digits(at);
    if whole == 0 || (whole > 1 && text[at] == b'0') {
        return None;
    }
    at += whole;
    if text.get(at) == Some(&b'.') {
        let fraction = digits(at + 1);
        if fraction == 0 {
            return None;
        }
        at += 1 + fraction;
    }
    if matches!(text.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(text.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let exponent = digits(at);
        if exponent == 0 {
            return None;
        }
        at += exponent;
    }
    if at != text.len() {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The text of the value of `key` in the JSON object `bytes` (of the last member of that
/// name, as serde_json keeps the last), found without reading any number.
///
/// Only for a header serde_json refused: it will not read a number beyond a float's range,
/// and a `content-length` over the cap may be one. The scan follows the object's members
/// and is lax inside values (a value is skipped by its brackets and quotes); `None` when
/// the bytes are not an object of members.
fn raw_member<'a>(bytes: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let mut at = skip_whitespace(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut found = None;
    loop {
        at = skip_whitespace(bytes, at);
        match bytes.get(at)? {
            b'}' => return found,
            b'"' => {}
            _ => return None,
        }
        let name_end = skip_string(bytes, at)?;
        let name: String = serde_json::from_slice(&bytes[at..name_end]).ok()?;
        at = skip_whitespace(bytes, name_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_whitespace(bytes, at + 1);
        let value_end = skip_value(bytes, at)?;
        if name == key {
            found = Some(&bytes[at..value_end]);
        }
        at = skip_whitespace(bytes, value_end);
        match bytes.get(at)? {
            b',' => at += 1,
            b'}' => return found,
            _ => return None,
        }
    }
}

fn skip_whitespace(bytes: &[u8], at: usize) -> usize {
    at + bytes[at.min(bytes.len())..]
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count()
}

/// The end of the string that opens at `at` (a quote), past its closing quote.
fn skip_string(bytes: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        match bytes.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The end of the value that starts at `at`: a string, an object or array (by its
/// brackets, strings inside skipped whole, without recursion), or a number or literal (up
/// to the next delimiter).
fn skip_value(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => skip_string(bytes, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match bytes.get(i)? {
                    b'"' => {
                        i = skip_string(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let len = bytes[at..]
                .iter()
                .take_while(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .count();
            (len > 0).then_some(at + len)
        }
    }
}
