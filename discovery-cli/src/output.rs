//! How data is printed: a table or plain lines for people, JSON for scripts.
//!
//! Pure functions from values to text, so that the formats are tested without a server.
//! Only data goes through here: errors are written to stderr by the callers.

use chrono::{DateTime, Utc};
use discovery_client::{Instance, RemoveReason, Revision, TypeCount, Uuid, WatchEvent};
use serde_json::{Value, json};

/// The header of the query table.
const HEADERS: [&str; 5] = ["ID", "IP", "PORT", "AGE", "METADATA"];

/// The query answer as a table: a header, then one row per instance sorted by address
/// (the server's order is unspecified, and a stable order reads and diffs better).
/// `now` is the wall-clock time the ages are measured from.
pub fn table(instances: &[Instance], now: DateTime<Utc>) -> String {
    let mut sorted: Vec<&Instance> = instances.iter().collect();
    sorted.sort_by_key(|i| (i.ip, i.port, i.id));
    let rows: Vec<[String; 5]> = sorted
        .iter()
        .map(|i| {
            [
                i.id.to_string(),
                i.ip.to_string(),
                i.port.to_string(),
                age(now, i.last_heartbeat),
                metadata(i),
            ]
        })
        .collect();
    // The port, a number, aligns right.
    render(HEADERS, &rows, &[2])
}

/// The list of types as a table in the style of the query table: `TYPE` and `INSTANCES`,
/// sorted by type.
pub fn types_table(types: &[TypeCount]) -> String {
    let rows: Vec<[String; 2]> = sorted_types(types)
        .iter()
        .map(|count| [count.service_type.clone(), count.instances.to_string()])
        .collect();
    render(["TYPE", "INSTANCES"], &rows, &[1])
}

/// The list of types as one line of JSON: an array of `{"type", "instances"}` objects,
/// sorted by type.
pub fn json_types(types: &[TypeCount]) -> String {
    let array: Vec<Value> = sorted_types(types)
        .iter()
        .map(|count| json!({ "type": count.service_type, "instances": count.instances }))
        .collect();
    format!("{}\n", Value::Array(array))
}

/// The types sorted by name (the server sorts them already; a table does not rely on it).
fn sorted_types(types: &[TypeCount]) -> Vec<&TypeCount> {
    let mut sorted: Vec<&TypeCount> = types.iter().collect();
    sorted.sort_by(|a, b| a.service_type.cmp(&b.service_type));
    sorted
}

/// A table: the header, then the rows, columns two spaces apart and as wide as their
/// widest cell; the columns in `right` (numbers) align right, the others left, and the
/// last one is not padded.
fn render<const N: usize>(headers: [&str; N], rows: &[[String; N]], right: &[usize]) -> String {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = headers.map(str::to_owned);
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if right.contains(&column) {
                line.push_str(&format!("{cell:>width$}  "));
            } else if column == N - 1 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The query answer as one line of JSON: an array of objects with exactly the keys `id`,
/// `type`, `ip`, `port`, `metadata` and `last_heartbeat` (RFC 3339), sorted like the table.
pub fn json_instances(instances: &[Instance]) -> String {
    let mut sorted: Vec<&Instance> = instances.iter().collect();
    sorted.sort_by_key(|i| (i.ip, i.port, i.id));
    let array: Vec<Value> = sorted
        .iter()
        .map(|i| {
            json!({
                "id": i.id.to_string(),
                "type": i.service_type,
                "ip": i.ip.to_string(),
                "port": i.port,
                "metadata": i.metadata,
                "last_heartbeat": i.last_heartbeat.to_rfc3339(),
            })
        })
        .collect();
    format!("{}\n", Value::Array(array))
}

/// A new or changed instance id: alone on a line, lowercase and hyphenated, or
/// `{"id":"…"}` in JSON.
pub fn id(id: Uuid, json: bool) -> String {
    if json {
        format!("{}\n", json!({ "id": id.to_string() }))
    } else {
        format!("{}\n", id.hyphenated())
    }
}

/// A heartbeat, deregister or update that succeeded: `OK`, or in JSON `{"status":"ok"}`,
/// with the `revision` of the change when there is one (an update).
pub fn ok(revision: Option<Revision>, json: bool) -> String {
    if !json {
        return "OK\n".to_owned();
    }
    let mut line = json!({ "status": "ok" });
    if let Some(revision) = revision {
        line["revision"] = json!(revision.to_string());
    }
    format!("{line}\n")
}

/// An instance the server does not know: `NOT FOUND`, followed by why when the server
/// remembers (`NOT FOUND (replaced)`); in JSON `{"status":"not_found","reason":"replaced"}`,
/// the `reason` key absent when the reason is unknown.
pub fn not_found(reason: Option<RemoveReason>, json: bool) -> String {
    match (reason, json) {
        (None, false) => "NOT FOUND\n".to_owned(),
        (Some(reason), false) => format!("NOT FOUND ({})\n", reason_name(reason)),
        (reason, true) => {
            let mut line = json!({ "status": "not_found" });
            if let Some(reason) = reason {
                line["reason"] = json!(reason_name(reason));
            }
            format!("{line}\n")
        }
    }
}

/// The lines `watch` prints for one event; `None` for the events that only go to stderr
/// (an outage, a resumption, a lag).
///
/// For people: `snapshot r=REV count=N` (`reset ...` when it replaces an earlier list),
/// then `= ID IP:PORT META` per instance; `+ ID IP:PORT META` for an added instance,
/// `~ ID IP:PORT META` for one whose metadata changed (the new metadata) and
/// `- ID IP:PORT (REASON)` for a removed one.
///
/// In JSON, one object per line: a marker `{"event": "snapshot" | "reset", "revision",
/// "count"}` followed by `count` lines with `"event": "present"`; `"added"`, `"updated"`
/// and `"removed"` (with `"reason"`) for changes. Instance lines carry exactly `event`,
/// `revision`, `id`, `type`, `ip`, `port` and `metadata`. The revision is a string.
pub fn watch_event(event: &WatchEvent, json: bool) -> Option<String> {
    let mut out = String::new();
    match event {
        WatchEvent::Snapshot {
            revision,
            instances,
            reset,
        } => {
            let kind = if *reset { "reset" } else { "snapshot" };
            if json {
                let marker = json!({
                    "event": kind,
                    "revision": revision.to_string(),
                    "count": instances.len(),
                });
                out.push_str(&format!("{marker}\n"));
            } else {
                out.push_str(&format!("{kind} r={revision} count={}\n", instances.len()));
            }
            let mut sorted: Vec<&Instance> = instances.iter().collect();
            sorted.sort_by_key(|i| (i.ip, i.port, i.id));
            for instance in sorted {
                out.push_str(&change_line("present", *revision, instance, None, json));
            }
        }
        WatchEvent::Added { revision, instance } => {
            out.push_str(&change_line("added", *revision, instance, None, json));
        }
        WatchEvent::Updated { revision, instance } => {
            out.push_str(&change_line("updated", *revision, instance, None, json));
        }
        WatchEvent::Removed {
            revision,
            instance,
            reason,
        } => {
            out.push_str(&change_line(
                "removed",
                *revision,
                instance,
                Some(*reason),
                json,
            ));
        }
        _ => return None,
    }
    Some(out)
}

/// One instance line of `watch`.
fn change_line(
    event: &str,
    revision: Revision,
    instance: &Instance,
    reason: Option<RemoveReason>,
    json: bool,
) -> String {
    let address = std::net::SocketAddr::new(instance.ip, instance.port);
    if json {
        let mut line = json!({
            "event": event,
            "revision": revision.to_string(),
            "id": instance.id.to_string(),
            "type": instance.service_type,
            "ip": instance.ip.to_string(),
            "port": instance.port,
            "metadata": instance.metadata,
        });
        if let Some(reason) = reason {
            line["reason"] = json!(reason_name(reason));
        }
        return format!("{line}\n");
    }
    match (event, reason) {
        (_, Some(reason)) => format!("- {} {address} ({})\n", instance.id, reason_name(reason)),
        ("added", None) => format!("+ {} {address} {}\n", instance.id, metadata(instance)),
        ("updated", None) => format!("~ {} {address} {}\n", instance.id, metadata(instance)),
        _ => format!("= {} {address} {}\n", instance.id, metadata(instance)),
    }
}

/// Why an instance left, as `watch` prints it.
fn reason_name(reason: RemoveReason) -> &'static str {
    match reason {
        RemoveReason::Deregistered => "deregistered",
        RemoveReason::Expired => "expired",
        RemoveReason::Replaced => "replaced",
    }
}

/// Metadata as `k=v,k=v` in key order, or `-` when there is none.
fn metadata(instance: &Instance) -> String {
    if instance.metadata.is_empty() {
        return "-".to_owned();
    }
    instance
        .metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How long ago `then` was, briefly: `1.2s`, `4m05s`, `2h13m`. A time in the future (clocks
/// of two machines disagree) shows as `0.0s`.
pub fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let millis = (now - then).num_milliseconds().max(0);
    let seconds = millis / 1000;
    if seconds < 60 {
        format!("{}.{}s", seconds, (millis % 1000) / 100)
    } else if seconds < 3600 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn instance(port: u16, meta: &[(&str, &str)], last: DateTime<Utc>) -> Instance {
        let mut metadata = discovery_client::Metadata::new();
        for (k, v) in meta {
            metadata.insert((*k).into(), (*v).into());
        }
        Instance {
            id: Uuid::from_u128(u128::from(port)),
            service_type: "web".into(),
            ip: "10.0.0.1".parse().unwrap(),
            port,
            metadata,
            last_heartbeat: last,
        }
    }

    #[test]
    fn ages_are_short() {
        let now = Utc::now();
        assert_eq!(age(now, now - TimeDelta::milliseconds(1234)), "1.2s");
        assert_eq!(age(now, now - TimeDelta::seconds(245)), "4m05s");
        assert_eq!(
            age(now, now - TimeDelta::seconds(2 * 3600 + 13 * 60)),
            "2h13m"
        );
        assert_eq!(age(now, now + TimeDelta::seconds(3)), "0.0s");
    }

    #[test]
    fn the_table_is_aligned_and_sorted() {
        let now = Utc::now();
        let rows = [
            instance(9000, &[], now - TimeDelta::milliseconds(300)),
            instance(
                80,
                &[("zone", "a"), ("v", "1")],
                now - TimeDelta::milliseconds(1500),
            ),
        ];
        let text = table(&rows, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID "));
        assert!(lines[1].contains("  80  1.5s  v=1,zone=a"), "{text}");
        assert!(lines[2].ends_with("9000  0.3s  -"), "{text}");
        assert_eq!(lines[0].find("IP"), lines[1].find("10.0.0.1"));
    }

    #[test]
    fn an_empty_answer_is_a_header_or_an_empty_array() {
        assert_eq!(table(&[], Utc::now()).lines().count(), 1);
        assert_eq!(json_instances(&[]), "[]\n");
    }

    #[test]
    fn json_has_exactly_the_documented_keys() {
        let now = Utc::now();
        let text = json_instances(&[instance(80, &[("v", "1")], now)]);
        let value: Value = serde_json::from_str(&text).unwrap();
        let object = value[0].as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["id", "ip", "last_heartbeat", "metadata", "port", "type"]
        );
        assert_eq!(object["port"], 80);
        assert_eq!(object["metadata"]["v"], "1");
        let parsed = DateTime::parse_from_rfc3339(object["last_heartbeat"].as_str().unwrap());
        assert_eq!(parsed.unwrap(), now);
    }

    fn revision(seq: u64) -> Revision {
        Revision {
            incarnation: 0xc0ffee,
            seq,
        }
    }

    #[test]
    fn watch_lines_for_people() {
        let now = Utc::now();
        let event = WatchEvent::Snapshot {
            revision: revision(7),
            instances: vec![
                instance(9000, &[], now),
                instance(80, &[("v", "1"), ("zone", "a")], now),
            ],
            reset: false,
        };
        let id80 = Uuid::from_u128(80);
        let id9000 = Uuid::from_u128(9000);
        assert_eq!(
            watch_event(&event, false).unwrap(),
            format!(
                "snapshot r=0000000000c0ffee-7 count=2\n\
                 = {id80} 10.0.0.1:80 v=1,zone=a\n\
                 = {id9000} 10.0.0.1:9000 -\n"
            )
        );
        let added = WatchEvent::Added {
            revision: revision(8),
            instance: instance(80, &[], now),
        };
        assert_eq!(
            watch_event(&added, false).unwrap(),
            format!("+ {id80} 10.0.0.1:80 -\n")
        );
        let removed = WatchEvent::Removed {
            revision: revision(9),
            instance: instance(80, &[], now),
            reason: RemoveReason::Expired,
        };
        assert_eq!(
            watch_event(&removed, false).unwrap(),
            format!("- {id80} 10.0.0.1:80 (expired)\n")
        );
        let reset = WatchEvent::Snapshot {
            revision: revision(10),
            instances: Vec::new(),
            reset: true,
        };
        assert_eq!(
            watch_event(&reset, false).unwrap(),
            "reset r=0000000000c0ffee-10 count=0\n"
        );
        let lagged = WatchEvent::Lagged;
        assert_eq!(watch_event(&lagged, false), None);
        assert_eq!(watch_event(&lagged, true), None);
    }

    #[test]
    fn watch_lines_in_json_have_exactly_the_documented_keys() {
        let now = Utc::now();
        let event = WatchEvent::Snapshot {
            revision: revision(7),
            instances: vec![instance(80, &[("v", "1")], now)],
            reset: true,
        };
        let text = watch_event(&event, true).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            json!({"event": "reset", "revision": "0000000000c0ffee-7", "count": 1})
        );
        assert_eq!(
            lines[1],
            json!({
                "event": "present",
                "revision": "0000000000c0ffee-7",
                "id": Uuid::from_u128(80).to_string(),
                "type": "web",
                "ip": "10.0.0.1",
                "port": 80,
                "metadata": {"v": "1"},
            })
        );
        let removed = WatchEvent::Removed {
            revision: revision(8),
            instance: instance(80, &[], now),
            reason: RemoveReason::Replaced,
        };
        let line: Value = serde_json::from_str(&watch_event(&removed, true).unwrap()).unwrap();
        assert_eq!(line["event"], "removed");
        assert_eq!(line["reason"], "replaced");
        assert_eq!(line["revision"], "0000000000c0ffee-8");
        assert_eq!(line.as_object().unwrap().len(), 8);
    }

    #[test]
    fn ids_and_statuses() {
        let uuid = Uuid::from_u128(0xABCD);
        assert_eq!(id(uuid, false), "00000000-0000-0000-0000-00000000abcd\n");
        assert_eq!(
            id(uuid, true),
            "{\"id\":\"00000000-0000-0000-0000-00000000abcd\"}\n"
        );
        assert_eq!(ok(None, false), "OK\n");
        assert_eq!(ok(None, true), "{\"status\":\"ok\"}\n");
        assert_eq!(
            ok(Some(revision(3)), true),
            "{\"revision\":\"0000000000c0ffee-3\",\"status\":\"ok\"}\n"
        );
        assert_eq!(not_found(None, false), "NOT FOUND\n");
        assert_eq!(
            not_found(Some(RemoveReason::Replaced), false),
            "NOT FOUND (replaced)\n"
        );
        assert_eq!(
            not_found(Some(RemoveReason::Expired), false),
            "NOT FOUND (expired)\n"
        );
        assert_eq!(
            not_found(Some(RemoveReason::Deregistered), true),
            "{\"reason\":\"deregistered\",\"status\":\"not_found\"}\n"
        );
        assert_eq!(not_found(None, true), "{\"status\":\"not_found\"}\n");
    }

    #[test]
    fn types_are_a_table_or_json_sorted_by_type() {
        let count = |name: &str, instances| TypeCount {
            service_type: name.into(),
            instances,
        };
        let types = [count("web", 12), count("billing", 3)];
        assert_eq!(
            types_table(&types),
            "TYPE     INSTANCES\nbilling          3\nweb             12\n"
        );
        assert_eq!(types_table(&[]), "TYPE  INSTANCES\n");
        let value: Value = serde_json::from_str(&json_types(&types)).unwrap();
        assert_eq!(
            value,
            json!([{"type": "billing", "instances": 3}, {"type": "web", "instances": 12}])
        );
        assert_eq!(json_types(&[]), "[]\n");
    }

    #[test]
    fn an_update_is_a_tilde_line_or_an_updated_object() {
        let now = Utc::now();
        let event = WatchEvent::Updated {
            revision: revision(11),
            instance: instance(80, &[("v", "2")], now),
        };
        let id80 = Uuid::from_u128(80);
        assert_eq!(
            watch_event(&event, false).unwrap(),
            format!("~ {id80} 10.0.0.1:80 v=2\n")
        );
        let line: Value = serde_json::from_str(&watch_event(&event, true).unwrap()).unwrap();
        assert_eq!(line["event"], "updated");
        assert_eq!(line["metadata"]["v"], "2");
        assert_eq!(line.as_object().unwrap().len(), 7);
    }
}
