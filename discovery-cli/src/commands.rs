//! Running one command against a [`Client`], and what came of it.
//!
//! Each command writes its data to a writer (stdout in the binary, a buffer in tests) and
//! returns an [`Exit`]; a failure is a [`Failure`] with a one-line message for stderr. The
//! callers (the one-shot command in `main`, the shell, a script) only print and pass the
//! exit code on, so every way of running a command behaves the same.

use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::time::Duration;

use chrono::Utc;
use discovery_client::{
    Client, Error, Metadata, RegistrationState, Revision, ServiceSpec, WatchEvent,
};

use crate::args::{Command, RegisterArgs};
use crate::output;

/// How a command ended, as the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: it did what was asked.
    Success,
    /// 1: the server could not be reached, or refused the request.
    Failure,
    /// 2: the command line was wrong (clap uses 2 for its own usage errors too).
    Usage,
    /// 3: the server does not know the instance (it never did, or it expired, was
    /// deregistered or was replaced).
    NotFound,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::NotFound => 3,
        }
    }
}

/// A command that failed: the exit code and the one line to print on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// [`Exit::Failure`] or [`Exit::Usage`].
    pub exit: Exit,
    /// What went wrong, for people; one line.
    pub message: String,
}

impl Failure {
    /// A failure to carry out the request (exit 1).
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Failure,
            message: message.into(),
        }
    }

    /// A command that cannot run as typed (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Usage,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<io::Error> for Failure {
    /// Writing to stdout failed (a closed pipe, a full disk).
    fn from(error: io::Error) -> Self {
        Failure::error(format!("cannot write the output: {error}"))
    }
}

/// What every command needs: the client, the server's address for messages, and how long
/// anything may wait.
#[derive(Debug, Clone)]
pub struct Context {
    /// The client, connected on the first command.
    pub client: Client,
    /// The `--server` address as given, to name it in messages.
    pub server: String,
    /// The `--timeout`: what the shell's completion waits for the server at most.
    pub timeout: Duration,
}

/// Runs one command and writes its data to `out`.
///
/// `register --keep-alive`, `watch` and `shell` are not run here: they take over the
/// process (see [`keep_alive`], [`watch`] and the `shell` module), and are refused with a
/// usage failure.
pub async fn run<W: Write>(
    ctx: &Context,
    command: &Command,
    json: bool,
    out: &mut W,
) -> Result<Exit, Failure> {
    let exit = match command {
        Command::Register(args) if args.keep_alive => {
            return Err(Failure::usage(
                "--keep-alive runs in the foreground until stopped: use it as its own command, `discovery-cli register --keep-alive ...`",
            ));
        }
        Command::Register(args) => {
            let granted = ctx
                .client
                .register_once(&spec(args))
                .await
                .map_err(|e| fail(ctx, &e))?;
            out.write_all(output::id(granted.id, json).as_bytes())?;
            Exit::Success
        }
        Command::Heartbeat { id } => {
            let result = ctx.client.heartbeat(*id).await.map(|()| None);
            found(ctx, result, json, out)?
        }
        Command::Deregister { id } => {
            let result = ctx.client.deregister(*id).await.map(|()| None);
            found(ctx, result, json, out)?
        }
        Command::Update { id, metadata } => {
            let metadata: Metadata = metadata.iter().cloned().collect();
            let result = ctx.client.update(*id, metadata).await.map(Some);
            found(ctx, result, json, out)?
        }
        Command::Types => {
            let types = ctx.client.list_types().await.map_err(|e| fail(ctx, &e))?;
            let text = if json {
                output::json_types(&types)
            } else {
                output::types_table(&types)
            };
            out.write_all(text.as_bytes())?;
            Exit::Success
        }
        Command::Query { service_type } => {
            let instances = ctx
                .client
                .query(service_type.as_str())
                .await
                .map_err(|e| fail(ctx, &e))?;
            let text = if json {
                output::json_instances(&instances)
            } else {
                output::table(&instances, Utc::now())
            };
            out.write_all(text.as_bytes())?;
            Exit::Success
        }
        Command::Watch { .. } => {
            return Err(Failure::usage(
                "watch runs in the foreground until stopped: use it as its own command, `discovery-cli watch TYPE`",
            ));
        }
        Command::Shell => return Err(Failure::usage("already in the shell")),
    };
    out.flush()?;
    Ok(exit)
}

/// `register --keep-alive`: registers, prints the id, prints it again whenever the
/// registration's id changes (the server forgot the instance and it was registered anew),
/// and when `stop` completes (SIGINT or SIGTERM in the binary) deregisters and returns.
///
/// A deregister that finds the instance already gone is a success; one that cannot reach
/// the server is a failure (the instance then expires after one TTL). When another register
/// takes the endpoint, the registration stops for good, and so does the command: a failure
/// saying so, and nothing to deregister.
pub async fn keep_alive<W: Write>(
    ctx: &Context,
    args: &RegisterArgs,
    json: bool,
    out: &mut W,
    stop: impl Future<Output = ()>,
) -> Result<Exit, Failure> {
    let registration = ctx
        .client
        .register(spec(args))
        .await
        .map_err(|e| fail(ctx, &e))?;
    let mut printed = registration.id();
    out.write_all(output::id(printed, json).as_bytes())?;
    out.flush()?;

    let mut states = registration.state();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            changed = states.changed() => {
                if changed.is_err() {
                    // The heartbeat loop is gone (it panicked): nothing to watch, wait to stop.
                    (&mut stop).await;
                    break;
                }
                let state = *states.borrow_and_update();
                if let RegistrationState::Replaced { .. } = state {
                    drop(registration);
                    return Err(Failure::error(format!(
                        "another register took {} ({}); stopping",
                        std::net::SocketAddr::new(args.ip, args.port),
                        args.service_type
                    )));
                }
                match state.id() {
                    Some(id) if id != printed => {
                        printed = id;
                        out.write_all(output::id(id, json).as_bytes())?;
                        out.flush()?;
                    }
                    Some(_) => eprintln!("discovery-cli: {} answers again", ctx.server),
                    None => eprintln!(
                        "discovery-cli: lost {}; retrying, the instance is kept alive as soon as it is back",
                        ctx.server
                    ),
                }
            }
        }
    }

    let id = registration.id();
    match registration.shutdown().await {
        Ok(()) => Ok(Exit::Success),
        Err(e) if e.is_not_found() => Ok(Exit::Success),
        Err(e) => Err(Failure::error(format!(
            "could not deregister {id} ({}); it expires after the server's TTL",
            describe(&e, &ctx.server)
        ))),
    }
}

/// `watch TYPE`: prints the type's instances, then every change, until `stop` completes
/// (SIGINT or SIGTERM in the binary), which is a success.
///
/// Stdout gets only the data of [`output::watch_event`]; outages, resumptions and a lag
/// are noted on stderr. The watch outlives outages; it fails only when it cannot start
/// (no server within the timeout, a refused type) or when it ends for good.
pub async fn watch<W: Write>(
    ctx: &Context,
    service_type: &str,
    json: bool,
    out: &mut W,
    stop: impl Future<Output = ()>,
) -> Result<Exit, Failure> {
    tokio::pin!(stop);
    let mut watch = tokio::select! {
        () = &mut stop => return Ok(Exit::Success),
        watch = ctx.client.watch(service_type) => watch.map_err(|e| fail(ctx, &e))?,
    };
    loop {
        let event = tokio::select! {
            () = &mut stop => return Ok(Exit::Success),
            event = watch.recv() => event,
        };
        let Some(event) = event else {
            return Err(Failure::error(format!(
                "the watch of {service_type} ended: the server refused to open it again"
            )));
        };
        match &event {
            WatchEvent::Disconnected { reason } => eprintln!(
                "discovery-cli: lost {} ({reason}); the watch goes on when it is back",
                ctx.server
            ),
            WatchEvent::Resumed { revision } => eprintln!(
                "discovery-cli: {} answers again; resumed after revision {revision}",
                ctx.server
            ),
            WatchEvent::Lagged => {
                eprintln!("discovery-cli: the output fell behind the changes; a full list follows")
            }
            _ => {}
        }
        if let Some(text) = output::watch_event(&event, json) {
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
}

/// The spec `register` announces.
fn spec(args: &RegisterArgs) -> ServiceSpec {
    let address = std::net::SocketAddr::new(args.ip, args.port);
    let spec = args.metadata.iter().fold(
        ServiceSpec::new(args.service_type.clone(), address),
        |spec, (k, v)| spec.with_metadata(k, v),
    );
    match args.ttl {
        Some(ttl) => spec.with_ttl(ttl),
        None => spec,
    }
}

/// A heartbeat's, deregister's or update's answer: `OK` (exit 0, with the revision of an
/// update in JSON) or `NOT FOUND` and why (exit 3), both data on stdout; anything else a
/// failure.
fn found<W: Write>(
    ctx: &Context,
    result: Result<Option<Revision>, Error>,
    json: bool,
    out: &mut W,
) -> Result<Exit, Failure> {
    let (exit, text) = match result {
        Ok(revision) => (Exit::Success, output::ok(revision, json)),
        Err(e) if e.is_not_found() => (
            Exit::NotFound,
            output::not_found(e.not_found_reason(), json),
        ),
        Err(e) => return Err(fail(ctx, &e)),
    };
    out.write_all(text.as_bytes())?;
    Ok(exit)
}

fn fail(ctx: &Context, error: &Error) -> Failure {
    Failure::error(describe(error, &ctx.server))
}

/// One line saying what went wrong, in the user's terms: `cannot reach 127.0.0.1:7777:
/// connection refused` rather than the client's full chain of causes.
pub fn describe(error: &Error, server: &str) -> String {
    match error {
        Error::Unreachable {
            last: Some(last), ..
        } => match &**last {
            Error::Connect { address, source } => {
                format!("cannot reach {address}: {}", io_reason(source))
            }
            other => format!("cannot reach {server}: {}", describe(other, server)),
        },
        Error::Unreachable { waited, last: None } => format!(
            "cannot reach {server}: no connection within {}",
            duration(*waited)
        ),
        Error::Connect { address, source } => {
            format!("cannot reach {address}: {}", io_reason(source))
        }
        Error::Rejected { message, .. } => format!("the server refused the request: {message}"),
        Error::Timeout { after } => format!("no answer from {server} within {}", duration(*after)),
        Error::Throttled { retry_after } => format!(
            "the server is rate-limiting this client; try again in {}",
            duration(*retry_after)
        ),
        other => other.to_string(),
    }
}

/// An operating system error as its short kind (`connection refused`); an error made by the
/// client or the resolver as its own message.
fn io_reason(error: &io::Error) -> String {
    if error.raw_os_error().is_some() {
        error.kind().to_string()
    } else {
        error.to_string()
    }
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery_client::ErrorKind;
    use discovery_client::config::ServerAddress;
    use std::sync::Arc;

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let codes = [Exit::Success, Exit::Failure, Exit::Usage, Exit::NotFound].map(Exit::code);
        assert_eq!(codes, [0, 1, 2, 3]);
    }

    #[test]
    fn an_unreachable_server_is_one_short_line() {
        let error = Error::Unreachable {
            waited: Duration::from_secs(3),
            last: Some(Arc::new(Error::Connect {
                address: ServerAddress::from("127.0.0.1:7777"),
                source: Arc::new(io::Error::from_raw_os_error(111)),
            })),
        };
        assert_eq!(
            describe(&error, "127.0.0.1:7777"),
            "cannot reach 127.0.0.1:7777: connection refused"
        );
        let error = Error::Unreachable {
            waited: Duration::from_millis(500),
            last: None,
        };
        assert_eq!(
            describe(&error, "registry:7777"),
            "cannot reach registry:7777: no connection within 500ms"
        );
    }

    #[test]
    fn a_refusal_carries_the_servers_reason() {
        let error = Error::Rejected {
            kind: ErrorKind::InvalidPort,
            message: "port 0 is not a port".into(),
        };
        assert_eq!(
            describe(&error, "x"),
            "the server refused the request: port 0 is not a port"
        );
    }
}
