//! `discovery-soak`: keeps 10,000 instances alive through the client library while a share
//! of them stop, crash, deregister and re-register at random, kills the server with
//! SIGKILL and restarts it on the same port partway through, and checks all along, with
//! queries and watches, that no live instance is ever missing from an answer and no dead
//! one is ever served. Bounded in time (a minute by default, plus setup and a quiet end);
//! run by hand, never in CI. See `docs/RELIABILITY.md`.
//!
//! | module | what it is for |
//! |---|---|
//! | `server` | the server as a child process: start, SIGKILL, start again on the same port |
//! | `churn` | the slots, their registrations, and the churn driver |
//! | `checker` | the query loops and the watches |
//! | `ledger` | what is known of every id, and the rules that count violations |
//! | `report` | the summary and restart lines |

mod checker;
mod churn;
mod ledger;
mod report;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use discovery_client::Client;
use tokio::time::{Instant, MissedTickBehavior, sleep};

use crate::checker::{Checker, checked_query};
use crate::churn::{Churn, Shared};
use crate::ledger::Ledger;
use crate::report::{RestartReport, Summary, peak_per};
use crate::server::ServerProcess;

/// The churn soak of the discovery registry.
#[derive(Debug, Parser)]
#[command(name = "discovery-soak", version)]
struct Args {
    /// How long the churn runs (`60s`, `2m`). Registering the population before, and a quiet
    /// end of one TTL and a few seconds after, come on top. At most an hour.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The server binary to start (and kill, and start again).
    #[arg(long, default_value = "target/release/discovery-server")]
    server_bin: PathBuf,
    /// Use a server already running there instead of starting one; then there is no
    /// restart, and the TTL is the one that server announces.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// The TTL to start the server with.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How many instances are kept alive.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Over how many client connections they are spread.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Over how many service types they are spread.
    #[arg(long, default_value_t = 10)]
    types: usize,
    /// The share of the running registrations that each of the four actions (stop, crash,
    /// deregister, re-register) hits per second.
    #[arg(long, default_value_t = 0.01)]
    churn: f64,
    /// How many query loops the checker runs, each over every type in turn.
    #[arg(long, default_value_t = 2)]
    queriers: usize,
    /// A pause after each query of each loop.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    query_pause: Duration,
    /// When to kill the server and start it again, as a fraction of the duration; 0 for
    /// never.
    #[arg(long, default_value_t = 2.0 / 3.0)]
    restart_at: f64,
    /// How long the killed server stays down before it is started again.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    down_for: Duration,
    /// Added to the TTL before a dropped registration's instance counts as dead.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    margin: Duration,
    /// The seed of the churn's choices; random when not given (it is printed).
    #[arg(long)]
    seed: Option<u64>,
}

/// How often the churn driver starts actions.
const TICK: Duration = Duration::from_millis(100);
/// How long the population may take to register.
const SETUP_PATIENCE: Duration = Duration::from_secs(60);
/// How long churn actions under way may take to finish.
const DRAIN_PATIENCE: Duration = Duration::from_secs(15);
/// How long the restarted server may take to list every registration.
const RESTART_PATIENCE: Duration = Duration::from_secs(30);
/// How often the restart polls for every registration to be listed.
const RESTART_POLL: Duration = Duration::from_millis(50);
/// How long the watches may take to settle at the end.
const SETTLE_PATIENCE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(message) = check(&args) {
        eprintln!("discovery-soak: {message}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("discovery-soak: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(soak(args));
    // The registrations' background tasks go with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(summary) => {
            let failures = summary.failures();
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("discovery-soak: FAILED: {}", failures.join("; "));
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("discovery-soak: FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: &Args) -> Result<(), String> {
    if args.duration.is_zero() || args.duration > Duration::from_secs(3600) {
        return Err("--duration must be between 0 and an hour".into());
    }
    if args.instances == 0 || args.instances > 1_000_000 {
        return Err("--instances must be between 1 and 1,000,000".into());
    }
    if args.clients == 0 || args.types == 0 || args.queriers == 0 {
        return Err("--clients, --types and --queriers must be at least 1".into());
    }
    if !(0.0..=2.5).contains(&args.churn) {
        return Err("--churn must be between 0 and 2.5 (a share per second)".into());
    }
    if !(0.0..1.0).contains(&args.restart_at) {
        return Err("--restart-at must be at least 0 and under 1".into());
    }
    if args.ttl < Duration::from_millis(100) {
        return Err("--ttl must be at least 100ms".into());
    }
    Ok(())
}

async fn soak(args: Args) -> Result<Summary, String> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let mut server = match args.addr {
        Some(_) => None,
        None => {
            let bin = args.server_bin.clone();
            let ttl = args.ttl;
            Some(tokio::task::block_in_place(|| {
                ServerProcess::start(bin, ttl)
            })?)
        }
    };
    let address = match (&server, args.addr) {
        (Some(server), _) => server.address(),
        (None, Some(addr)) => addr,
        (None, None) => unreachable!("either a server is started or --addr is given"),
    };
    let build = |name: String| {
        Client::builder()
            .address(address)
            .client_name(name)
            .build()
            .map_err(|e| format!("cannot build a client: {e}"))
    };
    let clients = (0..args.clients)
        .map(|n| build(format!("soak-{n}")))
        .collect::<Result<Vec<_>, _>>()?;
    let querier = build("soak-querier".into())?;
    let watcher = build("soak-watcher".into())?;
    clients[0]
        .ping()
        .await
        .map_err(|e| format!("no server at {address}: {e}"))?;
    let ttl = clients[0].ttl().unwrap_or(args.ttl);

    let shared = Arc::new(Shared {
        ledger: Mutex::new(Ledger::new(args.types)),
        ttl,
        margin: args.margin,
        types: args.types,
    });
    eprintln!(
        "discovery-soak: server {address}{}, TTL {ttl:?}; {} instances over {} clients and {} \
         types; churn {}/s per action; {} of churn; seed {seed}",
        server
            .as_ref()
            .and_then(ServerProcess::pid)
            .map(|pid| format!(" (pid {pid})"))
            .unwrap_or_default(),
        args.instances,
        args.clients,
        args.types,
        args.churn,
        humantime::format_duration(args.duration),
    );

    let mut churn = Churn::new(args.instances, clients, shared.clone(), args.churn, seed);
    let began = Instant::now();
    churn.register_all(SETUP_PATIENCE).await?;
    eprintln!(
        "discovery-soak: {} registered in {:?}",
        churn.live(),
        began.elapsed()
    );

    // Every loop of the checker ends by this instant whatever happens.
    let hard_stop = Instant::now()
        + args.duration
        + DRAIN_PATIENCE
        + RESTART_PATIENCE
        + args.down_for
        + ttl * 2
        + Duration::from_secs(30);
    let checker = Checker::start(
        &querier,
        &watcher,
        &shared,
        args.queriers,
        args.query_pause,
        hard_stop,
    )
    .await
    .map_err(|e| format!("cannot start the checker: {e}"))?;

    let start = Instant::now();
    let end = start + args.duration;
    let mut restart_at = (server.is_some() && args.restart_at > 0.0)
        .then(|| start + args.duration.mul_f64(args.restart_at));
    let mut restart = None;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut progress_at = start + Duration::from_secs(10);
    loop {
        tokio::select! {
            Some(done) = churn.next_done() => {
                churn.finish(done);
                continue;
            }
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let (Some(at), Some(server)) = (restart_at, server.as_mut())
            && now >= at
        {
            restart_at = None;
            churn.drain(DRAIN_PATIENCE).await?;
            let report =
                kill_and_restart(server, &querier, &shared, args.down_for, now - start).await?;
            eprintln!("discovery-soak: {report}");
            restart = Some(report);
            continue;
        }
        churn.tick(TICK);
        if now >= progress_at {
            progress_at += Duration::from_secs(10);
            let counts = shared.ledger().finish();
            eprintln!(
                "discovery-soak: {:>3.0} s: {} live, {} churn actions, {} queries, missing {}, \
                 dead served {}",
                (now - start).as_secs_f64(),
                churn.live(),
                churn.counts().total(),
                counts.queries,
                counts.missing,
                counts.dead_served,
            );
        }
    }
    churn.drain(DRAIN_PATIENCE).await?;
    let churned_for = start.elapsed();

    // A quiet end: every dropped instance expires, the checker goes on.
    sleep(ttl + args.margin + Duration::from_secs(1)).await;
    let (final_view_missing, final_view_extra) = checker.converge(&shared, SETTLE_PATIENCE).await;
    let watches = checker.stop().await;

    let live_at_end = churn.live();
    let churn_counts = churn.counts();
    let mut ledger = shared.ledger();
    let watch_dead = watches.iter().map(|w| ledger.replay(&w.log)).sum();
    let summary = Summary {
        counts: ledger.finish(),
        churn: churn_counts,
        watch_dead,
        final_view_missing,
        final_view_extra,
        watch_events: watches.iter().map(|w| w.events).sum(),
        watch_resets: watches.iter().map(|w| w.resets).sum(),
        watch_lagged: watches.iter().map(|w| w.lagged).sum(),
        churned_for,
        slots: args.instances,
        live_at_end,
    };
    drop(ledger);
    println!("{summary}");
    if let Some(restart) = &restart {
        println!("{restart}");
    }
    for example in &summary.counts.examples {
        println!("  e.g. {example}");
    }

    // Kill the server first, so that the registrations dropped below do not deregister
    // one by one.
    if let Some(server) = server.as_mut() {
        tokio::task::block_in_place(|| server.kill())?;
    }
    drop(churn.into_registrations());
    Ok(summary)
}

/// Kills the server with SIGKILL, starts it again on the same port after `down_for`, and
/// measures how long until a round of queries lists every running registration, and how
/// the registrations' re-registrations were spread.
async fn kill_and_restart(
    server: &mut ServerProcess,
    client: &Client,
    shared: &Shared,
    down_for: Duration,
    at: Duration,
) -> Result<RestartReport, String> {
    let live = (0..shared.types)
        .map(|t| shared.ledger().live(t).len())
        .sum();
    let pid = server.pid().unwrap_or_default();
    shared.ledger().restart_began(Instant::now());
    tokio::task::block_in_place(|| server.kill())?;
    let killed = Instant::now();
    shared.ledger().all_dead(killed);
    sleep(down_for).await;
    tokio::task::block_in_place(|| server.restart())?;
    let up = Instant::now();

    let give_up = up + RESTART_PATIENCE;
    loop {
        let mut all = true;
        for service_type in 0..shared.types {
            all &= checked_query(client, shared, service_type).await == Some(true);
        }
        if all {
            break;
        }
        if Instant::now() >= give_up {
            return Err(format!(
                "the restarted server did not list every registration within {RESTART_PATIENCE:?}"
            ));
        }
        sleep(RESTART_POLL).await;
    }
    let listed = Instant::now();
    shared.ledger().restart_ended(listed);

    let times = shared.ledger().restart_reregistrations();
    let since_up = |time: Option<&Instant>| {
        time.map(|t| t.saturating_duration_since(up))
            .unwrap_or_default()
    };
    Ok(RestartReport {
        at,
        pid,
        live,
        down: up - killed,
        listed_after_up: listed - up,
        reregistrations: times.len(),
        first: since_up(times.first()),
        last: since_up(times.last()),
        peak_per_second: peak_per(Duration::from_secs(1), &times),
        peak_per_100ms: peak_per(Duration::from_millis(100), &times),
    })
}
