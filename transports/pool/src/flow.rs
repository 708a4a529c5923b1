//! The wake-up signal for requests waiting on flow control ([`FlowControlMode::WaitAndRetry`]).
//!
//! A request that finds every connection of its agent paused or full takes a place in the
//! agent's bounded wait queue, then sleeps until the signal changes (a resume, a capacity
//! update, a request of that agent finishing) or a short re-check period passes, and selects
//! again. The period bounds the cost of a missed wake-up: the finishing side only *loads*
//! the waiter count (no fence on the hot path), so in the rare interleaving where it reads
//! zero just as a waiter arrives, the waiter re-checks within [`RECHECK`] anyway.
//!
//! [`FlowControlMode::WaitAndRetry`]: agentwire_core::pool::FlowControlMode::WaitAndRetry

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use agentwire_core::sync::{AtomicU64, AtomicUsize, Mutex, Ordering};

/// The longest a flow-control waiter sleeps between two selections.
pub(crate) const RECHECK: Duration = Duration::from_millis(10);

/// A multi-waiter change signal with a bounded number of waiters.
#[derive(Debug, Default)]
pub(crate) struct FlowSignal {
    epoch: AtomicU64,
    waiting: AtomicUsize,
    next_id: AtomicU64,
    wakers: Mutex<Vec<(u64, Waker)>>,
}

impl FlowSignal {
    /// The current generation; a waiter compares against it.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Takes a place in the wait queue if fewer than `capacity` requests wait.
    pub(crate) fn try_enter(self: &Arc<Self>, capacity: usize) -> Option<WaitTicket> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()?;
        Some(WaitTicket {
            signal: Arc::clone(self),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Requests currently waiting.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Wakes every waiter.
    pub(crate) fn notify(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let wakers = std::mem::take(&mut *self.lock());
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// Wakes the waiters if there are any: one relaxed load when there are none, which is
    /// what the per-request completion path pays.
    pub(crate) fn notify_if_waiting(&self) {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.notify();
        }
    }

    fn lock(&self) -> agentwire_core::sync::MutexGuard<'_, Vec<(u64, Waker)>> {
        self.wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A place in an agent's flow-control wait queue; leaving it (drop) frees the place and
/// forgets the waker.
#[derive(Debug)]
pub(crate) struct WaitTicket {
    signal: Arc<FlowSignal>,
    id: u64,
}

impl WaitTicket {
    /// Completes once the signal's generation differs from `seen`.
    pub(crate) async fn changed(&self, seen: u64) {
        poll_fn(|cx| {
            if self.signal.epoch() != seen {
                return Poll::Ready(());
            }
            {
                let mut wakers = self.signal.lock();
                match wakers.iter_mut().find(|(id, _)| *id == self.id) {
                    Some((_, waker)) => waker.clone_from(cx.waker()),
                    None => wakers.push((self.id, cx.waker().clone())),
                }
            }
            if self.signal.epoch() != seen {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        self.signal.lock().retain(|(id, _)| *id != self.id);
        self.signal.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_bounded_and_places_are_returned() {
        let signal = Arc::new(FlowSignal::default());
        let a = signal.try_enter(2).unwrap();
        let _b = signal.try_enter(2).unwrap();
        assert!(signal.try_enter(2).is_none());
        assert_eq!(signal.waiting(), 2);
        drop(a);
        assert_eq!(signal.waiting(), 1);
        assert!(signal.try_enter(2).is_some());
    }

    #[test]
    fn notify_wakes_a_waiter_and_dropped_waiters_leave_no_waker() {
        let signal = Arc::new(FlowSignal::default());
        let ticket = signal.try_enter(4).unwrap();
        let seen = signal.epoch();
        let mut wait = Box::pin(ticket.changed(seen));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(signal.lock().len(), 1, "re-polling does not add wakers");
        signal.notify_if_waiting();
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        drop(wait);
        let pending = Box::pin(ticket.changed(signal.epoch()));
        drop(pending);
        drop(ticket);
        assert_eq!(signal.waiting(), 0);
        assert!(signal.lock().is_empty());
    }
}
