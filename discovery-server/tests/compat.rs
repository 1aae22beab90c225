//! The course's JSON socket protocol on the compat listener, over real TCP with exact
//! bytes: every action and answer, messages in pieces, each kind of bad header and body,
//! the limits, one registry shared with the typed protocol, shutdown, the binary's
//! `--compat-listen`, and the course-style Python client in `compat_client.py`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use discovery_proto::{ErrorKind, PROTOCOL_VERSION, Request, Response};
use discovery_server::ServerConfig;
use discovery_test_support::server::{Options, config_with_ttl};
use discovery_test_support::{PATIENCE, Process, TestServer, Wire, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_discovery-server");

/// A server on its own task with both listeners over one registry, on ports of their own.
async fn compat_server(config: ServerConfig) -> TestServer {
    TestServer::with(Options {
        config,
        compat: true,
        ..Options::default()
    })
    .await
}

/// The header the course's clients write, for `content_length` bytes of JSON.
fn request_header(content_length: usize) -> String {
    format!(
        r#"{{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": {content_length}}}"#
    )
}

/// A whole message: the header length, the header, the content.
fn message(header: &str, content: &[u8]) -> Vec<u8> {
    let mut bytes = u16::try_from(header.len())
        .expect("a short header")
        .to_be_bytes()
        .to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(content);
    bytes
}

/// A request as the course's clients send it.
fn request(content: &str) -> Vec<u8> {
    message(&request_header(content.len()), content.as_bytes())
}

/// An answer's content type and content.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    content_type: &'static str,
    content: String,
}

fn plain(content: &str) -> Answer {
    Answer {
        content_type: "text/plain",
        content: content.into(),
    }
}

fn json(content: &str) -> Answer {
    Answer {
        content_type: "text/json",
        content: content.into(),
    }
}

/// Reads until the server closes, and splits what came into one answer, checking that its
/// header is byte for byte what Python's `json.dumps` writes.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut bytes))
        .await
        .expect("an answer within the deadline")
        .expect("the answer is read to its end");
    parse_answer(&bytes)
}

fn parse_answer(bytes: &[u8]) -> Answer {
    assert!(bytes.len() >= 2, "an answer, got {bytes:?}");
    let header_len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    assert!(bytes.len() >= 2 + header_len, "a whole header: {bytes:?}");
    let header = std::str::from_utf8(&bytes[2..2 + header_len]).expect("a UTF-8 header");
    let content = &bytes[2 + header_len..];
    let content_type = if header.contains(r#""content-type": "text/plain""#) {
        "text/plain"
    } else {
        "text/json"
    };
    let expected = format!(
        r#"{{"byteorder": "little", "content-type": "{content_type}", "content-encoding": "utf-8", "content-length": {}}}"#,
        content.len()
    );
    assert_eq!(header, expected, "the header, exactly");
    Answer {
        content_type,
        content: String::from_utf8(content.to_vec()).expect("UTF-8 content"),
    }
}

/// Sends `bytes` on a new connection and reads the one answer.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    read_answer(&mut stream).await
}

/// Sends one request with JSON `content` and reads the answer.
async fn call(addr: SocketAddr, content: &str) -> Answer {
    exchange(addr, &request(content)).await
}

async fn register(addr: SocketAddr, service_type: &str, port: u16) -> Uuid {
    let content = format!(
        r#"{{"action": "register", "ip": "127.0.0.1", "port": {port}, "type": "{service_type}"}}"#
    );
    let answer = call(addr, &content).await;
    assert_eq!(answer.content_type, "text/plain");
    assert_eq!(answer.content.len(), 36, "a hyphenated UUID: {answer:?}");
    answer.content.parse().expect("a UUID")
}

async fn heartbeat(addr: SocketAddr, id: &str) -> Answer {
    call(
        addr,
        &format!(r#"{{"action": "heartbeat", "uuid": "{id}"}}"#),
    )
    .await
}

async fn query(addr: SocketAddr, service_type: &str) -> Answer {
    call(
        addr,
        &format!(r#"{{"action": "query", "type": "{service_type}"}}"#),
    )
    .await
}

/// The (ip, port) pairs of a query answer, sorted: the content is a JSON string holding a
/// JSON list.
async fn listed(addr: SocketAddr, service_type: &str) -> Vec<(String, u16)> {
    let answer = query(addr, service_type).await;
    assert_eq!(answer.content_type, "text/json");
    let inner: String = serde_json::from_str(&answer.content).expect("a JSON string");
    let list: Vec<serde_json::Value> = serde_json::from_str(&inner).expect("a JSON list");
    let mut pairs: Vec<(String, u16)> = list
        .iter()
        .map(|item| {
            let object = item.as_object().expect("an object");
            assert_eq!(object.len(), 2, "only ip and port: {item}");
            let ip = object["ip"].as_str().expect("ip text").to_owned();
            let port = object["port"].as_u64().expect("a port number");
            (ip, u16::try_from(port).expect("a port"))
        })
        .collect();
    pairs.sort();
    pairs
}

/// Asserts that the server closes the connection without sending a byte.
async fn closed_without_answer(stream: &mut TcpStream) {
    let mut bytes = Vec::new();
    let read = timeout(PATIENCE, stream.read_to_end(&mut bytes))
        .await
        .expect("closed within the deadline");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(bytes.is_empty(), "no answer, got {bytes:?}");
}

fn short_config() -> ServerConfig {
    ServerConfig {
        idle_timeout: Duration::from_millis(300),
        frame_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn each_action_is_answered_exactly() {
    let server = compat_server(ServerConfig::default()).await;
    let addr = server.compat_addr();
    assert_eq!(query(addr, "hive").await, json(r#""[]""#));

    let id = register(addr, "hive", 65433).await;
    assert_eq!(id.hyphenated().to_string(), id.to_string());
    assert_eq!(heartbeat(addr, &id.to_string()).await, plain("OK"));
    assert_eq!(
        heartbeat(addr, &Uuid::new_v4().to_string()).await,
        plain("NOT FOUND")
    );

    // The whole query answer, byte for byte.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&request(r#"{"action": "query", "type": "hive"}"#))
        .await
        .unwrap();
    let mut bytes = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    let content = r#""[{\"ip\": \"127.0.0.1\", \"port\": 65433}]""#;
    let header = format!(
        r#"{{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": {}}}"#,
        content.len()
    );
    assert_eq!(bytes, message(&header, content.as_bytes()));

    let other = register(addr, "hive", 65434).await;
    assert_ne!(other, id);
    assert_eq!(
        listed(addr, "hive").await,
        [("127.0.0.1".into(), 65433), ("127.0.0.1".into(), 65434)]
    );

    // Registering the same endpoint again replaces the older entry.
    let again = register(addr, "hive", 65433).await;
    assert_eq!(heartbeat(addr, &id.to_string()).await, plain("NOT FOUND"));
    assert_eq!(heartbeat(addr, &again.to_string()).await, plain("OK"));
    assert_eq!(listed(addr, "hive").await.len(), 2);

    // IPv6 is listed as Rust writes it.
    let six = r#"{"action": "register", "ip": "0:0:0:0:0:0:0:1", "port": 80, "type": "six"}"#;
    assert_eq!(call(addr, six).await.content.len(), 36);
    assert_eq!(listed(addr, "six").await, [("::1".into(), 80)]);
    server.stop().await;
}

#[tokio::test]
async fn a_message_in_pieces_is_served() {
    let server = compat_server(ServerConfig::default()).await;
    let content = r#"{"action": "register", "ip": "127.0.0.1", "port": 65433, "type": "hive"}"#;
    let bytes = request(content);
    let header_end = 2 + request_header(content.len()).len();
    let mut stream = TcpStream::connect(server.compat_addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    // The header length split in two, the header in 7-byte pieces, the body in 5-byte ones.
    let mut pieces: Vec<&[u8]> = vec![&bytes[..1], &bytes[1..2]];
    pieces.extend(bytes[2..header_end].chunks(7));
    pieces.extend(bytes[header_end..].chunks(5));
    for piece in pieces {
        stream.write_all(piece).await.unwrap();
        // Not a synchronisation: it makes each piece a read of its own.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let answer = read_answer(&mut stream).await;
    let id: Uuid = answer.content.parse().expect("a UUID");
    assert_eq!(server.registry.query("hive")[0].id, id);
    server.stop().await;
}

#[tokio::test]
async fn bytes_after_the_message_are_ignored() {
    let server = compat_server(ServerConfig::default()).await;
    let mut bytes = request(r#"{"action": "query", "type": "hive"}"#);
    bytes.extend_from_slice(b"\x00\x05trailing garbage");
    assert_eq!(
        exchange(server.compat_addr(), &bytes).await,
        json(r#""[]""#)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_header_without_one_of_its_keys_is_answered_error() {
    let server = compat_server(ServerConfig::default()).await;
    let content = r#"{"action": "query", "type": "hive"}"#;
    let pairs = [
        r#""byteorder": "little""#.to_owned(),
        r#""content-type": "text/json""#.to_owned(),
        r#""content-encoding": "utf-8""#.to_owned(),
        format!(r#""content-length": {}"#, content.len()),
    ];
    for missing in 0..pairs.len() {
        let kept: Vec<&str> = pairs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != missing)
            .map(|(_, pair)| pair.as_str())
            .collect();
        let header = format!("{{{}}}", kept.join(", "));
        let answer = exchange(server.compat_addr(), &message(&header, content.as_bytes())).await;
        assert_eq!(answer, plain("ERROR"), "without {}", pairs[missing]);
    }
    // Any order and spacing is accepted.
    let header = format!(
        r#"{{"content-length":{},"content-encoding":"utf-8","byteorder":"big","content-type":"text/json"}}"#,
        content.len()
    );
    let answer = exchange(server.compat_addr(), &message(&header, content.as_bytes())).await;
    assert_eq!(answer, json(r#""[]""#));
    server.stop().await;
}

#[tokio::test]
async fn a_header_or_content_that_is_not_json_is_answered_error() {
    let server = compat_server(ServerConfig::default()).await;
    let addr = server.compat_addr();
    for header in ["", "not json", "[]", r#"{"content-length": 2"#] {
        let answer = exchange(addr, &message(header, b"{}")).await;
        assert_eq!(answer, plain("ERROR"), "header {header:?}");
    }
    for content in [
        &b"not json"[..],
        b"[1, 2]",
        b"\"query\"",
        b"",
        b"\xff\xfe{}",
    ] {
        let answer = exchange(addr, &message(&request_header(content.len()), content)).await;
        assert_eq!(answer, plain("ERROR"), "content {content:?}");
    }
    let header = request_header(2).replace("text/json", "text/plain");
    assert_eq!(
        exchange(addr, &message(&header, b"{}")).await,
        plain("ERROR")
    );
    server.stop().await;
}

#[tokio::test]
async fn requests_that_cannot_be_served_are_answered_error() {
    let server = compat_server(ServerConfig::default()).await;
    let addr = server.compat_addr();
    let register = |ip: &str, port: &str| {
        format!(r#"{{"action": "register", "ip": {ip}, "port": {port}, "type": "hive"}}"#)
    };
    let refused = [
        register(r#""not-an-ip""#, "80"),
        register(r#""256.0.0.1""#, "80"),
        register(r#""0.0.0.0""#, "80"),
        register(r#""127.0.0.1 ""#, "80"),
        register("2130706433", "80"),
        register(r#""127.0.0.1""#, "0"),
        register(r#""127.0.0.1""#, "66554"),
        register(r#""127.0.0.1""#, r#""80""#),
        register(r#""127.0.0.1""#, "-1"),
        register(r#""127.0.0.1""#, "80.5"),
        register(r#""127.0.0.1""#, "null"),
        r#"{"action": "register", "ip": "127.0.0.1", "port": 80}"#.into(),
        r#"{"action": "register", "ip": "127.0.0.1", "port": 80, "type": ""}"#.into(),
        r#"{"action": "dance", "type": "hive"}"#.into(),
        r#"{"type": "hive"}"#.into(),
        r#"{"action": ["query"], "type": "hive"}"#.into(),
        r#"{"action": "query"}"#.into(),
        r#"{"action": "query", "type": 7}"#.into(),
        r#"{"action": "heartbeat"}"#.into(),
        r#"{"action": "heartbeat", "uuid": "c1a6cd0f"}"#.into(),
        r#"{"action": "heartbeat", "id": "c1a6cd0f-2a4b-4c1e-9d7e-1f2a3b4c5d6e"}"#.into(),
        r#"{"action": "deregister", "uuid": "c1a6cd0f-2a4b-4c1e-9d7e-1f2a3b4c5d6e"}"#.into(),
    ];
    for content in &refused {
        assert_eq!(call(addr, content).await, plain("ERROR"), "{content}");
    }
    assert!(server.registry.is_empty(), "nothing was registered");
    // A well-formed UUID that is not registered is not an error.
    let unknown = r#"{"action": "heartbeat", "uuid": "c1a6cd0f-2a4b-4c1e-9d7e-1f2a3b4c5d6e"}"#;
    assert_eq!(call(addr, unknown).await, plain("NOT FOUND"));
    server.stop().await;
}

#[tokio::test]
async fn a_registry_limit_is_answered_error() {
    let mut config = ServerConfig::default();
    config.registry.max_instances_per_type = 1;
    let server = compat_server(config).await;
    register(server.compat_addr(), "hive", 1).await;
    let content = r#"{"action": "register", "ip": "127.0.0.1", "port": 2, "type": "hive"}"#;
    assert_eq!(call(server.compat_addr(), content).await, plain("ERROR"));
    server.stop().await;
}

#[tokio::test]
async fn what_cannot_be_framed_is_closed_without_answer() {
    let mut config = ServerConfig::default();
    config.registry.max_frame_bytes = 1024;
    let server = compat_server(config).await;
    // A content-length over the cap, however the rest of the header looks.
    for header in [
        request_header(1025),
        request_header(usize::MAX),
        r#"{"content-length": 1000000}"#.to_owned(),
    ] {
        let mut stream = TcpStream::connect(server.compat_addr()).await.unwrap();
        stream.write_all(&message(&header, b"")).await.unwrap();
        closed_without_answer(&mut stream).await;
    }
    // A header length over the cap.
    let mut stream = TcpStream::connect(server.compat_addr()).await.unwrap();
    stream.write_all(&2000u16.to_be_bytes()).await.unwrap();
    closed_without_answer(&mut stream).await;
    // A stream that ends mid-message.
    let mut stream = TcpStream::connect(server.compat_addr()).await.unwrap();
    let bytes = request(r#"{"action": "query", "type": "hive"}"#);
    stream.write_all(&bytes[..bytes.len() - 3]).await.unwrap();
    stream.shutdown().await.unwrap();
    closed_without_answer(&mut stream).await;

    // Exactly the cap is served.
    let content = format!("{:<1024}", r#"{"action": "query", "type": "hive"}"#);
    assert_eq!(call(server.compat_addr(), &content).await, json(r#""[]""#));
    server.stop().await;
}

/// Finding 10 of issue 15: a `content-length` past u64 (2^64, which JSON parsers read as a
/// float) or past even a float's range was answered `ERROR`; like every over-cap length it
/// closes without an answer, and the server, its other connections (one of each protocol,
/// one of them mid-message) and its instances go on as before.
#[tokio::test]
async fn an_over_cap_length_past_any_integer_closes_and_touches_nothing_else() {
    let server = compat_server(ServerConfig::default()).await;
    let addr = server.compat_addr();
    let from_compat = register(addr, "hive", 65433).await;
    let mut wire = Wire::hello(server.addr).await;
    let from_typed = wire.register("hive", 65434).await;
    // A compat client whose request is half sent while the others are turned away.
    let query = request(r#"{"action": "query", "type": "hive"}"#);
    let mut pending = TcpStream::connect(addr).await.unwrap();
    pending.write_all(&query[..10]).await.unwrap();

    let huge = format!("1{}", "0".repeat(400));
    for length in [
        "18446744073709551616",
        "18446744073709551617",
        "340282366920938463463374607431768211456",
        "1e20",
        &huge,
        "1e400",
    ] {
        let header = format!(
            r#"{{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": {length}}}"#
        );
        for content in [&b""[..], br#"{"action": "query", "type": "hive"}"#] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&message(&header, content)).await.unwrap();
            closed_without_answer(&mut stream).await;
        }
    }

    pending.write_all(&query[10..]).await.unwrap();
    let answer = read_answer(&mut pending).await;
    let inner: String = serde_json::from_str(&answer.content).expect("a JSON string");
    let list: Vec<serde_json::Value> = serde_json::from_str(&inner).expect("a JSON list");
    assert_eq!(list.len(), 2, "{inner}");
    assert_eq!(wire.call(Request::Ping).await, Response::Pong);
    let mut ids: Vec<Uuid> = wire.query("hive").await.iter().map(|i| i.id).collect();
    ids.sort();
    let mut expected = vec![from_compat, from_typed];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(heartbeat(addr, &from_compat.to_string()).await, plain("OK"));
    assert_eq!(
        listed(addr, "hive").await,
        [("127.0.0.1".into(), 65433), ("127.0.0.1".into(), 65434)]
    );
    // Closed on this side too, so that the server's linger does not wait for them.
    drop(pending);
    drop(wire);
    server.stop().await;
}

#[tokio::test]
async fn a_sender_stalled_mid_message_is_cut_off() {
    let server = compat_server(short_config()).await;
    let bytes = request(r#"{"action": "query", "type": "hive"}"#);
    for cut in [1, 2, 20, bytes.len() - 1] {
        let mut stream = TcpStream::connect(server.compat_addr()).await.unwrap();
        let started = Instant::now();
        stream.write_all(&bytes[..cut]).await.unwrap();
        closed_without_answer(&mut stream).await;
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "cut off by the frame timeout, not before"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let server = compat_server(short_config()).await;
    let mut stream = TcpStream::connect(server.compat_addr()).await.unwrap();
    let started = Instant::now();
    closed_without_answer(&mut stream).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    server.stop().await;
}

#[tokio::test]
async fn one_registry_through_both_protocols() {
    let server = compat_server(ServerConfig::default()).await;
    let mut wire = Wire::hello(server.addr).await;

    // Registered through compat, found and kept alive through the typed protocol.
    let from_compat = register(server.compat_addr(), "hive", 65433).await;
    let found = wire.query("hive").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, from_compat);
    assert_eq!(
        found[0].ip,
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(found[0].port, 65433);
    assert!(found[0].metadata.is_empty());
    assert_eq!(
        wire.call(Request::Heartbeat {
            id: from_compat,
            min_revision: None
        })
        .await,
        Response::Ok
    );

    // Registered through the typed protocol, found and kept alive through compat.
    let from_typed = wire.register("hive", 65434).await;
    assert_eq!(
        listed(server.compat_addr(), "hive").await,
        [("127.0.0.1".into(), 65433), ("127.0.0.1".into(), 65434)]
    );
    assert_eq!(
        heartbeat(server.compat_addr(), &from_typed.to_string()).await,
        plain("OK")
    );

    // Deregistered through the typed protocol, gone for compat.
    assert!(matches!(
        wire.call(Request::Deregister {
            id: from_compat,
            min_revision: None
        })
        .await,
        Response::Done { .. }
    ));
    assert_eq!(
        heartbeat(server.compat_addr(), &from_compat.to_string()).await,
        plain("NOT FOUND")
    );
    assert_eq!(
        listed(server.compat_addr(), "hive").await,
        [("127.0.0.1".into(), 65434)]
    );
    server.stop().await;
}

#[tokio::test]
async fn kept_alive_and_expired_the_same_way_through_both() {
    let ttl = Duration::from_millis(800);
    let server = compat_server(config_with_ttl(ttl)).await;
    let mut wire = Wire::hello(server.addr).await;
    let typed = wire.register("hive", 1).await;
    let compat = register(server.compat_addr(), "hive", 2).await;

    // Each kept alive only through the other protocol, for twice the TTL.
    let until = Instant::now() + 2 * ttl;
    while Instant::now() < until {
        assert_eq!(
            heartbeat(server.compat_addr(), &typed.to_string()).await,
            plain("OK")
        );
        assert_eq!(
            wire.call(Request::Heartbeat {
                id: compat,
                min_revision: None
            })
            .await,
            Response::Ok
        );
        tokio::time::sleep(ttl / 4).await;
    }
    assert_eq!(wire.query("hive").await.len(), 2);
    assert_eq!(listed(server.compat_addr(), "hive").await.len(), 2);

    // Then both expire, for both protocols.
    let addr = server.compat_addr();
    eventually("both expired for compat", || async {
        query(addr, "hive").await == json(r#""[]""#)
    })
    .await;
    assert!(wire.query("hive").await.is_empty());
    assert_eq!(
        heartbeat(server.compat_addr(), &compat.to_string()).await,
        plain("NOT FOUND")
    );
    assert_eq!(
        wire.call(Request::Heartbeat {
            id: typed,
            min_revision: None
        })
        .await,
        Response::NotFound {
            reason: Some(discovery_proto::RemoveReason::Expired)
        }
    );
    server.stop().await;
}

/// A typed connection that said Hello, or None when it was refused over the connection cap.
async fn typed_connection(addr: SocketAddr) -> Option<Wire> {
    let mut wire = Wire::connect(addr).await;
    let hello = Request::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "cap".into(),
    };
    wire.send(hello).await;
    match wire.recv().await.map(|frame| frame.response) {
        Some(Response::Welcome { .. }) => Some(wire),
        Some(Response::Error {
            kind: ErrorKind::TooManyConnections,
            ..
        }) => None,
        other => panic!("expected Welcome or a refusal, got {other:?}"),
    }
}

/// A compat connection that holds the only permit of a server whose cap is 1, shown by a
/// typed connection being refused while it is open. A typed probe that is welcomed took
/// the permit first; then the attempt is made again.
async fn compat_holding_the_permit(server: &TestServer) -> TcpStream {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(
            Instant::now() < deadline,
            "no compat connection got the permit"
        );
        let stream = TcpStream::connect(server.compat_addr()).await.unwrap();
        if typed_connection(server.addr).await.is_none() {
            return stream;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_connection_cap_is_shared_by_both_listeners() {
    let server = compat_server(ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    })
    .await;
    // A compat connection holds the one permit: the typed protocol is refused. Being
    // served afterwards shows that it held the permit.
    let mut holder = compat_holding_the_permit(&server).await;
    holder
        .write_all(&request(r#"{"action": "query", "type": "hive"}"#))
        .await
        .unwrap();
    assert_eq!(read_answer(&mut holder).await, json(r#""[]""#));
    drop(holder);

    // A typed connection holds it: compat is refused with ERROR.
    let deadline = Instant::now() + PATIENCE;
    let holder = loop {
        if let Some(wire) = typed_connection(server.addr).await {
            break wire;
        }
        assert!(Instant::now() < deadline, "the permit came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let answer = call(
        server.compat_addr(),
        r#"{"action": "query", "type": "hive"}"#,
    )
    .await;
    assert_eq!(answer, plain("ERROR"));
    drop(holder);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_answers_an_unfinished_message_with_error() {
    let server = compat_server(ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    })
    .await;
    let mut stream = compat_holding_the_permit(&server).await;
    let bytes = request(r#"{"action": "query", "type": "hive"}"#);
    stream.write_all(&bytes[..10]).await.unwrap();

    server.begin_shutdown();
    assert_eq!(read_answer(&mut stream).await, plain("ERROR"));
    let addr = server.addr;
    server.stopped().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listeners are closed"
    );
}

/// Starts the binary; its `compat listening on` line must come before `listening on`.
async fn start_binary(args: &[&str], envs: &[(&str, &str)]) -> (Process, SocketAddr) {
    let process = Process::start(BIN, args, envs).await;
    let compat = process
        .announced("compat")
        .expect("a `compat listening on` line before `listening on`");
    (process, compat)
}

#[tokio::test]
async fn the_binary_prints_the_compat_line_first_and_serves_one_registry() {
    let (process, compat) = start_binary(
        &["--listen", "127.0.0.1:0"],
        &[("DISCOVERY_COMPAT_LISTEN", "127.0.0.1:0")],
    )
    .await;
    let addr = process.addr;
    assert_ne!(compat, addr);
    let id = register(compat, "hive", 65433).await;
    let mut wire = Wire::hello(addr).await;
    assert_eq!(wire.query("hive").await[0].id, id);
    drop(wire);

    process.signal("TERM");
    assert_eq!(process.wait().await.code(), Some(0));
}

#[test]
fn the_same_address_for_both_listeners_is_a_configuration_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    drop(taken);
    let output = Command::new(BIN)
        .args(["--listen", &addr, "--compat-listen", &addr])
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("compat-listen"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// The course-style Python client against the binary: register, heartbeat, query, a few
/// refusals, then the expiry after the 1 s TTL. python3 is on every machine here, so a
/// missing one fails the test.
#[tokio::test]
async fn the_python_client_of_the_course_works_unchanged() {
    let (server, compat) = start_binary(
        &[
            "--listen",
            "127.0.0.1:0",
            "--compat-listen",
            "127.0.0.1:0",
            "--ttl",
            "1s",
        ],
        &[],
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat_client.py");
    let client = tokio::process::Command::new("python3")
        .args([
            script,
            &compat.ip().to_string(),
            &compat.port().to_string(),
            "1",
        ])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let client = match client {
        Ok(client) => client,
        // Dropping the server kills it.
        Err(e) => panic!("python3 is required for this test and did not start: {e}"),
    };
    let output = client.wait_with_output().await.expect("the client runs");
    server.signal("TERM");
    let status = server.wait().await;
    assert!(
        output.status.success(),
        "the Python client failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_query_answer_longer_than_the_answer_buffer_is_refused_and_harms_no_one() {
    let bound = discovery_server::config::MIN_ANSWER_BUFFER_BYTES;
    let server = compat_server(ServerConfig {
        max_answer_buffer_bytes: bound,
        ..ServerConfig::default()
    })
    .await;
    let addr = server.compat_addr();
    // About 40 bytes an instance in the answer: 20,000 take it past the 512 KiB bound.
    let live = register(addr, "small", 9000).await;
    for n in 0..20_000u32 {
        let ip = std::net::IpAddr::from((0x0a00_0000 + n).to_be_bytes());
        server
            .registry
            .register_with_ttl(
                "huge",
                ip,
                8080,
                Default::default(),
                Some(Duration::from_secs(3600)),
            )
            .expect("under the caps");
    }
    let answer = query(addr, "huge").await;
    assert_eq!(answer.content_type, "text/plain");
    assert_eq!(answer.content, discovery_server::compat::ERROR);
    // Just under the bound, an answer is whole.
    let fits = (bound - 8) / 40;
    for n in 0..fits as u32 {
        let ip = std::net::IpAddr::from((0x0b00_0000 + n).to_be_bytes());
        server
            .registry
            .register_with_ttl(
                "fits",
                ip,
                1,
                Default::default(),
                Some(Duration::from_secs(3600)),
            )
            .expect("under the caps");
    }
    assert_eq!(listed(addr, "fits").await.len(), fits);
    // The server, its other listener and the instances are untouched.
    assert_eq!(
        listed(addr, "small").await,
        [("127.0.0.1".to_string(), 9000)]
    );
    assert_eq!(heartbeat(addr, &live.to_string()).await.content, "OK");
    assert_eq!(server.registry.query("huge").len(), 20_000);
    server.stop().await;
}
