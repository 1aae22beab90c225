//! Watch floods over the wire (issue 15, finding 1): Watch+Unwatch of ever new types holds
//! the feeds at `--max-watched-types`; open watches past it are refused with
//! `WatchedTypeLimit`; a watch refused by the connection's own cap creates no feed; and the
//! server, its other connections and its instances are unaffected.

use discovery_proto::{ErrorKind, Request, Response};
use discovery_server::ServerConfig;
use discovery_test_support::{TestServer, Wire};

const MAX_TYPES: usize = 16;

fn config() -> ServerConfig {
    let mut config = ServerConfig {
        max_watches_per_connection: 8,
        ..ServerConfig::default()
    };
    config.registry.max_watched_types = MAX_TYPES;
    config
}

fn watch(service_type: String) -> Request {
    Request::Watch {
        service_type,
        since: None,
        min_revision: None,
    }
}

/// Sends a watch and reads its first frame: the snapshot, or the refusal.
async fn open(wire: &mut Wire, service_type: String) -> (u64, Response) {
    let id = wire.send(watch(service_type)).await;
    let frame = wire.recv().await.expect("an answer");
    assert_eq!(frame.request_id, id);
    (id, frame.response)
}

#[tokio::test]
async fn watch_floods_hold_the_feeds_at_their_cap_and_harm_no_one() {
    let server = TestServer::with_config(config()).await;
    let mut keeper = Wire::hello(server.addr).await;
    let kept = keeper.register("kept", 9000).await;

    // The finding's flood: Watch and Unwatch of a new type, again and again.
    let mut flood = Wire::hello(server.addr).await;
    for n in 0..2_000 {
        let (id, start) = open(&mut flood, format!("flood-{n}")).await;
        assert!(matches!(start, Response::Snapshot { .. }), "{start:?}");
        assert!(matches!(
            flood.call(Request::Unwatch { watch: id }).await,
            Response::Ok
        ));
    }
    assert!(server.registry.watched_types() <= MAX_TYPES);

    // Open watches up to the cap, on two connections (8 each): the 17th type is refused.
    let mut first = Wire::hello(server.addr).await;
    let mut second = Wire::hello(server.addr).await;
    for n in 0..MAX_TYPES {
        let wire = if n < 8 { &mut first } else { &mut second };
        let (_, start) = open(wire, format!("open-{n}")).await;
        assert!(matches!(start, Response::Snapshot { .. }), "{start:?}");
    }
    let mut third = Wire::hello(server.addr).await;
    let (_, refused) = open(&mut third, "one-more".into()).await;
    assert!(
        matches!(
            refused,
            Response::Error {
                kind: ErrorKind::WatchedTypeLimit,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(server.registry.watched_types(), MAX_TYPES);

    // A connection at its own cap asking for new types creates no feed at all.
    let before = (
        server.registry.watched_types(),
        server.registry.watch_bytes(),
    );
    for n in 0..100 {
        let (_, refused) = open(&mut first, format!("over-the-connection-cap-{n}")).await;
        assert!(
            matches!(
                refused,
                Response::Error {
                    kind: ErrorKind::WatchLimit,
                    ..
                }
            ),
            "{refused:?}"
        );
    }
    assert_eq!(
        (
            server.registry.watched_types(),
            server.registry.watch_bytes()
        ),
        before
    );

    // Everyone else is served; the kept instance is there and alive.
    assert!(matches!(
        keeper
            .call(Request::Heartbeat {
                id: kept,
                min_revision: None
            })
            .await,
        Response::Ok
    ));
    assert_eq!(third.query("kept").await[0].id, kept);
    assert!(matches!(flood.call(Request::Ping).await, Response::Pong));
    server.stop().await;
}
