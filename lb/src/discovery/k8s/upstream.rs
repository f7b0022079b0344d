//! The `Upstream` adapter: an Upstream object becomes a route intent (its
//! match, policy and protocol, and its backend as a [`ServiceRef`]), the
//! backend is resolved by the kind-independent [`endpoints::resolve`], and
//! the result is one routed `UpstreamConfig` plus the status the object
//! should have. No I/O here, so every rule is unit-tested with plain
//! objects.
//!
//! Conflicts: Upstreams whose matches are the same (same host, compared in
//! lower case, and same path prefix, `/api` and `/api/` being the same, no
//! prefix and `/` too) cannot both serve. As in the Gateway API, the oldest
//! (`creationTimestamp`, then name) wins ([`super::conflicts`]); each other
//! one gets `Ready=False` with reason `Conflict` naming the winner and is
//! not routed. Different prefixes overlapping (`/api` and `/api/v1`) are
//! not conflicts: the most specific match wins in the data plane.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::conditions::{condition, truth};
use super::conflicts::Contender;
use super::endpoints::{self, Availability, Found, PortError, SERVICE_LABEL, ServiceRef};
use crate::crd::{EndpointStatus, SpecError, Upstream, UpstreamSpec, UpstreamStatus};
use crate::discovery::{Protocol, RouteMatch, RoutingConfig, UpstreamConfig, UpstreamPolicy};

/// Why an Upstream is (not) ready, for its `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// At least one endpoint is ready.
    EndpointsAvailable,
    /// Only terminating-but-serving endpoints are left; they are used.
    ServingTerminatingOnly,
    /// The Service has endpoints but none is ready.
    NoReadyEndpoints,
    /// No EndpointSlice names the Service.
    ServiceNotFound,
    /// The spec cannot be used.
    InvalidSpec,
    /// An older Upstream has the same match.
    Conflict,
}

impl Reason {
    /// The condition reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EndpointsAvailable => "EndpointsAvailable",
            Reason::ServingTerminatingOnly => "ServingTerminatingOnly",
            Reason::NoReadyEndpoints => "NoReadyEndpoints",
            Reason::ServiceNotFound => "ServiceNotFound",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Conflict => "Conflict",
        }
    }

    fn of(availability: Availability) -> Reason {
        match availability {
            Availability::EndpointsAvailable => Reason::EndpointsAvailable,
            Availability::ServingTerminatingOnly => Reason::ServingTerminatingOnly,
            Availability::NoReadyEndpoints => Reason::NoReadyEndpoints,
            Availability::ServiceNotFound => Reason::ServiceNotFound,
        }
    }
}

/// What one Upstream resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Its routing entry; `None` when the spec is invalid (not routed).
    pub upstream: Option<UpstreamConfig>,
    /// The status it should have.
    pub status: UpstreamStatus,
    /// Why.
    pub reason: Reason,
    /// With [`Reason::Conflict`]: the Upstream that wins.
    pub conflict: Option<String>,
}

/// A match as the data plane compares them: host (already lower case) and
/// path prefix without one trailing `/` (so no prefix is `""`, like `/`).
pub type Claim = (Option<String>, String);

fn claim(route: &RouteMatch) -> Claim {
    let prefix = route.path_prefix.as_deref().unwrap_or("");
    (
        route.host.clone(),
        prefix.strip_suffix('/').unwrap_or(prefix).to_owned(),
    )
}

impl Contender for Resolved {
    type Claim = Claim;
    fn claim(&self) -> Option<Claim> {
        self.upstream.as_ref().map(|u| claim(&u.route))
    }
}

/// `base` when `winner` has the same match: not routed, `Ready=False`
/// (`Conflict`), no endpoint taking requests through it.
pub fn conflicted(
    base: &Resolved,
    winner: &str,
    upstream: Option<&Upstream>,
    now: &Time,
) -> Resolved {
    let route = base
        .upstream
        .as_ref()
        .map(|u| {
            let host = u.route.host.as_deref().unwrap_or("any host");
            let path = u.route.path_prefix.as_deref().unwrap_or("any path");
            format!("{host}, {path}")
        })
        .unwrap_or_default();
    let mut status = base.status.clone();
    status.ready_endpoints = 0;
    status.ready = Some(format!("0/{}", status.endpoints.len()));
    status.conditions = vec![ready_condition(
        Reason::Conflict,
        format!(
            "Upstream {winner} has the same match ({route}) and wins (the oldest \
             creationTimestamp, then the name, wins); this Upstream is not routed \
             while the conflict lasts"
        ),
        upstream.and_then(|u| u.metadata.generation),
        upstream.and_then(|u| u.status.as_ref()),
        now,
    )];
    Resolved {
        upstream: None,
        status,
        reason: Reason::Conflict,
        conflict: Some(winner.to_owned()),
    }
}

fn ready_condition(
    reason: Reason,
    message: String,
    generation: Option<i64>,
    previous: Option<&UpstreamStatus>,
    now: &Time,
) -> Condition {
    let ok = matches!(
        reason,
        Reason::EndpointsAvailable | Reason::ServingTerminatingOnly
    );
    let previous = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    condition(
        "Ready",
        truth(ok),
        reason.as_str(),
        message,
        generation,
        previous,
        now,
    )
}

/// What an Upstream asks for before its endpoints are known: the route
/// intent of this kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// Which requests it serves.
    pub route: RouteMatch,
    /// Overrides of the LB-wide settings.
    pub policy: UpstreamPolicy,
    /// The protocol the spec forces, if any (else the port's appProtocol).
    pub protocol: Option<Protocol>,
    /// The backend.
    pub backend: ServiceRef,
}

/// The intent of a valid spec.
pub fn intent(upstream: &Upstream) -> Result<Intent, SpecError> {
    let spec = &upstream.spec;
    spec.validate()?;
    Ok(Intent {
        route: route_match(spec),
        policy: policy(spec),
        protocol: spec.protocol.map(|p| match p {
            crate::crd::UpstreamProtocol::H2c => Protocol::H2c,
            crate::crd::UpstreamProtocol::Http1 => Protocol::Http1,
        }),
        backend: ServiceRef {
            namespace: upstream.namespace().unwrap_or_default(),
            name: spec.service.clone(),
            port: spec.port.clone(),
        },
    })
}

/// Resolves one Upstream against the slices of its Service.
pub fn resolve(upstream: &Upstream, slices: &[&EndpointSlice], now: &Time) -> Resolved {
    let name: Arc<str> = Arc::from(upstream.name_any());
    let generation = upstream.metadata.generation;
    let previous = upstream.status.as_ref();
    let status_for =
        |reason: Reason, message: String, found: &[Found], ready: u32| UpstreamStatus {
            observed_generation: generation,
            ready_endpoints: ready,
            ready: Some(format!("{ready}/{}", found.len())),
            endpoints: found
                .iter()
                .map(|f| EndpointStatus {
                    address: f.addr.ip().to_string(),
                    port: i32::from(f.addr.port()),
                    ready: f.ready,
                    serving: f.serving,
                    terminating: f.terminating,
                    pod: f.pod.clone(),
                })
                .collect(),
            conditions: vec![ready_condition(reason, message, generation, previous, now)],
        };
    let invalid = |e: SpecError| Resolved {
        upstream: None,
        status: status_for(Reason::InvalidSpec, e.to_string(), &[], 0),
        reason: Reason::InvalidSpec,
        conflict: None,
    };
    let intent = match intent(upstream) {
        Ok(i) => i,
        Err(e) => return invalid(e),
    };
    let backend = &intent.backend;
    let resolved = match endpoints::resolve(slices, backend.port.as_ref()) {
        Ok(r) => r,
        Err(PortError::Ambiguous { count, names }) => {
            return invalid(SpecError::AmbiguousPort { count, names });
        }
        Err(PortError::Unknown) => {
            return invalid(SpecError::UnknownPort {
                port: backend.port_text(),
                service: backend.name.clone(),
            });
        }
    };
    let reason = Reason::of(resolved.availability);
    let message = match resolved.availability {
        Availability::ServiceNotFound => format!(
            "no EndpointSlices for Service {} in this namespace",
            backend.name
        ),
        Availability::EndpointsAvailable => format!(
            "{} of {} endpoints ready",
            resolved.ready,
            resolved.found.len()
        ),
        Availability::NoReadyEndpoints => {
            format!("0 of {} endpoints ready", resolved.found.len())
        }
        Availability::ServingTerminatingOnly => format!(
            "no ready endpoint; {} terminating endpoints still serving are used",
            resolved.routed.len()
        ),
    };
    let status = status_for(reason, message, &resolved.found, resolved.ready as u32);
    let protocol = match intent.protocol {
        Some(p) => p,
        None if resolved.h2c => Protocol::H2c,
        None => Protocol::Http1,
    };
    Resolved {
        upstream: Some(UpstreamConfig {
            name,
            route: intent.route,
            endpoints: resolved.routed,
            policy: intent.policy,
            protocol,
        }),
        status,
        reason,
        conflict: None,
    }
}

/// The data plane's match rule for an Upstream (hosts compared in lower case).
pub fn route_match(spec: &UpstreamSpec) -> RouteMatch {
    let m = spec.route.clone().unwrap_or_default();
    RouteMatch {
        host: m.host.map(|h| h.to_ascii_lowercase()),
        path_prefix: m.path_prefix,
    }
}

/// The data plane's policy overrides for an Upstream.
pub fn policy(spec: &UpstreamSpec) -> UpstreamPolicy {
    let t = spec.timeouts.clone().unwrap_or_default();
    let o = spec.outlier_detection.clone().unwrap_or_default();
    UpstreamPolicy {
        connect_timeout: t.connect_ms.map(|ms| Duration::from_millis(ms.into())),
        response_header_timeout: t
            .response_header_ms
            .map(|ms| Duration::from_millis(ms.into())),
        retries: spec.retries.as_ref().map(|r| r.attempts),
        eject_after: o.consecutive_failures,
        ejection_time: o
            .base_ejection_seconds
            .map(|s| Duration::from_secs(s.into())),
    }
}

/// Resolves every Upstream: the routing snapshot and each Upstream's status.
pub fn resolve_all(
    upstreams: &BTreeMap<String, Upstream>,
    slices: &BTreeMap<String, EndpointSlice>,
    now: &Time,
) -> (RoutingConfig, BTreeMap<String, Resolved>) {
    let mut by_service: HashMap<&str, Vec<&EndpointSlice>> = HashMap::new();
    for s in slices.values() {
        if let Some(svc) = s.labels().get(SERVICE_LABEL) {
            by_service.entry(svc.as_str()).or_default().push(s);
        }
    }
    let mut routing = RoutingConfig::default();
    let mut out = BTreeMap::new();
    for (name, u) in upstreams {
        let slices = by_service
            .get(u.spec.service.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let r = resolve(u, slices, now);
        if let Some(cfg) = &r.upstream {
            routing.upstreams.push(cfg.clone());
        }
        out.insert(name.clone(), r);
    }
    (routing, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::k8s::endpoints::H2C_APP_PROTOCOL;
    use crate::discovery::k8s::endpoints::tests::{ep, slice};

    fn upstream(name: &str, yaml: &str) -> Upstream {
        let mut u = Upstream::new(name, serde_yaml::from_str::<UpstreamSpec>(yaml).unwrap());
        u.metadata.generation = Some(3);
        u
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::now())
    }

    fn addrs(r: &Resolved) -> Vec<String> {
        r.upstream
            .as_ref()
            .unwrap()
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect()
    }

    #[test]
    fn merges_slices_dedups_and_unset_ready_means_ready() {
        let a = slice(
            "a",
            "backend",
            &[("http", 5000)],
            vec![
                ep("10.0.0.1", None, None, None, "p1"),
                ep("10.0.0.2", Some(true), None, None, "p2"),
            ],
        );
        let b = slice(
            "b",
            "backend",
            &[("http", 5000)],
            vec![
                ep("10.0.0.2", Some(true), None, None, "p2"),
                ep("10.0.0.3", Some(false), Some(false), None, "p3"),
            ],
        );
        let u = upstream("backend", "service: backend\nport: http\n");
        let r = resolve(&u, &[&a, &b], &now());
        assert_eq!(addrs(&r), ["10.0.0.1:5000", "10.0.0.2:5000"]);
        assert_eq!(r.reason, Reason::EndpointsAvailable);
        assert_eq!(r.status.ready.as_deref(), Some("2/3"));
        assert_eq!(r.status.ready_endpoints, 2);
        assert_eq!(r.status.observed_generation, Some(3));
        assert_eq!(r.status.endpoints[0].pod.as_deref(), Some("p1"));
        let names: Vec<_> = r
            .upstream
            .unwrap()
            .endpoints
            .iter()
            .map(|e| e.name.clone().unwrap().to_string())
            .collect();
        assert_eq!(names, ["p1", "p2"]);
    }

    #[test]
    fn the_protocol_comes_from_the_spec_else_the_ports_app_protocol() {
        let mut grpc = slice(
            "a",
            "s",
            &[("grpc", 5000)],
            vec![ep("10.0.0.1", None, None, None, "p")],
        );
        let protocol =
            |u: &Upstream, s: &EndpointSlice| resolve(u, &[s], &now()).upstream.unwrap().protocol;
        let plain = upstream("u", "service: s\n");
        assert_eq!(protocol(&plain, &grpc), Protocol::Http1);
        grpc.ports.as_mut().unwrap()[0].app_protocol = Some(H2C_APP_PROTOCOL.into());
        assert_eq!(
            protocol(&plain, &grpc),
            Protocol::H2c,
            "appProtocol: kubernetes.io/h2c"
        );
        let forced = upstream("u", "service: s\nprotocol: http1\n");
        assert_eq!(protocol(&forced, &grpc), Protocol::Http1, "the spec wins");
        let h2c = upstream("u", "service: s\nprotocol: h2c\n");
        grpc.ports.as_mut().unwrap()[0].app_protocol = None;
        assert_eq!(protocol(&h2c, &grpc), Protocol::H2c);
    }

    #[test]
    fn port_by_name_number_or_only_port_per_slice() {
        let a = slice(
            "a",
            "s",
            &[("http", 5000), ("metrics", 9100)],
            vec![ep("10.0.0.1", None, None, None, "p")],
        );
        let b = slice(
            "b",
            "s",
            &[("http", 5001)],
            vec![ep("10.0.0.2", None, None, None, "q")],
        );
        let r = resolve(
            &upstream("u", "service: s\nport: http\n"),
            &[&a, &b],
            &now(),
        );
        assert_eq!(
            addrs(&r),
            ["10.0.0.1:5000", "10.0.0.2:5001"],
            "port resolved per slice"
        );
        let r = resolve(&upstream("u", "service: s\nport: 9100\n"), &[&a], &now());
        assert_eq!(addrs(&r), ["10.0.0.1:9100"]);
        let r = resolve(&upstream("u", "service: s\n"), &[&b], &now());
        assert_eq!(addrs(&r), ["10.0.0.2:5001"]);
        let r = resolve(&upstream("u", "service: s\n"), &[&a], &now());
        assert_eq!(r.reason, Reason::InvalidSpec);
        assert!(
            r.status.conditions[0].message.contains("http, metrics"),
            "{:?}",
            r.status.conditions
        );
        let r = resolve(
            &upstream("u", "service: s\nport: grpc\n"),
            &[&a, &b],
            &now(),
        );
        assert_eq!(r.reason, Reason::InvalidSpec);
        assert!(r.upstream.is_none());
    }

    #[test]
    fn terminating_endpoints_only_when_none_ready() {
        let s = slice(
            "a",
            "s",
            &[("http", 80)],
            vec![
                ep("10.0.0.1", Some(true), Some(true), Some(false), "new"),
                ep("10.0.0.2", Some(false), Some(true), Some(true), "old"),
            ],
        );
        let r = resolve(&upstream("u", "service: s\n"), &[&s], &now());
        assert_eq!(addrs(&r), ["10.0.0.1:80"]);
        let s = slice(
            "a",
            "s",
            &[("http", 80)],
            vec![
                ep(
                    "10.0.0.1",
                    Some(false),
                    Some(false),
                    Some(false),
                    "starting",
                ),
                ep("10.0.0.2", Some(false), Some(true), Some(true), "old"),
            ],
        );
        let r = resolve(&upstream("u", "service: s\n"), &[&s], &now());
        assert_eq!(addrs(&r), ["10.0.0.2:80"]);
        assert_eq!(r.reason, Reason::ServingTerminatingOnly);
        assert_eq!(r.status.conditions[0].status, "True");
        let s = slice(
            "a",
            "s",
            &[("http", 80)],
            vec![ep("10.0.0.1", Some(false), Some(false), None, "x")],
        );
        let r = resolve(&upstream("u", "service: s\n"), &[&s], &now());
        assert_eq!(r.reason, Reason::NoReadyEndpoints);
        assert!(addrs(&r).is_empty());
        assert_eq!(r.status.conditions[0].status, "False");
    }

    #[test]
    fn missing_service_and_invalid_spec() {
        let r = resolve(&upstream("u", "service: ghost\n"), &[], &now());
        assert_eq!(r.reason, Reason::ServiceNotFound);
        assert!(r.upstream.unwrap().endpoints.is_empty());
        let r = resolve(&upstream("u", "service: s\nport: 0\n"), &[], &now());
        assert_eq!(r.reason, Reason::InvalidSpec);
    }

    #[test]
    fn unchanged_state_gives_identical_status() {
        let s = slice(
            "a",
            "s",
            &[("http", 80)],
            vec![ep("10.0.0.1", None, None, None, "p")],
        );
        let mut u = upstream("u", "service: s\n");
        let first = resolve(
            &u,
            &[&s],
            &Time(
                k8s_openapi::jiff::Timestamp::now()
                    - k8s_openapi::jiff::SignedDuration::from_secs(60),
            ),
        );
        u.status = Some(first.status.clone());
        let again = resolve(&u, &[&s], &now());
        assert_eq!(first.status, again.status, "transition time kept");
    }

    #[test]
    fn resolve_all_groups_by_service_label() {
        let s1 = slice(
            "s1-a",
            "one",
            &[("http", 80)],
            vec![ep("10.0.0.1", None, None, None, "p")],
        );
        let s2 = slice(
            "s2-a",
            "two",
            &[("http", 80)],
            vec![ep("10.0.0.2", None, None, None, "q")],
        );
        let ups = BTreeMap::from([
            ("a".to_owned(), upstream("a", "service: one\n")),
            (
                "b".to_owned(),
                upstream("b", "service: two\nmatch: {pathPrefix: /b}\n"),
            ),
            ("c".to_owned(), upstream("c", "service: two\nport: nope\n")),
        ]);
        let slices = BTreeMap::from([("s1-a".to_owned(), s1), ("s2-a".to_owned(), s2)]);
        let (routing, resolved) = resolve_all(&ups, &slices, &now());
        assert_eq!(routing.upstreams.len(), 2, "the invalid one is not routed");
        assert_eq!(
            routing.upstreams[1].route.path_prefix.as_deref(),
            Some("/b")
        );
        assert_eq!(resolved["c"].reason, Reason::InvalidSpec);
        assert_eq!(resolved["a"].reason, Reason::EndpointsAvailable);
    }

    #[test]
    fn policy_overrides_and_match() {
        let spec: UpstreamSpec = serde_yaml::from_str(
            "service: b\ntimeouts: {connectMs: 250}\nretries: {attempts: 0}\noutlierDetection: {consecutiveFailures: 5}\n",
        )
        .unwrap();
        let p = policy(&spec);
        assert_eq!(p.connect_timeout, Some(Duration::from_millis(250)));
        assert_eq!(p.retries, Some(0));
        assert_eq!(p.eject_after, Some(5));
        assert_eq!(p.ejection_time, None);
        let spec: UpstreamSpec =
            serde_yaml::from_str("service: b\nmatch: {host: API.Example, pathPrefix: /api}\n")
                .unwrap();
        let m = route_match(&spec);
        assert_eq!(m.host.as_deref(), Some("api.example"));
        assert_eq!(m.path_prefix.as_deref(), Some("/api"));
    }
}
