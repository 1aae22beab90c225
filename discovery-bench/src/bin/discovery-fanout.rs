//! `discovery-fanout`: how long a change takes to reach every watcher of its type.
//!
//! Opens `--watchers` connections (default 1,000), each watching one type, then registers
//! `--rounds` instances of that type one after the other from another connection. For each
//! register it measures, from the moment its frame is written, when the `Added` push
//! reached the first watcher and when it had reached all of them, and prints the
//! percentiles over the rounds on one line. Loopback only; every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use bytes::BytesMut;
use clap::Parser;
use discovery_proto::codec::ClientCodec;
use discovery_proto::{ClientFrame, PROTOCOL_VERSION, Request, Response, ServerFrame};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::codec::{Encoder, FramedRead};

/// Measures the time from a register to its event reaching every watcher of the type.
#[derive(Debug, Parser)]
#[command(name = "discovery-fanout", version)]
struct Cli {
    /// The discovery server's address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7777")]
    addr: SocketAddr,
    /// Watchers, one connection each.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Registers measured, one after the other.
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// The longest wait for any one step.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    io_timeout: Duration,
}

/// The type watched and registered; unlikely to meet anything else on the server.
const SERVICE_TYPE: &str = "bench-fanout";

/// One connection speaking frames.
struct Conn {
    frames: FramedRead<OwnedReadHalf, ClientCodec>,
    writer: OwnedWriteHalf,
    encoder: ClientCodec,
    write_buf: BytesMut,
    io_timeout: Duration,
}

impl Conn {
    async fn open(addr: SocketAddr, io_timeout: Duration) -> Result<Self, String> {
        let stream = timeout(io_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (reader, writer) = stream.into_split();
        let mut conn = Self {
            frames: FramedRead::with_capacity(reader, ClientCodec::default(), 8192),
            writer,
            encoder: ClientCodec::default(),
            write_buf: BytesMut::new(),
            io_timeout,
        };
        let hello = Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "discovery-fanout".into(),
        };
        match conn.call(1, hello).await?.response {
            Response::Welcome { .. } => Ok(conn),
            other => Err(format!("expected Welcome, got {other:?}")),
        }
    }

    async fn send(&mut self, request_id: u64, request: Request) -> Result<(), String> {
        self.encoder
            .encode(ClientFrame::new(request_id, request), &mut self.write_buf)
            .map_err(|e| e.to_string())?;
        timeout(
            self.io_timeout,
            self.writer.write_all_buf(&mut self.write_buf),
        )
        .await
        .map_err(|_| "write timed out".to_string())?
        .map_err(|e| e.to_string())
    }

    async fn recv(&mut self) -> Result<ServerFrame, String> {
        match timeout(self.io_timeout, self.frames.next()).await {
            Err(_) => Err("read timed out".to_string()),
            Ok(None) => Err("the server closed the connection".into()),
            Ok(Some(Ok(item))) => item.map_err(|e| e.to_string()),
            Ok(Some(Err(e))) => Err(e.to_string()),
        }
    }

    async fn call(&mut self, request_id: u64, request: Request) -> Result<ServerFrame, String> {
        self.send(request_id, request).await?;
        self.recv().await
    }
}

/// Opens a watcher and reads its snapshot; then reports the port of every `Added` it sees.
async fn watcher(
    addr: SocketAddr,
    io_timeout: Duration,
    ready: mpsc::Sender<Result<(), String>>,
    seen: mpsc::UnboundedSender<(u16, Instant)>,
) {
    let opened = async {
        let mut conn = Conn::open(addr, io_timeout).await?;
        let watch = Request::Watch {
            service_type: SERVICE_TYPE.into(),
            since: None,
            min_revision: None,
        };
        conn.send(2, watch).await?;
        loop {
            match conn.recv().await?.response {
                Response::Snapshot { more: false, .. } => return Ok(conn),
                Response::Snapshot { .. } => {}
                other => return Err(format!("expected a snapshot, got {other:?}")),
            }
        }
    }
    .await;
    let mut conn = match opened {
        Ok(conn) => conn,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    if ready.send(Ok(())).await.is_err() {
        return;
    }
    // The coordinator closes `seen` when it is done; a long silence ends the watcher too.
    while let Ok(frame) = conn.recv().await {
        if let Response::Added { instance, .. } = frame.response
            && seen.send((instance.port, Instant::now())).is_err()
        {
            return;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> String {
    format!("{:.1}us", d.as_secs_f64() * 1e6)
}

async fn run(cli: Cli) -> Result<String, String> {
    if !cli.addr.ip().is_loopback() {
        return Err(format!("{} is not a loopback address", cli.addr));
    }
    let watchers = cli.watchers.max(1);
    let rounds = cli.rounds.clamp(1, usize::from(u16::MAX) - 1);
    let (ready_tx, mut ready_rx) = mpsc::channel(watchers);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        tasks.push(tokio::spawn(watcher(
            cli.addr,
            cli.io_timeout,
            ready_tx.clone(),
            seen_tx.clone(),
        )));
    }
    drop((ready_tx, seen_tx));
    for _ in 0..watchers {
        match timeout(cli.io_timeout, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(format!("a watcher failed to start: {e}")),
            Ok(None) | Err(_) => return Err("the watchers did not all start".into()),
        }
    }

    let mut actor = Conn::open(cli.addr, cli.io_timeout).await?;
    let ip: IpAddr = [127, 0, 0, 1].into();
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let port = round as u16 + 1;
        let register = Request::Register {
            service_type: SERVICE_TYPE.into(),
            ip,
            port,
            metadata: Default::default(),
            ttl: None,
        };
        let request_id = round as u64 + 2;
        let started = Instant::now();
        actor.send(request_id, register).await?;
        let mut reached = 0;
        let mut earliest = None;
        while reached < watchers {
            let (seen_port, at) = timeout(cli.io_timeout, seen_rx.recv())
                .await
                .map_err(|_| format!("round {round}: {reached} of {watchers} watchers reached"))?
                .ok_or("every watcher stopped")?;
            if seen_port != port {
                return Err(format!(
                    "round {round}: an event for port {seen_port} came late"
                ));
            }
            reached += 1;
            earliest.get_or_insert(at);
            if reached == watchers {
                all.push(at - started);
            }
        }
        if let Some(at) = earliest {
            first.push(at - started);
        }
        match actor.recv().await?.response {
            Response::Registered { .. } => {}
            other => return Err(format!("round {round}: expected Registered, got {other:?}")),
        }
    }
    // Leave nothing behind: the instances are deregistered by expiring, and the watchers
    // stop as their connections close.
    drop(seen_rx);
    for task in &tasks {
        task.abort();
    }
    first.sort();
    all.sort();
    Ok(format!(
        "op=fanout watchers={watchers} rounds={rounds} first_p50={} all_p50={} all_p99={} all_max={}",
        micros(percentile(&first, 50.0)),
        micros(percentile(&all, 50.0)),
        micros(percentile(&all, 99.0)),
        micros(all.last().copied().unwrap_or_default()),
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("discovery-fanout: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("discovery-fanout: {e}");
            ExitCode::FAILURE
        }
    }
}
