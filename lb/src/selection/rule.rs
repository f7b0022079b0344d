//! A route rule as the data plane holds it: what it does with a request it
//! matched ([`RuleAction`]) and, for a forward, the exact weighted split over
//! all endpoints of all its backends ([`Forward::pick`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::discovery::route::{
    CookieAffinity, Cors, FixedResponse, HeaderEdits, Redirect, Rewrite, SourceRanges,
};
use crate::discovery::{Origin, Protocol};

use super::schedule::weighted_schedule;
use super::{Policy, Upstream};

/// The filters of a rule that has some (a rule without any has none at
/// all, so the hot path checks one pointer).
#[derive(Debug, Default)]
pub struct RuleFilters {
    /// Edits of the request headers (never of those the LB manages).
    pub request_headers: HeaderEdits,
    /// Edits of the response headers.
    pub response_headers: HeaderEdits,
    /// Host and path rewrites.
    pub rewrite: Option<Rewrite>,
    /// Client allow- and deny-lists.
    pub source: Option<SourceRanges>,
    /// CORS.
    pub cors: Option<Cors>,
    /// Request body limit.
    pub max_body_bytes: Option<u64>,
    /// Cookie affinity.
    pub affinity: Option<CookieAffinity>,
}

/// One rule of one route, compiled.
#[derive(Debug)]
pub struct RouteRule {
    /// The object it came from.
    pub origin: Arc<Origin>,
    /// Its index in that object's rules.
    pub index: usize,
    /// Its name in logs (the access log's `route`): the upstream's name for
    /// the `Upstream` shape, else `namespace/name` and the rule (`#index`,
    /// or `#name` when the rule has one).
    pub label: Arc<str>,
    /// Its filters, when it has any.
    pub filters: Option<Box<RuleFilters>>,
    /// What it does.
    pub action: RuleAction,
}

impl RouteRule {
    /// Whether the rule is a plain forward: no filters, every backend
    /// HTTP/1.1 (what the fast path serves without looking further).
    #[inline]
    pub fn is_plain_h1(&self) -> bool {
        self.filters.is_none() && matches!(&self.action, RuleAction::Forward(f) if f.all_http1)
    }

    /// The forward, if the rule forwards.
    pub fn forward(&self) -> Option<&Forward> {
        match &self.action {
            RuleAction::Forward(f) => Some(f),
            _ => None,
        }
    }
}

/// What a rule does with a request.
#[derive(Debug)]
pub enum RuleAction {
    /// Forward to weighted backends.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    Respond(FixedResponse),
}

/// One slot of a weighted schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Endpoint `endpoint` of backend `backend`.
    Endpoint { backend: u32, endpoint: u32 },
    /// A backend without endpoints: `503`.
    Empty { backend: u32 },
    /// An invalid backend reference: `500`.
    Invalid,
}

/// A forward to weighted backends.
#[derive(Debug)]
pub struct Forward {
    /// The backends (endpoint sets), each with its effective policy.
    pub backends: Box<[(Arc<Upstream>, Policy)]>,
    /// Every backend speaks HTTP/1.1.
    pub all_http1: bool,
    how: How,
}

#[derive(Debug)]
enum How {
    /// One backend takes everything: its own cursor and schedule (exactly
    /// the `Upstream` case, shared by every rule that forwards only to it).
    Single,
    /// Nothing can be forwarded: `500`.
    Nothing,
    /// A weighted schedule over the endpoints of several backends (and
    /// invalid shares), with the rule's own cursor.
    Weighted {
        schedule: Box<[Slot]>,
        cursor: Arc<AtomicUsize>,
    },
}

/// One share of a forward, as [`Forward::new`] takes it.
#[derive(Debug)]
pub enum Share {
    /// A backend and its weight.
    Backend(Arc<Upstream>, u32),
    /// An invalid reference and its weight.
    Invalid(u32),
}

/// Where a request goes, by [`Forward::pick`].
#[derive(Debug, Clone, Copy)]
pub enum Pick<'r> {
    /// Endpoint `idx` of `upstream`, attempted with `policy`.
    Endpoint {
        /// The backend.
        upstream: &'r Upstream,
        /// The endpoint's index in it.
        idx: usize,
        /// The effective policy.
        policy: &'r Policy,
    },
    /// The share of a backend without endpoints (`503`).
    NoEndpoints(&'r Upstream),
    /// The share of an invalid backend reference (`500`).
    Invalid,
    /// No backend at all, or every weight 0 (`500`).
    NoBackends,
}

impl Forward {
    /// A forward over these shares (weight 0 takes nothing); `cursor`
    /// carries a weighted rule's rotation across table rebuilds.
    pub fn new(shares: Vec<(Share, Policy)>, cursor: Arc<AtomicUsize>) -> Self {
        let live: Vec<&(Share, Policy)> = shares
            .iter()
            .filter(|(s, _)| match s {
                Share::Backend(_, w) | Share::Invalid(w) => *w > 0,
            })
            .collect();
        let mut backends: Vec<(Arc<Upstream>, Policy)> = Vec::new();
        let mut share_weights: Vec<(Option<u32>, u64)> = Vec::new();
        for (share, policy) in &live {
            match share {
                Share::Backend(u, w) => {
                    let at = match backends.iter().position(|(b, _)| Arc::ptr_eq(b, u)) {
                        Some(i) => i,
                        None => {
                            backends.push((u.clone(), policy.clone()));
                            backends.len() - 1
                        }
                    };
                    share_weights.push((Some(at as u32), u64::from(*w)));
                }
                Share::Invalid(w) => share_weights.push((None, u64::from(*w))),
            }
        }
        let all_http1 = backends.iter().all(|(b, _)| b.protocol == Protocol::Http1);
        let how = match (&share_weights[..], backends.len()) {
            ([], _) => How::Nothing,
            ([(Some(_), _)], 1) => How::Single,
            // The same backend twice and nothing else: still one backend.
            (all, 1) if all.iter().all(|(b, _)| b.is_some()) => How::Single,
            _ => How::Weighted {
                schedule: schedule(&backends, &share_weights),
                cursor,
            },
        };
        // Backends referenced by a weight-0 share only are still listed
        // (their endpoints exist in the table), but get no traffic.
        for (share, policy) in &shares {
            if let Share::Backend(u, 0) = share
                && !backends.iter().any(|(b, _)| Arc::ptr_eq(b, u))
            {
                backends.push((u.clone(), policy.clone()));
            }
        }
        Forward {
            backends: backends.into_boxed_slice(),
            all_http1,
            how,
        }
    }

    /// The next target: one atomic add on the cursor (the backend's for a
    /// single backend, the rule's for a weighted split), skipping ejected
    /// endpoints (when every scheduled endpoint is ejected, the scheduled
    /// one is used anyway).
    #[inline]
    pub fn pick(&self) -> Pick<'_> {
        match &self.how {
            How::Single => {
                let (upstream, policy) = &self.backends[0];
                match upstream.pick() {
                    Some(idx) => Pick::Endpoint {
                        upstream,
                        idx,
                        policy,
                    },
                    None => Pick::NoEndpoints(upstream),
                }
            }
            How::Nothing => Pick::NoBackends,
            How::Weighted { schedule, cursor } => self.pick_weighted(schedule, cursor),
        }
    }

    fn pick_weighted<'r>(&'r self, schedule: &[Slot], cursor: &AtomicUsize) -> Pick<'r> {
        let len = schedule.len();
        let start = cursor.fetch_add(1, Ordering::Relaxed) % len;
        let slot = |i: usize| schedule[(start + i) % len];
        let resolve = |s: Slot| match s {
            Slot::Endpoint { backend, endpoint } => {
                let (upstream, policy) = &self.backends[backend as usize];
                Pick::Endpoint {
                    upstream,
                    idx: endpoint as usize,
                    policy,
                }
            }
            Slot::Empty { backend } => Pick::NoEndpoints(&self.backends[backend as usize].0),
            Slot::Invalid => Pick::Invalid,
        };
        let available = |s: Slot| match s {
            Slot::Endpoint { backend, endpoint } => {
                self.backends[backend as usize].0.endpoints[endpoint as usize].is_available()
            }
            _ => true,
        };
        let first = slot(0);
        if available(first) {
            return resolve(first);
        }
        // Skip ejected endpoints, but only to another endpoint of the same
        // backend, so the split between backends stays as configured.
        let Slot::Endpoint { backend, .. } = first else {
            return resolve(first);
        };
        (1..len)
            .map(slot)
            .find(|s| {
                matches!(s, Slot::Endpoint { backend: b, .. } if *b == backend) && available(*s)
            })
            .map_or_else(|| resolve(first), resolve)
    }
}

/// The weighted schedule of a forward: each share's weight spread over its
/// backend's endpoints by their own weights, exactly (scaled to a common
/// denominator, then reduced), in smooth weighted round-robin order.
fn schedule(backends: &[(Arc<Upstream>, Policy)], shares: &[(Option<u32>, u64)]) -> Box<[Slot]> {
    // Each backend's total endpoint weight; a backend's share of w becomes
    // w × e / total for each endpoint of weight e. With L the lcm of the
    // totals, w × e × (L / total) keeps everything integral.
    let totals: Vec<u64> = backends
        .iter()
        .map(|(b, _)| b.endpoints.iter().map(|e| u64::from(e.weight)).sum())
        .collect();
    let lcm = totals
        .iter()
        .filter(|t| **t > 0)
        .fold(1u64, |acc, t| lcm(acc, *t));
    let mut slots = Vec::new();
    let mut weights: Vec<u128> = Vec::new();
    for (backend, w) in shares {
        match backend {
            Some(b) if totals[*b as usize] > 0 => {
                let scale = u128::from(lcm / totals[*b as usize]);
                for (i, e) in backends[*b as usize].0.endpoints.iter().enumerate() {
                    slots.push(Slot::Endpoint {
                        backend: *b,
                        endpoint: i as u32,
                    });
                    weights.push(u128::from(*w) * u128::from(e.weight) * scale);
                }
            }
            Some(b) => {
                slots.push(Slot::Empty { backend: *b });
                weights.push(u128::from(*w) * u128::from(lcm));
            }
            None => {
                slots.push(Slot::Invalid);
                weights.push(u128::from(*w) * u128::from(lcm));
            }
        }
    }
    weighted_schedule(&weights)
        .iter()
        .map(|i| slots[*i as usize])
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The least common multiple, saturating (a saturated one only makes the
/// schedule's scaling inexact, see `weighted_schedule`).
fn lcm(a: u64, b: u64) -> u64 {
    (a / gcd(a, b)).saturating_mul(b)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use super::*;
    use crate::discovery::RouteMatch;
    use crate::metrics::Metrics;
    use crate::selection::{Endpoint, Strategy};

    fn upstream(name: &str, ports: &[u16]) -> Arc<Upstream> {
        upstream_weighted(name, &ports.iter().map(|p| (*p, 1)).collect::<Vec<_>>())
    }

    fn upstream_weighted(name: &str, eps: &[(u16, u32)]) -> Arc<Upstream> {
        let metrics = Metrics::new(1);
        let endpoints = eps
            .iter()
            .map(|(p, w)| {
                let addr: SocketAddr = ([127, 0, 0, 1], *p).into();
                Arc::new(Endpoint::new(name, addr, None, *w, &metrics))
            })
            .collect();
        Arc::new(Upstream::new(
            name.into(),
            RouteMatch::default(),
            endpoints,
            Policy::default(),
            Strategy::RoundRobin,
            Arc::new(AtomicUsize::new(0)),
        ))
    }

    fn forward(shares: Vec<Share>) -> Forward {
        Forward::new(
            shares.into_iter().map(|s| (s, Policy::default())).collect(),
            Arc::new(AtomicUsize::new(0)),
        )
    }

    /// Outcomes of `n` picks: endpoint port, or 0 for invalid, 1 for
    /// empty, 2 for nothing.
    fn counts(f: &Forward, n: usize) -> HashMap<u16, usize> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let k = match f.pick() {
                Pick::Endpoint { upstream, idx, .. } => upstream.endpoints[idx].addr.port(),
                Pick::Invalid => 0,
                Pick::NoEndpoints(_) => 1,
                Pick::NoBackends => 2,
            };
            *out.entry(k).or_default() += 1;
        }
        out
    }

    #[test]
    fn eighty_twenty_is_exact_over_every_hundred() {
        let f = forward(vec![
            Share::Backend(upstream("a", &[10]), 80),
            Share::Backend(upstream("b", &[20]), 20),
        ]);
        for _ in 0..3 {
            let c = counts(&f, 100);
            assert_eq!((c[&10], c[&20]), (80, 20), "{c:?}");
        }
    }

    #[test]
    fn a_backends_weight_is_spread_over_its_endpoints() {
        // 3 endpoints behind the 80, 1 behind the 20: 80 % of requests
        // still go to the first backend, a third of them to each endpoint.
        let f = forward(vec![
            Share::Backend(upstream("a", &[10, 11, 12]), 80),
            Share::Backend(upstream("b", &[20]), 20),
        ]);
        let c = counts(&f, 1500);
        assert_eq!((c[&10], c[&11], c[&12], c[&20]), (400, 400, 400, 300));
        // Endpoint weights inside a backend count too.
        let f = forward(vec![
            Share::Backend(upstream_weighted("a", &[(10, 3), (11, 1)]), 1),
            Share::Backend(upstream("b", &[20, 21]), 1),
        ]);
        let c = counts(&f, 800);
        assert_eq!((c[&10], c[&11], c[&20], c[&21]), (300, 100, 200, 200));
    }

    #[test]
    fn weight_zero_gets_nothing_and_invalid_shares_answer_in_proportion() {
        let f = forward(vec![
            Share::Backend(upstream("a", &[10]), 1),
            Share::Backend(upstream("z", &[30]), 0),
            Share::Invalid(1),
        ]);
        let c = counts(&f, 100);
        assert_eq!((c[&10], c[&0]), (50, 50));
        assert!(!c.contains_key(&30));
        assert_eq!(f.backends.len(), 2, "the weight-0 backend is still listed");
        assert!(matches!(
            forward(vec![Share::Invalid(3)]).pick(),
            Pick::Invalid
        ));
        assert!(matches!(forward(vec![]).pick(), Pick::NoBackends));
        assert!(matches!(
            forward(vec![Share::Backend(upstream("a", &[10]), 0)]).pick(),
            Pick::NoBackends
        ));
        // A backend without endpoints answers 503 for its own share only.
        let f = forward(vec![
            Share::Backend(upstream("a", &[10]), 3),
            Share::Backend(upstream("e", &[]), 1),
        ]);
        let c = counts(&f, 400);
        assert_eq!((c[&10], c[&1]), (300, 100));
    }

    #[test]
    fn a_single_backend_uses_its_own_cursor() {
        let a = upstream("a", &[10, 11]);
        let f = forward(vec![Share::Backend(a.clone(), 5)]);
        let g = forward(vec![Share::Backend(a.clone(), 1)]);
        // Two rules to one backend share its rotation: exact over both.
        let mut seen = Vec::new();
        for f in [&f, &g, &f, &g] {
            let Pick::Endpoint { upstream, idx, .. } = f.pick() else {
                panic!()
            };
            seen.push(upstream.endpoints[idx].addr.port());
        }
        assert_eq!(seen, [10, 11, 10, 11]);
        assert!(matches!(f.how, How::Single));
        assert!(f.all_http1);
    }

    #[test]
    fn ejected_endpoints_are_skipped_within_their_backend() {
        let a = upstream("a", &[10, 11]);
        let f = forward(vec![
            Share::Backend(a.clone(), 1),
            Share::Backend(upstream("b", &[20]), 1),
        ]);
        a.endpoints[0].record_connect_failure(1, std::time::Duration::from_secs(60), || true);
        let c = counts(&f, 400);
        assert_eq!((c.get(&10), c[&11], c[&20]), (None, 200, 200));
    }
}
