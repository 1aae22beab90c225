//! A connection that speaks the binary protocol's frames with no help from the client
//! crate, and lets a test write raw bytes beneath them.

use std::net::SocketAddr;

use discovery_proto::codec::ClientCodec;
use discovery_proto::{ClientFrame, Instance, PROTOCOL_VERSION, Request, Response, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::PATIENCE;

/// A connection speaking frames, with no help from the client crate.
pub struct Wire {
    framed: Framed<TcpStream, ClientCodec>,
    next_id: u64,
}

impl Wire {
    /// Connects without saying Hello.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self {
            framed: Framed::new(stream, ClientCodec::default()),
            next_id: 1,
        }
    }

    /// Speaks frames over a stream connected elsewhere (from an address of the test's
    /// choosing, with socket options of its own), without saying Hello.
    pub fn from_stream(stream: TcpStream) -> Self {
        Self {
            framed: Framed::new(stream, ClientCodec::default()),
            next_id: 1,
        }
    }

    /// Connects and says Hello, checking the Welcome.
    pub async fn hello(addr: SocketAddr) -> Self {
        let mut wire = Self::connect(addr).await;
        let welcome = wire
            .call(Request::Hello {
                protocol_version: PROTOCOL_VERSION,
                client_name: "test".into(),
            })
            .await;
        assert!(
            matches!(welcome, Response::Welcome { .. }),
            "expected Welcome, got {welcome:?}"
        );
        wire
    }

    /// Sends one request and returns its id.
    pub async fn send(&mut self, request: Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.framed
            .send(ClientFrame::new(id, request))
            .await
            .expect("send");
        id
    }

    /// The next frame, or None when the server closed the connection (cleanly or not).
    pub async fn recv(&mut self) -> Option<ServerFrame> {
        match tokio::time::timeout(PATIENCE, self.framed.next())
            .await
            .expect("an answer within the deadline")
        {
            Some(Ok(Ok(frame))) => Some(frame),
            Some(Ok(Err(e))) => panic!("server sent a frame that does not decode: {e}"),
            Some(Err(_)) | None => None,
        }
    }

    /// Sends a request and returns its one answer, checking the id.
    pub async fn call(&mut self, request: Request) -> Response {
        let id = self.send(request).await;
        let frame = self
            .recv()
            .await
            .expect("an answer, not a closed connection");
        assert_eq!(frame.request_id, id, "answer carries the request's id");
        frame.response
    }

    /// Sends a query and joins the frames of its answer.
    pub async fn query(&mut self, service_type: &str) -> Vec<Instance> {
        let id = self
            .send(Request::Query {
                service_type: service_type.into(),
                min_revision: None,
            })
            .await;
        let mut all = Vec::new();
        loop {
            let frame = self.recv().await.expect("an answer");
            assert_eq!(frame.request_id, id);
            match frame.response {
                Response::Instances {
                    service_type: answered,
                    instances,
                    more,
                    ..
                } => {
                    assert_eq!(answered, service_type, "the answer names the type queried");
                    all.extend(
                        instances
                            .into_iter()
                            .map(|entry| Instance::from_entry(service_type, entry)),
                    );
                    if !more {
                        return all;
                    }
                }
                other => panic!("expected Instances, got {other:?}"),
            }
        }
    }

    /// Registers an instance with no metadata, returning its id.
    pub async fn register(&mut self, service_type: &str, port: u16) -> uuid::Uuid {
        match self.call(register(service_type, port)).await {
            Response::Registered { id, .. } => id,
            other => panic!("expected Registered, got {other:?}"),
        }
    }

    /// The socket beneath, for writing raw bytes.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.framed.get_mut()
    }
}

/// A register request on 127.0.0.1 with no metadata.
pub fn register(service_type: &str, port: u16) -> Request {
    Request::Register {
        service_type: service_type.into(),
        ip: "127.0.0.1".parse().expect("ip"),
        port,
        metadata: Default::default(),
        ttl: None,
    }
}
