//! One heartbeat connection of a keep-alive run: a writer that sends the heartbeats of the
//! connection's share of the instances on schedule, within a window of at most `--depth`
//! unanswered, and a reader on its own task that takes their answers in order, through a
//! `FramedRead`, and times them.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use discovery_proto::codec::ClientCodec;
use discovery_proto::{ClientFrame, Request, RequestId, Response, ServerFrame};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tokio_util::codec::Encoder;
use uuid::Uuid;

use super::{Progress, Settings, TICK};
use crate::discovery::{self, DiscoveryClient, FrameReader};
use crate::histogram::Histogram;

/// The least size of a heartbeat connection's read and write buffers.
const BUF_BYTES: usize = 64 * 1024;

/// One heartbeat connection's tally.
#[derive(Default)]
pub(super) struct HeartbeatTally {
    /// Latencies of the heartbeats sent in the measured time and answered `Ok`.
    pub(super) latency: Histogram,
    /// Heartbeats sent in the measured time and answered `Ok`.
    pub(super) measured: u64,
    /// Heartbeats sent, over the whole run.
    pub(super) sent: u64,
    pub(super) not_found: u64,
    /// Error answers, unexpected answers, and heartbeats lost with a broken connection.
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    /// Why the connection broke off, if it did.
    pub(super) failure: Option<String>,
    /// The longest round of the connection's share.
    pub(super) longest_pass: Duration,
    /// Rounds of the share completed.
    pub(super) passes: u64,
    /// The most the connection was behind its schedule at a tick.
    pub(super) max_lag: Duration,
}

/// One heartbeat connection: a writer here, a reader on its own task.
pub(super) async fn heartbeat_conn(
    client: DiscoveryClient,
    ids: Arc<Vec<Uuid>>,
    share: Range<usize>,
    first_tick: Instant,
    settings: Arc<Settings>,
    progress: Arc<Progress>,
) -> HeartbeatTally {
    let (mut frames, write_half, next_id, limit) = client.into_parts();
    frames.read_buffer_mut().reserve(BUF_BYTES);
    let window = Arc::new(Semaphore::new(settings.depth));
    let (sent_tx, sent_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_answers(
        frames,
        sent_rx,
        window.clone(),
        progress.clone(),
        settings.io_timeout,
    ));
    let writer = Writer {
        half: write_half,
        codec: ClientCodec::new(limit),
        buf: BytesMut::with_capacity(BUF_BYTES),
        next_id,
        sent_tx,
        window,
        batch: (settings.depth / 4).max(1),
        io_timeout: settings.io_timeout,
    };
    let mut tally = writer
        .run(&ids, share, first_tick, settings.interval, progress.end)
        .await;
    // The writer has closed its side of the channel: the reader ends once it has read the
    // answers to what was sent, or at its first failure, each wait bounded.
    match reader.await {
        Ok(read) => {
            tally.latency = read.latency;
            tally.measured = read.measured;
            tally.not_found = read.not_found;
            tally.errors += read.errors;
            tally.first_error = read.first_error;
            // The reader's reason comes first: a writer that fails after it only sees the
            // consequence.
            tally.failure = read.failure.or(tally.failure);
        }
        Err(e) => tally.failure = Some(format!("reader task failed: {e}")),
    }
    tally
}

/// The sending side of a heartbeat connection.
struct Writer {
    half: OwnedWriteHalf,
    codec: ClientCodec,
    buf: BytesMut,
    next_id: RequestId,
    /// Each request sent, in order: its id, its instance and when it was sent.
    sent_tx: mpsc::UnboundedSender<(RequestId, usize, Instant)>,
    /// A permit per request in flight; the reader gives them back.
    window: Arc<Semaphore>,
    /// The most requests taken room for at once: a quarter of the window.
    batch: usize,
    io_timeout: Duration,
}

impl Writer {
    /// Heartbeats `share` round and round, once per `interval`, from `first_tick` until
    /// `end`. Returns the sending half of a tally.
    async fn run(
        mut self,
        ids: &[Uuid],
        share: Range<usize>,
        first_tick: Instant,
        interval: Duration,
        end: Instant,
    ) -> HeartbeatTally {
        let mut tally = HeartbeatTally::default();
        let rate = share.len() as f64 / interval.as_secs_f64();
        let mut cursor = share.start;
        let mut pass_start = first_tick;
        let mut ticks = interval_at(first_tick, TICK);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        'run: loop {
            ticks.tick().await;
            let now = Instant::now();
            if now >= end || share.is_empty() {
                break;
            }
            // Due so far: the schedule, rounded up so that the first tick sends.
            let due = ((now - first_tick).as_secs_f64() * rate).ceil() as u64;
            let behind = due.saturating_sub(tally.sent) as f64 / rate;
            tally.max_lag = tally.max_lag.max(Duration::from_secs_f64(behind));
            while tally.sent < due {
                // Room for a few at a time, so that a full window does not turn into one
                // write per answer.
                let count = (due - tally.sent).min(self.batch as u64) as u32;
                if let Err(e) = self.take_permits(count, end).await {
                    if !e.is_empty() {
                        tally.failure = Some(e);
                    }
                    break 'run;
                }
                for _ in 0..count {
                    let id = self.next_id;
                    self.next_id += 1;
                    let heartbeat = Request::Heartbeat {
                        id: ids[cursor],
                        min_revision: None,
                    };
                    let frame = ClientFrame::new(id, heartbeat);
                    if let Err(e) = self.codec.encode(frame, &mut self.buf) {
                        tally.failure = Some(format!("cannot encode a heartbeat: {e}"));
                        break 'run;
                    }
                    if self.sent_tx.send((id, cursor, Instant::now())).is_err() {
                        // The reader has stopped and says why.
                        break 'run;
                    }
                    tally.sent += 1;
                    cursor += 1;
                    if cursor == share.end {
                        cursor = share.start;
                        let now = Instant::now();
                        tally.longest_pass = tally.longest_pass.max(now - pass_start);
                        tally.passes += 1;
                        pass_start = now;
                    }
                }
            }
            if let Err(e) = self.flush().await {
                tally.failure = Some(e);
                break;
            }
        }
        // What was encoded is in the reader's queue: write it, so that it is answered.
        if let Err(e) = self.flush().await {
            tally.failure.get_or_insert(e);
        }
        tally
    }

    /// Takes room for `count` more requests in the window; when there is not enough,
    /// writes what is buffered and waits. `Err("")` when the run ended while waiting.
    async fn take_permits(&mut self, count: u32, end: Instant) -> Result<(), String> {
        if let Ok(permit) = self.window.try_acquire_many(count) {
            permit.forget();
            return Ok(());
        }
        self.flush().await?;
        match timeout(self.io_timeout, self.window.acquire_many(count)).await {
            Ok(Ok(permit)) => {
                permit.forget();
                if Instant::now() >= end {
                    return Err(String::new());
                }
                Ok(())
            }
            // Closed: the reader stopped, and says why.
            Ok(Err(_)) => Err(String::new()),
            Err(_) => Err(format!(
                "no room in the window within {:?}: answers stopped coming",
                self.io_timeout
            )),
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let write = self.half.write_all(&self.buf);
        match timeout(self.io_timeout, write).await {
            Ok(Ok(())) => {
                self.buf.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err(format!("write: no progress within {:?}", self.io_timeout)),
        }
    }
}

/// The receiving side of a heartbeat connection: one answer per request sent, in order.
async fn read_answers(
    mut frames: FrameReader,
    mut sent_rx: mpsc::UnboundedReceiver<(RequestId, usize, Instant)>,
    window: Arc<Semaphore>,
    progress: Arc<Progress>,
    io_timeout: Duration,
) -> HeartbeatTally {
    let mut tally = HeartbeatTally::default();
    while let Some((id, instance, sent_at)) = sent_rx.recv().await {
        let frame = match timeout(io_timeout, next_frame(&mut frames)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => {
                tally.failure = Some(format!("read: {e}"));
                tally.errors += 1;
                break;
            }
            Err(_) => {
                tally.failure = Some(format!("read: no answer within {io_timeout:?}"));
                tally.errors += 1;
                break;
            }
        };
        let done = Instant::now();
        if frame.request_id != id {
            tally.failure = Some(format!(
                "answer to request {} ({:?}) while waiting for {id}",
                frame.request_id, frame.response
            ));
            tally.errors += 1;
            break;
        }
        match frame.response {
            Response::Ok => {
                if sent_at >= progress.measure_from && sent_at < progress.end {
                    tally.latency.record(done - sent_at);
                    tally.measured += 1;
                }
            }
            Response::NotFound { reason } => {
                tally.not_found += 1;
                progress.not_found.fetch_add(1, Ordering::Relaxed);
                tally.first_error.get_or_insert_with(|| {
                    format!("the heartbeat of instance {instance} answered NotFound ({reason:?})")
                });
            }
            Response::Error { kind, message } => {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| format!("heartbeat: {kind:?}: {message}"));
            }
            other => {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| format!("heartbeat answered {other:?}"));
            }
        }
        progress.answered.fetch_add(1, Ordering::Relaxed);
        window.add_permits(1);
    }
    // Wake a writer waiting for room, and count what will never be answered.
    window.close();
    sent_rx.close();
    while sent_rx.try_recv().is_ok() {
        tally.errors += 1;
    }
    tally
}

/// Reads the next frame of a connection; its end is an error too.
async fn next_frame(frames: &mut FrameReader) -> io::Result<ServerFrame> {
    match frames.next().await {
        Some(Ok(Ok(frame))) => Ok(frame),
        Some(Ok(Err(e)) | Err(e)) => Err(discovery::into_io(e)),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}
