//! The keep-alive run (`--op keepalive`): one server holding many live instances, every one
//! of them kept alive by heartbeats at a steady rate, while queries are answered beside them.
//!
//! 1. **Register.** The `N` seed instances of the plan (over `T` types, see `workload.rs`)
//!    are registered first, pipelined on a few connections, as fast as the server takes
//!    them; the time it takes is reported.
//! 2. **Keep alive.** `C` heartbeat connections each own a contiguous share of the
//!    instances and heartbeat it in order, round and round, at a steady rate: every 10 ms
//!    a connection sends what its schedule says is due (share / interval per second), so
//!    each instance gets one heartbeat per `--interval`. On a connection a writer sends
//!    while a reader takes the answers in order; at most `--depth` heartbeats are in
//!    flight, and a writer that finds the window full writes what it has and waits for
//!    room (a quarter of the window at a time). A heartbeat's latency runs from its
//!    encoding (just before its write) to its answer. The time each connection took for
//!    each round of its share (the gap between two heartbeats of one instance) is kept:
//!    its longest is `longest_pass`; and how far behind its schedule a connection was at a
//!    tick, before sending: its most is `max_lag` (one tick, 10 ms, plus the timer's
//!    lateness, when the server keeps up).
//! 3. **Query.** One more connection queries a random type `--query-rate` times a second
//!    (one at a time, a missed tick is skipped) and records their latency.
//! 4. **Check.** After the measured time a fresh connection queries every type once and
//!    counts the instances listed: all `N` must still be live.
//!
//! Heartbeats and queries run for `--warmup` and then `--duration`; rates, latencies and
//! CPU use cover the measured part only, `NotFound` answers and errors the whole run. With
//! `--server-pid` the run also reads the server's resident memory (empty, after
//! registering, at the end, peak) and its CPU time, from `/proc`.
//!
//! | module | what it holds |
//! |---|---|
//! | this one | the settings, the run's steps in order, the progress lines |
//! | `heartbeat` | one heartbeat connection: its writer on schedule, its reader of answers |
//! | `query` | the query connection beside the heartbeats, and the final count |
//! | `report` | readings of `/proc`, the outcome of the run, and its result line |

mod heartbeat;
mod query;
mod report;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::discovery::{DiscoveryClient, DiscoveryConfig};
use crate::histogram::Histogram;
use crate::memory;
use crate::runner::{self, Backend};
use crate::workload::Plan;

use self::heartbeat::{HeartbeatTally, heartbeat_conn};
use self::query::{QueryTally, count_live, query_loop};
pub use self::report::Report;
use self::report::{Snapshot, percent};

/// How often a heartbeat connection sends what is due.
const TICK: Duration = Duration::from_millis(10);
/// Connections that register the instances.
const REGISTER_CONNS: usize = 4;
/// How often a progress line goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How a keep-alive run is shaped.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Heartbeat connections.
    pub conns: usize,
    /// Heartbeats in flight per connection, at most.
    pub depth: usize,
    /// Time between two heartbeats of one instance.
    pub interval: Duration,
    /// Time under load before measuring starts.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Queries per second on the query connection; 0 for none.
    pub query_rate: u32,
    /// The longest wait for a write or an answer.
    pub io_timeout: Duration,
    /// The server's process, to read its memory and CPU time.
    pub server_pid: Option<u32>,
}

/// Where the run is: when measuring starts and ends, and the running counts of the
/// progress lines; every task of the run holds it.
struct Progress {
    measure_from: Instant,
    end: Instant,
    /// Heartbeats answered so far (any answer), for progress lines.
    answered: AtomicU64,
    /// `NotFound` answers so far.
    not_found: AtomicU64,
}

/// Registers the instances of `plan`, keeps them alive, queries beside, and reports.
pub async fn run(
    config: DiscoveryConfig,
    plan: Arc<Plan>,
    settings: Settings,
) -> Result<Report, String> {
    let io_timeout = settings.io_timeout;
    let rss_empty = match settings.server_pid {
        Some(pid) => Some(memory::rss_bytes(pid)?),
        None => None,
    };

    // 1. Register.
    let conns = REGISTER_CONNS.min(plan.instances);
    let registrars =
        runner::connect_all::<DiscoveryClient>(&config, &plan, conns, io_timeout).await?;
    let server_ttl = registrars
        .first()
        .and_then(DiscoveryClient::server_ttl)
        .unwrap_or_default();
    let registering = Instant::now();
    let ids = Arc::new(runner::seed(registrars, &plan, io_timeout).await?);
    let register_time = registering.elapsed();
    eprintln!(
        "keepalive: registered {} instances over {} types in {:.2?} ({:.0}/s); server TTL {:?}",
        plan.instances,
        plan.types.len(),
        register_time,
        plan.instances as f64 / register_time.as_secs_f64(),
        server_ttl
    );
    if settings.interval >= server_ttl {
        eprintln!(
            "warning: the heartbeat interval ({:?}) is not shorter than the server's TTL \
             ({server_ttl:?}): expect NotFound",
            settings.interval
        );
    } else if register_time + settings.interval >= server_ttl {
        eprintln!(
            "warning: registering took {register_time:?}; with a first round of {:?} the \
             earliest instances may expire before their first heartbeat (TTL {server_ttl:?})",
            settings.interval
        );
    }

    // 2 and 3. Keep alive and query.
    let mut heartbeaters =
        runner::connect_all::<DiscoveryClient>(&config, &plan, settings.conns, io_timeout).await?;
    let querier = runner::connect_all::<DiscoveryClient>(&config, &plan, 1, io_timeout)
        .await?
        .pop()
        .ok_or("no query connection")?;
    let start = Instant::now();
    let measure_from = start + settings.warmup;
    let progress = Arc::new(Progress {
        measure_from,
        end: measure_from + settings.duration,
        answered: AtomicU64::new(0),
        not_found: AtomicU64::new(0),
    });
    let settings = Arc::new(settings);
    let n = plan.instances;
    let c = heartbeaters.len();
    let tasks: Vec<_> = heartbeaters
        .drain(..)
        .enumerate()
        .map(|(k, client)| {
            let share = k * n / c..(k + 1) * n / c;
            // Spread the connections' ticks over the tick, so that they do not all send at
            // the same moment.
            let first_tick = start + TICK * k as u32 / c as u32;
            tokio::spawn(heartbeat_conn(
                client,
                ids.clone(),
                share,
                first_tick,
                settings.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let query_task = tokio::spawn(query_loop(
        querier,
        plan.types.len(),
        start,
        settings.clone(),
        progress.clone(),
    ));

    let start_snapshot = report_progress(&settings, &progress, start).await;
    let end_snapshot = Snapshot::take(settings.server_pid);
    let rss_peak = settings
        .server_pid
        .and_then(|pid| memory::peak_rss_bytes(pid).ok());

    let mut report = Report {
        instances: n,
        types: plan.types.len(),
        settings: (*settings).clone(),
        server_ttl,
        register_time,
        cpu_window: end_snapshot.at - start_snapshot.at,
        heartbeats: 0,
        heartbeat_latency: Histogram::default(),
        not_found: 0,
        errors: 0,
        failed_conns: 0,
        longest_pass: None,
        max_lag: Duration::ZERO,
        queries: 0,
        query_items: 0,
        query_latency: Histogram::default(),
        live_at_end: None,
        rss_empty,
        rss_peak,
        start: start_snapshot,
        end: end_snapshot,
        first_error: None,
    };
    for task in tasks {
        let tally = task.await.unwrap_or_else(|e| HeartbeatTally {
            failure: Some(format!("heartbeat task failed: {e}")),
            ..HeartbeatTally::default()
        });
        report.heartbeat_latency.merge(&tally.latency);
        report.heartbeats += tally.measured;
        report.not_found += tally.not_found;
        report.errors += tally.errors;
        if tally.passes > 0 {
            report.longest_pass = report.longest_pass.max(Some(tally.longest_pass));
        }
        report.max_lag = report.max_lag.max(tally.max_lag);
        if let Some(failure) = tally.failure {
            report.failed_conns += 1;
            report.first_error.get_or_insert(failure);
        }
        if let Some(error) = tally.first_error {
            report.first_error.get_or_insert(error);
        }
    }
    let queries = query_task.await.unwrap_or_else(|e| QueryTally {
        failure: Some(format!("query task failed: {e}")),
        ..QueryTally::default()
    });
    report.query_latency = queries.latency;
    report.queries = queries.queries;
    report.query_items = queries.items;
    report.errors += queries.errors;
    if let Some(failure) = queries.failure {
        report.failed_conns += 1;
        report.first_error.get_or_insert(failure);
    }
    if let Some(error) = queries.first_error {
        report.first_error.get_or_insert(error);
    }

    // 4. Check.
    match count_live(&config, &plan, io_timeout).await {
        Ok(live) => report.live_at_end = Some(live),
        Err(e) => {
            report.errors += 1;
            report
                .first_error
                .get_or_insert(format!("counting the live instances: {e}"));
        }
    }
    Ok(report)
}

/// Prints a progress line every few seconds until the end of the run; returns the readings
/// taken when measuring starts.
async fn report_progress(settings: &Settings, progress: &Progress, start: Instant) -> Snapshot {
    let mut start_snapshot = None;
    let mut last = Snapshot::take(settings.server_pid);
    let mut last_answered = 0;
    let mut next = start + PROGRESS_EVERY;
    loop {
        if start_snapshot.is_none() && next >= progress.measure_from {
            sleep_until(progress.measure_from).await;
            start_snapshot = Some(Snapshot::take(settings.server_pid));
        }
        if next >= progress.end {
            sleep_until(progress.end).await;
            return start_snapshot.unwrap_or_else(|| Snapshot::take(settings.server_pid));
        }
        sleep_until(next).await;
        let now = Snapshot::take(settings.server_pid);
        let answered = progress.answered.load(Ordering::Relaxed);
        let secs = (now.at - last.at).as_secs_f64();
        let mut line = format!(
            "keepalive: {:>4.0}s heartbeats/s={:.0} not_found={}",
            (now.at - start).as_secs_f64(),
            (answered - last_answered) as f64 / secs,
            progress.not_found.load(Ordering::Relaxed)
        );
        if let (Some(a), Some(b)) = (last.server_cpu, now.server_cpu) {
            let _ = write!(line, " server_cpu={:.0}%", percent(b - a, secs));
        }
        if let (Some(a), Some(b)) = (last.own_cpu, now.own_cpu) {
            let _ = write!(line, " bench_cpu={:.0}%", percent(b - a, secs));
        }
        if let Some(rss) = now.server_rss {
            let _ = write!(line, " server_rss={}MiB", rss >> 20);
        }
        eprintln!("{line}");
        last = now;
        last_answered = answered;
        next += PROGRESS_EVERY;
    }
}
