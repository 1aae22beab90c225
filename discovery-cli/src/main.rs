//! `discovery-cli`: the discovery registry from the command line.
//!
//! | module | what it is for |
//! |---|---|
//! | [`args`] | the clap types: global options, commands, shell lines, exit codes |
//! | [`commands`] | running one command against a client, with its exit code |
//! | [`output`] | tables and JSON |
//! | [`shell`] | the interactive shell and scripts on standard input |
//!
//! `main` only parses the arguments, builds the runtime and the client, picks how to run,
//! and turns the outcome into an exit code. It has no protocol code: everything goes
//! through `discovery-client`.

mod args;
mod commands;
mod output;
mod shell;

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use clap::Parser;
use discovery_client::Client;
use tokio::runtime::Runtime;

use crate::args::{Cli, Command, RegisterArgs};
use crate::commands::{Context, Exit, Failure};

fn main() -> ExitCode {
    // Usage errors exit 2 and `--help` 0, from clap itself.
    let cli = Cli::parse();
    let exit = match start(&cli) {
        Ok((runtime, ctx)) => {
            let exit = run(&runtime, &ctx, cli);
            drop(ctx);
            // Nothing of ours blocks; do not wait on anything that might.
            runtime.shutdown_background();
            exit
        }
        Err(failure) => shell::report(Err(failure)),
    };
    ExitCode::from(exit.code())
}

/// The runtime, and the client built inside it (it does not connect yet).
fn start(cli: &Cli) -> Result<(Runtime, Context), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Failure::error(format!("cannot start the runtime: {e}")))?;
    let client = {
        let _entered = runtime.enter();
        Client::builder()
            .address(cli.global.server.as_str())
            .connect_timeout(cli.global.timeout)
            .request_timeout(cli.global.timeout)
            .client_name("discovery-cli")
            .build()
            .map_err(|e| Failure::usage(e.to_string()))?
    };
    let ctx = Context {
        client,
        server: cli.global.server.clone(),
        timeout: cli.global.timeout,
    };
    Ok((runtime, ctx))
}

/// Runs the command, the shell or the script on standard input.
fn run(runtime: &Runtime, ctx: &Context, cli: Cli) -> Exit {
    let json = cli.global.json;
    match cli.command {
        Some(Command::Shell) => shell::interactive(runtime, ctx, json),
        None if io::stdin().is_terminal() => shell::interactive(runtime, ctx, json),
        None => shell::script(runtime, ctx, json, io::stdin().lock()),
        Some(Command::Register(args)) if args.keep_alive => {
            shell::report(runtime.block_on(keep_alive(ctx, &args, json)))
        }
        Some(Command::Watch { service_type }) => {
            shell::report(runtime.block_on(watch(ctx, &service_type, json)))
        }
        Some(command) => {
            let mut stdout = io::stdout().lock();
            shell::report(runtime.block_on(commands::run(ctx, &command, json, &mut stdout)))
        }
    }
}

/// `register --keep-alive` until SIGINT or SIGTERM. The handlers are installed before the
/// instance is registered, so a signal that follows the printed id is never lost.
async fn keep_alive(ctx: &Context, args: &RegisterArgs, json: bool) -> Result<Exit, Failure> {
    let stop =
        stop_signal().map_err(|e| Failure::error(format!("cannot listen for signals: {e}")))?;
    let mut stdout = io::stdout().lock();
    commands::keep_alive(ctx, args, json, &mut stdout, stop).await
}

/// `watch TYPE` until SIGINT or SIGTERM. The handlers are installed before the watch
/// starts, so a signal at any point ends it with exit 0.
async fn watch(ctx: &Context, service_type: &str, json: bool) -> Result<Exit, Failure> {
    let stop =
        stop_signal().map_err(|e| Failure::error(format!("cannot listen for signals: {e}")))?;
    let mut stdout = io::stdout().lock();
    commands::watch(ctx, service_type, json, &mut stdout, stop).await
}

/// Completes on the first SIGINT or SIGTERM.
#[cfg(unix)]
fn stop_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn stop_signal() -> io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
