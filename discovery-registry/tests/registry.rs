//! The registry on its own, on tokio's paused clock: TTL boundaries, heartbeats, expiry
//! with nobody asking, replacement, validation, the caps, and the end of the expiry task.

mod common;

use common::settle;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use discovery_proto::{Instance, Metadata};
use discovery_registry::{Error, Registry, RegistryConfig};
use tokio::time::advance;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);

/// Small limits, so that every boundary is cheap to reach.
fn small_config() -> RegistryConfig {
    RegistryConfig {
        ttl: TTL,
        max_instances: 4,
        max_instances_per_type: 2,
        max_type_bytes: 8,
        max_metadata_pairs: 2,
        max_metadata_key_bytes: 4,
        max_metadata_value_bytes: 6,
        ..RegistryConfig::default()
    }
}

fn registry() -> Registry {
    Registry::new(RegistryConfig {
        ttl: TTL,
        ..RegistryConfig::default()
    })
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ids(instances: &[Instance]) -> Vec<Uuid> {
    let mut ids: Vec<_> = instances.iter().map(|i| i.id).collect();
    ids.sort();
    ids
}

#[tokio::test(start_paused = true)]
async fn live_until_one_ms_before_the_ttl_and_gone_at_it() {
    let registry = registry();
    let id = registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();

    advance(TTL - MS).await;
    let listed = registry.query("billing");
    assert_eq!(ids(&listed), vec![id]);
    assert_eq!(listed[0].service_type, "billing");
    assert_eq!(listed[0].ip, ip(1));
    assert_eq!(listed[0].port, 8080);

    advance(MS).await;
    assert!(registry.query("billing").is_empty());
    assert!(registry.heartbeat(id).is_err());
    assert!(registry.deregister(id).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_extends_the_deadline() {
    let registry = registry();
    let id = registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();

    advance(Duration::from_secs(3)).await;
    assert!(registry.heartbeat(id).is_ok());

    // The old deadline passes: still live, still held.
    advance(Duration::from_secs(2)).await;
    settle(&registry).await;
    assert_eq!(ids(&registry.query("billing")), vec![id]);
    assert_eq!(registry.len(), 1);

    // One ms before the new deadline (3 s + TTL), then at it.
    advance(Duration::from_secs(3) - MS).await;
    assert_eq!(ids(&registry.query("billing")), vec![id]);
    advance(MS).await;
    assert!(registry.query("billing").is_empty());
    assert!(registry.heartbeat(id).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_updates_the_wall_clock_time() {
    let registry = registry();
    let id = registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    let before = registry.query("billing")[0].last_heartbeat;
    assert!(registry.heartbeat(id).is_ok());
    let after = registry.query("billing")[0].last_heartbeat;
    assert!(after >= before);
}

#[tokio::test(start_paused = true)]
async fn an_expired_entry_is_freed_with_no_query() {
    let registry = registry();
    registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    registry
        .register("search", ip(2), 8080, Metadata::new())
        .unwrap();
    assert_eq!(registry.len(), 2);

    advance(TTL - MS).await;
    settle(&registry).await;
    assert_eq!(registry.len(), 2);

    advance(MS).await;
    settle(&registry).await;
    assert_eq!(registry.len(), 0);
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn expiry_by_sleeping_frees_the_entry() {
    // The other way a test, or a server, lets time pass: the runtime jumps to the deadline.
    let registry = registry();
    registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    tokio::time::sleep(TTL).await;
    settle(&registry).await;
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn entries_registered_later_expire_later() {
    let registry = registry();
    let first = registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    advance(Duration::from_secs(2)).await;
    let second = registry
        .register("billing", ip(2), 8080, Metadata::new())
        .unwrap();

    advance(TTL - Duration::from_secs(2)).await;
    settle(&registry).await;
    assert_eq!(ids(&registry.query("billing")), vec![second]);
    assert_eq!(registry.len(), 1);
    assert!(registry.heartbeat(first).is_err());

    advance(Duration::from_secs(2)).await;
    settle(&registry).await;
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_register_after_the_index_emptied_wakes_the_task() {
    let registry = registry();
    registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    advance(TTL).await;
    settle(&registry).await;
    assert!(registry.is_empty());

    // The task now waits with nothing filed; a new entry must still be freed on time.
    registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    advance(TTL).await;
    settle(&registry).await;
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_heartbeated_entry_is_filed_again_not_freed_at_its_old_deadline() {
    let registry = registry();
    let id = registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();

    // Heartbeat just before each deadline, for several TTLs: each time the task finds the
    // filed deadline due it must file the entry again rather than free it.
    for _ in 0..4 {
        advance(TTL - MS).await;
        settle(&registry).await;
        assert!(registry.heartbeat(id).is_ok());
        assert_eq!(registry.len(), 1);
    }
    advance(TTL - MS).await;
    settle(&registry).await;
    assert_eq!(registry.len(), 1);
    assert_eq!(ids(&registry.query("billing")), vec![id]);

    advance(MS).await;
    settle(&registry).await;
    assert_eq!(registry.len(), 0);
    assert!(registry.heartbeat(id).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_for_an_expired_entry_frees_it() {
    let registry = registry();
    let id = registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    advance(TTL).await;
    // Whether or not the task has run yet, the answer and the memory are the same.
    assert!(registry.heartbeat(id).is_err());
    assert_eq!(registry.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_same_endpoint_replaces_the_older_entry() {
    let registry = registry();
    let old = registry
        .register("billing", ip(1), 8080, meta(&[("v", "1")]))
        .unwrap();
    advance(Duration::from_secs(1)).await;
    let new = registry
        .register("billing", ip(1), 8080, meta(&[("v", "2")]))
        .unwrap();
    assert_ne!(old, new);

    assert!(registry.heartbeat(old).is_err());
    assert!(registry.deregister(old).is_err());
    let listed = registry.query("billing");
    assert_eq!(ids(&listed), vec![new]);
    assert_eq!(listed[0].metadata, meta(&[("v", "2")]));
    assert_eq!(registry.len(), 1);

    // The replacement has its own deadline, not the older entry's.
    advance(TTL - MS).await;
    settle(&registry).await;
    assert_eq!(ids(&registry.query("billing")), vec![new]);
    assert!(registry.heartbeat(new).is_ok());
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_is_type_ip_and_port() {
    let registry = registry();
    let a = registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    let b = registry
        .register("billing", ip(1), 8081, Metadata::new())
        .unwrap();
    let c = registry
        .register("billing", ip(2), 8080, Metadata::new())
        .unwrap();
    let d = registry
        .register("search", ip(1), 8080, Metadata::new())
        .unwrap();
    assert_eq!(registry.len(), 4);
    let mut billing = vec![a, b, c];
    billing.sort();
    assert_eq!(ids(&registry.query("billing")), billing);
    assert_eq!(ids(&registry.query("search")), vec![d]);
    assert!(registry.query("missing").is_empty());
    // Types are compared exactly.
    assert!(registry.query("Billing").is_empty());
}

#[tokio::test(start_paused = true)]
async fn deregister_frees_at_once() {
    let registry = registry();
    let id = registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    assert!(registry.deregister(id).is_ok());
    assert_eq!(registry.len(), 0);
    assert!(registry.query("billing").is_empty());
    assert!(registry.deregister(id).is_err());
    assert!(registry.heartbeat(id).is_err());
    assert!(registry.deregister(Uuid::new_v4()).is_err());
    assert!(registry.heartbeat(Uuid::new_v4()).is_err());

    // Its deadline coming due later finds nothing to do, and later entries are unaffected.
    let other = registry
        .register("billing", ip(2), 8080, Metadata::new())
        .unwrap();
    advance(TTL - MS).await;
    settle(&registry).await;
    assert_eq!(ids(&registry.query("billing")), vec![other]);
}

#[tokio::test(start_paused = true)]
async fn deregister_of_an_expired_entry_is_not_found() {
    let registry = registry();
    let id = registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    advance(TTL).await;
    assert!(registry.deregister(id).is_err());
    assert_eq!(registry.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn many_entries_due_at_once_are_all_freed() {
    // More than one batch of the expiry task.
    let registry = Registry::new(RegistryConfig {
        ttl: TTL,
        ..RegistryConfig::default()
    });
    for n in 0..5000u32 {
        let [_, _, hi, lo] = n.to_be_bytes();
        let ip = IpAddr::V4(Ipv4Addr::new(10, 1, hi, lo));
        registry.register("bulk", ip, 80, Metadata::new()).unwrap();
    }
    assert_eq!(registry.len(), 5000);
    assert_eq!(registry.query("bulk").len(), 5000);
    advance(TTL).await;
    settle(&registry).await;
    assert!(registry.is_empty());
    assert!(registry.query("bulk").is_empty());
}

#[tokio::test(start_paused = true)]
async fn service_type_rules() {
    let registry = Registry::new(small_config());
    let register = |t: &str| registry.register(t, ip(1), 80, Metadata::new());

    assert!(matches!(register(""), Err(Error::InvalidServiceType(_))));
    assert!(register("a").is_ok());
    assert!(register("12345678").is_ok(), "exactly max_type_bytes");
    assert!(matches!(
        register("123456789"),
        Err(Error::InvalidServiceType(_))
    ));
    // The limit is in bytes, not characters: four 2-byte characters fit, five do not.
    assert!(register("éééé").is_ok());
    assert!(matches!(
        register("ééééé"),
        Err(Error::InvalidServiceType(_))
    ));
    for bad in ["a\nb", "\0", "tab\t", "del\u{7f}", "c1\u{85}"] {
        assert!(
            matches!(register(bad), Err(Error::InvalidServiceType(_))),
            "{bad:?}"
        );
    }
    // Spaces and punctuation are not control characters.
    assert!(register("a b.c-d").is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_error_says_why() {
    let registry = Registry::new(small_config());
    let err = registry
        .register("123456789", ip(1), 80, Metadata::new())
        .unwrap_err();
    assert!(err.to_string().contains("9 bytes"), "{err}");
    let err = registry
        .register("a\u{7}", ip(1), 80, Metadata::new())
        .unwrap_err();
    assert!(err.to_string().contains("control"), "{err}");
    let err = registry
        .register("a", ip(1), 80, meta(&[("long!", "")]))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"long!\"") && text.contains("key limit of 4"),
        "{text}"
    );
    let err = registry
        .register("a", ip(1), 80, meta(&[("k", "1234567")]))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"k\"") && text.contains("value limit of 6"),
        "{text}"
    );
    // A huge key is quoted only in part.
    let huge = "x".repeat(10_000);
    let err = registry
        .register("a", ip(1), 80, meta(&[(&huge, "")]))
        .unwrap_err();
    assert!(err.to_string().len() < 200, "{err}");
}

#[tokio::test(start_paused = true)]
async fn address_rules() {
    let registry = registry();
    let register = |ip: IpAddr| registry.register("billing", ip, 80, Metadata::new());
    let refused = [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)),
        IpAddr::V6("ff02::1".parse().unwrap()),
        IpAddr::V4(Ipv4Addr::BROADCAST),
        // The same, in IPv4-mapped IPv6 form.
        IpAddr::V6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped()),
        IpAddr::V6(Ipv4Addr::BROADCAST.to_ipv6_mapped()),
        IpAddr::V6(Ipv4Addr::new(224, 0, 0, 1).to_ipv6_mapped()),
    ];
    for ip in refused {
        match register(ip) {
            Err(Error::InvalidAddress(bad)) => assert_eq!(bad, ip),
            other => panic!("{ip}: {other:?}"),
        }
    }
    let accepted = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 255)),
        IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)),
        IpAddr::V4(Ipv4Addr::new(223, 255, 255, 255)),
        IpAddr::V4(Ipv4Addr::new(240, 0, 0, 1)),
        IpAddr::V6("2001:db8::1".parse().unwrap()),
        IpAddr::V6("fe80::1".parse().unwrap()),
        IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
    ];
    for ip in accepted {
        assert!(register(ip).is_ok(), "{ip}");
    }
    assert_eq!(registry.len(), accepted.len());
}

#[tokio::test(start_paused = true)]
async fn port_rules() {
    let registry = registry();
    assert!(matches!(
        registry.register("billing", ip(1), 0, Metadata::new()),
        Err(Error::InvalidPort)
    ));
    assert!(
        registry
            .register("billing", ip(1), 1, Metadata::new())
            .is_ok()
    );
    assert!(
        registry
            .register("billing", ip(1), 65535, Metadata::new())
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn metadata_rules() {
    let registry = Registry::new(small_config());
    let register = |m: Metadata| registry.register("billing", ip(1), 80, m);
    let invalid = |r: Result<Uuid, Error>| matches!(r, Err(Error::InvalidMetadata(_)));

    assert!(register(Metadata::new()).is_ok());
    // Pairs: exactly the maximum, then one more.
    assert!(register(meta(&[("a", "1"), ("b", "2")])).is_ok());
    assert!(invalid(register(meta(&[
        ("a", "1"),
        ("b", "2"),
        ("c", "3")
    ]))));
    // Keys: empty, exactly the maximum, one byte more.
    assert!(invalid(register(meta(&[("", "1")]))));
    assert!(register(meta(&[("abcd", "1")])).is_ok());
    assert!(invalid(register(meta(&[("abcde", "1")]))));
    // Values: empty is fine, exactly the maximum, one byte more.
    assert!(register(meta(&[("a", "")])).is_ok());
    assert!(register(meta(&[("a", "123456")])).is_ok());
    assert!(invalid(register(meta(&[("a", "1234567")]))));
    // Bytes, not characters.
    assert!(register(meta(&[("éé", "ééé")])).is_ok());
    assert!(invalid(register(meta(&[("ééé", "")]))));
    assert!(invalid(register(meta(&[("a", "éééé")]))));

    // A refused register leaves nothing behind, and the last accepted one is what is listed.
    assert_eq!(registry.len(), 1);
    assert_eq!(
        registry.query("billing")[0].metadata,
        meta(&[("éé", "ééé")])
    );
}

#[tokio::test(start_paused = true)]
async fn the_per_type_cap() {
    let registry = Registry::new(small_config());
    registry.register("a", ip(1), 80, Metadata::new()).unwrap();
    registry.register("a", ip(2), 80, Metadata::new()).unwrap();
    match registry.register("a", ip(3), 80, Metadata::new()) {
        Err(Error::TypeLimit { service_type, max }) => {
            assert_eq!(service_type, "a");
            assert_eq!(max, 2);
        }
        other => panic!("{other:?}"),
    }
    // Another type still has room, and a replacement in the full type is not refused.
    registry.register("b", ip(3), 80, Metadata::new()).unwrap();
    let replaced = registry.register("a", ip(2), 80, Metadata::new()).unwrap();
    assert_eq!(registry.len(), 3);
    // Deregistering makes room at once.
    assert!(registry.deregister(replaced).is_ok());
    registry.register("a", ip(3), 80, Metadata::new()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_total_cap() {
    let registry = Registry::new(small_config());
    let first = registry.register("a", ip(1), 80, Metadata::new()).unwrap();
    registry.register("a", ip(2), 80, Metadata::new()).unwrap();
    registry.register("b", ip(1), 80, Metadata::new()).unwrap();
    registry.register("c", ip(1), 80, Metadata::new()).unwrap();
    match registry.register("d", ip(1), 80, Metadata::new()) {
        Err(Error::InstanceLimit { max }) => assert_eq!(max, 4),
        other => panic!("{other:?}"),
    }
    // Checked before the per-type cap, which "a" has reached too.
    assert!(matches!(
        registry.register("a", ip(3), 80, Metadata::new()),
        Err(Error::InstanceLimit { .. })
    ));
    // Replacing does not grow the count, so it is not refused.
    registry.register("c", ip(1), 80, Metadata::new()).unwrap();
    registry.register("a", ip(1), 80, Metadata::new()).unwrap();
    assert!(registry.heartbeat(first).is_err());
    assert_eq!(registry.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn expired_entries_do_not_count_against_the_caps() {
    let registry = Registry::new(small_config());
    for (t, last) in [("a", 1), ("a", 2), ("b", 1), ("b", 2)] {
        registry.register(t, ip(last), 80, Metadata::new()).unwrap();
    }
    // No settling: whether the task has freed them yet or not, they are not live.
    advance(TTL).await;
    registry.register("a", ip(5), 80, Metadata::new()).unwrap();
    registry.register("a", ip(6), 80, Metadata::new()).unwrap();
    registry.register("c", ip(1), 80, Metadata::new()).unwrap();
    registry.register("c", ip(2), 80, Metadata::new()).unwrap();
    assert_eq!(registry.len(), 4);
    assert!(matches!(
        registry.register("d", ip(1), 80, Metadata::new()),
        Err(Error::InstanceLimit { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_zero_cap_refuses_everything() {
    let registry = Registry::new(RegistryConfig {
        max_instances: 0,
        ..small_config()
    });
    assert!(matches!(
        registry.register("a", ip(1), 80, Metadata::new()),
        Err(Error::InstanceLimit { max: 0 })
    ));
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_enormous_ttl_does_not_overflow() {
    let registry = Registry::new(RegistryConfig {
        ttl: Duration::MAX,
        ..RegistryConfig::default()
    });
    let id = registry
        .register("billing", ip(1), 80, Metadata::new())
        .unwrap();
    advance(Duration::from_secs(365 * 24 * 60 * 60)).await;
    settle(&registry).await;
    assert!(registry.heartbeat(id).is_ok());
    assert_eq!(registry.config().ttl, Duration::MAX);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_registry() {
    let registry = registry();
    let clone = registry.clone();
    let id = clone
        .register("billing", ip(1), 80, Metadata::new())
        .unwrap();
    assert_eq!(ids(&registry.query("billing")), vec![id]);
    assert_eq!(
        registry.config(),
        &RegistryConfig {
            ttl: TTL,
            ..RegistryConfig::default()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn the_expiry_task_ends_with_the_last_handle() {
    let metrics = tokio::runtime::Handle::current().metrics();
    assert_eq!(metrics.num_alive_tasks(), 0);

    let registry = registry();
    registry
        .register("billing", ip(1), 80, Metadata::new())
        .unwrap();
    let clone = registry.clone();
    settle(&registry).await;
    assert_eq!(metrics.num_alive_tasks(), 1);

    // One handle left: the task goes on, and still expires entries.
    drop(registry);
    settle(&clone).await;
    assert_eq!(metrics.num_alive_tasks(), 1);
    advance(TTL).await;
    settle(&clone).await;
    assert!(clone.is_empty());
    assert_eq!(metrics.num_alive_tasks(), 1);

    // The last handle goes, with an entry filed (the task sleeping on a deadline).
    clone
        .register("billing", ip(1), 80, Metadata::new())
        .unwrap();
    settle(&clone).await;
    drop(clone);
    tasks_end().await;
}

#[tokio::test(start_paused = true)]
async fn the_expiry_task_ends_when_dropped_idle() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let registry = registry();
    settle(&registry).await;
    assert_eq!(metrics.num_alive_tasks(), 1);
    drop(registry);
    tasks_end().await;
}

/// Waits for every task of the runtime to end: the expiry task, woken by the drop of the
/// last handle, ends the next time it runs.
async fn tasks_end() {
    let metrics = tokio::runtime::Handle::current().metrics();
    // Each round lets every ready task run once; the bound only turns a task that never
    // ends into a failure instead of a hang.
    for _ in 0..10_000 {
        if metrics.num_alive_tasks() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{} tasks still alive", metrics.num_alive_tasks());
}

#[test]
fn the_handle_is_send_sync_and_cheap_to_share() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Registry>();
}

#[test]
#[should_panic]
fn new_outside_a_runtime_panics() {
    let _ = Registry::new(RegistryConfig::default());
}

#[tokio::test(start_paused = true)]
async fn a_watch_after_a_mass_expiry_starts_from_what_is_live() {
    let registry = registry();
    for n in 0..3_000u32 {
        registry
            .register(
                "billing",
                IpAddr::from((0x0a00_0000 + n).to_be_bytes()),
                80,
                Metadata::new(),
            )
            .unwrap();
    }
    advance(TTL).await;
    let live = registry
        .register("billing", ip(1), 8080, Metadata::new())
        .unwrap();
    let mut subscription = registry.watch("billing", None).unwrap();
    match subscription.take_start() {
        Some(discovery_registry::WatchStart::Snapshot { members, .. }) => {
            assert_eq!(ids(&registry.instances(members)), vec![live]);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    // Nothing expired before the watch can be told to it as a removal.
    use futures_util::FutureExt;
    use futures_util::StreamExt;
    assert!(subscription.next().now_or_never().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_types_are_listed_with_their_live_counts_sorted() {
    let registry = registry();
    assert!(registry.types().is_empty());
    for (service_type, last) in [("search", 1), ("billing", 1), ("billing", 2), ("cache", 1)] {
        registry
            .register(service_type, ip(last), 80, Metadata::new())
            .unwrap();
    }
    // A replacement does not count twice.
    registry
        .register("billing", ip(2), 80, Metadata::new())
        .unwrap();
    let expected = |pairs: &[(&str, usize)]| -> Vec<(String, usize)> {
        pairs.iter().map(|&(t, n)| (t.to_string(), n)).collect()
    };
    assert_eq!(
        registry.types(),
        expected(&[("billing", 2), ("cache", 1), ("search", 1)])
    );

    advance(Duration::from_secs(1)).await;
    let late = registry
        .register("cache", ip(2), 80, Metadata::new())
        .unwrap();
    // At the first deadline, counted exactly whether or not the task has run.
    advance(TTL - Duration::from_secs(1)).await;
    assert_eq!(registry.types(), expected(&[("cache", 1)]));
    assert!(registry.deregister(late).is_ok());
    assert!(registry.types().is_empty());
}
