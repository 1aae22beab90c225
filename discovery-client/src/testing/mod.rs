//! For the unit tests: servers reached through in-memory pipes by a [`Dial`] of their own,
//! on the test's runtime, so that a test can run under tokio's paused clock.
//!
//! Real sockets and a paused clock do not mix (tokio issue 4522: the clock jumps while a
//! socket is waited on), but pipes wake their readers like any in-process channel, so a
//! test can let hours of virtual time pass in an instant and check what the client did
//! meanwhile: how often it heartbeat or dialled, and that its timing bounds hold whatever
//! the machine's speed.
//!
//! | module | what it is for |
//! |---|---|
//! | [`pipe`] | [`PipeServer`]: the server crate's own connection code over a registry, which can crash and restart |
//! | [`script`] | [`ScriptServer`]: servers the test plays itself, frame by frame, to send what no real server sends (`Unavailable`, `Throttled`, frames of unknown kinds) |
//!
//! [`Dial`]: crate::dial::Dial

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub(crate) mod pipe;
pub(crate) mod script;

pub(crate) use pipe::PipeServer;
pub(crate) use script::{Peer, ScriptServer};

/// The peer address the pipes report.
pub(crate) const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7777);
