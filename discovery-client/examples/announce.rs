//! Announces a service and keeps it alive until Ctrl-C, then deregisters it.
//!
//! ```text
//! cargo run --release -p discovery-server
//! cargo run -p discovery-client --example announce -- [SERVER] [TYPE] [ADDRESS]
//! ```
//!
//! `SERVER` defaults to `127.0.0.1:7777`, `TYPE` to `example`, `ADDRESS` (where callers
//! would reach the service) to `127.0.0.1:8080`. Stop the server for a while and start it
//! again to watch the registration reconnect and register again. Logs go to stderr;
//! `RUST_LOG=debug` shows every attempt.

use std::net::SocketAddr;

use discovery_client::{Client, ServiceSpec};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:7777".to_owned());
    let service_type = args.next().unwrap_or_else(|| "example".to_owned());
    let address: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:8080").parse()?;

    let client = Client::builder()
        .address(server.as_str())
        .client_name("announce-example")
        .build()?;
    let spec = ServiceSpec::new(service_type.as_str(), address)
        .with_metadata("started-by", "discovery-client/examples/announce.rs");
    let registration = client.register(spec).await?;
    let ttl = registration.ttl();
    println!(
        "registered {service_type} at {address} as {} on {server} (TTL {ttl:?}); Ctrl-C to stop",
        registration.id()
    );

    let mut states = registration.state();
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                signal?;
                break;
            }
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                println!("state: {:?}", *states.borrow_and_update());
            }
        }
    }

    let id = registration.id();
    match registration.shutdown().await {
        Ok(()) => println!("deregistered {id}"),
        Err(error) if error.is_not_found() => println!("{id} was already gone"),
        Err(error) => return Err(error.into()),
    }
    Ok(())
}
