//! The server over real TCP on port 0, in real time: every request, pipelining, each kind of
//! bad frame, the limits, and graceful shutdown.

use std::time::Duration;

use discovery_proto::{
    ClientFrame, ErrorKind, MAX_FRAME_BYTES, PROTOCOL_VERSION, RemoveReason, Request, Response,
    encoding,
};
use discovery_server::ServerConfig;
use discovery_test_support::server::config_with_ttl as short_ttl;
use discovery_test_support::wire::register;
use discovery_test_support::{PATIENCE, TestServer, Wire, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw frame: the length prefix, then `payload`.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn error_kind(response: &Response) -> ErrorKind {
    match response {
        Response::Error { kind, .. } => *kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Asserts that an instance registered before some abuse is still served afterwards.
async fn still_registered(server: &TestServer, service_type: &str, id: uuid::Uuid) {
    let mut wire = Wire::hello(server.addr).await;
    let listed = wire.query(service_type).await;
    assert_eq!(listed.len(), 1, "the instance survived");
    assert_eq!(listed[0].id, id);
}

#[tokio::test]
async fn welcome_announces_version_ttl_and_limits() {
    let mut config = short_ttl(Duration::from_millis(1500));
    config.registry.max_frame_bytes = 4096;
    let server = TestServer::with_config(config).await;
    let mut wire = Wire::connect(server.addr).await;
    let welcome = wire
        .call(Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "test".into(),
        })
        .await;
    let Response::Welcome {
        protocol_version,
        ttl,
        limits,
        ..
    } = welcome
    else {
        panic!("expected Welcome, got {welcome:?}");
    };
    assert_eq!(protocol_version, PROTOCOL_VERSION);
    assert_eq!(ttl, Duration::from_millis(1500));
    assert_eq!(limits.max_frame_bytes, 4096);
    assert_eq!(limits.max_instances, 1_000_000);
    assert_eq!(limits.max_instances_per_type, 100_000);
    server.stop().await;
}

#[tokio::test]
async fn every_request_is_answered() {
    let server = TestServer::start().await;
    let mut wire = Wire::hello(server.addr).await;

    assert_eq!(wire.call(Request::Ping).await, Response::Pong);
    let mut metadata = discovery_proto::Metadata::new();
    metadata.insert("zone".into(), "a".into());
    let registered = wire
        .call(Request::Register {
            service_type: "billing".into(),
            ip: "::1".parse().unwrap(),
            port: 8080,
            metadata: metadata.clone(),
            ttl: None,
        })
        .await;
    let Response::Registered { id, .. } = registered else {
        panic!("expected Registered, got {registered:?}");
    };
    assert_eq!(
        wire.call(Request::Heartbeat {
            id,
            min_revision: None
        })
        .await,
        Response::Ok
    );

    let listed = wire.query("billing").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].service_type, "billing");
    assert_eq!(listed[0].ip, "::1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(listed[0].port, 8080);
    assert_eq!(listed[0].metadata, metadata);
    let age = chrono::Utc::now() - listed[0].last_heartbeat;
    assert!(
        age.num_seconds().abs() < 5,
        "last heartbeat is recent: {age}"
    );
    assert!(wire.query("other").await.is_empty());

    assert!(matches!(
        wire.call(Request::Deregister {
            id,
            min_revision: None
        })
        .await,
        Response::Done { .. }
    ));
    assert_eq!(
        wire.call(Request::Deregister {
            id,
            min_revision: None
        })
        .await,
        Response::NotFound {
            reason: Some(RemoveReason::Deregistered)
        }
    );
    assert_eq!(
        wire.call(Request::Heartbeat {
            id,
            min_revision: None
        })
        .await,
        Response::NotFound {
            reason: Some(RemoveReason::Deregistered)
        }
    );
    assert!(wire.query("billing").await.is_empty());

    let refused = wire.call(register("", 80)).await;
    assert_eq!(error_kind(&refused), ErrorKind::InvalidServiceType);
    let refused = wire.call(register("billing", 0)).await;
    assert_eq!(error_kind(&refused), ErrorKind::InvalidPort);
    let again = wire
        .call(Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: String::new(),
        })
        .await;
    assert_eq!(error_kind(&again), ErrorKind::UnexpectedHello);
    // Errors are answers: the connection goes on.
    assert_eq!(wire.call(Request::Ping).await, Response::Pong);
    server.stop().await;
}

#[tokio::test]
async fn instances_expire_over_the_wire() {
    let server = TestServer::with_config(short_ttl(Duration::from_secs(1))).await;
    let mut wire = Wire::hello(server.addr).await;
    let id = wire.register("cache", 6379).await;
    assert_eq!(wire.query("cache").await.len(), 1);
    eventually("the instance expires", || {
        let registry = server.registry.clone();
        async move { registry.is_empty() }
    })
    .await;
    assert!(wire.query("cache").await.is_empty());
    assert_eq!(
        wire.call(Request::Heartbeat {
            id,
            min_revision: None
        })
        .await,
        Response::NotFound {
            reason: Some(RemoveReason::Expired)
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start().await;
    let mut wire = Wire::hello(server.addr).await;
    // Write every request in one go, before reading any answer.
    let mut bytes = Vec::new();
    let count = 500u64;
    for i in 0..count {
        let request = if i % 2 == 0 {
            register("pipelined", 1 + i as u16)
        } else {
            Request::Ping
        };
        let payload = encoding::encode(&ClientFrame::new(100 + i, request)).unwrap();
        bytes.extend(raw_frame(&payload));
    }
    wire.stream().write_all(&bytes).await.unwrap();
    for i in 0..count {
        let frame = wire.recv().await.expect("an answer");
        assert_eq!(frame.request_id, 100 + i, "answers come in request order");
        if i % 2 == 0 {
            assert!(matches!(frame.response, Response::Registered { .. }));
        } else {
            assert_eq!(frame.response, Response::Pong);
        }
    }
    assert_eq!(wire.query("pipelined").await.len(), count as usize / 2);
    server.stop().await;
}

#[tokio::test]
async fn a_query_of_100_000_instances_spans_frames() {
    // A TTL no slow machine can outrun while it registers them all.
    let server = TestServer::with_config(short_ttl(Duration::from_secs(3600))).await;
    let mut wire = Wire::hello(server.addr).await;
    let total = 100_000u32;
    // Register in pipelined batches: 2,000 ports on each of 50 addresses.
    for batch in 0..50u32 {
        let mut bytes = Vec::new();
        for n in 0..2_000u32 {
            let request = Request::Register {
                service_type: "big".into(),
                ip: std::net::IpAddr::from([10, 0, (batch / 256) as u8, (batch % 256) as u8]),
                port: 1 + n as u16,
                metadata: Default::default(),
                ttl: None,
            };
            let id = u64::from(batch * 2_000 + n + 1_000);
            bytes.extend(raw_frame(
                &encoding::encode(&ClientFrame::new(id, request)).unwrap(),
            ));
        }
        wire.stream().write_all(&bytes).await.unwrap();
        for _ in 0..2_000 {
            let frame = wire.recv().await.expect("an answer");
            assert!(
                matches!(frame.response, Response::Registered { .. }),
                "{frame:?}"
            );
        }
    }
    let id = wire
        .send(Request::Query {
            service_type: "big".into(),
            min_revision: None,
        })
        .await;
    let mut frames = 0;
    let mut listed = 0;
    loop {
        let frame = wire.recv().await.expect("an answer");
        assert_eq!(frame.request_id, id);
        let Response::Instances {
            instances, more, ..
        } = frame.response
        else {
            panic!("expected Instances");
        };
        frames += 1;
        listed += instances.len();
        if !more {
            break;
        }
    }
    assert_eq!(listed, total as usize);
    assert!(frames > 1, "the answer took several frames ({frames})");
    server.stop().await;
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let server = TestServer::start().await;
    let mut wire = Wire::connect(server.addr).await;
    let id = wire.send(Request::Ping).await;
    let frame = wire.recv().await.expect("a refusal");
    assert_eq!(frame.request_id, id);
    assert_eq!(error_kind(&frame.response), ErrorKind::HelloRequired);
    assert!(wire.recv().await.is_none(), "the connection is closed");

    let mut wire = Wire::connect(server.addr).await;
    let refused = wire
        .call(Request::Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            client_name: "future".into(),
        })
        .await;
    assert_eq!(error_kind(&refused), ErrorKind::UnsupportedVersion);
    assert!(wire.recv().await.is_none(), "the connection is closed");

    // A first frame that does not even decode is refused the same way.
    let mut wire = Wire::connect(server.addr).await;
    wire.stream()
        .write_all(&raw_frame(&[0xff; 3]))
        .await
        .unwrap();
    let frame = wire.recv().await.expect("a refusal");
    assert_eq!(error_kind(&frame.response), ErrorKind::HelloRequired);
    assert!(wire.recv().await.is_none(), "the connection is closed");
    server.stop().await;
}

#[tokio::test]
async fn undecodable_frames_get_an_error_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let mut setup = Wire::hello(server.addr).await;
    let kept = setup.register("kept", 9000).await;
    let mut wire = Wire::hello(server.addr).await;

    // Garbage: not even a request id.
    wire.stream()
        .write_all(&raw_frame(&[0xff; 7]))
        .await
        .unwrap();
    let frame = wire.recv().await.expect("an error answer");
    assert_eq!(frame.request_id, 0, "no readable request id");
    assert_eq!(error_kind(&frame.response), ErrorKind::MalformedFrame);

    // An unknown variant: request id 42, variant index 200.
    wire.stream()
        .write_all(&raw_frame(&[42, 200]))
        .await
        .unwrap();
    let frame = wire.recv().await.expect("an error answer");
    assert_eq!(frame.request_id, 42, "the request id is kept");
    assert_eq!(error_kind(&frame.response), ErrorKind::MalformedFrame);

    // Trailing bytes after a valid Ping.
    let mut payload = encoding::encode(&ClientFrame::new(43, Request::Ping)).unwrap();
    payload.extend_from_slice(&[1, 2, 3]);
    wire.stream().write_all(&raw_frame(&payload)).await.unwrap();
    let frame = wire.recv().await.expect("an error answer");
    assert_eq!(frame.request_id, 43);
    assert_eq!(error_kind(&frame.response), ErrorKind::MalformedFrame);

    // An empty frame.
    wire.stream().write_all(&raw_frame(&[])).await.unwrap();
    let frame = wire.recv().await.expect("an error answer");
    assert_eq!(error_kind(&frame.response), ErrorKind::MalformedFrame);

    assert_eq!(wire.call(Request::Ping).await, Response::Pong);
    still_registered(&server, "kept", kept).await;
    server.stop().await;
}

#[tokio::test]
async fn an_oversize_frame_ends_only_its_connection() {
    let mut config = ServerConfig::default();
    config.registry.max_frame_bytes = 2048;
    let server = TestServer::with_config(config).await;
    let mut setup = Wire::hello(server.addr).await;
    let kept = setup.register("kept", 9000).await;

    for length in [2049u32, MAX_FRAME_BYTES as u32 + 1, u32::MAX] {
        let mut wire = Wire::hello(server.addr).await;
        wire.stream()
            .write_all(&length.to_be_bytes())
            .await
            .unwrap();
        assert!(
            wire.recv().await.is_none(),
            "a {length}-byte frame closes the connection"
        );
    }
    // A register whose instance could not fit in a query answer is refused at the door.
    let mut wire = Wire::hello(server.addr).await;
    let mut metadata = discovery_proto::Metadata::new();
    for key in 0..4 {
        metadata.insert(format!("key{key}"), "v".repeat(500));
    }
    let refused = wire
        .call(Request::Register {
            service_type: "fat".into(),
            ip: "127.0.0.1".parse().unwrap(),
            port: 1,
            metadata,
            ttl: None,
        })
        .await;
    assert_eq!(error_kind(&refused), ErrorKind::InvalidMetadata);

    assert_eq!(
        setup.call(Request::Ping).await,
        Response::Pong,
        "others go on"
    );
    still_registered(&server, "kept", kept).await;
    server.stop().await;
}

#[tokio::test]
async fn a_stream_cut_mid_frame_ends_only_its_connection() {
    let server = TestServer::start().await;
    let mut setup = Wire::hello(server.addr).await;
    let kept = setup.register("kept", 9000).await;

    let mut wire = Wire::hello(server.addr).await;
    let payload = encoding::encode(&ClientFrame::new(2, register("kept", 9001))).unwrap();
    let frame = raw_frame(&payload);
    wire.stream()
        .write_all(&frame[..frame.len() - 3])
        .await
        .unwrap();
    wire.stream().shutdown().await.unwrap();
    assert!(wire.recv().await.is_none(), "the connection ends");

    assert_eq!(setup.call(Request::Ping).await, Response::Pong);
    still_registered(&server, "kept", kept).await;
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_half_frame_is_cut_off() {
    let server = TestServer::with_config(ServerConfig {
        frame_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let mut wire = Wire::hello(server.addr).await;
    // Half a length prefix, then nothing.
    wire.stream().write_all(&[0, 0]).await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(wire.recv().await.is_none(), "the stalled sender is cut off");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A frame sent a byte at a time within the limit is served.
    let mut wire = Wire::hello(server.addr).await;
    let payload = encoding::encode(&ClientFrame::new(7, Request::Ping)).unwrap();
    for byte in raw_frame(&payload) {
        wire.stream().write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let frame = wire.recv().await.expect("an answer");
    assert_eq!((frame.request_id, frame.response), (7, Response::Pong));
    server.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let server = TestServer::with_config(ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let mut wire = Wire::hello(server.addr).await;
    // Activity keeps it open past the idle timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(wire.call(Request::Ping).await, Response::Pong);
    }
    // ...and silence closes it.
    let started = tokio::time::Instant::now();
    assert!(wire.recv().await.is_none(), "the idle connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(250));
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused() {
    let server = TestServer::with_config(ServerConfig {
        max_connections: 3,
        ..ServerConfig::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Wire::hello(server.addr).await);
    }
    let mut extra = Wire::connect(server.addr).await;
    let frame = extra.recv().await.expect("a refusal");
    assert_eq!(frame.request_id, 0, "sent outside any request");
    assert_eq!(error_kind(&frame.response), ErrorKind::TooManyConnections);
    assert!(extra.recv().await.is_none(), "then closed");

    for wire in &mut open {
        assert_eq!(wire.call(Request::Ping).await, Response::Pong);
    }
    // A slot freed is a slot taken again.
    drop(open.pop());
    // The server notices the close a moment later: retry until it has.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let _slot = loop {
        let mut wire = Wire::connect(server.addr).await;
        let hello = Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "late".into(),
        };
        let id = wire.send(hello).await;
        match wire.recv().await {
            Some(frame) if frame.request_id == id => break wire,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "a freed slot is taken again"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.stop().await;
}

#[tokio::test]
async fn shutdown_answers_what_was_read_and_closes_connections() {
    let server = TestServer::start().await;
    let mut wire = Wire::hello(server.addr).await;
    let id = wire.register("billing", 8080).await;
    assert_eq!(
        wire.call(Request::Heartbeat {
            id,
            min_revision: None
        })
        .await,
        Response::Ok
    );

    let mut idle = Wire::hello(server.addr).await;
    let addr = server.addr;
    tokio::time::timeout(PATIENCE, server.stop())
        .await
        .expect("shutdown finishes in time");
    let frame = idle.recv().await.expect("a goodbye");
    assert_eq!(frame.request_id, 0);
    assert_eq!(error_kind(&frame.response), ErrorKind::ShuttingDown);
    assert!(idle.recv().await.is_none(), "then closed");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_past_the_grace_for_a_client_that_never_reads() {
    let server = TestServer::with_config(ServerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let mut wire = Wire::hello(server.addr).await;
    let mut fat = discovery_proto::Metadata::new();
    fat.insert("blob".into(), "x".repeat(500));
    for port in 1..=200 {
        let request = Request::Register {
            service_type: "fat".into(),
            ip: "127.0.0.1".parse().unwrap(),
            port,
            metadata: fat.clone(),
            ttl: None,
        };
        assert!(matches!(
            wire.call(request).await,
            Response::Registered { .. }
        ));
    }
    // Ask for far more answer bytes than the socket buffers hold, and never read them.
    let query = encoding::encode(&ClientFrame::new(
        9_999,
        Request::Query {
            service_type: "fat".into(),
            min_revision: None,
        },
    ))
    .unwrap();
    let mut bytes = Vec::new();
    for _ in 0..200 {
        bytes.extend(raw_frame(&query));
    }
    wire.stream().write_all(&bytes).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("shutdown ends soon after its grace");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, wire.stream().read_to_end(&mut sink)).await;
}

#[tokio::test]
async fn timeouts_and_windows_at_their_bounds_serve_and_shut_down() {
    // The longest of each that a configuration accepts (longer ones are refused at start):
    // no deadline may overflow an `Instant`.
    let mut config = ServerConfig {
        idle_timeout: discovery_server::config::MAX_IDLE_TIMEOUT,
        frame_timeout: discovery_server::config::MAX_SHORT_TIMEOUT,
        write_timeout: discovery_server::config::MAX_SHORT_TIMEOUT,
        shutdown_grace: Duration::ZERO,
        ..ServerConfig::default()
    };
    // The longest TTL a configuration accepts is a century.
    config.registry.max_ttl = discovery_registry::config::MAX_TTL;
    config.registry.ttl = discovery_registry::config::MAX_TTL;
    config.registry.watch_window = discovery_registry::config::MAX_WATCH_WINDOW;
    assert!(config.validate().is_ok());
    let server = TestServer::with_config(config).await;
    let mut wire = Wire::hello(server.addr).await;
    let id = wire.register("forever", 9000).await;
    assert_eq!(wire.query("forever").await[0].id, id);
    assert!(matches!(
        wire.call(Request::Heartbeat {
            id,
            min_revision: None
        })
        .await,
        Response::Ok
    ));
    let watch = wire
        .send(Request::Watch {
            service_type: "forever".into(),
            since: None,
            min_revision: None,
        })
        .await;
    assert!(matches!(
        wire.recv().await.expect("a snapshot").response,
        Response::Snapshot { .. }
    ));
    assert!(matches!(
        wire.call(Request::Unwatch { watch }).await,
        Response::Ok
    ));
    assert!(matches!(wire.call(Request::Ping).await, Response::Pong));
    server.stop().await;
}
