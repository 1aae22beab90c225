//! A model test of the registry: random sequences of registers, heartbeats, updates,
//! deregisters, queries and clock advances, checked step by step against a plain map of
//! deadlines that states the semantics directly (live while less than the TTL has passed,
//! replacement by endpoint, caps on live instances only, why an id is gone, the types
//! listed), and the memory held checked against the live count once the expiry task has had
//! its turn.

mod common;

use common::settle;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use discovery_proto::{Metadata, RemoveReason};
use discovery_registry::{Error, Registry, RegistryConfig};
use proptest::prelude::*;
use uuid::Uuid;

const TTL_MS: u64 = 1000;

/// A small pool, so that replacements and both caps happen often.
const TYPES: [&str; 3] = ["a", "b", "c"];
const IPS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];
const PORTS: [u16; 2] = [80, 65535];

#[derive(Debug, Clone)]
enum IdRef {
    /// An index (modulo their number) into every id the registry ever returned: live,
    /// replaced, deregistered or expired.
    Known(usize),
    /// An id the registry never made.
    Random(u128),
}

#[derive(Debug, Clone)]
enum Op {
    Register {
        service_type: usize,
        ip: usize,
        port: usize,
        version: u8,
    },
    Heartbeat(IdRef),
    Update(IdRef, u8),
    Deregister(IdRef),
    Query(usize),
    /// Move the paused clock; `settle` then lets the expiry task run before the next step.
    Advance {
        ms: u64,
        settle: bool,
    },
}

fn id_ref() -> impl Strategy<Value = IdRef> {
    prop_oneof![
        4 => any::<usize>().prop_map(IdRef::Known),
        1 => any::<u128>().prop_map(IdRef::Random),
    ]
}

fn advance_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(TTL_MS - 1),
        Just(TTL_MS),
        Just(TTL_MS + 1),
        Just(2 * TTL_MS),
        1..=10u64,
        0..=2 * TTL_MS,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..TYPES.len(), 0..IPS.len(), 0..PORTS.len(), 0..3u8).prop_map(
            |(service_type, ip, port, version)| Op::Register { service_type, ip, port, version }
        ),
        3 => id_ref().prop_map(Op::Heartbeat),
        1 => (id_ref(), 0..3u8).prop_map(|(id, version)| Op::Update(id, version)),
        1 => id_ref().prop_map(Op::Deregister),
        2 => (0..TYPES.len() + 1).prop_map(Op::Query),
        3 => (advance_ms(), prop::bool::weighted(0.7))
            .prop_map(|(ms, settle)| Op::Advance { ms, settle }),
    ]
}

fn config() -> impl Strategy<Value = RegistryConfig> {
    (1..=10usize, 1..=6usize).prop_map(|(max_instances, max_instances_per_type)| RegistryConfig {
        ttl: Duration::from_millis(TTL_MS),
        max_instances,
        max_instances_per_type,
        ..RegistryConfig::default()
    })
}

fn metadata(version: u8) -> Metadata {
    match version {
        0 => Metadata::new(),
        v => [("version".to_string(), v.to_string())].into(),
    }
}

/// What a query lists, in a comparable order.
type Listed = Vec<(Uuid, String, IpAddr, u16, Metadata)>;

#[derive(Debug, Clone)]
struct ModelEntry {
    service_type: &'static str,
    ip: IpAddr,
    port: u16,
    metadata: Metadata,
    /// Gone from this time on, in ms on the model's clock.
    deadline: u64,
}

/// The semantics, stated as plainly as possible: a map of live instances only, and why
/// each other id went (every removal is remembered: the runs are shorter than `max_ttl`
/// and hold fewer removals than the memory).
struct Model {
    config: RegistryConfig,
    now: u64,
    live: HashMap<Uuid, ModelEntry>,
    gone: HashMap<Uuid, RemoveReason>,
}

/// A call about an id that is not live: the reason the registry should give.
type NotFound = Option<RemoveReason>;

/// The outcome of a register, for comparison: the id is the registry's to make.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Registered,
    InstanceLimit { max: usize },
    TypeLimit { service_type: String, max: usize },
}

impl Model {
    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let now = self.now;
        let gone = &mut self.gone;
        self.live.retain(|id, e| {
            let live = e.deadline > now;
            if !live {
                gone.insert(*id, RemoveReason::Expired);
            }
            live
        });
    }

    fn endpoint_holder(&self, service_type: &str, ip: IpAddr, port: u16) -> Option<Uuid> {
        self.live
            .iter()
            .find(|(_, e)| e.service_type == service_type && e.ip == ip && e.port == port)
            .map(|(id, _)| *id)
    }

    /// Whether a register would be refused, before the registry makes the id.
    fn register_outcome(&self, service_type: &'static str, ip: IpAddr, port: u16) -> Outcome {
        if self.endpoint_holder(service_type, ip, port).is_some() {
            return Outcome::Registered;
        }
        if self.live.len() >= self.config.max_instances {
            return Outcome::InstanceLimit {
                max: self.config.max_instances,
            };
        }
        let of_type = self
            .live
            .values()
            .filter(|e| e.service_type == service_type)
            .count();
        if of_type >= self.config.max_instances_per_type {
            return Outcome::TypeLimit {
                service_type: service_type.to_string(),
                max: self.config.max_instances_per_type,
            };
        }
        Outcome::Registered
    }

    fn registered(&mut self, id: Uuid, entry: ModelEntry) {
        if let Some(older) = self.endpoint_holder(entry.service_type, entry.ip, entry.port) {
            self.live.remove(&older);
            self.gone.insert(older, RemoveReason::Replaced);
        }
        self.live.insert(id, entry);
    }

    fn not_found(&self, id: Uuid) -> NotFound {
        self.gone.get(&id).copied()
    }

    fn heartbeat(&mut self, id: Uuid) -> Result<(), NotFound> {
        match self.live.get_mut(&id) {
            Some(entry) => {
                entry.deadline = self.now + TTL_MS;
                Ok(())
            }
            None => Err(self.not_found(id)),
        }
    }

    fn update(&mut self, id: Uuid, metadata: Metadata) -> Result<(), NotFound> {
        match self.live.get_mut(&id) {
            Some(entry) => {
                entry.metadata = metadata;
                Ok(())
            }
            None => Err(self.not_found(id)),
        }
    }

    fn deregister(&mut self, id: Uuid) -> Result<(), NotFound> {
        match self.live.remove(&id) {
            Some(_) => {
                self.gone.insert(id, RemoveReason::Deregistered);
                Ok(())
            }
            None => Err(self.not_found(id)),
        }
    }

    /// Every type with a live instance and its count, sorted by type.
    fn types(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for entry in self.live.values() {
            *counts.entry(entry.service_type).or_default() += 1;
        }
        let mut types: Vec<_> = counts
            .into_iter()
            .map(|(name, count)| (name.to_string(), count))
            .collect();
        types.sort();
        types
    }

    fn query(&self, service_type: &str) -> Listed {
        let mut listed: Listed = self
            .live
            .iter()
            .filter(|(_, e)| e.service_type == service_type)
            .map(|(id, e)| {
                (
                    *id,
                    e.service_type.to_string(),
                    e.ip,
                    e.port,
                    e.metadata.clone(),
                )
            })
            .collect();
        listed.sort();
        listed
    }
}

/// A registry's answer about an id, in the model's terms.
fn outcome<T>(result: Result<T, Error>) -> Result<Result<(), NotFound>, TestCaseError> {
    match result {
        Ok(_) => Ok(Ok(())),
        Err(Error::NotFound { reason }) => Ok(Err(reason)),
        Err(other) => Err(TestCaseError::fail(format!("unexpected error {other}"))),
    }
}

fn resolve(id: &IdRef, known: &[Uuid]) -> Uuid {
    match *id {
        IdRef::Known(n) if !known.is_empty() => known[n % known.len()],
        IdRef::Known(n) => Uuid::from_u128(n as u128),
        IdRef::Random(n) => Uuid::from_u128(n),
    }
}

async fn check(config: RegistryConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let registry = Registry::new(config.clone());
    let mut model = Model {
        config,
        now: 0,
        live: HashMap::new(),
        gone: HashMap::new(),
    };
    let mut known: Vec<Uuid> = Vec::new();
    // False after an advance that did not let the expiry task run: entries past their
    // deadline may then still be held, though no answer may show them.
    let mut settled = true;

    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Register {
                service_type,
                ip,
                port,
                version,
            } => {
                let (service_type, ip, port) = (TYPES[*service_type], IPS[*ip], PORTS[*port]);
                let expected = model.register_outcome(service_type, ip, port);
                let got = match registry.register(service_type, ip, port, metadata(*version)) {
                    Ok(id) => {
                        prop_assert!(!known.contains(&id), "step {}: id {} reused", step, id);
                        known.push(id);
                        model.registered(
                            id,
                            ModelEntry {
                                service_type,
                                ip,
                                port,
                                metadata: metadata(*version),
                                deadline: model.now + TTL_MS,
                            },
                        );
                        Outcome::Registered
                    }
                    Err(Error::InstanceLimit { max }) => Outcome::InstanceLimit { max },
                    Err(Error::TypeLimit { service_type, max }) => {
                        Outcome::TypeLimit { service_type, max }
                    }
                    Err(other) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: unexpected error {other}"
                        )));
                    }
                };
                prop_assert_eq!(got, expected, "step {}: {:?}", step, op);
            }
            Op::Heartbeat(id) => {
                let id = resolve(id, &known);
                prop_assert_eq!(
                    outcome(registry.heartbeat(id))?,
                    model.heartbeat(id),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::Update(id, version) => {
                let id = resolve(id, &known);
                prop_assert_eq!(
                    outcome(registry.update(id, metadata(*version)))?,
                    model.update(id, metadata(*version)),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::Deregister(id) => {
                let id = resolve(id, &known);
                prop_assert_eq!(
                    outcome(registry.deregister(id))?,
                    model.deregister(id),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::Query(n) => {
                let service_type = TYPES.get(*n).copied().unwrap_or("missing");
                let mut listed: Listed = registry
                    .query(service_type)
                    .into_iter()
                    .map(|i| (i.id, i.service_type, i.ip, i.port, i.metadata))
                    .collect();
                listed.sort();
                prop_assert_eq!(listed, model.query(service_type), "step {}: {:?}", step, op);
                prop_assert_eq!(registry.types(), model.types(), "step {}: {:?}", step, op);
            }
            Op::Advance { ms, settle: s } => {
                tokio::time::advance(Duration::from_millis(*ms)).await;
                model.advance(*ms);
                if *s {
                    settle(&registry).await;
                }
                settled = *s;
            }
        }
        if settled {
            prop_assert_eq!(
                registry.len(),
                model.live.len(),
                "step {}: memory held after {:?}",
                step,
                op
            );
        } else {
            prop_assert!(registry.len() >= model.live.len(), "step {}", step);
        }
    }

    // However the sequence ended, once the task has run nothing expired is held, and once
    // every TTL has passed nothing at all.
    settle(&registry).await;
    prop_assert_eq!(registry.len(), model.live.len());
    tokio::time::advance(Duration::from_millis(TTL_MS)).await;
    settle(&registry).await;
    prop_assert!(registry.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_registry_behaves_like_the_model(
        config in config(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| TestCaseError::fail(format!("runtime: {e}")))?;
        runtime.block_on(check(config, ops))?;
    }
}
