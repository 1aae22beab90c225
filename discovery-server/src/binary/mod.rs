//! The binary protocol of `discovery-proto`: length-prefixed bincode frames, pipelined
//! requests, pushed watch changes. `docs/PROTOCOL.md` describes the bytes.
//!
//! The same three layers as every frontend:
//!
//! - messages: the protocol crate's `ClientFrame` and `ServerFrame`, cut and encoded by its
//!   `ServerCodec`;
//! - handling: [`handler`], plain functions from the registry and a request to an
//!   [`handler::Answer`];
//! - the connection: [`connection::Connection`] owns the stream, its buffers, timeouts and
//!   open watches.

pub mod connection;
pub mod handler;

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::frontend::{Context, Frontend, Refusal, Stream};

pub use connection::Connection;

/// The binary protocol, as a [`Frontend`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Binary;

impl Frontend for Binary {
    fn name(&self) -> &'static str {
        "binary"
    }

    async fn serve<S: Stream>(
        &self,
        stream: S,
        peer: SocketAddr,
        context: &Context,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        Connection::new(stream, peer, context)
            .run(context, stop)
            .await
    }

    async fn refuse<S: Stream>(&self, stream: &mut S, context: &Context, refusal: Refusal) {
        let message = refusal.message(&context.config);
        connection::refuse(stream, refusal.kind(), &message).await;
    }
}
