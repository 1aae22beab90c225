//! Large answers are streamed under `--max-answer-buffer-bytes` (issue 15, finding 2): a
//! connection whose client does not read a query answer of many megabytes holds about the
//! bound, not the answer, and a client that reads it gets every instance once.
//!
//! Alone in its test binary: it measures this process's resident memory, which other tests
//! running beside it would disturb.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use discovery_proto::{Metadata, Request, Response};
use discovery_server::ServerConfig;
use discovery_server::config::MIN_ANSWER_BUFFER_BYTES;
use discovery_test_support::{TestServer, Wire};

/// Instances of the big type: with the metadata below, an answer of about 11 MB.
const INSTANCES: u32 = 10_000;
/// Connections that ask for the big answer and do not read it.
const STALLED: usize = 8;

/// This process's resident memory, in bytes (Linux).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm's resident field");
    pages * 4096
}

fn metadata(n: u32) -> Metadata {
    (0..8)
        .map(|k| (format!("key-{k:02}-{n}"), format!("{n:0>120}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_answer_to_a_client_that_does_not_read_holds_the_bound_not_the_answer() {
    let config = ServerConfig {
        max_answer_buffer_bytes: MIN_ANSWER_BUFFER_BYTES,
        // The stalled clients are not the subject: they must not be cut off meanwhile.
        write_timeout: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(600),
        ..ServerConfig::default()
    };
    let server = TestServer::with_config(config).await;
    for n in 0..INSTANCES {
        let ip = IpAddr::from((0x0a00_0000 + n).to_be_bytes());
        server
            .registry
            // Long-lived: no expiry may push changes, or take instances, meanwhile.
            .register_with_ttl(
                "big",
                ip,
                8080,
                metadata(n),
                Some(Duration::from_secs(3600)),
            )
            .expect("under the caps");
    }
    let before = resident_bytes();

    // Each stalled client asks, takes the first frame (so its answer is under way) and
    // then reads nothing more.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut wire = Wire::hello(server.addr).await;
        wire.send(Request::Query {
            service_type: "big".into(),
            min_revision: None,
        })
        .await;
        let first = wire.recv().await.expect("the first frame of the answer");
        let Response::Instances {
            instances,
            more: true,
            ..
        } = first.response
        else {
            panic!("expected the first of many Instances frames, got {first:?}");
        };
        stalled.push((wire, instances));
    }
    let grown = resident_bytes().saturating_sub(before);
    // Whole answers held per connection would be more than 8 x 11 MB; streamed, each holds
    // about the bound (512 KiB) plus its 40 KB copy of the type's slot numbers.
    let allowed = STALLED * 3 * MIN_ANSWER_BUFFER_BYTES;
    assert!(
        grown < allowed,
        "{STALLED} stalled answers grew the process by {grown} bytes (allowed {allowed})"
    );

    // Meanwhile the server serves everyone else, at once.
    let mut other = Wire::hello(server.addr).await;
    let id = other.register("small", 9000).await;
    assert!(matches!(
        other
            .call(Request::Heartbeat {
                id,
                min_revision: None
            })
            .await,
        Response::Ok
    ));

    // A client that reads gets the whole answer, each instance once.
    let (mut reader, first) = stalled.pop().expect("a stalled client");
    let mut ids: HashSet<_> = first.into_iter().map(|instance| instance.id).collect();
    loop {
        let frame = reader.recv().await.expect("the rest of the answer");
        let Response::Instances {
            instances, more, ..
        } = frame.response
        else {
            panic!("expected Instances, got {:?}", frame.response);
        };
        for instance in instances {
            assert!(ids.insert(instance.id), "listed twice");
        }
        if !more {
            break;
        }
    }
    assert_eq!(ids.len(), INSTANCES as usize);
    assert_eq!(other.query("big").await.len(), INSTANCES as usize);
    drop(stalled);
    server.stop().await;
}
