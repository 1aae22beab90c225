//! `discovery-pressure`: what a running server spends, and how it answers others, under the
//! floods of a hostile client (issue 15), measured from outside.
//!
//! - `answers`: fills a type with `--instances` instances of about `--metadata-bytes` of
//!   metadata, then opens `--stalled` connections that each ask for the whole type and never
//!   read the answer; prints the server's resident memory before, while they wait, and its
//!   peak. With answers streamed under `--max-answer-buffer-bytes`, it stays flat at about
//!   that bound per connection.
//! - `contention`: fills a type the same way, then lets `--watchers` connections loop Watch,
//!   the whole snapshot, Unwatch on it, while one more connection heartbeats an instance of
//!   another type, one request in flight, for `--duration`; prints the heartbeat's latency
//!   percentiles and how many watch loops ran.
//!
//! Loopback only; every wait is bounded by `--io-timeout`.

#[path = "../memory.rs"]
mod memory;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use discovery_proto::codec::ClientCodec;
use discovery_proto::{ClientFrame, Metadata, PROTOCOL_VERSION, Request, Response, ServerFrame};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, timeout};
use tokio_util::codec::{Encoder, FramedRead};

/// Measures a running server under a hostile client's floods.
#[derive(Debug, Parser)]
#[command(name = "discovery-pressure", version)]
struct Cli {
    /// The discovery server's address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7777")]
    addr: SocketAddr,
    /// The server's process id, to read its resident memory from `/proc`.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Instances of the big type.
    #[arg(long, default_value_t = 100_000)]
    instances: u32,
    /// About how many bytes of metadata each has.
    #[arg(long, default_value_t = 200)]
    metadata_bytes: usize,
    /// The longest wait for any one step.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    io_timeout: Duration,
    #[command(subcommand)]
    flood: Flood,
}

#[derive(Debug, Subcommand)]
enum Flood {
    /// Connections that ask for the whole big type and never read.
    Answers {
        /// How many.
        #[arg(long, default_value_t = 20)]
        stalled: usize,
        /// How long to watch the server's memory once they have all asked.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
    /// Watch+Unwatch loops on the big type beside an unrelated client's heartbeats.
    Contention {
        /// Connections looping Watch, the whole snapshot, Unwatch.
        #[arg(long, default_value_t = 3)]
        watchers: usize,
        /// How long the heartbeats are measured.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

/// The big type; unlikely to meet anything else on the server.
const BIG: &str = "pressure-big";
/// How long the instances live: the whole run, with no heartbeat.
const LONG_TTL: Duration = Duration::from_secs(3600);

/// One connection speaking frames.
struct Conn {
    frames: FramedRead<OwnedReadHalf, ClientCodec>,
    writer: OwnedWriteHalf,
    encoder: ClientCodec,
    write_buf: BytesMut,
    io_timeout: Duration,
    next_id: u64,
}

impl Conn {
    async fn open(addr: SocketAddr, io_timeout: Duration) -> Result<Self, String> {
        if !addr.ip().is_loopback() {
            return Err(format!("{addr} is not a loopback address"));
        }
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
            next_id: 1,
        };
        let hello = Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "discovery-pressure".into(),
        };
        match conn.call(hello).await?.response {
            Response::Welcome { .. } => Ok(conn),
            other => Err(format!("expected Welcome, got {other:?}")),
        }
    }

    /// Queues a request (written by the next `flush`); returns its id.
    fn queue(&mut self, request: Request) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id += 1;
        self.encoder
            .encode(ClientFrame::new(id, request), &mut self.write_buf)
            .map_err(|e| e.to_string())?;
        Ok(id)
    }

    async fn flush(&mut self) -> Result<(), String> {
        timeout(
            self.io_timeout,
            self.writer.write_all_buf(&mut self.write_buf),
        )
        .await
        .map_err(|_| "write timed out".to_string())?
        .map_err(|e| e.to_string())
    }

    async fn send(&mut self, request: Request) -> Result<u64, String> {
        let id = self.queue(request)?;
        self.flush().await?;
        Ok(id)
    }

    async fn recv(&mut self) -> Result<ServerFrame, String> {
        match timeout(self.io_timeout, self.frames.next()).await {
            Err(_) => Err("read timed out".to_string()),
            Ok(None) => Err("the server closed the connection".into()),
            Ok(Some(Ok(item))) => item.map_err(|e| e.to_string()),
            Ok(Some(Err(e))) => Err(e.to_string()),
        }
    }

    async fn call(&mut self, request: Request) -> Result<ServerFrame, String> {
        self.send(request).await?;
        self.recv().await
    }
}

/// Metadata of about `bytes` bytes, in pairs of up to 100-byte values.
fn metadata(n: u32, bytes: usize) -> Metadata {
    let pairs = bytes.div_ceil(110).max(1);
    (0..pairs)
        .map(|k| {
            (
                format!("k{k:02}"),
                format!("{n:0>width$}", width = 100.min(bytes)),
            )
        })
        .collect()
}

/// Registers the big type's instances, pipelined 1,000 at a time.
async fn fill(cli: &Cli) -> Result<(), String> {
    let mut conn = Conn::open(cli.addr, cli.io_timeout).await?;
    let mut sent = 0u32;
    while sent < cli.instances {
        let batch = (cli.instances - sent).min(1000);
        for n in sent..sent + batch {
            conn.queue(Request::Register {
                service_type: BIG.into(),
                ip: IpAddr::from((0x0a00_0000 + n).to_be_bytes()),
                port: 8080,
                metadata: metadata(n, cli.metadata_bytes),
                ttl: Some(LONG_TTL),
            })?;
        }
        conn.flush().await?;
        for _ in 0..batch {
            match conn.recv().await?.response {
                Response::Registered { .. } => {}
                other => return Err(format!("a register was refused: {other:?}")),
            }
        }
        sent += batch;
    }
    Ok(())
}

fn rss(cli: &Cli) -> String {
    match cli.server_pid {
        Some(pid) => match (memory::rss_bytes(pid), memory::peak_rss_bytes(pid)) {
            (Ok(now), Ok(peak)) => format!("rss {:.1} MiB, peak {:.1} MiB", mib(now), mib(peak)),
            (Err(e), _) | (_, Err(e)) => e,
        },
        None => "rss unknown (no --server-pid)".into(),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn answers(cli: &Cli, stalled: usize, hold: Duration) -> Result<(), String> {
    println!("filled with {} instances: {}", cli.instances, rss(cli));
    let mut conns = Vec::with_capacity(stalled);
    for _ in 0..stalled {
        let mut conn = Conn::open(cli.addr, cli.io_timeout).await?;
        conn.send(Request::Query {
            service_type: BIG.into(),
            min_revision: None,
        })
        .await?;
        // The first frame says the answer is under way; nothing more is read.
        conn.recv().await?;
        conns.push(conn);
    }
    println!("{stalled} stalled answers under way: {}", rss(cli));
    let started = Instant::now();
    while started.elapsed() < hold {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("  after {:.0?}: {}", started.elapsed(), rss(cli));
    }
    // Still served: a fresh connection's ping is answered.
    let mut probe = Conn::open(cli.addr, cli.io_timeout).await?;
    let sent = Instant::now();
    match probe.call(Request::Ping).await?.response {
        Response::Pong => println!("a ping meanwhile: {:?}", sent.elapsed()),
        other => return Err(format!("expected Pong, got {other:?}")),
    }
    drop(conns);
    Ok(())
}

async fn watch_loop(
    addr: SocketAddr,
    io_timeout: Duration,
    stop: Arc<AtomicBool>,
    loops: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut conn = Conn::open(addr, io_timeout).await?;
    while !stop.load(Ordering::Relaxed) {
        let watch = conn
            .send(Request::Watch {
                service_type: BIG.into(),
                since: None,
                min_revision: None,
            })
            .await?;
        loop {
            match conn.recv().await?.response {
                Response::Snapshot { more: true, .. } => {}
                Response::Snapshot { more: false, .. } => break,
                other => return Err(format!("expected a snapshot, got {other:?}")),
            }
        }
        match conn.call(Request::Unwatch { watch }).await?.response {
            Response::Ok => {}
            other => return Err(format!("expected Ok to Unwatch, got {other:?}")),
        }
        loops.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn contention(cli: &Cli, watchers: usize, duration: Duration) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let loops = Arc::new(AtomicU64::new(0));
    // The watchers decode whole snapshots as fast as they come: on a thread of their own, so
    // that the heartbeats measure the server, not this process's scheduling.
    let (addr, io_timeout) = (cli.addr, cli.io_timeout);
    let (watch_stop, watch_loops) = (stop.clone(), loops.clone());
    let watching = std::thread::spawn(move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let tasks: Vec<_> = (0..watchers)
                .map(|_| {
                    tokio::spawn(watch_loop(
                        addr,
                        io_timeout,
                        watch_stop.clone(),
                        watch_loops.clone(),
                    ))
                })
                .collect();
            for task in tasks {
                task.await.map_err(|e| e.to_string())??;
            }
            Ok(())
        })
    });
    let mut conn = Conn::open(cli.addr, cli.io_timeout).await?;
    let id = match conn
        .call(Request::Register {
            service_type: "pressure-unrelated".into(),
            ip: IpAddr::from([127, 0, 0, 1]),
            port: 9000,
            metadata: Metadata::new(),
            ttl: Some(LONG_TTL),
        })
        .await?
        .response
    {
        Response::Registered { id, .. } => id,
        other => return Err(format!("the register was refused: {other:?}")),
    };
    let mut latencies =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let started = Instant::now();
    while started.elapsed() < duration {
        let sent = Instant::now();
        match conn
            .call(Request::Heartbeat {
                id,
                min_revision: None,
            })
            .await?
            .response
        {
            Response::Ok => {}
            other => return Err(format!("a heartbeat was answered {other:?}")),
        }
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        latencies.saturating_record(micros.max(1));
    }
    stop.store(true, Ordering::Relaxed);
    watching
        .join()
        .map_err(|_| "a watcher thread panicked".to_string())??;
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{watchers} watchers on {} instances: {} watch loops; {} heartbeats: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        cli.instances,
        loops.load(Ordering::Relaxed),
        latencies.len(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        latencies.max() as f64 / 1000.0
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        fill(&cli).await?;
        match cli.flood {
            Flood::Answers { stalled, hold } => answers(&cli, stalled, hold).await,
            Flood::Contention { watchers, duration } => contention(&cli, watchers, duration).await,
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("discovery-pressure: {e}");
            ExitCode::FAILURE
        }
    }
}
