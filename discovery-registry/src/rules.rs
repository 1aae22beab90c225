//! The rules an instance must follow to be held: a type people can read, an address a
//! caller can connect to, metadata within its limits, and a size that fits in one frame of
//! a query answer. One place, for every way an instance comes in (a client's register, or
//! a change learned from elsewhere).

use std::net::IpAddr;

use discovery_proto::{Metadata, encoding};
use uuid::Uuid;

use crate::{Error, RegistryConfig};

/// How many characters of an offending metadata key an error message quotes.
const KEY_PREVIEW_CHARS: usize = 32;

/// Checks every rule for an instance of (`service_type`, `ip`, `port`, `metadata`).
pub(crate) fn check_instance(
    config: &RegistryConfig,
    service_type: &str,
    ip: IpAddr,
    port: u16,
    metadata: &Metadata,
) -> Result<(), Error> {
    check_service_type(service_type, config)?;
    check_ip(ip)?;
    if port == 0 {
        return Err(Error::InvalidPort);
    }
    check_metadata(metadata, config)?;
    check_frame_size(config, service_type, ip, port, metadata)
}

/// A type must be non-empty, within its length and free of control characters.
pub(crate) fn check_service_type(service_type: &str, config: &RegistryConfig) -> Result<(), Error> {
    if service_type.is_empty() {
        return Err(Error::InvalidServiceType("the type is empty".into()));
    }
    if service_type.len() > config.max_type_bytes {
        return Err(Error::InvalidServiceType(format!(
            "the type is {} bytes, over the limit of {}",
            service_type.len(),
            config.max_type_bytes
        )));
    }
    if let Some((at, c)) = service_type.char_indices().find(|(_, c)| c.is_control()) {
        return Err(Error::InvalidServiceType(format!(
            "the type has the control character {c:?} at byte {at}"
        )));
    }
    Ok(())
}

/// Refuses addresses nobody can connect to. An IPv4-mapped IPv6 address is judged as the
/// IPv4 address it carries, so that `::ffff:0.0.0.0` does not slip through.
fn check_ip(ip: IpAddr) -> Result<(), Error> {
    let usable = match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
            None => !(v6.is_unspecified() || v6.is_multicast()),
        },
    };
    if usable {
        Ok(())
    } else {
        Err(Error::InvalidAddress(ip))
    }
}

fn check_metadata(metadata: &Metadata, config: &RegistryConfig) -> Result<(), Error> {
    if metadata.len() > config.max_metadata_pairs {
        return Err(Error::InvalidMetadata(format!(
            "{} pairs, over the limit of {}",
            metadata.len(),
            config.max_metadata_pairs
        )));
    }
    for (key, value) in metadata {
        if key.is_empty() {
            return Err(Error::InvalidMetadata("a key is empty".into()));
        }
        if key.len() > config.max_metadata_key_bytes {
            return Err(Error::InvalidMetadata(format!(
                "key {:?} is {} bytes, over the key limit of {}",
                preview(key),
                key.len(),
                config.max_metadata_key_bytes
            )));
        }
        if value.len() > config.max_metadata_value_bytes {
            return Err(Error::InvalidMetadata(format!(
                "the value of key {:?} is {} bytes, over the value limit of {}",
                preview(key),
                value.len(),
                config.max_metadata_value_bytes
            )));
        }
    }
    Ok(())
}

/// Refuses an instance that could not be sent in a query answer within the frame limit.
fn check_frame_size(
    config: &RegistryConfig,
    service_type: &str,
    ip: IpAddr,
    port: u16,
    metadata: &Metadata,
) -> Result<(), Error> {
    // The same fields in the same order encode to the same bytes as the instance would, and
    // the largest timestamp stands in for the real one: no instance is built to measure it.
    let fields = (Uuid::nil(), service_type, ip, port, metadata, i64::MAX);
    let len = encoding::instance_frame_len_of(&fields);
    if len > config.max_frame_bytes {
        return Err(Error::InvalidMetadata(format!(
            "the instance would take {len} bytes in a query answer, over this server's frame limit of {}",
            config.max_frame_bytes
        )));
    }
    Ok(())
}

/// The start of `key`, so that an error about a 60 KiB key does not quote all of it.
fn preview(key: &str) -> String {
    match key.char_indices().nth(KEY_PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}...", &key[..cut]),
        None => key.to_owned(),
    }
}
