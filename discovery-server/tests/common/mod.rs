//! One helper to start a real server on 127.0.0.1:0 and talk to it in frames or raw bytes.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::codec::ClientCodec;
use discovery_proto::{ClientFrame, PROTOCOL_VERSION, Request, Response, ServerFrame};
use discovery_server::{Error, Registry, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Generous bound on anything a test waits for; a healthy run takes a small part of it.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A server running on its own task, on a port of its own.
pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: Registry,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_config(ServerConfig::default()).await
    }

    pub async fn with_config(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let registry = Registry::new(config.registry.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(discovery_server::server::serve(
            listener,
            Arc::new(config),
            registry.clone(),
            shutdown.clone(),
        ));
        Self {
            addr,
            registry,
            shutdown,
            task,
        }
    }

    /// Shuts the server down and waits for it, failing the test if that takes too long.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("server stops within the deadline")
            .expect("server task did not panic")
            .expect("server ended without error");
    }
}

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
    pub async fn query(&mut self, service_type: &str) -> Vec<discovery_proto::Instance> {
        let id = self
            .send(Request::Query {
                service_type: service_type.into(),
            })
            .await;
        let mut all = Vec::new();
        loop {
            let frame = self.recv().await.expect("an answer");
            assert_eq!(frame.request_id, id);
            match frame.response {
                Response::Instances { instances, more } => {
                    all.extend(instances);
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
            Response::Registered { id } => id,
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
    }
}

/// A config with a short TTL, for tests that watch instances expire.
pub fn short_ttl(ttl: Duration) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.registry.ttl = ttl;
    config
}

/// Polls `check` until it holds or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
