//! The checker: query loops that ask for every type over and over and hand each answer to
//! the [`Ledger`](crate::ledger::Ledger), and one [`Watch`] per type whose events are
//! applied to a local view and logged for
//! [`Ledger::replay`](crate::ledger::Ledger::replay).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use discovery_client::{Client, Error, Uuid, Watch, WatchEvent};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::churn::{Shared, type_name};
use crate::ledger::Seen;

/// Queries `service_type` and checks the answer; `Some(true)` when it lists every running
/// registration's current id, `None` when the query failed.
pub async fn checked_query(client: &Client, shared: &Shared, service_type: usize) -> Option<bool> {
    let sent = Instant::now();
    let answer = client.query(type_name(service_type)).await;
    let received = Instant::now();
    match answer {
        Ok(instances) => {
            let ids: Vec<Uuid> = instances.iter().map(|instance| instance.id).collect();
            Some(shared.ledger().answer(service_type, sent, received, &ids))
        }
        Err(_) => {
            shared.ledger().query_failed(received);
            None
        }
    }
}

/// What one watch has shown.
#[derive(Debug, Default)]
pub struct WatchState {
    /// Its events, in order.
    pub log: Vec<Seen>,
    /// The instances it lists now.
    pub view: HashSet<Uuid>,
    /// Events received, of every kind.
    pub events: u64,
    /// Snapshots that replaced an earlier view (after a reconnection or a lag).
    pub resets: u64,
    /// Times the consumer fell behind.
    pub lagged: u64,
}

/// The running checker.
#[derive(Debug)]
pub struct Checker {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    watches: Vec<Arc<Mutex<WatchState>>>,
}

impl Checker {
    /// Opens a watch per type on `watcher` and starts `queriers` query loops on `querier`,
    /// each pausing `pause` between queries. Everything stops at [`Checker::stop`], or at
    /// `hard_stop` at the latest.
    pub async fn start(
        querier: &Client,
        watcher: &Client,
        shared: &Arc<Shared>,
        queriers: usize,
        pause: Duration,
        hard_stop: Instant,
    ) -> Result<Self, Error> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut watches = Vec::new();
        for service_type in 0..shared.types {
            let watch = watcher.watch(type_name(service_type)).await?;
            let state = Arc::new(Mutex::new(WatchState::default()));
            watches.push(state.clone());
            tasks.spawn(follow_watch(watch, state, stopped.clone(), hard_stop));
        }
        for first in 0..queriers {
            tasks.spawn(query_loop(
                querier.clone(),
                shared.clone(),
                first * shared.types / queriers.max(1),
                pause,
                stopped.clone(),
                hard_stop,
            ));
        }
        Ok(Self {
            stop,
            tasks,
            watches,
        })
    }

    /// Waits, at most `patience`, until every watch lists exactly the running
    /// registrations' current ids; returns how many of those it misses, and how many other
    /// ids it lists, where it does not.
    pub async fn converge(&self, shared: &Shared, patience: Duration) -> (u64, u64) {
        let give_up = Instant::now() + patience;
        loop {
            let (mut missing, mut extra) = (0, 0);
            {
                let ledger = shared.ledger();
                for (service_type, state) in self.watches.iter().enumerate() {
                    let state = state.lock().unwrap_or_else(PoisonError::into_inner);
                    let live = ledger.live(service_type);
                    missing += live.difference(&state.view).count() as u64;
                    extra += state.view.difference(live).count() as u64;
                }
            }
            if (missing, extra) == (0, 0) || Instant::now() >= give_up {
                return (missing, extra);
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every loop and returns what the watches showed.
    pub async fn stop(mut self) -> Vec<WatchState> {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.watches
            .into_iter()
            .map(|state| std::mem::take(&mut *state.lock().unwrap_or_else(PoisonError::into_inner)))
            .collect()
    }
}

/// Queries every type in turn, from `first` on, until stopped.
async fn query_loop(
    client: Client,
    shared: Arc<Shared>,
    first: usize,
    pause: Duration,
    mut stopped: watch::Receiver<bool>,
    hard_stop: Instant,
) {
    let mut service_type = first;
    while !*stopped.borrow_and_update() && Instant::now() < hard_stop {
        tokio::select! {
            _ = checked_query(&client, &shared, service_type) => {}
            _ = stopped.changed() => return,
            () = sleep_until(hard_stop) => return,
        }
        service_type = (service_type + 1) % shared.types;
        if !pause.is_zero() {
            sleep(pause).await;
        }
    }
}

/// Applies and logs a watch's events until stopped.
async fn follow_watch(
    mut watch: Watch,
    state: Arc<Mutex<WatchState>>,
    mut stopped: watch::Receiver<bool>,
    hard_stop: Instant,
) {
    loop {
        let event = tokio::select! {
            event = watch.recv() => event,
            _ = stopped.wait_for(|stop| *stop) => return,
            () = sleep_until(hard_stop) => return,
        };
        let Some(event) = event else { return };
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        state.events += 1;
        match event {
            WatchEvent::Snapshot {
                instances, reset, ..
            } => {
                let ids: Vec<Uuid> = instances.iter().map(|instance| instance.id).collect();
                state.view = ids.iter().copied().collect();
                state.log.push(Seen::Snapshot(ids));
                state.resets += u64::from(reset);
            }
            WatchEvent::Added { instance, .. } => {
                state.view.insert(instance.id);
                state.log.push(Seen::Added(instance.id));
            }
            WatchEvent::Removed { instance, .. } => {
                state.view.remove(&instance.id);
                state.log.push(Seen::Removed(instance.id));
            }
            WatchEvent::Lagged => state.lagged += 1,
            _ => {}
        }
    }
}
