//! The queries of a keep-alive run: the query connection, which asks for a random type at a
//! steady rate beside the heartbeats and times the answers, and the count of live instances
//! at the end, on a fresh connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior, interval_at};

use super::{Progress, Settings};
use crate::discovery::{DiscoveryClient, DiscoveryConfig};
use crate::histogram::Histogram;
use crate::runner::{self, Backend, OpOutcome, io_step};
use crate::workload::{Op, Plan};

/// Types queried at once by the final count.
const COUNT_DEPTH: usize = 16;

/// The query connection's tally.
#[derive(Default)]
pub(super) struct QueryTally {
    pub(super) latency: Histogram,
    pub(super) queries: u64,
    pub(super) items: u64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) failure: Option<String>,
}

/// Queries a random type `query_rate` times a second until the end of the run.
pub(super) async fn query_loop(
    mut client: DiscoveryClient,
    types: usize,
    start: Instant,
    settings: Arc<Settings>,
    progress: Arc<Progress>,
) -> QueryTally {
    let mut tally = QueryTally::default();
    if settings.query_rate == 0 {
        return tally;
    }
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9);
    let period = Duration::from_secs_f64(1.0 / f64::from(settings.query_rate));
    let mut ticks = interval_at(start, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        if Instant::now() >= progress.end {
            break;
        }
        let op = Op::Query(rng.usize(0..types));
        client.push(op, &[]);
        let written = Instant::now();
        let answer = match io_step(settings.io_timeout, client.flush()).await {
            Ok(()) => io_step(settings.io_timeout, client.answer(op)).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(OpOutcome::Done { items }) => {
                if written >= progress.measure_from {
                    tally.latency.record(written.elapsed());
                    tally.queries += 1;
                    tally.items += items as u64;
                }
            }
            Ok(OpOutcome::Failed(why)) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(format!("query: {why}"));
            }
            Ok(OpOutcome::Seeded(_)) => {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert("a query answered Registered".into());
            }
            Err(e) => {
                tally.errors += 1;
                tally.failure = Some(format!("query connection: {e}"));
                break;
            }
        }
    }
    tally
}

/// Queries every type once, on a fresh connection, and adds up the instances listed.
pub(super) async fn count_live(
    config: &DiscoveryConfig,
    plan: &Arc<Plan>,
    io_timeout: Duration,
) -> Result<u64, String> {
    let mut client = runner::connect_all::<DiscoveryClient>(config, plan, 1, io_timeout)
        .await?
        .pop()
        .ok_or("no connection")?;
    let types: Vec<usize> = (0..plan.types.len()).collect();
    let mut live = 0;
    for batch in types.chunks(COUNT_DEPTH) {
        for &t in batch {
            client.push(Op::Query(t), &[]);
        }
        io_step(io_timeout, client.flush())
            .await
            .map_err(|e| e.to_string())?;
        for &t in batch {
            match io_step(io_timeout, client.answer(Op::Query(t))).await {
                Ok(OpOutcome::Done { items }) => live += items as u64,
                Ok(OpOutcome::Failed(why)) => return Err(why),
                Ok(OpOutcome::Seeded(_)) => return Err("a query answered Registered".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok(live)
}
