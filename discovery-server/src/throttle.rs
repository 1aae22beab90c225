//! The register rate limit (`--register-rate`, `--register-burst`): a token bucket per
//! binary connection, and one per peer for the compat protocol, whose connections carry one
//! request each.
//!
//! Off by default: many services of one host share its address, and benchmarks register
//! hundreds of thousands a second. Who may register at all, and how much, is the business
//! of the tokens to come; this only keeps one client from making the server do nothing
//! but registers.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::peer::PeerKey;

/// A token bucket of `burst` tokens refilled at `rate` a second, kept as the time at which
/// it will be full again (the "theoretical arrival time" of GCRA): one number, no floating
/// point, and exact however long it sits unused.
///
/// Times are nanoseconds since the bucket was made, on tokio's clock, so a paused clock
/// drives it in tests and no `Instant + Duration` can overflow.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    origin: Instant,
    /// Nanoseconds one token takes to come back.
    per_token: u64,
    /// Nanoseconds a full bucket stands for beyond one token: `(burst - 1) * per_token`.
    slack: u64,
    /// When (in nanoseconds since `origin`) the bucket will be full again; at or before now,
    /// it is full.
    full_at: u64,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens (at least 1) refilled at `rate` a second (at least 1).
    pub fn new(rate: u32, burst: u32) -> Self {
        let per_token = 1_000_000_000u64.div_ceil(u64::from(rate.max(1)));
        TokenBucket {
            origin: Instant::now(),
            per_token,
            slack: per_token.saturating_mul(u64::from(burst.max(1)) - 1),
            full_at: 0,
        }
    }

    /// Takes a token, or says how long until one is there (at least 1 ms, as the wire
    /// counts it).
    pub fn take(&mut self) -> Result<(), Duration> {
        let now = self.now();
        let from = self.full_at.max(now);
        // The bucket has a token when taking one leaves it no emptier than empty: its
        // full-again time at most `slack` past now.
        if from - now <= self.slack {
            self.full_at = from.saturating_add(self.per_token);
            Ok(())
        } else {
            Err(Duration::from_nanos(from - now - self.slack).max(Duration::from_millis(1)))
        }
    }

    /// True when the bucket is full, so that forgetting it loses nothing.
    fn is_full(&self) -> bool {
        self.full_at <= self.now()
    }

    fn now(&self) -> u64 {
        u64::try_from(Instant::now().duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// `retry_after_ms` for a wait: whole milliseconds, rounded up, at least 1.
pub fn retry_after_ms(wait: Duration) -> u64 {
    u64::try_from(wait.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The most peers whose compat buckets are remembered at once (each about 64 bytes).
pub const MAX_PEER_BUCKETS: usize = 16_384;

/// One token bucket per peer, for the compat protocol: its clients open a connection per
/// request, so a bucket per connection would never empty.
///
/// Bounded: a full bucket is forgotten (a new one is the same), and when more than
/// [`MAX_PEER_BUCKETS`] peers are remembered even so, half of them are forgotten. Under a
/// flood of that many addresses the limit fails open for some of them; memory never grows.
#[derive(Debug)]
pub struct PeerBuckets {
    rate: u32,
    burst: u32,
    buckets: Mutex<HashMap<PeerKey, TokenBucket>>,
}

impl PeerBuckets {
    /// Buckets of `burst` tokens refilled at `rate` a second.
    pub fn new(rate: u32, burst: u32) -> Self {
        PeerBuckets {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `peer`'s bucket, or says how long until one is there.
    pub fn take(&self, peer: PeerKey) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_PEER_BUCKETS && !buckets.contains_key(&peer) {
            buckets.retain(|_, bucket| !bucket.is_full());
            // Forgetting half at once makes the sweep cost O(1) per take, amortized.
            let excess = buckets.len().saturating_sub(MAX_PEER_BUCKETS / 2);
            if excess > 0 {
                let forget: Vec<PeerKey> = buckets.keys().take(excess).copied().collect();
                for key in forget {
                    buckets.remove(&key);
                }
            }
        }
        buckets
            .entry(peer)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
            .take()
    }

    /// How many peers are remembered now.
    pub fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_token_per_interval() {
        let mut bucket = TokenBucket::new(10, 3);
        for _ in 0..3 {
            assert_eq!(bucket.take(), Ok(()));
        }
        // Empty: one token comes back 100 ms after the first was taken.
        assert_eq!(bucket.take(), Err(Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(bucket.take(), Err(Duration::from_millis(1)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(bucket.take(), Ok(()));
        assert_eq!(bucket.take(), Err(Duration::from_millis(100)));
        // Left alone, it fills to its burst and no further.
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..3 {
            assert_eq!(bucket.take(), Ok(()));
        }
        assert!(bucket.take().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_costs_no_token() {
        let mut bucket = TokenBucket::new(1, 1);
        assert_eq!(bucket.take(), Ok(()));
        for _ in 0..100 {
            assert_eq!(bucket.take(), Err(Duration::from_secs(1)));
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(bucket.take(), Ok(()));
    }

    #[test]
    fn retry_after_is_rounded_up_and_never_zero() {
        assert_eq!(retry_after_ms(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_ms(Duration::from_micros(1500)), 2);
        assert_eq!(retry_after_ms(Duration::from_millis(100)), 100);
        assert_eq!(retry_after_ms(Duration::ZERO), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_fastest_rate_and_largest_burst_do_not_overflow() {
        let mut bucket = TokenBucket::new(10_000_000, 10_000_000);
        for _ in 0..1000 {
            assert_eq!(bucket.take(), Ok(()));
        }
        let mut slow = TokenBucket::new(1, 10_000_000);
        assert_eq!(slow.take(), Ok(()));
    }

    fn v4(n: u32) -> PeerKey {
        PeerKey::of(IpAddr::V4(Ipv4Addr::from(n)))
    }

    #[tokio::test(start_paused = true)]
    async fn peers_have_buckets_of_their_own_and_the_map_stays_bounded() {
        let buckets = PeerBuckets::new(1, 2);
        assert_eq!(buckets.take(v4(1)), Ok(()));
        assert_eq!(buckets.take(v4(1)), Ok(()));
        assert!(buckets.take(v4(1)).is_err());
        assert_eq!(buckets.take(v4(2)), Ok(()), "another peer is not throttled");
        // Many more peers than are remembered: the map never holds more than its bound.
        for n in 10..10 + 3 * MAX_PEER_BUCKETS as u32 {
            let _ = buckets.take(v4(n));
            assert!(buckets.len() <= MAX_PEER_BUCKETS);
        }
        // Remembered or forgotten, a bucket left alone is full again.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(buckets.take(v4(1)), Ok(()));
        assert_eq!(buckets.take(v4(1)), Ok(()));
        assert!(buckets.take(v4(1)).is_err());
    }
}
