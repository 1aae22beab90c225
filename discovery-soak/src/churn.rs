//! The population and its churn: a slot per instance, each holding a running
//! [`Registration`] (or nothing, for a while, after it was stopped), and the driver that
//! stops, crashes, deregisters and re-registers a share of them at random, recording in the
//! [`Ledger`] when each id is known to exist and from when it is certainly dead.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use discovery_client::{Client, Error, Registration, RegistrationState, ServiceSpec, Uuid};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use crate::ledger::Ledger;

/// What every part of the soak shares.
#[derive(Debug)]
pub struct Shared {
    pub ledger: Mutex<Ledger>,
    /// The server's TTL.
    pub ttl: Duration,
    /// Added to the TTL for a dropped registration: a heartbeat written just before the
    /// drop may reach the server a little later, and the server's expiry task (which
    /// sends a watch its `Removed`) may run a little after the deadline.
    pub margin: Duration,
    pub types: usize,
}

impl Shared {
    pub fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The service type of slot `slot`'s instances.
pub fn service_type(slot: usize, types: usize) -> usize {
    slot % types
}

/// The name of service type `index`.
pub fn type_name(index: usize) -> String {
    format!("soak-{index}")
}

/// What slot `slot` announces: its own endpoint, so that no two slots replace each other.
fn spec(slot: usize, types: usize) -> ServiceSpec {
    // 50,000 ports per address of 127.0.0.0/8.
    let host = u32::try_from(slot / 50_000)
        .unwrap_or(u32::MAX)
        .min(0x00ff_fffe);
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + host);
    let port = 10_000 + u16::try_from(slot % 50_000).unwrap_or(0);
    ServiceSpec::new(
        type_name(service_type(slot, types)),
        SocketAddr::new(IpAddr::V4(ip), port),
    )
    .with_metadata("slot", slot.to_string())
}

/// The ids one registration has had, as its owner saw them.
#[derive(Debug)]
struct Tracked {
    service_type: usize,
    ids: Vec<Uuid>,
    /// Set once the soak has started to stop it.
    stopping: bool,
    /// When all its ids are certainly dead, once it has been stopped.
    dead_after: Option<Instant>,
}

/// Records `id` if it is new for the registration: its heartbeat loop registered it
/// again after the server answered `NotFound` for the previous id.
fn note_id(tracked: &Mutex<Tracked>, shared: &Shared, id: Uuid, at: Instant) {
    let mut tracked = tracked.lock().unwrap_or_else(PoisonError::into_inner);
    if tracked.ids.contains(&id) {
        return;
    }
    let old = *tracked
        .ids
        .last()
        .expect("a registration starts with an id");
    tracked.ids.push(id);
    shared.ledger().reregistered(
        tracked.service_type,
        old,
        id,
        at,
        tracked.dead_after,
        !tracked.stopping,
    );
}

/// Follows a registration's states until its heartbeat loop ends.
async fn follow(
    mut states: watch::Receiver<RegistrationState>,
    tracked: Arc<Mutex<Tracked>>,
    shared: Arc<Shared>,
) {
    while states.changed().await.is_ok() {
        let state = *states.borrow_and_update();
        if let Some(id) = state.id() {
            note_id(&tracked, &shared, id, Instant::now());
        }
    }
}

/// A running registration and what the soak knows of it.
#[derive(Debug)]
pub struct Member {
    registration: Registration,
    tracked: Arc<Mutex<Tracked>>,
}

impl Member {
    /// Registers slot `slot` through `client`, recording the id and following its changes.
    async fn register(client: &Client, slot: usize, shared: &Arc<Shared>) -> Result<Self, Error> {
        let service_type = service_type(slot, shared.types);
        let sent = Instant::now();
        let registration = client.register(spec(slot, shared.types)).await?;
        let returned = Instant::now();
        let mut states = registration.state();
        let id = states
            .borrow_and_update()
            .id()
            .unwrap_or_else(|| registration.id());
        shared.ledger().registered(service_type, id, sent, returned);
        let tracked = Arc::new(Mutex::new(Tracked {
            service_type,
            ids: vec![id],
            stopping: false,
            dead_after: None,
        }));
        tokio::spawn(follow(states, tracked.clone(), shared.clone()));
        Ok(Self {
            registration,
            tracked,
        })
    }

    /// Marks it as being stopped: from now on its ids are not expected in answers.
    fn begin_stop(self, shared: &Shared) -> Stopping {
        let states = self.registration.state();
        {
            let mut tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
            tracked.stopping = true;
            let mut ledger = shared.ledger();
            for id in &tracked.ids {
                ledger.stopping(*id);
            }
        }
        Stopping {
            registration: self.registration,
            tracked: self.tracked,
            states,
        }
    }
}

/// A registration being stopped.
struct Stopping {
    registration: Registration,
    tracked: Arc<Mutex<Tracked>>,
    /// Outlives the registration: its last state says its last id.
    states: watch::Receiver<RegistrationState>,
}

/// Records that every id the registration had is dead from `dead_after` on.
fn end_stop(
    tracked: &Mutex<Tracked>,
    states: &watch::Receiver<RegistrationState>,
    dead_after: Instant,
    shared: &Shared,
) {
    let last = states.borrow().id();
    if let Some(id) = last {
        note_id(tracked, shared, id, Instant::now());
    }
    let mut tracked = tracked.lock().unwrap_or_else(PoisonError::into_inner);
    tracked.dead_after = Some(dead_after);
    let mut ledger = shared.ledger();
    for id in &tracked.ids {
        ledger.dead(*id, dead_after);
    }
}

/// What the churn does to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Drops the `Registration`: its heartbeats stop at once and it deregisters in the
    /// background, best-effort. Dead at the drop plus the TTL (and the margin).
    Stop,
    /// Drops it where no runtime is at hand, as a crashed process would: no deregister
    /// at all, the instance must expire. Dead at the drop plus the TTL (and the margin).
    Crash,
    /// `Registration::shutdown`: stops the heartbeats, then deregisters. Dead once the
    /// deregister answered (or at the TTL, and the margin, if it could not be sent).
    Deregister,
    /// A deregister as above, then a register of the same endpoint: a new id.
    Reregister,
    /// Registers an empty slot again.
    Start,
}

const ACTIONS: [Action; 4] = [
    Action::Stop,
    Action::Crash,
    Action::Deregister,
    Action::Reregister,
];

/// A slot after an action, and whether something failed on the way.
#[derive(Debug)]
pub struct Done {
    slot: usize,
    action: Action,
    member: Option<Member>,
    deregister_failed: bool,
    register_failed: bool,
}

/// Carries out `action` on slot `slot`.
async fn act(
    slot: usize,
    action: Action,
    member: Option<Member>,
    client: Client,
    shared: Arc<Shared>,
) -> Done {
    let mut done = Done {
        slot,
        action,
        member: None,
        deregister_failed: false,
        register_failed: false,
    };
    let after_ttl = |at: Instant| at + shared.ttl + shared.margin;
    if let Some(member) = member {
        let Stopping {
            registration,
            tracked,
            states,
        } = member.begin_stop(&shared);
        let dead_after = match action {
            Action::Stop => {
                drop(registration);
                after_ttl(Instant::now())
            }
            Action::Crash => {
                // A plain thread has no tokio runtime: the drop cannot deregister.
                let dropped = tokio::task::spawn_blocking(move || {
                    std::thread::spawn(move || drop(registration)).join()
                })
                .await;
                assert!(
                    matches!(dropped, Ok(Ok(()))),
                    "dropping a registration panicked"
                );
                after_ttl(Instant::now())
            }
            Action::Deregister | Action::Reregister | Action::Start => {
                let began = Instant::now();
                match registration.shutdown().await {
                    Ok(()) => Instant::now(),
                    Err(error) if error.is_not_found() => Instant::now(),
                    Err(_) => {
                        done.deregister_failed = true;
                        after_ttl(began)
                    }
                }
            }
        };
        end_stop(&tracked, &states, dead_after, &shared);
    }
    if matches!(action, Action::Reregister | Action::Start) {
        match Member::register(&client, slot, &shared).await {
            Ok(member) => done.member = Some(member),
            Err(_) => done.register_failed = true,
        }
    }
    done
}

/// One instance's place in the population.
#[derive(Debug)]
enum Slot {
    Live(Member),
    /// An action is under way.
    Busy,
    /// Stopped; registered again from `until` on.
    Empty {
        until: Instant,
    },
}

/// How many of each action were carried out, and what failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChurnCounts {
    pub stop: u64,
    pub crash: u64,
    pub deregister: u64,
    pub reregister: u64,
    pub start: u64,
    pub deregister_errors: u64,
    pub register_errors: u64,
}

impl ChurnCounts {
    /// Every action.
    pub fn total(&self) -> u64 {
        self.stop + self.crash + self.deregister + self.reregister + self.start
    }
}

/// The population of slots and the churn driver.
#[derive(Debug)]
pub struct Churn {
    slots: Vec<Slot>,
    clients: Vec<Client>,
    shared: Arc<Shared>,
    running: JoinSet<Done>,
    rng: fastrand::Rng,
    /// The share of live slots each action hits per second.
    rate: f64,
    counts: ChurnCounts,
}

/// How many registers each client has under way at once while the population is built.
const REGISTERS_PER_CLIENT: usize = 256;

impl Churn {
    /// A population of `slots` slots, none registered yet.
    pub fn new(
        slots: usize,
        clients: Vec<Client>,
        shared: Arc<Shared>,
        rate: f64,
        seed: u64,
    ) -> Self {
        let now = Instant::now();
        Self {
            slots: (0..slots).map(|_| Slot::Empty { until: now }).collect(),
            clients,
            shared,
            running: JoinSet::new(),
            rng: fastrand::Rng::with_seed(seed),
            rate,
            counts: ChurnCounts::default(),
        }
    }

    /// Registers every slot, failing if one cannot be within `patience`.
    pub async fn register_all(&mut self, patience: Duration) -> Result<(), String> {
        let mut registering = JoinSet::new();
        let permits: Vec<Arc<Semaphore>> = self
            .clients
            .iter()
            .map(|_| Arc::new(Semaphore::new(REGISTERS_PER_CLIENT)))
            .collect();
        for slot in 0..self.slots.len() {
            let which = slot % self.clients.len();
            let client = self.clients[which].clone();
            let permits = permits[which].clone();
            let shared = self.shared.clone();
            registering.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (slot, Member::register(&client, slot, &shared).await)
            });
        }
        let collect = async {
            while let Some(joined) = registering.join_next().await {
                let (slot, registered) = joined.map_err(|e| format!("a register panicked: {e}"))?;
                let member = registered.map_err(|e| format!("cannot register slot {slot}: {e}"))?;
                self.slots[slot] = Slot::Live(member);
            }
            Ok::<(), String>(())
        };
        timeout(patience, collect)
            .await
            .map_err(|_| format!("the population was not registered within {patience:?}"))?
    }

    /// How many slots hold a running registration.
    pub fn live(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| matches!(slot, Slot::Live(_)))
            .count()
    }

    /// What has been done so far.
    pub fn counts(&self) -> ChurnCounts {
        self.counts
    }

    /// Starts this tick's actions: each live slot is hit by each action with probability
    /// `rate * tick`, and each empty slot whose pause is over is registered again.
    pub fn tick(&mut self, tick: Duration) {
        let p = (self.rate * tick.as_secs_f64()).clamp(0.0, 0.25);
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            let action = match &self.slots[slot] {
                Slot::Busy => continue,
                Slot::Empty { until } if *until <= now => Action::Start,
                Slot::Empty { .. } => continue,
                Slot::Live(_) => {
                    let draw = self.rng.f64();
                    if draw >= 4.0 * p {
                        continue;
                    }
                    ACTIONS[((draw / p) as usize).min(3)]
                }
            };
            let member = match std::mem::replace(&mut self.slots[slot], Slot::Busy) {
                Slot::Live(member) => Some(member),
                _ => None,
            };
            let client = self.clients[slot % self.clients.len()].clone();
            self.running
                .spawn(act(slot, action, member, client, self.shared.clone()));
        }
    }

    /// Waits for the next action under way to finish; `None` when none is.
    pub async fn next_done(&mut self) -> Option<Done> {
        match self.running.join_next().await? {
            Ok(done) => Some(done),
            Err(error) => panic!("a churn action panicked: {error}"),
        }
    }

    /// Puts a finished action's slot back.
    pub fn finish(&mut self, done: Done) {
        let counter = match done.action {
            Action::Stop => &mut self.counts.stop,
            Action::Crash => &mut self.counts.crash,
            Action::Deregister => &mut self.counts.deregister,
            Action::Reregister => &mut self.counts.reregister,
            Action::Start => &mut self.counts.start,
        };
        *counter += 1;
        self.counts.deregister_errors += u64::from(done.deregister_failed);
        self.counts.register_errors += u64::from(done.register_failed);
        self.slots[done.slot] = match done.member {
            Some(member) => Slot::Live(member),
            None => {
                // Empty for up to a TTL: a crashed instance is sometimes replaced by its
                // successor (same endpoint) before it expires, sometimes not.
                let pause = self.shared.ttl.mul_f64(self.rng.f64());
                Slot::Empty {
                    until: Instant::now() + pause,
                }
            }
        };
    }

    /// Waits for every action under way, at most `patience`.
    pub async fn drain(&mut self, patience: Duration) -> Result<(), String> {
        let give_up = Instant::now() + patience;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(give_up, self.next_done()).await {
                Ok(Some(done)) => self.finish(done),
                Ok(None) => break,
                Err(_) => return Err(format!("churn actions still under way after {patience:?}")),
            }
        }
        Ok(())
    }

    /// The running registrations, for the end of the soak.
    pub fn into_registrations(self) -> Vec<Registration> {
        self.slots
            .into_iter()
            .filter_map(|slot| match slot {
                Slot::Live(member) => Some(member.registration),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_its_own_endpoint() {
        let endpoints: std::collections::HashSet<SocketAddr> =
            (0..120_000).map(|slot| spec(slot, 10).address).collect();
        assert_eq!(endpoints.len(), 120_000);
        assert_eq!(spec(7, 10).service_type, "soak-7");
        assert_eq!(spec(0, 10).address, "127.0.0.1:10000".parse().unwrap());
    }
}
