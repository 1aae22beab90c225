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

use std::fmt::Write as _;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use discovery_proto::codec::ClientCodec;
use discovery_proto::{ClientFrame, Request, RequestId, Response};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_util::codec::Encoder;
use uuid::Uuid;

use crate::cpu;
use crate::discovery::{self, DiscoveryClient, DiscoveryConfig, FrameReader};
use crate::histogram::Histogram;
use crate::memory;
use crate::output::{self, Pairs, shown, whole};
use crate::runner::{self, Backend, OpOutcome, io_step};
use crate::workload::{Op, Plan};

/// How often a heartbeat connection sends what is due.
const TICK: Duration = Duration::from_millis(10);
/// Connections that register the instances.
const REGISTER_CONNS: usize = 4;
/// How often a progress line goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Types queried at once by the final count.
const COUNT_DEPTH: usize = 16;
/// The least size of a heartbeat connection's read and write buffers.
const BUF_BYTES: usize = 64 * 1024;

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

/// Readings of `/proc` at one moment.
#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    server_cpu: Option<Duration>,
    server_rss: Option<u64>,
    own_cpu: Option<Duration>,
    /// The machine's (busy, total) CPU time.
    machine: Option<(Duration, Duration)>,
}

impl Snapshot {
    fn take(server_pid: Option<u32>) -> Self {
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

/// One heartbeat connection's tally.
#[derive(Default)]
struct HeartbeatTally {
    /// Latencies of the heartbeats sent in the measured time and answered `Ok`.
    latency: Histogram,
    /// Heartbeats sent in the measured time and answered `Ok`.
    measured: u64,
    /// Heartbeats sent, over the whole run.
    sent: u64,
    not_found: u64,
    /// Error answers, unexpected answers, and heartbeats lost with a broken connection.
    errors: u64,
    first_error: Option<String>,
    /// Why the connection broke off, if it did.
    failure: Option<String>,
    /// The longest round of the connection's share.
    longest_pass: Duration,
    /// Rounds of the share completed.
    passes: u64,
    /// The most the connection was behind its schedule at a tick.
    max_lag: Duration,
}

/// The query connection's tally.
#[derive(Default)]
struct QueryTally {
    latency: Histogram,
    queries: u64,
    items: u64,
    errors: u64,
    first_error: Option<String>,
    failure: Option<String>,
}

/// The outcome of a keep-alive run.
#[derive(Debug)]
pub struct Report {
    instances: usize,
    types: usize,
    settings: Settings,
    server_ttl: Duration,
    register_time: Duration,
    /// Wall time between the two readings of `/proc` (the measured time, give or take a
    /// timer's lateness), over which CPU use is averaged.
    cpu_window: Duration,
    heartbeats: u64,
    heartbeat_latency: Histogram,
    not_found: u64,
    errors: u64,
    failed_conns: usize,
    /// The longest round of a connection's share; `None` when none completed one.
    longest_pass: Option<Duration>,
    max_lag: Duration,
    queries: u64,
    query_items: u64,
    query_latency: Histogram,
    live_at_end: Option<u64>,
    rss_empty: Option<u64>,
    rss_peak: Option<u64>,
    start: Snapshot,
    end: Snapshot,
    /// The first error seen, for the log.
    pub first_error: Option<String>,
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

/// CPU time as a percentage of one core over `secs` of wall time.
fn percent(cpu: Duration, secs: f64) -> f64 {
    if secs > 0.0 {
        cpu.as_secs_f64() / secs * 100.0
    } else {
        0.0
    }
}

/// One heartbeat connection: a writer here, a reader on its own task.
async fn heartbeat_conn(
    client: DiscoveryClient,
    ids: Arc<Vec<Uuid>>,
    share: Range<usize>,
    first_tick: Instant,
    settings: Arc<Settings>,
    progress: Arc<Progress>,
) -> HeartbeatTally {
    let (mut frames, write_half, next_id, limit) = client.into_parts();
    frames.read_buffer_mut().reserve(BUF_BYTES);
    let window = Arc::new(Semaphore::new(settings.depth));
    let (sent_tx, sent_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_answers(
        frames,
        sent_rx,
        window.clone(),
        progress.clone(),
        settings.io_timeout,
    ));
    let writer = Writer {
        half: write_half,
        codec: ClientCodec::new(limit),
        buf: BytesMut::with_capacity(BUF_BYTES),
        next_id,
        sent_tx,
        window,
        batch: (settings.depth / 4).max(1),
        io_timeout: settings.io_timeout,
    };
    let mut tally = writer
        .run(&ids, share, first_tick, settings.interval, progress.end)
        .await;
    // The writer has closed its side of the channel: the reader ends once it has read the
    // answers to what was sent, or at its first failure, each wait bounded.
    match reader.await {
        Ok(read) => {
            tally.latency = read.latency;
            tally.measured = read.measured;
            tally.not_found = read.not_found;
            tally.errors += read.errors;
            tally.first_error = read.first_error;
            // The reader's reason comes first: a writer that fails after it only sees the
            // consequence.
            tally.failure = read.failure.or(tally.failure);
        }
        Err(e) => tally.failure = Some(format!("reader task failed: {e}")),
    }
    tally
}

/// The sending side of a heartbeat connection.
struct Writer {
    half: OwnedWriteHalf,
    codec: ClientCodec,
    buf: BytesMut,
    next_id: RequestId,
    /// Each request sent, in order: its id, its instance and when it was sent.
    sent_tx: mpsc::UnboundedSender<(RequestId, usize, Instant)>,
    /// A permit per request in flight; the reader gives them back.
    window: Arc<Semaphore>,
    /// The most requests taken room for at once: a quarter of the window.
    batch: usize,
    io_timeout: Duration,
}

impl Writer {
    /// Heartbeats `share` round and round, once per `interval`, from `first_tick` until
    /// `end`. Returns the sending half of a tally.
    async fn run(
        mut self,
        ids: &[Uuid],
        share: Range<usize>,
        first_tick: Instant,
        interval: Duration,
        end: Instant,
    ) -> HeartbeatTally {
        let mut tally = HeartbeatTally::default();
        let rate = share.len() as f64 / interval.as_secs_f64();
        let mut cursor = share.start;
        let mut pass_start = first_tick;
        let mut ticks = interval_at(first_tick, TICK);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        'run: loop {
            ticks.tick().await;
            let now = Instant::now();
            if now >= end || share.is_empty() {
                break;
            }
            // Due so far: the schedule, rounded up so that the first tick sends.
            let due = ((now - first_tick).as_secs_f64() * rate).ceil() as u64;
            let behind = due.saturating_sub(tally.sent) as f64 / rate;
            tally.max_lag = tally.max_lag.max(Duration::from_secs_f64(behind));
            while tally.sent < due {
                // Room for a few at a time, so that a full window does not turn into one
                // write per answer.
                let count = (due - tally.sent).min(self.batch as u64) as u32;
                if let Err(e) = self.take_permits(count, end).await {
                    if !e.is_empty() {
                        tally.failure = Some(e);
                    }
                    break 'run;
                }
                for _ in 0..count {
                    let id = self.next_id;
                    self.next_id += 1;
                    let frame = ClientFrame::new(id, Request::Heartbeat { id: ids[cursor] });
                    if let Err(e) = self.codec.encode(frame, &mut self.buf) {
                        tally.failure = Some(format!("cannot encode a heartbeat: {e}"));
                        break 'run;
                    }
                    if self.sent_tx.send((id, cursor, Instant::now())).is_err() {
                        // The reader has stopped and says why.
                        break 'run;
                    }
                    tally.sent += 1;
                    cursor += 1;
                    if cursor == share.end {
                        cursor = share.start;
                        let now = Instant::now();
                        tally.longest_pass = tally.longest_pass.max(now - pass_start);
                        tally.passes += 1;
                        pass_start = now;
                    }
                }
            }
            if let Err(e) = self.flush().await {
                tally.failure = Some(e);
                break;
            }
        }
        // What was encoded is in the reader's queue: write it, so that it is answered.
        if let Err(e) = self.flush().await {
            tally.failure.get_or_insert(e);
        }
        tally
    }

    /// Takes room for `count` more requests in the window; when there is not enough,
    /// writes what is buffered and waits. `Err("")` when the run ended while waiting.
    async fn take_permits(&mut self, count: u32, end: Instant) -> Result<(), String> {
        if let Ok(permit) = self.window.try_acquire_many(count) {
            permit.forget();
            return Ok(());
        }
        self.flush().await?;
        match timeout(self.io_timeout, self.window.acquire_many(count)).await {
            Ok(Ok(permit)) => {
                permit.forget();
                if Instant::now() >= end {
                    return Err(String::new());
                }
                Ok(())
            }
            // Closed: the reader stopped, and says why.
            Ok(Err(_)) => Err(String::new()),
            Err(_) => Err(format!(
                "no room in the window within {:?}: answers stopped coming",
                self.io_timeout
            )),
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let write = self.half.write_all(&self.buf);
        match timeout(self.io_timeout, write).await {
            Ok(Ok(())) => {
                self.buf.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err(format!("write: no progress within {:?}", self.io_timeout)),
        }
    }
}

/// The receiving side of a heartbeat connection: one answer per request sent, in order.
async fn read_answers(
    mut frames: FrameReader,
    mut sent_rx: mpsc::UnboundedReceiver<(RequestId, usize, Instant)>,
    window: Arc<Semaphore>,
    progress: Arc<Progress>,
    io_timeout: Duration,
) -> HeartbeatTally {
    let mut tally = HeartbeatTally::default();
    while let Some((id, instance, sent_at)) = sent_rx.recv().await {
        let frame = match timeout(io_timeout, next_frame(&mut frames)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => {
                tally.failure = Some(format!("read: {e}"));
                tally.errors += 1;
                break;
            }
            Err(_) => {
                tally.failure = Some(format!("read: no answer within {io_timeout:?}"));
                tally.errors += 1;
                break;
            }
        };
        let done = Instant::now();
        if frame.request_id != id {
            tally.failure = Some(format!(
                "answer to request {} ({:?}) while waiting for {id}",
                frame.request_id, frame.response
            ));
            tally.errors += 1;
            break;
        }
        match frame.response {
            Response::Ok => {
                if sent_at >= progress.measure_from && sent_at < progress.end {
                    tally.latency.record(done - sent_at);
                    tally.measured += 1;
                }
            }
            Response::NotFound => {
                tally.not_found += 1;
                progress.not_found.fetch_add(1, Ordering::Relaxed);
                tally.first_error.get_or_insert_with(|| {
                    format!("the heartbeat of instance {instance} answered NotFound")
                });
            }
            Response::Error { kind, message } => {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| format!("heartbeat: {kind:?}: {message}"));
            }
            other => {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| format!("heartbeat answered {other:?}"));
            }
        }
        progress.answered.fetch_add(1, Ordering::Relaxed);
        window.add_permits(1);
    }
    // Wake a writer waiting for room, and count what will never be answered.
    window.close();
    sent_rx.close();
    while sent_rx.try_recv().is_ok() {
        tally.errors += 1;
    }
    tally
}

/// Reads the next frame of a connection; its end is an error too.
async fn next_frame(frames: &mut FrameReader) -> io::Result<discovery_proto::ServerFrame> {
    match frames.next().await {
        Some(Ok(Ok(frame))) => Ok(frame),
        Some(Ok(Err(e)) | Err(e)) => Err(discovery::into_io(e)),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// Queries a random type `query_rate` times a second until the end of the run.
async fn query_loop(
    mut client: DiscoveryClient,
    types: usize,
    start: Instant,
    settings: Arc<Settings>,
    progress: Arc<Progress>,
) -> QueryTally {
    let mut tally = QueryTally::default();
    if settings.query_rate == 0 {
        return tally;
    }
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9);
    let period = Duration::from_secs_f64(1.0 / f64::from(settings.query_rate));
    let mut ticks = interval_at(start, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        if Instant::now() >= progress.end {
            break;
        }
        let op = Op::Query(rng.usize(0..types));
        client.push(op, &[]);
        let written = Instant::now();
        let answer = match io_step(settings.io_timeout, client.flush()).await {
            Ok(()) => io_step(settings.io_timeout, client.answer(op)).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(OpOutcome::Done { items }) => {
                if written >= progress.measure_from {
                    tally.latency.record(written.elapsed());
                    tally.queries += 1;
                    tally.items += items as u64;
                }
            }
            Ok(OpOutcome::Failed(why)) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(format!("query: {why}"));
            }
            Ok(OpOutcome::Seeded(_)) => {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert("a query answered Registered".into());
            }
            Err(e) => {
                tally.errors += 1;
                tally.failure = Some(format!("query connection: {e}"));
                break;
            }
        }
    }
    tally
}

/// Queries every type once, on a fresh connection, and adds up the instances listed.
async fn count_live(
    config: &DiscoveryConfig,
    plan: &Arc<Plan>,
    io_timeout: Duration,
) -> Result<u64, String> {
    let mut client = runner::connect_all::<DiscoveryClient>(config, plan, 1, io_timeout)
        .await?
        .pop()
        .ok_or("no connection")?;
    let types: Vec<usize> = (0..plan.types.len()).collect();
    let mut live = 0;
    for batch in types.chunks(COUNT_DEPTH) {
        for &t in batch {
            client.push(Op::Query(t), &[]);
        }
        io_step(io_timeout, client.flush())
            .await
            .map_err(|e| e.to_string())?;
        for &t in batch {
            match io_step(io_timeout, client.answer(Op::Query(t))).await {
                Ok(OpOutcome::Done { items }) => live += items as u64,
                Ok(OpOutcome::Failed(why)) => return Err(why),
                Ok(OpOutcome::Seeded(_)) => return Err("a query answered Registered".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok(live)
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
