//! Watches that start over after a failure, and what their health says.
//!
//! kube-runtime's watcher resumes a failed watch from its last
//! resourceVersion, which is cheap but silent: once the API server answers
//! again nothing tells us so until the next change, and its default back-off
//! grows to 30 s during an outage. [`restarting`] instead drops a watcher at
//! its first error and starts a new one (a fresh list, then a watch) after a
//! short back-off ([`super::backoff::WATCH`]), reset when the list completes. The
//! completed list is positive proof that discovery is in sync again, which
//! is what [`Health`] and the `last_sync` gauge report. The old objects stay
//! in service during the re-list (see [`super::store::Buffered`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt, stream};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::backoff::{self, Backoff};
use crate::discovery::Publisher;

/// A [`restarting`] kube-runtime watcher of `api`'s objects with
/// `config`, restarted after [`backoff::WATCH`].
pub fn watching<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    restarting(
        move || watcher::watcher(api.clone(), config.clone()).boxed(),
        backoff::WATCH,
    )
}

/// A stream of `make()`'s items that, after an error, drops the stream and
/// calls `make()` again once `backoff` has passed. The back-off grows with
/// consecutive failures and resets when a list completes (`InitDone`).
pub fn restarting<K, E, S, F>(make: F, backoff: Backoff) -> impl Stream<Item = Result<Event<K>, E>>
where
    F: FnMut() -> S,
    S: Stream<Item = Result<Event<K>, E>> + Unpin,
{
    struct State<F, S> {
        make: F,
        current: Option<S>,
        failures: u32,
        backoff: Backoff,
    }
    let state = State {
        make,
        current: None,
        failures: 0,
        backoff,
    };
    stream::unfold(state, |mut st| async move {
        loop {
            if st.current.is_none() {
                if st.failures > 0 {
                    tokio::time::sleep(st.backoff.delay(st.failures)).await;
                }
                st.current = Some((st.make)());
            }
            let next = st.current.as_mut().expect("set above").next().await;
            match next {
                Some(Ok(event)) => {
                    if matches!(event, Event::InitDone) {
                        st.failures = 0;
                    }
                    return Some((Ok(event), st));
                }
                Some(Err(e)) => {
                    st.current = None;
                    st.failures = st.failures.saturating_add(1);
                    return Some((Err(e), st));
                }
                // A watcher never ends; if one does, start over as after a
                // failure (so an empty stream cannot spin).
                None => {
                    st.current = None;
                    st.failures = st.failures.saturating_add(1);
                }
            }
        }
    })
}

/// How often a persisting watch failure is logged at WARN.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// One watched resource's state.
#[derive(Debug)]
struct Watch {
    resource: &'static str,
    /// A list completed and no error came after it.
    synced: bool,
    /// Consecutive failures.
    failures: u64,
    /// When a failure was last logged at WARN, and how many were not since.
    last_warn: Option<Instant>,
    suppressed: u64,
}

/// The health of the source's watches: counts and logs their failures
/// (rate-limited), and keeps `roundhouse_discovery_last_sync_timestamp_seconds`
/// at "now" while every watch is in sync.
#[derive(Debug)]
pub struct Health {
    watches: Vec<Watch>,
    publisher: Publisher,
}

impl Health {
    /// Health of the watches of `resources`, reported through `publisher`.
    pub fn new(resources: &[&'static str], publisher: Publisher) -> Self {
        for &resource in resources {
            // Export a zero from the start, so `rate()` works at once.
            let _ = publisher
                .metrics()
                .errors
                .get_or_create(&crate::metrics::ResourceLabels { resource });
        }
        Self {
            watches: resources
                .iter()
                .map(|&resource| Watch {
                    resource,
                    synced: false,
                    failures: 0,
                    last_warn: None,
                    suppressed: 0,
                })
                .collect(),
            publisher,
        }
    }

    fn watch(&mut self, resource: &str) -> &mut Watch {
        self.watches
            .iter_mut()
            .find(|w| w.resource == resource)
            .expect("a watched resource")
    }

    /// Records an event of `resource`'s watch.
    pub fn event<K>(&mut self, resource: &'static str, event: &Event<K>) {
        let w = self.watch(resource);
        if matches!(event, Event::InitDone) {
            if w.failures > 0 {
                info!(
                    resource,
                    failures = w.failures,
                    "watch recovered: re-listed after failures"
                );
            }
            w.synced = true;
            w.failures = 0;
            w.last_warn = None;
            w.suppressed = 0;
        }
        self.tick();
    }

    /// Records a failure of `resource`'s watch.
    pub fn failed(&mut self, resource: &'static str, error: &dyn std::fmt::Display) {
        self.publisher.record_error(resource);
        let now = Instant::now();
        let w = self.watch(resource);
        w.synced = false;
        w.failures += 1;
        let due = w
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if due {
            warn!(
                resource,
                error = %error,
                failures = w.failures,
                not_logged = w.suppressed,
                "watch failed; keeping the last known endpoints and starting over with back-off"
            );
            w.last_warn = Some(now);
            w.suppressed = 0;
        } else {
            w.suppressed += 1;
            debug!(resource, error = %error, failures = w.failures, "watch failed again");
        }
    }

    /// True while every watch is in sync.
    pub fn synced(&self) -> bool {
        self.watches.iter().all(|w| w.synced)
    }

    /// Advances the last-sync gauge to now if every watch is in sync.
    pub fn tick(&self) {
        if self.synced() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.publisher.metrics().last_sync.set(now.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::k8s::backoff;
    use std::cell::RefCell;
    use std::rc::Rc;

    type Item = Result<Event<()>, &'static str>;

    fn no_jitter() -> Backoff {
        Backoff {
            jitter: false,
            ..backoff::WATCH
        }
    }

    /// Restarts after errors with a growing, capped delay; a completed list
    /// resets it.
    #[tokio::test(start_paused = true)]
    async fn restarts_with_growing_delay_reset_by_a_complete_list() {
        let t0 = Instant::now();
        let starts: Rc<RefCell<Vec<Duration>>> = Rc::default();
        let mut scripts: Vec<Vec<Item>> = vec![
            vec![Ok(Event::Init), Ok(Event::InitDone), Err("down")],
            vec![Err("down")],
            vec![Err("down")],
            vec![Err("down")],
            vec![Err("down")],
            vec![Err("down")],
            vec![Err("down")],
            vec![Ok(Event::Init), Ok(Event::InitDone), Err("blip")],
            vec![Ok(Event::Init)],
        ];
        scripts.reverse();
        let s = starts.clone();
        let stream = restarting(
            move || {
                s.borrow_mut().push(t0.elapsed());
                stream::iter(scripts.pop().unwrap_or_default())
            },
            no_jitter(),
        );
        let mut stream = std::pin::pin!(stream);
        let mut errors = 0;
        while errors < 8 {
            match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
                Ok(Some(Err(_))) => errors += 1,
                Ok(Some(Ok(_))) => {}
                other => panic!("stream stalled or ended: {other:?}"),
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), stream.next()).await;
        let gaps: Vec<u128> = starts
            .borrow()
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        // 200, 400, 800, 1600, then the 2 s ceiling; after the list that
        // completed, the first delay again.
        assert_eq!(gaps, [200, 400, 800, 1600, 2000, 2000, 2000, 200]);
    }

    /// An ended stream is restarted with back-off, not in a busy loop.
    #[tokio::test(start_paused = true)]
    async fn an_ended_stream_is_restarted_with_back_off() {
        let t0 = Instant::now();
        let mut n = 0;
        let stream = restarting(
            move || {
                n += 1;
                let items: Vec<Item> = if n < 4 { vec![] } else { vec![Ok(Event::Init)] };
                stream::iter(items)
            },
            no_jitter(),
        );
        let mut stream = std::pin::pin!(stream);
        let first = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("an item after restarts");
        assert!(matches!(first, Some(Ok(Event::Init))));
        assert_eq!(t0.elapsed().as_millis(), 200 + 400 + 800);
    }

    #[tokio::test(start_paused = true)]
    async fn health_counts_failures_and_logs_them_rate_limited() {
        let metrics = crate::metrics::DiscoveryMetrics::default();
        let (publisher, _rx) = crate::discovery::channel_with_metrics(metrics.clone());
        let mut h = Health::new(&["endpointslices", "upstreams"], publisher);
        assert!(!h.synced());
        h.event::<()>("endpointslices", &Event::InitDone);
        h.tick();
        assert_eq!(metrics.last_sync.get(), 0.0, "one watch is not synced yet");
        h.event::<()>("upstreams", &Event::InitDone);
        assert!(h.synced());
        assert!(metrics.last_sync.get() > 1.7e9, "now, in Unix seconds");
        for _ in 0..5 {
            h.failed("upstreams", &"connection refused");
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        assert!(!h.synced());
        let count = |r: &'static str| {
            metrics
                .errors
                .get_or_create(&crate::metrics::ResourceLabels { resource: r })
                .get()
        };
        assert_eq!((count("upstreams"), count("endpointslices")), (5, 0));
        let w = h.watch("upstreams");
        assert_eq!(
            (w.failures, w.suppressed),
            (5, 4),
            "one WARN, four not logged"
        );
        tokio::time::advance(LOG_EVERY).await;
        h.failed("upstreams", &"connection refused");
        assert_eq!(
            h.watch("upstreams").suppressed,
            0,
            "logged again a minute later"
        );
        h.event::<()>("upstreams", &Event::InitDone);
        assert!(h.synced());
        assert_eq!(h.watch("upstreams").failures, 0);
    }
}
