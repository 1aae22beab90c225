//! File descriptors: the process's limit at start, and the spares that let a connection
//! past that limit still be told why it is refused.
//!
//! When the process has no descriptor left, `accept` fails and the connection waits in
//! the listen backlog with no answer at all, however long its client waits. So the accept
//! loop keeps a few spare descriptors (copies of one open `/dev/null`): on `EMFILE` or
//! `ENFILE` it gives one back, accepts the waiting connection with it, refuses it with
//! `TooManyConnections` (compat: `ERROR`), and then turns the refused socket's descriptor
//! back into a spare with `dup2`, which closes the socket and takes its number in one step,
//! so that no other accept can take it in between.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;
use tracing::debug;

/// How many spare descriptors the accept loops hold: as many connections past the
/// descriptor limit can be being refused at once; more wait in the backlog until one of
/// those refusals ends (within about a second).
pub const SPARES: usize = 4;

/// Descriptors the process needs besides its connections: the standard streams, the
/// runtime's (epoll, its wake-up, the signal pipe), the listeners, the spares and their
/// `/dev/null`, with room to spare.
pub const RESERVE: u64 = 32;

/// What [`raise_limit`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit before (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit now.
    pub now: Option<u64>,
    /// The hard limit, which the soft one cannot pass.
    pub hard: Option<u64>,
}

impl Limit {
    /// The most connections this limit leaves room for, after [`RESERVE`].
    pub fn connections(&self) -> Option<u64> {
        self.now.map(|now| now.saturating_sub(RESERVE))
    }
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit, or, when the
/// hard limit is unlimited, to what `max_connections` needs (an unlimited soft limit is
/// refused by Linux past `nr_open`). Never lowers it.
///
/// # Errors
///
/// The `setrlimit` error; the limit is then as it was.
pub fn raise_limit(max_connections: usize) -> io::Result<Limit> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit {
        current: before,
        maximum: hard,
    } = getrlimit(Resource::Nofile);
    let needed = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVE);
    let target = match hard {
        Some(hard) => Some(hard),
        None => Some(needed.max(before.unwrap_or(0))),
    };
    let raise = match (before, target) {
        (None, _) => false,
        (Some(before), Some(target)) => target > before,
        (Some(_), None) => false,
    };
    if raise {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: target,
                maximum: hard,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile).current;
    Ok(Limit { before, now, hard })
}

/// True for the errors that say the process (`EMFILE`) or the system (`ENFILE`) has no
/// descriptor left.
pub fn is_exhausted(e: &io::Error) -> bool {
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    let errno = rustix::io::Errno::from_raw_os_error(code);
    errno == rustix::io::Errno::MFILE || errno == rustix::io::Errno::NFILE
}

/// The spare descriptors of a server, shared by its accept loops.
#[derive(Debug)]
pub struct Spares {
    /// The `/dev/null` every spare is a copy of; `None` when it could not be opened (then
    /// there are no spares, and a connection past the limit waits in the backlog).
    null: Option<File>,
    spares: Mutex<Vec<OwnedFd>>,
    /// Told each time a refused socket becomes a spare again, so that an accept loop
    /// waiting for descriptors tries again at once instead of at the end of its backoff.
    returned: Notify,
}

impl Spares {
    /// Opens `/dev/null` and takes [`SPARES`] copies of it.
    pub fn new() -> Self {
        let null = File::open("/dev/null")
            .map_err(|e| debug!(error = %e, "no spare descriptors: cannot open /dev/null"))
            .ok();
        let spares = Spares {
            null,
            spares: Mutex::new(Vec::with_capacity(SPARES)),
            returned: Notify::new(),
        };
        spares.refill();
        spares
    }

    /// Gives one spare back to the process, so that the next `accept` can succeed; false
    /// when none is left.
    pub fn release(&self) -> bool {
        self.lock().pop().is_some()
    }

    /// Takes spares again up to [`SPARES`], as far as descriptors are free.
    pub fn refill(&self) {
        let Some(null) = &self.null else { return };
        let mut spares = self.lock();
        while spares.len() < SPARES {
            match null.as_fd().try_clone_to_owned() {
                Ok(spare) => spares.push(spare),
                Err(_) => break,
            }
        }
    }

    /// Closes `socket` and keeps its descriptor as a spare, in one step, when spares are
    /// missing; otherwise just closes it.
    pub fn recycle(&self, mut socket: OwnedFd) {
        let Some(null) = &self.null else { return };
        let mut spares = self.lock();
        if spares.len() < SPARES && rustix::io::dup2(null, &mut socket).is_ok() {
            spares.push(socket);
            drop(spares);
            self.returned.notify_one();
        }
    }

    /// Waits until a spare is given back by [`Spares::recycle`] (at once if one was since
    /// the last wait).
    pub async fn returned(&self) {
        self.returned.notified().await;
    }

    /// How many spares are held now.
    pub fn held(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OwnedFd>> {
        self.spares.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Spares {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_are_released_and_recycled_from_sockets() {
        let spares = Spares::new();
        assert_eq!(spares.held(), SPARES);
        assert!(spares.release());
        assert_eq!(spares.held(), SPARES - 1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let socket = OwnedFd::from(listener);
        spares.recycle(socket);
        assert_eq!(
            spares.held(),
            SPARES,
            "the socket's descriptor is a spare now"
        );
        use futures_util::FutureExt;
        assert!(
            spares.returned().now_or_never().is_some(),
            "a loop waiting for a spare is told"
        );
        assert!(spares.returned().now_or_never().is_none(), "once");
        // A full set takes no more: the socket is only closed.
        let other = OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
        spares.recycle(other);
        assert_eq!(spares.held(), SPARES);
        for _ in 0..SPARES {
            assert!(spares.release());
        }
        assert!(!spares.release(), "no spare is left");
        spares.refill();
        assert_eq!(spares.held(), SPARES);
    }

    #[test]
    fn exhaustion_is_emfile_or_enfile() {
        use rustix::io::Errno;
        let error = |errno: Errno| io::Error::from_raw_os_error(errno.raw_os_error());
        assert!(is_exhausted(&error(Errno::MFILE)));
        assert!(is_exhausted(&error(Errno::NFILE)));
        assert!(!is_exhausted(&error(Errno::CONNRESET)));
        assert!(!is_exhausted(&io::Error::other("no code")));
    }

    #[test]
    fn the_limit_is_never_lowered() {
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let limit = raise_limit(10).expect("raising to the hard limit is allowed");
        assert_eq!(limit.before, before.current);
        assert!(limit.now >= limit.before || limit.now.is_none());
        assert_eq!(limit.hard, before.maximum);
    }
}
