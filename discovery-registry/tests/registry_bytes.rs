//! The byte bound's model against the heap: what [`Registry::registry_bytes`] counts for a
//! register must be an upper bound of what the heap really grows by, and not a loose one
//! (within a factor of two), or the bound would promise memory it does not hold to.
//!
//! A test binary of its own, since it installs a counting global allocator: every
//! allocation of the process is counted, so the tests here take a lock and run one at a
//! time, on a current-thread runtime. "Real" is the bytes the program asked the allocator
//! for, less those it gave back; the allocator's own rounding and headers come on top of
//! that, and the model counts those too (glibc's, unit-tested in the crate's `footprint`).

use std::alloc::System;
use std::net::IpAddr;
use std::sync::Mutex;

use discovery_registry::{Metadata, Registry, RegistryConfig};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// One test at a time: the allocator counts for the whole process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Metadata at every default limit: 64 pairs of 128-byte keys and 512-byte values, each
/// string allocated to its length as when it is read from the wire.
fn metadata_at_the_limits(seed: usize) -> Metadata {
    let config = RegistryConfig::default();
    (0..config.max_metadata_pairs)
        .map(|pair| {
            let head = format!("{seed:08}-{pair:03}-");
            let key = format!("{head:k<128}");
            assert_eq!(key.len(), config.max_metadata_key_bytes);
            (
                String::from(key.as_str()),
                "v".repeat(config.max_metadata_value_bytes),
            )
        })
        .collect()
}

fn ip(n: usize) -> IpAddr {
    let n = u32::try_from(n).expect("a small test");
    IpAddr::from((0x0a00_0000 + n).to_be_bytes())
}

/// Registers `count` instances over `types` types, each with `metadata(n)`, and checks
/// that what the registry counted for them bounds what the heap grew by, within twice.
fn assert_counted_within_twice(
    what: &str,
    count: usize,
    types: usize,
    metadata: impl FnMut(usize) -> Metadata,
) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (grown, counted) = grown_and_counted(count, types, metadata);
    let ratio = counted as f64 / grown as f64;
    println!("{what}: the heap grew by {grown} bytes, counted {counted} ({ratio:.2} times)");
    assert!(
        grown <= counted,
        "{what}: counted {counted} < grown {grown}"
    );
    assert!(
        counted <= 2 * grown,
        "{what}: counted {counted} > twice grown {grown}"
    );
}

/// What the heap grew by, and what the registry counted, for the registers.
fn grown_and_counted(
    count: usize,
    types: usize,
    mut metadata: impl FnMut(usize) -> Metadata,
) -> (usize, usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let registry = Registry::new(RegistryConfig::default());
        // What the process spends once, before counting: the expiry task's first pass and
        // its timer (a register of an instance that stays, in a type of its own, whose
        // deadline is the earliest for the rest of the test), the generator of ids.
        tokio::task::yield_now().await;
        registry
            .register("warm-up", ip(count), 80, Metadata::new())
            .expect("valid");
        tokio::task::yield_now().await;
        let names: Vec<String> = (0..types).map(|t| format!("type-{t}")).collect();
        let counted_before = registry.registry_bytes();
        let region = Region::new(GLOBAL);
        for n in 0..count {
            registry
                .register(&names[n % types], ip(n), 80, metadata(n))
                .expect("under every cap");
        }
        let change = region.change();
        let counted = registry.registry_bytes() - counted_before;
        // A reallocation is counted in both of these too (its difference).
        let grown = change
            .bytes_allocated
            .saturating_sub(change.bytes_deallocated);
        assert_eq!(registry.len(), count + 1);
        (grown, counted)
    })
}

#[test]
fn instances_without_metadata_are_counted_within_twice_what_they_take() {
    // Around each growth of the slab (a power of two) and of the hash tables (7/8 of one),
    // where what they hold is the least and the most of what they use.
    for count in [1_000, 4_096, 4_097, 7_168, 7_169, 20_000] {
        assert_counted_within_twice(
            &format!("{count} instances without metadata"),
            count,
            10,
            |_| Metadata::new(),
        );
    }
}

#[test]
fn instances_at_every_metadata_limit_are_counted_within_twice_what_they_take() {
    for count in [1, 20, 200] {
        assert_counted_within_twice(
            &format!("{count} instances at the metadata limits"),
            count,
            3,
            metadata_at_the_limits,
        );
    }
}

#[test]
fn one_type_per_instance_is_counted_within_twice_what_it_takes() {
    // Each instance the first of its type: the interned names and the lists per type.
    assert_counted_within_twice("2,000 instances of a type each", 2_000, 2_000, |_| {
        Metadata::new()
    });
}
