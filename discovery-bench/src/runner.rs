//! The closed loop that both backends run: seed the data, open the connections, drive
//! each on its own task for the warm-up and the measured time, and add up the results.
//!
//! A connection writes a batch of `depth` requests in one write, then reads their answers in
//! order; the latency of a request runs from the start of that write to the end of its
//! answer, so with `depth` 1 it is one round trip. Only batches written after the warm-up
//! count towards throughput and latency; errors count over the whole run. Every wait on
//! the socket is bounded by the I/O timeout, and every connection stops issuing at the end
//! of the measured time or when the run's request budget is spent, so a run always ends.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use crate::histogram::Histogram;
use crate::workload::{Op, Picker, Plan, Workload};

/// Connections that register the seed instances.
const SEED_CONNS: usize = 4;
/// Requests in flight per seeding connection.
const SEED_DEPTH: usize = 256;

/// What one operation came to, as a backend read it from its answer(s). (The server has an
/// `Answer` of its own, a response on its way out; this is the load generator's verdict.)
pub enum OpOutcome<H> {
    /// Success; `items` is the number of instances a query listed (0 for anything else).
    Done {
        /// Instances listed.
        items: usize,
    },
    /// A seed instance was registered under this handle.
    Seeded(H),
    /// The backend refused the operation, or answered what counts as an error (such as
    /// `NotFound` to the heartbeat of a seed instance): counted, and the connection goes on.
    Failed(String),
}

/// A store driven by the load generator, one value per connection.
pub trait Backend: Send + Sized + 'static {
    /// Where the store is and how to talk to it.
    type Config: Clone + Send + Sync + 'static;
    /// What a client keeps to heartbeat an instance: the server's id, or a Redis member.
    type Handle: Send + Sync + 'static;

    /// The name printed in results.
    const NAME: &'static str;

    /// Opens connection number `conn`, ready for requests (after `Hello` for discovery).
    fn connect(
        config: Self::Config,
        plan: Arc<Plan>,
        conn: usize,
    ) -> impl Future<Output = Result<Self, String>> + Send;

    /// Clears what an earlier run left in the store, where the store needs it; called once,
    /// before seeding.
    fn prepare(&mut self) -> impl Future<Output = Result<(), String>> + Send;

    /// The TTL the store announced, if it has one of its own.
    fn server_ttl(&self) -> Option<Duration>;

    /// Appends the request(s) of `op` to the write buffer.
    fn push(&mut self, op: Op, handles: &[Self::Handle]);

    /// Writes what `push` buffered.
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Reads the answer to the oldest pushed operation, `op`. An `Err` means the connection
    /// is out of step or gone.
    fn answer(
        &mut self,
        op: Op,
    ) -> impl Future<Output = io::Result<OpOutcome<Self::Handle>>> + Send;

    /// A task that runs beside the load until `stop` (Redis's reaper), returning a line for
    /// the log, or `None`.
    fn background(
        config: &Self::Config,
        plan: Arc<Plan>,
        stop: Instant,
        io_timeout: Duration,
    ) -> Option<JoinHandle<Result<String, String>>>;
}

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What each connection sends.
    pub workload: Workload,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Time before measuring starts.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// The most requests the whole run sends, warm-up included.
    pub max_requests: u64,
    /// The longest wait for a write or an answer before a connection is given up.
    pub io_timeout: Duration,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    /// Requests answered in the measured time.
    pub requests: u64,
    /// From the end of the warm-up to the last measured answer.
    pub elapsed: Duration,
    /// Latencies of the measured requests.
    pub latency: Histogram,
    /// Requests that failed, over the whole run.
    pub errors: u64,
    /// Connections that broke off (I/O error or timeout).
    pub failed_conns: usize,
    /// Instances listed by measured queries, and the number of those queries.
    pub items: u64,
    /// Measured queries.
    pub queries: u64,
    /// The first error seen, for the log.
    pub first_error: Option<String>,
    /// What the background task said.
    pub background: Option<String>,
}

impl Report {
    /// Measured requests per second.
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }
}

/// Opens `count` connections, numbered from 0.
pub async fn connect_all<B: Backend>(
    config: &B::Config,
    plan: &Arc<Plan>,
    count: usize,
    io_timeout: Duration,
) -> Result<Vec<B>, String> {
    let mut clients = Vec::with_capacity(count);
    for conn in 0..count {
        let client = timeout(io_timeout, B::connect(config.clone(), plan.clone(), conn))
            .await
            .map_err(|_| format!("connection {conn}: no answer within {io_timeout:?}"))??;
        clients.push(client);
    }
    Ok(clients)
}

/// How many connections seeding uses.
pub fn seed_conns(plan: &Plan) -> usize {
    SEED_CONNS.min(plan.instances).max(1)
}

/// Registers every seed instance of `plan` over `clients`, pipelined, and returns their
/// handles by index. Any failure is fatal: a run on partial data would mislead.
pub async fn seed<B: Backend>(
    mut clients: Vec<B>,
    plan: &Arc<Plan>,
    io_timeout: Duration,
) -> Result<Vec<B::Handle>, String> {
    let first = clients.first_mut().ok_or("no connection to seed with")?;
    timeout(io_timeout, first.prepare())
        .await
        .map_err(|_| "clearing the earlier run's keys timed out".to_owned())??;
    let stride = clients.len();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, client)| {
            let plan = plan.clone();
            tokio::spawn(seed_some(client, plan, k, stride, io_timeout))
        })
        .collect();
    let mut handles: Vec<Option<B::Handle>> = (0..plan.instances).map(|_| None).collect();
    for task in tasks {
        let seeded = task
            .await
            .map_err(|e| format!("seeding task failed: {e}"))??;
        for (i, handle) in seeded {
            handles[i] = Some(handle);
        }
    }
    handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| h.ok_or_else(|| format!("seed instance {i} was not registered")))
        .collect()
}

/// Seeds instances `first`, `first + stride`, ... on one connection.
async fn seed_some<B: Backend>(
    mut client: B,
    plan: Arc<Plan>,
    first: usize,
    stride: usize,
    io_timeout: Duration,
) -> Result<Vec<(usize, B::Handle)>, String> {
    let indices: Vec<usize> = (first..plan.instances).step_by(stride).collect();
    let mut out = Vec::with_capacity(indices.len());
    for batch in indices.chunks(SEED_DEPTH) {
        for &i in batch {
            client.push(Op::Seed(i), &[]);
        }
        io_step(io_timeout, client.flush())
            .await
            .map_err(|e| format!("seeding: {e}"))?;
        for &i in batch {
            match io_step(io_timeout, client.answer(Op::Seed(i))).await {
                Ok(OpOutcome::Seeded(handle)) => out.push((i, handle)),
                Ok(OpOutcome::Failed(why)) => return Err(format!("seeding instance {i}: {why}")),
                Ok(OpOutcome::Done { .. }) => {
                    return Err(format!("seeding instance {i}: no handle in the answer"));
                }
                Err(e) => return Err(format!("seeding: {e}")),
            }
        }
    }
    Ok(out)
}

/// What every connection task shares.
struct Schedule {
    settings: Settings,
    measure_from: Instant,
    end: Instant,
    issued: AtomicU64,
}

/// One connection's tally.
#[derive(Default)]
struct Tally {
    latency: Histogram,
    requests: u64,
    errors: u64,
    items: u64,
    queries: u64,
    last_answer: Option<Instant>,
    failure: Option<String>,
    first_error: Option<String>,
}

/// Runs the measured phase on `clients`, which are open and ready, against `handles`.
pub async fn drive<B: Backend>(
    clients: Vec<B>,
    config: &B::Config,
    plan: Arc<Plan>,
    handles: Arc<Vec<B::Handle>>,
    settings: &Settings,
) -> Report {
    let start = Instant::now();
    let measure_from = start + settings.warmup;
    let end = measure_from + settings.duration;
    let schedule = Arc::new(Schedule {
        settings: settings.clone(),
        measure_from,
        end,
        issued: AtomicU64::new(0),
    });
    let background = B::background(config, plan.clone(), end, settings.io_timeout);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(conn, client)| {
            tokio::spawn(drive_one(
                client,
                conn,
                plan.clone(),
                handles.clone(),
                schedule.clone(),
            ))
        })
        .collect();

    let mut report = Report {
        requests: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::default(),
        errors: 0,
        failed_conns: 0,
        items: 0,
        queries: 0,
        first_error: None,
        background: None,
    };
    let mut last_answer = measure_from;
    for task in tasks {
        let tally = match task.await {
            Ok(tally) => tally,
            Err(e) => Tally {
                failure: Some(format!("connection task failed: {e}")),
                ..Tally::default()
            },
        };
        report.latency.merge(&tally.latency);
        report.requests += tally.requests;
        report.errors += tally.errors;
        report.items += tally.items;
        report.queries += tally.queries;
        if let Some(at) = tally.last_answer {
            last_answer = last_answer.max(at);
        }
        if let Some(failure) = tally.failure {
            report.failed_conns += 1;
            report.first_error.get_or_insert(failure);
        }
        if let Some(error) = tally.first_error {
            report.first_error.get_or_insert(error);
        }
    }
    report.elapsed = last_answer - measure_from;
    if let Some(task) = background {
        report.background = Some(match task.await {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                report.errors += 1;
                report.first_error.get_or_insert(e.clone());
                e
            }
            Err(e) => format!("background task failed: {e}"),
        });
    }
    report
}

/// The closed loop of one connection.
async fn drive_one<B: Backend>(
    mut client: B,
    conn: usize,
    plan: Arc<Plan>,
    handles: Arc<Vec<B::Handle>>,
    schedule: Arc<Schedule>,
) -> Tally {
    let settings = &schedule.settings;
    let depth = settings.depth;
    let mut picker = Picker::new(settings.workload, &plan, conn);
    let mut tally = Tally::default();
    let mut batch = Vec::with_capacity(depth);
    loop {
        if Instant::now() >= schedule.end {
            break;
        }
        let issued = schedule.issued.fetch_add(depth as u64, Ordering::Relaxed);
        if issued >= settings.max_requests {
            break;
        }
        batch.clear();
        batch.extend((0..depth).map(|_| picker.next_op()));
        for &op in &batch {
            client.push(op, &handles);
        }
        let written = Instant::now();
        let measured = written >= schedule.measure_from;
        if let Err(e) = io_step(settings.io_timeout, client.flush()).await {
            tally.errors += depth as u64;
            tally.failure = Some(format!("connection {conn}: {e}"));
            break;
        }
        for (answered, &op) in batch.iter().enumerate() {
            let answer = match io_step(settings.io_timeout, client.answer(op)).await {
                Ok(answer) => answer,
                Err(e) => {
                    tally.errors += (depth - answered) as u64;
                    tally.failure = Some(format!("connection {conn}: {e}"));
                    return tally;
                }
            };
            let done = Instant::now();
            match answer {
                OpOutcome::Done { items } if measured => {
                    tally.latency.record(done - written);
                    tally.requests += 1;
                    tally.last_answer = Some(done);
                    if let Op::Query(_) = op {
                        tally.items += items as u64;
                        tally.queries += 1;
                    }
                }
                OpOutcome::Done { .. } => {}
                OpOutcome::Seeded(_) => {
                    tally.errors += 1;
                    tally
                        .first_error
                        .get_or_insert_with(|| "a seed answer outside seeding".into());
                }
                OpOutcome::Failed(why) => {
                    tally.errors += 1;
                    tally.first_error.get_or_insert(why);
                }
            }
        }
    }
    tally
}

/// Awaits one step on a socket for at most `limit`.
pub async fn io_step<T>(
    limit: Duration,
    step: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match timeout(limit, step).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no progress within {limit:?}"),
        )),
    }
}
