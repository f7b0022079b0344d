//! Which endpoint gets the next request.
//!
//! The [`Balancer`] turns each discovery snapshot into an immutable
//! [`RoutingTable`] and publishes it with one atomic pointer swap. Requests
//! load the current table, match an [`Upstream`] and pick an endpoint with
//! one `fetch_add` on the upstream's cursor. The cursor and each endpoint's
//! state outlive table rebuilds, so an endpoint-set change neither resets
//! fairness nor disturbs in-flight requests (they hold their own `Arc`s).

mod endpoint;
pub mod route;
pub mod schedule;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tracing::{info, warn};

pub use endpoint::{Endpoint, FailureOutcome};
pub use route::Routes;
pub use schedule::Strategy;

use crate::discovery::{Protocol, RouteMatch, RoutingConfig, UpstreamPolicy};
use crate::metrics::{EndpointStateLabels, Metrics};

/// Effective per-upstream settings: the LB's flags with the upstream's
/// overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed from sending the request to the response head.
    pub response_header_timeout: Duration,
    /// Extra attempts on other endpoints after a retryable failure.
    pub retries: u32,
    /// Consecutive connect failures that eject an endpoint (0 = never).
    pub eject_after: u32,
    /// Base ejection period.
    pub ejection_time: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            response_header_timeout: Duration::from_secs(30),
            retries: 2,
            eject_after: 3,
            ejection_time: Duration::from_secs(5),
        }
    }
}

impl Policy {
    /// These defaults with `over` applied.
    pub fn with(&self, over: &UpstreamPolicy) -> Self {
        Self {
            connect_timeout: over.connect_timeout.unwrap_or(self.connect_timeout),
            response_header_timeout: over
                .response_header_timeout
                .unwrap_or(self.response_header_timeout),
            retries: over.retries.unwrap_or(self.retries),
            eject_after: over.eject_after.unwrap_or(self.eject_after),
            ejection_time: over.ejection_time.unwrap_or(self.ejection_time),
        }
    }
}

/// An upstream in one routing snapshot.
#[derive(Debug)]
pub struct Upstream {
    /// Unique name.
    pub name: Arc<str>,
    /// Match rule.
    pub route: RouteMatch,
    /// Endpoints in rotation.
    pub endpoints: Box<[Arc<Endpoint>]>,
    /// Effective settings.
    pub policy: Policy,
    /// What its endpoints speak.
    pub protocol: Protocol,
    schedule: Box<[u32]>,
    cursor: Arc<AtomicUsize>,
}

impl Upstream {
    /// Builds an upstream. `cursor` is shared with earlier versions of the
    /// same upstream so rotation continues across updates.
    pub fn new(
        name: Arc<str>,
        route: RouteMatch,
        endpoints: Vec<Arc<Endpoint>>,
        policy: Policy,
        strategy: Strategy,
        cursor: Arc<AtomicUsize>,
    ) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        Self {
            name,
            route,
            schedule: strategy.schedule(&weights),
            endpoints: endpoints.into_boxed_slice(),
            policy,
            protocol: Protocol::Http1,
            cursor,
        }
    }

    /// The same, speaking `protocol` to its endpoints.
    pub fn speaking(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Picks the next endpoint index in rotation, skipping ejected endpoints
    /// (if all are ejected, the scheduled one is used anyway). `None` when
    /// the upstream has no endpoints.
    #[inline]
    pub fn pick(&self) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
        let first = self.schedule[start] as usize;
        if self.endpoints[first].is_available() {
            return Some(first);
        }
        (1..len)
            .map(|i| self.schedule[(start + i) % len] as usize)
            .find(|&idx| self.endpoints[idx].is_available())
            .or(Some(first))
    }

    /// The next endpoint after `last` that is not in `tried`, preferring
    /// available ones. Does not move the cursor, so retries do not disturb
    /// the rotation of first attempts.
    pub fn next_untried(&self, last: usize, tried: &[usize]) -> Option<usize> {
        let n = self.endpoints.len();
        let candidates = (1..n)
            .map(|i| (last + i) % n)
            .filter(|idx| !tried.contains(idx));
        let mut fallback = None;
        for idx in candidates {
            if self.endpoints[idx].is_available() {
                return Some(idx);
            }
            fallback.get_or_insert(idx);
        }
        fallback
    }

    /// Number of endpoints not ejected right now.
    pub fn available(&self) -> usize {
        self.endpoints.iter().filter(|e| e.is_available()).count()
    }
}

/// One immutable routing snapshot.
#[derive(Debug, Default)]
pub struct RoutingTable {
    /// Upstreams by name.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Request matcher.
    pub routes: Routes,
    /// Version, incremented on each applied snapshot.
    pub version: u64,
}

#[derive(Debug, Default)]
struct BuildState {
    cursors: HashMap<Arc<str>, Arc<AtomicUsize>>,
    endpoints: HashMap<(Arc<str>, SocketAddr), Arc<Endpoint>>,
    version: u64,
}

/// Owner of the current [`RoutingTable`].
#[derive(Debug)]
pub struct Balancer {
    table: ArcSwap<RoutingTable>,
    /// The version of `table`, stored after it: a cheap change check for
    /// per-worker caches.
    published: AtomicU64,
    defaults: Policy,
    strategy: Strategy,
    metrics: Arc<Metrics>,
    state: Mutex<BuildState>,
}

impl Balancer {
    /// An empty balancer (every request gets 404/503 until `apply`).
    pub fn new(defaults: Policy, metrics: Arc<Metrics>) -> Self {
        Self {
            table: ArcSwap::from_pointee(RoutingTable::default()),
            published: AtomicU64::new(0),
            defaults,
            strategy: Strategy::RoundRobin,
            metrics,
            state: Mutex::new(BuildState::default()),
        }
    }

    /// The current table.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    /// The version of the current table (changes on every `apply`).
    #[inline]
    pub fn version(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// The current table as an owned `Arc`.
    pub fn snapshot(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// The LB-wide defaults.
    pub fn defaults(&self) -> &Policy {
        &self.defaults
    }

    /// The metrics this balancer reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Builds a table from `config` and swaps it in. Endpoints and cursors
    /// that persist keep their state; removed ones are forgotten.
    pub fn apply(&self, config: &RoutingConfig) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut cursors = HashMap::new();
        let mut endpoints = HashMap::new();
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            let cursor = state
                .cursors
                .get(&u.name)
                .cloned()
                .unwrap_or_else(|| Arc::new(AtomicUsize::new(0)));
            cursors.insert(u.name.clone(), cursor.clone());
            let mut eps = Vec::with_capacity(u.endpoints.len());
            for spec in &u.endpoints {
                let key = (u.name.clone(), spec.addr);
                if endpoints.contains_key(&key) {
                    continue; // duplicate address in one upstream
                }
                let ep = match state.endpoints.get(&key) {
                    Some(ep) if ep.weight == spec.weight.max(1) && ep.name == spec.name => {
                        ep.clone()
                    }
                    _ => Arc::new(Endpoint::new(
                        &u.name,
                        spec.addr,
                        spec.name.clone(),
                        spec.weight,
                        &self.metrics,
                    )),
                };
                endpoints.insert(key, ep.clone());
                eps.push(ep);
            }
            upstreams.push(Arc::new(
                Upstream::new(
                    u.name.clone(),
                    u.route.clone(),
                    eps,
                    self.defaults.with(&u.policy),
                    self.strategy,
                    cursor,
                )
                .speaking(u.protocol),
            ));
        }
        for (name, addr) in state.endpoints.keys() {
            if !endpoints.contains_key(&(name.clone(), *addr)) {
                info!(upstream = %name, endpoint = %addr, "endpoint removed");
            }
        }
        for (name, addr) in endpoints.keys() {
            if !state.endpoints.contains_key(&(name.clone(), *addr)) {
                info!(upstream = %name, endpoint = %addr, "endpoint added");
            }
        }
        state.cursors = cursors;
        state.endpoints = endpoints;
        state.version += 1;
        let routes = Routes::new(&upstreams);
        let table = RoutingTable {
            upstreams,
            routes,
            version: state.version,
        };
        let version = table.version;
        self.table.store(Arc::new(table));
        self.published.store(version, Ordering::Release);
        drop(state);
        self.metrics.discovery_updates.inc();
        self.housekeeping();
    }

    /// Readmits endpoints whose ejection expired (logging it) and refreshes
    /// the endpoint-state gauges. Called every second and after `apply`.
    pub fn housekeeping(&self) {
        for u in &self.table.load().upstreams {
            for e in u.endpoints.iter() {
                if e.readmit_if_expired() {
                    info!(upstream = %u.name, endpoint = %e.addr, "endpoint re-admitted after ejection");
                }
            }
        }
        self.refresh_gauges();
    }

    /// Sets the endpoint-state gauges from the current table; changes no
    /// state (what a scrape of `/metrics` calls).
    pub fn refresh_gauges(&self) {
        let table = self.table.load();
        self.metrics.endpoints.clear();
        for u in &table.upstreams {
            let mut ready = 0;
            let mut ejected = 0;
            for e in u.endpoints.iter() {
                if e.is_available() {
                    ready += 1;
                } else {
                    ejected += 1;
                }
            }
            for (state, n) in [("ready", ready), ("ejected", ejected)] {
                self.metrics
                    .endpoints
                    .get_or_create(&EndpointStateLabels {
                        upstream: u.name.to_string(),
                        state,
                    })
                    .set(n);
            }
        }
    }

    /// Records a connect failure of `upstream.endpoints[idx]`, ejecting it if
    /// the policy says so and it is not the last available endpoint.
    pub fn connect_failed(&self, upstream: &Upstream, idx: usize) {
        let ep = &upstream.endpoints[idx];
        let outcome = ep.record_connect_failure(
            upstream.policy.eject_after,
            upstream.policy.ejection_time,
            || upstream.available() > 1,
        );
        match outcome {
            FailureOutcome::Counted => {}
            FailureOutcome::Ejected(period) => {
                self.metrics.ejections.inc();
                warn!(
                    upstream = %upstream.name,
                    endpoint = %ep.addr,
                    seconds = period.as_secs_f64(),
                    "endpoint ejected after consecutive connect failures"
                );
                self.housekeeping();
            }
            FailureOutcome::KeptAsLast => warn!(
                upstream = %upstream.name,
                endpoint = %ep.addr,
                "endpoint keeps failing but is the last available one; not ejecting"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::thread;

    use super::*;

    fn cfg(ports: &[u16]) -> RoutingConfig {
        RoutingConfig::catch_all_local(ports)
    }

    fn balancer(ports: &[u16]) -> Balancer {
        let b = Balancer::new(Policy::default(), Arc::new(Metrics::new(1)));
        b.apply(&cfg(ports));
        b
    }

    fn pick_port(b: &Balancer) -> u16 {
        let t = b.load();
        let u = &t.upstreams[0];
        u.endpoints[u.pick().unwrap()].addr.port()
    }

    #[test]
    fn exact_fairness_under_concurrency() {
        let b = Arc::new(balancer(&[1, 2, 3]));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || {
                    let mut counts = HashMap::<u16, usize>::new();
                    for _ in 0..30_000 {
                        *counts.entry(pick_port(&b)).or_default() += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut total = HashMap::<u16, usize>::new();
        for t in threads {
            for (k, v) in t.join().unwrap() {
                *total.entry(k).or_default() += v;
            }
        }
        assert_eq!(total.len(), 3);
        assert!(total.values().all(|v| *v == 80_000), "{total:?}");
    }

    #[test]
    fn rotation_continues_across_updates() {
        let b = balancer(&[1, 2]);
        assert_eq!(pick_port(&b), 1);
        b.apply(&cfg(&[1, 2])); // same set, new snapshot
        assert_eq!(pick_port(&b), 2, "cursor not reset by a no-op update");
        b.apply(&cfg(&[1, 2, 3]));
        let mut counts = HashMap::<u16, usize>::new();
        for _ in 0..300 {
            *counts.entry(pick_port(&b)).or_default() += 1;
        }
        assert!(counts.values().all(|v| *v == 100), "{counts:?}");
    }

    #[test]
    fn endpoint_state_survives_updates_and_removal_forgets_it() {
        let b = balancer(&[1, 2]);
        let first = b.load().upstreams[0].endpoints[0].clone();
        first.record_response(200);
        b.apply(&cfg(&[2, 1, 3]));
        let t = b.load();
        let again = t.upstreams[0]
            .endpoints
            .iter()
            .find(|e| e.addr.port() == 1)
            .unwrap();
        assert!(Arc::ptr_eq(&first, again));
        b.apply(&cfg(&[2]));
        b.apply(&cfg(&[1, 2]));
        let t = b.load();
        let fresh = t.upstreams[0]
            .endpoints
            .iter()
            .find(|e| e.addr.port() == 1)
            .unwrap();
        assert!(!Arc::ptr_eq(&first, fresh));
    }

    #[test]
    fn ejected_endpoints_are_skipped_but_never_the_last() {
        let b = Balancer::new(
            Policy {
                eject_after: 1,
                ejection_time: Duration::from_secs(60),
                ..Policy::default()
            },
            Arc::new(Metrics::new(1)),
        );
        b.apply(&cfg(&[1, 2]));
        let t = b.load_full();
        let u = &t.upstreams[0];
        b.connect_failed(u, 0);
        assert!(u.endpoints[0].is_ejected());
        for _ in 0..10 {
            assert_eq!(pick_port(&b), 2);
        }
        b.connect_failed(u, 1);
        assert!(u.endpoints[1].is_available(), "last endpoint stays in");
        assert_eq!(b.metrics.ejections.get(), 1);
    }

    #[test]
    fn next_untried_skips_tried_and_prefers_available() {
        let b = balancer(&[1, 2, 3]);
        let t = b.load();
        let u = &t.upstreams[0];
        assert_eq!(u.next_untried(0, &[0]), Some(1));
        assert_eq!(u.next_untried(1, &[0, 1]), Some(2));
        assert_eq!(u.next_untried(2, &[0, 1, 2]), None);
    }

    #[test]
    fn empty_upstream_picks_nothing() {
        let b = balancer(&[]);
        assert_eq!(b.load().upstreams[0].pick(), None);
    }

    impl Balancer {
        fn load_full(&self) -> Arc<RoutingTable> {
            self.snapshot()
        }
    }
}
