//! Updates in place, on tokio's paused clock: the instance keeps its id, endpoint and
//! deadline, its metadata is checked like a register's, and its watchers see one `Updated`
//! with the instance after the change.

mod common;

use common::settle;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use discovery_proto::{Instance, Metadata, RemoveReason};
use discovery_registry::{
    Change, ChangeEvent, Error, Lifetime, Registry, RegistryConfig, Subscription, WatchStart,
};
use futures_util::{FutureExt, StreamExt};
use tokio::time::advance;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);

fn registry() -> Registry {
    Registry::new(RegistryConfig {
        ttl: TTL,
        max_metadata_pairs: 2,
        ..RegistryConfig::default()
    })
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn watch(registry: &Registry) -> Subscription {
    let mut subscription = registry.watch("billing", None).expect("a valid type");
    assert!(matches!(
        subscription.take_start(),
        Some(WatchStart::Snapshot { .. })
    ));
    subscription
}

fn next(subscription: &mut Subscription) -> Arc<Change> {
    match subscription.next().now_or_never() {
        Some(Some(Ok(change))) => change,
        other => panic!("expected a change ready, got {other:?}"),
    }
}

fn nothing_more(subscription: &mut Subscription) {
    if let Some(item) = subscription.next().now_or_never() {
        panic!("expected no change, got {item:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_update_keeps_the_id_the_endpoint_and_the_deadline() {
    let registry = registry();
    let id = registry
        .register("billing", ip(1), 8080, meta(&[("version", "1")]))
        .unwrap();
    let before = registry.query("billing");

    advance(TTL - Duration::from_secs(1)).await;
    assert!(registry.update(id, meta(&[("version", "2")])).is_ok());
    let after = registry.query("billing");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, id);
    assert_eq!((after[0].ip, after[0].port), (ip(1), 8080));
    assert_eq!(after[0].metadata, meta(&[("version", "2")]));
    // Not a heartbeat: the last heartbeat shown and the deadline are the register's.
    assert_eq!(after[0].last_heartbeat, before[0].last_heartbeat);
    advance(Duration::from_secs(1) - MS).await;
    settle(&registry).await;
    assert_eq!(registry.query("billing").len(), 1);
    advance(MS).await;
    settle(&registry).await;
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_watcher_sees_the_whole_instance_after_the_update() {
    let registry = registry();
    let id = registry
        .register("billing", ip(1), 80, meta(&[("version", "1")]))
        .unwrap();
    let mut changes = watch(&registry);
    let revision = registry.update(id, meta(&[("version", "2")])).unwrap();
    let change = next(&mut changes);
    assert_eq!(change.revision, revision);
    match &change.event {
        ChangeEvent::Updated(instance) => {
            assert_eq!(instance, &registry.query("billing")[0]);
            assert_eq!(instance.metadata, meta(&[("version", "2")]));
        }
        other => panic!("expected Updated, got {other:?}"),
    }
    nothing_more(&mut changes);

    // The same metadata again is no change: no event, the latest revision.
    assert_eq!(
        registry.update(id, meta(&[("version", "2")])),
        Ok(registry.revision())
    );
    nothing_more(&mut changes);
}

#[tokio::test(start_paused = true)]
async fn an_update_is_checked_like_a_register() {
    let registry = registry();
    let id = registry
        .register("billing", ip(1), 80, meta(&[("version", "1")]))
        .unwrap();
    let mut changes = watch(&registry);
    let revision = registry.revision();
    let refused = [
        meta(&[("a", "1"), ("b", "2"), ("c", "3")]),
        meta(&[("", "empty key")]),
    ];
    for metadata in refused {
        assert!(matches!(
            registry.update(id, metadata),
            Err(Error::InvalidMetadata(_))
        ));
    }
    // Within every per-pair limit, but too large for one frame of a query answer.
    let registry_small_frames = Registry::new(RegistryConfig {
        max_frame_bytes: 1024,
        ..RegistryConfig::default()
    });
    let small = registry_small_frames
        .register("billing", ip(1), 80, Metadata::new())
        .unwrap();
    let large = meta(&[("a", &"x".repeat(500)), ("b", &"y".repeat(500))]);
    match registry_small_frames.update(small, large) {
        Err(Error::InvalidMetadata(message)) => assert!(message.contains("frame"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Nothing changed.
    assert_eq!(registry.revision(), revision);
    assert_eq!(
        registry.query("billing")[0].metadata,
        meta(&[("version", "1")])
    );
    nothing_more(&mut changes);
}

#[tokio::test(start_paused = true)]
async fn an_update_of_an_id_that_is_gone_is_not_found_with_its_reason() {
    let registry = registry();
    assert_eq!(
        registry.update(Uuid::new_v4(), Metadata::new()),
        Err(Error::NotFound { reason: None })
    );
    let id = registry
        .register("billing", ip(1), 80, Metadata::new())
        .unwrap();
    advance(TTL).await;
    assert_eq!(
        registry.update(id, Metadata::new()),
        Err(Error::NotFound {
            reason: Some(RemoveReason::Expired)
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_entry_is_updated_in_place_and_stays_held() {
    let registry = registry();
    let held = Instance {
        id: Uuid::from_u128(1),
        service_type: "billing".into(),
        ip: ip(1),
        port: 80,
        metadata: Metadata::new(),
        last_heartbeat: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
    };
    registry.upsert(held.clone(), Lifetime::Held).unwrap();
    let mut changes = watch(&registry);
    registry.update(held.id, meta(&[("zone", "a")])).unwrap();
    let expected = Instance {
        metadata: meta(&[("zone", "a")]),
        ..held
    };
    assert!(matches!(&next(&mut changes).event, ChangeEvent::Updated(i) if *i == expected));
    advance(TTL * 10).await;
    settle(&registry).await;
    assert_eq!(registry.query("billing"), vec![expected]);
}
