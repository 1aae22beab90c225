//! The `discovery-server` binary: parses its configuration from flags and `DISCOVERY_*`
//! environment variables, serves the in-memory registry, and shuts down gracefully on
//! SIGINT or SIGTERM.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use discovery_server::Registry;
use discovery_server::config::ServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// A service registry: services register (type, ip, port), keep themselves alive with
/// heartbeats, and are found by type.
#[derive(Debug, Parser)]
#[command(name = "discovery-server", version)]
struct Cli {
    #[command(flatten)]
    config: ServerConfig,
    /// Threads that serve connections; 0 for one per core. Default 0.
    #[arg(long, env = "DISCOVERY_THREADS", default_value_t = 0)]
    threads: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.threads > 0 {
        builder.worker_threads(cli.threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(serve(cli.config)) {
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

    // One registry and one shutdown for both listeners.
    let compat = compat.map(|(compat, _)| compat);
    let registry = Registry::new(config.registry.clone());
    let result = discovery_server::server::serve_with_compat(
        listener,
        compat,
        Arc::new(config),
        registry,
        shutdown,
    )
    .await;
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

fn fail(message: &str) -> ExitCode {
    eprintln!("discovery-server: {message}");
    ExitCode::FAILURE
}
