//! A latency histogram: an HdrHistogram of nanoseconds with 3 significant digits, behind
//! the three calls the load generator makes (record a `Duration`, merge, read a quantile).
//!
//! Every connection records into its own histogram, which starts small and grows (once per
//! power of two reached, never per value) to hold the largest latency it sees; the run merges
//! them at the end. A quantile is reported as the highest value of the bucket it falls in,
//! so it is never under the true value and at most 0.1 % over it, and never above the
//! largest latency recorded, which is kept exactly.

use std::time::Duration;

/// Significant decimal digits kept of each value.
const SIGNIFICANT_DIGITS: u8 = 3;
/// The largest value an auto-resizing HdrHistogram can grow to hold (2^62 ns, over a
/// century); a longer latency is counted as this.
const MAX_NANOS: u64 = (i64::MAX / 2) as u64;

/// Counts of latencies.
#[derive(Clone)]
pub struct Histogram {
    counts: hdrhistogram::Histogram<u64>,
    /// The largest value recorded, exactly (HdrHistogram's own `max` is the top of its
    /// bucket).
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: hdrhistogram::Histogram::new(SIGNIFICANT_DIGITS)
                .expect("3 significant digits are within HdrHistogram's 0 to 5"),
            max: 0,
        }
    }
}

impl Histogram {
    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos())
            .unwrap_or(u64::MAX)
            .min(MAX_NANOS);
        self.max = self.max.max(nanos);
        self.counts
            .record(nanos)
            .expect("an auto-resizing histogram grows to hold any value up to MAX_NANOS");
    }

    /// Adds every count of `other` to this one.
    pub fn merge(&mut self, other: &Histogram) {
        self.counts
            .add(&other.counts)
            .expect("an auto-resizing histogram grows to hold any other");
        self.max = self.max.max(other.max);
    }

    /// The latency under which a fraction `q` (0 to 1) of the recorded ones fall, rounded up
    /// to the top of its bucket; zero when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.counts.is_empty() {
            return Duration::ZERO;
        }
        // Above 0, HdrHistogram takes the rank `ceil(q * len)` (at least 1), so that p50 of
        // [a, b] is a, and answers the highest value of that rank's bucket.
        let q = q.clamp(f64::MIN_POSITIVE, 1.0);
        Duration::from_nanos(self.counts.value_at_quantile(q).min(self.max))
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("len", &self.counts.len())
            .field("max_ns", &self.max)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_out_in_order_and_near_the_truth() {
        let mut h = Histogram::default();
        for micros in 1..=1000 {
            h.record(Duration::from_micros(micros));
        }
        let p50 = h.quantile(0.5).as_nanos() as f64;
        let p99 = h.quantile(0.99).as_nanos() as f64;
        assert!((500_000.0..=500_000.0 * 1.001).contains(&p50), "{p50}");
        assert!((990_000.0..=990_000.0 * 1.001).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), Duration::from_micros(1000));
        let mut other = Histogram::default();
        other.record(Duration::from_secs(1));
        h.merge(&other);
        assert_eq!(h.counts.len(), 1001);
        assert_eq!(h.quantile(1.0), Duration::from_secs(1));
        assert_eq!(Histogram::default().quantile(0.5), Duration::ZERO);
    }

    #[test]
    fn every_value_is_held_within_its_bucket() {
        let mut values: Vec<u64> = (0..5000).collect();
        values.extend((0..62).map(|b| 1u64 << b));
        values.extend((1..62).map(|b| (1u64 << b) - 1));
        values.extend([123_456_789, 987_654_321_012, MAX_NANOS - 1, MAX_NANOS]);
        for value in values {
            let mut h = Histogram::default();
            h.record(Duration::from_nanos(value));
            // Two of them, so that the quantile is not cut down to the exact maximum.
            h.record(Duration::from_nanos(value + 1));
            let p50 = h.quantile(0.5).as_nanos() as u64;
            assert!(p50 >= value, "{value} -> {p50}");
            assert!(p50 - value <= value / 1000, "{value} -> {p50}");
        }
    }

    #[test]
    fn latencies_past_the_largest_bucket_are_counted_at_its_top() {
        let mut h = Histogram::default();
        h.record(Duration::MAX);
        h.record(Duration::from_nanos(1));
        assert_eq!(h.quantile(1.0), Duration::from_nanos(MAX_NANOS));
        assert_eq!(h.quantile(0.5), Duration::from_nanos(1));
    }

    #[test]
    fn merging_keeps_every_count() {
        let mut total = Histogram::default();
        for conn in 0..4u64 {
            let mut h = Histogram::default();
            for i in 0..250 {
                h.record(Duration::from_micros(conn * 250 + i + 1));
            }
            total.merge(&h);
        }
        assert_eq!(total.counts.len(), 1000);
        let p50 = total.quantile(0.5).as_nanos() as f64;
        assert!((500_000.0..=500_000.0 * 1.001).contains(&p50), "{p50}");
    }
}
