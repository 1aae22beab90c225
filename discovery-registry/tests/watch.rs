//! Watches on the registry alone, with tokio's paused clock: the events of every kind of
//! change, who is woken, resuming, incarnations, slow consumers, and forgetting.

mod common;

use common::settle;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use discovery_proto::{Metadata, RemoveReason, Revision};
use discovery_registry::Subscription;
use discovery_registry::{Change, ChangeEvent, WatchStart};
use discovery_registry::{Registry, RegistryConfig};
use futures_util::{FutureExt, Stream, StreamExt};
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(5);

fn registry_with(config: RegistryConfig) -> Registry {
    Registry::new(RegistryConfig { ttl: TTL, ..config })
}

fn registry() -> Registry {
    registry_with(RegistryConfig::default())
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}

fn register(registry: &Registry, service_type: &str, last: u8) -> Uuid {
    registry
        .register(service_type, ip(last), 80, Metadata::new())
        .expect("valid")
}

/// The snapshot a subscription starts with.
fn snapshot(registry: &Registry, subscription: &mut Subscription) -> (Revision, Vec<Uuid>, bool) {
    match subscription.take_start() {
        Some(WatchStart::Snapshot {
            revision,
            members,
            reset,
        }) => (
            revision,
            registry
                .instances(members)
                .into_iter()
                .map(|i| i.id)
                .collect(),
            reset,
        ),
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// The next change, which must be ready now.
fn next_change(subscription: &mut Subscription) -> Arc<Change> {
    match subscription.next().now_or_never() {
        Some(Some(Ok(change))) => change,
        other => panic!("expected a change ready, got {other:?}"),
    }
}

fn assert_quiet(subscription: &mut Subscription) {
    if let Some(item) = subscription.next().now_or_never() {
        panic!("expected no change, got {item:?}");
    }
}

fn added(change: &Change) -> Uuid {
    match &change.event {
        ChangeEvent::Added(instance) => instance.id,
        other => panic!("expected Added, got {other:?}"),
    }
}

fn removed(change: &Change) -> (Uuid, RemoveReason) {
    match &change.event {
        ChangeEvent::Removed(instance, reason) => (instance.id, *reason),
        other => panic!("expected Removed, got {other:?}"),
    }
}

/// Lets the expiry task run at the current paused instant.

#[tokio::test(start_paused = true)]
async fn every_kind_of_change_is_an_event() {
    let registry = registry();
    let before = register(&registry, "billing", 1);
    let mut watch = registry.watch("billing", None).expect("watch");
    let (start, ids, reset) = snapshot(&registry, &mut watch);
    assert_eq!(ids, vec![before]);
    assert!(!reset);

    // Register.
    let second = register(&registry, "billing", 2);
    let change = next_change(&mut watch);
    assert_eq!(added(&change), second);
    assert!(change.revision > start);
    assert_eq!(change.revision.incarnation, start.incarnation);

    // Deregister.
    assert!(registry.deregister(second).is_ok());
    let change = next_change(&mut watch);
    assert_eq!(removed(&change), (second, RemoveReason::Deregistered));

    // Replacement: the old id removed as replaced, then the new one added.
    let replacement = register(&registry, "billing", 1);
    let gone = next_change(&mut watch);
    let came = next_change(&mut watch);
    assert_eq!(removed(&gone), (before, RemoveReason::Replaced));
    assert_eq!(added(&came), replacement);
    assert!(came.revision > gone.revision);

    // Heartbeats are not changes.
    assert!(registry.heartbeat(replacement).is_ok());
    assert_quiet(&mut watch);

    // Expiry, at the deadline, with nobody asking.
    tokio::time::advance(TTL - Duration::from_millis(1)).await;
    settle(&registry).await;
    assert_quiet(&mut watch);
    tokio::time::advance(Duration::from_millis(1)).await;
    settle(&registry).await;
    let change = next_change(&mut watch);
    assert_eq!(removed(&change), (replacement, RemoveReason::Expired));
    assert_quiet(&mut watch);
}

/// Counts how often a task would be woken.
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_change_wakes_only_the_watchers_of_its_type() {
    let registry = registry();
    let mut billing = registry.watch("billing", None).expect("watch");
    let _ = billing.take_start();
    let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut billing).poll_next(&mut cx).is_pending());

    // A hundred changes to other types, watched or not.
    let mut other = registry.watch("search", None).expect("watch");
    let _ = other.take_start();
    for last in 0..50 {
        let id = register(&registry, "search", last);
        register(&registry, "unwatched", last);
        registry.deregister(id).expect("live");
    }
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        0,
        "billing's watcher slept"
    );

    register(&registry, "billing", 1);
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        1,
        "woken once by its own type"
    );
    assert!(matches!(
        Pin::new(&mut billing).poll_next(&mut cx),
        Poll::Ready(Some(Ok(_)))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_resume_gets_exactly_the_missed_changes() {
    let registry = registry();
    let mut watch = registry.watch("billing", None).expect("watch");
    let (mut last, _, _) = snapshot(&registry, &mut watch);
    let first = register(&registry, "billing", 1);
    last = next_change(&mut watch).revision.max(last);
    drop(watch);

    // Changes while no one watches.
    let second = register(&registry, "billing", 2);
    assert!(registry.deregister(first).is_ok());
    let third = register(&registry, "billing", 3);

    let mut resumed = registry.watch("billing", Some(last)).expect("watch");
    let missed = match resumed.take_start() {
        Some(WatchStart::Resume { since, missed }) => {
            assert_eq!(since, last);
            missed
        }
        other => panic!("expected a resume, got {other:?}"),
    };
    assert_eq!(missed.len(), 3, "{missed:?}");
    assert_eq!(added(&missed[0]), second);
    assert_eq!(removed(&missed[1]), (first, RemoveReason::Deregistered));
    assert_eq!(added(&missed[2]), third);
    assert!(missed.windows(2).all(|w| w[0].revision < w[1].revision));
    // Nothing doubled: the live changes start after the missed ones.
    assert_quiet(&mut resumed);
    let fourth = register(&registry, "billing", 4);
    let change = next_change(&mut resumed);
    assert_eq!(added(&change), fourth);
    assert!(change.revision > missed[2].revision);

    // Resuming at the latest revision misses nothing and replays nothing.
    let mut current = registry
        .watch("billing", Some(change.revision))
        .expect("watch");
    match current.take_start() {
        Some(WatchStart::Resume { missed, .. }) => assert!(missed.is_empty()),
        other => panic!("expected a resume, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_since_from_another_run_or_beyond_history_gets_a_reset() {
    let registry = registry_with(RegistryConfig {
        watch_history: 3,
        ..RegistryConfig::default()
    });
    let mut watch = registry.watch("billing", None).expect("watch");
    let (start, _, _) = snapshot(&registry, &mut watch);

    let earlier_run = Revision {
        incarnation: start.incarnation.wrapping_add(1),
        seq: start.seq,
    };
    let id = register(&registry, "billing", 1);
    let mut other = registry.watch("billing", Some(earlier_run)).expect("watch");
    let (revision, ids, reset) = snapshot(&registry, &mut other);
    assert!(reset, "a revision of another incarnation is a reset");
    assert_eq!(ids, vec![id]);
    assert_eq!(revision.incarnation, start.incarnation);

    // More changes than the history holds: the start is no longer resumable.
    for last in 2..6 {
        register(&registry, "billing", last);
    }
    let mut late = registry.watch("billing", Some(start)).expect("watch");
    let (_, ids, reset) = snapshot(&registry, &mut late);
    assert!(reset, "a since older than the history is a reset");
    assert_eq!(ids.len(), 5);

    // A since from the future of this run is not believed either.
    let future = Revision {
        incarnation: start.incarnation,
        seq: start.seq + 1_000,
    };
    let mut odd = registry.watch("billing", Some(future)).expect("watch");
    assert!(snapshot(&registry, &mut odd).2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_watcher_is_told_to_reset_and_stays_bounded() {
    let registry = registry_with(RegistryConfig {
        watch_queue: 4,
        ..RegistryConfig::default()
    });
    let mut slow = registry.watch("billing", None).expect("watch");
    let _ = slow.take_start();
    for last in 0..100 {
        register(&registry, "billing", last);
    }
    // The queue kept only its capacity: the watcher learns it fell behind.
    match slow.next().now_or_never() {
        Some(Some(Err(lagged))) => {
            let text = lagged.to_string();
            assert!(text.contains("96"), "lagged by 96 changes: {text}");
        }
        other => panic!("expected a lag, got {other:?}"),
    }
    let mut fresh = registry.resubscribe(&slow).expect("resubscribe");
    drop(slow);
    let (_, ids, reset) = snapshot(&registry, &mut fresh);
    assert!(reset);
    assert_eq!(ids.len(), 100, "the reset snapshot has every instance");
    assert_quiet(&mut fresh);
}

#[tokio::test(start_paused = true)]
async fn a_feed_is_forgotten_a_window_after_its_last_watcher() {
    let window = Duration::from_secs(60);
    let registry = registry_with(RegistryConfig {
        watch_window: window,
        ttl: TTL,
        ..RegistryConfig::default()
    });
    let mut watch = registry.watch("billing", None).expect("watch");
    let (start, _, _) = snapshot(&registry, &mut watch);
    assert_eq!(registry.watched_types(), 1);
    drop(watch);

    tokio::time::advance(window - Duration::from_millis(1)).await;
    settle(&registry).await;
    assert_eq!(registry.watched_types(), 1, "kept for the window");
    let mut again = registry.watch("billing", Some(start)).expect("watch");
    assert!(matches!(
        again.take_start(),
        Some(WatchStart::Resume { .. })
    ));
    drop(again);

    // The window starts again from the last watcher's leaving.
    tokio::time::advance(window).await;
    settle(&registry).await;
    assert_eq!(registry.watched_types(), 0, "forgotten with no watcher");
    let mut late = registry.watch("billing", Some(start)).expect("watch");
    assert!(
        snapshot(&registry, &mut late).2,
        "a resume after the window is a reset"
    );
}

#[tokio::test(start_paused = true)]
async fn a_watched_type_must_be_a_valid_type() {
    let registry = registry();
    assert!(registry.watch("", None).is_err());
    assert!(registry.watch("bad\ntype", None).is_err());
    assert_eq!(registry.watched_types(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_never_holds_an_expired_instance() {
    let registry = registry();
    let id = register(&registry, "billing", 1);
    // At the deadline, before the expiry task has run: the snapshot leaves it out and no
    // removal of an instance the watcher never saw follows.
    tokio::time::advance(TTL).await;
    let mut watch = registry.watch("billing", None).expect("watch");
    let (_, ids, _) = snapshot(&registry, &mut watch);
    assert!(ids.is_empty(), "{id} is gone");
    settle(&registry).await;
    assert_quiet(&mut watch);
}
