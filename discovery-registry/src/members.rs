//! A copy of one type's member list, read in batches: how a large answer (a query, a watch's
//! snapshot) is made without holding the registry's lock for the whole of it.
//!
//! Taking the copy costs one `memcpy` of 4 bytes per instance under the lock; reading it
//! takes the lock again for each batch of at most [`BATCH`] entries (or fewer, when the
//! reader says it has enough for now, so that it can write out what it has before reading
//! on). Between batches every other request goes ahead: a heartbeat waits for one batch,
//! never for a whole answer of a big type.
//!
//! What a reader sees: every instance live from the copy to the batch that reads its slot
//! exactly once, as it is at that batch; none that went before its batch; and, in the slot
//! of one that went, possibly an instance of the same type registered since (listed once,
//! as it is a live instance too). Never an instance of another type, never one twice.

use std::sync::Arc;

/// The most slots read under one hold of the lock.
pub const BATCH: usize = 1024;

/// A copy of the slot numbers of a type's instances at one moment, and how far reading it
/// has got. Made by [`Registry::members`](crate::Registry::members) or carried by a
/// watch's snapshot; read with [`Registry::visit`](crate::Registry::visit).
#[derive(Debug, Default)]
pub struct Members {
    /// The type's interned name when the copy was taken; `None` for a type with no
    /// instances.
    pub(crate) type_name: Option<Arc<str>>,
    pub(crate) slots: Vec<u32>,
    /// The next slot number to read.
    pub(crate) next: usize,
}

impl Members {
    /// A copy of `slots`, the members of the type named `type_name` now.
    pub(crate) fn new(type_name: Option<Arc<str>>, slots: &[u32]) -> Self {
        Self {
            type_name,
            slots: slots.to_vec(),
            next: 0,
        }
    }

    /// How many slots are left to read: an upper bound of the instances still to come.
    pub fn remaining(&self) -> usize {
        self.slots.len() - self.next
    }

    /// True when every slot has been read.
    pub fn is_done(&self) -> bool {
        self.remaining() == 0
    }

    /// The bytes this copy holds: what an answer in progress costs besides its frames.
    pub fn held_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<u32>()
    }
}
