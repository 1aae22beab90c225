//! Watches and views against real servers on 127.0.0.1, in real time: every kind of change,
//! snapshots split over frames, resuming after a cut connection with nothing lost or
//! doubled, a reset after a server restart, a consumer that stalls, a view through an
//! outage, and unsubscribing on drop.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Proxy, builder, client, dead_address, eventually, listed};
use discovery_client::{
    Client, Error, ErrorKind, Instance, RemoveReason, Revision, ServiceSpec, Uuid, ViewStatus,
    Watch, WatchEvent,
};
use discovery_proto::MAX_FRAME_BYTES;
use tokio::time::timeout;

/// A TTL long enough that nothing expires during a test that does not want it to.
const LONG_TTL: Duration = Duration::from_secs(30);

/// Bound on anything a test waits for; a healthy run takes a small part of it.
const PATIENCE: Duration = Duration::from_secs(10);

fn spec(service_type: &str, port: u16) -> ServiceSpec {
    ServiceSpec::new(service_type, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The next event, within the patience.
async fn next(watch: &mut Watch) -> WatchEvent {
    timeout(PATIENCE, watch.recv())
        .await
        .expect("an event in time")
        .expect("the watch goes on")
}

/// What a consumer knows, built only from the events it was given; checks on the way that
/// nothing is added twice or removed unseen, and that revisions only grow.
#[derive(Default)]
struct Mirror {
    instances: HashMap<Uuid, Instance>,
    revision: Option<Revision>,
    /// Every revision of a change, in the order seen.
    changes: Vec<Revision>,
    resets: usize,
    resumes: usize,
    disconnects: usize,
}

impl Mirror {
    fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Snapshot {
                revision,
                instances,
                reset,
            } => {
                self.resets += usize::from(reset);
                self.instances = instances.into_iter().map(|i| (i.id, i)).collect();
                self.revision = Some(revision);
            }
            WatchEvent::Added { revision, instance } => {
                self.advance(revision);
                assert!(
                    self.instances.insert(instance.id, instance).is_none(),
                    "added twice"
                );
            }
            WatchEvent::Updated { revision, instance } => {
                self.advance(revision);
                assert!(
                    self.instances.insert(instance.id, instance).is_some(),
                    "updated unseen"
                );
            }
            WatchEvent::Removed {
                revision, instance, ..
            } => {
                self.advance(revision);
                assert!(
                    self.instances.remove(&instance.id).is_some(),
                    "removed unseen"
                );
            }
            WatchEvent::Resumed { revision } => {
                assert_eq!(Some(revision), self.revision, "resumed where it stopped");
                self.resumes += 1;
            }
            WatchEvent::Disconnected { .. } => self.disconnects += 1,
            WatchEvent::Lagged => {}
            other => panic!("unknown event {other:?}"),
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
        self.changes.push(revision);
    }

    fn ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.instances.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// The ids a query lists, sorted.
async fn sorted(client: &Client, service_type: &str) -> Vec<Uuid> {
    let mut ids = listed(client, service_type).await;
    ids.sort_unstable();
    ids
}

/// Reads events into `mirror` until it lists what a query lists (with no event pending).
async fn catch_up(watch: &mut Watch, mirror: &mut Mirror, checker: &Client, service_type: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match timeout(Duration::from_millis(200), watch.recv()).await {
            Ok(Some(event)) => mirror.apply(event),
            Ok(None) => panic!("the watch ended"),
            Err(_) => {
                if mirror.ids() == sorted(checker, service_type).await {
                    return;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch did not catch up with the query"
        );
    }
}

#[tokio::test]
async fn register_deregister_replace_and_expire_are_pushed() {
    let server = common::server(Duration::from_secs(1)).await;
    let client = client(server.address());
    let mut watch = client.watch("svc").await.unwrap();
    assert_eq!(watch.service_type(), "svc");
    let mut mirror = Mirror::default();
    match next(&mut watch).await {
        WatchEvent::Snapshot {
            instances, reset, ..
        } => {
            assert!(instances.is_empty());
            assert!(!reset, "the first snapshot is not a reset");
        }
        other => panic!("{other:?}"),
    }

    // Another type's change wakes nothing here: the next event is the deregister's.
    client.register_once(&spec("other", 1)).await.unwrap();
    let a = client.register_once(&spec("svc", 1)).await.unwrap().id;
    let event = next(&mut watch).await;
    assert!(
        matches!(&event, WatchEvent::Added { instance, .. } if instance.id == a && instance.port == 1),
        "{event:?}"
    );
    mirror.apply(event);
    client.deregister(a).await.unwrap();
    let event = next(&mut watch).await;
    assert!(
        matches!(&event, WatchEvent::Removed { instance, reason: RemoveReason::Deregistered, .. } if instance.id == a),
        "{event:?}"
    );
    mirror.apply(event);

    // A replacement: the old one removed as replaced, then the new one added.
    let c = client.register_once(&spec("svc", 2)).await.unwrap().id;
    let d = client.register_once(&spec("svc", 2)).await.unwrap().id;
    let event = next(&mut watch).await;
    assert!(matches!(&event, WatchEvent::Added { instance, .. } if instance.id == c));
    mirror.apply(event);
    let event = next(&mut watch).await;
    assert!(
        matches!(&event, WatchEvent::Removed { instance, reason: RemoveReason::Replaced, .. } if instance.id == c),
        "{event:?}"
    );
    mirror.apply(event);
    let event = next(&mut watch).await;
    assert!(matches!(&event, WatchEvent::Added { instance, .. } if instance.id == d));
    mirror.apply(event);

    // Nobody heartbeats d: it expires after the TTL.
    let event = next(&mut watch).await;
    assert!(
        matches!(&event, WatchEvent::Removed { instance, reason: RemoveReason::Expired, .. } if instance.id == d),
        "{event:?}"
    );
    mirror.apply(event);
    assert_eq!(mirror.changes.len(), 6);
    assert!(mirror.instances.is_empty());

    drop((watch, client));
    server.stop().await;
}

#[tokio::test]
async fn a_snapshot_split_over_frames_is_one_event() {
    let server = common::server(LONG_TTL).await;
    let client = client(server.address());
    let value = "x".repeat(400);
    let registers = (0..300u16).map(|i| {
        let client = client.clone();
        let spec = spec("bulky", 10_000 + i).with_metadata("blob", value.as_str());
        async move { client.register_once(&spec).await.unwrap().id }
    });
    let mut ids = futures_util::future::join_all(registers).await;
    ids.sort_unstable();

    let mut watch = client.watch("bulky").await.unwrap();
    let WatchEvent::Snapshot { instances, .. } = next(&mut watch).await else {
        panic!("a snapshot first");
    };
    let bytes: usize = instances
        .iter()
        .map(discovery_proto::encoding::encoded_len)
        .sum();
    assert!(bytes > 2 * MAX_FRAME_BYTES, "only {bytes} bytes: not split");
    let mut got: Vec<Uuid> = instances.iter().map(|i| i.id).collect();
    got.sort_unstable();
    assert_eq!(got, ids);

    // And the watch goes on after it.
    let id = client.register_once(&spec("bulky", 9)).await.unwrap().id;
    assert!(
        matches!(next(&mut watch).await, WatchEvent::Added { instance, .. } if instance.id == id)
    );
    drop((watch, client));
    server.stop().await;
}

#[tokio::test]
async fn a_cut_connection_resumes_with_exactly_the_missed_changes() {
    let server = common::server(LONG_TTL).await;
    let proxy = Proxy::start(server.address()).await;
    let watcher = builder(proxy.address())
        .backoff_max(Duration::from_millis(300))
        .build()
        .unwrap();
    let actor = client(server.address());

    let a = actor.register_once(&spec("svc", 1)).await.unwrap().id;
    let mut watch = watcher.watch("svc").await.unwrap();
    let mut mirror = Mirror::default();
    mirror.apply(next(&mut watch).await);
    assert_eq!(mirror.ids(), vec![a]);
    let b = actor.register_once(&spec("svc", 2)).await.unwrap().id;
    mirror.apply(next(&mut watch).await);

    // The connection is cut and new ones are refused: the watch says so.
    proxy.down();
    let event = next(&mut watch).await;
    assert!(
        matches!(event, WatchEvent::Disconnected { .. }),
        "{event:?}"
    );
    mirror.apply(event);

    // Five changes while the watcher is away.
    actor.register_once(&spec("svc", 3)).await.unwrap();
    actor.deregister(a).await.unwrap();
    let b2 = actor.register_once(&spec("svc", 2)).await.unwrap().id; // replaces b: two changes
    actor.register_once(&spec("svc", 4)).await.unwrap();
    assert_ne!(b, b2);

    // Back: exactly those five, after a Resumed, and no snapshot.
    proxy.up();
    let event = next(&mut watch).await;
    assert!(matches!(event, WatchEvent::Resumed { .. }), "{event:?}");
    mirror.apply(event);
    let before = mirror.changes.len();
    for _ in 0..5 {
        let event = next(&mut watch).await;
        assert!(
            matches!(event, WatchEvent::Added { .. } | WatchEvent::Removed { .. }),
            "{event:?}"
        );
        mirror.apply(event);
    }
    assert_eq!(mirror.changes.len() - before, 5);
    assert_eq!(mirror.ids(), sorted(&actor, "svc").await);
    // The client's other calls go over the new connection as before.
    assert_eq!(sorted(&watcher, "svc").await, mirror.ids());
    assert_eq!(mirror.resets, 0);

    // Three more outages. In each, ten changes are made while the watcher is away, and ten
    // more race its reconnection: some may come before the resume, some after. Every one
    // is seen exactly once (the mirror refuses doubles and gaps), the ten missed ones after
    // a `Resumed`.
    for round in 0..3u16 {
        proxy.down();
        loop {
            let event = next(&mut watch).await;
            let disconnected = matches!(event, WatchEvent::Disconnected { .. });
            mirror.apply(event);
            if disconnected {
                break;
            }
        }
        let register = |i: u16| {
            let actor = actor.clone();
            async move {
                let spec = spec("svc", 100 + round * 20 + i);
                actor.register_once(&spec).await.unwrap().id
            }
        };
        futures_util::future::join_all((0..10).map(register)).await;
        let racing = tokio::spawn(futures_util::future::join_all((10..20).map(register)));
        proxy.up();
        while mirror.resumes < usize::from(round) + 2 {
            mirror.apply(next(&mut watch).await);
        }
        let at_resume = mirror.changes.len();
        racing.await.unwrap();
        catch_up(&mut watch, &mut mirror, &actor, "svc").await;
        assert!(
            mirror.changes.len() - at_resume >= 10,
            "the missed changes came after the resume"
        );
    }
    assert_eq!((mirror.disconnects, mirror.resumes), (4, 4));
    assert_eq!(mirror.resets, 0, "every outage was resumed");
    assert_eq!(mirror.ids(), sorted(&actor, "svc").await);
    assert_eq!(mirror.changes.len(), 1 + 5 + 60);
    assert!(
        mirror.changes.windows(2).all(|pair| pair[0] < pair[1]),
        "revisions strictly increase, none repeated"
    );

    drop((watch, watcher, actor, proxy));
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_server_sends_a_reset_snapshot() {
    let server = common::server(LONG_TTL).await;
    let address = server.address();
    let watcher = builder(address)
        .backoff_max(Duration::from_millis(300))
        .build()
        .unwrap();
    let first = client(address)
        .register_once(&spec("svc", 1))
        .await
        .unwrap()
        .id;
    let mut watch = watcher.watch("svc").await.unwrap();
    let mut mirror = Mirror::default();
    mirror.apply(next(&mut watch).await);
    assert_eq!(mirror.ids(), vec![first]);
    let old_revision = mirror.revision.unwrap();

    server.stop().await;
    let event = next(&mut watch).await;
    assert!(
        matches!(event, WatchEvent::Disconnected { .. }),
        "{event:?}"
    );
    mirror.apply(event);

    // A new run knows nothing of the old instance, nor of the old revisions.
    let server = common::server_on(address, LONG_TTL).await;
    let actor = client(address);
    let second = actor.register_once(&spec("svc", 2)).await.unwrap().id;
    catch_up(&mut watch, &mut mirror, &actor, "svc").await;
    assert_eq!(mirror.ids(), vec![second]);
    assert_eq!(mirror.resets, 1, "one reset snapshot");
    assert_eq!(mirror.resumes, 0);
    assert_ne!(
        mirror.revision.unwrap().incarnation,
        old_revision.incarnation
    );

    drop((watch, watcher, actor));
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_consumer_stays_bounded_and_catches_up() {
    let server = common::server(LONG_TTL).await;
    const BUFFER: usize = 8;
    let watcher = builder(server.address())
        .watch_buffer(BUFFER)
        .build()
        .unwrap();
    let actor = client(server.address());
    let mut watch = watcher.watch("busy").await.unwrap();
    let mut mirror = Mirror::default();
    mirror.apply(next(&mut watch).await);

    // 2,000 changes while the consumer reads nothing.
    let registers = (0..2000u16).map(|i| {
        let actor = actor.clone();
        async move {
            actor
                .register_once(&spec("busy", 20_000 + i))
                .await
                .unwrap()
                .id
        }
    });
    let ids = futures_util::future::join_all(registers).await;
    assert_eq!(ids.len(), 2000);

    // The same client (and its one connection) still serves calls during the stall.
    watcher.ping().await.unwrap();
    assert_eq!(listed(&watcher, "busy").await.len(), 2000);

    // What waited is at most the buffer: the events that fitted, then the marker.
    let mut before_lag = 0;
    loop {
        match next(&mut watch).await {
            WatchEvent::Lagged => break,
            event => {
                before_lag += 1;
                mirror.apply(event);
            }
        }
        assert!(before_lag < BUFFER, "more than the buffer waited");
    }
    // Then a reset snapshot makes the consumer current.
    let event = next(&mut watch).await;
    assert!(
        matches!(&event, WatchEvent::Snapshot { reset: true, .. }),
        "{event:?}"
    );
    mirror.apply(event);
    catch_up(&mut watch, &mut mirror, &actor, "busy").await;
    assert_eq!(mirror.instances.len(), 2000);

    // And it follows live changes again.
    let gone = ids[0];
    actor.deregister(gone).await.unwrap();
    let event = next(&mut watch).await;
    assert!(
        matches!(&event, WatchEvent::Removed { instance, .. } if instance.id == gone),
        "{event:?}"
    );
    drop((watch, watcher, actor));
    server.stop().await;
}

#[tokio::test]
async fn a_view_serves_the_last_list_through_an_outage() {
    let server = common::server(LONG_TTL).await;
    let proxy = Proxy::start(server.address()).await;
    let viewer = builder(proxy.address())
        .backoff_max(Duration::from_millis(300))
        .build()
        .unwrap();
    let actor = client(server.address());
    let a = actor.register_once(&spec("svc", 1)).await.unwrap().id;

    let mut view = viewer.view("svc").await.unwrap();
    assert_eq!(view.service_type(), "svc");
    assert_eq!(view.status(), ViewStatus::Current);
    assert_eq!(
        view.instances().iter().map(|i| i.id).collect::<Vec<_>>(),
        [a]
    );
    let first_revision = view.revision();

    // A change is seen without polling.
    let b = actor.register_once(&spec("svc", 2)).await.unwrap().id;
    timeout(PATIENCE, async {
        while view.instances().len() < 2 {
            view.changed().await.unwrap();
        }
    })
    .await
    .expect("the view saw the register");
    assert!(view.revision() > first_revision);

    // No server: the view says so, and keeps the list.
    proxy.down();
    timeout(PATIENCE, async {
        while view.is_current() {
            view.changed().await.unwrap();
        }
    })
    .await
    .expect("the view noticed the outage");
    assert_eq!(view.status(), ViewStatus::Disconnected);
    let mut known: Vec<Uuid> = view.instances().iter().map(|i| i.id).collect();
    known.sort_unstable();
    let mut expected = vec![a, b];
    expected.sort_unstable();
    assert_eq!(known, expected);

    // Changes meanwhile are caught up with once the server is reachable again.
    actor.deregister(a).await.unwrap();
    let c = actor.register_once(&spec("svc", 3)).await.unwrap().id;
    assert_eq!(view.instances().len(), 2, "still the last known list");
    proxy.up();
    let clone = view.clone();
    eventually("the view is current again", PATIENCE, || async {
        let mut ids: Vec<Uuid> = clone.instances().iter().map(|i| i.id).collect();
        ids.sort_unstable();
        let mut expected = vec![b, c];
        expected.sort_unstable();
        (clone.is_current() && ids == expected).then_some(())
    })
    .await;

    drop((view, clone, viewer, actor, proxy));
    server.stop().await;
}

#[tokio::test]
async fn dropping_a_watch_unsubscribes_it() {
    // The test server allows 64 watches per connection (the default).
    let server = common::server(LONG_TTL).await;
    let client = client(server.address());
    let mut watches = Vec::new();
    for i in 0..64 {
        watches.push(client.watch(format!("t{i}")).await.unwrap());
    }
    let error = client.watch("one-too-many").await.unwrap_err();
    assert_eq!(error.kind(), Some(ErrorKind::WatchLimit), "{error:?}");

    // A dropped watch is unwatched before the next call goes out: there is room again.
    drop(watches.pop());
    let mut watch = client.watch("t63").await.unwrap();
    assert!(matches!(
        next(&mut watch).await,
        WatchEvent::Snapshot { .. }
    ));
    let error = client.watch("one-too-many").await.unwrap_err();
    assert_eq!(error.kind(), Some(ErrorKind::WatchLimit), "{error:?}");

    // Dropped watches get nothing more, and the others go on.
    watches.truncate(1);
    client.register_once(&spec("t5", 1)).await.unwrap();
    let id = client.register_once(&spec("t0", 1)).await.unwrap().id;
    let first = &mut watches[0];
    assert!(matches!(next(first).await, WatchEvent::Snapshot { .. }));
    assert!(matches!(next(first).await, WatchEvent::Added { instance, .. } if instance.id == id));
    for i in 0..62 {
        watches.push(client.watch(format!("again{i}")).await.unwrap());
    }

    // An invalid type is refused.
    let error = client.watch("").await.unwrap_err();
    assert_eq!(
        error.kind(),
        Some(ErrorKind::InvalidServiceType),
        "{error:?}"
    );
    drop((watches, watch, client));
    server.stop().await;
}

#[tokio::test]
async fn a_watch_fails_when_no_server_answers_in_time() {
    let client = builder(dead_address())
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = client.watch("svc").await.unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
}

#[tokio::test]
async fn a_tiny_watch_buffer_is_refused() {
    let error = builder(dead_address()).watch_buffer(1).build().unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
}

#[tokio::test]
async fn new_metadata_keeps_the_id_and_watchers_see_the_update() {
    let server = common::server(common::TTL).await;
    let owner = client(server.address());
    let watcher = client(server.address());
    let mut registration = owner
        .register(spec("rolling", 1).with_metadata("version", "1"))
        .await
        .unwrap();
    let id = registration.id();
    let mut watch = watcher.watch("rolling").await.unwrap();
    let mut view = watcher.view("rolling").await.unwrap();
    let mut mirror = Mirror::default();
    mirror.apply(next(&mut watch).await);
    assert_eq!(mirror.ids(), [id]);

    let version_2 = discovery_client::Metadata::from([("version".to_owned(), "2".to_owned())]);
    registration.set_metadata(version_2.clone()).await.unwrap();
    assert_eq!(registration.id(), id, "same id");
    assert_eq!(registration.spec().metadata, version_2);

    let event = next(&mut watch).await;
    match &event {
        WatchEvent::Updated { instance, .. } => {
            assert_eq!(instance.id, id);
            assert_eq!(instance.metadata, version_2);
            assert_eq!(instance.port, 1);
        }
        other => panic!("{other:?}"),
    }
    mirror.apply(event);
    assert_eq!(mirror.instances[&id].metadata, version_2);
    // The view replaces the entry in place.
    timeout(PATIENCE, async {
        while view.instances().first().map(|i| &i.metadata) != Some(&version_2) {
            view.changed().await.unwrap();
        }
    })
    .await
    .expect("the view took the update");
    assert_eq!(view.instances().len(), 1);
    // And a query lists the new metadata under the same id.
    let found = watcher.query("rolling").await.unwrap();
    assert_eq!((found[0].id, &found[0].metadata), (id, &version_2));

    registration.shutdown().await.unwrap();
    drop((watch, view, owner, watcher));
    server.stop().await;
}
