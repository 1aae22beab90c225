//! What things cost in memory, in bytes, as the process really spends them: the size of
//! each allocation as the allocator rounds it, plus its header, so that a byte bound
//! (`max-registry-bytes`, `max-watch-bytes`) bounds what the server's memory grows by, not a
//! count of payload bytes that a peer can multiply with many small strings.
//!
//! The model is glibc's malloc, the allocator of a default build here: every allocation
//! costs its size plus an 8-byte header, rounded up to 16, and at least 32. Other
//! allocators round differently, by less than a factor of two; the bounds are meant to
//! hold memory to the same order, not to the byte.

use std::mem::size_of;

use discovery_proto::{Instance, Metadata};

/// What one allocation of `bytes` costs; nothing for no allocation (an empty `String` or
/// `Vec` allocates nothing).
pub(crate) const fn alloc(bytes: usize) -> usize {
    if bytes == 0 {
        return 0;
    }
    let with_header = bytes.saturating_add(8 + 15) & !15;
    if with_header < 32 { 32 } else { with_header }
}

/// The most key-value pairs of one node of a `BTreeMap` (its `CAPACITY`).
const BTREE_CAPACITY: usize = 11;
/// The fewest pairs of a node other than the root (its `MIN_LEN`): a map of `n` pairs
/// has at most `n / 5` nodes besides the root.
const BTREE_MIN_LEN: usize = 5;
/// The parent pointer, the index in the parent and the length of a `BTreeMap` node.
const BTREE_NODE_HEADER: usize = 8 + 2 + 2;

/// What the nodes of a `BTreeMap` of `pairs` pairs of `pair` bytes (key and value) cost:
/// an upper bound, every node but the root counted at its emptiest, and one in six of
/// them internal (a leaf and its child pointers).
const fn btree_nodes(pairs: usize, pair: usize) -> usize {
    let leaf = BTREE_CAPACITY * pair + BTREE_NODE_HEADER;
    let internal = leaf + (BTREE_CAPACITY + 1) * size_of::<usize>();
    if pairs == 0 {
        0
    } else if pairs <= BTREE_CAPACITY {
        alloc(leaf)
    } else {
        // At most pairs / MIN_LEN nodes below the root; about one in six is internal.
        let below = pairs.div_ceil(BTREE_MIN_LEN);
        let internal_nodes = below.div_ceil(BTREE_MIN_LEN + 1);
        alloc(internal) * (internal_nodes + 1) + alloc(leaf) * below
    }
}

/// The heap a metadata map holds: its nodes and every key's and value's buffer. An upper
/// bound for the nodes, exact for the strings, which are allocated to their length when
/// read from the wire.
pub(crate) fn metadata(metadata: &Metadata) -> usize {
    let nodes = btree_nodes(metadata.len(), 2 * size_of::<String>());
    let strings: usize = metadata
        .iter()
        .map(|(key, value)| alloc(key.len()) + alloc(value.len()))
        .sum();
    nodes + strings
}

/// The metadata of an entry of the table: nothing when there is none (the slot holds no
/// allocation then), else its box and its map.
pub(crate) fn entry_metadata(metadata: &Metadata) -> usize {
    if metadata.is_empty() {
        0
    } else {
        alloc(size_of::<Metadata>()) + self::metadata(metadata)
    }
}

/// How much more than it uses a container that grows by doubling may hold: a `Vec` or a
/// hash table grows to twice its length (and the table's member lists are shrunk back
/// once under a quarter full, so they may hold four times theirs).
const GROWTH: usize = 2;

/// One slot number in a `hashbrown::HashTable<u32>`, with its control byte, at the table's
/// fullest load (7/8), rounded up: 5.71 bytes.
const HASH_SLOT_NUMBER: usize = (size_of::<u32>() + 1) * 8 / 7 + 1;

/// What one entry of the table costs besides its metadata, whose slot takes `slot` bytes:
/// the slot in the slab, its slot number in the indexes by id and by endpoint, and in its
/// type's member list. Each of these containers grows by doubling and keeps its capacity
/// for reuse, so each is counted at twice what it uses (four times for a member list);
/// the deadline index counts its own references ([`deadline_index`]).
pub(crate) const fn entry(slot: usize) -> usize {
    GROWTH * slot + GROWTH * 2 * HASH_SLOT_NUMBER + 2 * GROWTH * size_of::<u32>()
}

/// What one type with entries costs: its interned name (an `Arc<str>`: two counters and
/// the bytes), its entry in the index of names (the `Arc` and a `u32`, padded to 24 bytes,
/// and a control byte), its place in the list of types (the `Arc` and the member list's
/// `Vec`, 40 bytes) and the first allocation of its member list (4 slot numbers).
pub(crate) const fn service_type(name: &str) -> usize {
    let interned = alloc(2 * size_of::<usize>() + name.len());
    let index = GROWTH * ((24 + 1) * 8 / 7 + 1);
    let listed = GROWTH * (size_of::<usize>() * 2 + 3 * size_of::<usize>());
    interned + index + listed + alloc(4 * size_of::<u32>())
}

/// One reference (slot number and generation) in a bucket of the deadline index.
const REFERENCE: usize = 2 * size_of::<u32>();
/// A bucket's entry in the deadline index's map: its millisecond and its `Vec`.
const BUCKET_PAIR: usize = size_of::<u64>() + 3 * size_of::<usize>();

/// What the deadline index costs with `buckets` buckets holding `references` references
/// in all: the map's nodes, each bucket's first allocation (4 references) and every
/// reference at twice its size (a bucket's `Vec` grows by doubling, and the sweep of
/// stale references shrinks one under half full).
pub(crate) const fn deadline_index(buckets: usize, references: usize) -> usize {
    btree_nodes(buckets, BUCKET_PAIR)
        + buckets * alloc(4 * REFERENCE)
        + references * GROWTH * REFERENCE
}

/// The most that filing one more reference can add to [`deadline_index`]: the reference,
/// and a bucket of its own with the largest step of [`btree_nodes`] (from a lone root to
/// a root and its children: two internal nodes and a leaf more).
pub(crate) const fn one_more_reference() -> usize {
    let leaf = BTREE_CAPACITY * BUCKET_PAIR + BTREE_NODE_HEADER;
    let internal = leaf + (BTREE_CAPACITY + 1) * size_of::<usize>();
    GROWTH * REFERENCE + alloc(4 * REFERENCE) + 2 * alloc(leaf) + 2 * alloc(internal)
}

/// The heap an [`Instance`] value holds besides its own struct: its type's buffer and its
/// metadata.
#[allow(
    dead_code,
    reason = "for the byte bound of the watch feeds, which lands apart"
)]
pub(crate) fn instance_heap(instance: &Instance) -> usize {
    alloc(instance.service_type.len()) + metadata(&instance.metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_round_as_malloc_does() {
        assert_eq!(alloc(0), 0);
        assert_eq!(alloc(1), 32);
        assert_eq!(alloc(24), 32);
        assert_eq!(alloc(25), 48);
        assert_eq!(alloc(100), 112);
        assert_eq!(alloc(usize::MAX), usize::MAX & !15);
    }

    #[test]
    fn metadata_grows_with_its_pairs_and_strings() {
        let mut metadata = Metadata::new();
        assert_eq!(super::metadata(&metadata), 0);
        metadata.insert("k".into(), "v".into());
        let one = super::metadata(&metadata);
        assert_eq!(one, alloc(11 * 48 + 12) + 64);
        assert_eq!(entry_metadata(&metadata), 32 + one);
        assert_eq!(entry_metadata(&Metadata::new()), 0);
        for n in 0..100 {
            metadata.insert(format!("key-{n}"), "x".repeat(100));
        }
        assert!(super::metadata(&metadata) > 100 * 2 * 32 + 100 * 112);
    }

    #[test]
    fn the_deadline_index_costs_its_buckets_and_references() {
        assert_eq!(deadline_index(0, 0), 0);
        let one = deadline_index(1, 1);
        assert!(one <= one_more_reference());
        // Each more reference in one bucket costs twice its 8 bytes.
        assert_eq!(deadline_index(1, 1001) - one, 1000 * 16);
        // Each more bucket costs at least its first allocation.
        assert!(deadline_index(1001, 1001) - one >= 1000 * (48 + 16));
        for buckets in [1, 10, 11, 12, 100, 10_000] {
            assert!(
                deadline_index(buckets + 1, buckets + 1) - deadline_index(buckets, buckets)
                    <= one_more_reference()
            );
        }
    }
}
