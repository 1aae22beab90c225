//! `discovery-bench`: a load generator that drives a running discovery server, or Redis
//! modelled as a registry, over loopback, and prints one line per run.
//!
//! | module | what it holds |
//! |---|---|
//! | `workload` | the types, endpoints and operations, the same for both backends |
//! | `runner` | the closed loop: seeding, connections, timing, the tally |
//! | `keepalive` | `--op keepalive`: many instances kept alive at a steady rate, queried beside (`heartbeat`, `query`, `report` inside) |
//! | `discovery` | the discovery backend: the protocol crate's codec on a raw socket |
//! | `redis` | the Redis backend: sorted sets, a reaper, a RESP client by hand |
//! | `histogram` | latency histograms: HdrHistogram, 3 significant digits |
//! | `memory` | a server's resident memory, from `/proc` |
//! | `cpu` | CPU time of a process and of the machine, from `/proc` |
//! | `output` | the result line: `key=value` pairs, or a JSON object by serde_json |
//!
//! `docs/BENCHMARKS.md` explains what the figures mean; `bench/compare.sh` runs the whole
//! comparison.

mod cpu;
mod discovery;
mod histogram;
mod keepalive;
mod memory;
mod output;
mod redis;
mod runner;
mod workload;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::discovery::{DiscoveryClient, DiscoveryConfig};
use crate::output::{LoadLine, MemoryLine, shown, whole};
use crate::redis::{RedisClient, RedisConfig};
use crate::runner::{Backend, Report, Settings};
use crate::workload::{Plan, Workload};

/// The most connections a run may open.
const MAX_CONNS: usize = 4096;
/// The deepest pipeline a run may keep per connection.
const MAX_DEPTH: usize = 1024;
/// The most seed instances.
const MAX_INSTANCES: usize = 1_000_000;
/// The most service types (their names are `bench-000` on).
const MAX_TYPES: usize = 10_000;
/// The longest measured time.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The most queries per second of a keep-alive run.
const MAX_QUERY_RATE: u32 = 10_000;
/// How long the server settles after seeding, before its memory is read again.
const MEMORY_SETTLE: Duration = Duration::from_secs(1);

/// Drives a discovery server (or Redis, modelled as a registry) on loopback with a closed
/// loop of requests, and prints throughput and latency on one line.
#[derive(Debug, Parser)]
#[command(name = "discovery-bench", version)]
struct Cli {
    /// The store to drive.
    #[arg(long, value_enum, default_value = "discovery")]
    backend: BackendKind,
    /// The discovery server's address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7777")]
    addr: SocketAddr,
    /// Redis's address (loopback only).
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis_addr: SocketAddr,
    /// What each connection sends. `keepalive` keeps every instance alive at a steady
    /// rate (one heartbeat each per `--interval`) while one more connection queries, and
    /// has defaults of its own for the options below.
    #[arg(long, value_enum, default_value = "heartbeat")]
    op: Workload,
    /// Connections, each on its own task [keepalive: 16 heartbeat connections, plus one
    /// for queries].
    #[arg(long, default_value_t = 64, default_value_if("op", "keepalive", "16"))]
    conns: usize,
    /// Requests in flight per connection: each writes a batch of this many, then reads
    /// their answers [keepalive: 128, a window: at most this many heartbeats unanswered].
    #[arg(long, default_value_t = 1, default_value_if("op", "keepalive", "128"))]
    depth: usize,
    /// Measured time (`10s`, `1m`) [keepalive: 60s].
    #[arg(long, default_value = "10s", default_value_if("op", "keepalive", "60s"),
          value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time before measuring starts, under the same load [keepalive: 5s].
    #[arg(long, default_value = "2s", default_value_if("op", "keepalive", "5s"),
          value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Instances registered before the run (the ones heartbeats pick from) [keepalive:
    /// 1000000].
    #[arg(
        long,
        default_value_t = 10_000,
        default_value_if("op", "keepalive", "1000000")
    )]
    instances: usize,
    /// Service types the instances are spread over (queries pick from them) [keepalive:
    /// 1000].
    #[arg(
        long,
        default_value_t = 100,
        default_value_if("op", "keepalive", "1000")
    )]
    types: usize,
    /// Keepalive only: the time between two heartbeats of one instance (`5s`); the run
    /// sends `--instances` / interval heartbeats a second.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Keepalive only: queries of a random type per second, on a connection of their
    /// own (0 for none).
    #[arg(long, default_value_t = 50)]
    query_rate: u32,
    /// Keepalive only: the server's process, whose resident memory and CPU time are
    /// read from `/proc` and reported.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// The most requests the run sends, warm-up included: it stops at this count or at the
    /// end of its time, whichever comes first [keepalive: not used; its pace bounds it].
    #[arg(long, default_value_t = 100_000_000)]
    max_requests: u64,
    /// Redis only: how far ahead a register or heartbeat sets an instance's expiry score
    /// (the discovery server has its own `--ttl`; give it one longer than the run).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The longest wait for a write or an answer before a connection is given up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    io_timeout: Duration,
    /// Instead of a load run: read the resident memory of this process (the server under
    /// test) before and after registering `--instances` instances, and print the bytes
    /// per instance.
    #[arg(long, value_name = "PID")]
    measure_memory: Option<u32>,
    /// Print the result as one JSON object instead of `key=value` pairs.
    #[arg(long)]
    json: bool,
    /// Runtime worker threads of the load generator (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// The stores the load generator can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    /// The discovery server, through its wire protocol.
    Discovery,
    /// Redis, with one sorted set per type.
    Redis,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = validate(&cli) {
        return fail(&message);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let plan = Arc::new(Plan::new(cli.instances, cli.types));
    let result = runtime.block_on(async {
        // Every step is bounded on its own; this bounds the whole in case of a bug. Seeding
        // gets a second per 10,000 instances on top, which is far more than it takes.
        let seeding = Duration::from_secs(cli.instances as u64 / 10_000);
        let limit =
            cli.warmup + cli.duration + 4 * cli.io_timeout + Duration::from_secs(120) + seeding;
        let run = async {
            match cli.backend {
                BackendKind::Discovery if cli.op == Workload::Keepalive => {
                    run_keepalive(&cli, DiscoveryConfig { addr: cli.addr }, plan).await
                }
                BackendKind::Discovery => {
                    let config = DiscoveryConfig { addr: cli.addr };
                    run::<DiscoveryClient>(&cli, config, plan).await
                }
                BackendKind::Redis => {
                    let config = RedisConfig {
                        addr: cli.redis_addr,
                        ttl: cli.ttl,
                    };
                    run::<RedisClient>(&cli, config, plan).await
                }
            }
        };
        tokio::time::timeout(limit, run)
            .await
            .unwrap_or_else(|_| Err(format!("the run did not end within {limit:?}")))
    });
    // Do not wait for tasks stuck on a socket: everything worth keeping is printed.
    runtime.shutdown_background();
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

fn validate(cli: &Cli) -> Result<(), String> {
    let target = match cli.backend {
        BackendKind::Discovery => cli.addr,
        BackendKind::Redis => cli.redis_addr,
    };
    if !target.ip().is_loopback() {
        return Err(format!(
            "{target} is not a loopback address: this load generator drives only servers on \
             this machine (127.0.0.0/8 or ::1)"
        ));
    }
    let checks = [
        (
            (1..=MAX_CONNS).contains(&cli.conns),
            format!("--conns must be 1 to {MAX_CONNS}"),
        ),
        (
            (1..=MAX_DEPTH).contains(&cli.depth),
            format!("--depth must be 1 to {MAX_DEPTH}"),
        ),
        (
            (1..=MAX_INSTANCES).contains(&cli.instances),
            format!("--instances must be 1 to {MAX_INSTANCES}"),
        ),
        (
            (1..=MAX_TYPES.min(cli.instances)).contains(&cli.types),
            format!("--types must be 1 to {MAX_TYPES}, and at most --instances"),
        ),
        (
            !cli.duration.is_zero() && cli.duration <= MAX_DURATION,
            format!("--duration must be above zero and at most {MAX_DURATION:?}"),
        ),
        (
            cli.warmup <= MAX_DURATION,
            format!("--warmup must be at most {MAX_DURATION:?}"),
        ),
        (
            !cli.io_timeout.is_zero() && !cli.ttl.is_zero(),
            "--io-timeout and --ttl must be above zero".to_owned(),
        ),
        (
            cli.max_requests > 0,
            "--max-requests must be above zero".to_owned(),
        ),
        (
            cli.threads != Some(0),
            "--threads must be at least 1".to_owned(),
        ),
        (
            cli.op != Workload::Keepalive || cli.backend == BackendKind::Discovery,
            "--op keepalive drives the discovery backend only".to_owned(),
        ),
        (
            cli.op != Workload::Keepalive || cli.conns <= cli.instances,
            "--op keepalive needs at least one instance per connection".to_owned(),
        ),
        (
            !cli.interval.is_zero() && cli.interval <= MAX_DURATION,
            format!("--interval must be above zero and at most {MAX_DURATION:?}"),
        ),
        (
            cli.query_rate <= MAX_QUERY_RATE,
            format!("--query-rate must be at most {MAX_QUERY_RATE}"),
        ),
    ];
    match checks.into_iter().find(|(ok, _)| !ok) {
        Some((_, message)) => Err(message),
        None => Ok(()),
    }
}

/// One run on backend `B`: a memory measurement or a load run; returns the result line.
async fn run<B: Backend>(cli: &Cli, config: B::Config, plan: Arc<Plan>) -> Result<String, String> {
    let seeders =
        runner::connect_all::<B>(&config, &plan, runner::seed_conns(&plan), cli.io_timeout).await?;
    if let Some(pid) = cli.measure_memory {
        return measure_memory::<B>(cli, seeders, &plan, pid).await;
    }

    let seeding = tokio::time::Instant::now();
    let handles = runner::seed(seeders, &plan, cli.io_timeout).await?;
    eprintln!(
        "{}: seeded {} instances over {} types in {:.2?}",
        B::NAME,
        plan.instances,
        plan.types.len(),
        seeding.elapsed()
    );
    let clients = runner::connect_all::<B>(&config, &plan, cli.conns, cli.io_timeout).await?;
    if let Some(ttl) = clients.first().and_then(B::server_ttl) {
        // Seed instances heartbeated by chance only would expire mid-run.
        if ttl < cli.warmup + cli.duration + Duration::from_secs(10) {
            eprintln!(
                "warning: the server's TTL ({ttl:?}) is not longer than the run: expect \
                 NotFound errors (start it with e.g. --ttl 1h)"
            );
        }
    }
    let settings = Settings {
        workload: cli.op,
        depth: cli.depth,
        warmup: cli.warmup,
        duration: cli.duration,
        max_requests: cli.max_requests,
        io_timeout: cli.io_timeout,
    };
    let report = runner::drive(clients, &config, plan, Arc::new(handles), &settings).await;
    if let Some(line) = &report.background {
        eprintln!("{}: {line}", B::NAME);
    }
    if let Some(error) = &report.first_error {
        eprintln!("{}: first error: {error}", B::NAME);
    }
    Ok(format_report(cli, B::NAME, &report))
}

/// A keep-alive run; returns the result line.
async fn run_keepalive(
    cli: &Cli,
    config: DiscoveryConfig,
    plan: Arc<Plan>,
) -> Result<String, String> {
    let settings = keepalive::Settings {
        conns: cli.conns,
        depth: cli.depth,
        interval: cli.interval,
        warmup: cli.warmup,
        duration: cli.duration,
        query_rate: cli.query_rate,
        io_timeout: cli.io_timeout,
        server_pid: cli.server_pid,
    };
    let report = keepalive::run(config, plan, settings).await?;
    if let Some(error) = &report.first_error {
        eprintln!("discovery: first error: {error}");
    }
    Ok(report.line(cli.json))
}

/// Reads the server's memory, seeds, lets it settle, reads again.
async fn measure_memory<B: Backend>(
    cli: &Cli,
    seeders: Vec<B>,
    plan: &Arc<Plan>,
    pid: u32,
) -> Result<String, String> {
    let before = memory::rss_bytes(pid)?;
    let handles = runner::seed(seeders, plan, cli.io_timeout).await?;
    tokio::time::sleep(MEMORY_SETTLE).await;
    let after = memory::rss_bytes(pid)?;
    let instances = handles.len() as u64;
    let per_instance = after.saturating_sub(before) as f64 / instances as f64;
    let kib = |bytes: u64| bytes / 1024;
    Ok(if cli.json {
        output::json(&MemoryLine {
            op: "memory",
            backend: B::NAME,
            instances: handles.len(),
            types: plan.types.len(),
            rss_before_kib: kib(before),
            rss_after_kib: kib(after),
            bytes_per_instance: shown(per_instance, 1),
        })
    } else {
        format!(
            "op=memory backend={} instances={instances} types={} rss_before={}KiB \
             rss_after={}KiB bytes/instance={per_instance:.1}",
            B::NAME,
            plan.types.len(),
            kib(before),
            kib(after)
        )
    })
}

fn format_report(cli: &Cli, backend: &str, report: &Report) -> String {
    let micros = |q: f64| report.latency.quantile(q).as_secs_f64() * 1e6;
    let (p50, p99, p999) = (micros(0.5), micros(0.99), micros(0.999));
    let max = micros(1.0);
    let items = (report.queries > 0).then(|| report.items as f64 / report.queries as f64);
    let op = cli.op.name();
    let (conns, depth) = (cli.conns, cli.depth);
    let ops = report.ops_per_sec();
    let (requests, errors, failed) = (report.requests, report.errors, report.failed_conns);
    let secs = report.elapsed.as_secs_f64();
    if cli.json {
        output::json(&LoadLine {
            op,
            backend,
            conns,
            depth,
            ops_per_sec: whole(ops),
            p50_us: shown(p50, 1),
            p99_us: shown(p99, 1),
            p999_us: shown(p999, 1),
            max_us: shown(max, 1),
            errors,
            failed_conns: failed,
            requests,
            seconds: shown(secs, 3),
            items_per_query: items.map(|i| shown(i, 1)),
        })
    } else {
        let mut line = format!(
            "op={op} backend={backend} conns={conns} depth={depth} ops/s={ops:.0} \
             p50={p50:.1}us p99={p99:.1}us p999={p999:.1}us max={max:.1}us errors={errors} \
             failed_conns={failed} requests={requests} seconds={secs:.2}"
        );
        if let Some(items) = items {
            line.push_str(&format!(" items/query={items:.1}"));
        }
        line
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("discovery-bench: {message}");
    ExitCode::FAILURE
}
