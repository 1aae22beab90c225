//! The `discovery-cli` binary, driven end to end against real servers started in this
//! process on 127.0.0.1: every command, `--json`, the exit codes, the environment,
//! `--keep-alive` across a server restart, on signals and when another register takes its
//! endpoint, `watch` and its JSON lines, `types`, `update`, `--ttl`, the reasons of NOT
//! FOUND, and a script on stdin.

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use discovery_test_support::server::{Options, config_with_ttl};
use discovery_test_support::{PATIENCE, TestServer, eventually};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{sleep, timeout};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_discovery-cli");

/// A server in this process on `addr` (port 0 for a free one, or the port of a server
/// stopped a moment ago) with the given TTL.
async fn server_with_ttl(addr: SocketAddr, ttl: Duration) -> TestServer {
    TestServer::with(Options {
        config: config_with_ttl(ttl),
        addr,
        ..Options::default()
    })
    .await
}

/// A server on a free port with a 1 s TTL.
async fn server() -> TestServer {
    server_on("127.0.0.1:0".parse().unwrap()).await
}

/// A server on `addr` (to restart one on the same port) with a 1 s TTL.
async fn server_on(addr: SocketAddr) -> TestServer {
    server_with_ttl(addr, Duration::from_secs(1)).await
}

/// The binary with `--server addr` and nothing from the environment.
fn command(addr: SocketAddr, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--server")
        .arg(addr.to_string())
        .args(args)
        .env_remove("DISCOVERY_SERVER")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs the binary to its end.
async fn cli(addr: SocketAddr, args: &[&str]) -> Output {
    finish(command(addr, args)).await
}

async fn finish(mut command: Command) -> Output {
    timeout(PATIENCE, command.output())
        .await
        .expect("the command ends in time")
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Checks the exit code, showing both streams when it is not the one expected.
#[track_caller]
fn assert_code(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

/// `register` and the id it printed, checked to be alone on its line, lowercase, hyphenated.
async fn register(addr: SocketAddr, service_type: &str, port: u16, extra: &[&str]) -> Uuid {
    let port = port.to_string();
    let mut args = vec![
        "register",
        "--type",
        service_type,
        "--ip",
        "127.0.0.1",
        "--port",
        &port,
    ];
    args.extend_from_slice(extra);
    let output = cli(addr, &args).await;
    assert_code(&output, 0);
    parse_id(&stdout(&output))
}

#[track_caller]
fn parse_id(text: &str) -> Uuid {
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    let line = text.trim_end_matches('\n');
    let id: Uuid = line.parse().expect("a uuid");
    assert_eq!(
        line,
        id.hyphenated().to_string(),
        "lowercase and hyphenated"
    );
    id
}

/// The instances of a type, through `query --json`.
async fn query_json(addr: SocketAddr, service_type: &str) -> Vec<Value> {
    let output = cli(addr, &["query", service_type, "--json"]).await;
    assert_code(&output, 0);
    let value: Value = serde_json::from_str(&stdout(&output)).expect("JSON on stdout");
    value.as_array().expect("an array").clone()
}

fn ids(instances: &[Value]) -> Vec<String> {
    instances
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The next line of a running binary's stdout.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    timeout(PATIENCE, lines.next_line())
        .await
        .expect("a line in time")
        .expect("stdout readable")
        .expect("a line, not the end")
}

/// Sends a signal with the system's `kill`.
async fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("still running").to_string();
    let status = Command::new("/usr/bin/kill")
        .args(["-s", name, &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn every_command_against_a_server() {
    let server = server().await;
    let addr = server.addr;
    let id = register(
        addr,
        "web",
        8080,
        &["--meta", "version=1.2", "--meta", "zone=a"],
    )
    .await;
    let other = register(addr, "web", 9090, &[]).await;

    // The table: a header, one row per instance, metadata as k=v,k=v.
    let output = cli(addr, &["query", "web"]).await;
    assert_code(&output, 0);
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("METADATA"),
        "{table}"
    );
    let row = lines.iter().find(|l| l.contains(&id.to_string())).unwrap();
    assert!(row.contains("127.0.0.1") && row.contains("8080"), "{row}");
    assert!(row.ends_with("version=1.2,zone=a"), "{row}");
    assert!(row.contains("s "), "an age such as 0.1s: {row}");
    assert!(table.contains(&other.to_string()));

    // JSON: exactly the documented keys.
    let instances = query_json(addr, "web").await;
    assert_eq!(instances.len(), 2);
    let mine = instances
        .iter()
        .find(|i| i["id"] == id.to_string())
        .unwrap();
    let mut keys: Vec<&str> = mine
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["id", "ip", "last_heartbeat", "metadata", "port", "type"]
    );
    assert_eq!(mine["type"], "web");
    assert_eq!(mine["ip"], "127.0.0.1");
    assert_eq!(mine["port"], 8080);
    assert_eq!(
        mine["metadata"],
        serde_json::json!({"version": "1.2", "zone": "a"})
    );
    let when = chrono::DateTime::parse_from_rfc3339(mine["last_heartbeat"].as_str().unwrap())
        .expect("RFC 3339");
    let age = chrono::Utc::now() - when.to_utc();
    assert!(age < chrono::TimeDelta::seconds(5), "{age}");

    // heartbeat and deregister: OK, then NOT FOUND and why, with exit 3.
    let id = id.to_string();
    for (args, out, code) in [
        (["heartbeat", &id], "OK\n", 0),
        (["deregister", &id], "OK\n", 0),
        // The server remembers why the id is gone.
        (["deregister", &id], "NOT FOUND (deregistered)\n", 3),
        (["heartbeat", &id], "NOT FOUND (deregistered)\n", 3),
    ] {
        let output = cli(addr, &args).await;
        assert_code(&output, code);
        assert_eq!(stdout(&output), out, "{args:?}");
        assert!(stderr(&output).is_empty(), "{args:?}: {}", stderr(&output));
    }
    assert_eq!(ids(&query_json(addr, "web").await), [other.to_string()]);

    // No live instance is not an error.
    let output = cli(addr, &["query", "nothing"]).await;
    assert_code(&output, 0);
    assert_eq!(stdout(&output).lines().count(), 1, "just the header");
    let output = cli(addr, &["--json", "query", "nothing"]).await;
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "[]\n");
    server.stop().await;
}

#[tokio::test]
async fn failures_and_usage_errors_have_their_exit_codes() {
    let server = server().await;
    let addr = server.addr;

    // 1: refused by the server (clap accepts these; the server says why not).
    for (ip, port) in [("0.0.0.0", "80"), ("127.0.0.1", "0")] {
        let output = cli(
            addr,
            &["register", "--type", "web", "--ip", ip, "--port", port],
        )
        .await;
        assert_code(&output, 1);
        assert!(output.stdout.is_empty());
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("discovery-cli: the server refused the request: "),
            "{err}"
        );
    }

    // 2: usage, from clap.
    for args in [
        &["register", "--type", "web", "--ip", "127.0.0.1"][..],
        &[
            "register", "--type", "web", "--ip", "nowhere", "--port", "80",
        ],
        &["heartbeat", "not-a-uuid"],
        &["query", "web", "--timeout", "soon"],
        &["frobnicate"],
    ] {
        let output = cli(addr, args).await;
        assert_code(&output, 2);
        assert!(output.stdout.is_empty(), "{args:?}");
    }

    // --help documents the exit codes.
    let output = cli(addr, &["--help"]).await;
    assert_code(&output, 0);
    let help = stdout(&output);
    for line in [
        "0  success",
        "1  failure",
        "2  usage",
        "3  not found",
        "DISCOVERY_SERVER",
    ] {
        assert!(help.contains(line), "{line} in {help}");
    }
    server.stop().await;

    // 1: nothing listens on a port that was just free.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = free.local_addr().unwrap();
    drop(free);
    let output = cli(gone, &["query", "web", "--timeout", "300ms"]).await;
    assert_code(&output, 1);
    assert!(output.stdout.is_empty());
    assert_eq!(
        stderr(&output),
        format!("discovery-cli: cannot reach {gone}: connection refused\n")
    );
}

#[tokio::test]
async fn the_server_comes_from_the_environment_and_options_follow_the_command() {
    let server = server().await;
    let mut from_env = Command::new(BIN);
    from_env
        .args([
            "register",
            "--type",
            "env",
            "--ip",
            "127.0.0.1",
            "--port",
            "1",
        ])
        .env("DISCOVERY_SERVER", server.addr.to_string())
        .stdin(Stdio::null());
    let output = finish(from_env).await;
    assert_code(&output, 0);
    let id = parse_id(&stdout(&output));

    // Global options after the command, overriding a wrong environment.
    let mut after = Command::new(BIN);
    after
        .args(["query", "env", "--json", "--timeout", "2s", "--server"])
        .arg(server.addr.to_string())
        .env("DISCOVERY_SERVER", "127.0.0.1:1")
        .stdin(Stdio::null());
    let output = finish(after).await;
    assert_code(&output, 0);
    let instances: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(instances[0]["id"], id.to_string());
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_survives_a_server_restart_and_deregisters_on_sigterm() {
    let server = server().await;
    let addr = server.addr;
    let mut child = command(
        addr,
        &[
            "register",
            "--type",
            "kept",
            "--ip",
            "127.0.0.1",
            "--port",
            "7000",
            "--keep-alive",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = parse_id(&format!("{}\n", next_line(&mut lines).await));

    // Alive past several TTLs of 1 s.
    sleep(Duration::from_millis(2500)).await;
    assert_eq!(ids(&query_json(addr, "kept").await), [first.to_string()]);

    // A new server on the same port knows nothing: the instance comes back under a new id,
    // printed on its own line.
    server.stop().await;
    let server = server_on(addr).await;
    let second = parse_id(&format!("{}\n", next_line(&mut lines).await));
    assert_ne!(first, second);
    eventually("the instance is listed again", || async {
        ids(&query_json(addr, "kept").await) == [second.to_string()]
    })
    .await;

    signal(&child, "TERM").await;
    let status = timeout(PATIENCE, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        query_json(addr, "kept").await.is_empty(),
        "deregistered at once"
    );
    assert_eq!(
        timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap(),
        None
    );
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_deregisters_on_sigint() {
    let server = server().await;
    let mut child = command(
        server.addr,
        &[
            "--json",
            "register",
            "--type",
            "int",
            "--ip",
            "127.0.0.1",
            "--port",
            "7001",
            "--keep-alive",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line: Value = serde_json::from_str(&next_line(&mut lines).await).unwrap();
    let id = line["id"].as_str().unwrap().to_owned();
    assert_eq!(ids(&query_json(server.addr, "int").await), [id]);

    signal(&child, "INT").await;
    let status = timeout(PATIENCE, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(query_json(server.addr, "int").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_script_on_stdin_runs_every_line_and_exits_with_the_last_failure() {
    let server = server().await;
    let unknown = Uuid::new_v4();
    let script = format!(
        "# a comment, then a blank line\n\
         \n\
         register --type db --ip 127.0.0.1 --port 5432 --meta 'note=hello world'\n\
         query db --json\n\
         frobnicate\n\
         heartbeat {unknown}\n\
         query db\n"
    );
    let mut child = Command::new(BIN)
        .args(["--server", &server.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(script.as_bytes()).await.unwrap();
    drop(stdin);
    let output = timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_code(&output, 3);

    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    let id = parse_id(&format!("{}\n", lines[0]));
    let json: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(json[0]["id"], id.to_string());
    assert_eq!(
        json[0]["metadata"]["note"], "hello world",
        "quotes keep words together"
    );
    assert_eq!(lines[2], "NOT FOUND");
    assert!(lines[3].starts_with("ID"));
    assert!(lines[4].starts_with(&id.to_string()) && lines[4].ends_with("note=hello world"));
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        stderr(&output).contains("frobnicate"),
        "{}",
        stderr(&output)
    );

    // `exit` ends a script; all lines good is exit 0.
    let mut child = Command::new(BIN)
        .args(["--server", &server.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("deregister {id}\nexit\nheartbeat {unknown}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "OK\n");
    server.stop().await;
}

/// The next stdout line of a running `watch --json`, parsed.
async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = next_line(lines).await;
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"))
}

/// The sorted keys of a JSON object.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// The change count of a revision string, `INCARNATION-SEQ`.
#[track_caller]
fn seq(revision: &Value) -> u64 {
    let text = revision.as_str().expect("the revision is a string");
    let (incarnation, seq) = text.split_once('-').expect("INCARNATION-SEQ");
    assert_eq!(incarnation.len(), 16, "{text}");
    seq.parse().expect("a number")
}

const INSTANCE_KEYS: [&str; 7] = ["event", "id", "ip", "metadata", "port", "revision", "type"];

/// Starts `watch` with stdout piped and stderr dropped.
fn spawn_watch(addr: SocketAddr, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = command(addr, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Signals a running command and checks that it exits 0 with nothing more on stdout.
async fn stop_with(mut child: Child, mut lines: Lines<BufReader<ChildStdout>>, name: &str) {
    signal(&child, name).await;
    let status = timeout(PATIENCE, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap(),
        None
    );
}

#[tokio::test]
async fn watch_prints_one_json_object_per_line_until_sigterm() {
    let server = server_with_ttl("127.0.0.1:0".parse().unwrap(), Duration::from_secs(30)).await;
    let addr = server.addr;
    let first = register(addr, "web", 8080, &["--meta", "version=1"]).await;

    let (child, mut lines) = spawn_watch(addr, &["watch", "web", "--json"]);
    let (people, mut people_lines) = spawn_watch(addr, &["watch", "web"]);

    // The marker, then the one present instance.
    let marker = next_json(&mut lines).await;
    assert_eq!(keys(&marker), ["count", "event", "revision"]);
    assert_eq!(marker["event"], "snapshot");
    assert_eq!(marker["count"], 1);
    let start = seq(&marker["revision"]);
    let present = next_json(&mut lines).await;
    assert_eq!(keys(&present), INSTANCE_KEYS);
    assert_eq!(present["event"], "present");
    assert_eq!(present["revision"], marker["revision"]);
    assert_eq!(present["id"], first.to_string());
    assert_eq!(present["type"], "web");
    assert_eq!(present["ip"], "127.0.0.1");
    assert_eq!(present["port"], 8080);
    assert_eq!(present["metadata"], serde_json::json!({"version": "1"}));

    // For people: a snapshot line, then the instance.
    let line = next_line(&mut people_lines).await;
    assert!(
        line.starts_with("snapshot r=") && line.ends_with(" count=1"),
        "{line}"
    );
    assert_eq!(
        next_line(&mut people_lines).await,
        format!("= {first} 127.0.0.1:8080 version=1")
    );

    // Register, deregister and replace: one line each, in order, revisions growing.
    let second = register(addr, "web", 9090, &[]).await;
    let added = next_json(&mut lines).await;
    assert_eq!(keys(&added), INSTANCE_KEYS);
    assert_eq!(added["event"], "added");
    assert_eq!(added["id"], second.to_string());
    assert_eq!(added["port"], 9090);
    assert_eq!(added["metadata"], serde_json::json!({}));
    assert!(seq(&added["revision"]) > start);
    assert_eq!(
        next_line(&mut people_lines).await,
        format!("+ {second} 127.0.0.1:9090 -")
    );

    assert_code(&cli(addr, &["deregister", &first.to_string()]).await, 0);
    let removed = next_json(&mut lines).await;
    let mut expected: Vec<&str> = INSTANCE_KEYS.to_vec();
    expected.push("reason");
    expected.sort_unstable();
    assert_eq!(keys(&removed), expected);
    assert_eq!(removed["event"], "removed");
    assert_eq!(removed["reason"], "deregistered");
    assert_eq!(removed["id"], first.to_string());
    assert!(seq(&removed["revision"]) > seq(&added["revision"]));
    assert_eq!(
        next_line(&mut people_lines).await,
        format!("- {first} 127.0.0.1:8080 (deregistered)")
    );

    let third = register(addr, "web", 9090, &[]).await;
    let replaced = next_json(&mut lines).await;
    assert_eq!(
        (&replaced["event"], &replaced["reason"], &replaced["id"]),
        (
            &Value::from("removed"),
            &Value::from("replaced"),
            &Value::from(second.to_string())
        )
    );
    let added = next_json(&mut lines).await;
    assert_eq!(added["event"], "added");
    assert_eq!(added["id"], third.to_string());
    assert!(seq(&added["revision"]) > seq(&replaced["revision"]));

    assert_eq!(
        next_line(&mut people_lines).await,
        format!("- {second} 127.0.0.1:9090 (replaced)")
    );
    assert_eq!(
        next_line(&mut people_lines).await,
        format!("+ {third} 127.0.0.1:9090 -")
    );

    stop_with(child, lines, "TERM").await;
    stop_with(people, people_lines, "INT").await;
    server.stop().await;
}

#[tokio::test]
async fn watch_of_an_empty_type_prints_its_marker_and_sees_expiry() {
    let server = server().await; // a TTL of 1 s
    let addr = server.addr;
    let (child, mut lines) = spawn_watch(addr, &["--json", "watch", "empty"]);
    let marker = next_json(&mut lines).await;
    assert_eq!(marker["event"], "snapshot");
    assert_eq!(marker["count"], 0);
    assert!(marker["revision"].is_string());

    let id = register(addr, "empty", 7000, &[]).await;
    let added = next_json(&mut lines).await;
    assert_eq!(
        (added["event"].as_str(), added["id"].as_str()),
        (Some("added"), Some(id.to_string().as_str()))
    );
    // Nobody heartbeats it.
    let expired = next_json(&mut lines).await;
    assert_eq!(expired["event"], "removed");
    assert_eq!(expired["reason"], "expired");
    assert_eq!(expired["id"], id.to_string());

    stop_with(child, lines, "INT").await;
    server.stop().await;
}

#[tokio::test]
async fn watch_fails_at_once_without_a_server_and_is_refused_in_scripts() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = free.local_addr().unwrap();
    drop(free);
    let output = cli(gone, &["watch", "web", "--json", "--timeout", "300ms"]).await;
    assert_code(&output, 1);
    assert!(output.stdout.is_empty());
    assert_eq!(
        stderr(&output),
        format!("discovery-cli: cannot reach {gone}: connection refused\n")
    );

    // It runs until a signal, so a script may not run it.
    let mut child = Command::new(BIN)
        .args(["--server", &gone.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"watch web\n").await.unwrap();
    drop(stdin);
    let output = timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_code(&output, 2);
    assert!(output.stdout.is_empty());
    assert!(
        stderr(&output).contains("watch runs in the foreground"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn types_are_a_table_and_json() {
    let server = server_with_ttl("127.0.0.1:0".parse().unwrap(), Duration::from_secs(30)).await;
    let addr = server.addr;
    let output = cli(addr, &["types"]).await;
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "TYPE  INSTANCES\n", "just the header");
    for (service_type, port) in [("web", 1), ("billing", 2), ("web", 3)] {
        register(addr, service_type, port, &[]).await;
    }
    let output = cli(addr, &["types"]).await;
    assert_code(&output, 0);
    assert_eq!(
        stdout(&output),
        "TYPE     INSTANCES\nbilling          1\nweb              2\n"
    );
    let output = cli(addr, &["types", "--json"]).await;
    assert_code(&output, 0);
    let value: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        value,
        serde_json::json!([{"type": "billing", "instances": 1}, {"type": "web", "instances": 2}])
    );
    server.stop().await;
}

#[tokio::test]
async fn a_register_with_its_own_ttl_is_gone_soon_after_it() {
    // The server's TTL is a minute; the register asks for two seconds.
    let server = server_with_ttl("127.0.0.1:0".parse().unwrap(), Duration::from_secs(60)).await;
    let addr = server.addr;
    let id = register(addr, "brief", 7100, &["--ttl", "2s"]).await;
    assert_eq!(ids(&query_json(addr, "brief").await), [id.to_string()]);
    // Gone after its own two seconds, far sooner than the server's minute.
    eventually("expired after its own TTL", || async {
        query_json(addr, "brief").await.is_empty()
    })
    .await;
    let output = cli(addr, &["heartbeat", &id.to_string()]).await;
    assert_code(&output, 3);
    assert_eq!(stdout(&output), "NOT FOUND (expired)\n");
    // A TTL the server does not allow is a refusal.
    let output = cli(
        addr,
        &[
            "register",
            "--type",
            "brief",
            "--ip",
            "127.0.0.1",
            "--port",
            "7101",
            "--ttl",
            "100y",
        ],
    )
    .await;
    assert_code(&output, 1);
    server.stop().await;
}

#[tokio::test]
async fn update_keeps_the_id_and_a_watch_prints_it() {
    let server = server_with_ttl("127.0.0.1:0".parse().unwrap(), Duration::from_secs(30)).await;
    let addr = server.addr;
    let id = register(addr, "web", 8080, &["--meta", "version=1"]).await;
    let (child, mut lines) = spawn_watch(addr, &["watch", "web"]);
    assert!(next_line(&mut lines).await.starts_with("snapshot "));
    assert_eq!(
        next_line(&mut lines).await,
        format!("= {id} 127.0.0.1:8080 version=1")
    );

    let output = cli(
        addr,
        &[
            "update",
            &id.to_string(),
            "--meta",
            "version=2",
            "--meta",
            "zone=b",
        ],
    )
    .await;
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "OK\n");
    assert_eq!(
        next_line(&mut lines).await,
        format!("~ {id} 127.0.0.1:8080 version=2,zone=b")
    );
    let instances = query_json(addr, "web").await;
    assert_eq!(ids(&instances), [id.to_string()], "the same id");
    assert_eq!(
        instances[0]["metadata"],
        serde_json::json!({"version": "2", "zone": "b"})
    );

    // No --meta: the metadata is cleared. With --json, the revision of the change.
    let output = cli(addr, &["update", &id.to_string(), "--json"]).await;
    assert_code(&output, 0);
    let line: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(keys(&line), ["revision", "status"]);
    assert_eq!(line["status"], "ok");
    seq(&line["revision"]);
    assert_eq!(
        next_line(&mut lines).await,
        format!("~ {id} 127.0.0.1:8080 -")
    );

    let unknown = Uuid::new_v4().to_string();
    let output = cli(addr, &["update", &unknown, "--meta", "a=b"]).await;
    assert_code(&output, 3);
    assert_eq!(stdout(&output), "NOT FOUND\n");

    stop_with(child, lines, "TERM").await;
    server.stop().await;
}

#[tokio::test]
async fn a_replaced_id_is_not_found_and_says_so() {
    let server = server_with_ttl("127.0.0.1:0".parse().unwrap(), Duration::from_secs(30)).await;
    let addr = server.addr;
    let older = register(addr, "web", 8080, &[]).await.to_string();
    let newer = register(addr, "web", 8080, &[]).await;
    let output = cli(addr, &["heartbeat", &older, "--json"]).await;
    assert_code(&output, 3);
    assert_eq!(
        stdout(&output),
        "{\"reason\":\"replaced\",\"status\":\"not_found\"}\n"
    );
    let output = cli(addr, &["deregister", &older]).await;
    assert_code(&output, 3);
    assert_eq!(stdout(&output), "NOT FOUND (replaced)\n");
    // An id the server never knew has no reason.
    let output = cli(addr, &["heartbeat", &Uuid::new_v4().to_string(), "--json"]).await;
    assert_code(&output, 3);
    assert_eq!(stdout(&output), "{\"status\":\"not_found\"}\n");
    assert_eq!(ids(&query_json(addr, "web").await), [newer.to_string()]);
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_stops_when_another_register_takes_its_endpoint() {
    let server = server().await;
    let addr = server.addr;
    let mut child = command(
        addr,
        &[
            "register",
            "--type",
            "contested",
            "--ip",
            "127.0.0.1",
            "--port",
            "7200",
            "--keep-alive",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = parse_id(&format!("{}\n", next_line(&mut lines).await));
    assert_eq!(
        ids(&query_json(addr, "contested").await),
        [first.to_string()]
    );

    // Another process announces the same endpoint.
    let second = register(addr, "contested", 7200, &[]).await;
    let output = timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("exits in time")
        .unwrap();
    assert_code(&output, 1);
    assert!(
        stdout(&output).is_empty(),
        "no other id: {}",
        stdout(&output)
    );
    let err = stderr(&output);
    assert!(
        err.contains("discovery-cli: another register took 127.0.0.1:7200 (contested); stopping"),
        "{err}"
    );
    // It took nothing back and deregistered nothing: the other one holds the endpoint.
    assert_eq!(
        ids(&query_json(addr, "contested").await),
        [second.to_string()]
    );
    server.stop().await;
}
