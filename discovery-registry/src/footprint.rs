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
/// A leaf node of a `BTreeMap<String, String>`: the keys, the values, and the parent
/// pointer and indexes.
const BTREE_LEAF: usize = BTREE_CAPACITY * 2 * size_of::<String>() + 8 + 2 + 2;
/// An internal node: a leaf and its child pointers.
const BTREE_INTERNAL: usize = BTREE_LEAF + (BTREE_CAPACITY + 1) * size_of::<usize>();

/// The heap a metadata map holds: its nodes and every key's and value's buffer. An upper
/// bound for the nodes (every node but the root counted as at its fullest share of
/// internal ones), exact for the strings, which are allocated to their length when read
/// from the wire.
pub(crate) fn metadata(metadata: &Metadata) -> usize {
    let pairs = metadata.len();
    if pairs == 0 {
        return 0;
    }
    let nodes = if pairs <= BTREE_CAPACITY {
        alloc(BTREE_LEAF)
    } else {
        // At most pairs / MIN_LEN nodes below the root; about one in six is internal.
        let below = pairs.div_ceil(BTREE_MIN_LEN);
        let internal = below.div_ceil(BTREE_MIN_LEN + 1);
        alloc(BTREE_INTERNAL) * (internal + 1) + alloc(BTREE_LEAF) * below
    };
    let strings: usize = metadata
        .iter()
        .map(|(key, value)| alloc(key.len()) + alloc(value.len()))
        .sum();
    nodes + strings
}

/// The heap an [`Instance`] value holds besides its own struct: its type's buffer and its
/// metadata.
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
        assert_eq!(one, alloc(BTREE_LEAF) + 64);
        for n in 0..100 {
            metadata.insert(format!("key-{n}"), "x".repeat(100));
        }
        assert!(super::metadata(&metadata) > 100 * 2 * 32 + 100 * 112);
    }
}
