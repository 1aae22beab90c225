//! The registry's byte bound over real TCP on port 0: one connection pipelining registers
//! at every metadata limit is answered `RegistryBytesLimit` for each register past the
//! bound, never closed, while the server, its other connections and its instances go on.

use std::net::IpAddr;
use std::time::Duration;

use discovery_proto::{ErrorKind, Metadata, PROTOCOL_VERSION, Request, Response};
use discovery_server::ServerConfig;
use discovery_test_support::{TestServer, Wire};
use uuid::Uuid;

/// The smallest byte bound a configuration takes: about 20 instances at every limit.
const MAX_BYTES: usize = 1 << 20;
/// More registers than fit under it.
const FLOOD: u32 = 60;

fn config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.registry.ttl = Duration::from_secs(30);
    config.registry.max_registry_bytes = MAX_BYTES;
    config
}

/// Metadata at every default limit: 64 pairs of 128-byte keys and 512-byte values.
fn fat(seed: u32) -> Metadata {
    (0..64)
        .map(|pair| {
            let head = format!("{seed:08}-{pair:03}-");
            (format!("{head:k<128}"), "v".repeat(512))
        })
        .collect()
}

fn fat_register(n: u32) -> Request {
    Request::Register {
        service_type: "fat".into(),
        ip: IpAddr::from((0x0a00_0000 + n).to_be_bytes()),
        port: 80,
        metadata: fat(n),
        ttl: None,
    }
}

#[tokio::test]
async fn registers_past_the_byte_bound_are_answered_and_nothing_else_is_disturbed() {
    let server = TestServer::with_config(config()).await;

    // The bound is announced.
    let mut other = Wire::connect(server.addr).await;
    let welcome = other
        .call(Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "other".into(),
        })
        .await;
    let Response::Welcome { limits, .. } = welcome else {
        panic!("expected Welcome, got {welcome:?}");
    };
    assert_eq!(limits.max_registry_bytes, Some(MAX_BYTES as u64));
    let kept = other.register("kept", 7000).await;

    // One connection sends them all at once, then reads every answer.
    let mut flood = Wire::hello(server.addr).await;
    let mut sent = Vec::new();
    for n in 1..=FLOOD {
        sent.push(flood.send(fat_register(n)).await);
    }
    let mut registered: Vec<Uuid> = Vec::new();
    let mut refused = 0;
    for &request_id in &sent {
        let frame = flood.recv().await.expect("an answer, not a close");
        assert_eq!(frame.request_id, request_id, "answers in order");
        match frame.response {
            Response::Registered { id, .. } => {
                assert_eq!(refused, 0, "nothing taken after the first refusal");
                registered.push(id);
            }
            Response::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::RegistryBytesLimit, "{message}");
                assert!(message.contains(&MAX_BYTES.to_string()), "{message}");
                refused += 1;
            }
            other => panic!("expected Registered or an error, got {other:?}"),
        }
    }
    assert!(
        (17..=22).contains(&registered.len()),
        "{} taken under a 1 MiB bound at about 53 KB each",
        registered.len()
    );
    assert_eq!(registered.len() + refused, FLOOD as usize);

    // The flooding connection is still served, and so is everyone else.
    assert_eq!(flood.call(Request::Ping).await, Response::Pong);
    assert_eq!(other.call(Request::Ping).await, Response::Pong);
    let heartbeat = Request::Heartbeat {
        id: kept,
        min_revision: None,
    };
    assert_eq!(other.call(heartbeat.clone()).await, Response::Ok);
    let listed = other.query("kept").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, kept);
    assert_eq!(other.query("fat").await.len(), registered.len());
    let mut fresh = Wire::hello(server.addr).await;
    assert_eq!(fresh.call(Request::Ping).await, Response::Pong);

    // A deregister makes room for one more.
    let deregistered = flood
        .call(Request::Deregister {
            id: registered[0],
            min_revision: None,
        })
        .await;
    assert!(
        matches!(deregistered, Response::Done { .. }),
        "{deregistered:?}"
    );
    let again = flood.call(fat_register(FLOOD + 1)).await;
    assert!(
        matches!(again, Response::Registered { .. }),
        "expected Registered, got {again:?}"
    );
    assert_eq!(other.call(heartbeat).await, Response::Ok);
    server.stop().await;
}
