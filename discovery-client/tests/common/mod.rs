//! What the client's tests share beyond `discovery-test-support`: servers with the TTL
//! and grace these tests use, and clients of them.

#![allow(dead_code, unused_imports)] // each test binary uses its own part of the helper

use std::net::SocketAddr;
use std::time::Duration;

use discovery_client::{Client, ClientBuilder, Uuid};
use discovery_test_support::TestServer;
use discovery_test_support::server::{Options, config_with_ttl};

pub use discovery_test_support::{Proxy, dead_address, eventually_within as eventually};

/// The TTL of the test servers: short, so that expiry and restarts are seen quickly.
pub const TTL: Duration = Duration::from_secs(1);

/// A test server on a free port of 127.0.0.1 whose instances live for `ttl`.
pub async fn server(ttl: Duration) -> TestServer {
    server_on("127.0.0.1:0".parse().expect("an address"), ttl).await
}

/// A test server on `address`, which may be the address of a server stopped a moment ago.
pub async fn server_on(address: SocketAddr, ttl: Duration) -> TestServer {
    let mut config = config_with_ttl(ttl);
    config.shutdown_grace = Duration::from_secs(2);
    TestServer::with(Options {
        config,
        addr: address,
        ..Options::default()
    })
    .await
}

/// A client builder for `address` with the defaults the tests rely on.
pub fn builder(address: SocketAddr) -> ClientBuilder {
    Client::builder()
        .address(address)
        .client_name("client-tests")
}

/// A client of `address` with default settings.
pub fn client(address: SocketAddr) -> Client {
    builder(address).build().unwrap()
}

/// The ids a query of `service_type` lists.
pub async fn listed(client: &Client, service_type: &str) -> Vec<Uuid> {
    client
        .query(service_type)
        .await
        .unwrap_or_else(|e| panic!("query {service_type}: {e}"))
        .into_iter()
        .map(|instance| instance.id)
        .collect()
}
