//! Which address the worker tries next, and when: rounds over the address list, with
//! [`Backoff`] between rounds.
//!
//! Addresses are tried in list order. A failed attempt moves to the next address at once;
//! only after a whole round has failed does the next attempt wait the next backoff delay.
//! The time before which no attempt may start outlives the calls that waited on it, so
//! that callers arriving one after another cannot make the worker hammer a dead server.
//! The backoff starts again only when a connection answered a request other than `Hello`;
//! a server that says `Welcome` and hangs up counts as a failure.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::config::{BACKOFF_INITIAL, ServerAddress};
use crate::deadline;
use crate::error::Error;

/// The failover state of one worker.
#[derive(Debug)]
pub(crate) struct Failover {
    /// How many addresses there are (at least one: the builder checks).
    addresses: usize,
    /// The address of the next attempt, counted past the end (taken modulo `addresses`).
    next_address: usize,
    /// Attempts failed since the last connection that answered a request.
    failures: usize,
    backoff: Backoff,
    /// No attempt starts before this.
    next_attempt_at: Instant,
    /// Why the latest attempt failed, for the callers that give up waiting.
    last_error: Option<Arc<Error>>,
}

impl Failover {
    /// The state of a worker that has not tried yet: the first address, at once.
    pub(crate) fn new(addresses: usize, backoff_max: Duration) -> Self {
        Self {
            addresses: addresses.max(1),
            next_address: 0,
            failures: 0,
            backoff: Backoff::new(BACKOFF_INITIAL, backoff_max),
            next_attempt_at: Instant::now(),
            last_error: None,
        }
    }

    /// The index of the address to try next, and when that attempt may start.
    pub(crate) fn next(&self) -> (usize, Instant) {
        (self.next_address % self.addresses, self.next_attempt_at)
    }

    /// Why the latest attempt failed or the latest connection ended.
    pub(crate) fn last_error(&self) -> Option<Arc<Error>> {
        self.last_error.clone()
    }

    /// An attempt on address `index` failed.
    pub(crate) fn attempt_failed(&mut self, index: usize, address: &ServerAddress, error: Error) {
        if self.failures == 0 {
            warn!(%address, %error, "cannot connect to discovery server; retrying with backoff");
        } else {
            debug!(%address, %error, failures = self.failures, "cannot connect to discovery server");
        }
        self.last_error = Some(Arc::new(error));
        self.failures += 1;
        self.next_address = index + 1;
        self.schedule_next_attempt();
    }

    /// A connection answered a request: it works, so the backoff starts again.
    pub(crate) fn worked(&mut self) {
        self.failures = 0;
        self.backoff.reset();
    }

    /// A connection to address `index` ended with `error`. When it had `answered` a
    /// request, the next attempt is immediate (on the next address); a connection lost
    /// without one answer counts as a failed attempt, so a server that keeps doing this is
    /// not reconnected to in a tight loop.
    pub(crate) fn connection_lost(&mut self, index: usize, answered: bool, error: Error) {
        self.last_error = Some(Arc::new(error));
        self.next_address = index + 1;
        if answered {
            self.next_attempt_at = Instant::now();
        } else {
            self.failures += 1;
            self.schedule_next_attempt();
        }
    }

    /// Tries the next address at once, unless a whole round of addresses has failed: then
    /// it waits the next backoff delay.
    fn schedule_next_attempt(&mut self) {
        let now = Instant::now();
        if self.failures.is_multiple_of(self.addresses) {
            let delay = self.backoff.next_delay();
            debug!(?delay, "every address failed; backing off");
            self.next_attempt_at = deadline::saturating_after(now, delay);
        } else {
            self.next_attempt_at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Error {
        Error::Connect {
            address: "127.0.0.1:1".into(),
            source: Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        }
    }

    #[test]
    fn a_failed_address_moves_on_at_once_and_a_failed_round_backs_off() {
        let address = ServerAddress::from("127.0.0.1:1");
        let mut failover = Failover::new(2, Duration::from_secs(2));
        let (index, _) = failover.next();
        assert_eq!(index, 0);
        let before = Instant::now();
        failover.attempt_failed(index, &address, refused());
        let (index, at) = failover.next();
        assert_eq!(index, 1);
        assert!(at <= Instant::now(), "the second address is tried at once");
        failover.attempt_failed(index, &address, refused());
        let (index, at) = failover.next();
        assert_eq!(index, 0);
        assert!(
            at >= before + BACKOFF_INITIAL / 2,
            "a failed round waits at least half the first backoff"
        );
        assert!(failover.last_error().is_some());
    }

    #[test]
    fn an_endless_backoff_cap_does_not_overflow() {
        let address = ServerAddress::from("127.0.0.1:1");
        let mut failover = Failover::new(1, Duration::MAX);
        for _ in 0..100 {
            let (index, _) = failover.next();
            failover.attempt_failed(index, &address, refused());
        }
        let (_, at) = failover.next();
        assert!(at > Instant::now());
    }

    #[test]
    fn a_connection_that_answered_is_followed_by_an_immediate_attempt() {
        let address = ServerAddress::from("127.0.0.1:1");
        let mut failover = Failover::new(1, Duration::from_secs(2));
        failover.attempt_failed(0, &address, refused());
        failover.worked();
        failover.connection_lost(0, true, refused());
        let (_, at) = failover.next();
        assert!(at <= Instant::now());
        // Lost without an answer: a failure, and with one address a whole round.
        let before = Instant::now();
        failover.connection_lost(0, false, refused());
        let (_, at) = failover.next();
        assert!(at >= before + BACKOFF_INITIAL / 2);
    }
}
