//! The server's configuration: every limit, its default, its flag and its environment
//! variable, in one place.
//!
//! The binary parses [`ServerConfig`] from the command line with clap; tests and embedders
//! build it from [`ServerConfig::default`] and change the fields they care about.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use discovery_proto::{DEFAULT_PORT, Limits, MAX_FRAME_BYTES};

use crate::Error;

/// How long an instance stays live after its register or its last heartbeat, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// The most live instances the registry holds, by default.
pub const DEFAULT_MAX_INSTANCES: usize = 1_000_000;
/// The most live instances of one type, by default.
pub const DEFAULT_MAX_INSTANCES_PER_TYPE: usize = 100_000;
/// The longest service type in bytes, by default.
pub const DEFAULT_MAX_TYPE_BYTES: usize = 255;
/// The most metadata pairs of one instance, by default.
pub const DEFAULT_MAX_METADATA_PAIRS: usize = 64;
/// The longest metadata key in bytes, by default.
pub const DEFAULT_MAX_METADATA_KEY_BYTES: usize = 128;
/// The longest metadata value in bytes, by default.
pub const DEFAULT_MAX_METADATA_VALUE_BYTES: usize = 512;

/// How many changes of a watched type are kept for resuming watches, by default.
pub const DEFAULT_WATCH_HISTORY: usize = 1024;
/// How many changes may wait for one watcher before it is sent a reset instead, by default.
pub const DEFAULT_WATCH_QUEUE: usize = 1024;
/// How long a type's change history outlives its last watcher, by default.
pub const DEFAULT_WATCH_WINDOW: Duration = Duration::from_secs(60);

/// The registry's semantics and limits. No I/O is configured here.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RegistryConfig {
    /// How long an instance stays live after its register or last heartbeat (`5s`,
    /// `1500ms`). Default 5 s.
    #[arg(long, env = "DISCOVERY_TTL", default_value = "5s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The most live instances in total. Default 1,000,000.
    #[arg(long, env = "DISCOVERY_MAX_INSTANCES", default_value_t = DEFAULT_MAX_INSTANCES)]
    pub max_instances: usize,
    /// The most live instances of one type. Default 100,000.
    #[arg(long, env = "DISCOVERY_MAX_INSTANCES_PER_TYPE", default_value_t = DEFAULT_MAX_INSTANCES_PER_TYPE)]
    pub max_instances_per_type: usize,
    /// The longest service type, in bytes. Default 255.
    #[arg(long, env = "DISCOVERY_MAX_TYPE_BYTES", default_value_t = DEFAULT_MAX_TYPE_BYTES)]
    pub max_type_bytes: usize,
    /// The most metadata pairs of one instance. Default 64.
    #[arg(long, env = "DISCOVERY_MAX_METADATA_PAIRS", default_value_t = DEFAULT_MAX_METADATA_PAIRS)]
    pub max_metadata_pairs: usize,
    /// The longest metadata key, in bytes. Default 128.
    #[arg(long, env = "DISCOVERY_MAX_METADATA_KEY_BYTES", default_value_t = DEFAULT_MAX_METADATA_KEY_BYTES)]
    pub max_metadata_key_bytes: usize,
    /// The longest metadata value, in bytes. Default 512.
    #[arg(long, env = "DISCOVERY_MAX_METADATA_VALUE_BYTES", default_value_t = DEFAULT_MAX_METADATA_VALUE_BYTES)]
    pub max_metadata_value_bytes: usize,
    /// How many changes of a watched type are kept, so that a watcher that reconnects can
    /// resume without a snapshot. Default 1,024.
    #[arg(long, env = "DISCOVERY_WATCH_HISTORY", default_value_t = DEFAULT_WATCH_HISTORY)]
    pub watch_history: usize,
    /// How many changes may wait for one watcher; one that falls further behind is sent a
    /// reset snapshot instead. Default 1,024.
    #[arg(long, env = "DISCOVERY_WATCH_QUEUE", default_value_t = DEFAULT_WATCH_QUEUE)]
    pub watch_queue: usize,
    /// How long a type's change history outlives its last watcher (`60s`); after it, a
    /// resume gets a reset snapshot. Default 60 s.
    #[arg(long, env = "DISCOVERY_WATCH_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub watch_window: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            max_instances: DEFAULT_MAX_INSTANCES,
            max_instances_per_type: DEFAULT_MAX_INSTANCES_PER_TYPE,
            max_type_bytes: DEFAULT_MAX_TYPE_BYTES,
            max_metadata_pairs: DEFAULT_MAX_METADATA_PAIRS,
            max_metadata_key_bytes: DEFAULT_MAX_METADATA_KEY_BYTES,
            max_metadata_value_bytes: DEFAULT_MAX_METADATA_VALUE_BYTES,
            watch_history: DEFAULT_WATCH_HISTORY,
            watch_queue: DEFAULT_WATCH_QUEUE,
            watch_window: DEFAULT_WATCH_WINDOW,
        }
    }
}

impl RegistryConfig {
    /// The limits as announced to clients in `Welcome`, with the server's frame limit.
    pub fn limits(&self, max_frame_bytes: usize) -> Limits {
        let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let u64_of = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Limits {
            max_frame_bytes: u32_of(max_frame_bytes.min(MAX_FRAME_BYTES)),
            max_instances: u64_of(self.max_instances),
            max_instances_per_type: u64_of(self.max_instances_per_type),
            max_type_bytes: u32_of(self.max_type_bytes),
            max_metadata_pairs: u32_of(self.max_metadata_pairs),
            max_metadata_key_bytes: u32_of(self.max_metadata_key_bytes),
            max_metadata_value_bytes: u32_of(self.max_metadata_value_bytes),
        }
    }
}

/// The address the server listens on by default: loopback only, so that a registry is not
/// exposed to a network unless someone asks for it.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    DEFAULT_PORT,
);
/// The most open connections, by default; one more gets a `TooManyConnections` error frame.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The most watches open on one connection, by default.
pub const DEFAULT_MAX_WATCHES_PER_CONNECTION: usize = 64;
/// How long a connection may go without a frame from its client, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client has to finish a frame once its first byte came, by default.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to finish before closing them, by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything the server needs to run: where to listen, the registry's configuration and
/// the limits on connections. Every field has a flag and a `DISCOVERY_*` environment
/// variable in the binary.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ServerConfig {
    /// The address to listen on. Default `127.0.0.1:7777`.
    #[arg(long, env = "DISCOVERY_LISTEN", default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Where to serve the course's JSON socket protocol too (the course uses
    /// `127.0.0.1:65432`), over the same registry; see `docs/COMPAT.md`. Off by default.
    #[arg(long, env = "DISCOVERY_COMPAT_LISTEN")]
    pub compat_listen: Option<SocketAddr>,
    /// The registry's TTL and limits.
    #[command(flatten)]
    pub registry: RegistryConfig,
    /// The largest frame payload accepted or sent, in bytes; at most 65536. Default 65536.
    #[arg(long, env = "DISCOVERY_MAX_FRAME_BYTES", default_value_t = MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// The most open connections. Default 10,000.
    #[arg(long, env = "DISCOVERY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// The most watches open at once on one connection. Default 64.
    #[arg(long, env = "DISCOVERY_MAX_WATCHES_PER_CONNECTION", default_value_t = DEFAULT_MAX_WATCHES_PER_CONNECTION)]
    pub max_watches_per_connection: usize,
    /// How long a connection may go without a frame from its client before it is closed
    /// (`60s`). Default 60 s.
    #[arg(long, env = "DISCOVERY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How long a client has to finish a frame once its first byte came, before the
    /// connection is cut off (`10s`). Default 10 s.
    #[arg(long, env = "DISCOVERY_FRAME_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub frame_timeout: Duration,
    /// How long shutdown lets connections finish before closing them (`5s`). Default 5 s.
    #[arg(long, env = "DISCOVERY_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            compat_listen: None,
            registry: RegistryConfig::default(),
            max_frame_bytes: MAX_FRAME_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_watches_per_connection: DEFAULT_MAX_WATCHES_PER_CONNECTION,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl ServerConfig {
    /// Checks the values that clap's types alone do not bound.
    pub fn validate(&self) -> Result<(), Error> {
        let min_frame = 1024;
        if !(min_frame..=MAX_FRAME_BYTES).contains(&self.max_frame_bytes) {
            return Err(Error::Config(format!(
                "max-frame-bytes must be between {min_frame} and {MAX_FRAME_BYTES}, not {}",
                self.max_frame_bytes
            )));
        }
        let positive = [
            ("ttl", self.registry.ttl),
            ("idle-timeout", self.idle_timeout),
            ("frame-timeout", self.frame_timeout),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(Error::Config(format!("{name} must be longer than zero")));
        }
        if self.compat_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(Error::Config(format!(
                "compat-listen must differ from listen, not both {}",
                self.listen
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::Config("max-connections must be at least 1".into()));
        }
        if self.registry.max_type_bytes == 0 {
            return Err(Error::Config("max-type-bytes must be at least 1".into()));
        }
        Ok(())
    }

    /// The limits announced to clients in `Welcome`.
    pub fn limits(&self) -> Limits {
        self.registry.limits(self.max_frame_bytes)
    }
}

/// Parses a human duration such as `5s`, `1500ms` or `1m 30s`.
fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}
