//! A worker's drain signal: cancelled once, when the worker stops taking
//! connections, and awaited by each of its connections (an idle one
//! closes, a busy one finishes its request and says `connection: close`).
//!
//! Everything that waits on it runs on the worker's thread, so it is a
//! flag and a list of wakers with no lock. tokio-util's thread-safe
//! `CancellationToken`, used here before, takes a mutex on every check and
//! every poll, and the fast path checks once and polls once per request:
//! about 190 of its instructions per proxied request
//! (docs/benchmarks.md, "Cost per request").

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// The drain signal of one worker; clones share it.
#[derive(Clone, Default)]
pub(crate) struct Drain(Rc<Inner>);

#[derive(Default)]
struct Inner {
    cancelled: Cell<bool>,
    /// The wakers of the [`Cancelled`] futures waiting now, by key.
    waiters: RefCell<Slab<Waker>>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("cancelled", &self.0.cancelled.get())
            .field("waiting", &self.0.waiters.borrow().len())
            .finish()
    }
}

impl Drain {
    /// A signal not given yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Gives the signal: every waiting [`Cancelled`] is woken, and every
    /// later one is ready at once. Giving it again does nothing.
    pub(crate) fn cancel(&self) {
        if self.0.cancelled.replace(true) {
            return;
        }
        // Taken out before waking: a woken task may run (and drop its
        // future) only later, but nothing is borrowed meanwhile.
        let waiters = std::mem::take(&mut *self.0.waiters.borrow_mut());
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Whether the signal has been given.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.cancelled.get()
    }

    /// Completes when the signal is given (at once if it was).
    pub(crate) fn cancelled(&self) -> Cancelled<'_> {
        Cancelled {
            inner: &self.0,
            key: None,
        }
    }
}

/// The future of [`Drain::cancelled`]. Its waker is kept from its first
/// pending poll until it completes or is dropped; a later poll with the
/// same waker costs a flag check and a comparison.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Cancelled<'a> {
    inner: &'a Inner,
    /// Its place among the waiters, once it has one.
    key: Option<usize>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("cancelled", &self.cancelled.get())
            .finish_non_exhaustive()
    }
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.inner.cancelled.get() {
            // `cancel` has emptied the waiters, this one's key with them.
            this.key = None;
            return Poll::Ready(());
        }
        let mut waiters = this.inner.waiters.borrow_mut();
        match this.key {
            Some(key) => {
                let waker = &mut waiters[key];
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
            }
            None => this.key = Some(waiters.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        // After `cancel` the key is void (the waiters were taken), and no
        // future registers again, so there is nothing to remove.
        if let Some(key) = self.key
            && !self.inner.cancelled.get()
        {
            self.inner.waiters.borrow_mut().remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn waiters_are_woken_once_and_later_ones_are_ready_at_once() {
        let drain = Drain::new();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut a = drain.cancelled();
        assert!(a.key.is_none(), "not registered before its first poll");
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert_eq!(drain.0.waiters.borrow().len(), 1, "one entry per future");
        assert!(!drain.is_cancelled());
        drain.cancel();
        drain.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(drain.is_cancelled());
        assert!(Pin::new(&mut a).poll(&mut cx).is_ready());
        let mut late = drain.cancelled();
        assert!(Pin::new(&mut late).poll(&mut cx).is_ready());
        drop((a, late));
        assert_eq!(drain.0.waiters.borrow().len(), 0);
    }

    #[test]
    fn a_dropped_waiter_leaves_and_a_new_waker_replaces_the_old() {
        let drain = Drain::new();
        let (first, waker1) = counting();
        let (second, waker2) = counting();
        let mut gone = drain.cancelled();
        assert!(
            Pin::new(&mut gone)
                .poll(&mut Context::from_waker(&waker1))
                .is_pending()
        );
        drop(gone);
        assert_eq!(drain.0.waiters.borrow().len(), 0);
        let mut moved = drain.cancelled();
        assert!(
            Pin::new(&mut moved)
                .poll(&mut Context::from_waker(&waker1))
                .is_pending()
        );
        assert!(
            Pin::new(&mut moved)
                .poll(&mut Context::from_waker(&waker2))
                .is_pending()
        );
        drain.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0, "the replaced waker");
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_task_waiting_on_it_finishes_when_it_is_given() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let drain = Drain::new();
                let waiting = {
                    let drain = drain.clone();
                    tokio::task::spawn_local(async move { drain.cancelled().await })
                };
                tokio::task::yield_now().await;
                assert!(!waiting.is_finished());
                drain.cancel();
                waiting.await.unwrap();
            })
            .await;
    }
}
