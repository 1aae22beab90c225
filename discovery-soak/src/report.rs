//! The figures the soak prints: the summary line, the restart line, and the peak rate of
//! events over a sliding window.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::churn::ChurnCounts;
use crate::ledger::Counts;

/// The largest number of `times` (sorted) within any window of `width`.
pub fn peak_per(width: Duration, times: &[Instant]) -> usize {
    let mut start = 0;
    let mut peak = 0;
    for (end, time) in times.iter().enumerate() {
        while *time - times[start] >= width {
            start += 1;
        }
        peak = peak.max(end + 1 - start);
    }
    peak
}

/// What the restart measured.
#[derive(Debug, Clone)]
pub struct RestartReport {
    /// Into the churn, when the server was killed.
    pub at: Duration,
    /// The killed process's id.
    pub pid: u32,
    /// Running registrations at the kill.
    pub live: usize,
    /// From the kill until the new process printed its `listening on` line.
    pub down: Duration,
    /// From that line until a round of queries listed every running registration.
    pub listed_after_up: Duration,
    /// Re-registrations seen by their owners between the kill and that round, and when
    /// (from the new server's `listening on` line).
    pub reregistrations: usize,
    pub first: Duration,
    pub last: Duration,
    pub peak_per_second: usize,
    pub peak_per_100ms: usize,
}

impl fmt::Display for RestartReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "restart: SIGKILL of pid {} at {:.1} s with {} registrations running; listening \
             again {} later; all listed again {} after that ({} after the kill); \
             {} re-registrations from {} to {} after the restart (spread {}), peak {} in 1 s, \
             {} in 100 ms",
            self.pid,
            self.at.as_secs_f64(),
            self.live,
            ms(self.down),
            ms(self.listed_after_up),
            ms(self.down + self.listed_after_up),
            self.reregistrations,
            ms(self.first),
            ms(self.last),
            ms(self.last.saturating_sub(self.first)),
            self.peak_per_second,
            self.peak_per_100ms,
        )
    }
}

/// Everything the summary line says.
#[derive(Debug, Clone)]
pub struct Summary {
    pub counts: Counts,
    pub churn: ChurnCounts,
    /// Ids the watches showed after they were dead (by [`crate::ledger::Ledger::replay`]).
    pub watch_dead: u64,
    /// At the end, ids of running registrations a watch did not list, and other ids it
    /// did list, after waiting for it to settle.
    pub final_view_missing: u64,
    pub final_view_extra: u64,
    pub watch_events: u64,
    pub watch_resets: u64,
    pub watch_lagged: u64,
    pub churned_for: Duration,
    pub slots: usize,
    pub live_at_end: usize,
}

impl Summary {
    /// Live instances missing: from a query answer, or from a watch at the end.
    pub fn missing(&self) -> u64 {
        self.counts.missing + self.final_view_missing
    }

    /// Dead instances served: by a query, or in a watch's view.
    pub fn dead_served(&self) -> u64 {
        self.counts.dead_served + self.watch_dead + self.final_view_extra
    }

    /// Why the soak failed, if it did.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.missing() > 0 {
            failures.push(format!("{} live instances missing", self.missing()));
        }
        if self.dead_served() > 0 {
            failures.push(format!("{} dead instances served", self.dead_served()));
        }
        if self.counts.unexpected_reregistrations > 0 {
            failures.push(format!(
                "{} registrations forgotten by the server while they heartbeated",
                self.counts.unexpected_reregistrations
            ));
        }
        failures
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let churn = &self.churn;
        write!(
            f,
            "discovery-soak: missing={} dead_served={} queries={} instances_checked={} \
             churn_actions={} watch_events={} | churned {:.1} s, {} slots, {} live at the end | \
             missing: {} in answers, {} in final views | dead: {} in answers, {} in watch views, \
             {} in final views | churn: stop={} crash={} deregister={} reregister={} start={} \
             deregister_errors={} register_errors={} | unexpected_reregistrations={} \
             query_errors={} (restart {}) | watch resets={} lagged={} | not counted: \
             unconfirmed_missing={} unknown_listed={}",
            self.missing(),
            self.dead_served(),
            c.queries,
            c.instances_checked,
            churn.total(),
            self.watch_events,
            self.churned_for.as_secs_f64(),
            self.slots,
            self.live_at_end,
            c.missing,
            self.final_view_missing,
            c.dead_served,
            self.watch_dead,
            self.final_view_extra,
            churn.stop,
            churn.crash,
            churn.deregister,
            churn.reregister,
            churn.start,
            churn.deregister_errors,
            churn.register_errors,
            c.unexpected_reregistrations,
            c.query_errors,
            c.restart_query_errors,
            self.watch_resets,
            self.watch_lagged,
            c.unconfirmed,
            c.unknown_listed,
        )
    }
}

/// A duration in milliseconds, to a tenth.
fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_counts_the_fullest_window() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let times = [
            at(0),
            at(10),
            at(950),
            at(1000),
            at(1500),
            at(1600),
            at(1700),
        ];
        assert_eq!(peak_per(Duration::from_secs(1), &times), 5);
        assert_eq!(peak_per(Duration::from_millis(100), &times), 2);
        assert_eq!(peak_per(Duration::from_secs(1), &[]), 0);
    }
}
