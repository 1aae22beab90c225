//! The `discovery-server` binary: parses its configuration from flags and `DISCOVERY_*`
//! environment variables (clap lives here, not in the library), sets up the logs, serves
//! the in-memory registry, and shuts down gracefully on SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser};
use discovery_proto::MAX_FRAME_BYTES;
use discovery_registry::RegistryConfig;
use discovery_registry::config::{
    DEFAULT_MAX_INSTANCES, DEFAULT_MAX_INSTANCES_PER_TYPE, DEFAULT_MAX_METADATA_KEY_BYTES,
    DEFAULT_MAX_METADATA_PAIRS, DEFAULT_MAX_METADATA_VALUE_BYTES, DEFAULT_MAX_REGISTRY_BYTES,
    DEFAULT_MAX_TYPE_BYTES, DEFAULT_MAX_WATCH_BYTES, DEFAULT_MAX_WATCHED_TYPES,
    DEFAULT_REMEMBERED_REMOVALS, DEFAULT_WATCH_HISTORY, DEFAULT_WATCH_QUEUE, duration,
};
use discovery_server::Registry;
use discovery_server::config::{
    DEFAULT_LISTEN, DEFAULT_MAX_ANSWER_BUFFER_BYTES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_WATCHES_PER_CONNECTION, ServerConfig,
};
use discovery_server::server::Listener;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// A service registry: services register (type, ip, port), keep themselves alive with
/// heartbeats, and are found by type.
#[derive(Debug, Parser)]
#[command(name = "discovery-server", version)]
struct Cli {
    #[command(flatten)]
    server: ServerFlags,
    #[command(flatten)]
    registry: RegistryFlags,
    /// Threads that serve connections, at most 1024; 0 for one per core. Default 0.
    #[arg(long, env = "DISCOVERY_THREADS", default_value_t = 0)]
    threads: usize,
}

/// The flags of [`ServerConfig`], one per field, with the same names.
#[derive(Debug, Args)]
struct ServerFlags {
    /// The address to listen on. Default `127.0.0.1:7777`.
    #[arg(long, env = "DISCOVERY_LISTEN", default_value_t = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where to serve the course's JSON socket protocol too (the course uses
    /// `127.0.0.1:65432`), over the same registry; see `docs/COMPAT.md`. Off by default.
    #[arg(long, env = "DISCOVERY_COMPAT_LISTEN")]
    compat_listen: Option<SocketAddr>,
    /// The most open connections. Default 10,000.
    #[arg(long, env = "DISCOVERY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// The most watches open at once on one connection. Default 64.
    #[arg(long, env = "DISCOVERY_MAX_WATCHES_PER_CONNECTION", default_value_t = DEFAULT_MAX_WATCHES_PER_CONNECTION)]
    max_watches_per_connection: usize,
    /// How long a connection may go without a frame from its client before it is closed
    /// (`60s`). Default 60 s.
    #[arg(long, env = "DISCOVERY_IDLE_TIMEOUT", default_value = "60s", value_parser = duration::parse)]
    idle_timeout: Duration,
    /// How long a client has to finish a frame once its first byte came, before the
    /// connection is cut off (`10s`). Default 10 s.
    #[arg(long, env = "DISCOVERY_FRAME_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    frame_timeout: Duration,
    /// How long shutdown lets connections finish before closing them (`5s`). Default 5 s.
    #[arg(long, env = "DISCOVERY_SHUTDOWN_GRACE", default_value = "5s", value_parser = duration::parse)]
    shutdown_grace: Duration,
    /// The most bytes of answers one connection holds at once; larger answers are streamed
    /// in frames under it. Default 1 MiB (1048576).
    #[arg(long, env = "DISCOVERY_MAX_ANSWER_BUFFER_BYTES", default_value_t = DEFAULT_MAX_ANSWER_BUFFER_BYTES)]
    max_answer_buffer_bytes: usize,
    /// How long a write to a client may make no progress before the connection is cut off
    /// (`10s`); a client that keeps reading is never cut off by it. Default 10 s.
    #[arg(long, env = "DISCOVERY_WRITE_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    write_timeout: Duration,
    /// The most open connections from one peer address (an IPv6 peer counted per /64). Off
    /// by default: many services of one host share its address.
    #[arg(long, env = "DISCOVERY_MAX_CONNECTIONS_PER_PEER")]
    max_connections_per_peer: Option<usize>,
    /// The most registers per second one connection may make, on average; more are
    /// answered `Throttled`. Off by default.
    #[arg(long, env = "DISCOVERY_REGISTER_RATE")]
    register_rate: Option<u32>,
    /// How many registers one connection may make at once above `--register-rate`.
    /// Default: the rate.
    #[arg(long, env = "DISCOVERY_REGISTER_BURST")]
    register_burst: Option<u32>,
}

/// The flags of [`RegistryConfig`], one per field, with the same names.
#[derive(Debug, Args)]
struct RegistryFlags {
    /// How long an instance stays live after its register or last heartbeat (`5s`,
    /// `1500ms`). Default 5 s.
    #[arg(long, env = "DISCOVERY_TTL", default_value = "5s", value_parser = duration::parse)]
    ttl: Duration,
    /// The shortest TTL a register may ask for (`1s`); at least 100 ms, and no longer than
    /// `--ttl`. Default 1 s.
    #[arg(long, env = "DISCOVERY_MIN_TTL", default_value = "1s", value_parser = duration::parse)]
    min_ttl: Duration,
    /// The longest TTL a register may ask for (`1h`); no shorter than `--ttl`. Also how long
    /// the reason a removed id is gone is remembered. Default 1 h.
    #[arg(long, env = "DISCOVERY_MAX_TTL", default_value = "1h", value_parser = duration::parse)]
    max_ttl: Duration,
    /// How many removed ids are remembered with the reason they went, so that a heartbeat
    /// of one is told `replaced`, `expired` or `deregistered`. Default 100,000.
    #[arg(long, env = "DISCOVERY_REMEMBERED_REMOVALS", default_value_t = DEFAULT_REMEMBERED_REMOVALS)]
    remembered_removals: usize,
    /// The most live instances in total. Default 1,000,000.
    #[arg(long, env = "DISCOVERY_MAX_INSTANCES", default_value_t = DEFAULT_MAX_INSTANCES)]
    max_instances: usize,
    /// The most live instances of one type. Default 100,000.
    #[arg(long, env = "DISCOVERY_MAX_INSTANCES_PER_TYPE", default_value_t = DEFAULT_MAX_INSTANCES_PER_TYPE)]
    max_instances_per_type: usize,
    /// The longest service type, in bytes. Default 255.
    #[arg(long, env = "DISCOVERY_MAX_TYPE_BYTES", default_value_t = DEFAULT_MAX_TYPE_BYTES)]
    max_type_bytes: usize,
    /// The most metadata pairs of one instance. Default 64.
    #[arg(long, env = "DISCOVERY_MAX_METADATA_PAIRS", default_value_t = DEFAULT_MAX_METADATA_PAIRS)]
    max_metadata_pairs: usize,
    /// The longest metadata key, in bytes. Default 128.
    #[arg(long, env = "DISCOVERY_MAX_METADATA_KEY_BYTES", default_value_t = DEFAULT_MAX_METADATA_KEY_BYTES)]
    max_metadata_key_bytes: usize,
    /// The longest metadata value, in bytes. Default 512.
    #[arg(long, env = "DISCOVERY_MAX_METADATA_VALUE_BYTES", default_value_t = DEFAULT_MAX_METADATA_VALUE_BYTES)]
    max_metadata_value_bytes: usize,
    /// The largest frame payload accepted or sent, in bytes; at most 65536. Default 65536.
    #[arg(long, env = "DISCOVERY_MAX_FRAME_BYTES", default_value_t = MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// How many changes of a watched type are kept, so that a watcher that reconnects can
    /// resume without a snapshot. Default 1,024.
    #[arg(long, env = "DISCOVERY_WATCH_HISTORY", default_value_t = DEFAULT_WATCH_HISTORY)]
    watch_history: usize,
    /// How many changes may wait for one watcher; one that falls further behind is sent a
    /// reset snapshot instead. Default 1,024.
    #[arg(long, env = "DISCOVERY_WATCH_QUEUE", default_value_t = DEFAULT_WATCH_QUEUE)]
    watch_queue: usize,
    /// How long a type's change history outlives its last watcher (`60s`); after it, a
    /// resume gets a reset snapshot. Default 60 s.
    #[arg(long, env = "DISCOVERY_WATCH_WINDOW", default_value = "60s", value_parser = duration::parse)]
    watch_window: Duration,
    /// The most bytes the live instances and their metadata may take in memory, counted as
    /// the server spends them. Default 1 GiB (1073741824).
    #[arg(long, env = "DISCOVERY_MAX_REGISTRY_BYTES", default_value_t = DEFAULT_MAX_REGISTRY_BYTES)]
    max_registry_bytes: usize,
    /// The most types with a watch feed at once (watched, or within their window). Default
    /// 10,000.
    #[arg(long, env = "DISCOVERY_MAX_WATCHED_TYPES", default_value_t = DEFAULT_MAX_WATCHED_TYPES)]
    max_watched_types: usize,
    /// The most bytes the watch feeds may take in memory. Default 256 MiB (268435456).
    #[arg(long, env = "DISCOVERY_MAX_WATCH_BYTES", default_value_t = DEFAULT_MAX_WATCH_BYTES)]
    max_watch_bytes: usize,
}

impl Cli {
    /// The configuration the flags (and variables, and defaults) say.
    fn config(&self) -> ServerConfig {
        let (s, r) = (&self.server, &self.registry);
        ServerConfig {
            listen: s.listen,
            compat_listen: s.compat_listen,
            registry: RegistryConfig {
                ttl: r.ttl,
                min_ttl: r.min_ttl,
                max_ttl: r.max_ttl,
                remembered_removals: r.remembered_removals,
                max_instances: r.max_instances,
                max_instances_per_type: r.max_instances_per_type,
                max_type_bytes: r.max_type_bytes,
                max_metadata_pairs: r.max_metadata_pairs,
                max_metadata_key_bytes: r.max_metadata_key_bytes,
                max_metadata_value_bytes: r.max_metadata_value_bytes,
                max_frame_bytes: r.max_frame_bytes,
                watch_history: r.watch_history,
                watch_queue: r.watch_queue,
                watch_window: r.watch_window,
                max_registry_bytes: r.max_registry_bytes,
                max_watched_types: r.max_watched_types,
                max_watch_bytes: r.max_watch_bytes,
            },
            max_connections: s.max_connections,
            max_watches_per_connection: s.max_watches_per_connection,
            idle_timeout: s.idle_timeout,
            frame_timeout: s.frame_timeout,
            shutdown_grace: s.shutdown_grace,
            max_answer_buffer_bytes: s.max_answer_buffer_bytes,
            write_timeout: s.write_timeout,
            max_connections_per_peer: s.max_connections_per_peer,
            register_rate: s.register_rate,
            register_burst: s.register_burst,
        }
    }
}

/// The most `--threads`: far more than any machine has cores, and few enough that the
/// runtime starts in moments.
const MAX_THREADS: usize = 1024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Checked before the runtime is built: too many threads would hang the start, and the
    // rest would be refused by the runtime's first task anyway.
    let config = cli.config();
    if let Err(e) = config.validate() {
        return fail(&e.to_string());
    }
    if cli.threads > MAX_THREADS {
        return fail(&format!(
            "invalid configuration: threads must be between 0 and {MAX_THREADS}, not {}",
            cli.threads
        ));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    open_files(config.max_connections);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.threads > 0 {
        builder.worker_threads(cli.threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

async fn serve(config: ServerConfig) -> Result<(), String> {
    config.validate().map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let compat = match config.compat_listen {
        Some(compat_addr) => {
            let compat = TcpListener::bind(compat_addr).await.map_err(|e| {
                format!("cannot listen on {compat_addr} for the compat protocol: {e}")
            })?;
            let bound = compat
                .local_addr()
                .map_err(|e| format!("cannot read the compat listening address: {e}"))?;
            Some((compat, bound))
        }
        None => None,
    };

    let shutdown = CancellationToken::new();
    let signals = wait_for_signal(shutdown.clone()).await?;
    info!(%addr, ttl = ?config.registry.ttl, "discovery-server started");
    // Scripts and tests read these lines to learn the ports when they asked for port 0.
    // The compat line comes first, so that whoever has read `listening on` has both.
    let mut lines = String::new();
    if let Some((_, bound)) = &compat {
        lines.push_str(&format!("compat listening on {bound}\n"));
    }
    lines.push_str(&format!("listening on {addr}\n"));
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(lines.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);

    // One registry and one shutdown for every listener.
    let mut listeners = vec![Listener::binary(listener)];
    listeners.extend(compat.map(|(compat, _)| Listener::compat(compat)));
    let registry = Registry::new(config.registry.clone());
    let result =
        discovery_server::server::serve(listeners, Arc::new(config), registry, shutdown).await;
    signals.abort();
    info!("discovery-server stopped");
    result.map_err(|e| e.to_string())
}

/// Installs the SIGINT and SIGTERM handlers now, so that a signal that comes right after
/// the `listening on` line is not missed, and cancels `shutdown` on the first of them.
async fn wait_for_signal(
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        info!(signal = name, "shutting down");
        shutdown.cancel();
    }))
}

/// Raises the open-files limit as far as the hard limit allows, and says so in one warning
/// when it still leaves less room than `--max-connections` asks for: past it, connections
/// are refused with `TooManyConnections` (compat: `ERROR`) by way of the spare descriptors,
/// before the cap is reached.
fn open_files(max_connections: usize) {
    match discovery_server::descriptors::raise_limit(max_connections) {
        Ok(limit) => {
            if limit.now != limit.before {
                info!(before = ?limit.before, now = ?limit.now, "raised the open-files limit");
            }
            if let (Some(now), Some(room)) = (limit.now, limit.connections())
                && room < max_connections as u64
            {
                warn!(
                    "the open-files limit of {now} leaves room for about {room} connections, \
                     fewer than --max-connections {max_connections}: connections past it are \
                     refused with TooManyConnections (raise the hard limit, e.g. ulimit -Hn)"
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot raise the open-files limit"),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("discovery-server: {message}");
    ExitCode::FAILURE
}
