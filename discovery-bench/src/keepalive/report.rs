//! What a keep-alive run reports: readings of `/proc` at the start and the end of the
//! measured time, the outcome of the run, and its result line (`key=value` pairs, or a JSON
//! object by serde_json from [`KeepaliveLine`]).

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::Settings;
use crate::cpu;
use crate::histogram::Histogram;
use crate::memory;
use crate::output::{self, Pairs, shown, whole};

/// Readings of `/proc` at one moment.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    pub(super) at: Instant,
    pub(super) server_cpu: Option<Duration>,
    pub(super) server_rss: Option<u64>,
    pub(super) own_cpu: Option<Duration>,
    /// The machine's (busy, total) CPU time.
    pub(super) machine: Option<(Duration, Duration)>,
}

impl Snapshot {
    pub(super) fn take(server_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            server_cpu: server_pid.and_then(|pid| ok(cpu::process_time(pid))),
            server_rss: server_pid.and_then(|pid| ok(memory::rss_bytes(pid))),
            own_cpu: ok(cpu::own_time()),
            machine: ok(cpu::machine_time()),
        }
    }
}

/// The value of a reading, or `None` with the reason on stderr.
fn ok<T>(reading: Result<T, String>) -> Option<T> {
    reading.map_err(|e| eprintln!("keepalive: {e}")).ok()
}

/// The outcome of a keep-alive run.
#[derive(Debug)]
pub struct Report {
    pub(super) instances: usize,
    pub(super) types: usize,
    pub(super) settings: Settings,
    pub(super) server_ttl: Duration,
    pub(super) register_time: Duration,
    /// Wall time between the two readings of `/proc` (the measured time, give or take a
    /// timer's lateness), over which CPU use is averaged.
    pub(super) cpu_window: Duration,
    pub(super) heartbeats: u64,
    pub(super) heartbeat_latency: Histogram,
    pub(super) not_found: u64,
    pub(super) errors: u64,
    pub(super) failed_conns: usize,
    /// The longest round of a connection's share; `None` when none completed one.
    pub(super) longest_pass: Option<Duration>,
    pub(super) max_lag: Duration,
    pub(super) queries: u64,
    pub(super) query_items: u64,
    pub(super) query_latency: Histogram,
    pub(super) live_at_end: Option<u64>,
    pub(super) rss_empty: Option<u64>,
    pub(super) rss_peak: Option<u64>,
    pub(super) start: Snapshot,
    pub(super) end: Snapshot,
    /// The first error seen, for the log.
    pub first_error: Option<String>,
}

/// CPU time as a percentage of one core over `secs` of wall time.
pub(super) fn percent(cpu: Duration, secs: f64) -> f64 {
    if secs > 0.0 {
        cpu.as_secs_f64() / secs * 100.0
    } else {
        0.0
    }
}

impl Report {
    /// The result as one line of `key=value` pairs, or one JSON object.
    pub fn line(&self, json: bool) -> String {
        // Rates count what was sent in the measured time, so they divide by it exactly.
        let secs = self.settings.duration.as_secs_f64();
        let cpu_secs = self.cpu_window.as_secs_f64();
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let micros = |h: &Histogram, q: f64| h.quantile(q).as_secs_f64() * 1e6;
        let hb = &self.heartbeat_latency;
        let q = &self.query_latency;
        let kib = |b: Option<u64>| b.map(|b| b / 1024);
        let rss_start = self.start.server_rss;
        let per_instance = match (self.rss_empty, rss_start) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / self.instances as f64),
            _ => None,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cpu = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(percent(b.saturating_sub(a), cpu_secs)),
            _ => None,
        };
        let server_cpu = cpu(self.start.server_cpu, self.end.server_cpu);
        let bench_cpu = cpu(self.start.own_cpu, self.end.own_cpu);
        // The machine's busy share over the same time, all processes together.
        let machine_busy = match (self.start.machine, self.end.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0).as_secs_f64() / (t1 - t0).as_secs_f64() * 100.0)
            }
            _ => None,
        };
        let items = (self.queries > 0).then(|| self.query_items as f64 / self.queries as f64);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let tenth = |x: f64| shown(x, 1);
        let opt_tenth = |x: Option<f64>| x.map(tenth);
        let line = KeepaliveLine {
            op: "keepalive",
            backend: "discovery",
            instances: self.instances,
            types: self.types,
            conns: self.settings.conns,
            depth: self.settings.depth,
            interval_s: shown(self.settings.interval.as_secs_f64(), 2),
            server_ttl_s: shown(self.server_ttl.as_secs_f64(), 2),
            seconds: shown(secs, 2),
            register_s: shown(self.register_time.as_secs_f64(), 2),
            registers_per_sec: whole(
                self.instances as f64 / self.register_time.as_secs_f64().max(1e-9),
            ),
            target_heartbeats_per_sec: whole(
                self.instances as f64 / self.settings.interval.as_secs_f64(),
            ),
            heartbeats_per_sec: whole(per_sec(self.heartbeats)),
            heartbeats: self.heartbeats,
            not_found: self.not_found,
            errors: self.errors,
            failed_conns: self.failed_conns,
            hb_p50_us: tenth(micros(hb, 0.5)),
            hb_p99_us: tenth(micros(hb, 0.99)),
            hb_p999_us: tenth(micros(hb, 0.999)),
            hb_max_us: tenth(micros(hb, 1.0)),
            longest_pass_ms: opt_tenth(self.longest_pass.map(ms)),
            max_lag_ms: tenth(ms(self.max_lag)),
            queries: self.queries,
            queries_per_sec: tenth(per_sec(self.queries)),
            q_p50_us: tenth(micros(q, 0.5)),
            q_p99_us: tenth(micros(q, 0.99)),
            q_p999_us: tenth(micros(q, 0.999)),
            q_max_us: tenth(micros(q, 1.0)),
            items_per_query: opt_tenth(items),
            live_at_end: self.live_at_end,
            rss_empty_kib: kib(self.rss_empty),
            rss_start_kib: kib(rss_start),
            rss_end_kib: kib(self.end.server_rss),
            rss_peak_kib: kib(self.rss_peak),
            bytes_per_instance: opt_tenth(per_instance),
            server_cpu_pct_core: opt_tenth(server_cpu),
            server_cpu_pct_machine: opt_tenth(server_cpu.map(|c| c / cores)),
            bench_cpu_pct_core: opt_tenth(bench_cpu),
            machine_busy_pct: opt_tenth(machine_busy),
            cores: cores as u64,
        };
        if json {
            output::json(&line)
        } else {
            line.pairs()
        }
    }
}

/// The figures of a keep-alive run, each rounded to the decimals its text shows; `None`
/// (`n/a` in text, `null` in JSON) for what was not measured (no `--server-pid`, or nothing
/// to measure).
#[derive(Debug, Serialize)]
struct KeepaliveLine {
    op: &'static str,
    backend: &'static str,
    instances: usize,
    types: usize,
    conns: usize,
    depth: usize,
    interval_s: f64,
    server_ttl_s: f64,
    seconds: f64,
    register_s: f64,
    registers_per_sec: u64,
    target_heartbeats_per_sec: u64,
    heartbeats_per_sec: u64,
    heartbeats: u64,
    not_found: u64,
    errors: u64,
    failed_conns: usize,
    hb_p50_us: f64,
    hb_p99_us: f64,
    hb_p999_us: f64,
    hb_max_us: f64,
    longest_pass_ms: Option<f64>,
    max_lag_ms: f64,
    queries: u64,
    queries_per_sec: f64,
    q_p50_us: f64,
    q_p99_us: f64,
    q_p999_us: f64,
    q_max_us: f64,
    items_per_query: Option<f64>,
    live_at_end: Option<u64>,
    rss_empty_kib: Option<u64>,
    rss_start_kib: Option<u64>,
    rss_end_kib: Option<u64>,
    rss_peak_kib: Option<u64>,
    bytes_per_instance: Option<f64>,
    server_cpu_pct_core: Option<f64>,
    server_cpu_pct_machine: Option<f64>,
    bench_cpu_pct_core: Option<f64>,
    machine_busy_pct: Option<f64>,
    cores: u64,
}

impl KeepaliveLine {
    /// The text line: the JSON object's keys in the same order, as `key=value` pairs.
    fn pairs(&self) -> String {
        let mut p = Pairs::default();
        p.put("op", self.op);
        p.put("backend", self.backend);
        p.put("instances", self.instances);
        p.put("types", self.types);
        p.put("conns", self.conns);
        p.put("depth", self.depth);
        p.fixed("interval_s", self.interval_s, 2);
        p.fixed("server_ttl_s", self.server_ttl_s, 2);
        p.fixed("seconds", self.seconds, 2);
        p.fixed("register_s", self.register_s, 2);
        p.put("registers_per_sec", self.registers_per_sec);
        p.put("target_heartbeats_per_sec", self.target_heartbeats_per_sec);
        p.put("heartbeats_per_sec", self.heartbeats_per_sec);
        p.put("heartbeats", self.heartbeats);
        p.put("not_found", self.not_found);
        p.put("errors", self.errors);
        p.put("failed_conns", self.failed_conns);
        p.fixed("hb_p50_us", self.hb_p50_us, 1);
        p.fixed("hb_p99_us", self.hb_p99_us, 1);
        p.fixed("hb_p999_us", self.hb_p999_us, 1);
        p.fixed("hb_max_us", self.hb_max_us, 1);
        p.opt_fixed("longest_pass_ms", self.longest_pass_ms, 1);
        p.fixed("max_lag_ms", self.max_lag_ms, 1);
        p.put("queries", self.queries);
        p.fixed("queries_per_sec", self.queries_per_sec, 1);
        p.fixed("q_p50_us", self.q_p50_us, 1);
        p.fixed("q_p99_us", self.q_p99_us, 1);
        p.fixed("q_p999_us", self.q_p999_us, 1);
        p.fixed("q_max_us", self.q_max_us, 1);
        p.opt_fixed("items_per_query", self.items_per_query, 1);
        p.opt("live_at_end", self.live_at_end);
        p.opt("rss_empty_kib", self.rss_empty_kib);
        p.opt("rss_start_kib", self.rss_start_kib);
        p.opt("rss_end_kib", self.rss_end_kib);
        p.opt("rss_peak_kib", self.rss_peak_kib);
        p.opt_fixed("bytes_per_instance", self.bytes_per_instance, 1);
        p.opt_fixed("server_cpu_pct_core", self.server_cpu_pct_core, 1);
        p.opt_fixed("server_cpu_pct_machine", self.server_cpu_pct_machine, 1);
        p.opt_fixed("bench_cpu_pct_core", self.bench_cpu_pct_core, 1);
        p.opt_fixed("machine_busy_pct", self.machine_busy_pct, 1);
        p.put("cores", self.cores);
        p.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures of a short run on this machine, as the text line printed them.
    const TEXT: &str = "op=keepalive backend=discovery instances=20000 types=20 conns=2 \
        depth=64 interval_s=1.00 server_ttl_s=3600.00 seconds=2.00 register_s=0.02 \
        registers_per_sec=983385 target_heartbeats_per_sec=20000 heartbeats_per_sec=19996 \
        heartbeats=39992 not_found=0 errors=0 failed_conns=0 hb_p50_us=109.6 hb_p99_us=655.4 \
        hb_p999_us=4522.0 hb_max_us=5509.2 longest_pass_ms=1001.6 max_lag_ms=10.9 queries=40 \
        queries_per_sec=20.0 q_p50_us=397.3 q_p99_us=3311.5 q_p999_us=3311.5 q_max_us=3311.5 \
        items_per_query=1000.0 live_at_end=20000 rss_empty_kib=5240 rss_start_kib=7076 \
        rss_end_kib=7076 rss_peak_kib=7076 bytes_per_instance=94.0 server_cpu_pct_core=2.5 \
        server_cpu_pct_machine=1.2 bench_cpu_pct_core=2.5 machine_busy_pct=100.0 cores=2";

    fn sample() -> KeepaliveLine {
        KeepaliveLine {
            op: "keepalive",
            backend: "discovery",
            instances: 20000,
            types: 20,
            conns: 2,
            depth: 64,
            interval_s: 1.0,
            server_ttl_s: 3600.0,
            seconds: 2.0,
            register_s: 0.02,
            registers_per_sec: 983_385,
            target_heartbeats_per_sec: 20000,
            heartbeats_per_sec: 19996,
            heartbeats: 39992,
            not_found: 0,
            errors: 0,
            failed_conns: 0,
            hb_p50_us: 109.6,
            hb_p99_us: 655.4,
            hb_p999_us: 4522.0,
            hb_max_us: 5509.2,
            longest_pass_ms: Some(1001.6),
            max_lag_ms: 10.9,
            queries: 40,
            queries_per_sec: 20.0,
            q_p50_us: 397.3,
            q_p99_us: 3311.5,
            q_p999_us: 3311.5,
            q_max_us: 3311.5,
            items_per_query: Some(1000.0),
            live_at_end: Some(20000),
            rss_empty_kib: Some(5240),
            rss_start_kib: Some(7076),
            rss_end_kib: Some(7076),
            rss_peak_kib: Some(7076),
            bytes_per_instance: Some(94.0),
            server_cpu_pct_core: Some(2.5),
            server_cpu_pct_machine: Some(1.2),
            bench_cpu_pct_core: Some(2.5),
            machine_busy_pct: Some(100.0),
            cores: 2,
        }
    }

    #[test]
    fn the_text_line_is_as_it_was() {
        assert_eq!(sample().pairs(), TEXT);
    }

    #[test]
    fn the_json_object_has_the_text_lines_keys_in_order_and_its_figures() {
        let line = KeepaliveLine {
            rss_empty_kib: None,
            bytes_per_instance: None,
            ..sample()
        };
        let text = line.pairs();
        let json = output::json(&line);
        let pairs: Vec<(&str, &str)> = text
            .split(' ')
            .map(|pair| pair.split_once('=').expect("key=value"))
            .collect();
        // No value holds a comma or a colon: the keys are the text before each colon.
        let keys: Vec<&str> = json
            .trim_matches(['{', '}'])
            .split(',')
            .map(|pair| pair.split(':').next().unwrap_or_default().trim_matches('"'))
            .collect();
        assert_eq!(pairs.iter().map(|(k, _)| *k).collect::<Vec<_>>(), keys);
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).expect("one JSON object");
        for (key, text) in pairs {
            match &object[key] {
                serde_json::Value::Null => assert_eq!(text, "n/a", "{key}"),
                serde_json::Value::String(s) => assert_eq!(text, s, "{key}"),
                serde_json::Value::Number(n) => {
                    assert_eq!(text.parse::<f64>().ok(), n.as_f64(), "{key}");
                }
                other => panic!("{key}: {other}"),
            }
        }
    }
}
