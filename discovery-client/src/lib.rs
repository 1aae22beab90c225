//! The async client of the discovery service registry: services announce themselves and
//! stay alive with it, callers find them with it.
//!
//! | module | what it is for |
//! |---|---|
//! | [`client`] | [`Client`], the cheap-to-clone handle every call goes through, and its [`ClientBuilder`] |
//! | [`registration`] | [`Registration`], an announced instance kept alive by a background heartbeat loop |
//! | [`watch`] | [`Watch`], the stream of a type's changes that survives reconnections |
//! | [`view`] | [`ServiceView`], a live local list of a type's instances built on a watch |
//! | [`config`] | server addresses, and the defaults of every timeout |
//! | [`error`] | [`Error`], one enum for every failure, with predicates to act on |
//! | `spec` | [`ServiceSpec`], what a service announces |
//! | `grant` | [`Registered`], what the server granted a register: id, TTL, revision |
//! | `event` | [`WatchEvent`], what a watch reports |
//! | `caller` | the crate's own handle to the worker, that `Client`, `Registration` and `Watch` are made of |
//! | `worker` | the task that owns the connection: its main loop, connecting on demand and again after a loss |
//! | `session` | one connection over any byte stream: handshake, pipelining, routing frames, the request timeout |
//! | `dial` | the seam that opens byte streams to servers, and its TCP default |
//! | `failover` | which address next and when: rounds over the address list, backoff between rounds |
//! | `backoff` | the exponential backoff with jitter between rounds of connection attempts |
//! | `inbox` | what the handles give the worker: calls, watch controls, the queue of calls not yet written |
//! | `in_flight` | the requests on the wire: ids, matching answers, joining list parts, timeouts, the `min_revision` each carries, calls to send elsewhere after `Unavailable` |
//! | `watches` | the worker's table of open watches: routing pushes, joining snapshots, resuming, bounded delivery |
//! | `watch_channel` | what a watch handle and the worker exchange: keys, buffer items, controls |
//! | `call` | what a handle gives the worker for one request, and the outcome it gets back |
//! | `status` | what the worker publishes for its handles: the current server, why it stopped |
//! | `stop` | recording why the worker stopped, before anything of it is dropped |
//! | `deadline` | deadlines from durations callers and servers choose, where an overflow means "never" |
//!
//! Modules import only downward, so that each can be read knowing only what is below it:
//! `client` → `registration`, `view` → `watch` → `caller` → `call`, `status`, `spec`,
//! `grant`;
//! `client` → `worker` → `session` → `inbox`, `in_flight` → `watches` →
//! `watch_channel` → `event`.
//!
//! # Guide
//!
//! A program builds one [`Client`] with the addresses of its servers and clones it
//! wherever it is needed. The client connects on the first call, says `Hello`, and from
//! then on reconnects on its own, failing over to the next address when one is down.
//!
//! A service announces itself with [`Client::register`], which returns a
//! [`Registration`]: as long as it lives, a background loop heartbeats the instance, and
//! registers it again if the server forgot it (after a restart, say). A caller finds the
//! live instances of a type with [`Client::query`], and the types there are with
//! [`Client::list_types`].
//!
//! - **TTLs per instance.** An instance is live for the server's TTL after each
//!   heartbeat, unless its spec asks for its own with [`ServiceSpec::with_ttl`] (within the
//!   bounds in [`ServerInfo`]); the loop heartbeats at a third of the TTL granted.
//! - **Metadata in place.** [`Registration::set_metadata`] (or [`Client::update`] for an
//!   id) replaces an instance's metadata and keeps its id; watchers see
//!   [`WatchEvent::Updated`].
//! - **Replaced.** Registering the same type, ip and port again replaces the older
//!   instance. A registration whose instance another register replaced stops, in
//!   [`RegistrationState::Replaced`], rather than take the endpoint back: two processes
//!   announcing one endpoint would otherwise replace each other every few seconds.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let server_address = listener.local_addr()?;
//! # let stop = tokio_util::sync::CancellationToken::new();
//! # let server = tokio::spawn(discovery_server::server::run(listener, Default::default(), stop.clone()));
//! use discovery_client::{Client, Metadata, ServiceSpec};
//!
//! // The billing service announces where it listens, once, at startup.
//! let client = Client::builder()
//!     .address(server_address) // "127.0.0.1:7777", or a host name
//!     .client_name("billing")
//!     .build()?;
//! let mut registration = client
//!     .register(ServiceSpec::new("billing", "127.0.0.1:8080".parse()?).with_metadata("version", "1.4.2"))
//!     .await?;
//!
//! // Elsewhere, a caller looks for billing instances.
//! let caller = Client::builder().address(server_address).build()?;
//! let billing = caller.query("billing").await?;
//! assert_eq!(billing.len(), 1);
//! assert_eq!(billing[0].id, registration.id());
//! assert_eq!(billing[0].port, 8080);
//! assert_eq!(billing[0].metadata["version"], "1.4.2");
//! let types = caller.list_types().await?;
//! assert_eq!((types[0].service_type.as_str(), types[0].instances), ("billing", 1));
//!
//! // A new version is rolled out in place: same id, new metadata.
//! registration
//!     .set_metadata(Metadata::from([("version".to_owned(), "1.5.0".to_owned())]))
//!     .await?;
//! assert_eq!(caller.query("billing").await?[0].metadata["version"], "1.5.0");
//!
//! // The service stops heartbeating and deregisters on its way out: callers stop
//! // finding it at once.
//! registration.shutdown().await?;
//! assert!(caller.query("billing").await?.is_empty());
//! # drop((client, caller));
//! # stop.cancel();
//! # server.await??;
//! # Ok(())
//! # }
//! ```
//!
//! # Watching
//!
//! A caller that needs the instances of a type all the time does not poll: it follows the
//! changes the server pushes. [`Client::view`] keeps a local list up to date in the
//! background, which keeps serving the last known instances while no server is reachable;
//! [`Client::watch`] gives the changes themselves, as a `Stream` of [`WatchEvent`]s
//! (a snapshot, then `Added`, `Updated` and `Removed`). Both survive reconnections: the client
//! subscribes again from the last revision it saw and gets exactly the changes it missed,
//! or a snapshot marked `reset` when the server no longer has them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let server_address = listener.local_addr()?;
//! # let stop = tokio_util::sync::CancellationToken::new();
//! # let server = tokio::spawn(discovery_server::server::run(listener, Default::default(), stop.clone()));
//! use discovery_client::{Client, ServiceSpec, WatchEvent};
//!
//! let client = Client::builder().address(server_address).build()?;
//!
//! // A load balancer keeps the list of billing instances at hand.
//! let mut billing = client.view("billing").await?;
//! // An audit log records every change.
//! let mut changes = client.watch("billing").await?;
//! assert!(matches!(changes.recv().await, Some(WatchEvent::Snapshot { .. })));
//!
//! let id = client.register_once(&ServiceSpec::new("billing", "127.0.0.1:8080".parse()?)).await?.id;
//! match changes.recv().await {
//!     Some(WatchEvent::Added { revision, instance }) => println!("{revision}: + {}", instance.id),
//!     other => panic!("{other:?}"),
//! }
//! while billing.instances().is_empty() {
//!     billing.changed().await?;
//! }
//! assert_eq!(billing.instances()[0].id, id);
//! # drop((billing, changes, client));
//! # stop.cancel();
//! # server.await??;
//! # Ok(())
//! # }
//! ```
//!
//! # Errors and timeouts
//!
//! Every call waits at most the connect timeout (default 3 s) for a connection, then at
//! most the request timeout (default 5 s) for its answer; see [`ClientBuilder`]. Failures
//! are one [`Error`] type: [`Error::is_not_found`] for an instance the server does not know
//! (with [`Error::not_found_reason`]: expired, deregistered, or replaced),
//! [`Error::is_connection`] when no server could carry the call, [`Error::is_timeout`] when
//! one did not answer in time, [`Error::is_throttled`] when a rate limit asks the client
//! to wait, and [`Error::is_rejected`] when it refused the request.
//!
//! A server of a cluster that cannot serve for now answers `Unavailable`: the client moves
//! on to the next address, asks a query, a watch or a heartbeat again there, and keeps
//! every registration and its id. A change (a register, an update, a deregister) answered
//! so is not sent twice: the caller gets the refusal ([`Error::is_unavailable`]).
//!
//! A request that was on the wire when its connection broke fails with
//! [`Error::Disconnected`] and is not sent again, because it may already have been carried
//! out; the next call goes over a new connection. Watches are the exception: subscribing
//! is harmless to repeat, so an open [`Watch`] is subscribed again on every new connection,
//! and only [`Client::watch`] itself fails if the connection breaks before the watch has
//! started.

pub mod client;
pub mod config;
pub mod error;
pub mod registration;
pub mod view;
pub mod watch;

mod backoff;
mod call;
mod caller;
mod deadline;
mod dial;
mod event;
mod failover;
mod grant;
mod in_flight;
mod inbox;
mod session;
mod spec;
mod status;
mod stop;
#[cfg(test)]
mod testing;
mod watch_channel;
mod watches;
mod worker;

pub use client::{Client, ClientBuilder, ServerInfo};
pub use error::Error;
pub use registration::{Registered, Registration, RegistrationState, ServiceSpec};
pub use view::{ServiceView, ViewStatus};
pub use watch::{Watch, WatchEvent};

/// The wire types a caller handles, re-exported so that a program needs no direct
/// dependency on `discovery-proto`.
pub use discovery_proto::{
    ErrorKind, Instance, Limits, Metadata, RemoveReason, Revision, TypeCount,
};
/// Instance ids, re-exported for the same reason.
pub use uuid::Uuid;
