//! Handling a compat request: a plain function from the registry and a request's content
//! to an answer, with no I/O.

use std::fmt::Write as _;
use std::net::IpAddr;

use discovery_registry::{Instance, Metadata, Registry};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::message::{NOT_FOUND, OK, Reply};

/// Answers a request's content: a plain function from the registry and the content to
/// an answer, with no I/O.
///
/// `Err(why)` is answered [`ERROR`](super::ERROR); `why` is for the logs. Registers are
/// checked by the registry's rules, as the binary protocol's are.
pub fn handle(registry: &Registry, content: &[u8]) -> Result<Reply, String> {
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
