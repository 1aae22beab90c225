//! Follows the instances of a service type and prints every change, until Ctrl-C.
//!
//! ```text
//! cargo run --release -p discovery-server
//! cargo run -p discovery-client --example follow -- [SERVER] [TYPE]
//! ```
//!
//! `SERVER` defaults to `127.0.0.1:7777`, `TYPE` to `example` (what `announce` registers).
//! Start and stop `announce` to see instances come and go; stop the server for a while and
//! start it again to see the watch reconnect and resume (or reset, after a restart). Logs go
//! to stderr; `RUST_LOG=debug` shows every attempt. Exits with status 1 when no server
//! answers at the start.

use discovery_client::{Client, WatchEvent};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:7777".to_owned());
    let service_type = args.next().unwrap_or_else(|| "example".to_owned());

    let watch = async {
        let client = Client::builder()
            .address(server.as_str())
            .client_name("follow-example")
            .build()?;
        client.watch(service_type.as_str()).await
    };
    let mut watch = match watch.await {
        Ok(watch) => watch,
        Err(error) => {
            eprintln!("follow: {error}");
            std::process::exit(1);
        }
    };
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            event = watch.recv() => event,
        };
        match event {
            Some(WatchEvent::Snapshot {
                revision,
                instances,
                reset,
            }) => {
                let what = if reset { "reset" } else { "snapshot" };
                println!("{what} at {revision}: {} instances", instances.len());
                for instance in instances {
                    println!("  {} {}:{}", instance.id, instance.ip, instance.port);
                }
            }
            Some(WatchEvent::Added { revision, instance }) => {
                println!(
                    "{revision}: + {} {}:{}",
                    instance.id, instance.ip, instance.port
                );
            }
            Some(WatchEvent::Removed {
                revision,
                instance,
                reason,
            }) => {
                println!("{revision}: - {} ({reason:?})", instance.id);
            }
            Some(other) => println!("{other:?}"),
            None => {
                eprintln!("follow: the watch ended");
                std::process::exit(1);
            }
        }
    }
}
