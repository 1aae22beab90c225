//! The registry's semantics and limits: the TTL, the caps, the sizes, the watch windows,
//! each with its documented default.
//!
//! A plain struct with `serde::Deserialize` (kebab-case keys, durations written as `5s` or
//! `1500ms`), so that a frontend's command line or a config file fills it without the
//! registry knowing either.

use std::time::Duration;

use discovery_proto::MAX_FRAME_BYTES;
use serde::Deserialize;

use crate::Error;

/// How long an instance stays live after its register or its last heartbeat, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// The shortest TTL a register may ask for, by default.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
/// The longest TTL a register may ask for, by default: an hour, so that an instance whose
/// client vanished without deregistering is not served as live for longer.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(60 * 60);
/// The lowest `min-ttl` a configuration accepts: below it, a client would spend more time
/// heartbeating than serving.
pub const LOWEST_MIN_TTL: Duration = Duration::from_millis(100);
/// The highest `max-ttl` a configuration accepts, a century: deadlines in nanoseconds since
/// the registry's epoch can then never overflow. A registry made from a configuration that
/// was not validated cuts longer TTLs to this.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// How many recent removals the registry remembers, to say why an id is gone, by default.
pub const DEFAULT_REMEMBERED_REMOVALS: usize = 100_000;
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
/// The smallest frame limit a registry accepts: below it, ordinary instances would not fit.
pub const MIN_FRAME_BYTES: usize = 1024;

/// How many changes of a watched type are kept for resuming watches, by default.
pub const DEFAULT_WATCH_HISTORY: usize = 1024;
/// How many changes may wait for one watcher before it is sent a reset instead, by default.
pub const DEFAULT_WATCH_QUEUE: usize = 1024;
/// How long a type's change history outlives its last watcher, by default.
pub const DEFAULT_WATCH_WINDOW: Duration = Duration::from_secs(60);
/// The most bytes the instances and their metadata may take in memory, by default: 1 GiB,
/// a million instances of about 1 KiB each.
pub const DEFAULT_MAX_REGISTRY_BYTES: usize = 1 << 30;
/// The most types with a watch feed at once (watched, or within their window), by default.
pub const DEFAULT_MAX_WATCHED_TYPES: usize = 10_000;
/// The most bytes the watch feeds may take in memory (their histories and what they hold
/// for their watchers), by default: 256 MiB.
pub const DEFAULT_MAX_WATCH_BYTES: usize = 256 << 20;
/// The smallest byte bound of the registry or of the watch feeds a configuration accepts:
/// below it, a few instances at the metadata limits would not fit.
pub const MIN_BYTES_BOUND: usize = 1 << 20;
/// The largest byte bound of the registry or of the watch feeds a configuration accepts.
pub const MAX_BYTES_BOUND: usize = 1 << 40;
/// The most instances a configuration may allow: slots are numbered in 32 bits.
pub const MAX_INSTANCES_BOUND: usize = 100_000_000;
/// The longest `watch-window` a configuration accepts.
pub const MAX_WATCH_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The registry's semantics and limits. No I/O is configured here.
///
/// ```
/// use std::time::Duration;
/// use discovery_registry::RegistryConfig;
///
/// let config = RegistryConfig { ttl: Duration::from_secs(10), ..RegistryConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// How long an instance stays live after its register or last heartbeat, when its
    /// register asks for no TTL of its own. From `min_ttl` to `max_ttl`. Default 5 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub ttl: Duration,
    /// The shortest TTL a register may ask for, at least 100 ms. Default 1 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub min_ttl: Duration,
    /// The longest TTL a register may ask for, at most a century ([`MAX_TTL`]); also how
    /// long a removal is remembered. Default 1 h.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_ttl: Duration,
    /// How many recent removals are remembered (each for `max_ttl`), so that a heartbeat,
    /// a deregister or an update of a removed id can be told why it is gone; the oldest
    /// are forgotten first, and 0 remembers none. About 64 bytes each. Default 100,000.
    pub remembered_removals: usize,
    /// The most live instances in total. Default 1,000,000.
    pub max_instances: usize,
    /// The most live instances of one type. Default 100,000.
    pub max_instances_per_type: usize,
    /// The longest service type, in bytes. Default 255.
    pub max_type_bytes: usize,
    /// The most metadata pairs of one instance. Default 64.
    pub max_metadata_pairs: usize,
    /// The longest metadata key, in bytes. Default 128.
    pub max_metadata_key_bytes: usize,
    /// The longest metadata value, in bytes. Default 512.
    pub max_metadata_value_bytes: usize,
    /// The largest frame payload, in bytes, from 1,024 to 65,536. Every instance must fit in
    /// one frame of a query answer, so a register of one that would not is refused; the
    /// server's codec uses the same limit. Default 65,536.
    pub max_frame_bytes: usize,
    /// How many changes of a watched type are kept, so that a watcher that reconnects can
    /// resume without a snapshot. Default 1,024.
    pub watch_history: usize,
    /// How many changes may wait for one watcher; one that falls further behind is sent a
    /// reset snapshot instead. Default 1,024.
    pub watch_queue: usize,
    /// How long a type's change history outlives its last watcher; after it, a resume gets
    /// a reset snapshot. Default 60 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub watch_window: Duration,
    /// The most bytes the live instances and their metadata may take in memory, counted as
    /// the registry really spends them (the slot, the indexes, every allocation of the
    /// metadata); a register that would go over is refused. Default 1 GiB.
    pub max_registry_bytes: usize,
    /// The most types with a watch feed at once, watched now or within their window; a watch
    /// of one more type is refused (a feed waiting out its window makes room first).
    /// Default 10,000.
    pub max_watched_types: usize,
    /// The most bytes the watch feeds may take in memory: their histories, and the changes
    /// they hold for watchers that have not taken them yet. Default 256 MiB.
    pub max_watch_bytes: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            remembered_removals: DEFAULT_REMEMBERED_REMOVALS,
            max_instances: DEFAULT_MAX_INSTANCES,
            max_instances_per_type: DEFAULT_MAX_INSTANCES_PER_TYPE,
            max_type_bytes: DEFAULT_MAX_TYPE_BYTES,
            max_metadata_pairs: DEFAULT_MAX_METADATA_PAIRS,
            max_metadata_key_bytes: DEFAULT_MAX_METADATA_KEY_BYTES,
            max_metadata_value_bytes: DEFAULT_MAX_METADATA_VALUE_BYTES,
            max_frame_bytes: MAX_FRAME_BYTES,
            watch_history: DEFAULT_WATCH_HISTORY,
            watch_queue: DEFAULT_WATCH_QUEUE,
            watch_window: DEFAULT_WATCH_WINDOW,
            max_registry_bytes: DEFAULT_MAX_REGISTRY_BYTES,
            max_watched_types: DEFAULT_MAX_WATCHED_TYPES,
            max_watch_bytes: DEFAULT_MAX_WATCH_BYTES,
        }
    }
}

impl RegistryConfig {
    /// Checks the values whose types alone do not bound them.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting (by its flag's name) and why.
    pub fn validate(&self) -> Result<(), Error> {
        within(
            "max-frame-bytes",
            self.max_frame_bytes,
            MIN_FRAME_BYTES..=MAX_FRAME_BYTES,
        )?;
        self.validate_ttls()?;
        let frame = self.max_frame_bytes;
        within(
            "remembered-removals",
            self.remembered_removals,
            0..=10_000_000,
        )?;
        within("max-instances", self.max_instances, 1..=MAX_INSTANCES_BOUND)?;
        within(
            "max-instances-per-type",
            self.max_instances_per_type,
            1..=MAX_INSTANCES_BOUND,
        )?;
        within("max-type-bytes", self.max_type_bytes, 1..=4096)?;
        within("max-metadata-pairs", self.max_metadata_pairs, 0..=4096)?;
        within(
            "max-metadata-key-bytes",
            self.max_metadata_key_bytes,
            1..=frame,
        )?;
        within(
            "max-metadata-value-bytes",
            self.max_metadata_value_bytes,
            0..=frame,
        )?;
        within("watch-history", self.watch_history, 0..=1_000_000)?;
        within("watch-queue", self.watch_queue, 1..=1_000_000)?;
        within_duration(
            "watch-window",
            self.watch_window,
            Duration::ZERO..=MAX_WATCH_WINDOW,
        )?;
        within(
            "max-registry-bytes",
            self.max_registry_bytes,
            MIN_BYTES_BOUND..=MAX_BYTES_BOUND,
        )?;
        within("max-watched-types", self.max_watched_types, 1..=10_000_000)?;
        within(
            "max-watch-bytes",
            self.max_watch_bytes,
            MIN_BYTES_BOUND..=MAX_BYTES_BOUND,
        )?;
        Ok(())
    }

    /// The TTL bounds: `min-ttl` from 100 ms, `max-ttl` up to a century, and `ttl` between
    /// them.
    fn validate_ttls(&self) -> Result<(), Error> {
        let shown = duration::format;
        let (ttl, min_ttl, max_ttl) = (self.ttl, self.min_ttl, self.max_ttl);
        if min_ttl < LOWEST_MIN_TTL {
            return Err(Error::Config(format!(
                "min-ttl must be at least {}, not {}",
                shown(LOWEST_MIN_TTL),
                shown(min_ttl)
            )));
        }
        if max_ttl > MAX_TTL {
            return Err(Error::Config(format!(
                "max-ttl must be at most a century ({}s), not {}",
                MAX_TTL.as_secs(),
                shown(max_ttl)
            )));
        }
        if ttl < min_ttl {
            return Err(Error::Config(format!(
                "ttl must be at least min-ttl ({}), not {}",
                shown(min_ttl),
                shown(ttl)
            )));
        }
        if ttl > max_ttl {
            return Err(Error::Config(format!(
                "ttl must be at most max-ttl ({}), not {}",
                shown(max_ttl),
                shown(ttl)
            )));
        }
        Ok(())
    }
}

/// Checks that a setting is within its bounds (both inclusive).
///
/// # Errors
///
/// [`Error::Config`] saying `NAME must be between MIN and MAX, not VALUE`.
pub fn within<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    bounds: std::ops::RangeInclusive<T>,
) -> Result<(), Error> {
    if bounds.contains(&value) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{name} must be between {} and {}, not {value}",
        bounds.start(),
        bounds.end()
    )))
}

/// [`within`] for a duration, written as the flags are (`1h`, `500ms`).
///
/// # Errors
///
/// [`Error::Config`] saying `NAME must be between MIN and MAX, not VALUE`.
pub fn within_duration(
    name: &str,
    value: Duration,
    bounds: std::ops::RangeInclusive<Duration>,
) -> Result<(), Error> {
    if bounds.contains(&value) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{name} must be between {} and {}, not {}",
        duration::format(*bounds.start()),
        duration::format(*bounds.end()),
        duration::format(value)
    )))
}

/// Durations in configuration: written as people write them (`5s`, `1500ms`, `1m 30s`),
/// read with `humantime`. For
/// `#[serde(deserialize_with = "discovery_registry::config::duration::deserialize")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Reads a duration written as `5s`, `1500ms` or `1m 30s`.
    ///
    /// # Errors
    ///
    /// The deserializer's error, quoting what could not be read.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// Parses a duration written as `5s`, `1500ms` or `1m 30s`.
    ///
    /// # Errors
    ///
    /// Why the text is not a duration.
    pub fn parse(text: &str) -> Result<Duration, humantime::DurationError> {
        humantime::parse_duration(text)
    }

    /// How a duration is written back: the form [`parse`] reads.
    pub fn format(duration: Duration) -> String {
        humantime::format_duration(duration).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(RegistryConfig::default().validate().is_ok());
    }

    #[test]
    fn each_bad_value_is_named() {
        let cases = [
            (
                RegistryConfig {
                    max_frame_bytes: 100,
                    ..RegistryConfig::default()
                },
                "max-frame-bytes",
            ),
            (
                RegistryConfig {
                    ttl: Duration::ZERO,
                    ..RegistryConfig::default()
                },
                "ttl",
            ),
            (
                RegistryConfig {
                    max_type_bytes: 0,
                    ..RegistryConfig::default()
                },
                "max-type-bytes",
            ),
        ];
        for (config, name) in cases {
            let message = config.validate().expect_err(name).to_string();
            assert!(message.contains(name), "{message}");
        }
    }

    #[test]
    fn every_setting_has_an_upper_bound_named_with_both_values() {
        let huge = Duration::from_secs(300_000_000_000 * 365 * 24 * 3600 / 1_000_000);
        let cases: Vec<(RegistryConfig, &str)> = vec![
            (
                RegistryConfig {
                    watch_queue: 4_000_000_000,
                    ..RegistryConfig::default()
                },
                "watch-queue must be between 1 and 1000000, not 4000000000",
            ),
            (
                RegistryConfig {
                    watch_window: huge,
                    ..RegistryConfig::default()
                },
                "watch-window must be between 0s and 1day, not",
            ),
            (
                RegistryConfig {
                    max_instances: 1 << 62,
                    ..RegistryConfig::default()
                },
                "max-instances must be between 1 and 100000000",
            ),
            (
                RegistryConfig {
                    watch_history: usize::MAX,
                    ..RegistryConfig::default()
                },
                "watch-history must be between 0 and 1000000",
            ),
            (
                RegistryConfig {
                    max_metadata_value_bytes: 1 << 20,
                    ..RegistryConfig::default()
                },
                "max-metadata-value-bytes must be between 0 and 65536",
            ),
            (
                RegistryConfig {
                    max_registry_bytes: 1,
                    ..RegistryConfig::default()
                },
                "max-registry-bytes must be between 1048576 and",
            ),
            (
                RegistryConfig {
                    max_watch_bytes: usize::MAX,
                    ..RegistryConfig::default()
                },
                "max-watch-bytes must be between",
            ),
            (
                RegistryConfig {
                    max_watched_types: 0,
                    ..RegistryConfig::default()
                },
                "max-watched-types must be between 1 and",
            ),
        ];
        for (config, start) in cases {
            let message = match config.validate() {
                Err(Error::Config(message)) => message,
                other => panic!("{start}: {other:?}"),
            };
            assert!(message.starts_with(start), "{message}");
        }
    }

    #[test]
    fn the_ttl_bounds_name_the_flag_and_both_values() {
        let ms = Duration::from_millis;
        let cases: [(RegistryConfig, &str, [&str; 2]); 4] = [
            (
                RegistryConfig {
                    min_ttl: ms(50),
                    ttl: ms(500),
                    ..RegistryConfig::default()
                },
                "min-ttl must",
                ["100ms", "50ms"],
            ),
            (
                RegistryConfig {
                    max_ttl: MAX_TTL + Duration::from_secs(1),
                    ..RegistryConfig::default()
                },
                "max-ttl must",
                [
                    "3153600000s",
                    &duration::format(MAX_TTL + Duration::from_secs(1)),
                ],
            ),
            (
                RegistryConfig {
                    ttl: ms(999),
                    ..RegistryConfig::default()
                },
                "ttl must be at least min-ttl",
                ["1s", "999ms"],
            ),
            (
                RegistryConfig {
                    ttl: Duration::from_secs(2 * 60 * 60),
                    ..RegistryConfig::default()
                },
                "ttl must be at most max-ttl",
                ["1h", "2h"],
            ),
        ];
        for (config, start, values) in cases {
            let message = match config.validate() {
                Err(Error::Config(message)) => message,
                other => panic!("{start}: {other:?}"),
            };
            assert!(message.starts_with(start), "{message}");
            for value in values {
                assert!(message.contains(value), "{value} in {message}");
            }
        }
        // Each bound is inclusive.
        let at_the_bounds = [
            RegistryConfig {
                min_ttl: LOWEST_MIN_TTL,
                ttl: LOWEST_MIN_TTL,
                ..RegistryConfig::default()
            },
            RegistryConfig {
                max_ttl: MAX_TTL,
                ttl: MAX_TTL,
                ..RegistryConfig::default()
            },
        ];
        for config in at_the_bounds {
            assert!(config.validate().is_ok(), "{config:?}");
        }
    }

    #[test]
    fn the_new_settings_read_as_kebab_case() {
        let config: RegistryConfig = serde_json::from_str(
            r#"{"min-ttl": "500ms", "max-ttl": "2h", "remembered-removals": 7}"#,
        )
        .expect("a valid configuration");
        assert_eq!(config.min_ttl, Duration::from_millis(500));
        assert_eq!(config.max_ttl, Duration::from_secs(2 * 60 * 60));
        assert_eq!(config.remembered_removals, 7);
        assert_eq!(config.ttl, DEFAULT_TTL);
    }

    #[test]
    fn durations_read_and_write_back() {
        for text in ["5s", "1500ms", "1m 30s"] {
            let read = duration::parse(text).expect(text);
            assert_eq!(duration::parse(&duration::format(read)).expect(text), read);
        }
        assert!(duration::parse("five").is_err());
    }
}
