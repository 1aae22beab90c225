//! Watches over real TCP: pushes, unwatching, limits, resuming after a dropped connection,
//! multi-frame snapshots, idle connections that watch, and a consumer that does not read.

use std::collections::HashMap;
use std::time::Duration;

use discovery_proto::{
    ClientFrame, Entry, ErrorKind, Metadata, RemoveReason, Request, Response, Revision,
    ServerFrame, encoding,
};
use discovery_server::{RegistryConfig, ServerConfig};
use discovery_test_support::server::config_with_ttl;
use discovery_test_support::wire::register;
use discovery_test_support::{TestServer, Wire};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

fn watch(service_type: &str, since: Option<Revision>) -> Request {
    Request::Watch {
        service_type: service_type.into(),
        since,
        min_revision: None,
    }
}

/// What a watcher knows, built only from the frames it was sent.
#[derive(Default)]
struct View {
    instances: HashMap<Uuid, Entry>,
    revision: Option<Revision>,
    resets: usize,
    frames: usize,
}

impl View {
    /// Applies one frame of the watch; true when a snapshot is complete or a change applied.
    fn apply(&mut self, frame: ServerFrame) -> bool {
        self.frames += 1;
        match frame.response {
            Response::Snapshot {
                revision,
                reset,
                instances,
                more,
            } => {
                if self.revision.is_none_or(|seen| seen != revision) {
                    // The first part of a new snapshot replaces what was known.
                    self.instances.clear();
                }
                if reset {
                    self.resets += usize::from(!more);
                }
                self.revision = Some(revision);
                self.instances
                    .extend(instances.into_iter().map(|i| (i.id, i)));
                !more
            }
            Response::Resumed { revision } => {
                assert_eq!(Some(revision), self.revision, "resumed where it stopped");
                true
            }
            Response::Added { revision, instance } => {
                self.advance(revision);
                assert!(
                    self.instances
                        .insert(instance.id, instance.into_entry())
                        .is_none()
                );
                true
            }
            Response::Updated { revision, instance } => {
                self.advance(revision);
                assert!(
                    self.instances
                        .insert(instance.id, instance.into_entry())
                        .is_some()
                );
                true
            }
            Response::Removed {
                revision, instance, ..
            } => {
                self.advance(revision);
                assert!(self.instances.remove(&instance.id).is_some());
                true
            }
            other => panic!("not a watch frame: {other:?}"),
        }
    }

    fn advance(&mut self, revision: Revision) {
        if let Some(seen) = self.revision {
            assert!(
                revision > seen,
                "revisions only grow: {seen} then {revision}"
            );
        }
        self.revision = Some(revision);
    }
}

/// Reads frames of watch `id` until a snapshot is complete (answers to other requests are
/// not expected meanwhile).
async fn read_snapshot(wire: &mut Wire, id: u64, view: &mut View) {
    loop {
        let frame = wire.recv().await.expect("a snapshot frame");
        assert_eq!(frame.request_id, id);
        if view.apply(frame) {
            return;
        }
    }
}

#[tokio::test]
async fn changes_are_pushed_until_unwatch() {
    let server = TestServer::start().await;
    let mut watcher = Wire::hello(server.addr).await;
    let mut actor = Wire::hello(server.addr).await;
    let existing = actor.register("billing", 1).await;

    let id = watcher.send(watch("billing", None)).await;
    let mut view = View::default();
    read_snapshot(&mut watcher, id, &mut view).await;
    assert_eq!(
        view.instances.keys().copied().collect::<Vec<_>>(),
        vec![existing]
    );

    let added = actor.register("billing", 2).await;
    let frame = watcher.recv().await.expect("a push");
    assert_eq!(frame.request_id, id, "pushes carry the Watch's id");
    assert!(matches!(&frame.response, Response::Added { instance, .. } if instance.id == added));
    view.apply(frame);

    assert!(matches!(
        actor
            .call(Request::Deregister {
                id: added,
                min_revision: None
            })
            .await,
        Response::Done { .. }
    ));
    let frame = watcher.recv().await.expect("a push");
    assert!(matches!(
        &frame.response,
        Response::Removed { instance, reason: RemoveReason::Deregistered, .. } if instance.id == added
    ));
    view.apply(frame);

    // Other requests go on alongside the watch.
    assert_eq!(watcher.call(Request::Ping).await, Response::Pong);
    assert_eq!(
        watcher.call(Request::Unwatch { watch: id }).await,
        Response::Ok
    );
    assert_eq!(
        watcher.call(Request::Unwatch { watch: id }).await,
        Response::NotFound { reason: None }
    );
    actor.register("billing", 3).await;
    // The next frame is the Pong, not a push for the closed watch.
    assert_eq!(watcher.call(Request::Ping).await, Response::Pong);
    server.stop().await;
}

#[tokio::test]
async fn an_expiry_is_pushed_as_expired() {
    let server = TestServer::with_config(config_with_ttl(Duration::from_secs(1))).await;
    let mut watcher = Wire::hello(server.addr).await;
    let id = watcher.send(watch("cache", None)).await;
    read_snapshot(&mut watcher, id, &mut View::default()).await;
    let mut actor = Wire::hello(server.addr).await;
    let instance = actor.register("cache", 6379).await;
    let frame = watcher.recv().await.expect("added");
    assert!(matches!(frame.response, Response::Added { .. }));
    let frame = watcher.recv().await.expect("removed at the TTL");
    assert!(matches!(
        &frame.response,
        Response::Removed { instance: gone, reason: RemoveReason::Expired, .. } if gone.id == instance
    ));
    server.stop().await;
}

#[tokio::test]
async fn duplicate_ids_and_the_watch_limit_are_refused() {
    let server = TestServer::with_config(ServerConfig {
        max_watches_per_connection: 2,
        ..ServerConfig::default()
    })
    .await;
    let mut wire = Wire::hello(server.addr).await;
    let first = wire.send(watch("a", None)).await;
    read_snapshot(&mut wire, first, &mut View::default()).await;

    // The same request id again, written by hand.
    let payload = encoding::encode(&ClientFrame::new(first, watch("b", None))).unwrap();
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend(payload);
    wire.stream().write_all(&bytes).await.unwrap();
    let frame = wire.recv().await.expect("a refusal");
    assert!(matches!(
        frame.response,
        Response::Error {
            kind: ErrorKind::DuplicateWatch,
            ..
        }
    ));

    let second = wire.send(watch("b", None)).await;
    read_snapshot(&mut wire, second, &mut View::default()).await;
    let refused = wire.call(watch("c", None)).await;
    assert!(matches!(
        refused,
        Response::Error {
            kind: ErrorKind::WatchLimit,
            ..
        }
    ));
    let invalid = wire.call(watch("", None)).await;
    assert!(matches!(
        invalid,
        Response::Error {
            kind: ErrorKind::InvalidServiceType,
            ..
        }
    ));
    server.stop().await;
}

#[tokio::test]
async fn a_reconnecting_watcher_resumes_without_loss_or_doubling() {
    let server = TestServer::start().await;
    let mut actor = Wire::hello(server.addr).await;
    let mut view = View::default();

    let mut watcher = Wire::hello(server.addr).await;
    let id = watcher.send(watch("billing", None)).await;
    read_snapshot(&mut watcher, id, &mut view).await;
    let first = actor.register("billing", 1).await;
    view.apply(watcher.recv().await.expect("added"));
    drop(watcher);

    // Changes while the watcher is away.
    let second = actor.register("billing", 2).await;
    assert!(matches!(
        actor
            .call(Request::Deregister {
                id: first,
                min_revision: None
            })
            .await,
        Response::Done { .. }
    ));
    let replaced = actor.register("billing", 2).await;

    let mut watcher = Wire::hello(server.addr).await;
    let id = watcher.send(watch("billing", view.revision)).await;
    let frame = watcher.recv().await.expect("resumed");
    assert_eq!(frame.request_id, id);
    assert!(
        matches!(frame.response, Response::Resumed { .. }),
        "{frame:?}"
    );
    view.apply(frame);
    for _ in 0..4 {
        view.apply(watcher.recv().await.expect("a missed change"));
    }
    assert_eq!(
        view.instances.keys().copied().collect::<Vec<_>>(),
        vec![replaced]
    );
    assert_ne!(second, replaced);
    // Nothing more was owed: the next frame answers the ping.
    assert_eq!(watcher.call(Request::Ping).await, Response::Pong);
    assert_eq!(view.resets, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_revision_from_an_earlier_run_gets_a_reset() {
    let first_run = TestServer::start().await;
    let mut wire = Wire::hello(first_run.addr).await;
    wire.register("billing", 1).await;
    let id = wire.send(watch("billing", None)).await;
    let mut view = View::default();
    read_snapshot(&mut wire, id, &mut view).await;
    first_run.stop().await;

    let second_run = TestServer::start().await;
    let mut wire = Wire::hello(second_run.addr).await;
    let id = wire.send(watch("billing", view.revision)).await;
    let frame = wire.recv().await.expect("a snapshot");
    assert_eq!(frame.request_id, id);
    assert!(
        matches!(&frame.response, Response::Snapshot { reset: true, instances, more: false, .. } if instances.is_empty()),
        "{frame:?}"
    );
    second_run.stop().await;
}

#[tokio::test]
async fn a_large_snapshot_spans_frames() {
    let server = TestServer::start().await;
    let mut actor = Wire::hello(server.addr).await;
    let mut metadata = Metadata::new();
    metadata.insert("blob".into(), "x".repeat(400));
    for port in 1..=300 {
        let request = Request::Register {
            service_type: "big".into(),
            ip: "127.0.0.1".parse().unwrap(),
            port,
            metadata: metadata.clone(),
            ttl: None,
        };
        assert!(matches!(
            actor.call(request).await,
            Response::Registered { .. }
        ));
    }
    let mut watcher = Wire::hello(server.addr).await;
    let id = watcher.send(watch("big", None)).await;
    let mut view = View::default();
    read_snapshot(&mut watcher, id, &mut view).await;
    assert_eq!(view.instances.len(), 300);
    assert!(view.frames > 1, "{} frames", view.frames);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_with_a_watch_is_not_idle() {
    let server = TestServer::with_config(ServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    let mut watcher = Wire::hello(server.addr).await;
    let id = watcher.send(watch("billing", None)).await;
    read_snapshot(&mut watcher, id, &mut View::default()).await;
    // Several idle timeouts pass with no frame from the watcher.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut actor = Wire::hello(server.addr).await;
    actor.register("billing", 1).await;
    let frame = watcher.recv().await.expect("the watch is still open");
    assert!(matches!(frame.response, Response::Added { .. }));
    server.stop().await;
}

#[tokio::test]
async fn a_consumer_that_does_not_read_gets_a_reset_not_a_backlog() {
    let server = TestServer::with_config(ServerConfig {
        registry: RegistryConfig {
            watch_queue: 8,
            ..RegistryConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let mut watcher = Wire::hello(server.addr).await;
    let id = watcher.send(watch("busy", None)).await;
    let mut view = View::default();
    read_snapshot(&mut watcher, id, &mut view).await;

    // Far more changes than the socket buffers and the queue hold, while the watcher
    // reads nothing.
    let mut actor = Wire::hello(server.addr).await;
    let mut metadata = Metadata::new();
    metadata.insert("blob".into(), "x".repeat(500));
    let total = 3_000u16;
    let mut bytes = Vec::new();
    for port in 1..=total {
        let request = Request::Register {
            service_type: "busy".into(),
            ip: "127.0.0.1".parse().unwrap(),
            port,
            metadata: metadata.clone(),
            ttl: None,
        };
        let payload = encoding::encode(&ClientFrame::new(u64::from(port) + 10, request)).unwrap();
        bytes.extend((payload.len() as u32).to_be_bytes());
        bytes.extend(payload);
    }
    actor.stream().write_all(&bytes).await.unwrap();
    for _ in 1..=total {
        assert!(matches!(
            actor.recv().await.expect("registered").response,
            Response::Registered { .. }
        ));
    }

    // Now read: the watcher ends up knowing every instance, through a reset rather than
    // through every change.
    while view.instances.len() < usize::from(total) {
        let frame = watcher.recv().await.expect("a watch frame");
        assert_eq!(frame.request_id, id);
        view.apply(frame);
    }
    assert!(view.resets >= 1, "the watcher was sent a reset");
    assert!(
        view.frames < usize::from(total),
        "fewer frames ({}) than changes ({total})",
        view.frames
    );
    assert_eq!(watcher.call(Request::Ping).await, Response::Pong);
    server.stop().await;
}

#[tokio::test]
async fn registering_through_the_watch_connection_is_seen_too() {
    let server = TestServer::start().await;
    let mut wire = Wire::hello(server.addr).await;
    let id = wire.send(watch("self", None)).await;
    read_snapshot(&mut wire, id, &mut View::default()).await;
    // The push and the answer both come; the answer's frame carries the register's id.
    let register_id = wire.send(register("self", 1)).await;
    let mut saw = (false, false);
    for _ in 0..2 {
        let frame = wire.recv().await.expect("a frame");
        if frame.request_id == register_id {
            saw.0 = matches!(frame.response, Response::Registered { .. });
        } else {
            assert_eq!(frame.request_id, id);
            saw.1 = matches!(frame.response, Response::Added { .. });
        }
    }
    assert_eq!(saw, (true, true));
    server.stop().await;
}
