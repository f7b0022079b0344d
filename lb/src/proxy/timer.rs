//! A timer for deadlines that move forward with every request: armed once
//! and only moved when it fires, so waiting for "`due` or later" costs no
//! timer-wheel operation per request.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// One timer per connection: a client connection's header-read deadline,
/// an upstream connection's response-header deadline. It is allocated
/// when first waited on.
#[derive(Debug, Default)]
pub(crate) struct LazyTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyTimer {
    /// A timer not armed yet.
    pub(crate) const fn new() -> Self {
        Self { sleep: None }
    }

    /// Ready at `due` (not earlier). The timer is moved only when it is
    /// armed later than `due`, or when it fired before `due`.
    pub(crate) fn poll_until(&mut self, cx: &mut Context<'_>, due: Instant) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            if sleep.deadline() > due {
                sleep.as_mut().reset(due);
            }
            ready!(sleep.as_mut().poll(cx));
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(due);
        }
    }

    /// Completes at `due` (not earlier).
    pub(crate) async fn until(&mut self, due: Instant) {
        poll_fn(|cx| self.poll_until(cx, due)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_lazy_timer_fires_at_each_due_time_and_never_early() {
        let mut timer = LazyTimer::new();
        let start = Instant::now();
        timer.until(start + Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // A later deadline on the same timer (the next request).
        timer.until(start + Duration::from_secs(45)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(45));
        // An earlier one than the timer is armed for is honoured too.
        let now = Instant::now();
        let long = now + Duration::from_secs(100);
        let short = now + Duration::from_millis(250);
        tokio::select! {
            () = timer.until(long) => panic!("the long wait finished first"),
            () = tokio::time::sleep_until(short) => {}
        }
        timer.until(now + Duration::from_secs(1)).await;
        assert_eq!(
            now.elapsed(),
            Duration::from_secs(1),
            "not the 100 s it was armed for"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_armed_earlier_than_due_waits_on_to_due() {
        let mut timer = LazyTimer::new();
        let now = Instant::now();
        // Armed for 5 s, abandoned before it fires.
        tokio::select! {
            () = timer.until(now + Duration::from_secs(5)) => panic!("fired early"),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        // A later deadline: it fires at 5 s, is moved, and completes at 20 s.
        timer.until(now + Duration::from_secs(20)).await;
        assert_eq!(now.elapsed(), Duration::from_secs(20));
    }
}
