//! Micro-benchmarks of the registry's operations, called directly (no socket, no
//! encoding), in a registry of 100,000 entries: 1,000 types of 100 instances each.
//!
//! Run with `cargo bench -p discovery-bench --features micro --bench registry`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use discovery_proto::Metadata;
use discovery_registry::{Registry, RegistryConfig};
use uuid::Uuid;

/// Entries in the registry under test.
const ENTRIES: usize = 100_000;
/// Instances per type: what one query lists.
const PER_TYPE: usize = 100;
const TYPES: usize = ENTRIES / PER_TYPE;

fn type_name(t: usize) -> String {
    format!("type-{t:04}")
}

/// The endpoint of entry `n`: distinct for every `n` below 2^24 * 60,000.
fn endpoint(n: usize) -> (String, IpAddr, u16) {
    let ip = Ipv4Addr::from(0x0a00_0000 | (n as u32 & 0x00ff_ffff));
    let port = 1024 + ((n >> 24) % 60_000) as u16;
    (type_name(n % TYPES), IpAddr::V4(ip), port)
}

/// A registry holding `ENTRIES` live instances, and their ids.
fn filled(runtime: &tokio::runtime::Runtime) -> (Registry, Vec<Uuid>) {
    let _context = runtime.enter();
    let registry = Registry::new(RegistryConfig {
        // Nothing expires during the benchmark.
        ttl: Duration::from_secs(3600),
        // A measured batch of registers may be as large as criterion likes.
        max_instances: usize::MAX,
        max_instances_per_type: usize::MAX,
        ..RegistryConfig::default()
    });
    let ids = (0..ENTRIES)
        .map(|n| {
            let (service_type, ip, port) = endpoint(n);
            registry
                .register(&service_type, ip, port, Metadata::new())
                .expect("under the caps")
        })
        .collect();
    (registry, ids)
}

fn registry(c: &mut Criterion) {
    // The registry spawns its expiry task on the current runtime; it never runs here, as
    // nothing drives this runtime, and nothing is due anyway.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let (registry, ids) = filled(&runtime);
    let mut group = c.benchmark_group("registry");

    let mut rng = fastrand::Rng::with_seed(1);
    group.bench_function("heartbeat", |b| {
        b.iter(|| registry.heartbeat(black_box(ids[rng.usize(..ENTRIES)])))
    });

    let names: Vec<String> = (0..TYPES).map(type_name).collect();
    let mut t = 0;
    group.bench_function("query_100", |b| {
        b.iter(|| {
            t = (t + 1) % TYPES;
            let listed = registry.query(black_box(&names[t]));
            debug_assert_eq!(listed.len(), PER_TYPE);
            listed
        })
    });

    // New endpoints past the filled ones; each measured batch is undone untimed.
    let mut next = ENTRIES;
    group.bench_function("register_new", |b| {
        b.iter_custom(|iters| {
            let endpoints: Vec<_> = (0..iters)
                .map(|_| {
                    next += 1;
                    endpoint(next)
                })
                .collect();
            let start = Instant::now();
            let made: Vec<Uuid> = endpoints
                .iter()
                .map(|(service_type, ip, port)| {
                    registry
                        .register(black_box(service_type), *ip, *port, Metadata::new())
                        .expect("under the caps")
                })
                .collect();
            let elapsed = start.elapsed();
            for id in made {
                registry.deregister(id).expect("registered just now");
            }
            elapsed
        })
    });

    group.bench_function("deregister", |b| {
        b.iter_custom(|iters| {
            let made: Vec<Uuid> = (0..iters)
                .map(|_| {
                    next += 1;
                    let (service_type, ip, port) = endpoint(next);
                    registry
                        .register(&service_type, ip, port, Metadata::new())
                        .expect("under the caps")
                })
                .collect();
            let start = Instant::now();
            for id in made {
                let _ = black_box(registry.deregister(black_box(id)));
            }
            start.elapsed()
        })
    });

    // A register of an endpoint already held: the older entry is replaced, so the registry
    // keeps its size. The ids of the filled entries change, so this runs last.
    let mut n = 0;
    group.bench_function("register_replace", |b| {
        b.iter_custom(|iters| {
            let endpoints: Vec<_> = (0..iters)
                .map(|_| {
                    n = (n + 1) % ENTRIES;
                    endpoint(n)
                })
                .collect();
            let start = Instant::now();
            for (service_type, ip, port) in &endpoints {
                black_box(
                    registry
                        .register(black_box(service_type), *ip, *port, Metadata::new())
                        .expect("a replacement is never refused"),
                );
            }
            start.elapsed()
        })
    });
    group.finish();
    assert_eq!(registry.len(), ENTRIES);
}

criterion_group!(benches, registry);
criterion_main!(benches);
