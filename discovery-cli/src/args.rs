//! The command line, as clap types: the global options and the commands.
//!
//! The same [`Command`] enum serves the program's arguments and every line of the shell or
//! of a script, so that a command means the same thing wherever it is typed. The global
//! options are `global = true`, so they may come before or after the command.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use discovery_client::Uuid;

/// The exit codes, shown after `--help` and written in the README.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure: the server is unreachable, or it refused the request
  2  usage: the command line is wrong
  3  not found: the server does not know the instance (heartbeat, deregister, update)

A script on standard input (no command, stdin not a terminal) runs every line and exits 0
when all succeeded, else with the code of the last line that failed.";

/// Register, heartbeat, deregister and query services in a discovery registry.
///
/// With no command, starts an interactive shell when standard input is a terminal, and
/// otherwise runs the commands read from standard input, one per line.
#[derive(Debug, Parser)]
#[command(name = "discovery-cli", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Options that apply to every command.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do; none means the shell (or a script on standard input).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options accepted before or after any command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The server to talk to, as HOST:PORT (a host without a port gets 7777).
    #[arg(
        long,
        global = true,
        env = "DISCOVERY_SERVER",
        value_name = "ADDR",
        default_value = "127.0.0.1:7777"
    )]
    pub server: String,

    /// Print data as JSON instead of tables and plain lines.
    #[arg(long, global = true)]
    pub json: bool,

    /// How long to wait to reach the server, and then for each answer (`3s`, `500ms`).
    #[arg(long, global = true, value_name = "DURATION", default_value = "3s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// One command, from the program's arguments or from one line of the shell.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Register an instance and print its new id. It then lives one TTL unless heartbeated,
    /// or as long as `--keep-alive` runs.
    Register(RegisterArgs),
    /// Keep an instance alive for another TTL: prints OK, or NOT FOUND with the reason the
    /// server knows (replaced, expired, deregistered) and exit 3.
    Heartbeat {
        /// The instance's id.
        id: Uuid,
    },
    /// Remove an instance at once: prints OK, or NOT FOUND (exit 3) like heartbeat.
    Deregister {
        /// The instance's id.
        id: Uuid,
    },
    /// Replace an instance's metadata, keeping its id: prints OK, or NOT FOUND (exit 3)
    /// like heartbeat. The pairs given are the whole new metadata; none clears it.
    Update {
        /// The instance's id.
        id: Uuid,
        /// A metadata pair; repeat for more.
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_pair)]
        metadata: Vec<(String, String)>,
    },
    /// List the live instances of a type (an empty list is not an error).
    Query {
        /// The service type, such as `billing`.
        #[arg(value_name = "TYPE")]
        service_type: String,
    },
    /// List every type that has live instances, with how many, sorted by type.
    Types,
    /// Print the instances of a type, then one line per change as it happens, until SIGINT
    /// or SIGTERM (exit 0). Survives server outages, resuming where it stopped; fails
    /// (exit 1) only when no server answers within --timeout at the start.
    Watch {
        /// The service type, such as `billing`.
        #[arg(value_name = "TYPE")]
        service_type: String,
    },
    /// Start the interactive shell.
    Shell,
}

/// What `register` announces.
#[derive(Debug, Clone, Args)]
pub struct RegisterArgs {
    /// The service type, such as `billing`.
    #[arg(long = "type", value_name = "TYPE")]
    pub service_type: String,

    /// The address callers connect to (not 0.0.0.0).
    #[arg(long)]
    pub ip: IpAddr,

    /// The port callers connect to.
    #[arg(long)]
    pub port: u16,

    /// A metadata pair; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub metadata: Vec<(String, String)>,

    /// How long the instance stays live without a heartbeat (`30s`, `2m`), within the
    /// bounds the server allows; the server's TTL when not given.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,

    /// Stay in the foreground and keep the instance alive (through server restarts), print
    /// its id again whenever it changes, and deregister on SIGINT or SIGTERM. Exits 1 when
    /// another register takes the endpoint.
    #[arg(long)]
    pub keep_alive: bool,
}

/// One line of the shell or of a script: a command without the program's name, with the
/// display option that may change from line to line.
#[derive(Debug, Parser)]
#[command(
    name = "",
    about = "Commands of the discovery shell, and of scripts on standard input.",
    no_binary_name = true,
    disable_version_flag = true,
    after_help = "Also: `exit` (or `quit`, Ctrl-D) leaves the shell."
)]
pub struct Line {
    /// Print data as JSON instead of tables and plain lines.
    #[arg(long, global = true)]
    pub json: bool,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The names a shell line may start with, for completion.
pub const LINE_COMMANDS: &[&str] = &[
    "register",
    "heartbeat",
    "deregister",
    "update",
    "query",
    "types",
    "help",
    "exit",
    "quit",
];

/// A humantime duration that is not zero (the client refuses a zero timeout).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("the timeout must be longer than zero".into());
    }
    Ok(duration)
}

/// A humantime TTL that is not zero (no server grants one).
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("the TTL must be longer than zero".into());
    }
    Ok(duration)
}

/// `KEY=VALUE`, split at the first `=`; the value may be empty, the key may not.
fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        Line::command().debug_assert();
    }

    #[test]
    fn global_options_come_before_or_after_the_command() {
        let cli =
            Cli::try_parse_from(["discovery-cli", "query", "web", "--json", "--timeout", "1s"])
                .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.timeout, Duration::from_secs(1));
        let cli =
            Cli::try_parse_from(["discovery-cli", "--server", "h:1", "query", "web"]).unwrap();
        assert_eq!(cli.global.server, "h:1");
    }

    #[test]
    fn metadata_pairs_split_at_the_first_equals() {
        assert_eq!(parse_pair("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_pair("a="), Ok(("a".into(), String::new())));
        assert!(parse_pair("=b").is_err());
        assert!(parse_pair("ab").is_err());
    }

    #[test]
    fn a_zero_timeout_is_a_usage_error() {
        assert!(parse_timeout("0s").is_err());
        assert_eq!(parse_timeout("1500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn register_takes_a_ttl_and_update_takes_pairs() {
        let cli = Cli::try_parse_from([
            "discovery-cli",
            "register",
            "--type",
            "web",
            "--ip",
            "10.0.0.1",
            "--port",
            "80",
            "--ttl",
            "30s",
        ])
        .unwrap();
        let Some(Command::Register(args)) = cli.command else {
            panic!("a register");
        };
        assert_eq!(args.ttl, Some(Duration::from_secs(30)));
        assert!(parse_ttl("0s").is_err());

        let id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        let line = Line::try_parse_from(["update", id, "--meta", "a=1", "--meta", "b=2"]).unwrap();
        let Command::Update { metadata, .. } = line.command else {
            panic!("an update");
        };
        assert_eq!(
            metadata,
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        let line = Line::try_parse_from(["update", id]).unwrap();
        assert!(matches!(line.command, Command::Update { metadata, .. } if metadata.is_empty()));
        assert!(matches!(
            Line::try_parse_from(["types"]).unwrap().command,
            Command::Types
        ));
    }

    #[test]
    fn watch_takes_a_type() {
        let cli = Cli::try_parse_from(["discovery-cli", "watch", "web", "--json"]).unwrap();
        assert!(cli.global.json);
        assert!(
            matches!(cli.command, Some(Command::Watch { service_type }) if service_type == "web")
        );
    }

    #[test]
    fn shell_lines_take_commands_without_the_program_name() {
        let line = Line::try_parse_from(["heartbeat", "67e55044-10b1-426f-9247-bb680e5fe0c8"]);
        assert!(matches!(line.unwrap().command, Command::Heartbeat { .. }));
        let line = Line::try_parse_from(["query", "web", "--json"]).unwrap();
        assert!(line.json);
    }
}
