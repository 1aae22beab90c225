//! Who a connection comes from, as the per-peer bounds count it, and the per-peer
//! connection cap (`--max-connections-per-peer`).
//!
//! An IPv6 peer is counted per /64: one host is usually given a whole /64, so counting its
//! addresses one by one would let it open as many connections as it likes. An IPv4-mapped
//! IPv6 address (a dual-stack listener's view of an IPv4 client) is the IPv4 peer it maps.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// A peer as the per-peer bounds count it: an IPv4 address, or the /64 of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// An IPv4 peer (or an IPv4-mapped IPv6 one).
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 peer's address.
    V6(u64),
}

impl PeerKey {
    /// The peer `ip` counts as.
    pub fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(v4) => PeerKey::V4(v4),
            // Not `to_ipv4`, which also takes `::1` for 0.0.0.1.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(v4),
                None => PeerKey::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// The open connections of each peer, for the per-peer cap. Peers with none are not held,
/// so the map is never larger than the number of open connections.
#[derive(Debug)]
pub struct PeerCounts {
    max: usize,
    open: Arc<Mutex<HashMap<PeerKey, usize>>>,
}

impl PeerCounts {
    /// Counts that allow `max` connections per peer.
    pub fn new(max: usize) -> Self {
        PeerCounts {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more connection of `peer`, held until the guard is dropped, or
    /// `None` when the peer has its maximum open.
    pub fn admit(&self, peer: PeerKey) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(peer).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peer,
            open: Arc::clone(&self.open),
        })
    }

    /// How many connections `peer` has open.
    pub fn open(&self, peer: PeerKey) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&peer).copied().unwrap_or(0)
    }
}

/// One open connection of a peer; dropping it gives the slot back.
#[derive(Debug)]
pub struct PeerSlot {
    peer: PeerKey,
    open: Arc<Mutex<HashMap<PeerKey, usize>>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> PeerKey {
        PeerKey::of(text.parse().expect("an address"))
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        // ::1 is IPv6 loopback, not the IPv4 address 0.0.0.1.
        assert_eq!(key("::1"), PeerKey::V6(0));
        assert_ne!(key("::1"), key("0.0.0.1"));
    }

    #[test]
    fn a_peer_has_its_maximum_and_a_closed_slot_comes_back() {
        let counts = PeerCounts::new(2);
        let a = key("192.0.2.1");
        let first = counts.admit(a).expect("the first");
        let second = counts.admit(a).expect("the second");
        assert!(counts.admit(a).is_none(), "the third is over the cap");
        assert!(counts.admit(key("192.0.2.2")).is_some(), "others are not");
        assert_eq!(counts.open(a), 2);
        drop(first);
        assert_eq!(counts.open(a), 1);
        let third = counts.admit(a).expect("a freed slot is taken again");
        drop((second, third));
        assert_eq!(counts.open(a), 0);
        assert!(
            counts.open.lock().unwrap().is_empty(),
            "a peer with no connection is not held"
        );
    }
}
