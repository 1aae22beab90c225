//! The instance table: the registry's entries in compact slots, and the indexes over them.
//!
//! Memory per live instance is what decides how many instances one server holds, so every
//! entry is one 72-byte slot in a slab (71 bytes of fields, 8 of them the instance's own
//! TTL), and every index holds 4-byte slot numbers rather than copies of keys:
//!
//! - `slots`: the entries, reused through a free list; a slot's `generation` changes each
//!   time it is freed (or stops being timed here), so that a stale reference to it is
//!   recognised.
//! - `by_id`: id → slot, a `hashbrown::HashTable` of slot numbers hashed by the id. Ids are
//!   random v4 UUIDs made by the server, so their first 8 bytes are already a good hash.
//! - `by_endpoint`: (type, ip, port) → slot, for replacement; hashed with a keyed hasher,
//!   since endpoints are chosen by peers.
//! - `types`: per type, its interned name and the slot numbers of its instances, so that a
//!   query visits only that type.
//! - `deadlines`: the deadline index (the `deadlines` module), which the expiry pass walks.
//!
//! What the entries cost in memory is kept as a running total, counted as the allocator
//! spends it (the `footprint` module): every entry's share of the slab and the indexes and
//! its metadata, every type's interned name and lists, and the deadline index as it is.
//! The registry refuses what would take it over its byte bound.
//!
//! An entry is either *timed* here (it lives until its deadline, and is filed in the
//! deadline index) or *held* (it was learned from elsewhere, lives until it is removed, and
//! is not filed; its deadline field keeps the wall-clock time it shows, see
//! [`crate::clock::Clock::held`]).
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use discovery_proto::Metadata;
use hashbrown::HashTable;
use uuid::Uuid;

use crate::clock::Nanos;
use crate::deadlines::Deadlines;
use crate::footprint;

/// What every entry costs besides its metadata (see [`footprint::entry`]).
const ENTRY_BYTES: usize = footprint::entry(std::mem::size_of::<Slot>());

/// How many references of the deadline index each removal sweeps, once stale references
/// outnumber live ones: more than the one reference a removal makes stale, so that a
/// sweep gains on them, and few enough to cost a deregister next to nothing.
pub(crate) const SWEEP_STEP: usize = 16;

/// The stale references the deadline index may hold before a sweep, however few entries
/// are live: sweeping a tiny index would be all overhead.
const SWEEP_FLOOR: usize = 64;

/// The slot number that means "none" in the free list.
const NO_SLOT: u32 = u32::MAX;

/// One entry, or a free slot.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: Uuid,
    /// Gone from this instant on.
    pub(crate) deadline: Nanos,
    /// The instance's own TTL, granted at its register: what a heartbeat renews it by, and
    /// what its shown last heartbeat is derived with. 0 for a held entry, which shows the
    /// time it was given.
    pub(crate) ttl: Nanos,
    /// `None` for the common case of no metadata, which then costs no allocation.
    metadata: Option<Box<Metadata>>,
    /// An IPv4 address in its first 4 bytes when [`V4`] is set, else an IPv6 address.
    ip: [u8; 16],
    type_index: u32,
    /// Where this slot sits in its type's members, or the next free slot when free.
    position: u32,
    generation: u32,
    pub(crate) port: u16,
    /// [`V4`], [`OCCUPIED`] and [`HELD`].
    flags: u8,
}

// The size every live instance costs in the slab: keep it from growing unnoticed.
const _: () = assert!(std::mem::size_of::<Slot>() <= 72);

/// The slot's `ip` is an IPv4 address in its first 4 bytes.
const V4: u8 = 1;
/// The slot holds an entry.
const OCCUPIED: u8 = 2;
/// The entry is held (learned from elsewhere, live until removed), not timed here.
const HELD: u8 = 4;

impl Slot {
    pub(crate) fn ip(&self) -> IpAddr {
        if self.flags & V4 != 0 {
            IpAddr::from([self.ip[0], self.ip[1], self.ip[2], self.ip[3]])
        } else {
            IpAddr::from(self.ip)
        }
    }

    pub(crate) fn metadata(&self) -> &Metadata {
        static EMPTY: Metadata = Metadata::new();
        self.metadata.as_deref().unwrap_or(&EMPTY)
    }

    /// True while the entry is live at `now`: a held entry always is.
    pub(crate) fn is_live(&self, now: Nanos) -> bool {
        self.deadline > now || self.is_held()
    }

    /// True when the entry was learned from elsewhere and lives until it is removed.
    pub(crate) fn is_held(&self) -> bool {
        self.flags & HELD != 0
    }

    fn is_occupied(&self) -> bool {
        self.flags & OCCUPIED != 0
    }

    fn is_v4(&self) -> bool {
        self.flags & V4 != 0
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            type_index: self.type_index,
            ip: self.ip,
            v4: self.is_v4(),
            port: self.port,
        }
    }

    /// True when this slot holds the entry of `endpoint`.
    fn is(&self, endpoint: &Endpoint) -> bool {
        self.is_occupied()
            && self.type_index == endpoint.type_index
            && self.port == endpoint.port
            && self.is_v4() == endpoint.v4
            && self.ip == endpoint.ip
    }
}

/// An entry taken out of the table.
#[derive(Debug)]
pub(crate) struct Removed {
    pub(crate) id: Uuid,
    pub(crate) service_type: Arc<str>,
    pub(crate) ip: IpAddr,
    pub(crate) port: u16,
    pub(crate) metadata: Option<Box<Metadata>>,
    pub(crate) deadline: Nanos,
    pub(crate) ttl: Nanos,
    pub(crate) held: bool,
}

/// A type and its instances. A type with no members is free, to be reused.
#[derive(Debug)]
struct Type {
    name: Arc<str>,
    members: Vec<u32>,
}

/// The key of the endpoint index.
#[derive(Debug, Hash)]
struct Endpoint {
    type_index: u32,
    ip: [u8; 16],
    v4: bool,
    port: u16,
}

impl Endpoint {
    fn new(type_index: u32, ip: IpAddr, port: u16) -> Self {
        let (ip, v4) = match ip {
            IpAddr::V4(v4) => {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&v4.octets());
                (bytes, true)
            }
            IpAddr::V6(v6) => (v6.octets(), false),
        };
        Self {
            type_index,
            ip,
            v4,
            port,
        }
    }
}

/// A new entry, as [`Table::insert`] takes it.
pub(crate) struct NewEntry<'a> {
    pub(crate) id: Uuid,
    pub(crate) service_type: &'a str,
    pub(crate) ip: IpAddr,
    pub(crate) port: u16,
    pub(crate) metadata: Metadata,
    pub(crate) deadline: Nanos,
    /// The entry's TTL (0 for a held entry).
    pub(crate) ttl: Nanos,
    pub(crate) timing: Timing,
}

/// Whether an entry is timed here or held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timing {
    /// Live until its deadline, and filed in the deadline index.
    Timed,
    /// Live until removed; not filed.
    Held,
}

/// What an expiry pass found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// The budget ran out with entries still due.
    More,
    /// Nothing is due before this instant.
    Until(Nanos),
    /// Nothing is filed.
    Idle,
}

/// The entries and their indexes.
#[derive(Debug)]
pub(crate) struct Table {
    slots: Vec<Slot>,
    free: u32,
    len: usize,
    by_id: HashTable<u32>,
    by_endpoint: HashTable<u32>,
    endpoint_hasher: std::collections::hash_map::RandomState,
    types: Vec<Type>,
    type_index: HashMap<Arc<str>, u32>,
    free_types: Vec<u32>,
    /// The name of a free type: one allocation shared by all of them.
    unnamed: Arc<str>,
    deadlines: Deadlines,
    /// The entries held (not timed here, so not in the deadline index).
    held: usize,
    /// What the entries and the types cost in memory, besides the deadline index.
    bytes: usize,
}

fn id_hash(id: &Uuid) -> u64 {
    let bytes = id.as_bytes();
    u64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

impl Table {
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: NO_SLOT,
            len: 0,
            by_id: HashTable::new(),
            by_endpoint: HashTable::new(),
            endpoint_hasher: Default::default(),
            types: Vec::new(),
            type_index: HashMap::new(),
            free_types: Vec::new(),
            unnamed: Arc::from(""),
            deadlines: Deadlines::default(),
            held: 0,
            bytes: 0,
        }
    }

    /// The number of entries held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// What the entries, their types and the deadline index take in memory, in bytes,
    /// counted as the allocator spends them: an upper bound of what they really take.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.saturating_add(self.deadlines.bytes())
    }

    /// The most that adding an entry of `service_type` with `metadata` can add to
    /// [`Table::bytes`]: the entry, its type's costs if it is the first of it, and its
    /// reference in the deadline index when it is `timed`.
    pub(crate) fn cost_of_new(
        &self,
        service_type: &str,
        metadata: &Metadata,
        timing: Timing,
    ) -> usize {
        let service_type = if self.type_index.contains_key(service_type) {
            0
        } else {
            footprint::service_type(service_type)
        };
        let filed = match timing {
            Timing::Timed => footprint::one_more_reference(),
            Timing::Held => 0,
        };
        ENTRY_BYTES + footprint::entry_metadata(metadata) + service_type + filed
    }

    /// What removing the entry of slot `index` takes off [`Table::bytes`] at least: the
    /// entry and its metadata (its type stays while another entry has it, and its
    /// reference in the deadline index until it is swept).
    pub(crate) fn cost_of(&self, index: u32) -> usize {
        ENTRY_BYTES + footprint::entry_metadata(self.slot(index).metadata())
    }

    /// The references the deadline index holds, live or stale.
    pub(crate) fn deadline_references(&self) -> usize {
        self.deadlines.len()
    }

    pub(crate) fn slot(&self, index: u32) -> &Slot {
        &self.slots[index as usize]
    }

    pub(crate) fn slot_mut(&mut self, index: u32) -> &mut Slot {
        &mut self.slots[index as usize]
    }

    /// The interned name of the type of a slot.
    pub(crate) fn type_name(&self, slot: &Slot) -> &Arc<str> {
        &self.types[slot.type_index as usize].name
    }

    /// The interned name of `service_type`, if it has instances.
    pub(crate) fn interned(&self, service_type: &str) -> Option<&Arc<str>> {
        self.type_index
            .get_key_value(service_type)
            .map(|(name, _)| name)
    }

    /// The slot of `id`.
    pub(crate) fn find(&self, id: &Uuid) -> Option<u32> {
        let slots = &self.slots;
        self.by_id
            .find(id_hash(id), |&index| {
                let slot = &slots[index as usize];
                slot.is_occupied() && slot.id == *id
            })
            .copied()
    }

    /// The slot of the entry of (`service_type`, `ip`, `port`).
    pub(crate) fn find_endpoint(&self, service_type: &str, ip: IpAddr, port: u16) -> Option<u32> {
        let type_index = *self.type_index.get(service_type)?;
        let endpoint = Endpoint::new(type_index, ip, port);
        let slots = &self.slots;
        self.by_endpoint
            .find(self.endpoint_hasher.hash_one(&endpoint), |&index| {
                slots[index as usize].is(&endpoint)
            })
            .copied()
    }

    /// The slots of the instances of `service_type`, live or not yet freed.
    pub(crate) fn members(&self, service_type: &str) -> &[u32] {
        match self.type_index.get(service_type) {
            Some(&index) => &self.types[index as usize].members,
            None => &[],
        }
    }

    /// The entry in slot `index` if it is an instance of the type named `type_name` (the
    /// interned name itself, compared by pointer: a type freed and made again is another
    /// type). For reading a copy of a type's members later than it was taken, when the slot
    /// may have been freed or reused since.
    pub(crate) fn member_of(&self, index: u32, type_name: &Arc<str>) -> Option<&Slot> {
        let slot = self.slots.get(index as usize)?;
        let name = &self.types.get(slot.type_index as usize)?.name;
        (slot.is_occupied() && Arc::ptr_eq(name, type_name)).then_some(slot)
    }

    /// Adds an entry; the endpoint must not be in the table already.
    pub(crate) fn insert(&mut self, entry: NewEntry<'_>) -> u32 {
        let NewEntry {
            id,
            service_type,
            ip,
            port,
            metadata,
            deadline,
            ttl,
            timing,
        } = entry;
        let type_index = self.intern(service_type);
        self.bytes = self
            .bytes
            .saturating_add(ENTRY_BYTES + footprint::entry_metadata(&metadata));
        if timing == Timing::Held {
            self.held += 1;
        }
        let endpoint = Endpoint::new(type_index, ip, port);
        let members = &mut self.types[type_index as usize].members;
        let position = members.len() as u32;
        let slot = Slot {
            id,
            deadline,
            ttl,
            metadata: (!metadata.is_empty()).then(|| Box::new(metadata)),
            ip: endpoint.ip,
            type_index,
            position,
            generation: 0,
            port,
            flags: OCCUPIED
                | if endpoint.v4 { V4 } else { 0 }
                | if timing == Timing::Held { HELD } else { 0 },
        };
        let index = if self.free == NO_SLOT {
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        } else {
            let index = self.free;
            let reused = &mut self.slots[index as usize];
            self.free = reused.position;
            let generation = reused.generation;
            *reused = Slot { generation, ..slot };
            index
        };
        members.push(index);
        self.len += 1;

        let slots = &self.slots;
        self.by_id
            .insert_unique(id_hash(&id), index, |&i| id_hash(&slots[i as usize].id));
        let hasher = &self.endpoint_hasher;
        self.by_endpoint
            .insert_unique(hasher.hash_one(&endpoint), index, |&i| {
                hasher.hash_one(slots[i as usize].endpoint())
            });
        if timing == Timing::Timed {
            self.file(index, deadline);
        }
        index
    }

    /// Makes an entry timed here until `deadline` with `ttl`, or held with `deadline` as the
    /// time it shows. A held entry's old reference in the deadline index is made stale.
    pub(crate) fn set_timing(&mut self, index: u32, deadline: Nanos, ttl: Nanos, timing: Timing) {
        let slot = &mut self.slots[index as usize];
        let was_held = slot.is_held();
        slot.deadline = deadline;
        slot.ttl = ttl;
        match timing {
            Timing::Held => {
                slot.flags |= HELD;
                if !was_held {
                    slot.generation = slot.generation.wrapping_add(1);
                    self.held += 1;
                    self.forget_stale(SWEEP_STEP);
                }
            }
            Timing::Timed => {
                slot.flags &= !HELD;
                if was_held {
                    self.held -= 1;
                    self.file(index, deadline);
                }
            }
        }
    }

    /// Replaces an entry's metadata; no index depends on it.
    pub(crate) fn set_metadata(&mut self, index: u32, metadata: Metadata) {
        let added = footprint::entry_metadata(&metadata);
        let slot = &mut self.slots[index as usize];
        let taken = footprint::entry_metadata(slot.metadata());
        slot.metadata = (!metadata.is_empty()).then(|| Box::new(metadata));
        self.bytes = self.bytes.saturating_sub(taken).saturating_add(added);
    }

    /// Carries on, or starts once stale references outnumber live ones, the sweep of the
    /// deadline index, by up to `budget` references.
    pub(crate) fn forget_stale(&mut self, budget: usize) {
        if !self.deadlines.sweeping() {
            let live = self.len - self.held;
            let stale = self.deadlines.len().saturating_sub(live);
            if stale <= live.max(SWEEP_FLOOR) {
                return;
            }
            self.deadlines.start_sweep();
        }
        let slots = &self.slots;
        self.deadlines.sweep(budget, |(index, generation)| {
            let slot = &slots[index as usize];
            slot.is_occupied() && slot.generation == generation && !slot.is_held()
        });
    }

    /// Every type with entries (live or not yet freed), and how many it has.
    pub(crate) fn type_sizes(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.type_index
            .iter()
            .map(|(name, &index)| (name, self.types[index as usize].members.len()))
    }

    /// Takes an entry out of every index and frees its slot.
    pub(crate) fn remove(&mut self, index: u32) -> Removed {
        let slot = &self.slots[index as usize];
        let id = slot.id;
        let endpoint = slot.endpoint();
        let (type_index, position) = (slot.type_index, slot.position);
        if let Ok(entry) = self.by_id.find_entry(id_hash(&id), |&i| i == index) {
            entry.remove();
        }
        if let Ok(entry) = self
            .by_endpoint
            .find_entry(self.endpoint_hasher.hash_one(&endpoint), |&i| i == index)
        {
            entry.remove();
        }
        let members = &mut self.types[type_index as usize].members;
        members.swap_remove(position as usize);
        if let Some(&moved) = members.get(position as usize) {
            self.slots[moved as usize].position = position;
        }
        // A type that was large gives back what its list no longer needs.
        if members.capacity() > 4 * members.len().max(4) {
            members.shrink_to(2 * members.len());
        }
        let service_type = self.type_name(&self.slots[index as usize]).clone();
        if self.types[type_index as usize].members.is_empty() {
            self.forget_type(type_index);
        }
        let taken = ENTRY_BYTES + footprint::entry_metadata(self.slots[index as usize].metadata());
        self.bytes = self.bytes.saturating_sub(taken);

        let slot = &mut self.slots[index as usize];
        let removed = Removed {
            id,
            service_type,
            ip: slot.ip(),
            port: slot.port,
            metadata: slot.metadata.take(),
            deadline: slot.deadline,
            ttl: slot.ttl,
            held: slot.is_held(),
        };
        if removed.held {
            self.held -= 1;
        }
        slot.flags &= !OCCUPIED;
        slot.generation = slot.generation.wrapping_add(1);
        slot.position = self.free;
        self.free = index;
        self.len -= 1;
        removed
    }

    /// Files a slot in the deadline index under `deadline`.
    pub(crate) fn file(&mut self, index: u32, deadline: Nanos) {
        let generation = self.slots[index as usize].generation;
        self.deadlines.file((index, generation), deadline);
    }

    /// Handles the buckets due at `now`, up to `budget` references: entries whose deadline
    /// has passed are given to `expired` (which must remove them), the others are filed
    /// again under their real deadline, and stale references are dropped.
    pub(crate) fn expire_due(
        &mut self,
        now: Nanos,
        mut budget: usize,
        mut expired: impl FnMut(&mut Self, u32),
    ) -> Due {
        loop {
            let (tick, bucket) = match self.deadlines.take_due(now) {
                Ok(due) => due,
                Err(Some(at)) => return Due::Until(at),
                Err(None) => return Due::Idle,
            };
            let mut references = bucket.into_iter();
            for (index, generation) in references.by_ref() {
                let slot = &self.slots[index as usize];
                if !slot.is_occupied() || slot.generation != generation || slot.is_held() {
                    continue;
                }
                let deadline = slot.deadline;
                if deadline <= now {
                    expired(self, index);
                } else {
                    self.file(index, deadline);
                }
                budget = budget.saturating_sub(1);
                if budget == 0 {
                    break;
                }
            }
            let rest: Vec<_> = references.collect();
            if !rest.is_empty() {
                self.deadlines.put_back(tick, rest);
                return Due::More;
            }
            if budget == 0 {
                return match self.deadlines.earliest() {
                    Some(at) if at <= now => Due::More,
                    Some(at) => Due::Until(at),
                    None => Due::Idle,
                };
            }
        }
    }

    fn intern(&mut self, service_type: &str) -> u32 {
        if let Some(&index) = self.type_index.get(service_type) {
            return index;
        }
        let name: Arc<str> = Arc::from(service_type);
        self.bytes = self
            .bytes
            .saturating_add(footprint::service_type(service_type));
        let index = match self.free_types.pop() {
            Some(index) => {
                self.types[index as usize].name = Arc::clone(&name);
                index
            }
            None => {
                self.types.push(Type {
                    name: Arc::clone(&name),
                    members: Vec::new(),
                });
                (self.types.len() - 1) as u32
            }
        };
        self.type_index.insert(name, index);
        index
    }

    fn forget_type(&mut self, index: u32) {
        let entry = &mut self.types[index as usize];
        self.type_index.remove(&entry.name);
        self.bytes = self
            .bytes
            .saturating_sub(footprint::service_type(&entry.name));
        // Give the memory back: a long name, and the list of a type that was large.
        entry.name = Arc::clone(&self.unnamed);
        entry.members = Vec::new();
        self.free_types.push(index);
    }

    /// Checks that every index agrees with the slots (for tests).
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        let occupied: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&i| self.slots[i as usize].is_occupied())
            .collect();
        assert_eq!(occupied.len(), self.len);
        assert_eq!(self.by_id.len(), self.len);
        assert_eq!(self.by_endpoint.len(), self.len);
        let members: usize = self.types.iter().map(|t| t.members.len()).sum();
        assert_eq!(members, self.len);
        for &index in &occupied {
            let slot = &self.slots[index as usize];
            assert_eq!(self.find(&slot.id), Some(index));
            let name = self.type_name(slot);
            assert_eq!(self.find_endpoint(name, slot.ip(), slot.port), Some(index));
            let ty = &self.types[slot.type_index as usize];
            assert_eq!(ty.members[slot.position as usize], index);
            let (filed, in_time) = self
                .deadlines
                .filed((index, slot.generation), slot.deadline);
            if slot.is_held() {
                assert_eq!(filed, 0, "held slot {index} not filed");
            } else {
                assert_eq!(filed, 1, "slot {index} filed once");
                assert!(in_time, "slot {index} filed no later than its deadline");
            }
        }
        for (index, ty) in self.types.iter().enumerate() {
            let indexed = self.type_index.get(&ty.name) == Some(&(index as u32));
            assert_eq!(
                indexed,
                !ty.members.is_empty(),
                "type {index} indexed iff it has members"
            );
        }
        let live_types = self.types.iter().filter(|t| !t.members.is_empty()).count();
        assert_eq!(self.type_index.len(), live_types);
        let held = occupied
            .iter()
            .filter(|&&i| self.slots[i as usize].is_held())
            .count();
        assert_eq!(self.held, held, "held entries counted");
        let bytes: usize = occupied
            .iter()
            .map(|&i| ENTRY_BYTES + footprint::entry_metadata(self.slots[i as usize].metadata()))
            .chain(
                self.type_index
                    .keys()
                    .map(|name| footprint::service_type(name)),
            )
            .sum();
        assert_eq!(self.bytes, bytes, "the running total of bytes is exact");
    }

    /// The number of slots, occupied or free (for tests).
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// When the earliest bucket of the deadline index comes due.
    pub(crate) fn earliest_deadline(&self) -> Option<Nanos> {
        self.deadlines.earliest()
    }

    /// True when `deadline` falls in the earliest bucket of the deadline index.
    pub(crate) fn is_earliest(&self, deadline: Nanos) -> bool {
        self.deadlines.is_earliest(deadline)
    }

    /// The number of types with instances (for tests).
    #[cfg(test)]
    pub(crate) fn type_count(&self) -> usize {
        self.type_index.len()
    }
}
