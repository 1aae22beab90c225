//! The limits under pressure, over real TCP on port 0: connections up to the cap and past
//! it, thousands of idle connections, frames trickled and stalled, 4 GiB length prefixes,
//! and the instance caps filled by pipelined registers.
//!
//! Each test ends the same way: a fresh connection still gets its `Welcome` and `Pong`,
//! and an instance registered at the start, kept alive by heartbeats every 200 ms against
//! a 3 s TTL, was never lost (every heartbeat was answered `Ok`) and is still listed.
//! `docs/RELIABILITY.md` says what each test shows.

use std::net::SocketAddr;
use std::time::Duration;

use discovery_proto::{
    ClientFrame, ErrorKind, PROTOCOL_VERSION, Request, Response, SERVER_REQUEST_ID, encoding,
};
use discovery_server::ServerConfig;
use discovery_test_support::wire::register;
use discovery_test_support::{PATIENCE, TestServer, Wire};
use futures_util::{StreamExt, stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The TTL of these servers: long beside the heartbeat interval, short beside the tests.
const TTL: Duration = Duration::from_secs(3);
/// How often the kept instance is heartbeaten.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
/// The type and port of the instance every test keeps alive.
const KEPT_TYPE: &str = "kept";
const KEPT_PORT: u16 = 7000;
/// How many connections a test opens at once: a burst far over the listen backlog would
/// have SYNs dropped and retried a second later.
const CONNECTS_IN_FLIGHT: usize = 128;

fn config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.registry.ttl = TTL;
    config
}

/// A raw frame: the length prefix, then the encoded request.
fn frame(request_id: u64, request: Request) -> Vec<u8> {
    let payload = encoding::encode(&ClientFrame::new(request_id, request)).expect("encodes");
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend(payload);
    bytes
}

fn hello() -> Request {
    Request::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "limits".into(),
    }
}

fn error_kind(response: &Response) -> ErrorKind {
    match response {
        Response::Error { kind, .. } => *kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// An instance registered at the start of a test and heartbeaten on its own connection
/// until [`Keeper::finish`]; any heartbeat not answered `Ok` fails the test.
struct Keeper {
    id: Uuid,
    stop: CancellationToken,
    task: JoinHandle<u32>,
}

impl Keeper {
    async fn start(addr: SocketAddr) -> Keeper {
        let mut wire = Wire::hello(addr).await;
        let id = wire.register(KEPT_TYPE, KEPT_PORT).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut beats = 0;
                let mut interval = tokio::time::interval(HEARTBEAT_EVERY);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return beats,
                        _ = interval.tick() => {}
                    }
                    let answer = wire
                        .call(Request::Heartbeat {
                            id,
                            min_revision: None,
                        })
                        .await;
                    assert_eq!(answer, Response::Ok, "the kept instance was lost");
                    beats += 1;
                }
            }
        });
        Keeper { id, stop, task }
    }

    /// Stops the heartbeats, then checks that the server still answers a fresh connection
    /// and still lists the kept instance.
    async fn finish(self, server: TestServer) {
        self.stop.cancel();
        let beats = self
            .task
            .await
            .expect("every heartbeat of the kept instance was answered Ok");
        assert!(beats >= 1, "the kept instance was heartbeaten");
        let mut fresh = hello_when_admitted(server.addr).await;
        assert_eq!(fresh.call(Request::Ping).await, Response::Pong);
        let listed = fresh.query(KEPT_TYPE).await;
        assert_eq!(listed.len(), 1, "the kept instance is listed once");
        assert_eq!(
            listed[0].id, self.id,
            "and it is the one registered at the start"
        );
        drop(fresh);
        server.stop().await;
    }
}

/// Connects and says Hello until the server admits the connection: a slot freed by a
/// client's close is free once the server has noticed the close, a moment later.
async fn hello_when_admitted(addr: SocketAddr) -> Wire {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut wire = Wire::connect(addr).await;
        let id = wire.send(hello()).await;
        match wire.recv().await {
            Some(frame) if frame.request_id == id => {
                assert!(
                    matches!(frame.response, Response::Welcome { .. }),
                    "expected Welcome, got {frame:?}"
                );
                return wire;
            }
            Some(frame) => assert_eq!(
                error_kind(&frame.response),
                ErrorKind::TooManyConnections,
                "the only refusal is for the cap"
            ),
            // Refused and reset before the refusal could be read.
            None => {}
        }
        assert!(Instant::now() < deadline, "a free slot is admitted again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens `count` connections that each say Hello and get their Welcome.
async fn open_greeted(addr: SocketAddr, count: usize) -> Vec<Wire> {
    stream::iter(0..count)
        .map(|_| Wire::hello(addr))
        .buffer_unordered(CONNECTS_IN_FLIGHT)
        .collect()
        .await
}

/// Asserts that a new connection is refused for the cap: an error frame outside any
/// request, then the end of the connection. With `say_hello`, the client sends its Hello
/// at once, as a real client does, without waiting to be refused.
async fn assert_refused(addr: SocketAddr, say_hello: bool) {
    let mut extra = Wire::connect(addr).await;
    if say_hello {
        extra.send(hello()).await;
    }
    let frame = extra
        .recv()
        .await
        .expect("a refusal frame before the close");
    assert_eq!(
        frame.request_id, SERVER_REQUEST_ID,
        "sent outside any request"
    );
    assert_eq!(error_kind(&frame.response), ErrorKind::TooManyConnections);
    assert!(
        extra.recv().await.is_none(),
        "then the connection is closed"
    );
}

/// Pings every connection, all requests out before any answer is read.
async fn ping_all(wires: &mut [Wire]) {
    for wire in wires.iter_mut() {
        wire.send(Request::Ping).await;
    }
    for wire in wires.iter_mut() {
        let frame = wire.recv().await.expect("a Pong");
        assert_eq!(frame.response, Response::Pong);
    }
}

/// The soft limit on open files of this process, from `/proc/self/limits` (Linux); 1024,
/// the usual default, where that cannot be read.
fn open_files_limit() -> usize {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return 1024;
    };
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3));
    match soft {
        Some("unlimited") => usize::MAX,
        Some(soft) => soft.parse().unwrap_or(1024),
        None => 1024,
    }
}

/// The peak virtual memory of this process in KiB, from `/proc/self/status` (Linux).
fn peak_virtual_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmPeak:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn connections_up_to_the_cap_and_one_more() {
    const CAP: usize = 500;
    let server = TestServer::with_config(ServerConfig {
        max_connections: CAP,
        ..config()
    })
    .await;
    let keeper = Keeper::start(server.addr).await;
    let mut open = open_greeted(server.addr, CAP - 1).await;

    // The 501st is refused with a clear error, whether or not it has said Hello yet...
    assert_refused(server.addr, false).await;
    for _ in 0..10 {
        assert_refused(server.addr, true).await;
    }
    // ...and the refusals cost the 500 nothing.
    ping_all(&mut open).await;

    // Closing one frees exactly one slot.
    drop(open.pop());
    open.push(hello_when_admitted(server.addr).await);
    assert_refused(server.addr, true).await;
    ping_all(&mut open).await;

    drop(open);
    keeper.finish(server).await;
}

#[tokio::test]
async fn a_flood_over_the_cap_is_refused_or_closed_and_costs_no_one() {
    // More connections over the cap than refusals may be under way at once, none of which
    // reads or closes: each is refused (at most MAX_REFUSALS at a time, each waiting about a
    // second for its client) or closed at once, and none is left open.
    let server = TestServer::with_config(ServerConfig {
        max_connections: 2,
        ..config()
    })
    .await;
    let keeper = Keeper::start(server.addr).await;
    let mut open = open_greeted(server.addr, 1).await;
    let flood = discovery_server::server::MAX_REFUSALS * 3;
    let mut over = Vec::with_capacity(flood);
    for _ in 0..flood {
        over.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    ping_all(&mut open).await;
    let mut refused = 0;
    for mut stream in over {
        let mut bytes = Vec::new();
        // The end of the stream, or a reset once the refusal has given up on this client.
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut bytes))
            .await
            .expect("every connection over the cap is closed");
        if !bytes.is_empty() {
            refused += 1;
        }
    }
    assert!(refused >= 1, "the first ones over the cap are told why");
    ping_all(&mut open).await;
    drop(open);
    keeper.finish(server).await;
}

#[tokio::test]
async fn thousands_of_idle_connections_hold_up_no_one() {
    // Each connection costs two descriptors here, its client's and the server's; leave
    // room for the other tests of this file, which run at the same time.
    let limit = open_files_limit();
    let idle = 3_000.min(limit.saturating_sub(2_000) / 2);
    if idle < 3_000 {
        eprintln!("only {idle} idle connections: the open-files limit is {limit}");
    }
    assert!(
        idle >= 100,
        "raise the open-files limit (ulimit -n) to run this test"
    );
    // The idle connections, the keeper's and one more to show that the server still serves.
    let cap = idle + 2;
    let server = TestServer::with_config(ServerConfig {
        max_connections: cap,
        ..config()
    })
    .await;
    let keeper = Keeper::start(server.addr).await;

    // Half say nothing at all, half say Hello and nothing more.
    let addr = server.addr;
    let silent: Vec<TcpStream> = stream::iter(0..idle / 2)
        .map(|_| async move { TcpStream::connect(addr).await.expect("connect") })
        .buffer_unordered(CONNECTS_IN_FLIGHT)
        .collect()
        .await;
    let greeted = open_greeted(server.addr, idle - silent.len()).await;

    // Accepting is in order, so this Welcome means every idle connection was accepted.
    let started = Instant::now();
    let mut probe = Wire::hello(server.addr).await;
    assert_eq!(probe.call(Request::Ping).await, Response::Pong);
    assert_eq!(probe.query(KEPT_TYPE).await.len(), 1);
    let took = started.elapsed();
    eprintln!("with {idle} idle connections open, Hello, Ping and Query took {took:?}");
    // They all count against the cap: the next one is refused.
    assert_refused(server.addr, true).await;

    // Once they are gone, their slots are free again: as many can open as before.
    drop(probe);
    drop(silent);
    drop(greeted);
    let reopened: Vec<Wire> = stream::iter(0..idle + 1)
        .map(|_| hello_when_admitted(addr))
        .buffer_unordered(CONNECTS_IN_FLIGHT)
        .collect()
        .await;
    assert_eq!(reopened.len(), idle + 1);
    assert_refused(server.addr, true).await;

    drop(reopened);
    keeper.finish(server).await;
}

#[tokio::test]
async fn trickled_and_stalled_frames_are_cut_off_at_the_frame_timeout() {
    const FRAME_TIMEOUT: Duration = Duration::from_millis(300);
    let server = TestServer::with_config(ServerConfig {
        frame_timeout: FRAME_TIMEOUT,
        ..config()
    })
    .await;
    let keeper = Keeper::start(server.addr).await;

    // A register of about 200 bytes: sent a byte every 20 ms it would take 4 s, more than
    // ten frame timeouts, though no pause between two bytes comes near one.
    let mut metadata = discovery_proto::Metadata::new();
    metadata.insert("padding".into(), "x".repeat(160));
    let request = Request::Register {
        service_type: "trickled".into(),
        ip: "127.0.0.1".parse().expect("ip"),
        port: 1,
        metadata,
        ttl: None,
    };
    let bytes = frame(2, request);
    assert!(bytes.len() > 150);

    let mut slow = Vec::new();
    for n in 0..20 {
        // Even ones trickle without pause until cut off; odd ones send a third of the frame
        // that way, then stall.
        let sent = if n % 2 == 0 {
            bytes.clone()
        } else {
            bytes[..bytes.len() / 3].to_vec()
        };
        let mut wire = Wire::hello(server.addr).await;
        slow.push(tokio::spawn(async move {
            let (mut read, mut write) = wire.stream().split();
            let started = Instant::now();
            let trickle = async {
                for byte in sent {
                    if write.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                std::future::pending::<()>().await;
            };
            let closed = async {
                let mut answer = [0; 64];
                match read.read(&mut answer).await {
                    Ok(0) | Err(_) => {}
                    Ok(n) => panic!(
                        "an answer, so the frame was not cut off: {:?}",
                        &answer[..n]
                    ),
                }
            };
            tokio::select! {
                () = closed => {}
                () = trickle => {}
                () = tokio::time::sleep(PATIENCE) => panic!("the slow sender was not cut off"),
            }
            started.elapsed()
        }));
    }

    // Meanwhile, another connection goes on at its own pace.
    let mut busy = Wire::hello(server.addr).await;
    let mut pings = 0;
    let mut cut = Vec::new();
    for task in slow {
        while !task.is_finished() {
            assert_eq!(busy.call(Request::Ping).await, Response::Pong);
            pings += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cut.push(task.await.expect("the slow sender was cut off"));
    }
    assert!(
        pings > 10,
        "the busy connection was served meanwhile ({pings} pings)"
    );
    for took in cut {
        // The deadline runs from the first byte of the frame, and bytes do not reset it.
        assert!(
            took >= FRAME_TIMEOUT - Duration::from_millis(50),
            "cut off only after the frame timeout, not after {took:?}"
        );
    }
    assert!(
        busy.query("trickled").await.is_empty(),
        "no trickled frame took effect"
    );

    drop(busy);
    keeper.finish(server).await;
}

#[tokio::test]
async fn a_hundred_4_gib_length_prefixes_end_only_their_connections() {
    let server = TestServer::with_config(config()).await;
    let keeper = Keeper::start(server.addr).await;
    let peak_before = peak_virtual_kib();

    let addr = server.addr;
    let closed: Vec<bool> = stream::iter(0..100)
        .map(|n| async move {
            // Half announce 4 GiB as their first frame, half after their Hello; each sends
            // 16 KiB of the promised payload after the length.
            let mut wire = if n % 2 == 0 {
                Wire::connect(addr).await
            } else {
                Wire::hello(addr).await
            };
            let mut bytes = u32::MAX.to_be_bytes().to_vec();
            bytes.extend(std::iter::repeat_n(0xAB, 16 * 1024));
            // The server may close before it has taken every byte.
            let _ = wire.stream().write_all(&bytes).await;
            wire.recv().await.is_none()
        })
        .buffer_unordered(100)
        .collect()
        .await;
    assert!(
        closed.iter().all(|&closed| closed),
        "each was closed without an answer"
    );

    // The length was refused before any buffer was sized for it: the process never mapped
    // even one 4 GiB buffer. (VmPeak also counts the other tests of this file, whose
    // growth is a small part of a GiB.)
    if let (Some(before), Some(after)) = (peak_before, peak_virtual_kib()) {
        let grown_mib = after.saturating_sub(before) / 1024;
        eprintln!("peak virtual memory grew by {grown_mib} MiB");
        assert!(
            grown_mib < 2048,
            "peak virtual memory grew by {grown_mib} MiB"
        );
    }
    keeper.finish(server).await;
}

#[tokio::test]
async fn instance_caps_total_and_per_type() {
    const TOTAL: usize = 1_000;
    const PER_TYPE: usize = 300;
    let mut config = config();
    config.registry.max_instances = TOTAL;
    config.registry.max_instances_per_type = PER_TYPE;
    let server = TestServer::with_config(config).await;
    // The kept instance is one of the 1,000.
    let keeper = Keeper::start(server.addr).await;
    let mut wire = Wire::hello(server.addr).await;

    /// Registers ports `ports` of `service_type` pipelined, and returns the answers.
    async fn register_all(
        wire: &mut Wire,
        service_type: &str,
        ports: std::ops::RangeInclusive<u16>,
    ) -> Vec<Response> {
        let mut bytes = Vec::new();
        let first_id = 1_000_000 + u64::from(*ports.start());
        for port in ports.clone() {
            let id = 1_000_000 + u64::from(port);
            bytes.extend(frame(id, register(service_type, port)));
        }
        wire.stream().write_all(&bytes).await.expect("send");
        let mut answers = Vec::new();
        for (n, _) in ports.enumerate() {
            let frame = wire.recv().await.expect("an answer");
            assert_eq!(frame.request_id, first_id + n as u64, "answers in order");
            answers.push(frame.response);
        }
        answers
    }
    fn ids(answers: Vec<Response>) -> Vec<Uuid> {
        answers
            .into_iter()
            .map(|answer| match answer {
                Response::Registered { id, .. } => id,
                other => panic!("expected Registered, got {other:?}"),
            })
            .collect()
    }

    // A type fills to its cap; the next of that type is refused for the type.
    let a = ids(register_all(&mut wire, "a", 1..=300).await);
    let refused = register_all(&mut wire, "a", 301..=305).await;
    assert!(
        refused
            .iter()
            .all(|r| error_kind(r) == ErrorKind::TypeLimit)
    );

    // Other types fill the registry to its cap: 1 + 300 * 3 + 99 = 1,000.
    ids(register_all(&mut wire, "b", 1..=300).await);
    ids(register_all(&mut wire, "c", 1..=300).await);
    let d = ids(register_all(&mut wire, "d", 1..=99).await);
    assert_eq!(server.registry.len(), TOTAL);
    let refused = register_all(&mut wire, "e", 1..=5).await;
    assert!(
        refused
            .iter()
            .all(|r| error_kind(r) == ErrorKind::InstanceLimit)
    );
    let refused = register_all(&mut wire, "d", 100..=100).await;
    assert_eq!(error_kind(&refused[0]), ErrorKind::InstanceLimit);

    // A replacement at both caps is accepted: it takes no new slot.
    let replaced = ids(register_all(&mut wire, "a", 1..=1).await)[0];
    assert_ne!(replaced, a[0]);
    assert_eq!(
        wire.call(Request::Heartbeat {
            id: a[0],
            min_revision: None
        })
        .await,
        Response::NotFound {
            reason: Some(discovery_proto::RemoveReason::Replaced)
        },
        "the replaced entry is gone"
    );
    assert_eq!(server.registry.len(), TOTAL);
    let listed = wire.query("a").await;
    assert_eq!(listed.len(), PER_TYPE);
    assert!(listed.iter().any(|i| i.id == replaced));

    // A deregister frees a slot of the total...
    assert!(matches!(
        wire.call(Request::Deregister {
            id: d[0],
            min_revision: None
        })
        .await,
        Response::Done { .. }
    ));
    ids(register_all(&mut wire, "e", 1..=1).await);
    let refused = register_all(&mut wire, "e", 2..=2).await;
    assert_eq!(error_kind(&refused[0]), ErrorKind::InstanceLimit);
    // ...and of its type.
    assert!(matches!(
        wire.call(Request::Deregister {
            id: a[1],
            min_revision: None
        })
        .await,
        Response::Done { .. }
    ));
    ids(register_all(&mut wire, "a", 301..=301).await);
    let refused = register_all(&mut wire, "a", 302..=302).await;
    assert_eq!(error_kind(&refused[0]), ErrorKind::InstanceLimit);
    assert_eq!(wire.query("a").await.len(), PER_TYPE);
    assert_eq!(server.registry.len(), TOTAL);

    drop(wire);
    keeper.finish(server).await;
}
