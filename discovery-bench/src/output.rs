//! The result line of a run: `key=value` pairs for people and for `bench/*.sh` (which pick
//! fields out with `sed`), or, with `--json`, one JSON object of the same figures, written by
//! serde_json from the structs here (and `keepalive`'s).
//!
//! Every figure is rounded once, to the decimals the text line shows, before it goes in a
//! struct: the JSON object then carries the very numbers of the text line (`12.3`, not
//! `12.3456`), and a figure shown without decimals is a JSON integer.

use std::fmt::{Display, Write as _};

use serde::Serialize;

/// `x` rounded to `decimals` places exactly as `format!("{x:.decimals$}")` rounds it, so that
/// the JSON number and the text agree to the last digit.
pub fn shown(x: f64, decimals: usize) -> f64 {
    format!("{x:.decimals$}").parse().unwrap_or(x)
}

/// `x`, a count or a rate, rounded to a whole number as the text line shows it.
pub fn whole(x: f64) -> u64 {
    shown(x, 0) as u64
}

/// A result as one JSON object.
pub fn json(line: &impl Serialize) -> String {
    serde_json::to_string(line).expect("a result line is numbers and plain text")
}

/// The figures of a load run (`--op register|heartbeat|query|mixed`), as `--json` prints
/// them.
#[derive(Debug, Serialize)]
pub struct LoadLine<'a> {
    /// The workload.
    pub op: &'a str,
    /// The store driven.
    pub backend: &'a str,
    /// Connections.
    pub conns: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Measured requests per second.
    pub ops_per_sec: u64,
    /// Latency quantiles and maximum, in µs, one decimal.
    pub p50_us: f64,
    /// See `p50_us`.
    pub p99_us: f64,
    /// See `p50_us`.
    pub p999_us: f64,
    /// See `p50_us`.
    pub max_us: f64,
    /// Requests that failed, over the whole run.
    pub errors: u64,
    /// Connections that broke off.
    pub failed_conns: usize,
    /// Requests answered in the measured time.
    pub requests: u64,
    /// The measured time, three decimals.
    pub seconds: f64,
    /// Instances listed per measured query, one decimal; `null` without queries.
    pub items_per_query: Option<f64>,
}

/// The figures of a memory measurement (`--measure-memory`), as `--json` prints them.
#[derive(Debug, Serialize)]
pub struct MemoryLine<'a> {
    /// Always `memory`.
    pub op: &'a str,
    /// The store measured.
    pub backend: &'a str,
    /// Instances registered.
    pub instances: usize,
    /// Types they are spread over.
    pub types: usize,
    /// Resident memory before registering.
    pub rss_before_kib: u64,
    /// Resident memory after registering and settling.
    pub rss_after_kib: u64,
    /// The growth per instance, one decimal.
    pub bytes_per_instance: f64,
}

/// A line of `key=value` pairs, separated by spaces.
#[derive(Debug, Default)]
pub struct Pairs(String);

impl Pairs {
    /// Appends `key=value`.
    pub fn put(&mut self, key: &str, value: impl Display) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={value}");
    }

    /// Appends `key=x` with `decimals` decimals.
    pub fn fixed(&mut self, key: &str, x: f64, decimals: usize) {
        self.put(key, format_args!("{x:.decimals$}"));
    }

    /// Appends `key=value`, or `key=n/a` for a figure not measured.
    pub fn opt(&mut self, key: &str, value: Option<impl Display>) {
        match value {
            Some(value) => self.put(key, value),
            None => self.put(key, "n/a"),
        }
    }

    /// Appends `key=x` with `decimals` decimals, or `key=n/a`.
    pub fn opt_fixed(&mut self, key: &str, x: Option<f64>, decimals: usize) {
        match x {
            Some(x) => self.fixed(key, x, decimals),
            None => self.put(key, "n/a"),
        }
    }

    /// The line.
    pub fn finish(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_rounds_as_the_text_does() {
        for (x, d) in [
            (0.25, 1),
            (2.5, 0),
            (3.5, 0),
            (12.345, 2),
            (1e6 / 3.0, 1),
            (5.0, 2),
        ] {
            assert_eq!(
                format!("{:.d$}", shown(x, d)),
                format!("{x:.d$}"),
                "{x} {d}"
            );
        }
        assert_eq!(whole(500_000.5), 500_000);
        assert_eq!(whole(19_996.4), 19_996);
    }

    #[test]
    fn a_load_line_keeps_its_keys_order_and_shapes() {
        let line = LoadLine {
            op: "heartbeat",
            backend: "discovery",
            conns: 4,
            depth: 16,
            ops_per_sec: whole(630_058.4),
            p50_us: shown(51.24, 1),
            p99_us: shown(565.2, 1),
            p999_us: shown(5374.0, 1),
            max_us: shown(9122.71, 1),
            errors: 0,
            failed_conns: 0,
            requests: 1_260_224,
            seconds: shown(2.0012, 3),
            items_per_query: None,
        };
        assert_eq!(
            json(&line),
            "{\"op\":\"heartbeat\",\"backend\":\"discovery\",\"conns\":4,\"depth\":16,\
             \"ops_per_sec\":630058,\"p50_us\":51.2,\"p99_us\":565.2,\"p999_us\":5374.0,\
             \"max_us\":9122.7,\"errors\":0,\"failed_conns\":0,\"requests\":1260224,\
             \"seconds\":2.001,\"items_per_query\":null}"
        );
        let line = LoadLine {
            items_per_query: Some(shown(100.0, 1)),
            ..line
        };
        assert!(json(&line).ends_with(",\"items_per_query\":100.0}"));
    }

    #[test]
    fn a_memory_line_keeps_its_keys_order_and_shapes() {
        let line = MemoryLine {
            op: "memory",
            backend: "redis",
            instances: 2000,
            types: 20,
            rss_before_kib: 5184,
            rss_after_kib: 5212,
            bytes_per_instance: shown(14.336, 1),
        };
        assert_eq!(
            json(&line),
            "{\"op\":\"memory\",\"backend\":\"redis\",\"instances\":2000,\"types\":20,\
             \"rss_before_kib\":5184,\"rss_after_kib\":5212,\"bytes_per_instance\":14.3}"
        );
    }

    #[test]
    fn pairs_are_spaced_and_missing_figures_say_so() {
        let mut pairs = Pairs::default();
        pairs.put("op", "keepalive");
        pairs.fixed("interval_s", 5.0, 2);
        pairs.opt("live_at_end", None::<u64>);
        pairs.opt_fixed("bytes_per_instance", Some(94.04), 1);
        assert_eq!(
            pairs.finish(),
            "op=keepalive interval_s=5.00 live_at_end=n/a bytes_per_instance=94.0"
        );
    }
}
