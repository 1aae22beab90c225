//! Lists the live instances of a service type.
//!
//! ```text
//! cargo run --release -p discovery-server
//! cargo run -p discovery-client --example find -- [SERVER] [TYPE]
//! ```
//!
//! `SERVER` defaults to `127.0.0.1:7777`, `TYPE` to `example` (what `announce` registers).
//! Exits with status 1 when no server answers.

use discovery_client::Client;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:7777".to_owned());
    let service_type = args.next().unwrap_or_else(|| "example".to_owned());

    let instances = match find(&server, &service_type).await {
        Ok(instances) => instances,
        Err(error) => {
            eprintln!("find: {error}");
            std::process::exit(1);
        }
    };
    if instances.is_empty() {
        println!("no live instance of {service_type}");
        return;
    }
    println!(
        "{:<36}  {:<21}  {:<24}  metadata",
        "id", "address", "last heartbeat"
    );
    for instance in instances {
        let address = std::net::SocketAddr::new(instance.ip, instance.port);
        let metadata: Vec<String> = instance
            .metadata
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        println!(
            "{:<36}  {:<21}  {:<24}  {}",
            instance.id,
            address.to_string(),
            instance
                .last_heartbeat
                .format("%Y-%m-%d %H:%M:%S%.3f")
                .to_string(),
            metadata.join(" ")
        );
    }
}

async fn find(
    server: &str,
    service_type: &str,
) -> Result<Vec<discovery_client::Instance>, discovery_client::Error> {
    let client = Client::builder()
        .address(server)
        .client_name("find-example")
        .build()?;
    client.query(service_type).await
}
