//! The bounds of one connection and of one peer, over real TCP on port 0: the write timeout
//! (a slow but steady reader gets all of a large answer, one that stops reading is cut
//! off), the per-peer connection cap (IPv4 and IPv6 loopback, both protocols), and the
//! register rate limit (binary `Throttled`, compat `ERROR`).
//!
//! Each test also checks that the server, its other connections and its registered
//! instances are unaffected. `docs/RELIABILITY.md` (Bounds) lists what each shows.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use discovery_proto::codec::ClientCodec;
use discovery_proto::{
    ClientFrame, ErrorKind, Metadata, PROTOCOL_VERSION, Request, Response, SERVER_REQUEST_ID,
    ServerFrame, encoding,
};
use discovery_server::ServerConfig;
use discovery_test_support::server::{Options, config_with_ttl};
use discovery_test_support::wire::register;
use discovery_test_support::{PATIENCE, TestServer, Wire, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};
use tokio_util::codec::Decoder;

/// The type of the big answer of the write-timeout tests.
const BIG: &str = "big";

fn hello() -> Request {
    Request::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "bounds".into(),
    }
}

/// A raw frame: the length prefix, then the encoded request.
fn frame(request_id: u64, request: Request) -> Vec<u8> {
    let payload = encoding::encode(&ClientFrame::new(request_id, request)).expect("encodes");
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend(payload);
    bytes
}

fn error_kind(response: &Response) -> ErrorKind {
    match response {
        Response::Error { kind, .. } => *kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Registers `count` instances of [`BIG`] in the registry directly (no wire needed), each
/// with `value_bytes` of metadata, so that a query answers about `count * value_bytes`.
/// They get no heartbeats: the server's TTL must outlast the test.
fn fill_big(server: &TestServer, count: u16, value_bytes: usize) {
    for port in 1..=count {
        let metadata = Metadata::from([("v".to_owned(), "x".repeat(value_bytes))]);
        server
            .registry
            .register(BIG, IpAddr::V4(Ipv4Addr::LOCALHOST), port, metadata)
            .expect("registered");
    }
}

/// A connection with a small receive buffer, that has said Hello and sent a query of
/// [`BIG`] (request id 2), and reads its answer at the pace the test chooses.
struct Reader {
    stream: TcpStream,
    buf: BytesMut,
    codec: ClientCodec,
}

impl Reader {
    async fn query_big(addr: SocketAddr) -> Reader {
        Self::query_big_with(addr, Some(16 * 1024)).await
    }

    /// [`Reader::query_big`] with a receive buffer of `recv_buffer` bytes (the system's
    /// default when `None`).
    async fn query_big_with(addr: SocketAddr, recv_buffer: Option<u32>) -> Reader {
        let socket = TcpSocket::new_v4().expect("a socket");
        // Small, so that the kernel holds little of the answer and the server's writes wait
        // for this reader.
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = socket.connect(addr).await.expect("connect");
        let mut bytes = frame(1, hello());
        bytes.extend(frame(
            2,
            Request::Query {
                service_type: BIG.into(),
                min_revision: None,
            },
        ));
        stream.write_all(&bytes).await.expect("send");
        Reader {
            stream,
            buf: BytesMut::new(),
            codec: ClientCodec::default(),
        }
    }

    /// Reads at most `chunk` bytes (waiting for them as long as [`PATIENCE`]); false at the
    /// end of the stream.
    async fn read_some(&mut self, chunk: usize) -> bool {
        self.buf.reserve(chunk);
        let mut limited = (&mut self.stream).take(chunk as u64);
        match timeout(PATIENCE, limited.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => n > 0,
            Ok(Err(_)) => false,
            Err(_) => panic!("no byte within {PATIENCE:?}"),
        }
    }

    /// The frames complete so far.
    fn frames(&mut self) -> Vec<ServerFrame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.codec.decode(&mut self.buf).expect("frames decode") {
            frames.push(frame.expect("a frame of the protocol"));
        }
        frames
    }
}

/// What a reader has of the query's answer: the instances so far, and whether the last
/// frame came.
#[derive(Default)]
struct Answer {
    instances: usize,
    done: bool,
}

impl Answer {
    fn take(&mut self, frames: Vec<ServerFrame>) {
        for frame in frames {
            match frame.response {
                Response::Welcome { .. } => {}
                Response::Instances {
                    instances, more, ..
                } => {
                    assert_eq!(frame.request_id, 2, "the query's answer");
                    assert!(!self.done, "nothing after the last frame");
                    self.instances += instances.len();
                    self.done = !more;
                }
                other => panic!("expected the query's answer, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_slow_steady_reader_gets_all_of_a_large_answer() {
    const COUNT: u16 = 10_000;
    let write_timeout = Duration::from_millis(500);
    let server = TestServer::with_config(ServerConfig {
        write_timeout,
        // Far shorter than the whole answer takes: it bounds reading a frame, never writing.
        frame_timeout: Duration::from_millis(200),
        ..config_with_ttl(Duration::from_secs(600))
    })
    .await;
    fill_big(&server, COUNT, 400);
    let mut reader = Reader::query_big(server.addr).await;
    let mut answer = Answer::default();
    let started = Instant::now();
    let mut read = 0usize;
    // At most 16 KiB every 10 ms: about 1.6 MB/s at most, never pausing for anything near
    // the write timeout.
    while !answer.done {
        assert!(reader.read_some(16 * 1024).await, "the answer was cut off");
        read += 16 * 1024;
        answer.take(reader.frames());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    assert_eq!(answer.instances, usize::from(COUNT), "every instance came");
    eprintln!("read about {read} bytes in {took:?}");
    assert!(
        took > 4 * write_timeout,
        "the answer took {took:?}: too fast to show that a steady reader outlasts the write timeout"
    );
    // The connection goes on.
    let mut wire = Wire::hello(server.addr).await;
    assert_eq!(wire.call(Request::Ping).await, Response::Pong);
    server.stop().await;
}

#[tokio::test]
async fn a_reader_that_stops_is_cut_off_and_no_one_else_is() {
    const COUNT: u16 = 12_000;
    let write_timeout = Duration::from_millis(500);
    // Two connections: the one kept open to heartbeat, and the reader. While the reader
    // is open, a third is refused; once it is cut off, a third is admitted.
    let server = TestServer::with_config(ServerConfig {
        write_timeout,
        max_connections: 2,
        ..config_with_ttl(Duration::from_secs(600))
    })
    .await;
    fill_big(&server, COUNT, 400);
    let mut kept = Wire::hello(server.addr).await;
    let id = kept.register("kept", 7000).await;

    let sent = Instant::now();
    let mut reader = Reader::query_big(server.addr).await;
    // It reads nothing: the server's writes stop making progress once the kernel's buffers
    // are full, and the connection is cut off a write timeout later.
    let give_up = Instant::now() + PATIENCE;
    let mut probe = loop {
        let mut probe = Wire::connect(server.addr).await;
        let hello_id = probe.send(hello()).await;
        match probe.recv().await {
            Some(frame) if frame.request_id == hello_id => {
                assert!(matches!(frame.response, Response::Welcome { .. }));
                break probe;
            }
            Some(frame) => {
                assert_eq!(error_kind(&frame.response), ErrorKind::TooManyConnections);
            }
            // Refused and closed before the refusal was read.
            None => {}
        }
        // Meanwhile the kept connection is served.
        let beat = kept
            .call(Request::Heartbeat {
                id,
                min_revision: None,
            })
            .await;
        assert_eq!(beat, Response::Ok, "the kept instance is served meanwhile");
        assert!(
            Instant::now() < give_up,
            "the stopped reader is cut off in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cut_after = sent.elapsed();
    assert!(
        cut_after >= write_timeout,
        "cut off after {cut_after:?}, before the write timeout"
    );
    // What the kernel held still comes, then the end: never the whole answer.
    let mut answer = Answer::default();
    while reader.read_some(64 * 1024).await {
        answer.take(reader.frames());
    }
    assert!(
        !answer.done,
        "the stopped reader did not get the whole answer"
    );
    assert!(answer.instances < usize::from(COUNT));

    // Everyone else is unaffected.
    assert_eq!(probe.call(Request::Ping).await, Response::Pong);
    assert_eq!(
        kept.call(Request::Heartbeat {
            id,
            min_revision: None
        })
        .await,
        Response::Ok
    );
    assert_eq!(probe.query("kept").await[0].id, id);
    assert_eq!(server.registry.query(BIG).len(), usize::from(COUNT));
    drop((kept, probe));
    server.stop().await;
}

/// A connection from `from` to `addr` that sends Hello: its answer, Welcome or a refusal.
async fn hello_from(from: IpAddr, addr: SocketAddr) -> (Wire, ServerFrame) {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the client's address");
    let stream = socket.connect(addr).await.expect("connect");
    let mut wire = Wire::from_stream(stream);
    wire.send(hello()).await;
    let frame = wire.recv().await.expect("an answer to Hello");
    (wire, frame)
}

async fn welcomed(from: IpAddr, addr: SocketAddr) -> Wire {
    let (wire, frame) = hello_from(from, addr).await;
    assert!(
        matches!(frame.response, Response::Welcome { .. }),
        "expected Welcome, got {frame:?}"
    );
    wire
}

/// Asserts that a connection from `from` is refused for its peer's cap, then closed.
async fn assert_peer_refused(from: IpAddr, addr: SocketAddr) {
    let (mut wire, frame) = hello_from(from, addr).await;
    assert_eq!(frame.request_id, SERVER_REQUEST_ID, "outside any request");
    assert_eq!(error_kind(&frame.response), ErrorKind::PeerConnectionLimit);
    assert!(wire.recv().await.is_none(), "then the connection is closed");
}

/// Connects from `from` until one is welcomed: a slot freed by a close is free once the
/// server has noticed it, a moment later.
async fn welcomed_when_free(from: IpAddr, addr: SocketAddr) -> Wire {
    eventually("a freed slot of the peer is admitted", || async {
        let (wire, frame) = hello_from(from, addr).await;
        match frame.response {
            Response::Welcome { .. } => Some(wire),
            other => {
                assert_eq!(error_kind(&other), ErrorKind::PeerConnectionLimit);
                None
            }
        }
    })
    .await
}

fn per_peer_config(cap: usize) -> ServerConfig {
    ServerConfig {
        max_connections_per_peer: Some(cap),
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn a_peer_has_at_most_its_cap_of_connections_over_both_protocols() {
    let server = TestServer::with(Options {
        config: per_peer_config(2),
        compat: true,
        ..Options::default()
    })
    .await;
    let one: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let mut first = welcomed(one, server.addr).await;
    let id = first.register("kept", 7000).await;
    let mut open = vec![first, welcomed(one, server.addr).await];
    let welcome = open[0].call(hello()).await;
    assert_eq!(error_kind(&welcome), ErrorKind::UnexpectedHello);

    // The third from 127.0.0.1 is refused, in each protocol's words...
    assert_peer_refused(one, server.addr).await;
    let mut compat = TcpStream::connect(server.compat_addr()).await.unwrap();
    compat.write_all(&compat_query("kept")).await.unwrap();
    let mut refusal = Vec::new();
    timeout(PATIENCE, compat.read_to_end(&mut refusal))
        .await
        .expect("the compat refusal within the deadline")
        .expect("read");
    assert!(refusal.ends_with(b"ERROR"), "{refusal:?}");
    // ...while another address of the same host is another peer.
    let mut elsewhere = welcomed(other, server.addr).await;
    assert_eq!(elsewhere.query("kept").await[0].id, id);

    // The count drops when a connection closes.
    drop(open.pop());
    open.push(welcomed_when_free(one, server.addr).await);
    assert_peer_refused(one, server.addr).await;
    for wire in &mut open {
        assert_eq!(wire.call(Request::Ping).await, Response::Pong);
    }
    assert_eq!(
        open[0]
            .call(Request::Heartbeat {
                id,
                min_revision: None
            })
            .await,
        Response::Ok
    );
    drop((open, elsewhere));
    server.stop().await;
}

#[tokio::test]
async fn an_ipv6_peer_has_at_most_its_cap_too() {
    let loopback: IpAddr = "::1".parse().unwrap();
    if let Err(e) = std::net::TcpListener::bind((loopback, 0)) {
        eprintln!("skipped: this host has no IPv6 loopback ({e})");
        return;
    }
    let server = TestServer::with(Options {
        config: per_peer_config(2),
        addr: SocketAddr::new(loopback, 0),
        ..Options::default()
    })
    .await;
    let mut open = vec![
        welcomed(loopback, server.addr).await,
        welcomed(loopback, server.addr).await,
    ];
    assert_peer_refused(loopback, server.addr).await;
    drop(open.pop());
    open.push(welcomed_when_free(loopback, server.addr).await);
    for wire in &mut open {
        assert_eq!(wire.call(Request::Ping).await, Response::Pong);
    }
    drop(open);
    server.stop().await;
}

#[tokio::test]
async fn the_welcome_announces_the_connection_bounds() {
    let server = TestServer::with_config(ServerConfig {
        max_connections_per_peer: Some(7),
        register_rate: Some(50),
        write_timeout: Duration::from_secs(3),
        ..ServerConfig::default()
    })
    .await;
    let mut wire = Wire::connect(server.addr).await;
    let Response::Welcome { limits, .. } = wire.call(hello()).await else {
        panic!("expected Welcome");
    };
    assert_eq!(limits.max_connections_per_peer, Some(7));
    assert_eq!(limits.register_rate, Some(50));
    assert_eq!(
        limits.register_burst,
        Some(50),
        "the burst defaults to the rate"
    );
    assert_eq!(limits.write_timeout, Some(Duration::from_secs(3)));
    drop(wire);
    server.stop().await;
}

#[tokio::test]
async fn registers_past_the_burst_are_throttled_per_connection() {
    // One token a second: however slow this machine, the pipelined registers below come
    // well within a second of each other.
    let server = TestServer::with_config(ServerConfig {
        register_rate: Some(1),
        register_burst: Some(3),
        ..ServerConfig::default()
    })
    .await;
    let mut wire = Wire::hello(server.addr).await;
    let mut ids = Vec::new();
    for port in 1..=4 {
        ids.push(wire.send(register("rated", port)).await);
    }
    // A heartbeat is never throttled.
    let beat = wire
        .send(Request::Heartbeat {
            id: uuid::Uuid::nil(),
            min_revision: None,
        })
        .await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(wire.recv().await.expect("an answer"));
    }
    for (frame, id) in answers.iter().zip(&ids).take(3) {
        assert_eq!(frame.request_id, *id);
        assert!(
            matches!(frame.response, Response::Registered { .. }),
            "the burst is accepted: {frame:?}"
        );
    }
    assert_eq!(answers[3].request_id, ids[3]);
    let Response::Throttled { retry_after_ms } = answers[3].response else {
        panic!("the fourth is throttled: {:?}", answers[3]);
    };
    assert!(
        (1..=1000).contains(&retry_after_ms),
        "one token comes back within a second: {retry_after_ms} ms"
    );
    assert_eq!(answers[4].request_id, beat);
    assert!(matches!(answers[4].response, Response::NotFound { .. }));
    // The throttled register changed nothing.
    assert_eq!(server.registry.query("rated").len(), 3);

    // Another connection has a bucket of its own.
    let mut other = Wire::hello(server.addr).await;
    for port in 10..13 {
        other.register("rated", port).await;
    }
    // After the wait it was told, the same register is accepted.
    tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
    let again = wire.call(register("rated", 4)).await;
    assert!(matches!(again, Response::Registered { .. }), "{again:?}");
    assert_eq!(server.registry.query("rated").len(), 7);
    drop((wire, other));
    server.stop().await;
}

/// A compat request with `content`.
fn compat_request(content: &str) -> Vec<u8> {
    let header = format!(
        r#"{{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": {}}}"#,
        content.len()
    );
    let mut bytes = (header.len() as u16).to_be_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(content.as_bytes());
    bytes
}

fn compat_query(service_type: &str) -> Vec<u8> {
    compat_request(&format!(
        r#"{{"action": "query", "type": "{service_type}"}}"#
    ))
}

/// Sends one compat request and returns the answer's content.
async fn compat_call(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut bytes = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut bytes))
        .await
        .expect("an answer within the deadline")
        .expect("read");
    let header_len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    String::from_utf8(bytes[2 + header_len..].to_vec()).expect("UTF-8")
}

#[tokio::test]
async fn compat_registers_past_the_burst_are_answered_error_per_peer() {
    let server = TestServer::with(Options {
        config: ServerConfig {
            register_rate: Some(1),
            register_burst: Some(2),
            ..ServerConfig::default()
        },
        compat: true,
        ..Options::default()
    })
    .await;
    let compat = server.compat_addr();
    let register = |port: u16| {
        compat_request(&format!(
            r#"{{"action": "register", "ip": "127.0.0.1", "port": {port}, "type": "rated"}}"#
        ))
    };
    // Each request is a connection of its own: the bucket is the peer's.
    let first = compat_call(compat, &register(1)).await;
    let second = compat_call(compat, &register(2)).await;
    assert_eq!((first.len(), second.len()), (36, 36), "{first} {second}");
    assert_eq!(compat_call(compat, &register(3)).await, "ERROR");
    // A query is not throttled, and the refused register changed nothing.
    assert_eq!(
        compat_call(compat, &compat_query("rated"))
            .await
            .matches("port")
            .count(),
        2
    );
    // The binary protocol's connections have buckets of their own.
    let mut wire = Wire::hello(server.addr).await;
    wire.register("rated", 10).await;
    assert_eq!(server.registry.query("rated").len(), 3);
    // One token a second comes back.
    let again = eventually("a token is back", || async {
        let answer = compat_call(compat, &register(3)).await;
        (answer != "ERROR").then_some(answer)
    })
    .await;
    assert_eq!(again.len(), 36);
    drop(wire);
    server.stop().await;
}

/// The measurement of `docs/RELIABILITY.md` (Bounds), not part of the suite: a reader at
/// about 0.8 MB/s of a 26 MB answer with the default timeouts (issue 15, finding 5: it got
/// EOF after 11 MB), then a reader as fast as it can. Run it on a release build:
/// `cargo test --release -p discovery-server --test connection_bounds -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of about 40 s; run by hand on a release build"]
async fn measure_a_slow_reader_of_a_26_mb_answer() {
    const COUNT: u32 = 100_000;
    // Instances registered behind the server's back get no heartbeats: a long TTL keeps
    // them for both readers.
    let server = TestServer::with_config(config_with_ttl(Duration::from_secs(3600))).await;
    for n in 0..COUNT {
        let metadata = Metadata::from([("v".to_owned(), "x".repeat(222))]);
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n / 60_000));
        let port = u16::try_from(1 + n % 60_000).expect("a port");
        server
            .registry
            .register(BIG, ip, port, metadata)
            .expect("registered");
    }
    for (label, chunk, pause, recv_buffer) in [
        ("slow", 8 * 1024, Duration::from_millis(10), Some(16 * 1024)),
        (
            "fast, 16 KiB SO_RCVBUF",
            1 << 20,
            Duration::ZERO,
            Some(16 * 1024),
        ),
        ("fast, default SO_RCVBUF", 1 << 20, Duration::ZERO, None),
    ] {
        let mut reader = Reader::query_big_with(server.addr, recv_buffer).await;
        let mut answer = Answer::default();
        let started = Instant::now();
        let mut bytes = 0usize;
        while !answer.done {
            let before = reader.buf.len();
            assert!(
                reader.read_some(chunk).await,
                "{label}: cut off after {bytes} bytes"
            );
            bytes += reader.buf.len() - before;
            answer.take(reader.frames());
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let took = started.elapsed();
        eprintln!(
            "{label}: {} instances, {bytes} bytes in {took:.1?} ({:.2} MB/s)",
            answer.instances,
            bytes as f64 / took.as_secs_f64() / 1e6
        );
        assert_eq!(answer.instances, COUNT as usize);
    }
    server.stop().await;
}
