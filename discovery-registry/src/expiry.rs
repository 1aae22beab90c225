//! The expiry task, and the bounded passes that every path freeing due entries takes.
//!
//! Every entry is filed once in the deadline index, and one background task sleeps until
//! the earliest deadline (or until woken, when an earlier one is filed). When a deadline
//! comes due the task compares each entry's real deadline with now and frees it or files it
//! again: a heartbeat only stores its new deadline in the slot. Each entry costs the task
//! one visit per TTL at most, however often it heartbeats.
//!
//! A pass handles at most [`BATCH`] due entries per hold of the lock, whoever runs it (the
//! task, a register at a cap, a new watch, or a test), so that when a million entries come
//! due at once requests still get the lock between batches.

use std::sync::{Arc, MutexGuard, Weak};

use tokio::sync::Notify;

use crate::clock::Nanos;
use crate::state::{Core, Expiry, State};

/// The most entries one pass handles per hold of the lock.
pub(crate) const BATCH: usize = 1024;

/// The expiry task. It holds only a `Weak` to the state, so that dropping the last
/// handle frees everything and, through `Core`'s `Drop`, ends this task.
pub(crate) async fn run(core: Weak<Core>, wake: Arc<Notify>) {
    loop {
        let next = match core.upgrade() {
            Some(core) => {
                let clock = core.clock;
                let next = core.lock().expire_due(&clock, clock.now(), BATCH);
                core.passes
                    .send_modify(|passes| *passes = passes.wrapping_add(1));
                next
            }
            None => return,
        };
        match next {
            Expiry::More => tokio::task::yield_now().await,
            Expiry::Until(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            Expiry::Idle => wake.notified().await,
        }
    }
}

/// Frees what is due at `now`, a batch per hold of the lock, until `done` says the state
/// suits the caller or nothing due is left; returns the lock held at that moment, so that
/// the caller decides on the state the last pass left.
pub(crate) fn until<'a>(
    core: &'a Core,
    now: Nanos,
    mut done: impl FnMut(&State) -> bool,
) -> MutexGuard<'a, State> {
    let clock = core.clock;
    loop {
        let mut state = core.lock();
        if done(&state) {
            return state;
        }
        if state.expire_due(&clock, now, BATCH) != Expiry::More {
            return state;
        }
        // Let others in between batches.
        drop(state);
    }
}
