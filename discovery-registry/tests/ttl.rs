//! Each instance's own TTL, on tokio's paused clock: granted within the configuration's
//! bounds, kept by its slot, renewed by itself at every heartbeat, shown in its last
//! heartbeat, and independent of the TTLs of its neighbours.

mod common;

use common::settle;

use std::net::IpAddr;
use std::time::Duration;

use discovery_proto::{Instance, Metadata, RemoveReason};
use discovery_registry::{Error, Registered, Registry, RegistryConfig};
use tokio::time::advance;
use uuid::Uuid;

/// The configuration's TTL, for registers that ask for none.
const TTL: Duration = Duration::from_secs(5);
/// A TTL of an instance's own, longer than the configuration's.
const LONG: Duration = Duration::from_secs(30);
/// One of its own, shorter.
const SHORT: Duration = Duration::from_secs(2);
const MS: Duration = Duration::from_millis(1);

fn registry() -> Registry {
    Registry::new(RegistryConfig {
        ttl: TTL,
        ..RegistryConfig::default()
    })
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}

fn register(registry: &Registry, last: u8, ttl: Option<Duration>) -> Registered {
    registry
        .register_with_ttl("billing", ip(last), 80, Metadata::new(), ttl)
        .expect("valid")
}

fn ids(instances: &[Instance]) -> Vec<Uuid> {
    let mut ids: Vec<_> = instances.iter().map(|i| i.id).collect();
    ids.sort();
    ids
}

#[tokio::test(start_paused = true)]
async fn a_register_is_granted_the_ttl_it_asks_for_or_the_configurations() {
    let registry = registry();
    let own = register(&registry, 1, Some(LONG));
    assert_eq!(own.ttl, LONG);
    let default = register(&registry, 2, None);
    assert_eq!(default.ttl, TTL);
    assert_ne!(own.id, default.id);
    // The convenience is the configuration's TTL.
    let plain = registry
        .register("billing", ip(3), 80, Metadata::new())
        .unwrap();
    advance(TTL).await;
    settle(&registry).await;
    assert_eq!(ids(&registry.query("billing")), vec![own.id]);
    assert!(registry.heartbeat(plain).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_custom_ttl_expires_at_its_own_deadline_while_the_default_one_lives() {
    let registry = registry();
    let short = register(&registry, 1, Some(SHORT));
    let default = register(&registry, 2, None);

    advance(SHORT - MS).await;
    settle(&registry).await;
    assert_eq!(registry.query("billing").len(), 2);
    advance(MS).await;
    settle(&registry).await;
    // Freed by the task at its own deadline, with nobody asking.
    assert_eq!(registry.len(), 1);
    assert_eq!(ids(&registry.query("billing")), vec![default.id]);
    assert_eq!(
        registry.heartbeat(short.id),
        Err(Error::NotFound {
            reason: Some(RemoveReason::Expired)
        })
    );

    advance(TTL - SHORT - MS).await;
    settle(&registry).await;
    assert_eq!(ids(&registry.query("billing")), vec![default.id]);
    advance(MS).await;
    settle(&registry).await;
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_renews_by_the_instances_own_ttl() {
    let registry = registry();
    let long = register(&registry, 1, Some(LONG));
    let short = register(&registry, 2, Some(SHORT));

    advance(Duration::from_secs(1)).await;
    assert!(registry.heartbeat(long.id).is_ok());
    assert!(registry.heartbeat(short.id).is_ok());

    // The short one lives SHORT from its heartbeat, not the configuration's TTL.
    advance(SHORT - MS).await;
    settle(&registry).await;
    assert_eq!(registry.query("billing").len(), 2);
    advance(MS).await;
    settle(&registry).await;
    assert_eq!(ids(&registry.query("billing")), vec![long.id]);

    // The long one lives LONG from its heartbeat, far past the configuration's TTL.
    advance(LONG - SHORT - MS).await;
    settle(&registry).await;
    assert_eq!(ids(&registry.query("billing")), vec![long.id]);
    advance(MS).await;
    settle(&registry).await;
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_last_heartbeat_shown_is_derived_with_the_instances_own_ttl() {
    let registry = registry();
    let long = register(&registry, 1, Some(LONG));
    let short = register(&registry, 2, Some(SHORT));
    let shown = |id: Uuid| {
        registry
            .query("billing")
            .into_iter()
            .find(|i| i.id == id)
            .map(|i| i.last_heartbeat)
            .expect("listed")
    };
    let registered_at = shown(long.id);
    assert_eq!(shown(short.id), registered_at);

    advance(Duration::from_millis(1500)).await;
    assert!(registry.heartbeat(long.id).is_ok());
    assert!(registry.heartbeat(short.id).is_ok());
    let step = chrono::TimeDelta::milliseconds(1500);
    assert_eq!(shown(long.id) - registered_at, step);
    assert_eq!(shown(short.id) - registered_at, step);
}

#[tokio::test(start_paused = true)]
async fn a_ttl_outside_the_bounds_is_refused_and_the_bounds_are_allowed() {
    let registry = Registry::new(RegistryConfig {
        ttl: TTL,
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(60 * 60),
        ..RegistryConfig::default()
    });
    let refused = [Duration::from_millis(50), Duration::from_secs(60 * 60) + MS];
    for requested in refused {
        let error = registry
            .register_with_ttl("billing", ip(1), 80, Metadata::new(), Some(requested))
            .expect_err("out of bounds");
        assert_eq!(
            error,
            Error::InvalidTtl {
                requested,
                min: Duration::from_secs(1),
                max: Duration::from_secs(60 * 60),
            }
        );
    }
    assert!(registry.is_empty());
    let message = registry
        .register_with_ttl(
            "billing",
            ip(1),
            80,
            Metadata::new(),
            Some(Duration::from_millis(50)),
        )
        .expect_err("too short")
        .to_string();
    assert_eq!(message, "ttl 50ms is outside 1s..1h");

    for (last, bound) in [(1, Duration::from_secs(1)), (2, Duration::from_secs(3600))] {
        assert_eq!(register(&registry, last, Some(bound)).ttl, bound);
    }
    assert_eq!(registry.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_replacement_has_the_ttl_its_own_register_asked_for() {
    let registry = registry();
    let old = register(&registry, 1, Some(LONG));
    let new = register(&registry, 1, Some(SHORT));
    assert_eq!(
        registry.heartbeat(old.id),
        Err(Error::NotFound {
            reason: Some(RemoveReason::Replaced)
        })
    );
    advance(SHORT).await;
    settle(&registry).await;
    assert!(registry.is_empty(), "{new:?} expired after its own TTL");
}

#[tokio::test(start_paused = true)]
async fn a_short_ttl_registered_after_long_ones_still_expires_on_time() {
    // The new entry's deadline is earlier than every one filed before: the task, asleep
    // until the long deadline, must be woken for it.
    let registry = registry();
    register(&registry, 1, Some(LONG));
    settle(&registry).await;
    let short = register(&registry, 2, Some(SHORT));
    advance(SHORT).await;
    settle(&registry).await;
    assert_eq!(registry.len(), 1);
    assert!(registry.heartbeat(short.id).is_err());
}
