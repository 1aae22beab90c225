//! Changes learned from outside (a replicated catalogue): added, updated and removed under
//! the ids they have elsewhere, held or timed here, and reaching watchers as a client's do.

mod common;

use common::settle;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use discovery_registry::{
    Change, ChangeEvent, Error, Instance, Lifetime, Metadata, Registry, RegistryConfig,
    RemoveReason, Subscription, WatchStart,
};
use futures_util::{FutureExt, StreamExt};
use tokio::time::advance;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(5);

fn registry() -> Registry {
    Registry::new(RegistryConfig {
        ttl: TTL,
        max_instances: 2,
        ..RegistryConfig::default()
    })
}

fn instance(id: u128, last: u8, metadata: &[(&str, &str)]) -> Instance {
    Instance {
        id: Uuid::from_u128(id),
        service_type: "billing".into(),
        ip: IpAddr::from([10, 0, 0, last]),
        port: 80,
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        last_heartbeat: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
    }
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
    assert!(subscription.next().now_or_never().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_held_instance_lives_until_removed_and_shows_its_own_time() {
    let registry = registry();
    let mut changes = watch(&registry);
    let held = instance(1, 1, &[]);
    registry.upsert(held.clone(), Lifetime::Held).unwrap();
    assert!(matches!(&next(&mut changes).event, ChangeEvent::Added(i) if *i == held));

    advance(TTL * 10).await;
    settle(&registry).await;
    assert_eq!(registry.query("billing"), vec![held.clone()]);
    // A heartbeat here neither fails nor takes it over.
    assert!(registry.heartbeat(held.id).is_ok());
    advance(TTL * 10).await;
    settle(&registry).await;
    assert_eq!(registry.query("billing").len(), 1);
    nothing_more(&mut changes);

    assert!(registry.remove(held.id, RemoveReason::Expired).is_ok());
    match &next(&mut changes).event {
        ChangeEvent::Removed(i, RemoveReason::Expired) => assert_eq!(i.id, held.id),
        other => panic!("{other:?}"),
    }
    assert!(registry.is_empty());
    assert!(
        registry
            .remove(held.id, RemoveReason::Deregistered)
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_timed_instance_from_outside_expires_like_a_registered_one() {
    let registry = registry();
    let taken = instance(1, 1, &[]);
    registry.upsert(taken.clone(), Lifetime::Ttl(TTL)).unwrap();
    advance(TTL - Duration::from_millis(1)).await;
    assert!(registry.heartbeat(taken.id).is_ok());
    advance(TTL - Duration::from_millis(1)).await;
    assert_eq!(registry.query("billing").len(), 1);
    advance(Duration::from_millis(1)).await;
    settle(&registry).await;
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn held_and_timed_change_places_without_being_freed_early() {
    let registry = registry();
    let entry = instance(1, 1, &[]);
    registry.upsert(entry.clone(), Lifetime::Ttl(TTL)).unwrap();
    // Held before its deadline: the old deadline no longer counts.
    registry.upsert(entry.clone(), Lifetime::Held).unwrap();
    advance(TTL * 2).await;
    settle(&registry).await;
    assert_eq!(registry.len(), 1);
    // Timed again: one TTL from now.
    registry.upsert(entry.clone(), Lifetime::Ttl(TTL)).unwrap();
    advance(TTL - Duration::from_millis(1)).await;
    settle(&registry).await;
    assert_eq!(registry.len(), 1);
    advance(Duration::from_millis(1)).await;
    settle(&registry).await;
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_update_reaches_watchers_and_the_same_update_is_silent() {
    let registry = registry();
    let v1 = instance(1, 1, &[("version", "1")]);
    registry.upsert(v1.clone(), Lifetime::Held).unwrap();
    let mut changes = watch(&registry);

    registry.upsert(v1.clone(), Lifetime::Held).unwrap();
    nothing_more(&mut changes);

    let v2 = instance(1, 1, &[("version", "2")]);
    registry.upsert(v2.clone(), Lifetime::Held).unwrap();
    // One event: the instance after the change, under the same id.
    assert!(matches!(&next(&mut changes).event, ChangeEvent::Updated(i) if *i == v2));
    nothing_more(&mut changes);
    assert_eq!(registry.query("billing"), vec![v2]);
}

#[tokio::test(start_paused = true)]
async fn a_timed_instance_from_outside_keeps_the_ttl_it_was_granted() {
    let registry = registry();
    let long = TTL * 3;
    let taken = instance(1, 1, &[]);
    registry.upsert(taken.clone(), Lifetime::Ttl(long)).unwrap();
    advance(long - Duration::from_millis(1)).await;
    // A heartbeat here renews it by its own TTL, not the configuration's.
    assert!(registry.heartbeat(taken.id).is_ok());
    advance(long - Duration::from_millis(1)).await;
    settle(&registry).await;
    assert_eq!(registry.query("billing").len(), 1);
    advance(Duration::from_millis(1)).await;
    settle(&registry).await;
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_ttl_from_outside_is_checked_like_a_registers() {
    let registry = registry();
    let config = registry.config().clone();
    for requested in [
        config.min_ttl - Duration::from_millis(1),
        config.max_ttl + Duration::from_millis(1),
    ] {
        assert_eq!(
            registry.upsert(instance(1, 1, &[]), Lifetime::Ttl(requested)),
            Err(Error::InvalidTtl {
                requested,
                min: config.min_ttl,
                max: config.max_ttl,
            })
        );
    }
    assert!(registry.is_empty());
    for bound in [config.min_ttl, config.max_ttl] {
        registry
            .upsert(instance(1, 1, &[]), Lifetime::Ttl(bound))
            .expect("a bound is allowed");
    }
}

#[tokio::test(start_paused = true)]
async fn the_endpoint_rule_holds_for_changes_from_outside() {
    let registry = registry();
    let local = registry
        .register("billing", IpAddr::from([10, 0, 0, 1]), 80, Metadata::new())
        .unwrap();
    let mut changes = watch(&registry);
    // Another id at the same endpoint replaces the local entry.
    let remote = instance(7, 1, &[]);
    registry.upsert(remote.clone(), Lifetime::Held).unwrap();
    assert!(matches!(
        &next(&mut changes).event,
        ChangeEvent::Removed(i, RemoveReason::Replaced) if i.id == local
    ));
    assert!(matches!(&next(&mut changes).event, ChangeEvent::Added(i) if *i == remote));
    assert!(registry.heartbeat(local).is_err());

    // The same id at another endpoint moves.
    let moved = instance(7, 2, &[]);
    registry.upsert(moved.clone(), Lifetime::Held).unwrap();
    assert!(matches!(
        &next(&mut changes).event,
        ChangeEvent::Removed(i, RemoveReason::Replaced) if *i == remote
    ));
    assert!(matches!(&next(&mut changes).event, ChangeEvent::Added(i) if *i == moved));
    assert_eq!(registry.query("billing"), vec![moved]);
}

#[tokio::test(start_paused = true)]
async fn the_rules_hold_but_not_the_caps() {
    let registry = registry();
    let mut bad = instance(1, 1, &[]);
    bad.port = 0;
    assert_eq!(
        registry.upsert(bad, Lifetime::Held),
        Err(Error::InvalidPort)
    );
    let mut bad = instance(1, 1, &[]);
    bad.service_type = String::new();
    assert!(matches!(
        registry.upsert(bad, Lifetime::Held),
        Err(Error::InvalidServiceType(_))
    ));
    assert!(registry.is_empty());

    // A replica holds what exists, past the cap of two.
    for n in 1..=3 {
        registry
            .upsert(instance(n.into(), n, &[]), Lifetime::Held)
            .unwrap();
    }
    assert_eq!(registry.query("billing").len(), 3);
    // A client's register is still refused.
    assert!(matches!(
        registry.register("billing", IpAddr::from([10, 0, 0, 9]), 80, Metadata::new()),
        Err(Error::InstanceLimit { max: 2 })
    ));
}
