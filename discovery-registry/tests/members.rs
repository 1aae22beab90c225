//! Reading a type's instances in batches ([`Registry::members`], [`Registry::visit`]): what a
//! reader sees when the registry changes between its batches. Every instance live from the
//! copy to the end is listed exactly once; none is listed twice; none of another type; none
//! that went before its batch.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::ControlFlow;

use discovery_registry::members::BATCH;
use discovery_registry::{Metadata, Registry, RegistryConfig};
use uuid::Uuid;

fn ip(n: u32) -> IpAddr {
    IpAddr::from((0x0a00_0000 + n).to_be_bytes())
}

fn register(registry: &Registry, service_type: &str, n: u32) -> Uuid {
    registry
        .register(service_type, ip(n), 80, Metadata::new())
        .expect("valid and under the caps")
}

/// Reads one batch (at most `BATCH` slots) and returns the ids it listed.
fn batch(registry: &Registry, members: &mut discovery_registry::Members) -> (Vec<Uuid>, bool) {
    let mut ids = Vec::new();
    let more = registry.visit(members, |entry| {
        ids.push(entry.id);
        ControlFlow::Continue(())
    });
    (ids, more)
}

#[tokio::test(start_paused = true)]
async fn a_big_type_is_read_in_batches_each_instance_once() {
    let registry = Registry::new(RegistryConfig::default());
    let n = 3 * BATCH as u32 + 17;
    let ids: HashSet<Uuid> = (0..n).map(|i| register(&registry, "big", i)).collect();
    let mut members = registry.members("big");
    assert_eq!(members.remaining(), n as usize);
    assert_eq!(members.held_bytes(), 4 * n as usize);
    let mut seen = Vec::new();
    let mut batches = 0;
    loop {
        let (listed, more) = batch(&registry, &mut members);
        assert!(listed.len() <= BATCH);
        seen.extend(listed);
        batches += 1;
        if !more {
            break;
        }
    }
    assert_eq!(batches, 4);
    assert_eq!(seen.len(), n as usize);
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ids);
    assert!(members.is_done());
    assert_eq!(members.held_bytes(), 0, "the copy is given back once read");
    // The query reads the same way.
    assert_eq!(registry.query("big").len(), n as usize);
}

#[tokio::test(start_paused = true)]
async fn changes_between_batches_never_double_or_leak_an_instance() {
    let registry = Registry::new(RegistryConfig::default());
    let n = 4 * BATCH as u32;
    let mut live: HashMap<Uuid, u32> = (0..n).map(|i| (register(&registry, "big", i), i)).collect();
    let mut members = registry.members("big");
    let mut next = n;
    let mut removed = HashSet::new();
    let mut other_type = HashSet::new();
    let mut seen = Vec::new();
    let mut round = 0u32;
    loop {
        let (listed, more) = batch(&registry, &mut members);
        seen.extend(listed);
        if !more {
            break;
        }
        // Between batches: take away a slice of the instances (some read, some not), and
        // fill the freed slots with new instances of this type and of another.
        let victims: Vec<Uuid> = live.keys().copied().take(300).collect();
        for id in victims {
            registry.deregister(id).expect("live");
            live.remove(&id);
            removed.insert(id);
        }
        for _ in 0..150 {
            let id = register(&registry, "big", next);
            live.insert(id, next);
            next += 1;
            other_type.insert(register(&registry, "other", next));
            next += 1;
        }
        round += 1;
    }
    assert!(round >= 3);
    let unique: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no instance listed twice");
    assert!(
        unique.is_disjoint(&other_type),
        "no instance of another type"
    );
    // Whatever was listed was live when its batch read it: never one removed before.
    // (One removed after its batch is fine, and is its change's business.)
    // Every instance live from the copy to the end is listed.
    let first: HashSet<Uuid> = registry
        .query("big")
        .into_iter()
        .map(|instance| instance.id)
        .filter(|id| live.get(id).is_some_and(|&n_of| n_of < n))
        .collect();
    assert!(
        first.is_subset(&unique),
        "every instance live throughout is listed"
    );
    for id in &unique {
        assert!(
            live.contains_key(id) || removed.contains(id),
            "listed ids are instances of the type"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_type_gone_and_made_again_between_batches_lists_nothing_more_of_the_old_copy() {
    let registry = Registry::new(RegistryConfig::default());
    let ids: Vec<Uuid> = (0..2 * BATCH as u32)
        .map(|i| register(&registry, "t", i))
        .collect();
    let mut members = registry.members("t");
    let (first, more) = batch(&registry, &mut members);
    assert_eq!(first.len(), BATCH);
    assert!(more);
    for id in ids {
        registry.deregister(id).expect("live");
    }
    // The type is made again; its new instances take the old slots.
    let again: Vec<Uuid> = (0..BATCH as u32)
        .map(|i| register(&registry, "t", i))
        .collect();
    let (rest, more) = batch(&registry, &mut members);
    assert!(!more);
    assert!(
        rest.is_empty(),
        "{} of another incarnation of the type",
        rest.len()
    );
    assert_eq!(registry.query("t").len(), again.len());
}

#[tokio::test(start_paused = true)]
async fn an_unknown_type_has_no_members() {
    let registry = Registry::new(RegistryConfig::default());
    let mut members = registry.members("nobody");
    assert!(members.is_done());
    assert!(!registry.visit(&mut members, |_| ControlFlow::Continue(())));
    assert!(registry.instances(members).is_empty());
}
