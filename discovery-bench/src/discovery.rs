//! The discovery backend: the protocol crate's codec over a raw `TcpStream` (a `FramedRead`
//! on its reading half, a buffer of encoded requests on its writing half), with no client
//! library in between, so that it is driven as thinly as Redis is.
//!
//! A connection sends `Hello`, reads `Welcome` (and takes the server's frame limit and TTL
//! from it), then pipelines requests numbered from 1 and reads their answers in order,
//! checking that each answer carries the id of the request it answers.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use discovery_proto::codec::ClientCodec;
use discovery_proto::{
    ClientFrame, Metadata, PROTOCOL_VERSION, Request, RequestId, Response, SERVER_REQUEST_ID,
    ServerFrame,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};
use uuid::Uuid;

use crate::runner::{Backend, OpOutcome};
use crate::workload::{Op, Plan};

/// The starting size of the read and write buffers.
const BUF_BYTES: usize = 16 * 1024;

/// Where the discovery server listens.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// A loopback address.
    pub addr: SocketAddr,
}

/// The reading half of a connection: whole server frames, decoded.
pub type FrameReader = FramedRead<OwnedReadHalf, ClientCodec>;

/// One connection to a discovery server.
pub struct DiscoveryClient {
    frames: FrameReader,
    writer: OwnedWriteHalf,
    /// Encodes requests; the decoding codec is the reader's.
    encoder: ClientCodec,
    write_buf: BytesMut,
    next_id: RequestId,
    /// The ids of the requests pushed and not answered yet, oldest first.
    pending: VecDeque<RequestId>,
    plan: Arc<Plan>,
    conn: usize,
    ttl: Duration,
}

impl DiscoveryClient {
    async fn open(config: DiscoveryConfig, plan: Arc<Plan>, conn: usize) -> Result<Self, String> {
        let addr = config.addr;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let (reader, writer) = stream.into_split();
        let mut client = Self {
            frames: FramedRead::with_capacity(reader, ClientCodec::default(), BUF_BYTES),
            writer,
            encoder: ClientCodec::default(),
            write_buf: BytesMut::with_capacity(BUF_BYTES),
            next_id: 1,
            pending: VecDeque::new(),
            plan,
            conn,
            ttl: Duration::ZERO,
        };
        client.send(Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: format!("discovery-bench/{conn}"),
        });
        let hello = |e: io::Error| format!("{addr}: Hello failed: {e}");
        client.flush_buf().await.map_err(hello)?;
        let expected = client.pending.pop_front().unwrap_or_default();
        let frame = client.next_frame(expected).await.map_err(hello)?;
        match frame.response {
            Response::Welcome { ttl, limits, .. } => {
                client.ttl = ttl;
                // Between frames: the old decoder holds nothing the new one needs.
                let limit = limits.max_frame_bytes as usize;
                *client.frames.decoder_mut() = ClientCodec::new(limit);
                client.encoder = ClientCodec::new(limit);
                Ok(client)
            }
            other => Err(format!("{addr}: Hello answered {other:?}")),
        }
    }

    /// Encodes a request under the next id.
    fn send(&mut self, request: Request) {
        let id = self.next_id;
        self.next_id += 1;
        // Our requests are small and valid: encoding cannot fail, and if it ever did the
        // answer would be missing and the connection would report it.
        if self
            .encoder
            .encode(ClientFrame::new(id, request), &mut self.write_buf)
            .is_ok()
        {
            self.pending.push_back(id);
        }
    }

    async fn flush_buf(&mut self) -> io::Result<()> {
        self.writer.write_all(&self.write_buf).await?;
        self.write_buf.clear();
        Ok(())
    }

    /// Reads the next frame, which must answer `expected`.
    async fn next_frame(&mut self, expected: RequestId) -> io::Result<ServerFrame> {
        match self.frames.next().await {
            Some(Ok(Ok(frame))) if frame.request_id == expected => Ok(frame),
            Some(Ok(Ok(frame))) if frame.request_id == SERVER_REQUEST_ID => Err(io::Error::other(
                format!("the server said {:?}", frame.response),
            )),
            Some(Ok(Ok(frame))) => Err(io::Error::other(format!(
                "answer to request {} while waiting for {expected}",
                frame.request_id
            ))),
            Some(Ok(Err(e)) | Err(e)) => Err(into_io(e)),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Takes the connection apart after `Hello`, for a caller that reads and writes it on
    /// its own (the keep-alive run gives the halves to a reader and a writer): the frames
    /// (with the bytes read and not decoded yet), the writing half, the next request id,
    /// and the server's frame limit.
    pub fn into_parts(self) -> (FrameReader, OwnedWriteHalf, RequestId, usize) {
        let limit = self.encoder.max_frame_bytes();
        (self.frames, self.writer, self.next_id, limit)
    }

    fn register(&mut self, t: usize, ip: std::net::IpAddr, port: u16) {
        let service_type = self.plan.types[t].clone();
        self.send(Request::Register {
            service_type,
            ip,
            port,
            metadata: Metadata::new(),
            // The server's TTL, as in version 1: the keep-alive run paces its heartbeats by
            // the one `Welcome` announces.
            ttl: None,
        });
    }
}

/// A codec error as an I/O error: the socket's own error as it came, anything else wrapped.
pub fn into_io(e: discovery_proto::Error) -> io::Error {
    match e {
        discovery_proto::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl Backend for DiscoveryClient {
    type Config = DiscoveryConfig;
    type Handle = Uuid;

    const NAME: &'static str = "discovery";

    async fn connect(
        config: DiscoveryConfig,
        plan: Arc<Plan>,
        conn: usize,
    ) -> Result<Self, String> {
        Self::open(config, plan, conn).await
    }

    async fn prepare(&mut self) -> Result<(), String> {
        // Seeding registers the same endpoints as an earlier run, which replaces its
        // entries: nothing to clear.
        Ok(())
    }

    fn server_ttl(&self) -> Option<Duration> {
        Some(self.ttl)
    }

    fn push(&mut self, op: Op, handles: &[Uuid]) {
        match op {
            Op::Seed(i) => {
                let (t, ip, port) = self.plan.seed(i);
                self.register(t, ip, port);
            }
            Op::Register(slot) => {
                let (t, ip, port) = self.plan.pool(self.conn, slot);
                self.register(t, ip, port);
            }
            Op::Heartbeat(i) => self.send(Request::Heartbeat {
                id: handles[i],
                min_revision: None,
            }),
            Op::Query(t) => {
                let service_type = self.plan.types[t].clone();
                self.send(Request::Query {
                    service_type,
                    min_revision: None,
                });
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_buf().await
    }

    async fn answer(&mut self, op: Op) -> io::Result<OpOutcome<Uuid>> {
        let expected = self
            .pending
            .pop_front()
            .ok_or_else(|| io::Error::other("an answer was awaited for no request"))?;
        let mut items = 0;
        loop {
            let frame = self.next_frame(expected).await?;
            let answer = match (op, frame.response) {
                // Compact frames: the type once, then entries; counted as before.
                (
                    Op::Query(_),
                    Response::Instances {
                        instances, more, ..
                    },
                ) => {
                    items += instances.len();
                    if more {
                        continue;
                    }
                    OpOutcome::Done { items }
                }
                (Op::Seed(_), Response::Registered { id, .. }) => OpOutcome::Seeded(id),
                (Op::Register(_), Response::Registered { .. }) => OpOutcome::Done { items: 0 },
                (Op::Heartbeat(_), Response::Ok) => OpOutcome::Done { items: 0 },
                (Op::Heartbeat(i), Response::NotFound { reason }) => OpOutcome::Failed(format!(
                    "heartbeat of seed instance {i} answered NotFound ({reason:?})"
                )),
                (_, Response::Error { kind, message }) => {
                    OpOutcome::Failed(format!("{kind:?}: {message}"))
                }
                (op, other) => OpOutcome::Failed(format!("{op:?} answered {other:?}")),
            };
            return Ok(answer);
        }
    }

    fn background(
        _: &DiscoveryConfig,
        _: Arc<Plan>,
        _: Instant,
        _: Duration,
    ) -> Option<JoinHandle<Result<String, String>>> {
        // The server expires instances itself.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_error_stays_itself_and_a_codec_error_is_wrapped() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let e = into_io(discovery_proto::Error::Io(reset));
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        let e = into_io(discovery_proto::Error::FrameTooLarge { len: 9, max: 8 });
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert_eq!(
            e.to_string(),
            "frame of 9 bytes is over the limit of 8 bytes"
        );
    }
}
