//! Building the next routing table from a snapshot and what the previous
//! build left ([`Built`]), so that a change costs what it touches.
//!
//! Three steps, each reusing what did not change:
//!
//! 1. endpoint sets: a backend whose value (and displayed match) is the
//!    previous one's keeps its [`Upstream`]; a changed one gets a new
//!    [`Upstream`] that carries over its cursor and the state of the
//!    endpoints it keeps;
//! 2. routes: a route equal to the previous one of its origin, none of
//!    whose endpoint sets was remade, keeps its compiled rules; any other is
//!    compiled again (a weighted rule keeps its cursor);
//! 3. the index: only the buckets of the hosts under which a changed,
//!    added or removed route is filed are rebuilt ([`Routes::updated`]).
//!
//! The table is the one a build from nothing would give: the tests build
//! each snapshot both ways and compare.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tracing::{info, warn};

use super::route::{Filed, HostKey, Routes};
use super::rule::{self, Forward, RouteRule, RuleAction, RuleFilters};
use super::{Endpoint, Policy, RoutingTable, Strategy, Upstream};
use crate::discovery::route::{Action, BackendRef, Listeners, Precedence};
use crate::discovery::{Backend, Origin, Route, RouteKind, RouteMatch, RoutingConfig};
use crate::metrics::Metrics;

/// What one build leaves for the next.
#[derive(Debug, Default)]
pub(super) struct Built {
    /// Each endpoint set, by backend name.
    upstreams: HashMap<Arc<str>, Made>,
    /// Each route's compiled rules, by origin (and, for a second route of
    /// the same origin in one snapshot, its rank among them).
    routes: HashMap<(Origin, u32), Compiled>,
    /// The routes filed under each host.
    hosts: HashMap<HostKey, HashSet<(Origin, u32)>>,
    /// Version of the last table.
    pub(super) version: u64,
}

/// An endpoint set and what it was made from.
#[derive(Debug)]
struct Made {
    backend: Arc<Backend>,
    displayed: RouteMatch,
    upstream: Arc<Upstream>,
}

/// One route, compiled.
#[derive(Debug)]
struct Compiled {
    route: Arc<Route>,
    /// Its position in the snapshot.
    position: usize,
    /// Its valid rules, in order.
    rules: Vec<Arc<RouteRule>>,
    /// The cursor of each rule (by index, invalid ones too).
    cursors: Vec<Arc<AtomicUsize>>,
    /// The hosts it is filed under, each with the listeners it applies on.
    hosts: Vec<(HostKey, Listeners)>,
    /// The backends its valid rules name, one per name, in order of use.
    backends: Vec<Arc<Backend>>,
}

/// What a build needs of the balancer.
pub(super) struct Settings<'a> {
    pub(super) defaults: &'a Policy,
    pub(super) strategy: Strategy,
    pub(super) metrics: &'a Metrics,
}

/// The table for `config`, given the previous table's index `previous`
/// and what its build left in `built` (updated for the next one).
pub(super) fn table(
    built: &mut Built,
    previous: &Routes,
    config: &RoutingConfig,
    settings: &Settings<'_>,
) -> RoutingTable {
    let routes: Vec<Arc<Route>> = config.all_routes().collect();
    let displayed: HashMap<&Arc<str>, &RouteMatch> = config
        .upstreams
        .iter()
        .map(|u| (&u.name, &u.route))
        .collect();

    // Keys: the origin, ranked among routes of the same origin.
    let mut keys: Vec<(Origin, u32)> = Vec::with_capacity(routes.len());
    let mut seen: HashSet<(Origin, u32)> = HashSet::with_capacity(routes.len());
    for r in &routes {
        let mut key = (r.origin.clone(), 0);
        while seen.contains(&key) {
            key.1 += 1;
        }
        seen.insert(key.clone());
        keys.push(key);
    }

    // 1. Endpoint sets, in order of first use; the valid rules of a route
    // that is unchanged are known from its last compile.
    let mut made: HashMap<Arc<str>, Made> = HashMap::with_capacity(built.upstreams.len());
    let mut upstreams: Vec<Arc<Upstream>> = Vec::new();
    let mut remade: HashSet<Arc<str>> = HashSet::new();
    let mut fresh: Vec<Option<Vec<Arc<Backend>>>> = Vec::with_capacity(routes.len());
    for (route, key) in routes.iter().zip(&keys) {
        let named = match built.routes.get(key) {
            Some(c) if c.route == *route => {
                fresh.push(None);
                &c.backends
            }
            _ => {
                fresh.push(Some(named_backends(route)));
                fresh.last().and_then(Option::as_ref).expect("pushed")
            }
        };
        for b in named {
            if let Some(m) = made.get(&b.name) {
                if !Arc::ptr_eq(&m.backend, b) && *m.backend != **b {
                    warn!(
                        backend = %b.name,
                        "two different backends share a name; the first one is used"
                    );
                }
                continue;
            }
            let shown = displayed.get(&b.name).map(|m| (*m).clone());
            let shown = shown.unwrap_or_default();
            let old = built.upstreams.get(&b.name);
            let m = match old {
                Some(m)
                    if (Arc::ptr_eq(&m.backend, b) || *m.backend == **b)
                        && m.displayed == shown =>
                {
                    Made {
                        backend: b.clone(),
                        displayed: shown,
                        upstream: m.upstream.clone(),
                    }
                }
                _ => {
                    remade.insert(b.name.clone());
                    let upstream = Arc::new(endpoint_set(
                        b,
                        shown.clone(),
                        old.map(|m| &*m.upstream),
                        settings,
                    ));
                    log_endpoint_changes(&b.name, old.map(|m| &*m.upstream), Some(&upstream));
                    Made {
                        backend: b.clone(),
                        displayed: shown,
                        upstream,
                    }
                }
            };
            upstreams.push(m.upstream.clone());
            made.insert(b.name.clone(), m);
        }
    }
    for (name, m) in &built.upstreams {
        if !made.contains_key(name) {
            log_endpoint_changes(name, Some(&m.upstream), None);
        }
    }

    // 2. Routes.
    let mut dirty: HashSet<HostKey> = HashSet::new();
    let mut compiled: HashMap<(Origin, u32), Compiled> = HashMap::with_capacity(routes.len());
    let mut rules = 0;
    for (position, ((route, key), fresh)) in routes.iter().zip(keys).zip(fresh).enumerate() {
        let old = built.routes.remove(&key);
        let c = match (old, fresh) {
            (Some(mut c), None) if c.backends.iter().all(|b| !remade.contains(&b.name)) => {
                c.route = route.clone();
                c.position = position;
                c
            }
            (old, fresh) => {
                let backends = fresh.unwrap_or_else(|| named_backends(route));
                if let Some(old) = &old {
                    forget(&mut built.hosts, &mut dirty, old, &key);
                }
                let c = compile(route, position, backends, old, &made, settings);
                for (host, _) in &c.hosts {
                    dirty.insert(host.clone());
                    built
                        .hosts
                        .entry(host.clone())
                        .or_default()
                        .insert(key.clone());
                }
                c
            }
        };
        rules += c.rules.len();
        compiled.insert(key, c);
    }
    for (key, old) in std::mem::take(&mut built.routes) {
        forget(&mut built.hosts, &mut dirty, &old, &key);
    }

    // 3. The index: the buckets of the dirty hosts, rebuilt.
    let every_path = crate::discovery::Match::default();
    let buckets: Vec<(&HostKey, Vec<Filed<'_>>)> = dirty
        .iter()
        .map(|host| {
            let mut filed = Vec::new();
            for key in built.hosts.get(host).into_iter().flatten() {
                let c = &compiled[key];
                let listeners = c
                    .hosts
                    .iter()
                    .find(|(h, _)| h == host)
                    .map(|(_, l)| *l)
                    .expect("filed under the host");
                for rule in &c.rules {
                    let matches = &c.route.rules[rule.index].matches;
                    let matches = if matches.is_empty() {
                        std::slice::from_ref(&every_path)
                    } else {
                        &matches[..]
                    };
                    for (i, m) in matches.iter().enumerate() {
                        filed.push(Filed {
                            rule,
                            matched: m,
                            precedence: Precedence::of(&c.route, rule.index, m, i),
                            position: c.position,
                            listeners,
                        });
                    }
                }
            }
            (host, filed)
        })
        .collect();
    let index = previous.updated(buckets, rules);
    built.hosts.retain(|_, keys| !keys.is_empty());
    built.routes = compiled;
    built.upstreams = made;
    built.version += 1;
    RoutingTable {
        upstreams,
        routes: index,
        version: built.version,
    }
}

/// Takes the route `key` (compiled as `old`) out of the hosts it was
/// filed under, marking them.
fn forget(
    hosts: &mut HashMap<HostKey, HashSet<(Origin, u32)>>,
    dirty: &mut HashSet<HostKey>,
    old: &Compiled,
    key: &(Origin, u32),
) {
    for (host, _) in &old.hosts {
        if let Some(keys) = hosts.get_mut(host) {
            keys.remove(key);
        }
        dirty.insert(host.clone());
    }
}

/// The backends the valid rules of `route` forward to, one per name, in
/// order of first use.
fn named_backends(route: &Route) -> Vec<Arc<Backend>> {
    let mut out: Vec<Arc<Backend>> = Vec::new();
    for (index, rule) in route.rules.iter().enumerate() {
        if rule.validate(index).is_err() {
            continue;
        }
        if let Action::Forward(shares) = &rule.action {
            for s in shares {
                if let BackendRef::Resolved(b) = &s.target
                    && !out.iter().any(|o| o.name == b.name)
                {
                    out.push(b.clone());
                }
            }
        }
    }
    out
}

/// The endpoint set of `backend`: endpoints and cursor carried over from
/// `old` (the set of the same name in the previous table) where they
/// persist.
fn endpoint_set(
    backend: &Backend,
    displayed: RouteMatch,
    old: Option<&Upstream>,
    settings: &Settings<'_>,
) -> Upstream {
    let name = backend.name.clone();
    let cursor = old.map_or_else(|| Arc::new(AtomicUsize::new(0)), |u| u.cursor.clone());
    let mut eps: Vec<Arc<Endpoint>> = Vec::with_capacity(backend.endpoints.len());
    for spec in &backend.endpoints {
        if eps.iter().any(|e| e.addr == spec.addr) {
            continue; // duplicate address in one backend
        }
        let kept = old
            .and_then(|u| u.endpoints.iter().find(|e| e.addr == spec.addr))
            .filter(|e| e.weight == spec.weight.max(1) && e.name == spec.name);
        eps.push(match kept {
            Some(ep) => ep.clone(),
            None => Arc::new(Endpoint::new(
                &name,
                spec.addr,
                spec.name.clone(),
                spec.weight,
                settings.metrics,
            )),
        });
    }
    Upstream::new(
        name,
        displayed,
        eps,
        settings.defaults.with(&backend.policy),
        settings.strategy,
        cursor,
    )
    .speaking(backend.protocol)
}

/// Logs the endpoints added to and removed from the set `name`.
fn log_endpoint_changes(name: &str, old: Option<&Upstream>, new: Option<&Upstream>) {
    let addrs = |u: Option<&Upstream>| -> Vec<SocketAddr> {
        u.map(|u| u.endpoints.iter().map(|e| e.addr).collect())
            .unwrap_or_default()
    };
    let (old, new) = (addrs(old), addrs(new));
    for addr in old.iter().filter(|a| !new.contains(a)) {
        info!(upstream = %name, endpoint = %addr, "endpoint removed");
    }
    for addr in new.iter().filter(|a| !old.contains(a)) {
        info!(upstream = %name, endpoint = %addr, "endpoint added");
    }
}

/// Compiles `route` (at `position`, forwarding to `backends`), keeping
/// the rule cursors of `old`, its previous compile.
fn compile(
    route: &Arc<Route>,
    position: usize,
    backends: Vec<Arc<Backend>>,
    old: Option<Compiled>,
    made: &HashMap<Arc<str>, Made>,
    settings: &Settings<'_>,
) -> Compiled {
    let origin = Arc::new(route.origin.clone());
    let mut cursors = old.map(|c| c.cursors).unwrap_or_default();
    cursors.resize_with(route.rules.len(), || Arc::new(AtomicUsize::new(0)));
    cursors.truncate(route.rules.len());
    let mut rules = Vec::with_capacity(route.rules.len());
    for (index, r) in route.rules.iter().enumerate() {
        if let Err(e) = r.validate(index) {
            warn!(route = %route.origin, error = %e, "invalid rule left out of the routing table");
            continue;
        }
        rules.push(Arc::new(compile_rule(
            &origin,
            index,
            r,
            cursors[index].clone(),
            made,
            settings.defaults,
        )));
    }
    Compiled {
        route: route.clone(),
        position,
        rules,
        cursors,
        hosts: scope_hosts(route),
        backends,
    }
}

/// The hostnames a route is filed under (`None`: any host), each with the
/// listeners it applies on.
fn scope_hosts(route: &Route) -> Vec<(HostKey, Listeners)> {
    let mut out: Vec<(HostKey, Listeners)> = Vec::new();
    for scope in &route.scopes {
        let hosts: Vec<HostKey> = if scope.hostnames.is_empty() {
            vec![None]
        } else {
            scope.hostnames.iter().cloned().map(Some).collect()
        };
        for host in hosts {
            match out.iter_mut().find(|(h, _)| *h == host) {
                Some((_, l)) => *l = l.union(scope.listeners),
                None => out.push((host, scope.listeners)),
            }
        }
    }
    out
}

/// Compiles rule `index` of the route from `origin`; its backends are the
/// endpoint sets in `made`.
fn compile_rule(
    origin: &Arc<Origin>,
    index: usize,
    rule: &crate::discovery::Rule,
    cursor: Arc<AtomicUsize>,
    made: &HashMap<Arc<str>, Made>,
    defaults: &Policy,
) -> RouteRule {
    let action = match &rule.action {
        Action::Forward(shares) => {
            let shares = shares
                .iter()
                .map(|s| match &s.target {
                    BackendRef::Resolved(b) => {
                        let u = made[&b.name].upstream.clone();
                        let policy = u.policy.for_rule(&rule.policy);
                        (rule::Share::Backend(u, s.weight), policy)
                    }
                    BackendRef::Invalid(_) => (rule::Share::Invalid(s.weight), defaults.clone()),
                })
                .collect();
            RuleAction::Forward(Forward::new(shares, cursor))
        }
        Action::Redirect(r) => RuleAction::Redirect(r.clone()),
        Action::Respond(f) => RuleAction::Respond(f.clone()),
    };
    let f = &rule.filters;
    let filters = (!f.is_empty()).then(|| {
        Box::new(RuleFilters {
            request_headers: f.request_headers.clone(),
            response_headers: f.response_headers.clone(),
            rewrite: f.rewrite.clone(),
            source: f.source.clone(),
            cors: f.cors.clone(),
            max_body_bytes: f.max_body_bytes,
            affinity: f.affinity.clone(),
        })
    });
    let label: Arc<str> = if origin.kind == RouteKind::Upstream && origin.namespace.is_empty() {
        origin.name.clone()
    } else {
        match &rule.name {
            Some(n) => format!("{}/{}#{n}", origin.namespace, origin.name).into(),
            None => format!("{}/{}#{index}", origin.namespace, origin.name).into(),
        }
    };
    RouteRule {
        origin: origin.clone(),
        index,
        label,
        filters,
        action,
    }
}
