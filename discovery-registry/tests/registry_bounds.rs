//! The registry's memory, bounded in bytes (`max_registry_bytes`), and the deadline index,
//! which forgets the entries deregistered or replaced: on tokio's paused clock.

use std::net::IpAddr;
use std::time::Duration;

use discovery_proto::ErrorKind;
use discovery_registry::{Error, Instance, Lifetime, Metadata, Registry, RegistryConfig};
use tokio::time::advance;
use uuid::Uuid;

/// The smallest byte bound a configuration takes: about 20 instances at every metadata
/// limit.
const MAX_BYTES: usize = 1 << 20;

fn bounded() -> Registry {
    let config = RegistryConfig {
        max_registry_bytes: MAX_BYTES,
        ..RegistryConfig::default()
    };
    config.validate().expect("a valid configuration");
    Registry::new(config)
}

fn ip(n: u32) -> IpAddr {
    IpAddr::from((0x0a00_0000 + n).to_be_bytes())
}

/// Metadata at every default limit: 64 pairs of 128-byte keys and 512-byte values.
fn fat(seed: u32) -> Metadata {
    (0..64)
        .map(|pair| {
            let head = format!("{seed:08}-{pair:03}-");
            (format!("{head:k<128}"), "v".repeat(512))
        })
        .collect()
}

fn refused() -> Result<Uuid, Error> {
    Err(Error::RegistryBytesLimit { max: MAX_BYTES })
}

#[tokio::test(start_paused = true)]
async fn registers_at_every_metadata_limit_are_refused_at_the_byte_bound() {
    let registry = bounded();
    let kept = registry
        .register("kept", ip(0), 80, Metadata::new())
        .expect("room");
    let mut fat_ids = Vec::new();
    let mut before = registry.registry_bytes();
    let refusal = loop {
        let n = fat_ids.len() as u32 + 1;
        match registry.register("fat", ip(n), 80, fat(n)) {
            Ok(id) => {
                let after = registry.registry_bytes();
                assert!(after <= MAX_BYTES, "{after} bytes held, over the bound");
                // Each costs about what the heap spends on it (45 KB, tests/registry_bytes.rs).
                assert!((45_000..60_000).contains(&(after - before)));
                before = after;
                fat_ids.push(id);
            }
            Err(error) => break error,
        }
        assert!(fat_ids.len() < 100, "never refused");
    };
    assert_eq!(refusal, Error::RegistryBytesLimit { max: MAX_BYTES });
    assert_eq!(refusal.kind(), ErrorKind::RegistryBytesLimit);
    // Refused only when the next one would not fit: about a megabyte over 53 KB each.
    assert!((17..=22).contains(&fat_ids.len()), "{} held", fat_ids.len());
    assert!(registry.registry_bytes() + 45_000 > MAX_BYTES);
    assert_eq!(registry.len(), fat_ids.len() + 1);

    // The registry is unaffected: everything held is listed and heartbeats.
    assert!(registry.heartbeat(kept).is_ok());
    assert_eq!(registry.query("fat").len(), fat_ids.len());
    assert_eq!(registry.query("kept")[0].id, kept);

    // Small registers fill what is left, and are refused in turn.
    let mut small = 0;
    while registry
        .register("small", ip(1_000 + small), 80, Metadata::new())
        .is_ok()
    {
        small += 1;
        assert!(small < 1_000, "never refused");
    }
    assert!(registry.registry_bytes() <= MAX_BYTES);
    assert_eq!(
        registry.register("small", ip(2_000), 80, Metadata::new()),
        refused()
    );

    // A replacement counts only its difference: the same endpoint with the same
    // metadata is taken at the bound, and the old id is gone.
    let replaced = fat_ids[0];
    let replacement = registry
        .register("fat", ip(1), 80, fat(1))
        .expect("a replacement adds nothing");
    assert!(registry.heartbeat(replaced).is_err());
    assert!(registry.heartbeat(replacement).is_ok());
    // With more metadata than it had, it is refused like any register.
    assert_eq!(
        registry.register("small", ip(1_000), 80, fat(7)),
        refused(),
        "a replacement that grows"
    );

    // An update that grows is refused, one that shrinks is taken and makes room.
    assert_eq!(
        registry.update(kept, fat(9)).map(drop),
        Err(Error::RegistryBytesLimit { max: MAX_BYTES })
    );
    assert!(registry.query("kept")[0].metadata.is_empty());
    let held = registry.registry_bytes();
    // (Two of them: what the small registers left is less than an entry's own costs.)
    assert!(registry.update(fat_ids[1], Metadata::new()).is_ok());
    assert!(registry.update(fat_ids[3], Metadata::new()).is_ok());
    assert!(registry.registry_bytes() + 2 * 45_000 < held);
    registry
        .register("fat", ip(500), 80, fat(500))
        .expect("room again after updates that shrank");

    // A deregister gives the room back.
    assert_eq!(registry.register("fat", ip(501), 80, fat(501)), refused());
    assert!(registry.deregister(fat_ids[2]).is_ok());
    registry
        .register("fat", ip(501), 80, fat(501))
        .expect("room again after a deregister");

    // A change from elsewhere is never refused, and counts: registers are refused after it
    // while the total is over.
    for n in 0..3 {
        let from_elsewhere = Instance {
            id: Uuid::new_v4(),
            service_type: "replica".into(),
            ip: ip(3_000 + n),
            port: 80,
            metadata: fat(3_000 + n),
            last_heartbeat: chrono::Utc::now(),
        };
        registry
            .upsert(from_elsewhere, Lifetime::Held)
            .expect("never refused by the caps");
    }
    assert!(registry.registry_bytes() > MAX_BYTES);
    assert_eq!(registry.query("replica").len(), 3);
    assert_eq!(
        registry.register("small", ip(2_001), 80, Metadata::new()),
        refused()
    );
    assert!(registry.heartbeat(kept).is_ok());
}

#[tokio::test(start_paused = true)]
async fn what_expires_gives_its_bytes_back() {
    let registry = bounded();
    let ttl = registry.config().ttl;
    let mut held = 0;
    while registry
        .register("fat", ip(held + 1), 80, fat(held + 1))
        .is_ok()
    {
        held += 1;
    }
    assert!(held > 10);
    advance(ttl).await;
    // A register at the bound frees what is due first, and is taken.
    registry
        .register("fat", ip(100), 80, fat(100))
        .expect("the expired made room");
    assert_eq!(registry.len(), 1);
    registry.expire_due_now();
    advance(ttl).await;
    registry.expire_due_now();
    assert!(registry.is_empty());
    assert_eq!(
        registry.registry_bytes(),
        0,
        "nothing counted for nothing held"
    );
}

#[tokio::test(start_paused = true)]
async fn deregistered_and_replaced_entries_leave_the_deadline_index() {
    const HOUR: Duration = Duration::from_secs(3600);
    const PAIRS: u32 = 100_000;
    const LIVE: u32 = 100;
    let registry = Registry::new(RegistryConfig {
        ttl: HOUR,
        ..RegistryConfig::default()
    });
    let live: Vec<Uuid> = (0..LIVE)
        .map(|n| {
            registry
                .register("live", ip(n), 80, Metadata::new())
                .expect("valid")
        })
        .collect();
    // What the index may hold: about twice the live entries, the floor under which it is
    // not swept, and a sweep's step.
    let bound = 2 * LIVE as usize + 64 + 16 + 1;
    let mut most = 0;
    for n in 0..PAIRS {
        let id = registry
            .register("churn", ip(LIVE + n % 1_000), 80, Metadata::new())
            .expect("valid");
        assert!(registry.deregister(id).is_ok());
        most = most.max(registry.deadline_references());
        if n % 1_000 == 0 {
            advance(Duration::from_millis(1)).await;
        }
    }
    assert!(
        most <= bound,
        "the index held up to {most} references for {LIVE} live entries"
    );
    // Replacements of one endpoint, again and again.
    for _ in 0..PAIRS {
        registry
            .register("replaced", ip(9_999), 80, Metadata::new())
            .expect("valid");
        most = most.max(registry.deadline_references());
    }
    assert!(
        most <= bound + 1,
        "the index held up to {most} references for {} live entries",
        LIVE + 1
    );
    // The sweeps dropped no live entry's reference: each expires at its deadline.
    assert_eq!(registry.len(), LIVE as usize + 1);
    advance(HOUR / 2).await;
    for &id in &live {
        assert!(registry.heartbeat(id).is_ok());
    }
    advance(HOUR / 2).await;
    registry.expire_due_now();
    assert_eq!(registry.len(), LIVE as usize, "the replaced one expired");
    advance(HOUR / 2).await;
    registry.expire_due_now();
    assert!(
        registry.is_empty(),
        "the heartbeated ones expired an hour later"
    );
    assert_eq!(registry.deadline_references(), 0);
}
