//! Watches and queries of one big type do not stall anyone else (issue 15, finding 6): the
//! instances of an answer are read in batches, the lock taken again for each, so an
//! unrelated client's heartbeat waits for a batch at most, never for a whole snapshot.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use discovery_proto::{Metadata, Request, Response};
use discovery_test_support::{TestServer, Wire};

/// The size of the big type: the default cap of one type.
const INSTANCES: u32 = 100_000;
/// Clients looping Watch, the whole snapshot, Unwatch on it.
const WATCHERS: usize = 3;
/// What the test asserts of every heartbeat of the unrelated client: answered within it.
const PROMPT: Duration = Duration::from_secs(1);

/// Watch the big type, read its whole snapshot, unwatch; again until told to stop.
async fn watch_loop(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, loops: Arc<AtomicUsize>) {
    let mut wire = Wire::hello(addr).await;
    while !stop.load(Ordering::Relaxed) {
        let watch = wire
            .send(Request::Watch {
                service_type: "big".into(),
                since: None,
                min_revision: None,
            })
            .await;
        loop {
            let frame = wire.recv().await.expect("a snapshot frame");
            match frame.response {
                Response::Snapshot { more: true, .. } => {}
                Response::Snapshot { more: false, .. } => break,
                other => panic!("expected a snapshot, got {other:?}"),
            }
        }
        assert!(matches!(
            wire.call(Request::Unwatch { watch }).await,
            Response::Ok
        ));
        loops.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_answered_promptly_while_three_clients_loop_watches_of_a_big_type() {
    let server = TestServer::start().await;
    let metadata = Metadata::from([("zone".to_string(), "eu-west-1".to_string())]);
    for n in 0..INSTANCES {
        let ip = IpAddr::from((0x0a00_0000 + n).to_be_bytes());
        server
            .registry
            // Long-lived: no expiry may push changes, or take instances, meanwhile.
            .register_with_ttl(
                "big",
                ip,
                8080,
                metadata.clone(),
                Some(Duration::from_secs(3600)),
            )
            .expect("under the caps");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicUsize>> = (0..WATCHERS).map(|_| Arc::default()).collect();
    let watchers: Vec<_> = counters
        .iter()
        .map(|loops| tokio::spawn(watch_loop(server.addr, stop.clone(), loops.clone())))
        .collect();

    let mut wire = Wire::hello(server.addr).await;
    let id = wire.register("unrelated", 9000).await;
    let mut heartbeats = 0;
    let mut slowest = Duration::ZERO;
    // Until every watcher has been through its loop twice, and at least 50 heartbeats.
    while heartbeats < 50
        || counters
            .iter()
            .any(|loops| loops.load(Ordering::Relaxed) < 2)
    {
        let sent = Instant::now();
        let answer = wire
            .call(Request::Heartbeat {
                id,
                min_revision: None,
            })
            .await;
        let took = sent.elapsed();
        assert!(matches!(answer, Response::Ok), "{answer:?}");
        assert!(took < PROMPT, "a heartbeat took {took:?}");
        slowest = slowest.max(took);
        heartbeats += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for watcher in watchers {
        watcher.await.expect("a watcher panicked");
    }
    println!("{heartbeats} heartbeats, the slowest in {slowest:?}");
    assert_eq!(server.registry.query("big").len(), INSTANCES as usize);
    server.stop().await;
}
