//! A latency histogram: log-linear buckets in a fixed array, written by hand.
//!
//! Values (nanoseconds) below 64 get a bucket each; above, every power of two is cut into 64
//! equal buckets, so a bucket is at most 1/64 (1.6 %) of its values wide, from 1 ns to the
//! largest `u64`, in 3,776 counters. Recording is an index computation and an increment;
//! merging the histograms of the connections adds the arrays. A quantile is reported as the
//! upper end of the bucket it falls in, so it is never under the true value and at most
//! 1.6 % over it.

use std::time::Duration;

/// log2 of the number of buckets per power of two.
const SUB_BITS: u32 = 6;
/// The number of buckets per power of two, and of exact buckets below it.
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64`: the exact ones, then 64 per power of two from 2^6 to 2^63.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// Counts of latencies, by bucket.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(nanos)] += 1;
        self.total += 1;
        self.max = self.max.max(nanos);
    }

    /// Adds every count of `other` to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The latency under which a fraction `q` (0 to 1) of the recorded ones fall, rounded up
    /// to the end of its bucket; zero when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        // The rank of the wanted value, from 1; ceil so that p50 of [a, b] is a.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(upper_end(i).min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("len", &self.total)
            .field("max_ns", &self.max)
            .finish_non_exhaustive()
    }
}

/// The bucket of a value.
fn index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros(); // at least SUB_BITS
    let shift = msb - SUB_BITS;
    // The top SUB_BITS + 1 bits of the value, in [SUB, 2 * SUB).
    let top = value >> shift;
    ((shift as u64 + 1) * SUB + (top - SUB)) as usize
}

/// The largest value that falls in bucket `i`.
fn upper_end(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let top = SUB + i % SUB;
    // (top + 1) << shift, minus one, without overflowing in the very last bucket.
    (top << shift) + ((1u64 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_holds_it() {
        let mut values: Vec<u64> = (0..5000).collect();
        values.extend((0..64).map(|b| 1u64 << b));
        values.extend((1..64).map(|b| (1u64 << b) - 1));
        values.extend([u64::MAX, u64::MAX - 1, 123_456_789, 987_654_321_012]);
        for value in values {
            let i = index(value);
            assert!(i < BUCKETS, "{value} -> {i}");
            assert!(upper_end(i) >= value, "{value} -> {i}");
            if i > 0 {
                assert!(upper_end(i - 1) < value, "{value} -> {i}");
            }
            // At most 1/64 wide.
            assert!(upper_end(i) - value <= value / SUB, "{value} -> {i}");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_come_out_in_order_and_near_the_truth() {
        let mut h = Histogram::default();
        for micros in 1..=1000 {
            h.record(Duration::from_micros(micros));
        }
        let p50 = h.quantile(0.5).as_nanos() as f64;
        let p99 = h.quantile(0.99).as_nanos() as f64;
        assert!((500_000.0..=500_000.0 * 1.016).contains(&p50), "{p50}");
        assert!((990_000.0..=990_000.0 * 1.016).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), Duration::from_micros(1000));
        let mut other = Histogram::default();
        other.record(Duration::from_secs(1));
        h.merge(&other);
        assert_eq!(h.total, 1001);
        assert_eq!(h.quantile(1.0), Duration::from_secs(1));
        assert_eq!(Histogram::default().quantile(0.5), Duration::ZERO);
    }
}
