//! Waiting for a condition in tests: poll it with a generous deadline, never sleep a fixed
//! time and hope.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// Generous bound on anything a test waits for; a healthy run takes a small part of it,
/// even on a machine whose cores are busy with other work.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(20);

/// What a polled check can say: `bool` (held or not) or `Option<T>` (a value once it holds).
pub trait Check {
    /// What [`eventually`] returns once the check holds.
    type Value;
    /// The value, if the check holds.
    fn holds(self) -> Option<Self::Value>;
}

impl Check for bool {
    type Value = ();
    fn holds(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Check for Option<T> {
    type Value = T;
    fn holds(self) -> Option<T> {
        self
    }
}

/// Polls `check` until it holds, and returns its value; panics naming `what` once
/// [`PATIENCE`] has passed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut tries = 0;
/// let n = discovery_test_support::eventually("the third try", || {
///     tries += 1;
///     let tries = tries;
///     async move { (tries == 3).then_some(tries) }
/// })
/// .await;
/// assert_eq!(n, 3);
/// # }
/// ```
pub async fn eventually<C, F, Fut>(what: &str, check: F) -> C::Value
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    eventually_within(what, PATIENCE, check).await
}

/// [`eventually`] with a deadline of the test's own, for a condition that takes longer
/// than [`PATIENCE`] by design (several TTLs, a backoff run to its cap).
pub async fn eventually_within<C, F, Fut>(what: &str, deadline: Duration, mut check: F) -> C::Value
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await.holds() {
            return value;
        }
        assert!(Instant::now() < give_up, "{what}: not within {deadline:?}");
        sleep(POLL).await;
    }
}
