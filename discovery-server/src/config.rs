//! The server's configuration: where to listen, the registry's configuration, and the
//! limits on connections, each with its documented default.
//!
//! Plain structs with `serde::Deserialize` (kebab-case keys, durations as `5s`), so that
//! the binary's flags, a config file or an embedder fill them alike; the binary maps its
//! flags and `DISCOVERY_*` variables onto these fields.

use std::net::SocketAddr;
use std::time::Duration;

use discovery_proto::{DEFAULT_PORT, Limits, MAX_FRAME_BYTES};
use discovery_registry::RegistryConfig;
use discovery_registry::config::{duration, within, within_duration};
use serde::Deserialize;

use crate::Error;

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
/// The most bytes of answers one connection holds, by default: 1 MiB. Larger answers are
/// streamed in frames under it.
pub const DEFAULT_MAX_ANSWER_BUFFER_BYTES: usize = 1 << 20;
/// The smallest answer buffer a configuration accepts: eight frames of the largest size,
/// so that the frame being filled, the whole frames waiting to be written and an
/// eighth of the bound gathered before a write fit in it together.
pub const MIN_ANSWER_BUFFER_BYTES: usize = 8 * (MAX_FRAME_BYTES + 4);
/// How long a write may make no progress before its connection is cut off, by default.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections a configuration may allow.
pub const MAX_CONNECTIONS_BOUND: usize = 1_000_000;
/// The longest idle timeout a configuration accepts.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest frame timeout, write timeout and shutdown grace a configuration accepts.
pub const MAX_SHORT_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Everything the server needs to run: where to listen, the registry's configuration and
/// the limits on connections.
///
/// ```
/// use std::time::Duration;
/// use discovery_server::ServerConfig;
///
/// let mut config = ServerConfig::default();
/// config.registry.ttl = Duration::from_secs(10);
/// config.max_connections = 100;
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// The address of the binary protocol's listener. Default `127.0.0.1:7777`.
    pub listen: SocketAddr,
    /// Where to serve the course's JSON socket protocol too (the course uses
    /// `127.0.0.1:65432`), over the same registry; see `docs/COMPAT.md`. Off by default.
    pub compat_listen: Option<SocketAddr>,
    /// The registry's TTL and limits, the frame limit among them.
    #[serde(flatten)]
    pub registry: RegistryConfig,
    /// The most open connections, of every listener together. Default 10,000.
    pub max_connections: usize,
    /// The most watches open at once on one connection. Default 64.
    pub max_watches_per_connection: usize,
    /// How long a connection may go without a frame from its client before it is closed.
    /// Default 60 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// How long a client has to finish a frame once its first byte came, before the
    /// connection is cut off. Default 10 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub frame_timeout: Duration,
    /// How long shutdown lets connections finish before closing them. Default 5 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown_grace: Duration,
    /// The most bytes of answers one connection holds at once, whatever the answer's size:
    /// a larger answer is streamed in frames under it, and the memory is given back after.
    /// Default 1 MiB.
    pub max_answer_buffer_bytes: usize,
    /// How long a write to a client may make no progress before the connection is cut off;
    /// a client that keeps reading, however slowly, is never cut off by it. Default 10 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub write_timeout: Duration,
    /// The most open connections from one peer (an IPv6 peer counted per /64); one more
    /// gets a `PeerConnectionLimit` error frame. Off by default: many services of one host
    /// share its address.
    pub max_connections_per_peer: Option<usize>,
    /// The most registers per second one connection may make, on average; one more is
    /// answered `Throttled` with when to try again. Off by default.
    pub register_rate: Option<u32>,
    /// How many registers one connection may make at once above `register_rate` (the
    /// token bucket's size). Default: the rate.
    pub register_burst: Option<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            compat_listen: None,
            registry: RegistryConfig::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_watches_per_connection: DEFAULT_MAX_WATCHES_PER_CONNECTION,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_answer_buffer_bytes: DEFAULT_MAX_ANSWER_BUFFER_BYTES,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_connections_per_peer: None,
            register_rate: None,
            register_burst: None,
        }
    }
}

impl ServerConfig {
    /// Checks the values whose types alone do not bound them.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting (by its flag's name) and why.
    pub fn validate(&self) -> Result<(), Error> {
        self.registry.validate()?;
        let positive = Duration::from_millis(1);
        within_duration(
            "idle-timeout",
            self.idle_timeout,
            positive..=MAX_IDLE_TIMEOUT,
        )?;
        within_duration(
            "frame-timeout",
            self.frame_timeout,
            positive..=MAX_SHORT_TIMEOUT,
        )?;
        within_duration(
            "write-timeout",
            self.write_timeout,
            positive..=MAX_SHORT_TIMEOUT,
        )?;
        within_duration(
            "shutdown-grace",
            self.shutdown_grace,
            Duration::ZERO..=MAX_SHORT_TIMEOUT,
        )?;
        if self.compat_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(Error::Config(format!(
                "compat-listen must differ from listen, not both {}",
                self.listen
            )));
        }
        within(
            "max-connections",
            self.max_connections,
            1..=MAX_CONNECTIONS_BOUND,
        )?;
        within(
            "max-watches-per-connection",
            self.max_watches_per_connection,
            0..=65_536,
        )?;
        within(
            "max-answer-buffer-bytes",
            self.max_answer_buffer_bytes,
            MIN_ANSWER_BUFFER_BYTES..=1 << 30,
        )?;
        if let Some(per_peer) = self.max_connections_per_peer {
            within(
                "max-connections-per-peer",
                per_peer,
                1..=MAX_CONNECTIONS_BOUND,
            )?;
        }
        if let Some(rate) = self.register_rate {
            within("register-rate", rate, 1..=10_000_000)?;
        }
        if let Some(burst) = self.register_burst {
            if self.register_rate.is_none() {
                return Err(Error::Config(
                    "register-burst needs register-rate: a burst of an unlimited rate means nothing"
                        .into(),
                ));
            }
            within("register-burst", burst, 1..=10_000_000)?;
        }
        Ok(())
    }

    /// The size of the register token bucket, if registers are rate-limited: the burst,
    /// or the rate when no burst is given.
    pub fn register_bucket(&self) -> Option<(u32, u32)> {
        self.register_rate
            .map(|rate| (rate, self.register_burst.unwrap_or(rate)))
    }

    /// The largest frame payload accepted or sent, in bytes (the registry's limit).
    pub fn max_frame_bytes(&self) -> usize {
        self.registry.max_frame_bytes
    }

    /// The limits announced to clients in `Welcome`, for this configuration's registry.
    pub fn limits(&self) -> Limits {
        self.limits_with(&self.registry)
    }

    /// The limits announced in `Welcome` when the registry served is configured by
    /// `registry`: the `Welcome` reads them from the registry itself
    /// ([`Registry::config`]), which may have been made elsewhere than from this config.
    ///
    /// [`Registry::config`]: discovery_registry::Registry::config
    pub fn limits_with(&self, registry: &RegistryConfig) -> Limits {
        let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let u64_of = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Limits {
            max_frame_bytes: u32_of(registry.max_frame_bytes.min(MAX_FRAME_BYTES)),
            max_instances: u64_of(registry.max_instances),
            max_instances_per_type: u64_of(registry.max_instances_per_type),
            max_type_bytes: u32_of(registry.max_type_bytes),
            max_metadata_pairs: u32_of(registry.max_metadata_pairs),
            max_metadata_key_bytes: u32_of(registry.max_metadata_key_bytes),
            max_metadata_value_bytes: u32_of(registry.max_metadata_value_bytes),
            max_connections: u64_of(self.max_connections),
            max_watches_per_connection: u32_of(self.max_watches_per_connection),
            max_connections_per_peer: self.max_connections_per_peer.map(u32_of),
            max_watched_types: Some(u64_of(registry.max_watched_types)),
            max_watch_bytes: Some(u64_of(registry.max_watch_bytes)),
            max_answer_buffer_bytes: Some(u64_of(self.max_answer_buffer_bytes)),
            max_registry_bytes: Some(u64_of(registry.max_registry_bytes)),
            write_timeout: Some(self.write_timeout),
            register_rate: self.register_bucket().map(|(rate, _)| rate),
            register_burst: self.register_bucket().map(|(_, burst)| burst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_flags_names_as_keys_with_the_registry_flattened() {
        let text = r#"{
            "listen": "127.0.0.1:9000",
            "max-connections": 12,
            "idle-timeout": "90s",
            "ttl": "1500ms",
            "max-frame-bytes": 4096,
            "watch-window": "1m 30s"
        }"#;
        let config: ServerConfig = serde_json::from_str(text).expect("a valid configuration");
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.max_connections, 12);
        assert_eq!(config.idle_timeout, Duration::from_secs(90));
        assert_eq!(config.registry.ttl, Duration::from_millis(1500));
        assert_eq!(config.max_frame_bytes(), 4096);
        assert_eq!(config.registry.watch_window, Duration::from_secs(90));
        // What is not given keeps its default.
        assert_eq!(config.frame_timeout, DEFAULT_FRAME_TIMEOUT);
        assert_eq!(
            config.registry.max_instances,
            RegistryConfig::default().max_instances
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_duration_that_is_not_one_is_refused() {
        let refused = serde_json::from_str::<ServerConfig>(r#"{"ttl": "soon"}"#);
        assert!(refused.is_err());
    }

    #[test]
    fn each_bad_value_is_named() {
        let mut bad_frame = ServerConfig::default();
        bad_frame.registry.max_frame_bytes = 100;
        let cases = [
            (
                ServerConfig {
                    idle_timeout: Duration::ZERO,
                    ..ServerConfig::default()
                },
                "idle-timeout",
            ),
            (
                ServerConfig {
                    max_connections: 0,
                    ..ServerConfig::default()
                },
                "max-connections",
            ),
            (bad_frame, "max-frame-bytes"),
            (
                ServerConfig {
                    max_connections: 1 << 62,
                    ..ServerConfig::default()
                },
                "max-connections must be between 1 and 1000000, not 4611686018427387904",
            ),
            (
                ServerConfig {
                    idle_timeout: Duration::from_secs(u64::MAX / 4),
                    ..ServerConfig::default()
                },
                "idle-timeout must be between 1ms and 1day",
            ),
            (
                ServerConfig {
                    write_timeout: Duration::ZERO,
                    ..ServerConfig::default()
                },
                "write-timeout must be between",
            ),
            (
                ServerConfig {
                    max_answer_buffer_bytes: 1024,
                    ..ServerConfig::default()
                },
                "max-answer-buffer-bytes must be between",
            ),
            (
                ServerConfig {
                    register_burst: Some(5),
                    ..ServerConfig::default()
                },
                "register-burst needs register-rate",
            ),
            (
                ServerConfig {
                    register_rate: Some(0),
                    ..ServerConfig::default()
                },
                "register-rate must be between 1 and",
            ),
        ];
        for (config, name) in cases {
            let message = config.validate().expect_err(name).to_string();
            assert!(message.contains(name), "{message}");
        }
    }
}
