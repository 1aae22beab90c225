//! [`Registration`]: an announced instance and the background loop that keeps it alive.
//!
//! The loop belongs to a `CancellationToken`. It heartbeats at a third of the TTL the
//! server granted the register (the spec's own TTL, or the server's), starting at a random
//! point of the first interval and with up to a tenth of that interval of random jitter on
//! each beat, so that instances started together do not heartbeat in lockstep; missed
//! ticks are delayed, never bunched up.
//!
//! What the loop does with each answer:
//!
//! - `NotFound` because the instance expired, was deregistered, or the server restarted
//!   and forgot it: it registers again under a new id, after a random part of an interval,
//!   so that the registrations a restarted server forgot all at once come back spread out.
//! - `NotFound` because another register of the same type and endpoint **replaced** it:
//!   it stops, in [`RegistrationState::Replaced`]. Registering again would take the
//!   endpoint back, and two processes announcing one endpoint would replace each other
//!   every few seconds.
//! - A connection error, or `Unavailable` from every server: it reports
//!   [`RegistrationState::Reconnecting`] and tries again at the next tick, keeping the
//!   id, while the client's worker reconnects with backoff. `Unavailable` is never a
//!   reason to register again: the worker has moved to another server already, and there
//!   the first heartbeat carries the revision of the registration's latest change, so
//!   that a server which has not caught up with it yet waits for it rather than answer
//!   `NotFound`.
//! - `Throttled` in answer to a register: it waits the time the server asks (at most a
//!   minute) and registers again.
//!
//! It never gives up otherwise: a service outlives its registry's outages.
//!
//! The loop is the only one that changes the registration: [`Registration::set_metadata`]
//! hands it the new metadata and waits for what it made of it, so that an update never
//! races a register of the old metadata.
//!
//! Stopping is ordered: the loop is cancelled and awaited first, and only then is the
//! instance deregistered, so that no heartbeat or re-registration in flight can bring it
//! back after the deregister.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use discovery_proto::{Metadata, Revision};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::call::Continuity;
use crate::caller::Caller;
use crate::deadline;
use crate::error::Error;

// Defined below the calls that announce and grant (both the client and the loop use
// them); their home for programs is here, next to the `Registration` that keeps an
// instance announced.
pub use crate::grant::Registered;
pub use crate::spec::ServiceSpec;

/// The heartbeat interval as a fraction of the TTL: two heartbeats can be lost before the
/// instance expires.
const HEARTBEAT_FRACTION: u32 = 3;

/// The most random delay added to each heartbeat, as a fraction of the interval.
const HEARTBEAT_JITTER: f64 = 0.1;

/// The longest interval, a third of a century: the longest TTL our servers grant (they
/// cut longer ones to a century). It bounds what another server could grant, so that no
/// tick of the heartbeat timer lies beyond what the clock can express.
const MAX_INTERVAL: Duration =
    Duration::from_secs(100 * 365 * 24 * 60 * 60 / HEARTBEAT_FRACTION as u64);

/// The shortest interval.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The longest a register waits when the server throttles it, whatever the server asks:
/// a server that asks for longer is asked again after this.
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(60);

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
    /// Another register of the same type, ip and port took the endpoint: the server
    /// replaced this instance with that one. This state is final: the loop has stopped and
    /// does not register again, since that would take the endpoint back (and two processes
    /// announcing one endpoint would take it from each other forever). Whoever owns the
    /// registration decides what to do: usually, stop serving, or announce another
    /// endpoint.
    Replaced {
        /// The id the instance had until it was replaced.
        id: Uuid,
    },
}

impl RegistrationState {
    /// The confirmed id, when registered.
    pub fn id(&self) -> Option<Uuid> {
        match self {
            RegistrationState::Registered { id } => Some(*id),
            RegistrationState::Reconnecting | RegistrationState::Replaced { .. } => None,
        }
    }

    /// True when the server confirmed the instance at the last register or heartbeat.
    pub fn is_registered(&self) -> bool {
        matches!(self, RegistrationState::Registered { .. })
    }

    /// True once another register took the endpoint and the registration has stopped.
    pub fn is_replaced(&self) -> bool {
        matches!(self, RegistrationState::Replaced { .. })
    }
}

/// An announced instance, kept alive by a background heartbeat loop until it is shut down
/// or dropped.
///
/// Made by [`Client::register`](crate::Client::register). Its id can change: when the
/// server forgets the instance (after an outage longer than the TTL, or a server restart),
/// the loop registers it again and the server gives it a new id. Read the current one with
/// [`Registration::id`], or follow changes with [`Registration::state`]. When another
/// register takes its endpoint, it stops in [`RegistrationState::Replaced`].
///
/// Its metadata can change in place, keeping the id: [`Registration::set_metadata`].
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
/// use std::time::Duration;
/// use discovery_client::{Client, Metadata, RegistrationState, ServiceSpec};
///
/// let client = Client::builder().address(server_address).build()?;
/// let mut registration = client
///     .register(ServiceSpec::new("billing", "127.0.0.1:8080".parse()?).with_ttl(Duration::from_secs(30)))
///     .await?;
/// assert_eq!(registration.current_state(), RegistrationState::Registered { id: registration.id() });
/// assert_eq!(registration.ttl(), Duration::from_secs(30)); // heartbeats every 10 s
///
/// // Log every change of state in the background.
/// let mut states = registration.state();
/// tokio::spawn(async move {
///     while states.changed().await.is_ok() {
///         println!("billing registration: {:?}", *states.borrow_and_update());
///     }
/// });
///
/// // A new version is deployed in place: same id, new metadata.
/// let id = registration.id();
/// registration.set_metadata(Metadata::from([("version".into(), "1.4.3".into())])).await?;
/// assert_eq!(registration.id(), id);
/// assert_eq!(client.query("billing").await?[0].metadata["version"], "1.4.3");
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
    /// What the loop publishes about the instance.
    shared: Arc<Mutex<Shared>>,
    state: watch::Receiver<RegistrationState>,
    /// Metadata changes for the loop, which makes them.
    changes: mpsc::Sender<MetadataChange>,
    /// `None` once shut down.
    running: Option<Running>,
}

/// What the loop writes and the handle reads.
#[derive(Debug)]
struct Shared {
    /// The latest id the server gave.
    id: Uuid,
    /// The TTL the latest register was granted.
    ttl: Duration,
    /// The revision of the latest change: the register, or an update of the metadata.
    revision: Revision,
    /// Another register took the endpoint: there is nothing left to deregister.
    replaced: bool,
}

#[derive(Debug)]
struct Running {
    caller: Caller,
    stop: CancellationToken,
    heartbeats: JoinHandle<()>,
}

/// New metadata for the loop to make the registration's, and where to say how it went
/// (and what the spec now is).
#[derive(Debug)]
struct MetadataChange {
    metadata: Metadata,
    reply: oneshot::Sender<(Result<(), Error>, ServiceSpec)>,
}

impl Registration {
    /// Starts the heartbeat loop for an instance `granted` to `spec`, whose requests so far
    /// went out as `continuity` records.
    pub(crate) fn start(
        caller: Caller,
        spec: ServiceSpec,
        granted: Registered,
        continuity: Continuity,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            id: granted.id,
            ttl: granted.ttl,
            revision: granted.revision,
            replaced: false,
        }));
        let (state_tx, state) = watch::channel(RegistrationState::Registered { id: granted.id });
        let (changes, changes_rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let heartbeat_loop = HeartbeatLoop {
            caller: caller.clone(),
            spec: spec.clone(),
            granted,
            continuity,
            shared: shared.clone(),
            state: state_tx,
            stop: stop.clone(),
            changes: changes_rx,
            must_register: false,
        };
        let heartbeats = tokio::spawn(heartbeat_loop.run());
        Self {
            spec,
            shared,
            state,
            changes,
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
        lock(&self.shared).id
    }

    /// The TTL the latest register was granted; the loop heartbeats every third of it.
    pub fn ttl(&self) -> Duration {
        lock(&self.shared).ttl
    }

    /// The revision of the registration's latest change (its register, or a new metadata):
    /// the client's queries and watches read at least this far.
    pub fn revision(&self) -> Revision {
        lock(&self.shared).revision
    }

    /// Where the registration stands now; [`Registration::state`] follows it over time.
    pub fn current_state(&self) -> RegistrationState {
        *self.state.borrow()
    }

    /// The registration's state as it changes, to log outages, to wait until the instance
    /// is registered again, or to learn that another register took the endpoint. The
    /// receiver reports its sender gone once the loop has stopped (after `Replaced`, or
    /// when the registration is shut down or dropped).
    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// What is announced: the spec given to [`Client::register`](crate::Client::register),
    /// with the metadata of the latest successful [`Registration::set_metadata`].
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// Replaces the instance's metadata, keeping its id: callers see the new pairs at once,
    /// and watchers receive [`WatchEvent::Updated`](crate::WatchEvent::Updated).
    ///
    /// The background loop sends the `Update` between two heartbeats. Once the server has
    /// it, the new metadata is the spec's (see [`Registration::spec`]), so that a later
    /// register (after the server forgot the instance) announces it too. When the server
    /// no longer knows the instance, the loop registers it again at once with the new
    /// metadata, under a new id.
    ///
    /// Fails with [`Error::Rejected`] when the server refuses the metadata (too many or
    /// too long pairs), with a connection error when no server could be told (the spec
    /// keeps the old metadata; try again), and with [`Error::NotFound`] whose reason is
    /// `Replaced` once another register took the endpoint.
    pub async fn set_metadata(&mut self, metadata: Metadata) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        let change = MetadataChange { metadata, reply };
        if self.changes.send(change).await.is_err() {
            return Err(self.ended());
        }
        match answer.await {
            Ok((result, spec)) => {
                self.spec = spec;
                result
            }
            Err(_) => Err(self.ended()),
        }
    }

    /// Stops the heartbeats, then deregisters the instance, and reports how the deregister
    /// went.
    ///
    /// The loop is stopped and awaited before the deregister is sent, so nothing brings the
    /// instance back afterwards. [`Error::NotFound`] means the server had already forgotten
    /// it (it expired, or the server restarted): it is gone either way. After
    /// [`RegistrationState::Replaced`] nothing is sent (the endpoint is someone else's
    /// now), and the answer is that `NotFound`, with the reason `Replaced`. A connection
    /// error means it could not be told; the instance then expires after one TTL.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        running.stop.cancel();
        // A panicked loop has nothing to finish: deregister all the same.
        let _ = running.heartbeats.await;
        let (id, replaced) = {
            let shared = lock(&self.shared);
            (shared.id, shared.replaced)
        };
        if replaced {
            return Err(replaced_error());
        }
        let result = running.caller.deregister(id).await;
        match &result {
            Ok(()) => info!(%id, "deregistered"),
            Err(error) => debug!(%id, %error, "deregister at shutdown failed"),
        }
        result
    }

    /// Why the loop no longer takes changes.
    fn ended(&self) -> Error {
        if lock(&self.shared).replaced {
            replaced_error()
        } else {
            Error::Closed {
                reason: "the registration's heartbeat loop has stopped".to_owned(),
            }
        }
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
        let shared = self.shared.clone();
        runtime.spawn(async move {
            let _ = running.heartbeats.await;
            let (id, replaced) = {
                let shared = lock(&shared);
                (shared.id, shared.replaced)
            };
            if replaced {
                return;
            }
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
    /// What the latest register was granted, with the revision of the latest change.
    granted: Registered,
    continuity: Continuity,
    shared: Arc<Mutex<Shared>>,
    state: watch::Sender<RegistrationState>,
    stop: CancellationToken,
    changes: mpsc::Receiver<MetadataChange>,
    /// The server forgot the instance: the next beat registers it again.
    must_register: bool,
}

impl HeartbeatLoop {
    async fn run(mut self) {
        let mut interval = self.interval();
        let mut ticker = heartbeat_ticker(interval);
        loop {
            if self.wait(ticker.tick()).await.is_none() {
                return;
            }
            let jitter = interval.mul_f64(fastrand::f64() * HEARTBEAT_JITTER);
            if self.wait(sleep(jitter)).await.is_none() {
                return;
            }
            if !self.must_register && !self.beat(interval).await {
                return;
            }
            if self.must_register {
                self.register_again().await;
                if self.stop.is_cancelled() {
                    return;
                }
            }
            // A register again may have been granted another TTL.
            let now = self.interval();
            if now != interval {
                debug!(interval = ?now, "heartbeat interval follows the TTL granted");
                interval = now;
                ticker = heartbeat_ticker(interval);
            }
        }
    }

    /// Waits for `due`, making the metadata changes that come meanwhile; `None` when the
    /// loop is to end: stopped, or replaced.
    async fn wait<F: Future>(&mut self, due: F) -> Option<F::Output> {
        tokio::pin!(due);
        loop {
            let change = tokio::select! {
                () = self.stop.cancelled() => return None,
                output = &mut due => return Some(output),
                Some(change) = self.changes.recv() => change,
            };
            if !self.change_metadata(change).await {
                return None;
            }
        }
    }

    /// One heartbeat and what follows from its answer; false when the loop is to end.
    async fn beat(&mut self, interval: Duration) -> bool {
        let id = self.granted.id;
        let Some(outcome) = self.heartbeat(id, interval).await else {
            return false;
        };
        match outcome {
            Ok(()) => {
                self.set_state(RegistrationState::Registered { id });
            }
            Err(error) if error.is_replaced() => {
                self.replaced();
                return false;
            }
            Err(error) if error.is_not_found() => {
                info!(%id, service_type = %self.spec.service_type, %error, "the server forgot the instance; registering again");
                self.must_register = true;
                // A restarted server forgets every instance at once, and the heartbeats
                // of one client's registrations come back together (their connection's
                // backoff is shared): spread the registers over an interval instead of
                // sending them in one burst.
                let spread = interval.mul_f64(fastrand::f64());
                if self.wait(sleep(spread)).await.is_none() {
                    return false;
                }
            }
            Err(error) => {
                if self.set_state(RegistrationState::Reconnecting) {
                    warn!(%id, %error, "heartbeat failed; retrying until a server answers");
                } else {
                    debug!(%id, %error, "heartbeat failed again");
                }
            }
        }
        true
    }

    /// Heartbeats `id`; `None` when stopped meanwhile. A heartbeat still unanswered after
    /// one interval (the client is waiting for a server) turns the state to `Reconnecting`
    /// at once, rather than after the whole connect timeout.
    async fn heartbeat(&self, id: Uuid, interval: Duration) -> Option<Result<(), Error>> {
        let heartbeat = self.caller.heartbeat(id, Some(self.continuity.clone()));
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

    /// Registers the spec again after the server forgot the instance.
    async fn register_again(&mut self) {
        self.set_state(RegistrationState::Reconnecting);
        match self.register().await {
            Ok(granted) => {
                self.adopt(granted);
                info!(id = %granted.id, service_type = %self.spec.service_type, "registered again");
            }
            Err(error) => warn!(%error, "register failed; retrying"),
        }
    }

    /// Registers the spec, waiting and trying again as long as the server throttles it.
    async fn register(&self) -> Result<Registered, Error> {
        loop {
            match self.register_once().await {
                Err(Error::Throttled { retry_after }) => {
                    let wait = retry_after.min(MAX_THROTTLE_WAIT);
                    debug!(?wait, "register throttled; waiting as the server asks");
                    let until = deadline::saturating_after(Instant::now(), wait);
                    tokio::select! {
                        () = self.stop.cancelled() => return Err(Error::Throttled { retry_after }),
                        () = sleep_until(until) => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// Registers the spec once. A register is not abandoned once started, even when the
    /// loop is stopped meanwhile: it may already be on the wire, and the id it brings back
    /// is what shutdown must deregister.
    async fn register_once(&self) -> Result<Registered, Error> {
        let register = self
            .caller
            .register_once(&self.spec, Some(self.continuity.clone()));
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

    /// Makes `change`'s metadata the registration's, and says how that went; false when
    /// the loop is to end (the instance was replaced).
    async fn change_metadata(&mut self, change: MetadataChange) -> bool {
        let MetadataChange { metadata, reply } = change;
        let result = self.set_metadata(metadata).await;
        // The owner may have stopped waiting; the change stands either way.
        let _ = reply.send((result, self.spec.clone()));
        !lock(&self.shared).replaced
    }

    /// Sends `Update` for the current id; registers again with the new metadata when the
    /// server no longer knows the instance (or already forgot it).
    async fn set_metadata(&mut self, metadata: Metadata) -> Result<(), Error> {
        if !self.must_register {
            let id = self.granted.id;
            let update = self
                .caller
                .update(id, metadata.clone(), Some(self.continuity.clone()));
            match update.await {
                Ok(revision) => {
                    self.spec.metadata = metadata;
                    self.changed_at(revision);
                    info!(%id, revision = %revision, "metadata updated");
                    return Ok(());
                }
                Err(error) if error.is_replaced() => {
                    self.replaced();
                    return Err(error);
                }
                Err(error) if error.is_not_found() => {
                    info!(%id, %error, "the server forgot the instance; registering it again with the new metadata");
                    self.must_register = true;
                }
                // Not made, or not known to be: the spec keeps the metadata the server has.
                Err(error) => return Err(error),
            }
        }
        let previous = std::mem::replace(&mut self.spec.metadata, metadata);
        self.set_state(RegistrationState::Reconnecting);
        match self.register().await {
            Ok(granted) => {
                self.adopt(granted);
                info!(id = %granted.id, "registered again with the new metadata");
                Ok(())
            }
            Err(error) if error.is_rejected() => {
                // The server refuses the new metadata: go on announcing the old.
                self.spec.metadata = previous;
                Err(error)
            }
            // The loop goes on registering, with the new metadata.
            Err(error) => Err(error),
        }
    }

    /// A register succeeded: its id, TTL and revision are the registration's.
    fn adopt(&mut self, granted: Registered) {
        self.granted = granted;
        self.continuity = self.continuity.at(granted.revision);
        self.must_register = false;
        {
            let mut shared = lock(&self.shared);
            shared.id = granted.id;
            shared.ttl = granted.ttl;
            shared.revision = granted.revision;
        }
        self.set_state(RegistrationState::Registered { id: granted.id });
    }

    /// A change other than a register was made at `revision`.
    fn changed_at(&mut self, revision: Revision) {
        self.granted.revision = revision;
        self.continuity = self.continuity.at(revision);
        lock(&self.shared).revision = revision;
    }

    /// Another register took the endpoint: the loop stops, for good.
    fn replaced(&mut self) {
        let id = self.granted.id;
        warn!(
            %id,
            service_type = %self.spec.service_type,
            address = %self.spec.address,
            "another register took the endpoint; the registration stops"
        );
        lock(&self.shared).replaced = true;
        self.set_state(RegistrationState::Replaced { id });
    }

    /// Publishes `state`; true when it differs from the last one.
    fn set_state(&self, state: RegistrationState) -> bool {
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        })
    }

    /// A third of the TTL granted.
    fn interval(&self) -> Duration {
        heartbeat_interval(self.granted.ttl)
    }
}

/// The error of a registration whose endpoint another register took.
fn replaced_error() -> Error {
    Error::NotFound {
        reason: Some(discovery_proto::RemoveReason::Replaced),
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A third of `ttl`, within [`MIN_INTERVAL`] and [`MAX_INTERVAL`].
fn heartbeat_interval(ttl: Duration) -> Duration {
    (ttl / HEARTBEAT_FRACTION).clamp(MIN_INTERVAL, MAX_INTERVAL)
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

    use discovery_proto::{ErrorKind, RemoveReason, Request, Response};

    use super::*;
    use crate::Client;
    use crate::config::DEFAULT_BACKOFF_MAX;
    use crate::testing::script::{metadata, revision};
    use crate::testing::{Peer, PipeServer, ScriptServer};

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
            heartbeat_interval(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(heartbeat_interval(Duration::ZERO), MIN_INTERVAL);
        // A server may grant anything; the interval stays one the clock can hold.
        assert_eq!(heartbeat_interval(Duration::MAX), MAX_INTERVAL);
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
        let mut ticker = heartbeat_ticker(heartbeat_interval(Duration::MAX));
        // Its first tick lies somewhere in the first interval, so it is not due now.
        assert!(futures_util::FutureExt::now_or_never(ticker.tick()).is_none());
    }

    /// What the scripted servers announce: far longer than any TTL granted below, so that
    /// a loop following it would hardly beat.
    const SERVER_TTL: Duration = Duration::from_secs(60);

    fn is_heartbeat(request: &Request) -> bool {
        matches!(request, Request::Heartbeat { .. })
    }

    fn is_register(request: &Request) -> bool {
        matches!(request, Request::Register { .. })
    }

    /// Registers `spec` through `client` on scripted server `a`, which grants `ttl` under
    /// `id` at revision 1; the registration, and the connection it went over.
    async fn registered(
        servers: &mut ScriptServer,
        client: &Client,
        spec: ServiceSpec,
        id: Uuid,
        ttl: Duration,
    ) -> (Registration, Peer) {
        let registering = tokio::spawn({
            let client = client.clone();
            async move { client.register(spec).await }
        });
        let mut peer = servers.accept_welcomed("a", SERVER_TTL).await;
        let register = peer.recv().await;
        assert!(is_register(&register.request), "{register:?}");
        let granted = Response::Registered {
            id,
            ttl,
            revision: revision(1),
        };
        peer.send(register.request_id, granted).await;
        let registration = registering.await.unwrap().unwrap();
        assert_eq!(registration.id(), id);
        (registration, peer)
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_come_at_a_third_of_the_ttl_granted() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let ttl = Duration::from_secs(3);
        let spec = spec("short-lived").with_ttl(ttl);
        let id = Uuid::new_v4();
        let registering = tokio::spawn({
            let client = client.clone();
            async move { client.register(spec).await }
        });
        let mut peer = servers.accept_welcomed("a", SERVER_TTL).await;
        let register = peer.recv().await;
        let Request::Register { ttl: asked, .. } = register.request else {
            panic!("{register:?}");
        };
        assert_eq!(asked, Some(ttl), "the spec's TTL is asked for");
        let granted = Response::Registered {
            id,
            ttl,
            revision: revision(1),
        };
        peer.send(register.request_id, granted).await;
        let registration = registering.await.unwrap().unwrap();
        assert_eq!(registration.ttl(), ttl);
        assert_eq!(client.ttl(), Some(SERVER_TTL));

        let log = peer.serve(|_| vec![Response::Ok]);
        sleep(Duration::from_secs(30)).await;
        let beats = log.matching(is_heartbeat);
        // One a second (a third of 3 s, not of the server's 60 s), the first somewhere in
        // the first second.
        assert!(
            (28..=31).contains(&beats.len()),
            "{} beats in 30 s",
            beats.len()
        );
        for pair in beats.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            // Up to a tenth of the interval of jitter on each beat, and timer rounding.
            assert!(
                gap >= Duration::from_millis(900) - 2 * TICK
                    && gap <= Duration::from_millis(1100) + 2 * TICK,
                "{gap:?} between two beats"
            );
        }
        for (_, beat) in &beats {
            // On the connection the register went over: no revision to wait for.
            assert_eq!(
                *beat,
                Request::Heartbeat {
                    id,
                    min_revision: None
                }
            );
        }
        drop(registration);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_instance_stops_its_loop_and_is_not_registered_again() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let id = Uuid::new_v4();
        let (registration, peer) =
            registered(&mut servers, &client, spec("contested"), id, TTL).await;
        let log = peer.serve(|frame| match frame.request {
            Request::Heartbeat { .. } => vec![Response::NotFound {
                reason: Some(RemoveReason::Replaced),
            }],
            _ => vec![Response::Done {
                revision: revision(2),
            }],
        });
        let mut states = registration.state();
        let state = *states
            .wait_for(|state| !state.is_registered())
            .await
            .unwrap();
        assert_eq!(state, RegistrationState::Replaced { id });
        assert!(states.changed().await.is_err(), "the loop has ended");

        sleep(10 * TTL).await;
        assert_eq!(log.matching(is_heartbeat).len(), 1);
        assert!(
            log.matching(is_register).is_empty(),
            "never registered again"
        );
        assert_eq!(
            registration.current_state(),
            RegistrationState::Replaced { id }
        );

        let mut registration = registration;
        let error = registration
            .set_metadata(metadata(&[("v", "2")]))
            .await
            .unwrap_err();
        assert!(error.is_replaced(), "{error:?}");
        let error = registration.shutdown().await.unwrap_err();
        assert!(error.is_replaced(), "{error:?}");
        sleep(TTL).await;
        // The endpoint is someone else's: nothing was deregistered.
        assert_eq!(log.frames().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_server_is_left_and_the_next_one_is_heartbeat_with_the_revision() {
        let mut servers = ScriptServer::new(&["a", "b"]);
        let client = servers.client(Client::builder());
        let id = Uuid::new_v4();
        let (registration, peer_a) =
            registered(&mut servers, &client, spec("fenced"), id, TTL).await;
        let mut beats_on_a = 0;
        let log_a = peer_a.serve(move |_| {
            beats_on_a += 1;
            if beats_on_a == 1 {
                vec![Response::Ok]
            } else {
                vec![Response::Error {
                    kind: ErrorKind::Unavailable,
                    message: "cut off from the store".into(),
                }]
            }
        });

        let peer_b = servers.accept_welcomed("b", SERVER_TTL).await;
        let log_b = peer_b.serve(|frame| match frame.request {
            Request::Heartbeat { .. } => vec![Response::Ok],
            _ => Vec::new(),
        });
        sleep(5 * TTL).await;

        assert_eq!(log_a.matching(is_heartbeat).len(), 2);
        assert!(log_a.closed(), "the client left the unavailable server");
        let beats = log_b.matching(is_heartbeat);
        assert!(beats.len() >= 10, "{} beats on b", beats.len());
        // The heartbeat a could not serve went to b at once, with the revision of the
        // register; the later ones carry none.
        let a_refused = log_a.matching(is_heartbeat)[1].0;
        assert!(beats[0].0 - a_refused <= INTERVAL / 10, "moved on at once");
        assert_eq!(
            beats[0].1,
            Request::Heartbeat {
                id,
                min_revision: Some(revision(1))
            }
        );
        for (_, beat) in &beats[1..] {
            assert_eq!(
                *beat,
                Request::Heartbeat {
                    id,
                    min_revision: None
                }
            );
        }
        assert!(
            log_b.matching(is_register).is_empty(),
            "never registered again"
        );
        assert_eq!(registration.id(), id);
        assert_eq!(
            registration.current_state(),
            RegistrationState::Registered { id }
        );
        drop(registration);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_register_waits_as_asked_and_registers() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let (registration, peer) =
            registered(&mut servers, &client, spec("busy"), first, TTL).await;
        let mut registers = 0;
        let log = peer.serve(move |frame| match frame.request {
            Request::Heartbeat { id, .. } if id == first => vec![Response::NotFound {
                reason: Some(RemoveReason::Expired),
            }],
            Request::Heartbeat { .. } => vec![Response::Ok],
            Request::Register { .. } => {
                registers += 1;
                if registers == 1 {
                    vec![Response::Throttled {
                        retry_after_ms: 700,
                    }]
                } else {
                    vec![Response::Registered {
                        id: second,
                        ttl: TTL,
                        revision: revision(3),
                    }]
                }
            }
            _ => Vec::new(),
        });
        let mut states = registration.state();
        let state = *states
            .wait_for(|state| state.id() == Some(second))
            .await
            .unwrap();
        assert_eq!(state, RegistrationState::Registered { id: second });
        let registers = log.matching(is_register);
        assert_eq!(registers.len(), 2);
        let waited = registers[1].0 - registers[0].0;
        assert!(
            waited >= Duration::from_millis(700) && waited <= Duration::from_millis(700) + TICK,
            "registered again after {waited:?}"
        );
        assert_eq!(registration.revision(), revision(3));
        drop(registration);
    }

    #[tokio::test(start_paused = true)]
    async fn new_metadata_is_updated_in_place_and_registered_with_later() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let spec = spec("rolling").with_metadata("version", "1");
        let (mut registration, peer) = registered(&mut servers, &client, spec, first, TTL).await;
        let forget = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = peer.serve({
            let forget = forget.clone();
            move |frame| match frame.request {
                Request::Update { .. } => vec![Response::Done {
                    revision: revision(2),
                }],
                Request::Heartbeat { .. } if forget.load(std::sync::atomic::Ordering::SeqCst) => {
                    vec![Response::NotFound {
                        reason: Some(RemoveReason::Expired),
                    }]
                }
                Request::Heartbeat { .. } => vec![Response::Ok],
                Request::Register { .. } => vec![Response::Registered {
                    id: second,
                    ttl: TTL,
                    revision: revision(3),
                }],
                _ => Vec::new(),
            }
        });

        let new = metadata(&[("version", "2"), ("zone", "b")]);
        registration.set_metadata(new.clone()).await.unwrap();
        assert_eq!(registration.spec().metadata, new);
        assert_eq!(registration.id(), first, "an update keeps the id");
        assert_eq!(registration.revision(), revision(2));
        let updates = log.matching(|request| matches!(request, Request::Update { .. }));
        assert_eq!(
            updates[0].1,
            Request::Update {
                id: first,
                metadata: new.clone(),
                // The register's revision, so that a server that has not seen it waits.
                min_revision: Some(revision(1)),
            }
        );

        // The server forgets it: it is registered again with the new metadata.
        forget.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut states = registration.state();
        states
            .wait_for(|state| state.id() == Some(second))
            .await
            .unwrap();
        let registers = log.matching(is_register);
        let Request::Register { metadata, .. } = &registers[0].1 else {
            panic!("{registers:?}");
        };
        assert_eq!(*metadata, new);
        drop(registration);
    }

    #[tokio::test(start_paused = true)]
    async fn new_metadata_for_a_forgotten_instance_is_registered_at_once() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let (mut registration, peer) =
            registered(&mut servers, &client, spec("forgotten"), first, TTL).await;
        let log = peer.serve(move |frame| match frame.request {
            Request::Update { .. } => vec![Response::NotFound {
                reason: Some(RemoveReason::Expired),
            }],
            Request::Register { .. } => vec![Response::Registered {
                id: second,
                ttl: TTL,
                revision: revision(3),
            }],
            _ => vec![Response::Ok],
        });
        let new = metadata(&[("version", "2")]);
        registration.set_metadata(new.clone()).await.unwrap();
        assert_eq!(registration.id(), second);
        assert_eq!(registration.spec().metadata, new);
        let registers = log.matching(is_register);
        assert!(matches!(&registers[0].1, Request::Register { metadata, .. } if *metadata == new));
        drop(registration);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_metadata_leaves_the_spec_as_it_was() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let id = Uuid::new_v4();
        let spec = spec("strict").with_metadata("version", "1");
        let (mut registration, peer) =
            registered(&mut servers, &client, spec.clone(), id, TTL).await;
        let _log = peer.serve(|frame| match frame.request {
            Request::Update { .. } => vec![Response::Error {
                kind: ErrorKind::InvalidMetadata,
                message: "too long".into(),
            }],
            _ => vec![Response::Ok],
        });
        let error = registration
            .set_metadata(metadata(&[("version", "x".repeat(1000).as_str())]))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::InvalidMetadata));
        assert_eq!(registration.spec(), &spec);
        assert_eq!(registration.id(), id);
        drop(registration);
    }
}
