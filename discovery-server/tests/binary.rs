//! The `discovery-server` binary, driven end to end: flags and environment, the
//! `listening on` line, and a clean exit on SIGTERM and SIGINT.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Wire;
use discovery_proto::{Request, Response};

const BIN: &str = env!("CARGO_BIN_EXE_discovery-server");

/// Starts the binary and reads the address from its `listening on` line.
fn start(args: &[&str], envs: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a line on stdout");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    (child, addr)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for the process to exit, killing it if it overstays.
fn wait(mut child: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn serves_and_exits_zero_on_sigterm() {
    let (child, addr) = start(&["--listen", "127.0.0.1:0"], &[("DISCOVERY_TTL", "1500ms")]);
    let mut wire = Wire::connect(addr).await;
    let welcome = wire
        .call(Request::Hello {
            protocol_version: discovery_proto::PROTOCOL_VERSION,
            client_name: "binary-test".into(),
        })
        .await;
    let Response::Welcome { ttl, .. } = welcome else {
        panic!("expected Welcome, got {welcome:?}");
    };
    assert_eq!(
        ttl,
        Duration::from_millis(1500),
        "the TTL came from the environment"
    );
    let id = wire.register("billing", 8080).await;
    assert_eq!(wire.query("billing").await[0].id, id);

    signal(&child, "TERM");
    let goodbye = wire.recv().await.expect("a goodbye frame");
    assert!(matches!(goodbye.response, Response::Error { .. }));
    assert!(wire.recv().await.is_none());
    let status = tokio::task::spawn_blocking(move || wait(child))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn exits_zero_on_sigint_with_an_idle_client() {
    let (child, addr) = start(&["--listen", "127.0.0.1:0", "--shutdown-grace", "1s"], &[]);
    let _wire = Wire::hello(addr).await;
    signal(&child, "INT");
    let status = tokio::task::spawn_blocking(move || wait(child))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_configuration_is_one_line_and_a_failure() {
    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--max-frame-bytes", "100000"])
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("max-frame-bytes"), "{stderr}");
    assert!(output.stdout.is_empty());

    let output = Command::new(BIN)
        .args(["--ttl", "soon"])
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2), "a usage error");
}

#[test]
fn an_address_in_use_is_a_clear_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(BIN)
        .args(["--listen", &addr])
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}
