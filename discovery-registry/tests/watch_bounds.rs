//! The watch feeds are bounded in count and in bytes (issue 15, finding 1): a flood of
//! watches of new types, or of changes with large metadata, holds the feeds at their caps,
//! and a refused watch costs nothing.

use std::net::IpAddr;
use std::time::Duration;

use discovery_registry::{Error, Metadata, Registry, RegistryConfig, WatchStart};
use futures_util::{FutureExt, StreamExt};

fn ip(n: u32) -> IpAddr {
    IpAddr::from((0x0a00_0000 + n).to_be_bytes())
}

#[tokio::test(start_paused = true)]
async fn watching_more_types_than_the_cap_makes_room_from_windowed_feeds_or_is_refused() {
    let registry = Registry::new(RegistryConfig {
        max_watched_types: 8,
        ..RegistryConfig::default()
    });
    // A flood of Watch+Unwatch of new names: the windowed feeds make room, oldest first.
    for n in 0..1_000 {
        let watch = registry.watch(&format!("type-{n}"), None).expect("room");
        drop(watch);
        assert!(registry.watched_types() <= 8);
    }
    assert_eq!(registry.watched_types(), 8);
    // Watched ones are kept: with 8 held open, a ninth type is refused.
    let held: Vec<_> = (0..8)
        .map(|n| registry.watch(&format!("held-{n}"), None).expect("room"))
        .collect();
    let bytes = registry.watch_bytes();
    let revision = registry.revision();
    assert_eq!(
        registry.watch("one-more", None).map(drop),
        Err(Error::WatchedTypeLimit { max: 8 })
    );
    // Nothing was made for the refused one.
    assert_eq!(registry.watched_types(), 8);
    assert_eq!(registry.watch_bytes(), bytes);
    assert_eq!(registry.revision(), revision);
    // A type already fed can always be watched again.
    let again = registry.watch("held-3", None).expect("an existing feed");
    drop((held, again));
}

#[tokio::test(start_paused = true)]
async fn the_feeds_bytes_stay_under_the_bound_and_a_watcher_that_lost_changes_is_reset() {
    let max_watch_bytes = 1 << 20;
    let registry = Registry::new(RegistryConfig {
        max_watch_bytes,
        ttl: Duration::from_secs(3600),
        ..RegistryConfig::default()
    });
    let mut slow = registry.watch("big", None).expect("watch");
    let _ = slow.take_start();
    let mut others: Vec<_> = (0..4)
        .map(|n| registry.watch(&format!("other-{n}"), None).expect("watch"))
        .collect();
    // 1,000 changes of about 20 KiB each: 20 MB, twenty times the bound.
    let metadata: Metadata = (0..40)
        .map(|k| (format!("key-{k:03}"), "v".repeat(500)))
        .collect();
    for n in 0..1_000 {
        registry
            .register("big", ip(n), 80, metadata.clone())
            .expect("valid");
        assert!(
            registry.watch_bytes() <= max_watch_bytes,
            "{} bytes held",
            registry.watch_bytes()
        );
    }
    // The watcher's next changes were dropped: it is told to reset, and a reset has it all.
    match slow.next().now_or_never() {
        Some(Some(Err(lagged))) => assert!(lagged.missed > 0),
        other => panic!("expected a lag, got {other:?}"),
    }
    let mut fresh = registry.resubscribe(&slow).expect("resubscribe");
    drop(slow);
    match fresh.take_start() {
        Some(WatchStart::Snapshot { members, reset, .. }) => {
            assert!(reset);
            assert_eq!(registry.instances(members).len(), 1_000);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    // The other feeds still work.
    registry
        .register("other-0", ip(5_000), 80, Metadata::new())
        .expect("valid");
    let _ = others[0].take_start();
    assert!(matches!(others[0].next().now_or_never(), Some(Some(Ok(_)))));
    others.clear();
}

#[tokio::test(start_paused = true)]
async fn a_feed_whose_fixed_cost_would_pass_the_bytes_bound_is_refused() {
    let registry = Registry::new(RegistryConfig {
        max_watch_bytes: 1 << 20,
        max_watched_types: 1_000_000,
        ..RegistryConfig::default()
    });
    let mut held = Vec::new();
    let refused = loop {
        match registry.watch(&format!("t-{:0>200}", held.len()), None) {
            Ok(watch) => held.push(watch),
            Err(e) => break e,
        }
        assert!(held.len() < 100_000, "never refused");
    };
    assert_eq!(refused, Error::WatchBytesLimit { max: 1 << 20 });
    assert!(registry.watch_bytes() <= 1 << 20);
    // Leaving one makes room for another, once its window passes.
    drop(held.pop());
    tokio::time::advance(RegistryConfig::default().watch_window).await;
    registry.expire_due_now();
    assert!(registry.watch("fits-now", None).is_ok());
}
