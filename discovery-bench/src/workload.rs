//! What the load consists of: the service types, the endpoints, and the operations that
//! each connection draws, identical for both backends.
//!
//! - **Seed instances.** Instance `i` of the `N` pre-registered ones has type `i % T` and the
//!   endpoint `127.a.b.c:8080`, where `a.b.c` is `i + 1` in base 256: every (type, ip, port)
//!   is distinct. The addresses are data only: nothing ever connects to them (and they are
//!   loopback addresses all the same).
//! - **Registers of the measured phase** go to a pool of [`POOL`] endpoints per connection,
//!   `127.255.x.y:9000 + slot` for connection `x.y`, taken in turn: after the first round
//!   every register replaces the connection's earlier registration of that endpoint. So the
//!   registry stays at `N` plus at most `POOL` per connection, however long the run, and
//!   the seed instances (which other connections heartbeat) are never replaced.
//! - **Heartbeats** pick a seed instance uniformly; **queries** pick a type uniformly.

use std::net::{IpAddr, Ipv4Addr};

use clap::ValueEnum;

/// Endpoints per connection that the measured phase registers, in turn.
pub const POOL: usize = 64;

/// The port of every seed instance.
const SEED_PORT: u16 = 8080;
/// The first port of a connection's pool.
const POOL_PORT: u16 = 9000;

/// The operation a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Register an endpoint of the connection's pool (a replacement after the first round).
    Register,
    /// Heartbeat a seed instance.
    Heartbeat,
    /// Query a type (`N / T` instances each).
    Query,
    /// 90 % heartbeat, 9 % query, 1 % register.
    Mixed,
    /// Keep every seed instance alive: each is heartbeated once per `--interval`, at a
    /// steady rate, while one more connection queries (see `keepalive.rs`).
    Keepalive,
}

impl Workload {
    /// The name printed in results.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Heartbeat => "heartbeat",
            Workload::Query => "query",
            Workload::Mixed => "mixed",
            Workload::Keepalive => "keepalive",
        }
    }
}

/// One request, as both backends understand it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Register seed instance `i` (before the measured phase).
    Seed(usize),
    /// Register slot `s` of the connection's pool.
    Register(usize),
    /// Heartbeat seed instance `i`.
    Heartbeat(usize),
    /// Query type `t`.
    Query(usize),
}

/// The types and endpoints of a run.
#[derive(Debug)]
pub struct Plan {
    /// The service type names, `bench-000` and on.
    pub types: Vec<String>,
    /// The number of seed instances.
    pub instances: usize,
}

impl Plan {
    /// `instances` seed instances over `types` types.
    pub fn new(instances: usize, types: usize) -> Self {
        Self {
            types: (0..types).map(|t| format!("bench-{t:03}")).collect(),
            instances,
        }
    }

    /// The type and endpoint of seed instance `i`.
    pub fn seed(&self, i: usize) -> (usize, IpAddr, u16) {
        let n = (i as u32).wrapping_add(1) & 0x00ff_ffff;
        let ip = Ipv4Addr::from(0x7f00_0000 | n);
        (i % self.types.len(), IpAddr::V4(ip), SEED_PORT)
    }

    /// The type and endpoint of slot `slot` of connection `conn`'s pool.
    pub fn pool(&self, conn: usize, slot: usize) -> (usize, IpAddr, u16) {
        let [_, _, x, y] = (conn as u32).to_be_bytes();
        let ip = Ipv4Addr::new(127, 255, x, y);
        let t = (conn * POOL + slot) % self.types.len();
        (t, IpAddr::V4(ip), POOL_PORT + slot as u16)
    }
}

/// Draws the operations of one connection.
#[derive(Debug)]
pub struct Picker {
    workload: Workload,
    rng: fastrand::Rng,
    next_slot: usize,
    instances: usize,
    types: usize,
}

impl Picker {
    /// A picker for connection `conn`, with its own seeded random sequence.
    pub fn new(workload: Workload, plan: &Plan, conn: usize) -> Self {
        Self {
            workload,
            rng: fastrand::Rng::with_seed(0x5eed_0000 + conn as u64),
            next_slot: 0,
            instances: plan.instances,
            types: plan.types.len(),
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let kind = match self.workload {
            Workload::Mixed => match self.rng.u32(0..100) {
                0..90 => Workload::Heartbeat,
                90..99 => Workload::Query,
                _ => Workload::Register,
            },
            other => other,
        };
        match kind {
            Workload::Register => {
                let slot = self.next_slot;
                self.next_slot = (slot + 1) % POOL;
                Op::Register(slot)
            }
            // The keep-alive run has its own loop and never draws from a picker.
            Workload::Heartbeat | Workload::Keepalive => {
                Op::Heartbeat(self.rng.usize(0..self.instances))
            }
            Workload::Query | Workload::Mixed => Op::Query(self.rng.usize(0..self.types)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn endpoints_are_distinct_and_loopback() {
        let plan = Plan::new(100_000, 100);
        let mut seen = HashSet::new();
        for i in 0..plan.instances {
            let (t, ip, port) = plan.seed(i);
            assert!(ip.is_loopback());
            assert!(seen.insert((t, ip, port)));
        }
        for conn in 0..300 {
            for slot in 0..POOL {
                let (t, ip, port) = plan.pool(conn, slot);
                assert!(ip.is_loopback());
                assert!(seen.insert((t, ip, port)));
            }
        }
    }

    #[test]
    fn the_mix_is_about_90_9_1() {
        let plan = Plan::new(1000, 10);
        let mut picker = Picker::new(Workload::Mixed, &plan, 0);
        let (mut hb, mut q, mut reg) = (0, 0, 0);
        for _ in 0..100_000 {
            match picker.next_op() {
                Op::Heartbeat(i) => {
                    assert!(i < 1000);
                    hb += 1;
                }
                Op::Query(t) => {
                    assert!(t < 10);
                    q += 1;
                }
                Op::Register(_) => reg += 1,
                Op::Seed(_) => unreachable!("never drawn"),
            }
        }
        assert!((89_000..91_000).contains(&hb), "{hb}");
        assert!((8_500..9_500).contains(&q), "{q}");
        assert!((800..1_200).contains(&reg), "{reg}");
    }
}
