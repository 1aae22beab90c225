//! What the worker publishes for its handles: the server it is connected to
//! ([`ServerInfo`]) and, once it has stopped, why.
//!
//! The worker writes, the handles read; neither waits for the other, so a plain mutex per
//! field is enough (each is held for a clone).

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use discovery_proto::Limits;

use crate::config::ServerAddress;

/// What the server of the current (or last) connection announced in its `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInfo {
    /// The address from the client's list that this connection went to.
    pub address: ServerAddress,
    /// The socket address it resolved to.
    pub peer: SocketAddr,
    /// The protocol version the server speaks.
    pub protocol_version: u16,
    /// How long an instance registered without a TTL of its own stays live without a
    /// heartbeat on that server. A [`Registration`](crate::Registration) heartbeats at a
    /// third of the TTL its register was granted, which is this one unless its
    /// [`ServiceSpec::ttl`](crate::ServiceSpec::ttl) asked for another.
    pub ttl: Duration,
    /// The shortest TTL a register may ask for there.
    pub min_ttl: Duration,
    /// The longest TTL a register may ask for there.
    pub max_ttl: Duration,
    /// How long the server lets a connection go without a frame from the client before it
    /// closes it (a connection that carries watches excepted). The client connects again
    /// when it next has something to send, so this costs an idle client nothing.
    pub idle_timeout: Duration,
    /// How long the server gives a client to finish a frame once it has begun, and to read
    /// what the server writes.
    pub frame_timeout: Duration,
    /// The limits the server enforces, to check a request against before sending it.
    pub limits: Limits,
}

/// The worker's side of what it shares with the handles.
#[derive(Debug, Default)]
pub(crate) struct WorkerStatus {
    /// Why the worker stopped, once it has.
    stopped: Mutex<Option<String>>,
    /// The server of the current or last connection.
    server: Mutex<Option<ServerInfo>>,
}

impl WorkerStatus {
    /// Why the worker stopped; `None` while it runs.
    pub(crate) fn stop_reason(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records why the worker stopped. The first reason wins: a panic is recorded before
    /// the drop that follows it would record a shutdown.
    pub(crate) fn record_stop(&self, reason: String) {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        stopped.get_or_insert(reason);
    }

    /// The server of the current or last connection.
    pub(crate) fn server(&self) -> Option<ServerInfo> {
        self.server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records the server of a new connection.
    pub(crate) fn set_server(&self, info: ServerInfo) {
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(info);
    }
}
