//! The task that owns the connection: every [`Client`](crate::Client) handle hands its calls
//! to one worker over a bounded channel, in the manner of tower's `buffer`.
//!
//! The worker is the only place that knows about connections, and this module is its main
//! loop: it connects on demand (no call or watch waiting, no connection attempt), serves a
//! [`Session`] until it ends, and connects again while calls or watches wait. Its parts live
//! below it: [`Inbox`] (what the handles send), [`Failover`] (which address next, and
//! when), [`Session`] (one connection, from `Hello` to its end), [`InFlight`] (the requests
//! on the wire), [`WatchTable`] (the open watches), and [`stop`] (why it
//! stopped).
//!
//! A call that waits longer than the connect timeout for a connection fails with
//! [`Error::Unreachable`] (or with the `Unavailable` refusal of
//! the last server that could not serve it); a call whose caller gave up is dropped
//! unsent. While a watch is open the worker keeps connecting, with failover and
//! backoff, and never gives up.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::call::Call;
use crate::config::ClientConfig;
use crate::deadline;
use crate::dial::Dial;
use crate::error::Error;
use crate::failover::Failover;
use crate::in_flight::InFlight;
use crate::inbox::{Inbox, Input};
use crate::session::{Ended, Session};
use crate::status::WorkerStatus;
use crate::stop::{self, StopGuard};
use crate::watch_channel::Control;
use crate::watches::WatchTable;

/// Starts the worker on `runtime`, connecting through `dial`.
pub(crate) fn spawn<D: Dial>(
    runtime: &tokio::runtime::Handle,
    config: Arc<ClientConfig>,
    dial: D,
    calls: mpsc::Receiver<Call>,
    control: mpsc::UnboundedReceiver<Control>,
    status: Arc<WorkerStatus>,
) {
    let mut worker = Worker::new(config, dial, calls, control, status);
    runtime.spawn(async move {
        // The worker is borrowed, not moved, into the caught future: if it panics, the
        // reason is recorded before the worker (and every reply sender it holds) is dropped.
        let outcome = AssertUnwindSafe(worker.run()).catch_unwind().await;
        if let Err(panic) = outcome {
            stop::record_panic(&worker.status, &*panic);
        }
    });
}

/// A connection attempt under way: it yields the index of the address it tried.
type Attempt<S> = Pin<Box<dyn Future<Output = (usize, Result<Session<S>, Error>)> + Send>>;

/// Every handle is gone: the worker ends.
struct Stop;

struct Worker<D: Dial> {
    // Declared first, so dropped first: the reason is recorded before the fields below
    // (which hold the callers' reply senders) are dropped.
    _stop_guard: StopGuard,
    status: Arc<WorkerStatus>,
    config: Arc<ClientConfig>,
    dial: Arc<D>,
    inbox: Inbox,
    /// The open watches.
    watches: WatchTable,
    /// The requests on the wire, and the numbering of requests.
    in_flight: InFlight,
    failover: Failover,
}

impl<D: Dial> Worker<D> {
    fn new(
        config: Arc<ClientConfig>,
        dial: D,
        calls: mpsc::Receiver<Call>,
        control: mpsc::UnboundedReceiver<Control>,
        status: Arc<WorkerStatus>,
    ) -> Self {
        Self {
            _stop_guard: StopGuard::new(status.clone()),
            status,
            dial: Arc::new(dial),
            inbox: Inbox::new(calls, control),
            watches: WatchTable::default(),
            in_flight: InFlight::new(config.request_timeout, config.connect_timeout),
            failover: Failover::new(config.addresses.len(), config.backoff_max),
            config,
        }
    }

    async fn run(&mut self) {
        loop {
            if self.inbox.is_empty() && !self.watches.want_connection() {
                // No connection and nothing to do: wait for a call without touching the
                // network.
                match self.inbox.recv(true).await {
                    Input::Call(call) => self.take_call(call),
                    Input::Control(control) => self.on_control(control),
                    Input::Closed => return,
                }
                continue;
            }
            let session = match self.connect().await {
                Ok(Some(session)) => session,
                Ok(None) => continue,
                Err(Stop) => return,
            };
            self.status.set_server(session.info().clone());
            let ended = session
                .serve(&mut self.inbox, &mut self.watches, &mut self.in_flight)
                .await;
            match ended {
                Ended::Stop => return,
                Ended::Lost {
                    index,
                    address,
                    reason,
                    answered,
                    worked,
                } => {
                    if worked {
                        self.failover.worked();
                    }
                    let error = Error::Disconnected { address, reason };
                    self.failover.connection_lost(index, answered, error);
                }
            }
        }
    }

    /// Queues a call, after the watch controls sent before it (no connection: whatever
    /// they need to send waits for the next one).
    fn take_call(&mut self, call: Call) {
        let mut out = self.in_flight.outbox(None);
        self.inbox.take_call(call, &mut self.watches, &mut out);
    }

    fn on_control(&mut self, control: Control) {
        let mut out = self.in_flight.outbox(None);
        self.watches.control(control, &mut out);
    }

    /// Connects while calls or watches are waiting; `Ok(None)` when none is left to wait.
    /// Calls give up after the connect timeout; watches never do.
    async fn connect(&mut self) -> Result<Option<Session<D::Stream>>, Stop> {
        let mut attempt = self.start_attempt();
        loop {
            let oldest = self.inbox.oldest_waiting();
            if oldest.is_none() && !self.watches.want_connection() {
                // Nobody waits any more; the backoff state stays for the next call.
                return Ok(None);
            }
            // A connect timeout too long to be a point in time: the calls wait forever.
            let give_up_at =
                oldest.and_then(|oldest| deadline::after(oldest, self.config.connect_timeout));
            tokio::select! {
                (index, result) = &mut attempt => match result {
                    Ok(session) => return Ok(Some(session)),
                    Err(error) => {
                        let address = &self.config.addresses[index];
                        self.failover.attempt_failed(index, address, error);
                        attempt = self.start_attempt();
                    }
                },
                input = self.inbox.recv(true) => match input {
                    Input::Call(call) => self.take_call(call),
                    Input::Control(control) => self.on_control(control),
                    Input::Closed => return Err(Stop),
                },
                () = sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {
                    self.inbox
                        .give_up_waiting(self.config.connect_timeout, self.failover.last_error());
                }
            }
        }
    }

    /// The next connection attempt, after the backoff wait if one is due.
    fn start_attempt(&mut self) -> Attempt<D::Stream> {
        let (index, start_at) = self.failover.next();
        let address = self.config.addresses[index].clone();
        let hello_id = self.in_flight.take_id();
        let client_name = self.config.client_name.clone();
        let limit = self.config.attempt_timeout();
        let dial = self.dial.clone();
        Box::pin(async move {
            sleep_until(start_at).await;
            let result =
                Session::connect(&*dial, address, index, hello_id, client_name, limit).await;
            (index, result)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::testing::PipeServer;
    use crate::{Client, Error};

    #[tokio::test(start_paused = true)]
    async fn nothing_busy_loops_and_nothing_is_tried_while_no_call_waits() {
        let server = PipeServer::start(Duration::from_secs(1));
        server.crash();
        let client = server.client(Client::builder().connect_timeout(Duration::from_millis(1500)));

        let error = client.ping().await.unwrap_err();
        assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
        // Attempts at 0 ms, then after backoffs of 100, 200, 400, 800 ms, each with up to half
        // taken off by jitter: the fifth starts between 750 and 1,500 ms, the sixth after 1,550.
        let attempts = server.dials();
        assert!((4..=5).contains(&attempts), "{attempts} attempts in 1.5 s");

        // With no call waiting, the client does not try at all, however long it waits.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(server.dials(), attempts);

        // A new call tries again (after the backoff still due).
        server.restart();
        client.ping().await.unwrap();
        assert_eq!(server.dials(), attempts + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn endless_timeouts_are_no_timeouts() {
        let server = PipeServer::start(Duration::from_secs(1));
        let client = server.client(
            Client::builder()
                .connect_timeout(Duration::MAX)
                .request_timeout(Duration::MAX)
                .backoff_max(Duration::MAX),
        );
        client.ping().await.unwrap();

        // Down for a virtual day: the call waits for a connection rather than failing.
        server.crash();
        // The clock moves only once every task is idle: the worker has seen the connection
        // end by then, so the call below cannot go out on it.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let waiting = tokio::spawn({
            let client = client.clone();
            async move { client.ping().await }
        });
        tokio::time::sleep(Duration::from_secs(24 * 60 * 60)).await;
        assert!(!waiting.is_finished());
        server.restart();
        // The backoff, doubling without a cap, waits at most 100 ms × 2^20 (29 hours).
        waiting.await.unwrap().unwrap();
    }
}
