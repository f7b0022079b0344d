//! The live numbers of the admin page (`/api/stats`): per-endpoint counters
//! since start and over a sliding window.
//!
//! The window is computed from periodic snapshots of the endpoints' own
//! counters (the ones `/metrics` exports), kept in a bounded ring here: a
//! sampler reads them once a second, off the request path, and a request for
//! the document compares the counters now with the oldest snapshot inside
//! the window. Nothing is added to the proxy's hot path.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::discovery::Protocol;
use crate::metrics::histogram::{BUCKETS, quantile};
use crate::selection::Balancer;

/// How often the sampler snapshots the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The longest window a caller may ask for.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);
/// The window used when none is asked for.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Snapshots kept: enough for [`MAX_WINDOW`] plus one.
const RING: usize = (MAX_WINDOW.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 2;
/// Slack when looking for the snapshot that opens a window (the sampler
/// ticks are not exact).
const SLACK: Duration = Duration::from_millis(500);

type Key = (Arc<str>, SocketAddr);
type Latency = [u64; BUCKETS.len() + 1];

/// Counters of one endpoint at one instant: all requests, 5xx.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u64,
    errors_5xx: u64,
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    endpoints: HashMap<Key, Counts>,
    latency: Latency,
}

/// The ring of snapshots and what it reads.
#[derive(Debug)]
pub struct Stats {
    balancer: Arc<Balancer>,
    started: Instant,
    ring: Mutex<VecDeque<Sample>>,
}

impl Stats {
    /// Stats over `balancer`'s table, with an empty ring.
    pub fn new(balancer: Arc<Balancer>) -> Self {
        Self {
            balancer,
            started: Instant::now(),
            ring: Mutex::new(VecDeque::with_capacity(RING)),
        }
    }

    fn read(&self) -> Sample {
        let table = self.balancer.snapshot();
        let mut endpoints = HashMap::new();
        for u in &table.upstreams {
            for e in u.endpoints.iter() {
                let by_class = e.requests_by_class();
                endpoints.insert(
                    (u.name.clone(), e.addr),
                    Counts {
                        requests: by_class.iter().sum(),
                        errors_5xx: by_class[4],
                    },
                );
            }
        }
        Sample {
            at: Instant::now(),
            endpoints,
            latency: self.balancer.metrics().duration.bucket_counts(),
        }
    }

    /// Takes one snapshot into the ring, dropping the oldest beyond its size.
    pub fn sample(&self) {
        let sample = self.read();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// Snapshots every [`SAMPLE_EVERY`] until the last strong reference to
    /// `this` is gone (the admin router was dropped).
    pub async fn run_sampler(this: Weak<Self>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(stats) = this.upgrade() else { return };
            stats.sample();
        }
    }

    /// The document: the current table, its counters since start and over
    /// the last `window` (capped at [`MAX_WINDOW`]; shorter while the ring
    /// fills).
    pub fn doc(&self, window: Duration) -> StatsDoc {
        let window = window.clamp(SAMPLE_EVERY, MAX_WINDOW);
        let now = self.read();
        let table = self.balancer.snapshot();
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        // The snapshots inside the window, oldest first.
        let first = ring
            .iter()
            .position(|s| now.at.saturating_duration_since(s.at) <= window + SLACK)
            .unwrap_or(ring.len());
        let inside: Vec<&Sample> = ring.range(first..).collect();
        let seconds_of = |s: &Sample| now.at.saturating_duration_since(s.at).as_secs_f64();

        let upstreams = table
            .upstreams
            .iter()
            .map(|u| {
                let endpoints: Vec<EndpointStats> = u
                    .endpoints
                    .iter()
                    .map(|e| {
                        let key = (u.name.clone(), e.addr);
                        let counts = now.endpoints.get(&key).copied().unwrap_or_default();
                        // The oldest snapshot in the window that knew this
                        // endpoint (a newer one for an endpoint that appeared
                        // inside the window).
                        let window = inside
                            .iter()
                            .find_map(|s| s.endpoints.get(&key).map(|c| (seconds_of(s), c)))
                            .filter(|(secs, _)| *secs > 0.0)
                            .map(|(secs, base)| {
                                let requests = counts.requests.saturating_sub(base.requests);
                                let errors_5xx = counts.errors_5xx.saturating_sub(base.errors_5xx);
                                EndpointWindow {
                                    seconds: round(secs, 3),
                                    requests,
                                    errors_5xx,
                                    requests_per_second: round(requests as f64 / secs, 2),
                                    errors_5xx_per_second: round(errors_5xx as f64 / secs, 2),
                                    share: None,
                                }
                            });
                        EndpointStats {
                            address: e.addr.to_string(),
                            name: e.name.as_deref().map(str::to_owned),
                            state: if e.is_available() { "ready" } else { "ejected" }.to_owned(),
                            ejected_for_seconds: e.ejected_for().map(|d| round(d.as_secs_f64(), 1)),
                            consecutive_failures: e.consecutive_failures(),
                            weight: e.weight,
                            requests: counts.requests,
                            errors_5xx: counts.errors_5xx,
                            share_since_start: None,
                            window,
                        }
                    })
                    .collect();
                let requests: u64 = endpoints.iter().map(|e| e.requests).sum();
                let window_requests: u64 = endpoints
                    .iter()
                    .filter_map(|e| e.window.as_ref().map(|w| w.requests))
                    .sum();
                let endpoints = endpoints
                    .into_iter()
                    .map(|mut e| {
                        e.share_since_start = share(e.requests, requests);
                        if let Some(w) = e.window.as_mut() {
                            w.share = share(w.requests, window_requests);
                        }
                        e
                    })
                    .collect();
                UpstreamStats {
                    name: u.name.to_string(),
                    host: u.route.host.clone(),
                    path_prefix: u.route.path_prefix.clone(),
                    protocol: match u.protocol {
                        Protocol::Http1 => "http1",
                        Protocol::H2c => "h2c",
                    }
                    .to_owned(),
                    requests,
                    window_requests,
                    endpoints,
                }
            })
            .collect();

        let window_latency = inside.first().map(|base| {
            let mut diff = now.latency;
            for (d, b) in diff.iter_mut().zip(&base.latency) {
                *d = d.saturating_sub(*b);
            }
            Quantiles::of(&diff)
        });
        StatsDoc {
            version: table.version,
            uptime_seconds: round(now.at.duration_since(self.started).as_secs_f64(), 1),
            window_seconds: window.as_secs(),
            window_covered_seconds: inside.first().map(|s| round(seconds_of(s), 3)),
            latency: LatencyDoc {
                scope: "all upstreams".to_owned(),
                window: window_latency.unwrap_or_default(),
                since_start: Quantiles::of(&now.latency),
            },
            upstreams,
        }
    }
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| round(100.0 * part as f64 / whole as f64, 2))
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// `/api/stats`: everything the admin page shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsDoc {
    /// Routing table version.
    pub version: u64,
    /// Seconds since the admin server started.
    pub uptime_seconds: f64,
    /// The window asked for, in seconds.
    pub window_seconds: u64,
    /// The window the numbers cover (shorter while the ring fills); `None`
    /// before the first snapshot.
    pub window_covered_seconds: Option<f64>,
    /// Latency quantiles.
    pub latency: LatencyDoc,
    /// Upstreams in table order.
    pub upstreams: Vec<UpstreamStats>,
}

/// Latency of proxied requests (request head to response head).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyDoc {
    /// What the quantiles cover: `all upstreams` (the LB keeps one
    /// histogram, not one per endpoint).
    pub scope: String,
    /// Over the window.
    pub window: Quantiles,
    /// Since start.
    pub since_start: Quantiles,
}

/// Quantiles estimated from the histogram's buckets.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    /// Observations.
    pub count: u64,
    /// Median, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile, in milliseconds.
    pub p99_ms: Option<f64>,
}

impl Quantiles {
    fn of(counts: &Latency) -> Self {
        let ms = |q| quantile(counts, q).map(|s| round(s * 1000.0, 3));
        Self {
            count: counts.iter().sum(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

/// One upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamStats {
    /// Name.
    pub name: String,
    /// Match host, if any.
    pub host: Option<String>,
    /// Match path prefix, if any.
    pub path_prefix: Option<String>,
    /// `http1` or `h2c`.
    pub protocol: String,
    /// Requests answered by its current endpoints since they appeared.
    pub requests: u64,
    /// The same over the window.
    pub window_requests: u64,
    /// Endpoints in table order.
    pub endpoints: Vec<EndpointStats>,
}

/// One endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointStats {
    /// `ip:port`.
    pub address: String,
    /// DNS or pod name.
    pub name: Option<String>,
    /// `ready` or `ejected`.
    pub state: String,
    /// Time left in the ejection.
    pub ejected_for_seconds: Option<f64>,
    /// Current streak of connect failures.
    pub consecutive_failures: u32,
    /// Weight.
    pub weight: u32,
    /// Requests answered since start, all classes.
    pub requests: u64,
    /// Of which 5xx.
    pub errors_5xx: u64,
    /// Percent of the upstream's requests since start; `None` before any.
    pub share_since_start: Option<f64>,
    /// Over the window; `None` until a snapshot knows the endpoint.
    pub window: Option<EndpointWindow>,
}

/// One endpoint over the window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointWindow {
    /// Seconds covered.
    pub seconds: f64,
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors_5xx: u64,
    /// Requests per second.
    pub requests_per_second: f64,
    /// 5xx per second.
    pub errors_5xx_per_second: f64,
    /// Percent of the upstream's requests in the window; `None` when it had
    /// none.
    pub share: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::RoutingConfig;
    use crate::metrics::Metrics;
    use crate::selection::Policy;

    fn balancer(ports: &[u16]) -> Arc<Balancer> {
        let b = Arc::new(Balancer::new(Policy::default(), Arc::new(Metrics::new(1))));
        apply(&b, ports);
        b
    }

    fn apply(b: &Balancer, ports: &[u16]) {
        b.apply(&RoutingConfig::catch_all_local(ports));
    }

    fn hit(b: &Balancer, port: u16, status: u16, n: usize) {
        let t = b.snapshot();
        let e = t.upstreams[0]
            .endpoints
            .iter()
            .find(|e| e.addr.port() == port)
            .unwrap();
        for _ in 0..n {
            e.record_response(status);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn window_and_since_start() {
        let b = balancer(&[1, 2]);
        let stats = Stats::new(b.clone());
        hit(&b, 1, 200, 100);
        hit(&b, 2, 200, 100);
        let doc = stats.doc(DEFAULT_WINDOW);
        assert_eq!(doc.window_covered_seconds, None, "no snapshot yet");
        assert!(
            doc.upstreams[0]
                .endpoints
                .iter()
                .all(|e| e.window.is_none())
        );
        assert_eq!(doc.upstreams[0].endpoints[0].share_since_start, Some(50.0));

        // Ten seconds of traffic: 30 and 10 requests a second, 5xx on port 2.
        stats.sample();
        for _ in 0..10 {
            tokio::time::advance(SAMPLE_EVERY).await;
            hit(&b, 1, 200, 30);
            hit(&b, 2, 503, 10);
            stats.sample();
        }
        let doc = stats.doc(DEFAULT_WINDOW);
        assert_eq!(doc.window_covered_seconds, Some(10.0));
        let [one, two] = &doc.upstreams[0].endpoints[..] else {
            panic!()
        };
        let (w1, w2) = (one.window.as_ref().unwrap(), two.window.as_ref().unwrap());
        assert_eq!(
            (w1.requests, w1.requests_per_second, w1.share),
            (300, 30.0, Some(75.0))
        );
        assert_eq!(
            (w2.errors_5xx, w2.errors_5xx_per_second, w2.share),
            (100, 10.0, Some(25.0))
        );
        assert_eq!(
            (one.requests, two.requests, two.errors_5xx),
            (400, 200, 100)
        );
        assert_eq!(doc.upstreams[0].window_requests, 400);

        // A shorter window sees only its part.
        let doc = stats.doc(Duration::from_secs(2));
        let w = doc.upstreams[0].endpoints[0].window.clone().unwrap();
        assert_eq!((w.seconds, w.requests), (2.0, 60));

        // An endpoint that appears mid-window is measured from its first
        // snapshot; one that disappears is gone.
        apply(&b, &[2, 3]);
        stats.sample();
        tokio::time::advance(SAMPLE_EVERY).await;
        hit(&b, 3, 200, 5);
        let doc = stats.doc(DEFAULT_WINDOW);
        let eps = &doc.upstreams[0].endpoints;
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1].address, "127.0.0.1:3");
        let w3 = eps[1].window.as_ref().unwrap();
        assert_eq!(
            (w3.seconds, w3.requests, w3.requests_per_second),
            (1.0, 5, 5.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ring_is_bounded_and_old_snapshots_leave_the_window() {
        let b = balancer(&[1]);
        let stats = Stats::new(b.clone());
        for _ in 0..(3 * RING) {
            stats.sample();
            tokio::time::advance(SAMPLE_EVERY).await;
        }
        assert_eq!(stats.ring.lock().unwrap().len(), RING);
        hit(&b, 1, 200, 7);
        let doc = stats.doc(Duration::from_secs(3600));
        assert_eq!(doc.window_seconds, MAX_WINDOW.as_secs(), "capped");
        assert!(doc.window_covered_seconds.unwrap() <= (MAX_WINDOW + SLACK).as_secs_f64());
        assert_eq!(
            doc.upstreams[0].endpoints[0]
                .window
                .as_ref()
                .unwrap()
                .requests,
            7
        );
        // Idle for longer than the window: no snapshot is inside it.
        tokio::time::advance(MAX_WINDOW * 2).await;
        let doc = stats.doc(DEFAULT_WINDOW);
        assert_eq!(doc.window_covered_seconds, None);
        assert_eq!(doc.upstreams[0].endpoints[0].share_since_start, Some(100.0));
    }

    #[tokio::test(start_paused = true)]
    async fn sampler_stops_with_its_owner() {
        let stats = Arc::new(Stats::new(balancer(&[1])));
        let task = tokio::spawn(Stats::run_sampler(Arc::downgrade(&stats)));
        tokio::time::sleep(SAMPLE_EVERY * 3).await;
        assert!(stats.ring.lock().unwrap().len() >= 3);
        drop(stats);
        tokio::time::sleep(SAMPLE_EVERY * 2).await;
        assert!(task.is_finished());
    }

    #[test]
    fn latency_quantiles_over_the_window() {
        let b = balancer(&[1]);
        let stats = Stats::new(b.clone());
        b.metrics().duration.observe(0, Duration::from_millis(40));
        stats.sample();
        for _ in 0..100 {
            b.metrics().duration.observe(0, Duration::from_micros(1500));
        }
        let doc = stats.doc(DEFAULT_WINDOW);
        assert_eq!(doc.latency.since_start.count, 101);
        assert_eq!(doc.latency.window.count, 100);
        let p99 = doc.latency.window.p99_ms.unwrap();
        assert!((1.0..=2.5).contains(&p99), "{p99}");
    }
}
