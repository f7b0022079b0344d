//! Which endpoint gets the next request.
//!
//! The [`Balancer`] turns each discovery snapshot (routes of the route
//! model, `discovery::route`) into an immutable [`RoutingTable`] and
//! publishes it with one atomic pointer swap. Requests load the current
//! table, match a rule ([`route::Routes::find`]) and pick an endpoint
//! ([`rule::Forward::pick`]) with one `fetch_add` on a cursor: the
//! backend's own when the rule has one backend, the rule's for a weighted
//! split. Cursors and each endpoint's state outlive table rebuilds, so an
//! endpoint-set change neither resets fairness nor disturbs in-flight
//! requests (they hold their own `Arc`s).

mod build;
mod endpoint;
pub mod route;
pub mod rule;
pub mod schedule;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tracing::{info, warn};

pub use endpoint::{Endpoint, FailureOutcome};
pub use route::{Hit, RequestView, Routes};
pub use rule::{Forward, Pick, RouteRule, RuleAction, RuleFilters};
pub use schedule::Strategy;

use crate::discovery::route::RulePolicy;
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
    /// A deadline for the response head across all attempts (a route's
    /// `timeouts.request`); `None`: only the per-attempt timeout.
    pub request_timeout: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            response_header_timeout: Duration::from_secs(30),
            retries: 2,
            eject_after: 3,
            ejection_time: Duration::from_secs(5),
            request_timeout: None,
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
            request_timeout: self.request_timeout,
        }
    }

    /// This policy with a rule's overrides: its retries, its backend
    /// request timeout as the response-header timeout, its request timeout
    /// as the deadline across attempts (a zero duration: no limit).
    pub fn for_rule(&self, rule: &RulePolicy) -> Self {
        /// What "no limit" is (a timer this far out never fires).
        const UNLIMITED: Duration = Duration::from_secs(365 * 24 * 3600);
        let limit = |d: Duration| if d.is_zero() { UNLIMITED } else { d };
        Self {
            retries: rule.retries.unwrap_or(self.retries),
            response_header_timeout: rule
                .backend_request_timeout
                .map_or(self.response_header_timeout, limit),
            request_timeout: rule.request_timeout.map(limit).or(self.request_timeout),
            ..self.clone()
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
    /// The endpoint sets (backends) by name: the `Upstream` shapes first,
    /// in configuration order, then the other routes' backends in order of
    /// first use.
    pub upstreams: Vec<Arc<Upstream>>,
    /// The rules, indexed for matching.
    pub routes: Routes,
    /// Version, incremented on each applied snapshot.
    pub version: u64,
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
    /// What the last build left for the next (see [`build`]).
    state: Mutex<build::Built>,
    /// The endpoint-state gauges no longer match the table (set on every
    /// change of the table or of an endpoint's state; housekeeping
    /// refreshes them only then, so a large table costs nothing per second).
    gauges_stale: AtomicBool,
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
            state: Mutex::new(build::Built::default()),
            gauges_stale: AtomicBool::new(true),
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
    /// that persist keep their state; removed ones are forgotten. A rule
    /// the model calls invalid ([`crate::discovery::Rule::validate`]) is
    /// logged and left out; a backend name used for two different backends
    /// keeps the first.
    pub fn apply(&self, config: &RoutingConfig) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.table.load_full();
        let table = build::table(
            &mut state,
            &previous.routes,
            config,
            &build::Settings {
                defaults: &self.defaults,
                strategy: self.strategy,
                metrics: &self.metrics,
            },
        );
        let version = table.version;
        self.table.store(Arc::new(table));
        self.published.store(version, Ordering::Release);
        self.gauges_stale.store(true, Ordering::Relaxed);
        drop(state);
        drop(previous);
        self.metrics.discovery_updates.inc();
        self.housekeeping();
    }

    /// Readmits endpoints whose ejection expired (logging it) and refreshes
    /// the endpoint-state gauges when something changed. Called every
    /// second and after `apply`.
    pub fn housekeeping(&self) {
        for u in &self.table.load().upstreams {
            for e in u.endpoints.iter() {
                if e.readmit_if_expired() {
                    info!(upstream = %u.name, endpoint = %e.addr, "endpoint re-admitted after ejection");
                    self.gauges_stale.store(true, Ordering::Relaxed);
                }
            }
        }
        if self.gauges_stale.swap(false, Ordering::Relaxed) {
            self.refresh_gauges();
        }
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
                self.gauges_stale.store(true, Ordering::Relaxed);
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

    mod rules {
        //! The route model through the table: matching, precedence,
        //! hostnames, listeners, weights.

        use std::collections::HashMap;

        use http::{HeaderName, Method};

        use super::*;
        use crate::discovery::route::{
            Action, BackendRef, HeaderMatch, HostMatch, ListenerId, Listeners, Match, Order,
            PathMatch, Pattern, Precedence, QueryMatch, Rule, Scope, ValueMatch, WeightedBackend,
        };
        use crate::discovery::{Backend, EndpointSpec, Origin, Route, RouteKind};
        use crate::selection::route::SimpleRequest;

        pub(crate) fn backend(name: &str, ports: &[u16]) -> Arc<Backend> {
            Arc::new(Backend {
                name: name.into(),
                endpoints: ports
                    .iter()
                    .map(|p| EndpointSpec::new(([127, 0, 0, 1], *p).into()))
                    .collect(),
                protocol: Protocol::Http1,
                policy: UpstreamPolicy::default(),
            })
        }

        /// A route `ns/name` created at `created`, for `hosts` (any when
        /// empty), each rule forwarding to a backend named after it.
        pub(crate) fn route(
            name: &str,
            created: Option<i64>,
            hosts: &[&str],
            rules: Vec<Vec<Match>>,
        ) -> Route {
            Route {
                origin: Origin {
                    kind: RouteKind::HttpRoute,
                    namespace: "ns".into(),
                    name: name.into(),
                },
                order: Order { created },
                scopes: vec![Scope {
                    listeners: Listeners::ALL,
                    hostnames: hosts.iter().map(|h| HostMatch::parse(h).unwrap()).collect(),
                }],
                rules: rules
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| Rule::forward(m, backend(&format!("{name}-{i}"), &[1])))
                    .collect(),
            }
        }

        pub(crate) fn table(routes: Vec<Route>) -> Balancer {
            let b = Balancer::new(Policy::default(), Arc::new(Metrics::new(1)));
            b.apply(&RoutingConfig {
                upstreams: vec![],
                routes: routes.into_iter().map(Arc::new).collect(),
            });
            b
        }

        /// The label of the rule that takes the request, on the plain
        /// listener.
        fn find(b: &Balancer, host: &str, req: &SimpleRequest<'_>) -> Option<String> {
            find_on(b, ListenerId::PLAIN, host, req)
        }

        fn find_on(
            b: &Balancer,
            listener: ListenerId,
            host: &str,
            req: &SimpleRequest<'_>,
        ) -> Option<String> {
            let t = b.load();
            t.routes
                .find(listener, Some(host), req)
                .map(|h| h.rule.label.to_string())
        }

        fn get(path: &str) -> SimpleRequest<'_> {
            SimpleRequest::get(path)
        }

        fn header(name: &'static str, value: &str) -> HeaderMatch {
            HeaderMatch {
                name: HeaderName::from_static(name),
                value: ValueMatch::Exact(value.into()),
            }
        }

        #[test]
        fn paths_exact_before_longest_prefix_across_routes() {
            let b = table(vec![
                route("a", Some(1), &[], vec![vec![Match::prefix("/")]]),
                route("b", Some(2), &[], vec![vec![Match::prefix("/foo")]]),
                route("c", Some(3), &[], vec![vec![Match::exact("/foo/bar")]]),
                route("d", Some(4), &[], vec![vec![Match::prefix("/foo/bar/")]]),
            ]);
            assert_eq!(find(&b, "x", &get("/foo/bar")).unwrap(), "ns/c#0");
            assert_eq!(find(&b, "x", &get("/foo/bar/baz")).unwrap(), "ns/d#0");
            assert_eq!(find(&b, "x", &get("/foo/bar/")).unwrap(), "ns/d#0");
            assert_eq!(find(&b, "x", &get("/foo/barn")).unwrap(), "ns/b#0");
            assert_eq!(find(&b, "x", &get("/fo")).unwrap(), "ns/a#0");
        }

        #[test]
        fn method_headers_and_query_rank_in_that_order() {
            let with = |m: Match| vec![m];
            let b = table(vec![
                route("plain", Some(1), &[], vec![with(Match::prefix("/p"))]),
                route(
                    "query",
                    Some(2),
                    &[],
                    vec![with(Match {
                        query: vec![QueryMatch {
                            name: "q".into(),
                            value: ValueMatch::Exact("1".into()),
                        }],
                        ..Match::prefix("/p")
                    })],
                ),
                route(
                    "header",
                    Some(3),
                    &[],
                    vec![with(Match {
                        headers: vec![header("x-a", "1")],
                        ..Match::prefix("/p")
                    })],
                ),
                route(
                    "headers",
                    Some(4),
                    &[],
                    vec![with(Match {
                        headers: vec![header("x-a", "1"), header("x-b", "2")],
                        ..Match::prefix("/p")
                    })],
                ),
                route(
                    "method",
                    Some(5),
                    &[],
                    vec![with(Match {
                        method: Some(Method::POST),
                        ..Match::prefix("/p")
                    })],
                ),
            ]);
            let req = |method, headers, query| SimpleRequest {
                method,
                path: "/p",
                query,
                headers,
            };
            let both = [("x-a", "1"), ("x-b", "2")];
            assert_eq!(
                find(&b, "h", &req("POST", &both, Some("q=1"))).unwrap(),
                "ns/method#0"
            );
            assert_eq!(
                find(&b, "h", &req("GET", &both, Some("q=1"))).unwrap(),
                "ns/headers#0"
            );
            assert_eq!(
                find(&b, "h", &req("GET", &both[..1], Some("q=1"))).unwrap(),
                "ns/header#0"
            );
            assert_eq!(
                find(&b, "h", &req("GET", &[], Some("a=2&q=1"))).unwrap(),
                "ns/query#0"
            );
            assert_eq!(
                find(&b, "h", &req("GET", &[], Some("q=2"))).unwrap(),
                "ns/plain#0"
            );
            // Header names are case-insensitive, values are not.
            assert_eq!(
                find(&b, "h", &req("GET", &[("X-A", "1")], None)).unwrap(),
                "ns/header#0"
            );
            assert_eq!(
                find(&b, "h", &req("GET", &[("x-a", "X")], None)).unwrap(),
                "ns/plain#0"
            );
        }

        #[test]
        fn ties_go_to_the_oldest_then_by_name_then_rule_order() {
            let b = table(vec![
                route("young", Some(20), &[], vec![vec![Match::prefix("/")]]),
                route("old", Some(10), &[], vec![vec![Match::prefix("/")]]),
            ]);
            assert_eq!(find(&b, "h", &get("/")).unwrap(), "ns/old#0");
            let b = table(vec![
                route("b", Some(10), &[], vec![vec![Match::prefix("/")]]),
                route("a", Some(10), &[], vec![vec![Match::prefix("/")]]),
            ]);
            assert_eq!(find(&b, "h", &get("/")).unwrap(), "ns/a#0");
            let b = table(vec![route(
                "r",
                None,
                &[],
                vec![vec![Match::prefix("/x")], vec![Match::prefix("/x")]],
            )]);
            assert_eq!(find(&b, "h", &get("/x")).unwrap(), "ns/r#0");
        }

        #[test]
        fn hostnames_exact_then_longest_wildcard_then_any_falling_through() {
            let b = table(vec![
                route("any", Some(1), &[], vec![vec![Match::prefix("/")]]),
                route(
                    "wild",
                    Some(2),
                    &["*.example.com"],
                    vec![vec![Match::prefix("/")]],
                ),
                route(
                    "deep",
                    Some(3),
                    &["*.b.example.com"],
                    vec![vec![Match::prefix("/")]],
                ),
                route(
                    "exact",
                    Some(4),
                    &["a.b.example.com"],
                    vec![vec![Match::prefix("/only")]],
                ),
            ]);
            assert_eq!(
                find(&b, "a.b.example.com", &get("/only/x")).unwrap(),
                "ns/exact#0"
            );
            assert_eq!(
                find(&b, "A.B.Example.COM:8080", &get("/only")).unwrap(),
                "ns/exact#0",
                "case and port do not matter"
            );
            assert_eq!(
                find(&b, "a.b.example.com", &get("/other")).unwrap(),
                "ns/deep#0",
                "no match under the exact name: the longest wildcard"
            );
            assert_eq!(find(&b, "c.example.com", &get("/")).unwrap(), "ns/wild#0");
            assert_eq!(
                find(&b, "example.com", &get("/")).unwrap(),
                "ns/any#0",
                "a wildcard needs one more label"
            );
            assert_eq!(find(&b, "other.org", &get("/")).unwrap(), "ns/any#0");
            let no_any = table(vec![route("exact", None, &["a.example"], vec![vec![]])]);
            assert_eq!(find(&no_any, "b.example", &get("/")), None, "404");
            assert_eq!(
                find(&no_any, "a.example", &get("/anything")).unwrap(),
                "ns/exact#0"
            );
        }

        #[test]
        fn scopes_pick_listeners() {
            let mut tls_only = route("tls", None, &[], vec![vec![Match::prefix("/")]]);
            tls_only.scopes[0].listeners = Listeners::only(ListenerId::TLS);
            let mut two = route("two", None, &["a.example"], vec![vec![Match::prefix("/")]]);
            two.scopes = vec![
                Scope {
                    listeners: Listeners::only(ListenerId::PLAIN),
                    hostnames: vec![HostMatch::parse("a.example").unwrap()],
                },
                Scope {
                    listeners: Listeners::only(ListenerId(5)),
                    hostnames: vec![],
                },
            ];
            let b = table(vec![tls_only, two]);
            assert_eq!(
                find_on(&b, ListenerId::TLS, "h", &get("/")).unwrap(),
                "ns/tls#0"
            );
            assert_eq!(find_on(&b, ListenerId::PLAIN, "h", &get("/")), None);
            assert_eq!(
                find_on(&b, ListenerId::PLAIN, "a.example", &get("/")).unwrap(),
                "ns/two#0"
            );
            assert_eq!(
                find_on(&b, ListenerId(5), "zzz", &get("/")).unwrap(),
                "ns/two#0"
            );
            assert_eq!(find_on(&b, ListenerId(6), "a.example", &get("/")), None);
        }

        #[test]
        fn regex_paths_rank_by_length_among_prefixes() {
            let regex = |p: &str| Match {
                path: PathMatch::Regex(Pattern::new(p).unwrap()),
                ..Match::default()
            };
            let b = table(vec![
                route("root", None, &[], vec![vec![Match::prefix("/")]]),
                route("re", None, &[], vec![vec![regex("/v[0-9]+/.*")]]),
                route(
                    "long",
                    None,
                    &[],
                    vec![vec![Match::prefix("/v1/users/admin")]],
                ),
            ]);
            assert_eq!(find(&b, "h", &get("/v2/x")).unwrap(), "ns/re#0");
            assert_eq!(
                find(&b, "h", &get("/v1/users/admin/1")).unwrap(),
                "ns/long#0"
            );
            assert_eq!(find(&b, "h", &get("/vx/x")).unwrap(), "ns/root#0");
        }

        /// Many rules under one host use the index; its answers must be
        /// the scan's.
        #[test]
        fn a_large_bucket_answers_as_a_scan_would() {
            let mut routes = Vec::new();
            let segments = ["", "/a", "/a/b", "/a/b/c", "/b", "/a/bc", "/x/y"];
            for (i, seg) in segments.iter().enumerate() {
                for (j, kind) in ["exact", "prefix", "prefix-method"].iter().enumerate() {
                    let path = if seg.is_empty() { "/" } else { seg };
                    let m = match *kind {
                        "exact" => Match::exact(path),
                        "prefix" => Match::prefix(path),
                        _ => Match {
                            method: Some(Method::POST),
                            ..Match::prefix(path)
                        },
                    };
                    routes.push(route(
                        &format!("r{i}-{j}"),
                        Some((i * 10 + j) as i64),
                        &["big.example"],
                        vec![vec![m]],
                    ));
                }
            }
            let indexed = table(routes.clone());
            assert!(indexed.load().routes.len() > route::SCAN_LIMIT_FOR_TESTS);
            // The reference: every match of the model sorted by its
            // precedence, the first that holds wins.
            let mut all: Vec<(Precedence<'_>, &Route, &Match)> = Vec::new();
            for r in &routes {
                for (ri, rule) in r.rules.iter().enumerate() {
                    for (mi, m) in rule.matches.iter().enumerate() {
                        all.push((Precedence::of(r, ri, m, mi), r, m));
                    }
                }
            }
            all.sort_by(|a, b| a.0.cmp(&b.0));
            for path in [
                "/", "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/a/b/c/d", "/a/bc", "/a/bcd", "/b",
                "/bb", "/x", "/x/y", "/x/y/z", "/zzz", "*", "x/y",
            ] {
                for method in ["GET", "POST"] {
                    let req = SimpleRequest {
                        method,
                        ..SimpleRequest::get(path)
                    };
                    let want = all
                        .iter()
                        .find(|(_, _, m)| {
                            let path_ok = match &m.path {
                                PathMatch::Exact(p) => **p == *path,
                                PathMatch::Prefix(p) => {
                                    crate::discovery::route::prefix_matches(p, path)
                                }
                                PathMatch::Regex(r) => r.is_match(path),
                            };
                            path_ok && m.method.as_ref().is_none_or(|x| x.as_str() == method)
                        })
                        .map(|(_, r, _)| format!("ns/{}#0", r.origin.name));
                    assert_eq!(find(&indexed, "big.example", &req), want, "{method} {path}");
                }
            }
        }

        fn weighted(name: &str, shares: Vec<(Arc<Backend>, u32)>) -> Route {
            let mut r = route(name, None, &[], vec![vec![]]);
            r.rules[0].action = Action::Forward(
                shares
                    .into_iter()
                    .map(|(b, weight)| WeightedBackend {
                        weight,
                        target: BackendRef::Resolved(b),
                    })
                    .collect(),
            );
            r
        }

        fn picks(b: &Balancer, n: usize) -> HashMap<u16, usize> {
            let mut out = HashMap::new();
            for _ in 0..n {
                let t = b.load();
                let hit = t.routes.find(ListenerId::PLAIN, None, &get("/")).unwrap();
                let Pick::Endpoint { upstream, idx, .. } = hit.rule.forward().unwrap().pick()
                else {
                    panic!("no endpoint")
                };
                *out.entry(upstream.endpoints[idx].addr.port()).or_default() += 1;
            }
            out
        }

        #[test]
        fn a_weighted_rules_rotation_survives_updates() {
            let cfg = || {
                weighted(
                    "w",
                    vec![(backend("a", &[10]), 80), (backend("b", &[20]), 20)],
                )
            };
            let b = table(vec![cfg()]);
            let first = picks(&b, 37);
            b.apply(&RoutingConfig {
                upstreams: vec![],
                routes: vec![Arc::new(cfg())],
            });
            let rest = picks(&b, 63);
            assert_eq!(
                first[&10] + rest[&10],
                80,
                "the cursor carried over: exact over the 100"
            );
        }

        #[test]
        fn rules_that_share_a_backend_share_its_endpoints() {
            let shared = backend("svc", &[10, 11]);
            let mut r = route(
                "r",
                None,
                &[],
                vec![vec![Match::prefix("/a")], vec![Match::prefix("/b")]],
            );
            for rule in &mut r.rules {
                rule.action = Action::Forward(vec![WeightedBackend {
                    weight: 1,
                    target: BackendRef::Resolved(shared.clone()),
                }]);
            }
            let b = table(vec![r]);
            let t = b.load();
            assert_eq!(t.upstreams.len(), 1, "one endpoint set");
            let mut seen = Vec::new();
            for path in ["/a", "/b", "/a", "/b"] {
                let hit = t.routes.find(ListenerId::PLAIN, None, &get(path)).unwrap();
                let Pick::Endpoint { upstream, idx, .. } = hit.rule.forward().unwrap().pick()
                else {
                    panic!()
                };
                seen.push(upstream.endpoints[idx].addr.port());
            }
            assert_eq!(seen, [10, 11, 10, 11], "one rotation across both rules");
        }

        #[test]
        fn invalid_rules_are_left_out_and_name_clashes_keep_the_first() {
            let mut bad = route(
                "bad",
                None,
                &[],
                vec![vec![Match::exact("/x")], vec![Match::prefix("/")]],
            );
            bad.rules[0].filters.rewrite = Some(crate::discovery::route::Rewrite {
                hostname: None,
                path: Some(crate::discovery::route::PathRewrite::ReplacePrefix(
                    "/y".into(),
                )),
            });
            let mut clash = route("clash", None, &["c.example"], vec![vec![]]);
            clash.rules[0] = Rule::forward(vec![], backend("bad-1", &[99]));
            let b = table(vec![bad, clash]);
            let t = b.load();
            assert_eq!(t.routes.len(), 2, "the invalid rule is left out");
            assert_eq!(find(&b, "h", &get("/x")).unwrap(), "ns/bad#1");
            let hit = t
                .routes
                .find(ListenerId::PLAIN, Some("c.example"), &get("/"))
                .unwrap();
            let Pick::Endpoint { upstream, idx, .. } = hit.rule.forward().unwrap().pick() else {
                panic!()
            };
            assert_eq!(
                upstream.endpoints[idx].addr.port(),
                1,
                "the first bad-1 backend"
            );
        }

        /// What a table does, as far as a request can tell: for each probe,
        /// the rule that takes it and where its forward goes; and the
        /// endpoint sets in order.
        fn behaviour(b: &Balancer) -> Vec<String> {
            let t = b.load();
            let mut out: Vec<String> = t
                .upstreams
                .iter()
                .map(|u| {
                    let eps: Vec<String> = u.endpoints.iter().map(|e| e.addr.to_string()).collect();
                    format!("set {} {:?}", u.name, eps)
                })
                .collect();
            out.push(format!("{} rules", t.routes.len()));
            for host in ["a.example", "b.example", "c.example", "other.test"] {
                for path in ["/", "/a", "/a/b", "/b", "/c/d"] {
                    for listener in [ListenerId::PLAIN, ListenerId::TLS] {
                        let hit = t.routes.find(listener, Some(host), &get(path));
                        out.push(format!(
                            "{host}{path} {listener:?}: {:?}",
                            hit.map(|h| {
                                let to: Vec<String> = h
                                    .rule
                                    .forward()
                                    .map(|f| {
                                        f.backends.iter().map(|(u, _)| u.name.to_string()).collect()
                                    })
                                    .unwrap_or_default();
                                (h.rule.label.to_string(), to)
                            })
                        ));
                    }
                }
            }
            out
        }

        #[test]
        fn a_table_built_from_the_last_one_is_the_table_built_from_nothing() {
            // A small deterministic generator (no dependency).
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut next = move |n: usize| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((seed >> 33) as usize) % n
            };
            let hosts = ["a.example", "b.example", "*.example", ""];
            let paths = ["/", "/a", "/a/b", "/b", "/c"];
            let listeners = [Listeners::ALL, Listeners::only(ListenerId::TLS)];
            let mut pool: Vec<Arc<Backend>> = (0..4)
                .map(|i| backend(&format!("svc-{i}"), &[10 + i]))
                .collect();
            let mut routes: Vec<Option<Arc<Route>>> = vec![None; 10];
            let incremental = Balancer::new(Policy::default(), Arc::new(Metrics::new(1)));
            for step in 0..400 {
                // Change one to three things.
                for _ in 0..1 + next(3) {
                    match next(4) {
                        0 => {
                            // A backend's endpoints change: every route naming it
                            // gets the new value.
                            let i = next(pool.len());
                            let ports: Vec<u16> =
                                (0..1 + next(3)).map(|_| 10 + next(6) as u16).collect();
                            let new = backend(&format!("svc-{i}"), &ports);
                            for r in routes.iter_mut().flatten() {
                                let mut changed = (**r).clone();
                                let mut touched = false;
                                for rule in &mut changed.rules {
                                    if let Action::Forward(shares) = &mut rule.action {
                                        for s in shares {
                                            if let BackendRef::Resolved(b) = &mut s.target
                                                && b.name == new.name
                                            {
                                                *b = new.clone();
                                                touched = true;
                                            }
                                        }
                                    }
                                }
                                if touched {
                                    *r = Arc::new(changed);
                                }
                            }
                            pool[i] = new;
                        }
                        1 => routes[next(10)] = None,
                        _ => {
                            let name = next(10);
                            let host = hosts[next(hosts.len())];
                            let rules = (0..1 + next(3))
                                .map(|_| {
                                    let m = if next(2) == 0 {
                                        Match::prefix(paths[next(paths.len())])
                                    } else {
                                        Match::exact(paths[next(paths.len())])
                                    };
                                    let shares = (0..1 + next(2))
                                        .map(|_| WeightedBackend {
                                            weight: 1 + next(3) as u32,
                                            target: BackendRef::Resolved(
                                                pool[next(pool.len())].clone(),
                                            ),
                                        })
                                        .collect();
                                    let mut rule = Rule::forward(vec![m], pool[0].clone());
                                    rule.action = Action::Forward(shares);
                                    rule
                                })
                                .collect();
                            let mut r =
                                route(&format!("r{name}"), Some(next(3) as i64), &[], vec![]);
                            r.rules = rules;
                            r.scopes = vec![Scope {
                                listeners: listeners[next(2)],
                                hostnames: if host.is_empty() {
                                    vec![]
                                } else {
                                    vec![HostMatch::parse(host).unwrap()]
                                },
                            }];
                            routes[name] = Some(Arc::new(r));
                        }
                    }
                }
                let config = RoutingConfig {
                    upstreams: vec![],
                    routes: routes.iter().flatten().cloned().collect(),
                };
                incremental.apply(&config);
                let fresh = Balancer::new(Policy::default(), Arc::new(Metrics::new(1)));
                fresh.apply(&config);
                assert_eq!(behaviour(&incremental), behaviour(&fresh), "step {step}");
            }
        }

        #[test]
        fn an_unrelated_change_keeps_a_routes_compiled_rules() {
            let a = Arc::new(route(
                "a",
                Some(1),
                &["a.example"],
                vec![vec![Match::prefix("/")]],
            ));
            let b = |port| {
                let mut r = route("b", Some(1), &["b.example"], vec![vec![Match::prefix("/")]]);
                r.rules[0] = Rule::forward(vec![Match::prefix("/")], backend("b-0", &[port]));
                Arc::new(r)
            };
            let t = Balancer::new(Policy::default(), Arc::new(Metrics::new(1)));
            let rule_of = |t: &Balancer, host| {
                let table = t.snapshot();
                let hit = table
                    .routes
                    .find(ListenerId::PLAIN, Some(host), &get("/"))
                    .unwrap();
                Arc::as_ptr(&hit.rule.forward().unwrap().backends[0].0) as usize
            };
            t.apply(&RoutingConfig {
                upstreams: vec![],
                routes: vec![a.clone(), b(1)],
            });
            let (a_before, b_before) = (rule_of(&t, "a.example"), rule_of(&t, "b.example"));
            t.apply(&RoutingConfig {
                upstreams: vec![],
                routes: vec![a.clone(), b(2)],
            });
            assert_eq!(
                rule_of(&t, "a.example"),
                a_before,
                "a's endpoint set is the same one"
            );
            assert_ne!(rule_of(&t, "b.example"), b_before, "b's was made again");
        }

        #[test]
        fn rule_policies_override_the_backends() {
            let mut r = route("r", None, &[], vec![vec![]]);
            r.rules[0].policy = crate::discovery::route::RulePolicy {
                request_timeout: Some(Duration::from_secs(3)),
                backend_request_timeout: Some(Duration::ZERO),
                retries: Some(0),
            };
            let b = table(vec![r]);
            let t = b.load();
            let hit = t.routes.find(ListenerId::PLAIN, None, &get("/")).unwrap();
            let Pick::Endpoint { policy, .. } = hit.rule.forward().unwrap().pick() else {
                panic!()
            };
            assert_eq!(policy.retries, 0);
            assert_eq!(policy.request_timeout, Some(Duration::from_secs(3)));
            assert!(
                policy.response_header_timeout > Duration::from_secs(86_400),
                "zero: no limit"
            );
            assert_eq!(policy.connect_timeout, Policy::default().connect_timeout);
        }
    }

    impl Balancer {
        fn load_full(&self) -> Arc<RoutingTable> {
            self.snapshot()
        }
    }
}
