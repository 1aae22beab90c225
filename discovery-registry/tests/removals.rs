//! Why an id is gone, on tokio's paused clock: every way an instance leaves is remembered
//! with its reason, for one `max_ttl` and within `remembered_removals`, and a heartbeat,
//! update, deregister or remove of the id answers `NotFound` with it.

mod common;

use common::settle;

use std::net::IpAddr;
use std::time::Duration;

use chrono::Utc;
use discovery_proto::{Instance, Metadata, RemoveReason};
use discovery_registry::{Error, Lifetime, Registry, RegistryConfig};
use tokio::time::advance;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(5);
const MAX_TTL: Duration = Duration::from_secs(60);

fn registry_with(remembered_removals: usize) -> Registry {
    Registry::new(RegistryConfig {
        ttl: TTL,
        max_ttl: MAX_TTL,
        remembered_removals,
        ..RegistryConfig::default()
    })
}

fn registry() -> Registry {
    registry_with(100)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}

fn register(registry: &Registry, last: u8) -> Uuid {
    registry
        .register("billing", ip(last), 80, Metadata::new())
        .expect("valid")
}

fn gone(reason: RemoveReason) -> Error {
    Error::NotFound {
        reason: Some(reason),
    }
}

const NEVER_SEEN: Error = Error::NotFound { reason: None };

/// Every call about an id that is gone gives the same answer.
fn assert_gone(registry: &Registry, id: Uuid, expected: &Error) {
    assert_eq!(registry.heartbeat(id).as_ref(), Err(expected));
    assert_eq!(registry.update(id, Metadata::new()).as_ref(), Err(expected));
    assert_eq!(registry.deregister(id).as_ref(), Err(expected));
    assert_eq!(
        registry.remove(id, RemoveReason::Expired).as_ref(),
        Err(expected)
    );
}

#[tokio::test(start_paused = true)]
async fn a_deregistered_id_says_so() {
    let registry = registry();
    let id = register(&registry, 1);
    assert!(registry.deregister(id).is_ok());
    assert_gone(&registry, id, &gone(RemoveReason::Deregistered));
    assert_eq!(
        gone(RemoveReason::Deregistered).to_string(),
        "no such instance (deregistered)"
    );
}

#[tokio::test(start_paused = true)]
async fn an_id_the_task_expired_says_so() {
    let registry = registry();
    let id = register(&registry, 1);
    advance(TTL).await;
    settle(&registry).await;
    assert!(registry.is_empty());
    assert_gone(&registry, id, &gone(RemoveReason::Expired));
}

#[tokio::test(start_paused = true)]
async fn an_expiry_noticed_by_a_heartbeat_or_a_deregister_is_remembered_too() {
    // Past the deadline, whether or not the task has run: the first call frees the entry
    // and says it expired, and so does every call after it.
    let registry = registry();
    let by_heartbeat = register(&registry, 1);
    let by_deregister = register(&registry, 2);
    let by_update = register(&registry, 3);
    advance(TTL).await;
    assert_eq!(
        registry.heartbeat(by_heartbeat),
        Err(gone(RemoveReason::Expired))
    );
    assert_eq!(
        registry.deregister(by_deregister),
        Err(gone(RemoveReason::Expired))
    );
    assert_eq!(
        registry.update(by_update, Metadata::new()),
        Err(gone(RemoveReason::Expired))
    );
    for id in [by_heartbeat, by_deregister, by_update] {
        assert_gone(&registry, id, &gone(RemoveReason::Expired));
    }
}

#[tokio::test(start_paused = true)]
async fn a_replaced_id_says_so() {
    let registry = registry();
    let old = register(&registry, 1);
    let new = register(&registry, 1);
    assert_gone(&registry, old, &gone(RemoveReason::Replaced));
    assert_eq!(
        gone(RemoveReason::Replaced).to_string(),
        "no such instance (replaced)"
    );
    // Replaced by a change from outside: another id at the same endpoint.
    let remote = Instance {
        id: Uuid::from_u128(7),
        service_type: "billing".into(),
        ip: ip(1),
        port: 80,
        metadata: Metadata::new(),
        last_heartbeat: Utc::now(),
    };
    registry.upsert(remote, Lifetime::Held).unwrap();
    assert_gone(&registry, new, &gone(RemoveReason::Replaced));
}

#[tokio::test(start_paused = true)]
async fn an_expired_entry_taken_over_by_a_register_expired_rather_than_was_replaced() {
    // The entry's deadline had passed when the register came: the answer about it must
    // not depend on whether the task had freed it in between.
    let registry = registry();
    let old = register(&registry, 1);
    advance(TTL).await;
    register(&registry, 1);
    assert_gone(&registry, old, &gone(RemoveReason::Expired));
}

#[tokio::test(start_paused = true)]
async fn a_removal_from_outside_keeps_its_reason() {
    let registry = registry();
    let replaced = register(&registry, 1);
    let deregistered = register(&registry, 2);
    assert!(registry.remove(replaced, RemoveReason::Replaced).is_ok());
    assert!(
        registry
            .remove(deregistered, RemoveReason::Deregistered)
            .is_ok()
    );
    assert_gone(&registry, replaced, &gone(RemoveReason::Replaced));
    assert_gone(&registry, deregistered, &gone(RemoveReason::Deregistered));
}

#[tokio::test(start_paused = true)]
async fn an_id_never_seen_has_no_reason() {
    let registry = registry();
    assert_gone(&registry, Uuid::new_v4(), &NEVER_SEEN);
    assert_eq!(NEVER_SEEN.to_string(), "no such instance");
}

#[tokio::test(start_paused = true)]
async fn a_removal_is_forgotten_after_max_ttl() {
    let registry = registry();
    let id = register(&registry, 1);
    assert!(registry.deregister(id).is_ok());
    advance(MAX_TTL - Duration::from_millis(1)).await;
    assert_gone(&registry, id, &gone(RemoveReason::Deregistered));
    advance(Duration::from_millis(1)).await;
    assert_gone(&registry, id, &NEVER_SEEN);
}

#[tokio::test(start_paused = true)]
async fn only_the_latest_removals_are_remembered() {
    let registry = registry_with(3);
    let ids: Vec<Uuid> = (1..=5).map(|last| register(&registry, last)).collect();
    for &id in &ids {
        assert!(registry.deregister(id).is_ok());
    }
    for &id in &ids[..2] {
        assert_gone(&registry, id, &NEVER_SEEN);
    }
    for &id in &ids[2..] {
        assert_gone(&registry, id, &gone(RemoveReason::Deregistered));
    }
}

#[tokio::test(start_paused = true)]
async fn remembering_none_is_allowed() {
    let registry = registry_with(0);
    let id = register(&registry, 1);
    assert!(registry.deregister(id).is_ok());
    assert_gone(&registry, id, &NEVER_SEEN);
}
