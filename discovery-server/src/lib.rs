//! The discovery service registry: the in-memory registry, the TCP server, and the
//! `discovery-server` binary built on them.
//!
//! | module | what it is for |
//! |---|---|
//! | [`registry`] | the registry itself: instances, TTLs, expiry; no I/O |
//! | `table` | the registry's compact storage: slots, indexes, the deadline wheel |
//! | [`watch`] | the change feeds of watched types: revisions, history, wake-ups |
//! | [`handler`] | a request in, an answer out: the rules of the protocol, no I/O |
//! | [`connection`] | one client's socket, buffers, timeouts and request loop |
//! | [`compat`] | the course's JSON socket protocol on an optional second listener |
//! | [`server`] | accepting connections within the limits, and graceful shutdown |
//! | [`config`] | every limit and default of the registry and the server |
//! | [`error`] | the crate's error type and its mapping to wire error kinds |
//!
//! A request travels socket → [`connection::Connection`] (framing, decoding) →
//! [`handler::handle`] → [`Registry`] and back; `docs/ARCHITECTURE.md` tells the story.

pub mod compat;
pub mod config;
pub mod connection;
pub mod error;
pub mod handler;
pub mod registry;
pub mod server;
mod table;
pub mod watch;

pub use config::{RegistryConfig, ServerConfig};
pub use error::Error;
pub use registry::Registry;
