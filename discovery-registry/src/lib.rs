//! The registry of the discovery service: instances and their own TTLs, a revision for
//! every change, the change feeds of watched types, a memory of why recent instances went,
//! and the one task that expires instances. No sockets, no I/O: every
//! frontend (the binary protocol, the JSON compat protocol, HTTP) calls the same
//! [`Registry`], and a replicated catalogue feeds it changes from outside through
//! [`Registry::upsert`] and [`Registry::remove`], which reach watchers the same way.
//!
//! | module | what it is for |
//! |---|---|
//! | [`registry`] | [`Registry`], the cheap-to-clone handle: register (with a TTL of its own), heartbeat, update, deregister, query, list the types, watch, wait for a revision, changes from outside |
//! | `state` | what the handles share: the config, the clocks, and under one lock the table, the feeds and the removals |
//! | `table` | the compact storage of the entries: slots (each with its own TTL), and the indexes by id, endpoint and type |
//! | `deadlines` | the deadline index: buckets of slot references by millisecond |
//! | `expiry` | the expiry task, and the bounded passes every path that frees due entries takes |
//! | [`feed`] | the revisions of every change, and the change feeds of watched types: history, wake-ups |
//! | `removals` | the bounded memory of recent removals: which ids went and why, for a `NotFound`'s reason |
//! | [`members`] | [`Members`], a copy of a type's member list read in batches, so that a large answer does not hold the lock |
//! | [`subscription`] | [`Subscription`], one subscriber's stream of a type's changes |
//! | `rules` | what an instance must be to be held: type, address, metadata, size in a frame |
//! | `footprint` | what instances and metadata cost in memory, as the allocator spends it, for the byte bounds |
//! | `clock` | the monotonic deadlines and the wall-clock times shown for them |
//! | [`config`] | [`RegistryConfig`]: every limit and its default |
//! | [`error`] | [`Error`], why a change or a configuration was refused |
//!
//! Arrows point one way: `registry` → `members`, `subscription`, `expiry`, `state`, `rules`;
//! `state` → `table`, `feed`, `removals`, `clock`, `footprint`; `feed` → `members`; `table` →
//! `deadlines`, `footprint`; `deadlines` → `footprint`; `removals` → `clock`.

pub mod config;
pub mod error;
pub mod feed;
pub mod members;
pub mod registry;
pub mod subscription;

mod clock;
mod deadlines;
mod expiry;
mod footprint;
mod removals;
mod rules;
mod state;
mod table;

pub use config::RegistryConfig;
pub use error::Error;
pub use feed::{Change, ChangeEvent, WatchStart};
pub use members::Members;
pub use registry::{Lifetime, Registered, Registry};
pub use subscription::{Lagged, Subscription};

/// The wire types the registry's methods take and give, re-exported so that a caller needs
/// no direct dependency on `discovery-proto`.
pub use discovery_proto::{Entry, EntryRef, Instance, Metadata, RemoveReason, Revision};
