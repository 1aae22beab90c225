//! The server's handling of an arbitrary byte stream on one connection.
//!
//! The input (after its first byte, see `discovery_fuzz::Setup`) is written into one end
//! of an in-memory pipe whose other end a real `Connection` serves, on a current-thread
//! runtime with paused time, so that the idle and frame timeouts cost no real time. The
//! target requires that the connection ends within a few virtual minutes without a panic,
//! that every byte it sends decodes as server frames within its frame limit (none after an
//! error that closes the connection), and that the registry is intact afterwards: an
//! instance registered before the stream is still listed (or replaced by a register of the
//! same endpoint, which the stream may send), and the registry still serves a register, a
//! heartbeat and a query.
//!
//! Run from `fuzz/`: `cargo +nightly fuzz run connection -- -runs=1000000`.

#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use discovery_fuzz::{KEPT_PORT, KEPT_TYPE, Setup, client_frame, hello};
use discovery_proto::codec::ClientCodec;
use discovery_proto::{ErrorKind, Metadata, Response, SERVER_REQUEST_ID};
use discovery_server::binary::Connection;
use discovery_server::frontend::Context;
use discovery_server::{Registry, ServerConfig};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

/// Far longer than any input takes: the server's own timeouts (idle 60 s, frame 10 s)
/// end every connection well before it.
const VIRTUAL_PATIENCE: Duration = Duration::from_secs(5 * 60);

fuzz_target!(|data: &[u8]| {
    let (setup, stream) = Setup::parse(data);
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(serve(setup, stream));
});

fn config(setup: Setup) -> ServerConfig {
    let mut config = ServerConfig::default();
    if setup.small_frames {
        config.registry.max_frame_bytes = 1024;
    }
    // Nothing expires during a run; small caps, so that the stream can reach them. The
    // bounds of a register's own TTL widen to take the default one.
    config.registry.ttl = Duration::from_secs(3600);
    config.registry.min_ttl = config.registry.min_ttl.min(config.registry.ttl);
    config.registry.max_ttl = config.registry.max_ttl.max(config.registry.ttl);
    config.registry.max_instances = 16;
    config.registry.max_instances_per_type = 8;
    config.max_watches_per_connection = 4;
    config.registry.watch_queue = 8;
    config.registry.watch_history = 8;
    config
}

async fn serve(setup: Setup, input: &[u8]) {
    let config = config(setup);
    let registry = Registry::new(config.registry.clone());
    let localhost = IpAddr::from([127, 0, 0, 1]);
    let kept = registry
        .register(KEPT_TYPE, localhost, KEPT_PORT, Metadata::new())
        .expect("an empty registry takes an instance");

    let mut bytes = Vec::new();
    if setup.hello {
        bytes.extend(client_frame(1, hello()));
    }
    bytes.extend_from_slice(input);

    let (client, server) = tokio::io::duplex(setup.pipe_capacity);
    let peer = SocketAddr::new(localhost, 40000);
    let context = Context {
        registry: registry.clone(),
        config: Arc::new(config),
    };
    let connection = Connection::new(server, peer, &context);
    let shutdown = CancellationToken::new();
    let (mut reader, mut writer) = tokio::io::split(client);
    let write = async {
        // The server may close before taking everything: a broken pipe is fine.
        let _ = writer.write_all(&bytes).await;
        if setup.shut_down {
            shutdown.cancel();
        }
        let _ = writer.shutdown().await;
        drop(writer);
    };
    let read = async {
        let mut answers = Vec::new();
        let _ = reader.read_to_end(&mut answers).await;
        answers
    };
    let run = connection.run(&context, &shutdown);
    let ((), answers, _ended) =
        tokio::time::timeout(VIRTUAL_PATIENCE, async { tokio::join!(write, read, run) })
            .await
            .expect("the connection ends within a few virtual minutes");

    check_answers(&context.config, &answers, setup.shut_down);
    check_registry(&registry, kept, localhost).await;
}

/// Everything the server sent is whole frames, within its limit, that decode; nothing
/// follows an error that closes the connection, and a `ShuttingDown` goodbye comes only
/// if shutdown began.
fn check_answers(config: &ServerConfig, answers: &[u8], shut_down: bool) {
    let mut codec = ClientCodec::new(config.max_frame_bytes());
    let mut buf = BytesMut::from(answers);
    let mut closing = false;
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(Ok(frame))) => {
                assert!(!closing, "nothing follows an error that closes: {frame:?}");
                if let Response::Error { kind, .. } = frame.response {
                    closing = kind.closes_connection();
                    if kind == ErrorKind::ShuttingDown {
                        assert!(shut_down, "a goodbye without a shutdown");
                        assert_eq!(frame.request_id, SERVER_REQUEST_ID);
                    }
                }
            }
            Ok(Some(Err(e))) => panic!("the server sent a frame that does not decode: {e}"),
            Ok(None) => return,
            Err(e) => panic!("the server's answers are not whole frames: {e}"),
        }
    }
}

/// The instance registered before the stream is still served, and so is everything else.
async fn check_registry(registry: &Registry, kept: uuid::Uuid, localhost: IpAddr) {
    let listed = registry.query(KEPT_TYPE);
    let at_endpoint: Vec<_> = listed
        .iter()
        .filter(|i| i.ip == localhost && i.port == KEPT_PORT)
        .collect();
    assert_eq!(at_endpoint.len(), 1, "the kept endpoint is listed once");
    if at_endpoint[0].id == kept {
        assert!(
            registry.heartbeat(kept).is_ok(),
            "the kept instance is still live"
        );
    }
    let limit = registry.config().max_instances;
    assert!(registry.len() <= limit, "at most {limit} instances held");
    // A register of a held endpoint is a replacement: the caps never refuse it.
    let again = registry
        .register(KEPT_TYPE, localhost, KEPT_PORT, Metadata::new())
        .expect("the registry still takes a register");
    assert!(registry.heartbeat(again).is_ok());
    let listed = registry.query(KEPT_TYPE);
    assert!(listed.iter().any(|i| i.id == again), "and lists it");
    assert!(registry.heartbeat(kept).is_err() || kept == again);
}
