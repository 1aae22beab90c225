//! Revisions on tokio's paused clock: every change takes one, watched type or not, the
//! methods that change return it, and `reached` answers at once, wakes on a change, or
//! gives up when its wait passes.

mod common;

use common::settle;

use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::{Metadata, RemoveReason, Revision};
use discovery_registry::{Change, ChangeEvent, Registry, RegistryConfig, Subscription};
use futures_util::{FutureExt, StreamExt};
use tokio::time::{Instant, advance};

const TTL: Duration = Duration::from_secs(5);

fn registry() -> Registry {
    Registry::new(RegistryConfig {
        ttl: TTL,
        ..RegistryConfig::default()
    })
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}

fn meta(version: &str) -> Metadata {
    [("version".to_string(), version.to_string())].into()
}

/// `revision` moved on by `n` changes.
fn plus(revision: Revision, n: u64) -> Revision {
    Revision {
        seq: revision.seq + n,
        ..revision
    }
}

fn next_change(subscription: &mut Subscription) -> Arc<Change> {
    match subscription.next().now_or_never() {
        Some(Some(Ok(change))) => change,
        other => panic!("expected a change ready, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn every_change_of_an_unwatched_type_takes_a_revision() {
    let registry = registry();
    let start = registry.revision();
    assert_eq!(registry.watched_types(), 0);

    let first = registry
        .register_with_ttl("billing", ip(1), 80, Metadata::new(), None)
        .unwrap();
    assert_eq!(first.revision, plus(start, 1));
    assert_eq!(registry.revision(), first.revision);

    // A heartbeat is not a change.
    assert!(registry.heartbeat(first.id).is_ok());
    assert_eq!(registry.revision(), first.revision);

    let updated = registry.update(first.id, meta("2")).unwrap();
    assert_eq!(updated, plus(first.revision, 1));
    // The same metadata again: no change, and the answer is the latest revision.
    assert_eq!(registry.update(first.id, meta("2")), Ok(updated));
    assert_eq!(registry.revision(), updated);

    // A replacement is two changes (the old one removed, the new one added); the register
    // answers the revision of the `Added`.
    let replacement = registry
        .register_with_ttl("billing", ip(1), 80, Metadata::new(), None)
        .unwrap();
    assert_eq!(replacement.revision, plus(updated, 2));

    let other = registry
        .register_with_ttl("search", ip(1), 80, Metadata::new(), None)
        .unwrap();
    assert_eq!(other.revision, plus(replacement.revision, 1));
    let deregistered = registry.deregister(other.id).unwrap();
    assert_eq!(deregistered, plus(other.revision, 1));

    // An expiry, with nobody asking, is a change too.
    advance(TTL).await;
    settle(&registry).await;
    assert!(registry.is_empty());
    assert_eq!(registry.revision(), plus(deregistered, 1));
    assert_eq!(registry.revision().incarnation, start.incarnation);
}

#[tokio::test(start_paused = true)]
async fn a_new_feed_takes_a_revision_and_a_watched_change_carries_the_one_returned() {
    let registry = registry();
    let start = registry.revision();
    let mut watch = registry.watch("billing", None).unwrap();
    let _ = watch.take_start();
    assert_eq!(registry.revision(), plus(start, 1));
    // A second watcher of the same type shares the feed and takes nothing.
    let _again = registry.watch("billing", None).unwrap();
    assert_eq!(registry.revision(), plus(start, 1));

    let registered = registry
        .register_with_ttl("billing", ip(1), 80, Metadata::new(), None)
        .unwrap();
    assert_eq!(next_change(&mut watch).revision, registered.revision);
    let updated = registry.update(registered.id, meta("1")).unwrap();
    let change = next_change(&mut watch);
    assert_eq!(change.revision, updated);
    assert!(matches!(&change.event, ChangeEvent::Updated(i) if i.id == registered.id));
    let removed = registry
        .remove(registered.id, RemoveReason::Expired)
        .unwrap();
    assert_eq!(next_change(&mut watch).revision, removed);
}

#[tokio::test(start_paused = true)]
async fn reached_answers_at_once_for_what_is_history_here() {
    let registry = registry();
    registry
        .register("billing", ip(1), 80, Metadata::new())
        .unwrap();
    let latest = registry.revision();
    let before = Instant::now();
    let wait = Duration::from_secs(60);
    assert!(registry.reached(latest, wait).await);
    assert!(registry.reached(Revision { seq: 0, ..latest }, wait).await);
    // Of an earlier run: whatever its count, it is history here.
    let earlier_run = Revision {
        incarnation: latest.incarnation.wrapping_add(1),
        seq: u64::MAX,
    };
    assert!(registry.reached(earlier_run, wait).await);
    assert_eq!(Instant::now(), before, "none of them waited");
}

#[tokio::test(start_paused = true)]
async fn reached_waits_for_a_change_and_wakes_on_it() {
    let registry = registry();
    let target = plus(registry.revision(), 2);
    let mut waiting = pin!(registry.reached(target, Duration::from_secs(60)));
    assert!(waiting.as_mut().now_or_never().is_none());

    let before = Instant::now();
    // One change is not enough; a change of any type counts.
    registry
        .register("billing", ip(1), 80, Metadata::new())
        .unwrap();
    assert!(waiting.as_mut().now_or_never().is_none());
    registry
        .register("search", ip(1), 80, Metadata::new())
        .unwrap();
    assert_eq!(waiting.as_mut().now_or_never(), Some(true));
    assert_eq!(Instant::now(), before, "woken by the change, not by time");
}

#[tokio::test(start_paused = true)]
async fn reached_wakes_a_task_waiting_forever() {
    let registry = registry();
    let target = plus(registry.revision(), 1);
    let waiter = tokio::spawn({
        let registry = registry.clone();
        async move { registry.reached(target, Duration::MAX).await }
    });
    // Let the waiter subscribe and sleep.
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    let id = registry
        .register("billing", ip(1), 80, Metadata::new())
        .unwrap();
    assert!(waiter.await.expect("the waiter did not panic"));
    assert!(registry.deregister(id).is_ok());
}

#[tokio::test(start_paused = true)]
async fn reached_gives_up_when_its_wait_passes() {
    let registry = registry();
    let target = plus(registry.revision(), 1);
    let wait = Duration::from_secs(3);
    let before = Instant::now();
    assert!(!registry.reached(target, wait).await);
    let waited = Instant::now().duration_since(before);
    assert!(
        waited >= wait && waited < wait + Duration::from_millis(10),
        "{waited:?}"
    );
    // A revision from the future of this run stays unreached.
    assert!(!registry.reached(plus(target, 1_000), Duration::ZERO).await);
}
