//! The `discovery-server` binary, driven end to end: flags and environment, the
//! `listening on` line, and a clean exit on SIGTERM and SIGINT.

use std::process::Command;
use std::time::Duration;

use discovery_proto::{Request, Response};
use discovery_test_support::{Process, Wire};

const BIN: &str = env!("CARGO_BIN_EXE_discovery-server");

#[tokio::test]
async fn serves_and_exits_zero_on_sigterm() {
    let process = Process::start(
        BIN,
        &["--listen", "127.0.0.1:0"],
        &[("DISCOVERY_TTL", "1500ms")],
    )
    .await;
    let mut wire = Wire::connect(process.addr).await;
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

    process.signal("TERM");
    let goodbye = wire.recv().await.expect("a goodbye frame");
    assert!(matches!(goodbye.response, Response::Error { .. }));
    assert!(wire.recv().await.is_none());
    assert_eq!(process.wait().await.code(), Some(0));
}

#[tokio::test]
async fn exits_zero_on_sigint_with_an_idle_client() {
    let process = Process::start(
        BIN,
        &["--listen", "127.0.0.1:0", "--shutdown-grace", "1s"],
        &[],
    )
    .await;
    let _wire = Wire::hello(process.addr).await;
    process.signal("INT");
    assert_eq!(process.wait().await.code(), Some(0));
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
fn flag_values_past_their_bounds_are_refused_at_start_in_one_line() {
    // Each of these once validated and then aborted, panicked or hung (issue 15, finding 8).
    let cases: [(&[&str], &str); 6] = [
        (
            &["--watch-queue", "4000000000"],
            "watch-queue must be between",
        ),
        (
            &["--idle-timeout", "300000000000years"],
            "idle-timeout must be between",
        ),
        (
            &["--watch-window", "300000000000years"],
            "watch-window must be between",
        ),
        (
            &["--max-connections", "3000000000000000000"],
            "max-connections must be between",
        ),
        (
            &["--threads", "100000"],
            "threads must be between 0 and 1024",
        ),
        (
            &["--register-burst", "10"],
            "register-burst needs register-rate",
        ),
    ];
    for (flags, expected) in cases {
        let output = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{flags:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{flags:?}, one line: {stderr}");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{flags:?} never listened");
    }
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
