//! [`Registration`]: an announced instance and the background loop that keeps it alive.
//!
//! The loop belongs to a `CancellationToken`. It heartbeats at a third of the TTL the
//! server announced, starting at a random point of the first interval and with up to a
//! tenth of that interval of random jitter on each beat, so that instances started together
//! do not heartbeat in lockstep; missed ticks are delayed, never bunched up. On `NotFound`
//! (the instance expired, was deregistered, or the server restarted and forgot it) it
//! registers again under a new id, after a random part of an interval, so that the
//! registrations a restarted server forgot all at once come back spread out. On a connection
//! error it reports [`RegistrationState::Reconnecting`] and tries again at the next tick,
//! while the client's worker reconnects with backoff. It never gives up: a service outlives
//! its registry's outages.
//!
//! Stopping is ordered: the loop is cancelled and awaited first, and only then is the
//! instance deregistered, so that no heartbeat or re-registration in flight can bring it
//! back after the deregister.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::caller::Caller;
use crate::deadline;
use crate::error::Error;

// Defined below the calls that announce it; its home for programs is here, next to the
// `Registration` that keeps it announced.
pub use crate::spec::ServiceSpec;

/// The heartbeat interval as a fraction of the TTL: two heartbeats can be lost before the
/// instance expires.
const HEARTBEAT_FRACTION: u32 = 3;

/// The most random delay added to each heartbeat, as a fraction of the interval.
const HEARTBEAT_JITTER: f64 = 0.1;

/// The interval used if the TTL is unknown (it is known once a register succeeded): a third
/// of the server's default TTL.
const FALLBACK_INTERVAL: Duration = Duration::from_millis(5000 / HEARTBEAT_FRACTION as u64);

/// The longest interval, a third of a century: the longest TTL our servers announce (they
/// cut longer ones to a century). It bounds what another server could announce, so that no
/// tick of the heartbeat timer lies beyond what the clock can express.
const MAX_INTERVAL: Duration =
    Duration::from_secs(100 * 365 * 24 * 60 * 60 / HEARTBEAT_FRACTION as u64);

/// The shortest interval.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Where a [`Registration`] stands, as its owner can watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationState {
    /// The server confirmed the instance under `id` at the last register or heartbeat.
    Registered {
        /// The id the server knows the instance by.
        id: Uuid,
    },
    /// The last heartbeat or register failed (the server is unreachable, restarting, or
    /// forgot the instance); the loop keeps trying and callers may not find the instance
    /// until it is `Registered` again.
    Reconnecting,
}

impl RegistrationState {
    /// The confirmed id, when registered.
    pub fn id(&self) -> Option<Uuid> {
        match self {
            RegistrationState::Registered { id } => Some(*id),
            RegistrationState::Reconnecting => None,
        }
    }

    /// True when the server confirmed the instance at the last register or heartbeat.
    pub fn is_registered(&self) -> bool {
        matches!(self, RegistrationState::Registered { .. })
    }
}

/// An announced instance, kept alive by a background heartbeat loop until it is shut down
/// or dropped.
///
/// Made by [`Client::register`](crate::Client::register). Its id can change: when the server forgets the instance
/// (after an outage longer than the TTL, or a server restart), the loop registers it again
/// and the server gives it a new id. Read the current one with [`Registration::id`], or
/// follow changes with [`Registration::state`].
///
/// [`Registration::shutdown`] deregisters it and says whether that worked; dropping it
/// does the same in the background, best-effort (and if that cannot run, the instance
/// expires after one TTL since nothing heartbeats it any more).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let server_address = listener.local_addr()?;
/// # let stop = tokio_util::sync::CancellationToken::new();
/// # let server = tokio::spawn(discovery_server::server::run(listener, Default::default(), stop.clone()));
/// use discovery_client::{Client, RegistrationState, ServiceSpec};
///
/// let client = Client::builder().address(server_address).build()?;
/// let registration = client
///     .register(ServiceSpec::new("billing", "127.0.0.1:8080".parse()?))
///     .await?;
/// assert_eq!(registration.current_state(), RegistrationState::Registered { id: registration.id() });
///
/// // Log every change of state in the background.
/// let mut states = registration.state();
/// tokio::spawn(async move {
///     while states.changed().await.is_ok() {
///         println!("billing registration: {:?}", *states.borrow_and_update());
///     }
/// });
///
/// // On the way out: stop heartbeating, then deregister.
/// registration.shutdown().await?;
/// # drop(client);
/// # stop.cancel();
/// # server.await??;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "dropping a Registration deregisters the instance"]
pub struct Registration {
    spec: ServiceSpec,
    /// The latest id the server gave; written by the loop.
    id: Arc<Mutex<Uuid>>,
    state: watch::Receiver<RegistrationState>,
    /// `None` once shut down.
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    caller: Caller,
    stop: CancellationToken,
    heartbeats: JoinHandle<()>,
}

impl Registration {
    /// Starts the heartbeat loop for an instance registered under `id`.
    pub(crate) fn start(caller: Caller, spec: ServiceSpec, id: Uuid) -> Self {
        let shared_id = Arc::new(Mutex::new(id));
        let (state_tx, state) = watch::channel(RegistrationState::Registered { id });
        let stop = CancellationToken::new();
        let heartbeat_loop = HeartbeatLoop {
            caller: caller.clone(),
            spec: spec.clone(),
            id: shared_id.clone(),
            state: state_tx,
            stop: stop.clone(),
        };
        let heartbeats = tokio::spawn(heartbeat_loop.run());
        Self {
            spec,
            id: shared_id,
            state,
            running: Some(Running {
                caller,
                stop,
                heartbeats,
            }),
        }
    }

    /// The id the server gave at the latest successful register. It changes when the loop
    /// registers the instance again after the server forgot it.
    pub fn id(&self) -> Uuid {
        *self.id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the registration stands now; [`Registration::state`] follows it over time.
    pub fn current_state(&self) -> RegistrationState {
        *self.state.borrow()
    }

    /// The registration's state as it changes, to log outages or to wait until the instance
    /// is registered again. The receiver reports its sender gone once the loop has stopped.
    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// What is announced.
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// Stops the heartbeats, then deregisters the instance, and reports how the deregister
    /// went.
    ///
    /// The loop is stopped and awaited before the deregister is sent, so nothing brings the
    /// instance back afterwards. [`Error::NotFound`] means the server had already forgotten
    /// it (it expired, or the server restarted): it is gone either way. A connection error
    /// means it could not be told; the instance then expires after one TTL.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        running.stop.cancel();
        // A panicked loop has nothing to finish: deregister all the same.
        let _ = running.heartbeats.await;
        let id = self.id();
        let result = running.caller.deregister(id).await;
        match &result {
            Ok(()) => info!(%id, "deregistered"),
            Err(error) => debug!(%id, %error, "deregister at shutdown failed"),
        }
        result
    }
}

impl Drop for Registration {
    /// Cancels the heartbeats at once and deregisters in a background task when a tokio
    /// runtime is at hand; never blocks, never panics.
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.cancel();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            debug!("Registration dropped outside a runtime: the instance expires after one TTL");
            return;
        };
        let id = self.id.clone();
        runtime.spawn(async move {
            let _ = running.heartbeats.await;
            let id = *id.lock().unwrap_or_else(PoisonError::into_inner);
            match running.caller.deregister(id).await {
                Ok(()) => info!(%id, "deregistered after the Registration was dropped"),
                Err(error) => debug!(%id, %error, "deregister after drop failed"),
            }
        });
    }
}

/// The background loop of one registration.
struct HeartbeatLoop {
    caller: Caller,
    spec: ServiceSpec,
    id: Arc<Mutex<Uuid>>,
    state: watch::Sender<RegistrationState>,
    stop: CancellationToken,
}

impl HeartbeatLoop {
    async fn run(self) {
        let mut interval = self.interval();
        let mut ticker = heartbeat_ticker(interval);
        let mut must_register = false;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let jitter = interval.mul_f64(fastrand::f64() * HEARTBEAT_JITTER);
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = sleep(jitter) => {}
            }

            if !must_register {
                let id = self.id();
                let Some(outcome) = self.heartbeat(id, interval).await else {
                    return;
                };
                match outcome {
                    Ok(()) => {
                        self.set_state(RegistrationState::Registered { id });
                    }
                    Err(error) if error.is_not_found() => {
                        info!(%id, service_type = %self.spec.service_type, "the server forgot the instance; registering again");
                        must_register = true;
                        // A restarted server forgets every instance at once, and the
                        // heartbeats of one client's registrations come back together
                        // (their connection's backoff is shared): spread the registers
                        // over an interval instead of sending them in one burst.
                        let spread = interval.mul_f64(fastrand::f64());
                        tokio::select! {
                            () = self.stop.cancelled() => return,
                            () = sleep(spread) => {}
                        }
                    }
                    Err(error) => {
                        if self.set_state(RegistrationState::Reconnecting) {
                            warn!(%id, %error, "heartbeat failed; retrying until the server is back");
                        } else {
                            debug!(%id, %error, "heartbeat failed again");
                        }
                    }
                }
            }

            if must_register {
                self.set_state(RegistrationState::Reconnecting);
                match self.register().await {
                    Ok(id) => {
                        *self.id.lock().unwrap_or_else(PoisonError::into_inner) = id;
                        info!(%id, service_type = %self.spec.service_type, "registered again");
                        self.set_state(RegistrationState::Registered { id });
                        must_register = false;
                    }
                    Err(error) => warn!(%error, "register failed; retrying"),
                }
                if self.stop.is_cancelled() {
                    return;
                }
            }

            // After a failover the server, and so its TTL, may be another.
            let now = self.interval();
            if now != interval {
                debug!(interval = ?now, "heartbeat interval follows the server's TTL");
                interval = now;
                ticker = heartbeat_ticker(interval);
            }
        }
    }

    /// Heartbeats `id`; `None` when stopped meanwhile. A heartbeat still unanswered after
    /// one interval (the client is waiting for a server) turns the state to `Reconnecting`
    /// at once, rather than after the whole connect timeout.
    async fn heartbeat(&self, id: Uuid, interval: Duration) -> Option<Result<(), Error>> {
        let heartbeat = self.caller.heartbeat(id);
        tokio::pin!(heartbeat);
        let slow = sleep(interval);
        tokio::pin!(slow);
        let mut waited = false;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return None,
                outcome = &mut heartbeat => return Some(outcome),
                () = &mut slow, if !waited => {
                    waited = true;
                    if self.set_state(RegistrationState::Reconnecting) {
                        warn!(%id, "no answer to a heartbeat yet; waiting for a server");
                    }
                }
            }
        }
    }

    /// Registers the spec again. A register is not abandoned once started, even when the
    /// loop is stopped meanwhile: it may already be on the wire, and the id it brings back
    /// is what shutdown must deregister.
    async fn register(&self) -> Result<Uuid, Error> {
        let register = self.caller.register_once(&self.spec);
        tokio::pin!(register);
        tokio::select! {
            result = &mut register => result,
            () = self.stop.cancelled() => {
                // The wait is bounded by the client's connect and request timeouts.
                debug!(timeout = ?self.caller.connect_timeout(), "stopping; finishing the register in flight");
                register.await
            }
        }
    }

    fn id(&self) -> Uuid {
        *self.id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `state`; true when it differs from the last one.
    fn set_state(&self, state: RegistrationState) -> bool {
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        })
    }

    /// A third of the server's TTL.
    fn interval(&self) -> Duration {
        heartbeat_interval(self.caller.ttl())
    }
}

/// A third of `ttl`, the server's TTL if known, within [`MIN_INTERVAL`] and
/// [`MAX_INTERVAL`].
fn heartbeat_interval(ttl: Option<Duration>) -> Duration {
    ttl.map(|ttl| ttl / HEARTBEAT_FRACTION)
        .unwrap_or(FALLBACK_INTERVAL)
        .clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// Ticks every `interval`, the first one at a random point of the first interval, so that
/// registrations made together do not heartbeat together; a tick missed while a call was
/// slow is taken late rather than in a burst.
fn heartbeat_ticker(interval: Duration) -> tokio::time::Interval {
    let first = interval.mul_f64(fastrand::f64());
    let mut ticker = interval_at(deadline::saturating_after(Instant::now(), first), interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::time::{Instant, sleep};

    use super::*;
    use crate::Client;
    use crate::config::DEFAULT_BACKOFF_MAX;
    use crate::testing::PipeServer;

    const TTL: Duration = Duration::from_secs(1);
    const INTERVAL: Duration = Duration::from_millis(1000 / 3);
    /// Tokio's timers round up to the next millisecond: one of these per sleep on the way.
    const TICK: Duration = Duration::from_millis(1);

    fn spec(service_type: &str) -> ServiceSpec {
        ServiceSpec::new(service_type, SocketAddr::from(([127, 0, 0, 1], 9000)))
    }

    #[test]
    fn the_interval_is_a_third_of_the_ttl_within_bounds() {
        assert_eq!(
            heartbeat_interval(Some(Duration::from_secs(3))),
            Duration::from_secs(1)
        );
        assert_eq!(heartbeat_interval(None), FALLBACK_INTERVAL);
        assert_eq!(heartbeat_interval(Some(Duration::ZERO)), MIN_INTERVAL);
        // A server may announce anything; the interval stays one the clock can hold.
        assert_eq!(heartbeat_interval(Some(Duration::MAX)), MAX_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_registration_stays_listed_over_many_ttls() {
        let server = PipeServer::start(TTL);
        let client = server.client(Client::builder());
        let registration = client.register(spec("kept")).await.unwrap();
        let id = registration.id();
        let states = registration.state();

        // Five TTLs, looking often: the instance is never missing and never re-registered.
        let until = Instant::now() + 5 * TTL;
        while Instant::now() < until {
            assert_eq!(server.listed("kept"), [id]);
            assert_eq!(
                registration.current_state(),
                RegistrationState::Registered { id }
            );
            sleep(Duration::from_millis(100)).await;
        }
        assert!(!states.has_changed().unwrap(), "the state never moved");
        assert_eq!(registration.id(), id);

        registration.shutdown().await.unwrap();
        assert!(server.listed("kept").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_is_noticed_and_recovered_within_the_documented_bounds() {
        let server = PipeServer::start(TTL);
        let client = server.client(Client::builder());
        let registration = client.register(spec("phoenix")).await.unwrap();
        let first_id = registration.id();
        let mut states = registration.state();

        server.crash();
        let crashed_at = Instant::now();
        states.wait_for(|s| !s.is_registered()).await.unwrap();
        // Noticed by the first heartbeat left unanswered for an interval (at most an
        // interval to the next tick, a tenth of one of jitter, and the interval waited), not
        // after the whole connect timeout.
        let noticed = crashed_at.elapsed();
        assert!(
            noticed <= 2 * INTERVAL + INTERVAL / 10 + 3 * TICK,
            "noticed after {noticed:?}"
        );
        // Down long enough for the client to back off a few times.
        sleep(Duration::from_secs(1)).await;

        server.restart();
        let back_at = Instant::now();
        let state = *states
            .wait_for(|s| s.id().is_some_and(|id| id != first_id))
            .await
            .unwrap();
        let took = back_at.elapsed();
        // The documented bound: a TTL, the backoff cap, and one heartbeat interval (and the
        // rounding of the backoff, the tick, the jitter and the spread).
        let bound = TTL + DEFAULT_BACKOFF_MAX + INTERVAL + 4 * TICK;
        assert!(took <= bound, "listed again after {took:?}");
        let new_id = registration.id();
        assert_eq!(state, RegistrationState::Registered { id: new_id });
        assert_eq!(server.listed("phoenix"), [new_id]);

        registration.shutdown().await.unwrap();
        assert!(server.listed("phoenix").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_ttl_from_a_server_is_followed_without_overflow() {
        let server = PipeServer::start(Duration::MAX);
        let client = server.client(Client::builder());
        let registration = client.register(spec("forever")).await.unwrap();
        assert_eq!(client.ttl(), Some(Duration::MAX));
        let states = registration.state();
        // A virtual decade: the loop lives (its state's sender is still there), and the
        // instance stays listed.
        sleep(Duration::from_secs(10 * 365 * 24 * 60 * 60)).await;
        assert!(states.has_changed().is_ok(), "the heartbeat loop is alive");
        assert_eq!(server.listed("forever"), [registration.id()]);
        client.ping().await.unwrap();
        registration.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_ticker_for_the_longest_interval_can_be_made() {
        let mut ticker = heartbeat_ticker(heartbeat_interval(Some(Duration::MAX)));
        // Its first tick lies somewhere in the first interval, so it is not due now.
        assert!(futures_util::FutureExt::now_or_never(ticker.tick()).is_none());
    }
}
