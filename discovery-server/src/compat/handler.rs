//! Handling a compat request: a plain function from the registry and a request's content
//! to an answer, with no I/O.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::ControlFlow;

use discovery_registry::{Metadata, Registry};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::message::{NOT_FOUND, OK, Reply};

/// Answers a request's content: a plain function from the registry and the content to
/// an answer, with no I/O.
///
/// `Err(why)` is answered [`ERROR`](super::ERROR); `why` is for the logs. Registers are
/// checked by the registry's rules, as the binary protocol's are. An answer is one message
/// whose length comes first, so it cannot be streamed: a query whose answer would be
/// longer than `max_answer_bytes` (the server's `--max-answer-buffer-bytes`) is refused.
pub fn handle(
    registry: &Registry,
    content: &[u8],
    max_answer_bytes: usize,
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
            let id = registry
                .register(service_type, ip, port, Metadata::new())
                .map_err(|e| e.to_string())?;
            Ok(Reply::Plain(id.hyphenated().to_string()))
        }
        "heartbeat" => {
            let uuid = text(&fields, "uuid")?;
            let id =
                Uuid::try_parse(uuid).map_err(|e| format!("uuid {uuid:?} is not a UUID: {e}"))?;
            let answer = if registry.heartbeat(id).is_ok() {
                OK
            } else {
                NOT_FOUND
            };
            Ok(Reply::Plain(answer.to_owned()))
        }
        "query" => {
            let service_type = text(&fields, "type")?;
            query_content(registry, service_type, max_answer_bytes).map(Reply::Json)
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
/// punctuation, so escaping its quotes is all the outer encoding does, as in Python: the
/// content is written escaped, straight from the registry's batches, and refused once it
/// is longer than `max_bytes`.
fn query_content(
    registry: &Registry,
    service_type: &str,
    max_bytes: usize,
) -> Result<String, String> {
    let mut content = String::from("\"[");
    let mut members = registry.members(service_type);
    let mut first = true;
    let mut too_long = false;
    while registry.visit(&mut members, |entry| {
        if !first {
            content.push_str(", ");
        }
        first = false;
        // Writing to a String cannot fail.
        let _ = write!(
            content,
            r#"{{\"ip\": \"{}\", \"port\": {}}}"#,
            entry.ip, entry.port
        );
        too_long = content.len() > max_bytes;
        if too_long {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }) && !too_long
    {}
    content.push_str("]\"");
    if too_long || content.len() > max_bytes {
        return Err(format!(
            "the answer to a query of {service_type:?} is longer than the server's answer buffer ({max_bytes} bytes); the binary protocol streams it"
        ));
    }
    Ok(content)
}
