//! Why the worker stopped, recorded before anything of it is dropped.
//!
//! A caller whose reply sender is dropped learns only that the worker is gone. So that it
//! learns why, the worker's task records the reason in its [`WorkerStatus`] first: a panic
//! is caught with `catch_unwind` and its message recorded before the worker (and every
//! reply sender it holds) is dropped, and a [`StopGuard`], dropped before the rest of the
//! worker, records a runtime shutdown, which drops the task without running any more of it.

use std::any::Any;
use std::sync::Arc;

use tracing::warn;

use crate::status::WorkerStatus;

/// Records a reason when the worker is dropped without having recorded one: its task was
/// cancelled because its runtime shut down. It must be the worker's first field, so that it
/// is dropped before the reply senders.
#[derive(Debug)]
pub(crate) struct StopGuard(Arc<WorkerStatus>);

impl StopGuard {
    pub(crate) fn new(status: Arc<WorkerStatus>) -> Self {
        Self(status)
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0
            .record_stop("the tokio runtime that ran its worker task has shut down".to_owned());
    }
}

/// Records that the worker panicked, with the panic's message.
pub(crate) fn record_panic(status: &WorkerStatus, panic: &(dyn Any + Send)) {
    let reason = format!("its worker task panicked: {}", panic_message(panic));
    warn!("discovery client stopped: {reason}");
    status.record_stop(reason);
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_recorded_before_the_guard_speaks() {
        let status = Arc::new(WorkerStatus::default());
        let guard = StopGuard::new(status.clone());
        let panic = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        record_panic(&status, &*panic);
        drop(guard);
        assert_eq!(
            status.stop_reason().as_deref(),
            Some("its worker task panicked: boom 7")
        );
    }

    #[test]
    fn a_dropped_worker_says_its_runtime_shut_down() {
        let status = Arc::new(WorkerStatus::default());
        drop(StopGuard::new(status.clone()));
        assert!(status.stop_reason().unwrap().contains("runtime"));
    }
}
