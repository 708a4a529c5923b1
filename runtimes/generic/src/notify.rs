use futures_util::task::AtomicWaker;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// A wake-up flag for one waiting task: `notify` from anywhere, `wait` in the task.
///
/// Notifications before the wait are not lost, and several coalesce into one wake-up, which
/// is what a writer draining a shared buffer wants.
#[derive(Debug, Default)]
pub struct Notify {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Notify {
    /// A flag with no pending notification.
    #[must_use]
    pub fn new() -> Self {
        Notify::default()
    }

    /// Wakes the waiting task (or the next one to wait).
    pub fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Completes once a notification is pending, consuming it.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.pending.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.pending.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_before_wait_is_kept_and_coalesced() {
        let n = Notify::new();
        n.notify();
        n.notify();
        futures_lite::future::block_on(n.wait());
        let second = futures_lite::future::block_on(futures_lite::future::or(
            async {
                n.wait().await;
                true
            },
            async { false },
        ));
        assert!(!second, "two notifications coalesce into one wake-up");
    }
}
