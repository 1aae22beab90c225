//! The client across a crash of its server: 1,000 registrations over four clients, the
//! server gone at once (every connection dropped in the same instant, its registry with
//! it) and started again on the same address. Every registration must be listed again,
//! under a new id, within a generous bound; how long it took and how the re-registrations
//! were spread is printed (`cargo test -p discovery-client --test restart -- --nocapture`),
//! never asserted.
//!
//! The crash: aborting the task of `discovery_server::server::run` is not one, because each
//! connection is served on a task of its own, spawned apart from `run`, which outlives the
//! abort (the listener closes; an open connection stays open until its idle timeout). So
//! the server runs on a runtime of its own, on a thread of its own, and the crash drops
//! that runtime: every task it ran is dropped at that moment, connection tasks included,
//! and with them every socket, as when the process is killed. The test checks that a
//! connection open at the crash sees its end at once.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{builder, eventually};
use discovery_client::config::DEFAULT_BACKOFF_MAX;
use discovery_client::{Client, Registration, ServiceSpec, Uuid};
use discovery_server::config::ServerConfig;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};

/// The servers' TTL; registrations heartbeat at a third of it.
const TTL: Duration = Duration::from_secs(2);
/// How many registrations, spread evenly over [`CLIENTS`] clients and [`TYPES`] types.
const REGISTRATIONS: usize = 1_000;
const CLIENTS: usize = 4;
const TYPES: usize = 4;

/// A server on a runtime and a thread of its own, so that it can be crashed: see the
/// module's comment.
struct CrashableServer {
    address: SocketAddr,
    crash: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl CrashableServer {
    /// Starts a server on `address` (port 0 for a free one) and returns once it listens.
    async fn start(address: SocketAddr, ttl: Duration) -> Self {
        let (crash, crashed) = oneshot::channel::<()>();
        let (bound_tx, bound) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the server");
            runtime.block_on(async move {
                // SO_REUSEADDR (set by tokio) lets the port of a crashed server be bound
                // again at once.
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .unwrap_or_else(|e| panic!("cannot bind {address}: {e}"));
                let _ = bound_tx.send(listener.local_addr().unwrap());
                let mut config = ServerConfig::default();
                config.registry.ttl = ttl;
                let stop = tokio_util::sync::CancellationToken::new();
                tokio::select! {
                    result = discovery_server::server::run(listener, config, stop) => {
                        panic!("the server stopped by itself: {result:?}");
                    }
                    _ = crashed => {}
                }
            });
            // Every task of the runtime, each connection's among them, is dropped here.
            drop(runtime);
        });
        let address = bound.await.expect("the server thread failed to bind");
        Self {
            address,
            crash,
            thread,
        }
    }

    /// Drops the server's runtime and waits until it is gone, sockets and all.
    async fn crash(self) {
        let _ = self.crash.send(());
        tokio::task::spawn_blocking(move || self.thread.join())
            .await
            .unwrap()
            .expect("the server thread panicked");
    }
}

fn spec(index: usize) -> ServiceSpec {
    let port = u16::try_from(10_000 + index).unwrap();
    ServiceSpec::new(
        format!("restart-{}", index % TYPES),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

/// The largest number of `times` (sorted) within any window of `width`.
fn peak_per(width: Duration, times: &[Instant]) -> usize {
    let mut start = 0;
    let mut peak = 0;
    for (end, time) in times.iter().enumerate() {
        while *time - times[start] >= width {
            start += 1;
        }
        peak = peak.max(end + 1 - start);
    }
    peak
}

/// True when the ids listed for every type are exactly the registrations' current ids.
async fn all_listed(checker: &Client, registrations: &[Registration]) -> bool {
    let mut listed = HashSet::new();
    for index in 0..TYPES {
        match checker.query(format!("restart-{index}")).await {
            Ok(instances) => listed.extend(instances.into_iter().map(|i| i.id)),
            Err(_) => return false,
        }
    }
    let current: HashSet<Uuid> = registrations.iter().map(Registration::id).collect();
    listed == current
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_registrations_are_listed_again_after_their_server_crashes() {
    let server = CrashableServer::start("127.0.0.1:0".parse().unwrap(), TTL).await;
    let address = server.address;
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|n| {
            builder(address)
                .client_name(format!("restart-{n}"))
                .build()
                .unwrap()
        })
        .collect();
    let checker = builder(address)
        .client_name("restart-checker")
        .build()
        .unwrap();

    let mut registering = tokio::task::JoinSet::new();
    for index in 0..REGISTRATIONS {
        let client = clients[index % CLIENTS].clone();
        registering.spawn(async move { (index, client.register(spec(index)).await) });
    }
    let mut registrations: Vec<Option<Registration>> = (0..REGISTRATIONS).map(|_| None).collect();
    while let Some(joined) = registering.join_next().await {
        let (index, registered) = joined.unwrap();
        registrations[index] = Some(registered.unwrap_or_else(|e| panic!("register {index}: {e}")));
    }
    let registrations: Vec<Registration> = registrations.into_iter().map(Option::unwrap).collect();
    let first_ids: Vec<Uuid> = registrations.iter().map(Registration::id).collect();
    assert!(all_listed(&checker, &registrations).await);

    // Each registration's first new id, timed as its owner sees it.
    let re_registered = Arc::new(Mutex::new(Vec::with_capacity(REGISTRATIONS)));
    let mut watchers = tokio::task::JoinSet::new();
    for (registration, first_id) in registrations.iter().zip(&first_ids) {
        let mut states = registration.state();
        let (first_id, times) = (*first_id, re_registered.clone());
        watchers.spawn(async move {
            if states
                .wait_for(|state| state.id().is_some_and(|id| id != first_id))
                .await
                .is_ok()
            {
                times.lock().unwrap().push(Instant::now());
            }
        });
    }

    // A connection open at the crash must see its end at once, not at the server's idle
    // timeout (60 s): its socket is closed by the time `crash` returns, so only a loaded
    // machine's scheduling stands between it and the read, and half the idle timeout is
    // room enough for that.
    let mut bystander = TcpStream::connect(address).await.unwrap();
    server.crash().await;
    let crashed_at = Instant::now();
    let mut byte = [0; 1];
    let end = timeout(Duration::from_secs(30), bystander.read(&mut byte)).await;
    assert!(
        matches!(end, Ok(Ok(0) | Err(_))),
        "a connection outlived the crash: {end:?}"
    );

    let server = CrashableServer::start(address, TTL).await;
    let restarted_at = Instant::now();
    // A heartbeat finds the server gone (at most one interval), the client reconnects after
    // its backoff (at most the cap), the next heartbeat is answered NotFound and the
    // instance registered again; a TTL more, and ten seconds for a loaded machine.
    let bound = TTL + DEFAULT_BACKOFF_MAX + TTL / 3 + Duration::from_secs(10);
    eventually("every registration listed again", bound, || async {
        all_listed(&checker, &registrations).await.then_some(())
    })
    .await;
    let listed_after = restarted_at.elapsed();
    for (registration, first_id) in registrations.iter().zip(&first_ids) {
        assert_ne!(registration.id(), *first_id, "listed under its old id");
        assert!(registration.current_state().is_registered());
    }
    // Every watcher has seen its new id by now (all are listed under it).
    timeout(Duration::from_secs(30), watchers.join_all())
        .await
        .expect("a registration's new id was never seen");

    let mut times = std::mem::take(&mut *re_registered.lock().unwrap());
    times.sort();
    assert_eq!(times.len(), REGISTRATIONS);
    let (first, last) = (times[0], times[times.len() - 1]);
    println!(
        "restart: {REGISTRATIONS} registrations over {CLIENTS} clients, TTL {TTL:?}: the server \
         was back {:?} after the crash; all listed again {listed_after:?} after that; \
         re-registrations from {:?} to {:?} after the restart (spread {:?}), peak {} in 1 s, \
         {} in 100 ms",
        restarted_at - crashed_at,
        first.saturating_duration_since(restarted_at),
        last.saturating_duration_since(restarted_at),
        last - first,
        peak_per(Duration::from_secs(1), &times),
        peak_per(Duration::from_millis(100), &times),
    );

    for registration in registrations {
        registration.shutdown().await.unwrap();
    }
    drop((clients, checker));
    server.crash().await;
}

#[test]
fn the_peak_counts_the_fullest_window() {
    let start = Instant::now();
    let at = |ms| start + Duration::from_millis(ms);
    let times = [
        at(0),
        at(10),
        at(950),
        at(1000),
        at(1500),
        at(1600),
        at(1700),
    ];
    assert_eq!(peak_per(Duration::from_secs(1), &times), 5);
    assert_eq!(peak_per(Duration::from_millis(100), &times), 2);
    assert_eq!(peak_per(Duration::from_secs(1), &[]), 0);
}
