//! One endpoint's runtime state: passive health and request counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::metrics::{CLASSES, Metrics, RequestLabels, class_index};

/// What happened to an endpoint after a connect failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Still in rotation.
    Counted,
    /// Taken out of rotation for this long.
    Ejected(Duration),
    /// Reached the threshold but is the last available endpoint: kept.
    KeptAsLast,
}

/// An endpoint and its state. Shared (`Arc`) between routing snapshots, so
/// health and counters survive endpoint-set changes.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Human name (DNS name or pod name).
    pub name: Option<Arc<str>>,
    /// Relative weight.
    pub weight: u32,
    /// What a session-affinity cookie says to name this endpoint: a hash
    /// of the upstream's name and the address, the same on every LB
    /// replica (`affinity_key` in `selection/endpoint.rs`).
    pub affinity_key: u64,
    consecutive_failures: AtomicU32,
    /// 0 = not ejected; else the [`Endpoint::now_ms`] value until which it
    /// is ejected.
    ejected_until: AtomicU64,
    /// The origin of `now_ms` (tokio's clock: the real one in production,
    /// a paused one in tests).
    born: Instant,
    ejections: AtomicU32,
    by_class: [Counter; 5],
}

impl Endpoint {
    /// A new endpoint whose request counters are registered in `metrics`.
    pub fn new(
        upstream: &str,
        addr: SocketAddr,
        name: Option<Arc<str>>,
        weight: u32,
        metrics: &Metrics,
    ) -> Self {
        let endpoint = addr.to_string();
        let by_class = CLASSES.map(|class| {
            metrics.requests.get_or_create_owned(&RequestLabels {
                upstream: upstream.to_owned(),
                endpoint: endpoint.clone(),
                class,
            })
        });
        Self {
            affinity_key: affinity_key(upstream, addr),
            addr,
            name,
            weight: weight.max(1),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            born: Instant::now(),
            by_class,
        }
    }

    /// Milliseconds since this endpoint appeared (never 0).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX / 2) + 1
    }

    /// True unless ejected right now. Costs one atomic load when healthy.
    #[inline]
    pub fn is_available(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || until <= self.now_ms()
    }

    /// True while ejected.
    pub fn is_ejected(&self) -> bool {
        !self.is_available()
    }

    /// How much longer the ejection lasts; `None` when not ejected. For
    /// readers (the admin page), not the hot path.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until != 0 && until > now).then(|| Duration::from_millis(until - now))
    }

    /// Clears an expired ejection; returns true if it did (for logging).
    pub fn readmit_if_expired(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0
            && until <= self.now_ms()
            && self
                .ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Records a response: resets the failure streak and the ejection back-off.
    #[inline]
    pub fn record_response(&self, status: u16) {
        self.by_class[class_index(status)].inc();
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Records a connect failure; ejects after `threshold` in a row for
    /// `base × (number of ejections in a row)`, capped at 10 × base, unless
    /// `can_eject` says this is the last available endpoint.
    pub fn record_connect_failure(
        &self,
        threshold: u32,
        base: Duration,
        can_eject: impl FnOnce() -> bool,
    ) -> FailureOutcome {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold == 0 || n < threshold || self.is_ejected() {
            return FailureOutcome::Counted;
        }
        if !can_eject() {
            return FailureOutcome::KeptAsLast;
        }
        let times = (self.ejections.fetch_add(1, Ordering::Relaxed) + 1).min(10);
        let period = base * times;
        let until = self.now_ms() + u64::try_from(period.as_millis()).unwrap_or(u64::MAX / 2);
        self.ejected_until.store(until, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        FailureOutcome::Ejected(period)
    }

    /// Requests answered by this endpoint, by class `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub fn requests_by_class(&self) -> [u64; 5] {
        [0, 1, 2, 3, 4].map(|i| self.by_class[i].get())
    }

    /// All requests answered by this endpoint.
    pub fn requests(&self) -> u64 {
        self.requests_by_class().iter().sum()
    }

    /// Current streak of connect failures.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

/// The affinity key of the endpoint `addr` of `upstream`: 64-bit FNV-1a of
/// `upstream/addr`. Stable across processes and replicas (a cookie set by
/// one LB pod is honoured by the others), and it does not show the
/// endpoint's address to clients.
pub fn affinity_key(upstream: &str, addr: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let addr = addr.to_string();
    for b in upstream.bytes().chain([b'/']).chain(addr.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_keys_are_stable_and_distinct() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert_eq!(affinity_key("u", a), affinity_key("u", a));
        assert_ne!(affinity_key("u", a), affinity_key("u", b));
        assert_ne!(affinity_key("u", a), affinity_key("v", a));
        // A fixed value (FNV-1a 64 of `u/10.0.0.1:80`): replicas of any
        // build agree.
        assert_eq!(affinity_key("u", a), 0x52ededdb8215348d);
    }

    fn ep() -> Endpoint {
        Endpoint::new(
            "u",
            "127.0.0.1:1".parse().unwrap(),
            None,
            1,
            &Metrics::new(1),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_threshold_and_readmits() {
        let e = ep();
        let base = Duration::from_secs(60);
        assert_eq!(
            e.record_connect_failure(2, base, || true),
            FailureOutcome::Counted
        );
        assert_eq!(
            e.record_connect_failure(2, base, || true),
            FailureOutcome::Ejected(base)
        );
        assert!(e.is_ejected());
        assert_eq!(e.ejected_for(), Some(base));
        e.record_response(200);
        assert!(e.is_ejected(), "a late response does not readmit early");
        assert_eq!(e.requests(), 1);
        tokio::time::advance(base - Duration::from_millis(1)).await;
        assert!(e.is_ejected() && !e.readmit_if_expired(), "1 ms early");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(e.is_available(), "back after exactly the period");
        assert_eq!(e.ejected_for(), None);
        assert!(e.readmit_if_expired());
        assert!(!e.readmit_if_expired(), "readmitted once");
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_ejections_back_off_up_to_ten_times() {
        let e = ep();
        let base = Duration::from_secs(5);
        let mut periods = Vec::new();
        for _ in 0..12 {
            let FailureOutcome::Ejected(p) = e.record_connect_failure(1, base, || true) else {
                panic!("not ejected");
            };
            periods.push(p.as_secs());
            tokio::time::advance(p).await;
            assert!(e.readmit_if_expired());
        }
        assert_eq!(periods, [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 50, 50]);
        // A response resets the back-off.
        e.record_connect_failure(3, base, || true);
        e.record_response(200);
        assert_eq!(
            e.record_connect_failure(1, base, || true),
            FailureOutcome::Ejected(base)
        );
    }

    #[test]
    fn never_ejects_the_last() {
        let e = ep();
        assert_eq!(
            e.record_connect_failure(1, Duration::from_secs(5), || false),
            FailureOutcome::KeptAsLast
        );
        assert!(e.is_available());
    }

    #[test]
    fn success_resets_streak() {
        let e = ep();
        e.record_connect_failure(3, Duration::from_secs(5), || true);
        e.record_connect_failure(3, Duration::from_secs(5), || true);
        e.record_response(502);
        assert_eq!(e.consecutive_failures(), 0);
        assert_eq!(e.requests_by_class()[4], 1);
        assert_eq!(
            e.record_connect_failure(3, Duration::from_secs(5), || true),
            FailureOutcome::Counted
        );
    }

    #[test]
    fn zero_period_ejection_expires() {
        let e = ep();
        assert!(matches!(
            e.record_connect_failure(1, Duration::ZERO, || true),
            FailureOutcome::Ejected(_)
        ));
        assert!(e.is_available());
        assert!(e.readmit_if_expired());
        assert!(!e.readmit_if_expired());
    }
}
