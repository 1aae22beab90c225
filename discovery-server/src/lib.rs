//! The discovery service's server: the frontends that speak each protocol over the
//! registry (`discovery-registry`), the accept loop and its lifecycle. The
//! `discovery-server` binary (flags, signals, logs) is built on it.
//!
//! | module | what it is for |
//! |---|---|
//! | [`server`] | [`server::run`] and [`server::serve`]: accepting on every [`server::Listener`] within the limits, and graceful shutdown |
//! | [`frontend`] | the one seam between the accept loop and the protocols: [`frontend::Frontend`], and what every connection is served with |
//! | [`binary`] | the binary protocol of `discovery-proto`: its handler and its connection |
//! | [`compat`] | the course's JSON socket protocol: its messages, handler and connection |
//! | [`peer`] | who a connection comes from, as the per-peer bounds count it; the per-peer connection cap |
//! | [`throttle`] | the register rate limit: a token bucket per connection (per peer for compat) |
//! | [`descriptors`] | the open-files limit at start, and the spare descriptors that let a connection past it be refused with a frame |
//! | [`config`] | [`ServerConfig`]: every listener address, limit and timeout, and its default |
//! | [`error`] | [`Error`], and its mapping to wire error kinds |
//!
//! A request travels stream → [`binary::Connection`] (framing, decoding) →
//! [`binary::handler::handle`] → [`Registry`] and back; `docs/ARCHITECTURE.md` tells the
//! story. Arrows point one way: `server` → `binary`, `compat` → `frontend` → `config`;
//! `server` → `peer`, `descriptors`; `binary`, `compat` → `throttle` → `peer`.

pub mod binary;
pub mod compat;
pub mod config;
pub mod descriptors;
pub mod error;
pub mod frontend;
pub mod peer;
pub mod server;
pub mod throttle;

pub use config::ServerConfig;
pub use discovery_registry::{Registry, RegistryConfig};
pub use error::Error;
