//! Pure translation from Kubernetes objects to routing and status: which
//! endpoints of which EndpointSlices serve which Upstream, and which
//! Upstreams conflict. No I/O here, so every rule is unit-tested with plain
//! objects.
//!
//! Conflicts: Upstreams whose matches are the same (same host, compared in
//! lower case, and same path prefix, `/api` and `/api/` being the same, no
//! prefix and `/` too) cannot both serve. As in the Gateway API, the oldest
//! (`creationTimestamp`, then name) wins; each other one gets `Ready=False`
//! with reason `Conflict` naming the winner and is not routed. Different
//! prefixes overlapping (`/api` and `/api/v1`) are not conflicts: the most
//! specific match wins in the data plane.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::crd::{EndpointStatus, SpecError, Upstream, UpstreamSpec, UpstreamStatus};
use crate::discovery::{
    EndpointSpec, Protocol, RouteMatch, RoutingConfig, UpstreamConfig, UpstreamPolicy,
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// A store fed by watcher events that only replaces its contents when a
/// re-list is complete: between `Init` and `InitDone` the old contents stay
/// in service and new objects are buffered.
#[derive(Debug)]
pub struct Buffered<K> {
    live: BTreeMap<String, K>,
    pending: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K> Default for Buffered<K> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            pending: None,
            synced: false,
        }
    }
}

/// What a watcher event changed in a [`Buffered`] store.
#[derive(Debug)]
pub enum Touched<K> {
    /// Nothing visible (buffered during a re-list, or an unknown delete).
    Nothing,
    /// Everything may have changed (a re-list completed).
    All,
    /// One object, by name; `old` is what it replaced, if anything.
    One {
        /// Object name.
        name: String,
        /// The previous version.
        old: Option<K>,
    },
}

impl<K: kube::Resource> Buffered<K> {
    /// Applies one event and says what changed in the live contents.
    pub fn apply(&mut self, event: Event<K>) -> Touched<K> {
        match event {
            Event::Init => {
                self.pending = Some(BTreeMap::new());
                Touched::Nothing
            }
            Event::InitApply(obj) => {
                let name = obj.name_any();
                self.pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, obj);
                Touched::Nothing
            }
            Event::InitDone => {
                self.live = self.pending.take().unwrap_or_default();
                self.synced = true;
                Touched::All
            }
            Event::Apply(obj) => {
                let name = obj.name_any();
                let old = self.live.insert(name.clone(), obj);
                Touched::One { name, old }
            }
            Event::Delete(obj) => {
                let name = obj.name_any();
                match self.live.remove(&name) {
                    Some(old) => Touched::One {
                        name,
                        old: Some(old),
                    },
                    None => Touched::Nothing,
                }
            }
        }
    }

    /// True once a first complete list has been applied.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The live objects by name.
    pub fn live(&self) -> &BTreeMap<String, K> {
        &self.live
    }
}

/// Both stores and what they resolve to, kept up to date incrementally: a
/// slice change re-resolves only the Upstreams of that slice's Service, and
/// a change of an Upstream's status alone (our own write coming back)
/// re-resolves nothing. Conflicts are settled again only among the
/// Upstreams whose match the change touched.
#[derive(Debug, Default)]
pub struct Index {
    slices: Buffered<EndpointSlice>,
    upstreams: Buffered<Upstream>,
    /// Each Upstream resolved on its own.
    base: BTreeMap<String, Resolved>,
    /// After conflicts: what is routed and what the statuses say.
    resolved: BTreeMap<String, Resolved>,
}

/// A match as the data plane compares them: host (already lower case) and
/// path prefix without one trailing `/` (so no prefix is `""`, like `/`).
type Claim<'a> = (Option<&'a str>, &'a str);

fn claim(route: &RouteMatch) -> Claim<'_> {
    let prefix = route.path_prefix.as_deref().unwrap_or("");
    (
        route.host.as_deref(),
        prefix.strip_suffix('/').unwrap_or(prefix),
    )
}

fn owned_claim(r: &Resolved) -> Option<(Option<String>, String)> {
    r.upstream.as_ref().map(|u| {
        let (h, p) = claim(&u.route);
        (h.map(str::to_owned), p.to_owned())
    })
}

/// Oldest `creationTimestamp` first (objects without one last), then name.
fn seniority(live: &BTreeMap<String, Upstream>, a: &str, b: &str) -> Ordering {
    let created = |n: &str| {
        live.get(n)
            .and_then(|u| u.metadata.creation_timestamp.as_ref())
    };
    match (created(a), created(b)) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then_with(|| a.cmp(b))
}

/// Recomputes `resolved` for `names` and for every Upstream that shares a
/// match with one of them (or with `old`, the match one of them had).
fn settle(
    base: &BTreeMap<String, Resolved>,
    live: &BTreeMap<String, Upstream>,
    resolved: &mut BTreeMap<String, Resolved>,
    names: &[String],
    old: Option<(Option<String>, String)>,
    now: &Time,
) {
    let mut affected: HashSet<Claim<'_>> = HashSet::new();
    if let Some((h, p)) = &old {
        affected.insert((h.as_deref(), p.as_str()));
    }
    for n in names {
        if let Some(u) = base.get(n).and_then(|r| r.upstream.as_ref()) {
            affected.insert(claim(&u.route));
        }
    }
    let mut groups: HashMap<Claim<'_>, Vec<&str>> = HashMap::new();
    if !affected.is_empty() {
        for (n, r) in base {
            if let Some(u) = &r.upstream {
                let c = claim(&u.route);
                if affected.contains(&c) {
                    groups.entry(c).or_default().push(n);
                }
            }
        }
    }
    let mut winner_of: HashMap<&str, &str> = HashMap::new();
    let mut todo: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    for members in groups.values_mut() {
        members.sort_by(|a, b| seniority(live, a, b));
        for loser in &members[1..] {
            winner_of.insert(loser, members[0]);
        }
        todo.extend(members.iter().copied());
    }
    for n in todo {
        let Some(b) = base.get(n) else {
            resolved.remove(n);
            continue;
        };
        let r = match winner_of.get(n) {
            Some(winner) => conflicted(b, winner, live.get(n), now),
            None => b.clone(),
        };
        if resolved.get(n) != Some(&r) {
            resolved.insert(n.to_owned(), r);
        }
    }
}

/// `base` when `winner` has the same match: not routed, `Ready=False`
/// (`Conflict`), no endpoint taking requests through it.
fn conflicted(base: &Resolved, winner: &str, upstream: Option<&Upstream>, now: &Time) -> Resolved {
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

fn service_of(slice: &EndpointSlice) -> Option<&str> {
    slice.labels().get(SERVICE_LABEL).map(String::as_str)
}

impl Index {
    /// True once both watchers have completed their first list.
    pub fn synced(&self) -> bool {
        self.slices.synced() && self.upstreams.synced()
    }

    /// Applies an EndpointSlice event; true when routing may have changed.
    pub fn apply_slice(&mut self, event: Event<EndpointSlice>, now: &Time) -> bool {
        let services: Vec<String> = match self.slices.apply(event) {
            Touched::Nothing => return false,
            Touched::All => return self.resolve_everything(now),
            Touched::One { name, old } => {
                let new = self.slices.live().get(&name);
                old.as_ref()
                    .and_then(service_of)
                    .into_iter()
                    .chain(new.and_then(service_of))
                    .map(str::to_owned)
                    .collect()
            }
        };
        if !self.synced() {
            return false;
        }
        let names: Vec<String> = self
            .upstreams
            .live()
            .iter()
            .filter(|(_, u)| services.contains(&u.spec.service))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &names {
            self.resolve_one(name, now);
        }
        settle(
            &self.base,
            self.upstreams.live(),
            &mut self.resolved,
            &names,
            None,
            now,
        );
        !names.is_empty()
    }

    /// Applies an Upstream event; true when routing may have changed.
    pub fn apply_upstream(&mut self, event: Event<Upstream>, now: &Time) -> bool {
        let (name, old) = match self.upstreams.apply(event) {
            Touched::Nothing => return false,
            Touched::All => return self.resolve_everything(now),
            Touched::One { name, old } => (name, old),
        };
        if !self.synced() {
            return false;
        }
        match (old, self.upstreams.live().get(&name)) {
            (Some(old), Some(new))
                if old.spec == new.spec && old.metadata.generation == new.metadata.generation =>
            {
                // Only the status (or metadata) moved: nothing to resolve.
                false
            }
            (_, Some(_)) => {
                let old = self.base.get(&name).and_then(owned_claim);
                self.resolve_one(&name, now);
                let names = [name];
                settle(
                    &self.base,
                    self.upstreams.live(),
                    &mut self.resolved,
                    &names,
                    old,
                    now,
                );
                true
            }
            (_, None) => {
                let Some(gone) = self.base.remove(&name) else {
                    return false;
                };
                let names = [name];
                settle(
                    &self.base,
                    self.upstreams.live(),
                    &mut self.resolved,
                    &names,
                    owned_claim(&gone),
                    now,
                );
                true
            }
        }
    }

    fn resolve_everything(&mut self, now: &Time) -> bool {
        if !self.synced() {
            return false;
        }
        let (_, base) = resolve_all(self.upstreams.live(), self.slices.live(), now);
        self.base = base;
        let gone: Vec<String> = self
            .resolved
            .keys()
            .filter(|n| !self.base.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            self.resolved.remove(&n);
        }
        let names: Vec<String> = self.base.keys().cloned().collect();
        settle(
            &self.base,
            self.upstreams.live(),
            &mut self.resolved,
            &names,
            None,
            now,
        );
        true
    }

    fn resolve_one(&mut self, name: &str, now: &Time) {
        let Some(u) = self.upstreams.live().get(name) else {
            return;
        };
        let slices: Vec<&EndpointSlice> = self
            .slices
            .live()
            .values()
            .filter(|s| service_of(s) == Some(u.spec.service.as_str()))
            .collect();
        let r = resolve(u, &slices, now);
        self.base.insert(name.to_owned(), r);
    }

    /// The routing snapshot of the current resolutions.
    pub fn routing(&self) -> RoutingConfig {
        RoutingConfig {
            upstreams: self
                .resolved
                .values()
                .filter_map(|r| r.upstream.clone())
                .collect(),
            routes: Vec::new(),
        }
    }

    /// Each Upstream's resolution (conflicts settled), by name.
    pub fn resolved(&self) -> &BTreeMap<String, Resolved> {
        &self.resolved
    }

    /// The live Upstream objects.
    pub fn upstreams(&self) -> &BTreeMap<String, Upstream> {
        self.upstreams.live()
    }
}

/// An endpoint as read from a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    addr: SocketAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    pod: Option<String>,
}

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

/// The port of `slice` that `wanted` names; with `wanted` unset, the only port.
/// The port of `slice` that `wanted` names (with `wanted` unset, the only
/// port) and whether the Service declares it `appProtocol:
/// kubernetes.io/h2c`.
fn slice_port(
    slice: &EndpointSlice,
    wanted: Option<&IntOrString>,
) -> Result<Option<(u16, bool)>, SpecError> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = match wanted {
        None => match ports {
            [] => return Ok(None),
            [only] => Some(only),
            _ => {
                return Err(SpecError::AmbiguousPort {
                    count: ports.len(),
                    names: ports
                        .iter()
                        .filter_map(|p| p.name.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        },
        Some(IntOrString::Int(n)) => ports.iter().find(|p| p.port == Some(*n)),
        Some(IntOrString::String(name)) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str())),
    };
    Ok(port.and_then(|p| {
        let number = p
            .port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)?;
        Some((number, p.app_protocol.as_deref() == Some(H2C_APP_PROTOCOL)))
    }))
}

/// The `appProtocol` of a Service port that speaks HTTP/2 without TLS
/// (Kubernetes' well-known value).
pub const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// The endpoints of `slices` on the wanted port; whether any slice had the
/// port; whether the port is declared h2c.
fn endpoints_of(
    slices: &[&EndpointSlice],
    wanted: Option<&IntOrString>,
) -> Result<(Vec<Found>, bool, bool), SpecError> {
    let mut by_addr: BTreeMap<SocketAddr, Found> = BTreeMap::new();
    let mut any_port = false;
    let mut h2c = false;
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some((port, port_h2c)) = slice_port(slice, wanted)? else {
            continue;
        };
        any_port = true;
        h2c |= port_h2c;
        for ep in &slice.endpoints {
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let cond = ep.conditions.clone().unwrap_or_default();
            // The API: an unset `ready` means ready; `serving` defaults to
            // `ready`; `terminating` to false.
            let ready = cond.ready.unwrap_or(true);
            let found = Found {
                addr: SocketAddr::new(ip, port),
                ready,
                serving: cond.serving.unwrap_or(ready),
                terminating: cond.terminating.unwrap_or(false),
                pod: ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
                    .and_then(|r| r.name.clone()),
            };
            // The same address in two slices (during a slice split): keep
            // the more ready view.
            match by_addr.get(&found.addr) {
                Some(old) if (old.ready, old.serving) >= (found.ready, found.serving) => {}
                _ => {
                    by_addr.insert(found.addr, found);
                }
            }
        }
    }
    Ok((by_addr.into_values().collect(), any_port, h2c))
}

fn ready_condition(
    reason: Reason,
    message: String,
    generation: Option<i64>,
    previous: Option<&UpstreamStatus>,
    now: &Time,
) -> Condition {
    let status = if matches!(
        reason,
        Reason::EndpointsAvailable | Reason::ServingTerminatingOnly
    ) {
        "True"
    } else {
        "False"
    };
    // Keep the transition time while the condition's status is unchanged, so
    // an unchanged state computes an identical status (and is not written).
    let last = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

/// Resolves one Upstream against the slices of its Service.
pub fn resolve(upstream: &Upstream, slices: &[&EndpointSlice], now: &Time) -> Resolved {
    let name: Arc<str> = Arc::from(upstream.name_any());
    let spec = &upstream.spec;
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
    if let Err(e) = spec.validate() {
        return invalid(e);
    }
    let (found, any_port, h2c) = match endpoints_of(slices, spec.port.as_ref()) {
        Ok(x) => x,
        Err(e) => return invalid(e),
    };
    if !slices.is_empty() && !any_port {
        let port = match &spec.port {
            Some(IntOrString::Int(n)) => n.to_string(),
            Some(IntOrString::String(s)) => s.clone(),
            None => "(unset)".into(),
        };
        return invalid(SpecError::UnknownPort {
            port,
            service: spec.service.clone(),
        });
    }
    let ready: Vec<&Found> = found.iter().filter(|f| f.ready).collect();
    let (routed, reason, message): (Vec<&Found>, Reason, String) = if slices.is_empty() {
        (
            Vec::new(),
            Reason::ServiceNotFound,
            format!(
                "no EndpointSlices for Service {} in this namespace",
                spec.service
            ),
        )
    } else if !ready.is_empty() {
        (
            ready.clone(),
            Reason::EndpointsAvailable,
            format!("{} of {} endpoints ready", ready.len(), found.len()),
        )
    } else {
        let fallback: Vec<&Found> = found
            .iter()
            .filter(|f| f.serving && f.terminating)
            .collect();
        if fallback.is_empty() {
            (
                Vec::new(),
                Reason::NoReadyEndpoints,
                format!("0 of {} endpoints ready", found.len()),
            )
        } else {
            (
                fallback.clone(),
                Reason::ServingTerminatingOnly,
                format!(
                    "no ready endpoint; {} terminating endpoints still serving are used",
                    fallback.len()
                ),
            )
        }
    };
    let endpoints = routed
        .iter()
        .map(|f| {
            let spec = EndpointSpec::new(f.addr);
            match &f.pod {
                Some(pod) => spec.named(pod.as_str()),
                None => spec,
            }
        })
        .collect();
    Resolved {
        upstream: Some(UpstreamConfig {
            name,
            route: route_match(spec),
            endpoints,
            policy: policy(spec),
            protocol: match spec.protocol {
                Some(crate::crd::UpstreamProtocol::H2c) => Protocol::H2c,
                Some(crate::crd::UpstreamProtocol::Http1) => Protocol::Http1,
                None if h2c => Protocol::H2c,
                None => Protocol::Http1,
            },
        }),
        status: status_for(reason, message, &found, ready.len() as u32),
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
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use kube::api::ObjectMeta;

    fn ep(
        ip: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
        pod: &str,
    ) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(name: &str, svc: &str, ports: &[(&str, i32)], eps: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(SERVICE_LABEL.to_owned(), svc.to_owned())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps,
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: Some((*n).into()),
                        port: Some(*p),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

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
    fn buffered_store_keeps_old_set_during_relist() {
        let mut store = Buffered::<EndpointSlice>::default();
        let a = slice("a", "s", &[("http", 80)], vec![]);
        let b = slice("b", "s", &[("http", 80)], vec![]);
        store.apply(Event::Init);
        store.apply(Event::InitApply(a.clone()));
        assert!(!store.synced());
        assert!(matches!(store.apply(Event::InitDone), Touched::All));
        assert_eq!(store.live().len(), 1);
        // A re-list: until InitDone, the old contents stay.
        store.apply(Event::Init);
        store.apply(Event::InitApply(b.clone()));
        assert_eq!(store.live().keys().collect::<Vec<_>>(), ["a"]);
        store.apply(Event::InitDone);
        assert_eq!(store.live().keys().collect::<Vec<_>>(), ["b"]);
        assert!(matches!(
            store.apply(Event::Delete(b)),
            Touched::One { old: Some(_), .. }
        ));
        assert!(matches!(store.apply(Event::Delete(a)), Touched::Nothing));
    }

    #[test]
    fn index_resolves_incrementally_and_ignores_status_only_changes() {
        let now = now();
        let mut index = Index::default();
        index.apply_slice(Event::Init, &now);
        index.apply_slice(
            Event::InitApply(slice(
                "one-a",
                "one",
                &[("http", 80)],
                vec![ep("10.0.0.1", None, None, None, "p")],
            )),
            &now,
        );
        assert!(
            !index.apply_slice(Event::InitDone, &now),
            "upstreams not synced yet"
        );
        index.apply_upstream(Event::Init, &now);
        index.apply_upstream(Event::InitApply(upstream("a", "service: one\n")), &now);
        index.apply_upstream(
            Event::InitApply(upstream("b", "service: two\nmatch: {pathPrefix: /b}\n")),
            &now,
        );
        assert!(index.apply_upstream(Event::InitDone, &now));
        assert_eq!(index.resolved()["a"].reason, Reason::EndpointsAvailable);
        assert_eq!(index.resolved()["b"].reason, Reason::ServiceNotFound);

        // A slice of Service `two` re-resolves `b` only.
        let before_a = index.resolved()["a"].clone();
        assert!(index.apply_slice(
            Event::Apply(slice(
                "two-a",
                "two",
                &[("http", 80)],
                vec![ep("10.0.0.2", None, None, None, "q")]
            )),
            &now,
        ));
        assert_eq!(index.resolved()["b"].reason, Reason::EndpointsAvailable);
        assert_eq!(index.resolved()["a"], before_a);
        // A slice of a Service nobody uses changes nothing.
        assert!(!index.apply_slice(
            Event::Apply(slice("x-a", "unused", &[("http", 80)], vec![])),
            &now,
        ));

        // Our own status write coming back: no re-resolution.
        let mut with_status = upstream("a", "service: one\n");
        with_status.status = Some(index.resolved()["a"].status.clone());
        assert!(!index.apply_upstream(Event::Apply(with_status), &now));
        // A spec change (new generation) re-resolves.
        let mut changed = upstream("a", "service: two\n");
        changed.metadata.generation = Some(4);
        assert!(index.apply_upstream(Event::Apply(changed), &now));
        assert_eq!(
            index.routing().upstreams[0].endpoints[0].addr.to_string(),
            "10.0.0.2:80"
        );
        // Deleting an Upstream drops it from routing.
        assert!(index.apply_upstream(Event::Delete(upstream("b", "service: two\n")), &now));
        assert_eq!(index.routing().upstreams.len(), 1);
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

    fn created(mut u: Upstream, second: i64) -> Upstream {
        u.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_767_225_600 + second).unwrap(),
        ));
        u
    }

    fn synced_index(slices: Vec<EndpointSlice>, ups: Vec<Upstream>, now: &Time) -> Index {
        let mut index = Index::default();
        index.apply_slice(Event::Init, now);
        for s in slices {
            index.apply_slice(Event::InitApply(s), now);
        }
        index.apply_slice(Event::InitDone, now);
        index.apply_upstream(Event::Init, now);
        for u in ups {
            index.apply_upstream(Event::InitApply(u), now);
        }
        assert!(index.apply_upstream(Event::InitDone, now));
        index
    }

    fn routed(index: &Index) -> Vec<String> {
        index
            .routing()
            .upstreams
            .iter()
            .map(|u| u.name.to_string())
            .collect()
    }

    #[test]
    fn exact_match_conflicts_go_to_the_oldest_then_the_name() {
        let now = now();
        let s = slice(
            "s-a",
            "s",
            &[("http", 80)],
            vec![ep("10.0.0.1", None, None, None, "p")],
        );
        let mut index = synced_index(
            vec![s],
            vec![
                // `zed` is the oldest catch-all: it beats `alpha` and `beta`.
                created(upstream("alpha", "service: s\n"), 20),
                created(upstream("zed", "service: s\nmatch: {pathPrefix: /}\n"), 10),
                created(upstream("beta", "service: s\n"), 20),
                // Same host (any case) and prefix (`/api` = `/api/`); same age: by name.
                created(
                    upstream(
                        "api-b",
                        "service: s\nmatch: {host: A.example, pathPrefix: /api/}\n",
                    ),
                    5,
                ),
                created(
                    upstream(
                        "api-a",
                        "service: s\nmatch: {host: a.example, pathPrefix: /api}\n",
                    ),
                    5,
                ),
                // Partial overlaps are legal.
                created(
                    upstream(
                        "api-v1",
                        "service: s\nmatch: {host: a.example, pathPrefix: /api/v1}\n",
                    ),
                    1,
                ),
                created(
                    upstream(
                        "other-host",
                        "service: s\nmatch: {host: b.example, pathPrefix: /api}\n",
                    ),
                    1,
                ),
                // An invalid spec takes no part.
                created(upstream("broken", "service: s\nport: 0\n"), 0),
            ],
            &now,
        );
        assert_eq!(routed(&index), ["api-a", "api-v1", "other-host", "zed"]);
        let r = &index.resolved()["alpha"];
        assert_eq!(
            (r.reason, r.conflict.as_deref()),
            (Reason::Conflict, Some("zed"))
        );
        assert_eq!(r.status.conditions[0].status, "False");
        assert_eq!(r.status.conditions[0].reason, "Conflict");
        assert!(
            r.status.conditions[0].message.contains("Upstream zed"),
            "{:?}",
            r.status.conditions
        );
        assert_eq!(
            (r.status.ready_endpoints, r.status.ready.as_deref()),
            (0, Some("0/1"))
        );
        assert_eq!(index.resolved()["beta"].conflict.as_deref(), Some("zed"));
        assert_eq!(index.resolved()["api-b"].conflict.as_deref(), Some("api-a"));
        assert_eq!(index.resolved()["zed"].reason, Reason::EndpointsAvailable);
        assert_eq!(index.resolved()["broken"].reason, Reason::InvalidSpec);

        // The winner goes: the next oldest (`alpha`, by name) takes over.
        assert!(index.apply_upstream(Event::Delete(upstream("zed", "service: s\n")), &now));
        assert_eq!(index.resolved()["alpha"].reason, Reason::EndpointsAvailable);
        assert_eq!(index.resolved()["beta"].conflict.as_deref(), Some("alpha"));
        assert!(routed(&index).contains(&"alpha".to_owned()));
        // A loser moves to its own prefix: both route.
        let mut moved = created(
            upstream("beta", "service: s\nmatch: {pathPrefix: /beta}\n"),
            20,
        );
        moved.metadata.generation = Some(4);
        assert!(index.apply_upstream(Event::Apply(moved), &now));
        assert_eq!(index.resolved()["beta"].reason, Reason::EndpointsAvailable);
        assert_eq!(index.resolved()["alpha"].reason, Reason::EndpointsAvailable);
        // A slice change keeps the conflict (and updates both sides).
        index.apply_slice(
            Event::Apply(slice(
                "s-a",
                "s",
                &[("http", 80)],
                vec![
                    ep("10.0.0.1", None, None, None, "p"),
                    ep("10.0.0.2", None, None, None, "q"),
                ],
            )),
            &now,
        );
        let b = &index.resolved()["api-b"];
        assert_eq!((b.reason, b.status.endpoints.len()), (Reason::Conflict, 2));
        assert_eq!(index.resolved()["api-a"].status.ready_endpoints, 2);
        assert_eq!(
            routed(&index),
            ["alpha", "api-a", "api-v1", "beta", "other-host"]
        );
        // A re-list settles everything again, the same way.
        let before = index.resolved().clone();
        index.apply_upstream(Event::Init, &now);
        for (_, u) in index.upstreams().clone() {
            index.apply_upstream(Event::InitApply(u), &now);
        }
        index.apply_upstream(Event::InitDone, &now);
        assert_eq!(index.resolved(), &before);
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
