//! What the registry's test files share: waiting for the expiry task on a paused clock.

use std::time::Duration;

use discovery_registry::Registry;

/// Waits until the expiry task has done, on its own, what is due now; fails the test if
/// the task does not (which a paused clock would hide by moving time on).
pub async fn settle(registry: &Registry) {
    let before = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3600), registry.expiry_caught_up())
        .await
        .expect("the expiry task catches up");
    assert_eq!(
        tokio::time::Instant::now(),
        before,
        "the task ran without time moving"
    );
}
