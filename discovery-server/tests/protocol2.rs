//! What protocol 2 added, over real TCP on port 0: the version-1 refusal, TTLs per
//! instance, updates in place, why an id is gone, the list of types, and `min_revision`.

use std::time::{Duration, Instant};

use discovery_proto::{
    ErrorKind, Metadata, PROTOCOL_VERSION, RemoveReason, Request, Response, Revision,
};
use discovery_server::ServerConfig;
use discovery_test_support::server::config_with_ttl;
use discovery_test_support::wire::register;
use discovery_test_support::{TestServer, Wire, eventually};

fn metadata(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A server whose own TTL is long and whose registers may ask for TTLs from 200 ms.
fn long_ttl_short_floor() -> ServerConfig {
    let mut config = config_with_ttl(Duration::from_secs(60));
    config.registry.min_ttl = Duration::from_millis(200);
    config
}

async fn registered(wire: &mut Wire, request: Request) -> (uuid::Uuid, Duration, Revision) {
    match wire.call(request).await {
        Response::Registered { id, ttl, revision } => (id, ttl, revision),
        other => panic!("expected Registered, got {other:?}"),
    }
}

fn register_with_ttl(service_type: &str, port: u16, ttl: Option<Duration>) -> Request {
    match register(service_type, port) {
        Request::Register {
            service_type,
            ip,
            port,
            metadata,
            ..
        } => Request::Register {
            service_type,
            ip,
            port,
            metadata,
            ttl,
        },
        other => other,
    }
}

fn heartbeat(id: uuid::Uuid) -> Request {
    Request::Heartbeat {
        id,
        min_revision: None,
    }
}

#[tokio::test]
async fn a_version_1_hello_is_refused_naming_both_versions() {
    let server = TestServer::start().await;
    let mut wire = Wire::connect(server.addr).await;
    let answer = wire
        .call(Request::Hello {
            protocol_version: 1,
            client_name: "old".into(),
        })
        .await;
    let Response::Error { kind, message } = answer else {
        panic!("expected an error, got {answer:?}");
    };
    assert_eq!(kind, ErrorKind::UnsupportedVersion);
    assert!(message.contains("version 1"), "{message}");
    assert!(
        message.contains(&format!("version {PROTOCOL_VERSION}")),
        "{message}"
    );
    assert!(wire.recv().await.is_none(), "the connection is closed");
    server.stop().await;
}

#[tokio::test]
async fn welcome_announces_the_ttl_bounds_and_timeouts() {
    let mut config = long_ttl_short_floor();
    config.registry.max_ttl = Duration::from_secs(600);
    config.idle_timeout = Duration::from_secs(42);
    config.frame_timeout = Duration::from_secs(7);
    config.max_watches_per_connection = 5;
    let server = TestServer::with_config(config).await;
    let mut wire = Wire::connect(server.addr).await;
    let welcome = wire
        .call(Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: String::new(),
        })
        .await;
    let Response::Welcome {
        ttl,
        min_ttl,
        max_ttl,
        idle_timeout,
        frame_timeout,
        limits,
        ..
    } = welcome
    else {
        panic!("expected Welcome, got {welcome:?}");
    };
    assert_eq!(ttl, Duration::from_secs(60));
    assert_eq!(min_ttl, Duration::from_millis(200));
    assert_eq!(max_ttl, Duration::from_secs(600));
    assert_eq!(idle_timeout, Duration::from_secs(42));
    assert_eq!(frame_timeout, Duration::from_secs(7));
    assert_eq!(limits.max_watches_per_connection, 5);
    assert_eq!(limits.max_connections, 10_000);
    // A bound always in force is announced; one off by default is announced as off.
    assert_eq!(limits.max_registry_bytes, Some(1 << 30));
    assert_eq!(limits.register_rate, None);
    server.stop().await;
}

#[tokio::test]
async fn a_register_lives_for_its_own_ttl_within_the_bounds() {
    let server = TestServer::with_config(long_ttl_short_floor()).await;
    let mut wire = Wire::hello(server.addr).await;

    let (short, granted, _) = registered(
        &mut wire,
        register_with_ttl("t", 1, Some(Duration::from_millis(300))),
    )
    .await;
    assert_eq!(granted, Duration::from_millis(300));
    let (long, granted, _) = registered(&mut wire, register_with_ttl("t", 2, None)).await;
    assert_eq!(granted, Duration::from_secs(60), "the server's TTL");

    // The short one goes by itself, long before the server's TTL; the other stays.
    eventually("the 300 ms instance expires", || async {
        let ids: Vec<_> = Wire::hello(server.addr)
            .await
            .query("t")
            .await
            .iter()
            .map(|i| i.id)
            .collect();
        (ids == [long]).then_some(())
    })
    .await;
    assert_eq!(
        wire.call(heartbeat(short)).await,
        Response::NotFound {
            reason: Some(RemoveReason::Expired)
        }
    );

    for outside in [Duration::from_millis(100), Duration::from_secs(7200)] {
        let answer = wire.call(register_with_ttl("t", 3, Some(outside))).await;
        assert!(
            matches!(
                answer,
                Response::Error {
                    kind: ErrorKind::InvalidTtl,
                    ..
                }
            ),
            "{outside:?}: {answer:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_update_keeps_the_id_and_watchers_see_it() {
    let server = TestServer::start().await;
    let mut watcher = Wire::hello(server.addr).await;
    let watch = watcher
        .send(Request::Watch {
            service_type: "billing".into(),
            since: None,
            min_revision: None,
        })
        .await;
    let snapshot = watcher.recv().await.expect("a snapshot");
    assert_eq!(snapshot.request_id, watch);

    let mut wire = Wire::hello(server.addr).await;
    let (id, _, registered_at) = registered(&mut wire, register("billing", 80)).await;
    let added = watcher.recv().await.expect("the addition");
    assert!(
        matches!(added.response, Response::Added { .. }),
        "{added:?}"
    );

    let version = metadata(&[("version", "2")]);
    let answer = wire
        .call(Request::Update {
            id,
            metadata: version.clone(),
            min_revision: None,
        })
        .await;
    let Response::Done { revision } = answer else {
        panic!("expected Done, got {answer:?}");
    };
    assert!(
        revision > registered_at,
        "the update takes a later revision"
    );

    let pushed = watcher.recv().await.expect("the update");
    assert_eq!(pushed.request_id, watch);
    let Response::Updated {
        revision: pushed_revision,
        instance,
    } = pushed.response
    else {
        panic!("expected Updated, got {pushed:?}");
    };
    assert_eq!(pushed_revision, revision);
    assert_eq!(instance.id, id);
    assert_eq!(instance.metadata, version);

    let listed = wire.query("billing").await;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, &listed[0].metadata), (id, &version));
    assert_eq!(wire.call(heartbeat(id)).await, Response::Ok, "still live");

    let unknown = uuid::Uuid::new_v4();
    let answer = wire
        .call(Request::Update {
            id: unknown,
            metadata: version,
            min_revision: None,
        })
        .await;
    assert_eq!(answer, Response::NotFound { reason: None });
    server.stop().await;
}

#[tokio::test]
async fn not_found_says_why_the_id_is_gone() {
    let server = TestServer::with_config(long_ttl_short_floor()).await;
    let mut wire = Wire::hello(server.addr).await;

    let (replaced, _, _) = registered(&mut wire, register("t", 1)).await;
    registered(&mut wire, register("t", 1)).await;
    assert_eq!(
        wire.call(heartbeat(replaced)).await,
        Response::NotFound {
            reason: Some(RemoveReason::Replaced)
        }
    );

    let (gone, _, registered_at) = registered(&mut wire, register("t", 2)).await;
    let answer = wire
        .call(Request::Deregister {
            id: gone,
            min_revision: None,
        })
        .await;
    let Response::Done { revision } = answer else {
        panic!("expected Done, got {answer:?}");
    };
    assert!(revision > registered_at);
    let again = Request::Deregister {
        id: gone,
        min_revision: None,
    };
    assert_eq!(
        wire.call(again).await,
        Response::NotFound {
            reason: Some(RemoveReason::Deregistered)
        }
    );

    let (expiring, _, _) = registered(
        &mut wire,
        register_with_ttl("t", 3, Some(Duration::from_millis(200))),
    )
    .await;
    // Watched through queries: a heartbeat would keep it alive.
    eventually("the 200 ms instance expires", || async {
        let listed = Wire::hello(server.addr).await.query("t").await;
        listed.iter().all(|i| i.id != expiring).then_some(())
    })
    .await;
    assert_eq!(
        wire.call(heartbeat(expiring)).await,
        Response::NotFound {
            reason: Some(RemoveReason::Expired)
        }
    );

    assert_eq!(
        wire.call(heartbeat(uuid::Uuid::new_v4())).await,
        Response::NotFound { reason: None },
        "an id never seen has no reason"
    );
    let unwatch = Request::Unwatch { watch: 99 };
    assert_eq!(
        wire.call(unwatch).await,
        Response::NotFound { reason: None }
    );
    server.stop().await;
}

#[tokio::test]
async fn the_types_come_sorted_with_their_counts_in_frames_within_the_cap() {
    let mut config = ServerConfig::default();
    config.registry.max_frame_bytes = 1024;
    let server = TestServer::with_config(config).await;
    let mut wire = Wire::hello(server.addr).await;
    // 60 types of 40-byte names: about 2.5 KiB of answer, three frames at least.
    let names: Vec<String> = (0..60)
        .map(|n| format!("{n:03}-{}", "x".repeat(36)))
        .collect();
    for (n, name) in names.iter().enumerate().rev() {
        for port in 0..=(n % 3) as u16 {
            registered(&mut wire, register(name, 1 + port)).await;
        }
    }

    let id = wire.send(Request::ListTypes).await;
    let mut listed = Vec::new();
    let mut frames = 0;
    loop {
        let frame = wire.recv().await.expect("a Types frame");
        assert_eq!(frame.request_id, id);
        let size = discovery_proto::encoding::encode(&frame)
            .expect("encodes")
            .len();
        assert!(size <= 1024, "a frame of {size} bytes");
        frames += 1;
        let Response::Types { types, more } = frame.response else {
            panic!("expected Types, got {frame:?}");
        };
        listed.extend(types);
        if !more {
            break;
        }
    }
    assert!(frames >= 3, "{frames} frames");
    let expected: Vec<(String, u64)> = names
        .iter()
        .enumerate()
        .map(|(n, name)| (name.clone(), (n % 3) as u64 + 1))
        .collect();
    let got: Vec<(String, u64)> = listed
        .into_iter()
        .map(|t| (t.service_type, t.instances))
        .collect();
    assert_eq!(got, expected);
    server.stop().await;
}

#[tokio::test]
async fn a_query_waits_for_a_revision_the_server_has_not_reached() {
    let server = TestServer::start().await;
    let mut writer = Wire::hello(server.addr).await;
    let (_, _, revision) = registered(&mut writer, register("t", 1)).await;

    // The next change will take the next revision: ask for it before it exists.
    let mut reader = Wire::hello(server.addr).await;
    let next = Revision {
        seq: revision.seq + 1,
        ..revision
    };
    let started = Instant::now();
    let query = reader
        .send(Request::Query {
            service_type: "t".into(),
            min_revision: Some(next),
        })
        .await;
    let (added, _, _) = registered(&mut writer, register("t", 2)).await;

    let frame = reader.recv().await.expect("the answer");
    assert_eq!(frame.request_id, query);
    let Response::Instances { instances, .. } = frame.response else {
        panic!("expected Instances, got {frame:?}");
    };
    let listed = instances.iter().any(|entry| entry.id == added);
    // The server either saw the revision come and answered with it, or (on a machine so
    // busy that the second register took longer than the wait) waited the whole second:
    // it never answers early without it.
    assert!(
        listed || started.elapsed() >= Duration::from_secs(1),
        "answered after {:?} without the instance of the revision asked for",
        started.elapsed()
    );

    // A revision this run will not reach soon is waited for the whole second, then the
    // answer is what the server has.
    let far = Revision {
        seq: revision.seq + 1_000,
        ..revision
    };
    let started = Instant::now();
    let answer = reader
        .call(Request::Heartbeat {
            id: added,
            min_revision: Some(far),
        })
        .await;
    assert_eq!(answer, Response::Ok);
    assert!(
        started.elapsed() >= discovery_server::frontend::MIN_REVISION_WAIT,
        "answered after {:?}, before the wait was over",
        started.elapsed()
    );

    // A revision already reached, or one from another run of the server, is answered as
    // any request is.
    for seen in [
        revision,
        Revision {
            incarnation: revision.incarnation ^ 1,
            seq: u64::MAX,
        },
    ] {
        let answer = reader
            .call(Request::Heartbeat {
                id: added,
                min_revision: Some(seen),
            })
            .await;
        assert_eq!(answer, Response::Ok);
    }
    server.stop().await;
}
