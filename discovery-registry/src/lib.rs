//! The registry of the discovery service: instances, their TTLs, the change feeds of
//! watched types, and the one task that expires instances. No sockets, no I/O: every
//! frontend (the binary protocol, the JSON compat protocol, HTTP) calls the same
//! [`Registry`], and a replicated catalogue feeds it changes from outside through
//! [`Registry::upsert`] and [`Registry::remove`], which reach watchers the same way.
//!
//! | module | what it is for |
//! |---|---|
//! | [`registry`] | [`Registry`], the cheap-to-clone handle: register, heartbeat, deregister, query, watch, changes from outside |
//! | `state` | what the handles share: the config, the clocks, and under one lock the table and the feeds |
//! | `table` | the compact storage of the entries: slots, and the indexes by id, endpoint and type |
//! | `deadlines` | the deadline index: buckets of slot references by millisecond |
//! | `expiry` | the expiry task, and the bounded passes every path that frees due entries takes |
//! | [`feed`] | the change feeds of watched types: revisions, history, wake-ups |
//! | [`subscription`] | [`Subscription`], one subscriber's stream of a type's changes |
//! | `rules` | what an instance must be to be held: type, address, metadata, size in a frame |
//! | `clock` | the monotonic deadlines and the wall-clock times shown for them |
//! | [`config`] | [`RegistryConfig`]: every limit and its default |
//! | [`error`] | [`Error`], why a change or a configuration was refused |
//!
//! Arrows point one way: `registry` → `subscription`, `expiry`, `state`, `rules`;
//! `state` → `table`, `feed`, `clock`; `table` → `deadlines`.

pub mod config;
pub mod error;
pub mod feed;
pub mod registry;
pub mod subscription;

mod clock;
mod deadlines;
mod expiry;
mod rules;
mod state;
mod table;

pub use config::RegistryConfig;
pub use error::Error;
pub use feed::{Change, ChangeEvent, WatchStart};
pub use registry::{Lifetime, Registry};
pub use subscription::Subscription;

/// The wire types the registry's methods take and give, re-exported so that a caller needs
/// no direct dependency on `discovery-proto`.
pub use discovery_proto::{Instance, InstanceRef, Metadata, RemoveReason, Revision};
