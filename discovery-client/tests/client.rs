//! The client against real servers on 127.0.0.1, in real time, with a TTL of one second:
//! registering and finding, keeping alive, outages, failover, shutdown and drop.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Proxy, TTL, builder, client, dead_address, eventually, listed};
use discovery_client::{
    ClientBuilder, Error, ErrorKind, Metadata, RegistrationState, RemoveReason, ServiceSpec, Uuid,
};
use discovery_proto::codec::ServerCodec;
use discovery_proto::{MAX_FRAME_BYTES, PROTOCOL_VERSION, Response, ServerFrame};
use discovery_server::config::ServerConfig;
use discovery_test_support::TestServer;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::codec::Framed;

fn spec(service_type: &str, port: u16) -> ServiceSpec {
    ServiceSpec::new(service_type, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A heartbeat interval of the test servers.
const INTERVAL: Duration = Duration::from_millis(1000 / 3);

#[tokio::test]
async fn register_then_query() {
    let server = common::server(TTL).await;
    let client = client(server.address());

    let registration = client
        .register(spec("billing", 8080).with_metadata("version", "1.4.2"))
        .await
        .unwrap();
    assert_eq!(
        registration.current_state(),
        RegistrationState::Registered {
            id: registration.id()
        }
    );

    let found = client.query("billing").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, registration.id());
    assert_eq!(found[0].ip, std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(found[0].port, 8080);
    assert_eq!(found[0].metadata["version"], "1.4.2");
    assert!(
        client
            .query("nothing-of-this-type")
            .await
            .unwrap()
            .is_empty()
    );

    let info = client.server_info().expect("connected");
    assert_eq!(info.ttl, TTL);
    assert_eq!(info.address.socket_addr(), Some(server.address()));

    registration.shutdown().await.unwrap();
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_registration_comes_back_after_its_server_restarts() {
    let server = common::server(TTL).await;
    let address = server.address();
    let client = client(address);
    let registration = client.register(spec("phoenix", 9001)).await.unwrap();
    let first_id = registration.id();
    let mut states = registration.state();

    server.stop().await;
    let stopped_at = Instant::now();
    timeout(
        Duration::from_secs(10),
        states.wait_for(|s| !s.is_registered()),
    )
    .await
    .expect("the registration did not notice the outage")
    .unwrap();
    // How soon is measured, not asserted: the bounds are checked with a paused clock in
    // the unit tests of `registration`, where the machine's speed cannot move them.
    let noticed = stopped_at.elapsed();
    eprintln!("outage noticed after {noticed:?}");
    // Stay down long enough for the client to back off a few times.
    sleep(Duration::from_secs(1)).await;

    let restarted = common::server_on(address, TTL).await;
    let back_at = Instant::now();
    let checker = common::client(address);
    let new_id = eventually("listed again", Duration::from_secs(15), || async {
        let id = registration.id();
        (id != first_id && listed(&checker, "phoenix").await == vec![id]).then_some(id)
    })
    .await;
    let took = back_at.elapsed();
    eprintln!(
        "listed again {took:?} after the restart (documented bound: {:?})",
        TTL + discovery_client::config::DEFAULT_BACKOFF_MAX + INTERVAL
    );
    assert_eq!(
        *states.borrow_and_update(),
        RegistrationState::Registered { id: new_id }
    );

    registration.shutdown().await.unwrap();
    drop((client, checker));
    restarted.stop().await;
}

#[tokio::test]
async fn register_waits_for_a_server_that_comes_up_within_the_connect_timeout() {
    // Not a server yet: a listener that hangs up, so the test knows when the client has
    // tried and failed.
    let not_yet = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = not_yet.local_addr().unwrap();
    let client = builder(address)
        .connect_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let register = tokio::spawn({
        let client = client.clone();
        async move { client.register(spec("late", 9002)).await }
    });

    // The register has found no server; now one comes up.
    let (refused, _) = not_yet.accept().await.unwrap();
    drop((refused, not_yet));
    let server = common::server_on(address, TTL).await;
    let registration = register
        .await
        .unwrap()
        .expect("register once the server is up, within the connect timeout");
    assert_eq!(listed(&client, "late").await, vec![registration.id()]);

    registration.shutdown().await.unwrap();
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn register_fails_clearly_when_no_server_comes_up() {
    let address = dead_address();
    let connect_timeout = Duration::from_millis(600);
    let client = builder(address)
        .connect_timeout(connect_timeout)
        .build()
        .unwrap();

    let started = Instant::now();
    let error = client.register(spec("nowhere", 9003)).await.unwrap_err();
    let waited = started.elapsed();
    assert!(error.is_connection(), "{error:?}");
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(waited >= connect_timeout, "gave up after {waited:?}");
    let message = error.to_string();
    assert!(message.contains(&address.to_string()), "{message}");
    assert!(message.contains("600ms"), "{message}");
}

#[tokio::test]
async fn the_second_address_is_used_when_the_first_is_dead() {
    let server = common::server(TTL).await;
    let client = discovery_client::Client::builder()
        .addresses([dead_address(), server.address()])
        .build()
        .unwrap();

    let registration = client.register(spec("failover", 9004)).await.unwrap();
    assert_eq!(listed(&client, "failover").await, vec![registration.id()]);
    let info = client.server_info().unwrap();
    assert_eq!(info.address.socket_addr(), Some(server.address()));

    registration.shutdown().await.unwrap();
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_registration_moves_to_the_next_server_when_its_server_stops() {
    let first = common::server(TTL).await;
    let second = common::server(TTL).await;
    let client = discovery_client::Client::builder()
        .addresses([first.address(), second.address()])
        .build()
        .unwrap();
    let registration = client.register(spec("mover", 9005)).await.unwrap();
    let first_id = registration.id();

    first.stop().await;
    let checker = common::client(second.address());
    eventually(
        "registered on the second server",
        Duration::from_secs(10),
        || async {
            let id = registration.id();
            (id != first_id && listed(&checker, "mover").await == vec![id]).then_some(())
        },
    )
    .await;
    let info = client.server_info().unwrap();
    assert_eq!(info.address.socket_addr(), Some(second.address()));

    registration.shutdown().await.unwrap();
    drop((client, checker));
    second.stop().await;
}

#[tokio::test]
async fn shutdown_removes_the_instance_at_once() {
    let server = common::server(TTL).await;
    let client = client(server.address());
    let registration = client.register(spec("brief", 9006)).await.unwrap();
    let id = registration.id();
    assert_eq!(listed(&client, "brief").await, vec![id]);

    registration.shutdown().await.unwrap();
    assert!(listed(&client, "brief").await.is_empty());
    assert!(client.heartbeat(id).await.unwrap_err().is_not_found());

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn dropping_a_registration_stops_its_heartbeats() {
    let server = common::server(TTL).await;
    let client = client(server.address());
    let registration = client.register(spec("dropped", 9007)).await.unwrap();
    let id = registration.id();
    let mut states = registration.state();
    drop(registration);

    // The loop ends: its state's sender goes with it.
    timeout(Duration::from_secs(10), async {
        while states.changed().await.is_ok() {}
    })
    .await
    .expect("the heartbeat loop outlived its registration");
    // Gone: deregistered in the background, or at worst expired after one TTL.
    eventually("gone after drop", 10 * TTL, || async {
        listed(&client, "dropped").await.is_empty().then_some(())
    })
    .await;
    // And it stays gone: with its loop ended, nothing can register it again.
    assert!(client.heartbeat(id).await.unwrap_err().is_not_found());
    assert!(listed(&client, "dropped").await.is_empty());

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_forgotten_instance_is_registered_again_under_a_new_id() {
    let server = common::server(TTL).await;
    let client = client(server.address());
    let registration = client.register(spec("forgotten", 9008)).await.unwrap();
    let first_id = registration.id();
    let mut states = registration.state();

    // Someone else removes it: the next heartbeat answers NotFound.
    client.deregister(first_id).await.unwrap();
    let state = timeout(
        Duration::from_secs(5),
        states.wait_for(|s| s.is_registered() && s.id() != Some(first_id)),
    )
    .await
    .expect("not registered again")
    .unwrap()
    .to_owned();
    let new_id = state.id().unwrap();
    assert_eq!(registration.id(), new_id);
    assert_eq!(listed(&client, "forgotten").await, vec![new_id]);

    registration.shutdown().await.unwrap();
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn query_joins_an_answer_split_over_frames() {
    // A TTL long enough for 300 single registrations to outlive the test.
    let server = common::server(Duration::from_secs(30)).await;
    let client = client(server.address());
    let value = "x".repeat(400);

    // 300 calls at once, pipelined on the client's one connection.
    let registers = (0..300u16).map(|i| {
        let client = client.clone();
        let spec = spec("bulky", 10_000 + i).with_metadata("blob", value.as_str());
        async move { client.register_once(&spec).await.map(|granted| granted.id) }
    });
    let ids: HashSet<Uuid> = futures_util::future::join_all(registers)
        .await
        .into_iter()
        .map(|result| result.unwrap())
        .collect();
    assert_eq!(ids.len(), 300);

    let instances = client.query("bulky").await.unwrap();
    let bytes: usize = instances
        .iter()
        .map(discovery_proto::encoding::encoded_len)
        .sum();
    assert!(bytes > 2 * MAX_FRAME_BYTES, "only {bytes} bytes: not split");
    let found: HashSet<Uuid> = instances.iter().map(|instance| instance.id).collect();
    assert_eq!(found, ids);
    assert!(instances.iter().all(|i| i.metadata["blob"] == value));

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn unknown_ids_and_refused_specs_are_told_apart() {
    let server = common::server(TTL).await;
    let client = client(server.address());

    let unknown = Uuid::new_v4();
    assert!(client.heartbeat(unknown).await.unwrap_err().is_not_found());
    assert!(client.deregister(unknown).await.unwrap_err().is_not_found());

    let error = client.register_once(&spec("bad", 0)).await.unwrap_err();
    assert!(error.is_rejected(), "{error:?}");
    assert_eq!(error.kind(), Some(ErrorKind::InvalidPort));
    let unspecified = ServiceSpec::new("bad", "0.0.0.0:80".parse().unwrap());
    let error = client.register_once(&unspecified).await.unwrap_err();
    assert_eq!(error.kind(), Some(ErrorKind::InvalidAddress));
    // A refused `register` makes no Registration.
    assert!(
        client
            .register(spec("bad", 0))
            .await
            .unwrap_err()
            .is_rejected()
    );

    // The connection goes on after refusals.
    client.ping().await.unwrap();
    let id = client.register_once(&spec("good", 9009)).await.unwrap().id;
    client.heartbeat(id).await.unwrap();
    client.deregister(id).await.unwrap();

    drop(client);
    server.stop().await;
}

/// A server that says `Welcome` and then never answers; counts its connections.
async fn silent_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut framed = Framed::new(stream, ServerCodec::default());
            if let Some(Ok(Ok(hello))) = framed.next().await {
                let config = ServerConfig::default();
                let welcome = Response::Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    ttl: TTL,
                    min_ttl: config.registry.min_ttl.min(TTL),
                    max_ttl: config.registry.max_ttl,
                    idle_timeout: config.idle_timeout,
                    frame_timeout: config.frame_timeout,
                    limits: config.limits(),
                };
                let _ = framed
                    .send(ServerFrame::new(hello.request_id, welcome))
                    .await;
            }
            held.push(framed);
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn a_server_that_does_not_answer_times_out_and_loses_the_connection() {
    let (address, accepted) = silent_server().await;
    let request_timeout = Duration::from_millis(300);
    let client = builder(address)
        .request_timeout(request_timeout)
        .build()
        .unwrap();

    let started = Instant::now();
    let error = client.ping().await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(started.elapsed() >= request_timeout);

    // The hung connection was dropped: the next call opens another.
    assert!(client.ping().await.unwrap_err().is_timeout());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// Registers, queries and heartbeats through a client built with `settings`, lets the
/// registration's own loop heartbeat, and checks that the worker still answers.
async fn works_against(server: &TestServer, settings: ClientBuilder, service_type: &str) {
    let client = settings.build().unwrap();
    let registration = client
        .register(spec(service_type, 9100))
        .await
        .unwrap_or_else(|e| panic!("register: {e}"));
    let id = registration.id();
    assert_eq!(listed(&client, service_type).await, vec![id]);
    client.heartbeat(id).await.unwrap();
    let first = client.query(service_type).await.unwrap()[0].last_heartbeat;
    eventually(
        "a heartbeat of the loop",
        Duration::from_secs(10),
        || async {
            let now = client.query(service_type).await.unwrap()[0].last_heartbeat;
            (now > first).then_some(())
        },
    )
    .await;
    assert!(registration.current_state().is_registered());
    // The worker lives: a call after all that is answered, not `Closed`.
    client.ping().await.unwrap();
    registration.shutdown().await.unwrap();
    assert!(listed(&client, service_type).await.is_empty());
    assert_eq!(server.address(), client.server_info().unwrap().peer);
}

// `Duration::MAX` is a common way to say "no timeout". It used to overflow a deadline in
// the worker, which stopped it: every later call failed with `Closed`.
#[tokio::test]
async fn an_endless_request_timeout_is_no_timeout() {
    let server = common::server(TTL).await;
    let settings = builder(server.address()).request_timeout(Duration::MAX);
    works_against(&server, settings, "endless-request").await;
    server.stop().await;
}

#[tokio::test]
async fn an_endless_connect_timeout_is_no_timeout() {
    let server = common::server(TTL).await;
    let settings = builder(server.address()).connect_timeout(Duration::MAX);
    works_against(&server, settings, "endless-connect").await;
    let settings = builder(server.address())
        .connect_timeout(Duration::MAX)
        .request_timeout(Duration::MAX)
        .backoff_max(Duration::MAX);
    works_against(&server, settings, "endless-everything").await;
    server.stop().await;
}

#[tokio::test]
async fn nothing_busy_loops_against_a_server_that_hangs_up() {
    // Accepts and closes at once, before any Welcome.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let client = builder(address)
        .connect_timeout(Duration::from_millis(1500))
        .build()
        .unwrap();

    let error = client.ping().await.unwrap_err();
    assert!(error.is_connection(), "{error:?}");
    assert!(error.to_string().contains("before its Welcome"), "{error}");
    // Backing off from 100 ms and doubling, 1.5 s holds at most about five attempts. (That
    // nothing is tried while no call waits is checked with a paused clock in the unit
    // tests of `worker`.)
    let attempts = accepted.load(Ordering::SeqCst);
    assert!((2..=8).contains(&attempts), "{attempts} attempts in 1.5 s");
}

#[test]
fn calls_after_the_worker_stopped_say_why() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = first.block_on(async { client(dead_address()) });
    // The worker ran on the first runtime, which goes away with it.
    drop(first);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = second.block_on(client.ping()).unwrap_err();
    assert!(matches!(error, Error::Closed { .. }), "{error:?}");
    assert!(error.to_string().contains("runtime"), "{error}");
}

#[tokio::test]
async fn build_refuses_an_unusable_configuration() {
    let error = discovery_client::Client::builder().build().unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    let error = builder(dead_address())
        .connect_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("connect timeout"), "{error}");
}

#[test]
fn build_outside_a_runtime_is_an_error_not_a_panic() {
    let error = builder(dead_address()).build().unwrap_err();
    assert!(error.to_string().contains("tokio runtime"), "{error}");
}

#[tokio::test]
async fn the_older_of_two_registrations_of_one_endpoint_ends_replaced() {
    let server = common::server(TTL).await;
    let (first, second, checker) = (
        client(server.address()),
        client(server.address()),
        client(server.address()),
    );
    let older = first.register(spec("contested", 9100)).await.unwrap();
    let older_id = older.id();
    let mut states = older.state();
    let newer = second.register(spec("contested", 9100)).await.unwrap();
    let newer_id = newer.id();

    // The older one's next heartbeat learns it was replaced: it stops, in Replaced.
    let state = *timeout(
        Duration::from_secs(10),
        states.wait_for(|s| !s.is_registered()),
    )
    .await
    .expect("the older registration learns it was replaced")
    .unwrap();
    assert_eq!(state, RegistrationState::Replaced { id: older_id });
    assert!(states.changed().await.is_err(), "its loop has ended");

    // Nobody takes the endpoint back: for several TTLs the newer one holds it.
    let until = Instant::now() + 3 * TTL;
    while Instant::now() < until {
        assert_eq!(listed(&checker, "contested").await, [newer_id]);
        sleep(INTERVAL).await;
    }
    assert_eq!(
        newer.current_state(),
        RegistrationState::Registered { id: newer_id }
    );
    let error = checker.heartbeat(older_id).await.unwrap_err();
    assert_eq!(error.not_found_reason(), Some(RemoveReason::Replaced));

    // Shutting the older one down deregisters nothing: the endpoint is the newer one's.
    assert!(older.shutdown().await.unwrap_err().is_replaced());
    assert_eq!(listed(&checker, "contested").await, [newer_id]);
    newer.shutdown().await.unwrap();
    drop((first, second, checker));
    server.stop().await;
}

#[tokio::test]
async fn a_registration_with_a_ttl_of_its_own_beats_within_it() {
    // The server's TTL is a minute; the instance asks for two seconds.
    let server = common::server(Duration::from_secs(60)).await;
    let proxy = Proxy::start(server.address()).await;
    let owner = client(proxy.address());
    let checker = client(server.address());
    let ttl = Duration::from_secs(2);
    let registration = owner
        .register(spec("own-ttl", 9101).with_ttl(ttl))
        .await
        .unwrap();
    assert_eq!(registration.ttl(), ttl);
    let id = registration.id();

    // Listed all along, across several of its TTLs, and never registered again: its
    // heartbeats come within its two seconds (at the server's TTL they would come every
    // twenty).
    let until = Instant::now() + 3 * ttl;
    while Instant::now() < until {
        assert_eq!(listed(&checker, "own-ttl").await, [id]);
        sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(registration.id(), id);

    // Cut off, then dropped: its deregister cannot reach the server, so nothing but its
    // own TTL ends it, far sooner than the server's minute.
    proxy.down();
    drop(registration);
    eventually(
        "expired after its own TTL",
        Duration::from_secs(30),
        || async { listed(&checker, "own-ttl").await.is_empty() },
    )
    .await;
    let error = checker.heartbeat(id).await.unwrap_err();
    assert_eq!(error.not_found_reason(), Some(RemoveReason::Expired));

    drop((owner, checker, proxy));
    server.stop().await;
}

#[tokio::test]
async fn a_ttl_outside_the_servers_bounds_is_refused() {
    let server = common::server(TTL).await;
    let client = client(server.address());
    client.ping().await.unwrap();
    let info = client.server_info().expect("connected");
    assert!(info.min_ttl <= TTL && TTL <= info.max_ttl, "{info:?}");
    let too_long = info.max_ttl + Duration::from_secs(1);
    let error = client
        .register_once(&spec("greedy", 9102).with_ttl(too_long))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), Some(ErrorKind::InvalidTtl), "{error:?}");
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn types_are_listed_with_their_counts() {
    let server = common::server(Duration::from_secs(30)).await;
    let client = client(server.address());
    assert!(client.list_types().await.unwrap().is_empty());
    for (service_type, port) in [("web", 1), ("db", 2), ("web", 3), ("cache", 4)] {
        client
            .register_once(&spec(service_type, port))
            .await
            .unwrap();
    }
    let types: Vec<(String, u64)> = client
        .list_types()
        .await
        .unwrap()
        .into_iter()
        .map(|count| (count.service_type, count.instances))
        .collect();
    assert_eq!(
        types,
        [
            ("cache".to_owned(), 1),
            ("db".to_owned(), 1),
            ("web".to_owned(), 2)
        ]
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn an_update_keeps_the_id_and_gone_ids_say_why() {
    let server = common::server(Duration::from_secs(30)).await;
    let client = client(server.address());
    let id = client
        .register_once(&spec("updated", 9103))
        .await
        .unwrap()
        .id;
    let metadata = Metadata::from([("zone".to_owned(), "b".to_owned())]);
    let revision = client.update(id, metadata.clone()).await.unwrap();
    let found = client.query("updated").await.unwrap();
    assert_eq!((found[0].id, &found[0].metadata), (id, &metadata));

    // Replaced by a register of the same endpoint.
    let newer = client.register_once(&spec("updated", 9103)).await.unwrap();
    assert!(newer.revision > revision);
    let error = client.update(id, Metadata::new()).await.unwrap_err();
    assert!(error.is_replaced(), "{error:?}");
    // Deregistered.
    client.deregister(newer.id).await.unwrap();
    let error = client.heartbeat(newer.id).await.unwrap_err();
    assert_eq!(error.not_found_reason(), Some(RemoveReason::Deregistered));
    // Never known.
    let error = client.deregister(Uuid::new_v4()).await.unwrap_err();
    assert!(
        matches!(error, Error::NotFound { reason: None }),
        "{error:?}"
    );

    drop(client);
    server.stop().await;
}
