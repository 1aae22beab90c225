//! The ledger: what the soak knows of every instance id, and the rules that turn what the
//! checker sees into counts of *certain* violations.
//!
//! The soak cannot see the server's clock, only its own, so each rule compares instants
//! that are ordered for sure:
//!
//! - An id **exists** at the server from before the moment its register returned to the
//!   soak (`known_at`), or, for an id the heartbeat loop made after the server forgot the
//!   instance, from before the moment its owner saw it.
//! - An id is **dead** from `dead_after` on: when a deregister answered (`Ok` or
//!   `NotFound`), the moment it answered; when the `Registration` was dropped (best-effort
//!   deregister) or its process "crashed" (no deregister), the drop plus the TTL plus a
//!   margin; when the heartbeat loop replaced it after a `NotFound`, the moment its owner
//!   saw the new id; when the server was killed, the moment the process was gone.
//! - A query answer was made by the server between the moment the query was sent and the
//!   moment its answer came back.
//!
//! **Dead served**: an answer to a query *sent* after an id's `dead_after` lists it. For
//! watches, see [`Ledger::replay`].
//!
//! **Live missing**: an answer to a query sent after an id was known to exist does not list
//! it, although its registration was running and not being stopped, *and* an answer to a
//! query sent after that first answer came back lists it again. An id lives at the server
//! over one unbroken stretch of time (ids are never reused, a restarted server knows none
//! of the old ones), so the first answer was made while the instance was certainly live.
//! A missing id that is never listed again is counted apart, as `unconfirmed`: its
//! registration then finds out at its next heartbeat (`NotFound`) and registers again,
//! which the soak counts as an unexpected re-registration; a lost instance cannot hide.
//! Answers sent during a restart (from the kill until every registration is listed again)
//! are not checked for missing instances: the server that held them is gone.

use std::collections::{BTreeSet, HashMap, HashSet};

use discovery_client::Uuid;
use tokio::time::Instant;

/// What the soak knows of one id.
#[derive(Debug, Clone)]
struct IdRecord {
    service_type: usize,
    /// When the register that made it was sent, for the registers the soak made itself:
    /// a server event that announces this id happened after this instant.
    register_sent: Option<Instant>,
    /// From this instant on, the id certainly existed at the server.
    known_at: Instant,
    /// From this instant on, no answer may list it.
    dead_after: Option<Instant>,
    /// The send time of the latest answer that listed it.
    last_listed: Option<Instant>,
}

/// One change a watch reported, as logged for [`Ledger::replay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A snapshot replaced the view with these ids.
    Snapshot(Vec<Uuid>),
    /// An id was added.
    Added(Uuid),
    /// An id was removed.
    Removed(Uuid),
}

/// The figures the ledger ends with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Query answers checked.
    pub queries: u64,
    /// Instances listed in them, in total.
    pub instances_checked: u64,
    /// Ids listed by an answer sent after they were dead.
    pub dead_served: u64,
    /// Live ids missing from an answer, and listed again later.
    pub missing: u64,
    /// Live ids missing from an answer and never listed again (not violations by
    /// themselves; see the module's comment).
    pub unconfirmed: u64,
    /// Listed ids the ledger did not know when they were listed (their owner had not seen
    /// them yet), and did not know at the end either: ids the soak cannot account for.
    pub unknown_listed: u64,
    /// Ids changed by a heartbeat loop outside a restart: the server had forgotten a live
    /// instance.
    pub unexpected_reregistrations: u64,
    /// Queries that failed outside a restart.
    pub query_errors: u64,
    /// Queries that failed during the restart (the server was gone).
    pub restart_query_errors: u64,
    /// A few of the violations, for people.
    pub examples: Vec<String>,
}

/// The ids, the registrations' current ones per type, and the checker's findings.
#[derive(Debug)]
pub struct Ledger {
    ids: HashMap<Uuid, IdRecord>,
    /// Per type: the current id of every registration that runs and is not being stopped.
    live: Vec<HashSet<Uuid>>,
    /// Live ids missing from an answer, with the moment that answer came back.
    candidates: Vec<(Uuid, Instant)>,
    /// The restart under way or done: from the kill until every registration was listed
    /// again (`None` while under way).
    restart: Option<(Instant, Option<Instant>)>,
    /// When each re-registration during the restart was seen by its owner.
    restart_reregistrations: Vec<Instant>,
    /// Ids listed before the ledger knew them, with the send time of the answer.
    unknown: Vec<(Uuid, Instant)>,
    counts: Counts,
}

const EXAMPLES: usize = 5;

impl Ledger {
    /// An empty ledger for `types` service types.
    pub fn new(types: usize) -> Self {
        Self {
            ids: HashMap::new(),
            live: vec![HashSet::new(); types],
            candidates: Vec::new(),
            restart: None,
            restart_reregistrations: Vec::new(),
            unknown: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// A register sent at `sent` returned `id` at `returned`.
    pub fn registered(&mut self, service_type: usize, id: Uuid, sent: Instant, returned: Instant) {
        self.ids.insert(
            id,
            IdRecord {
                service_type,
                register_sent: Some(sent),
                known_at: returned,
                dead_after: None,
                last_listed: None,
            },
        );
        self.live[service_type].insert(id);
    }

    /// The registration of `id` is being stopped: from now on it is not expected in
    /// answers (nor yet counted dead).
    pub fn stopping(&mut self, id: Uuid) {
        if let Some(record) = self.ids.get(&id) {
            self.live[record.service_type].remove(&id);
        }
    }

    /// `id` is certainly gone from `after` on.
    pub fn dead(&mut self, id: Uuid, after: Instant) {
        if let Some(record) = self.ids.get_mut(&id) {
            record.dead_after = Some(record.dead_after.map_or(after, |d| d.min(after)));
            self.live[record.service_type].remove(&id);
        }
    }

    /// Every id known so far is gone from `after` on: the server that held them was killed.
    pub fn all_dead(&mut self, after: Instant) {
        for record in self.ids.values_mut() {
            record.dead_after = Some(record.dead_after.map_or(after, |d| d.min(after)));
        }
    }

    /// A registration's heartbeat loop replaced `old` by `new` (the server answered
    /// `NotFound` for `old`), seen by its owner `at`. `dead_after` is set when the
    /// registration has been stopped already; `running` when it is not being stopped.
    pub fn reregistered(
        &mut self,
        service_type: usize,
        old: Uuid,
        new: Uuid,
        at: Instant,
        dead_after: Option<Instant>,
        running: bool,
    ) {
        self.dead(old, at);
        self.ids.insert(
            new,
            IdRecord {
                service_type,
                register_sent: None,
                known_at: at,
                dead_after,
                last_listed: None,
            },
        );
        if running && dead_after.is_none() {
            self.live[service_type].insert(new);
        }
        if self.in_restart(at) {
            self.restart_reregistrations.push(at);
        } else {
            self.counts.unexpected_reregistrations += 1;
            if self.counts.examples.len() < EXAMPLES {
                self.counts.examples.push(format!(
                    "{old} of type {service_type} re-registered as {new}"
                ));
            }
        }
    }

    /// The server is about to be killed.
    pub fn restart_began(&mut self, at: Instant) {
        self.restart = Some((at, None));
    }

    /// Every registration is listed again.
    pub fn restart_ended(&mut self, at: Instant) {
        if let Some((_, end)) = &mut self.restart {
            *end = Some(at);
        }
    }

    /// When the re-registrations of the restart were seen, in order.
    pub fn restart_reregistrations(&self) -> Vec<Instant> {
        let mut times = self.restart_reregistrations.clone();
        times.sort();
        times
    }

    fn in_restart(&self, at: Instant) -> bool {
        self.restart
            .is_some_and(|(start, end)| at >= start && end.is_none_or(|end| at <= end))
    }

    /// A query failed; its error came back `at`.
    pub fn query_failed(&mut self, at: Instant) {
        if self.in_restart(at) {
            self.counts.restart_query_errors += 1;
        } else {
            self.counts.query_errors += 1;
        }
    }

    /// The current ids of the running registrations of `service_type`.
    pub fn live(&self, service_type: usize) -> &HashSet<Uuid> {
        &self.live[service_type]
    }

    /// Checks the answer to a query of `service_type` sent at `sent`, back at `received`.
    /// True when it lists every running registration's current id.
    pub fn answer(
        &mut self,
        service_type: usize,
        sent: Instant,
        received: Instant,
        listed: &[Uuid],
    ) -> bool {
        self.counts.queries += 1;
        self.counts.instances_checked += listed.len() as u64;
        for id in listed {
            let Some(record) = self.ids.get_mut(id) else {
                // Its owner has not seen it yet (the register's answer is on its way):
                // checked again at the end, when the ledger knows more.
                self.unknown.push((*id, sent));
                continue;
            };
            record.last_listed = Some(record.last_listed.map_or(sent, |l| l.max(sent)));
            if record.dead_after.is_some_and(|dead| dead < sent) {
                self.counts.dead_served += 1;
                if self.counts.examples.len() < EXAMPLES {
                    let late = sent - record.dead_after.unwrap_or(sent);
                    self.counts.examples.push(format!(
                        "{id} of type {service_type} listed by a query sent {late:?} after it was dead"
                    ));
                }
            }
        }
        let listed: HashSet<&Uuid> = listed.iter().collect();
        let check = !self.in_restart(sent);
        let mut complete = true;
        for id in &self.live[service_type] {
            if listed.contains(id) {
                continue;
            }
            complete = false;
            if check && self.ids.get(id).is_some_and(|r| r.known_at < sent) {
                self.candidates.push((*id, received));
            }
        }
        complete
    }

    /// Counts the ids that `log`, the events of one watch in the order they came, shows
    /// in its view after they were dead.
    ///
    /// The view after an event is the server's list at the moment the server made that
    /// event. The soak knows that moment only from below: an `Added` of an id the soak
    /// registered itself was made after that register was sent, and every later event
    /// was made later still. So, walking the log, `bound` is the latest such send time so
    /// far, and an id still in the view while `bound` is past its `dead_after` is one the
    /// watch served dead.
    pub fn replay(&mut self, log: &[Seen]) -> u64 {
        let mut view: HashSet<Uuid> = HashSet::new();
        // The ids in the view that have a death time, by that time.
        let mut doomed: BTreeSet<(Instant, Uuid)> = BTreeSet::new();
        let mut bound: Option<Instant> = None;
        let mut served = 0;
        let dead_after = |ids: &HashMap<Uuid, IdRecord>, id: &Uuid| {
            ids.get(id).and_then(|record| record.dead_after)
        };
        for seen in log {
            match seen {
                Seen::Snapshot(ids) => {
                    view.clear();
                    doomed.clear();
                    for id in ids {
                        view.insert(*id);
                        if let Some(dead) = dead_after(&self.ids, id) {
                            doomed.insert((dead, *id));
                        }
                    }
                }
                Seen::Added(id) => {
                    view.insert(*id);
                    if let Some(dead) = dead_after(&self.ids, id) {
                        doomed.insert((dead, *id));
                    }
                    if let Some(sent) = self.ids.get(id).and_then(|r| r.register_sent) {
                        bound = Some(bound.map_or(sent, |b| b.max(sent)));
                    }
                }
                Seen::Removed(id) => {
                    view.remove(id);
                    if let Some(dead) = dead_after(&self.ids, id) {
                        doomed.remove(&(dead, *id));
                    }
                }
            }
            let Some(bound) = bound else { continue };
            while let Some(&(dead, id)) = doomed.first() {
                if dead >= bound {
                    break;
                }
                doomed.pop_first();
                served += 1;
                if self.counts.examples.len() < EXAMPLES {
                    self.counts.examples.push(format!(
                        "{id} still in a watch's view {:?} after it was dead",
                        bound - dead
                    ));
                }
            }
        }
        served
    }

    /// The final counts: the missing candidates confirmed or not by a later answer, and
    /// the ids listed before the ledger knew them checked now.
    pub fn finish(&mut self) -> Counts {
        let mut counts = self.counts.clone();
        for (id, sent) in &self.unknown {
            match self.ids.get(id) {
                None => counts.unknown_listed += 1,
                Some(record) if record.dead_after.is_some_and(|dead| dead < *sent) => {
                    counts.dead_served += 1;
                }
                Some(_) => {}
            }
        }
        for (id, received) in &self.candidates {
            let listed_later = self
                .ids
                .get(id)
                .and_then(|record| record.last_listed)
                .is_some_and(|last| last > *received);
            if listed_later {
                counts.missing += 1;
                if counts.examples.len() < EXAMPLES {
                    counts.examples.push(format!(
                        "{id} missing from an answer and listed again later"
                    ));
                }
            } else {
                counts.unconfirmed += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_dead_id_counts_only_in_answers_sent_after_its_death() {
        let t = Instant::now();
        let mut ledger = Ledger::new(1);
        let id = Uuid::new_v4();
        ledger.registered(0, id, ms(t, 0), ms(t, 1));
        ledger.stopping(id);
        ledger.dead(id, ms(t, 100));
        // Sent before the death, answered after: the server may have made it before.
        assert!(ledger.answer(0, ms(t, 99), ms(t, 150), &[id]));
        assert_eq!(ledger.finish().dead_served, 0);
        ledger.answer(0, ms(t, 101), ms(t, 102), &[id]);
        assert_eq!(ledger.finish().dead_served, 1);
    }

    #[test]
    fn an_id_listed_before_it_was_known_is_checked_at_the_end() {
        let t = Instant::now();
        let mut ledger = Ledger::new(1);
        let (early, stray) = (Uuid::new_v4(), Uuid::new_v4());
        ledger.answer(0, ms(t, 10), ms(t, 11), &[early, stray]);
        ledger.answer(0, ms(t, 30), ms(t, 31), &[early]);
        ledger.registered(0, early, ms(t, 5), ms(t, 12));
        ledger.stopping(early);
        ledger.dead(early, ms(t, 20));
        let counts = ledger.finish();
        assert_eq!((counts.dead_served, counts.unknown_listed), (1, 1));
    }

    #[test]
    fn a_missing_id_counts_only_when_listed_again_by_a_later_answer() {
        let t = Instant::now();
        let mut ledger = Ledger::new(1);
        let (kept, lost, young) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        ledger.registered(0, kept, ms(t, 0), ms(t, 1));
        ledger.registered(0, lost, ms(t, 0), ms(t, 1));
        // Registered while the query was under way: not known to exist when it was sent.
        ledger.registered(0, young, ms(t, 5), ms(t, 12));
        assert!(!ledger.answer(0, ms(t, 10), ms(t, 20), &[]));
        // Overlapping the first answer: proves nothing.
        ledger.answer(0, ms(t, 19), ms(t, 25), &[kept, lost, young]);
        assert_eq!(ledger.finish().missing, 0);
        ledger.answer(0, ms(t, 30), ms(t, 31), &[kept, young]);
        // `kept` was missing from the first answer; `lost` from the first and the last,
        // and is never listed after either.
        let counts = ledger.finish();
        assert_eq!((counts.missing, counts.unconfirmed), (1, 2));
    }

    #[test]
    fn nothing_is_missing_during_a_restart_and_its_reregistrations_are_expected() {
        let t = Instant::now();
        let mut ledger = Ledger::new(1);
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        ledger.registered(0, old, ms(t, 0), ms(t, 1));
        ledger.restart_began(ms(t, 10));
        ledger.all_dead(ms(t, 11));
        assert!(!ledger.answer(0, ms(t, 20), ms(t, 21), &[]));
        ledger.reregistered(0, old, new, ms(t, 30), None, true);
        assert!(ledger.answer(0, ms(t, 40), ms(t, 41), &[new]));
        ledger.restart_ended(ms(t, 41));
        // The old id served by the new server would be a violation; the new one is live.
        ledger.answer(0, ms(t, 50), ms(t, 51), &[old, new]);
        let counts = ledger.finish();
        assert_eq!(counts.missing, 0);
        assert_eq!(counts.dead_served, 1);
        assert_eq!(counts.unexpected_reregistrations, 0);
        assert_eq!(ledger.restart_reregistrations(), vec![ms(t, 30)]);
        let another = Uuid::new_v4();
        ledger.reregistered(0, new, another, ms(t, 60), None, true);
        assert_eq!(ledger.finish().unexpected_reregistrations, 1);
    }

    #[test]
    fn a_watch_serves_dead_when_a_later_register_comes_before_the_removal() {
        let t = Instant::now();
        let mut ledger = Ledger::new(1);
        let (gone, late, fresh) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        ledger.registered(0, gone, ms(t, 0), ms(t, 1));
        ledger.registered(0, late, ms(t, 0), ms(t, 1));
        ledger.dead(gone, ms(t, 100));
        ledger.dead(late, ms(t, 100));
        ledger.registered(0, fresh, ms(t, 150), ms(t, 151));
        let log = [
            Seen::Snapshot(vec![gone, late]),
            Seen::Removed(gone),
            // Made after 150 ms, when `late` had been dead for 50 ms.
            Seen::Added(fresh),
            Seen::Removed(late),
        ];
        assert_eq!(ledger.replay(&log), 1);
        let in_order = [
            Seen::Snapshot(vec![gone, late]),
            Seen::Removed(gone),
            Seen::Removed(late),
            Seen::Added(fresh),
        ];
        assert_eq!(ledger.replay(&in_order), 0);
    }
}
