//! The Gateway API adapter: GatewayClasses, Gateways, HTTPRoutes,
//! GRPCRoutes and ReferenceGrants become routes of the route model and the
//! statuses of those objects.
//!
//! One pure step, [`GatewayIndex::compute`], reads every store and returns
//! the routing snapshot, the TLS certificates of the served HTTPS listeners
//! and every status; the watch loop (`run` in `discovery::k8s`) feeds the stores, publishes
//! and hands the statuses to one status writer per kind. The steps, each in
//! its own module:
//!
//! 1. classes: a GatewayClass naming [`CONTROLLER_NAME`] is accepted (with
//!    `parametersRef`: `InvalidParameters`, roundhouse takes none);
//! 2. [`listeners`]: each Gateway this LB programs (its class is ours, and
//!    it passes `--gateway`/`--gateway-namespace`), listener by listener:
//!    the port map, protocols, hostnames, route kinds, certificates
//!    (ReferenceGrant for another namespace), conflicts;
//! 3. [`routes`]: each route's parent references against those listeners
//!    (section name, port, allowed namespaces and kinds, hostname
//!    intersection), its rules translated into the model with backends by
//!    Service reference ([`grants`]: ReferenceGrant for another namespace);
//! 4. endpoint resolution: every Service port through
//!    [`super::endpoints::resolve`], the same as for an Upstream; a Service
//!    without EndpointSlices is `BackendNotFound` and its share answers 500.
//!
//! Route status `parents` may hold entries of other controllers: only the
//! entries with our controller name for the parents this LB handles are
//! computed, and the sink ([`sinks`]) merges them into what the object has.

pub mod grants;
pub mod listeners;
pub mod routes;
pub mod sinks;
pub mod source;

pub use self::source::GatewayDiscovery;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use self::listeners::{Failed, GatewayPlan};
use self::routes::{ActionIntent, Parent, RouteView, RuleIntent};
use super::conditions::{condition, truth};
use super::conflicts::seniority;
use super::endpoints::{self, H2C_APP_PROTOCOL, PortError, ServiceRef};
use super::gateway_api::{
    CONTROLLER_NAME, GRPCRoute, Gateway, GatewayAddress, GatewayClass, GatewayClassStatus,
    GatewayStatus, HTTPRoute, ParentReference, ReferenceGrant, RouteParentStatus, RouteStatus,
    SupportedFeature,
};
use super::store::{Buffered, by_name, by_namespace_and_name};
use crate::discovery::route::{
    Action, Backend, BackendRef, FixedResponse, HostMatch, Order, Origin, Route, RouteKind, Rule,
    WeightedBackend,
};
use crate::discovery::{CertPair, Protocol, RoutingConfig, UpstreamPolicy};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use super::gateway_api::CONTROLLER_NAME as CONTROLLER;

/// Which Gateways this LB programs and how it serves them (the
/// `--gateway-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// GatewayClass names to serve; empty: every class that names
    /// [`CONTROLLER_NAME`].
    pub classes: Vec<String>,
    /// Gateways (`namespace/name`) to program; empty: all of the classes.
    pub gateways: Vec<String>,
    /// Namespaces whose Gateways to program; empty: all.
    pub namespaces: Vec<String>,
    /// The Gateway listener port served by the LB's plain listener.
    pub http_port: u16,
    /// The Gateway listener port served by the LB's TLS listener.
    pub https_port: u16,
    /// The addresses written to `Gateway.status.addresses` (the LB
    /// Service's), IPs or host names.
    pub addresses: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            classes: Vec::new(),
            gateways: Vec::new(),
            namespaces: Vec::new(),
            http_port: 80,
            https_port: 443,
            addresses: Vec::new(),
        }
    }
}

impl GatewayConfig {
    /// Whether this LB programs `gw` (class aside).
    fn programs(&self, gw: &Gateway) -> bool {
        let ns = gw.namespace().unwrap_or_default();
        (self.namespaces.is_empty() || self.namespaces.contains(&ns))
            && (self.gateways.is_empty()
                || self.gateways.contains(&format!("{ns}/{}", gw.name_any())))
    }

    fn status_addresses(&self) -> Vec<GatewayAddress> {
        self.addresses
            .iter()
            .map(|a| GatewayAddress {
                type_: Some(
                    if a.parse::<std::net::IpAddr>().is_ok() {
                        "IPAddress"
                    } else {
                        "Hostname"
                    }
                    .into(),
                ),
                value: a.clone(),
            })
            .collect()
    }
}

/// The route kinds a listener can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKindName {
    /// `HTTPRoute`.
    Http,
    /// `GRPCRoute`.
    Grpc,
}

impl RouteKindName {
    /// The kind as the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKindName::Http => "HTTPRoute",
            RouteKindName::Grpc => "GRPCRoute",
        }
    }
}

/// The features roundhouse lists in `GatewayClass.status.supportedFeatures`
/// (the conformance suite's names; docs/gateway-api.md says what backs each).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "GRPCRoute",
    "Gateway",
    "HTTPRoute",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendTimeout",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// A route of either kind, by kind and store key.
pub type RouteId = (RouteKindName, String);

/// Every object the adapter reads, as watch stores (cluster-wide), and
/// what the last compute made of them, kept so that the next compute
/// redoes only what a change touches.
#[derive(Debug)]
pub struct GatewayIndex {
    /// GatewayClasses (cluster-scoped), by name.
    pub classes: Buffered<GatewayClass>,
    /// Gateways, by `namespace/name`.
    pub gateways: Buffered<Gateway>,
    /// HTTPRoutes.
    pub http: Buffered<HTTPRoute>,
    /// GRPCRoutes.
    pub grpc: Buffered<GRPCRoute>,
    /// ReferenceGrants.
    pub grants: Buffered<ReferenceGrant>,
    /// Namespaces (for `allowedRoutes` selectors), by name.
    pub namespaces: Buffered<Namespace>,
    /// `kubernetes.io/tls` Secrets.
    pub secrets: Buffered<Secret>,
    /// EndpointSlices.
    pub slices: Buffered<EndpointSlice>,
    /// Services (a backendRef names a Service port, whose name finds the
    /// port on the slices).
    pub services: Buffered<Service>,
    /// The Gateways' side of the last compute and the configuration it
    /// was made with.
    planned: Option<(GatewayConfig, Planned)>,
    /// Each route with a parent this LB handles: its attachment, its
    /// model route and its status entries.
    routes: BTreeMap<RouteId, Cached>,
    /// The routes whose rules name each Service (`namespace/name`).
    by_service: HashMap<String, BTreeSet<RouteId>>,
    /// The EndpointSlices (keys) of each Service (`namespace/name`).
    slices_of: HashMap<String, BTreeSet<String>>,
    /// Service ports resolved, shared by every rule that names them, by
    /// `namespace/name:port` and whether h2c is forced.
    backends: HashMap<(String, bool), Result<Arc<Backend>, Failed>>,
    /// What changed since the last compute.
    pending: Pending,
}

impl Default for GatewayIndex {
    fn default() -> Self {
        Self {
            classes: Buffered::keyed(by_name),
            gateways: Buffered::keyed(by_namespace_and_name),
            http: Buffered::keyed(by_namespace_and_name),
            grpc: Buffered::keyed(by_namespace_and_name),
            grants: Buffered::keyed(by_namespace_and_name),
            namespaces: Buffered::keyed(by_name),
            secrets: Buffered::keyed(by_namespace_and_name),
            slices: Buffered::keyed(by_namespace_and_name),
            services: Buffered::keyed(by_namespace_and_name),
            planned: None,
            routes: BTreeMap::new(),
            by_service: HashMap::new(),
            slices_of: HashMap::new(),
            backends: HashMap::new(),
            pending: Pending {
                all: true,
                ..Pending::default()
            },
        }
    }
}

/// What changed since the last compute.
#[derive(Debug, Default)]
struct Pending {
    /// Something every route depends on (a class, a Gateway, a grant, a
    /// namespace, a Secret, a re-list): everything again.
    all: bool,
    /// Routes whose object changed: attached and resolved again.
    routes: BTreeSet<RouteId>,
    /// Services whose object or slices changed: the routes naming them
    /// resolved again.
    services: BTreeSet<String>,
}

/// The Gateways' side of a compute: class statuses, listener plans, the
/// certificates to serve, Gateway statuses.
#[derive(Debug, Default)]
struct Planned {
    classes: BTreeMap<String, GatewayClassStatus>,
    /// The programmed Gateways, oldest first (conflicts go to the oldest).
    plans: Vec<GatewayPlan>,
    /// Each plan's position, by Gateway key.
    by_key: BTreeMap<String, usize>,
    certs: Vec<CertPair>,
    gateways: BTreeMap<String, GatewayStatus>,
}

/// One route with a parent this LB handles, attached and resolved.
#[derive(Debug)]
struct Cached {
    attached: AttachedRoute,
    /// Its model route, when it is served somewhere.
    route: Option<Arc<Route>>,
    /// Our entries of its `status.parents`.
    status: Vec<RouteParentStatus>,
    /// The Services (`namespace/name`) its rules name.
    services: BTreeSet<String>,
}

/// What a compute decided, for the publisher and the status writers (the
/// statuses themselves stay in the index: [`GatewayIndex::class_status`]
/// and its siblings).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Computed {
    /// The routing snapshot.
    pub routing: RoutingConfig,
    /// The certificates of the served HTTPS listeners.
    pub certs: Vec<CertPair>,
    /// The objects whose status was computed again, as
    /// (`gatewayclasses`/`gateways`/`httproutes`/`grpcroutes`, key).
    pub touched: Vec<(&'static str, String)>,
}

/// What one watch event changed, as the loop needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing visible changed.
    Nothing,
    /// Something the routing or the statuses depend on changed: compute again.
    Changed,
    /// Only the status (or metadata other than what the adapter reads) of
    /// the object with this key changed, e.g. our own write coming back:
    /// nothing to compute, only the status writer's view to update.
    StatusOnly(String),
}

/// Like [`Applied::Changed`] for any change, and an update that keeps
/// `same` (spec, generation) is [`Applied::StatusOnly`]. Also returns the
/// key of the one object changed (`None`: all of them may have).
fn touched_status<K>(
    t: super::store::Touched<K>,
    live: &BTreeMap<String, K>,
    same: impl Fn(&K, &K) -> bool,
) -> (Applied, Option<String>) {
    match t {
        super::store::Touched::Nothing => (Applied::Nothing, None),
        super::store::Touched::All => (Applied::Changed, None),
        super::store::Touched::One { name, old } => match old {
            Some(old) if live.get(&name).is_some_and(|new| same(&old, new)) => {
                (Applied::StatusOnly(name), None)
            }
            _ => (Applied::Changed, Some(name)),
        },
    }
}

impl GatewayIndex {
    /// True once every store has listed.
    pub fn synced(&self) -> bool {
        self.classes.synced()
            && self.gateways.synced()
            && self.http.synced()
            && self.grpc.synced()
            && self.grants.synced()
            && self.namespaces.synced()
            && self.secrets.synced()
            && self.slices.synced()
            && self.services.synced()
    }

    /// Applies a GatewayClass event.
    pub fn apply_class(&mut self, e: Event<GatewayClass>) -> Applied {
        let t = self.classes.apply(e);
        let (a, _) = touched_status(t, self.classes.live(), |a, b| {
            a.spec == b.spec && a.metadata.generation == b.metadata.generation
        });
        self.everything_if(a)
    }
    /// Applies a Gateway event.
    pub fn apply_gateway(&mut self, e: Event<Gateway>) -> Applied {
        let t = self.gateways.apply(e);
        let (a, _) = touched_status(t, self.gateways.live(), |a, b| {
            a.spec == b.spec
                && a.metadata.generation == b.metadata.generation
                && a.metadata.creation_timestamp == b.metadata.creation_timestamp
        });
        self.everything_if(a)
    }
    /// Applies an HTTPRoute event.
    pub fn apply_http(&mut self, e: Event<HTTPRoute>) -> Applied {
        let t = self.http.apply(e);
        let (a, key) = touched_status(t, self.http.live(), |a, b| {
            a.spec == b.spec && a.metadata.generation == b.metadata.generation
        });
        self.route_if(a, RouteKindName::Http, key)
    }
    /// Applies a GRPCRoute event.
    pub fn apply_grpc(&mut self, e: Event<GRPCRoute>) -> Applied {
        let t = self.grpc.apply(e);
        let (a, key) = touched_status(t, self.grpc.live(), |a, b| {
            a.spec == b.spec && a.metadata.generation == b.metadata.generation
        });
        self.route_if(a, RouteKindName::Grpc, key)
    }
    /// Applies a ReferenceGrant event.
    pub fn apply_grant(&mut self, e: Event<ReferenceGrant>) -> Applied {
        let t = self.grants.apply(e);
        let (a, _) = touched_status(t, self.grants.live(), |_, _| false);
        self.everything_if(a)
    }
    /// Applies a Namespace event.
    pub fn apply_namespace(&mut self, e: Event<Namespace>) -> Applied {
        let t = self.namespaces.apply(e);
        let (a, _) = touched_status(t, self.namespaces.live(), |_, _| false);
        self.everything_if(a)
    }
    /// Applies a Secret event.
    pub fn apply_secret(&mut self, e: Event<Secret>) -> Applied {
        let t = self.secrets.apply(e);
        let (a, _) = touched_status(t, self.secrets.live(), |_, _| false);
        self.everything_if(a)
    }
    /// Applies an EndpointSlice event: the Service it belongs to (before
    /// and after) is resolved again.
    pub fn apply_slice(&mut self, e: Event<EndpointSlice>) -> Applied {
        match self.slices.apply(e) {
            super::store::Touched::Nothing => Applied::Nothing,
            super::store::Touched::All => {
                self.slices_of.clear();
                for (key, s) in self.slices.live() {
                    if let Some(svc) = slice_service(key, s) {
                        self.slices_of.entry(svc).or_default().insert(key.clone());
                    }
                }
                self.pending.all = true;
                Applied::Changed
            }
            super::store::Touched::One { name, old } => {
                if let Some(svc) = old.as_ref().and_then(|s| slice_service(&name, s)) {
                    if let Some(keys) = self.slices_of.get_mut(&svc) {
                        keys.remove(&name);
                    }
                    self.pending.services.insert(svc);
                }
                if let Some(svc) = self
                    .slices
                    .live()
                    .get(&name)
                    .and_then(|s| slice_service(&name, s))
                {
                    self.slices_of.entry(svc.clone()).or_default().insert(name);
                    self.pending.services.insert(svc);
                }
                Applied::Changed
            }
        }
    }
    /// Applies a Service event.
    pub fn apply_service(&mut self, e: Event<Service>) -> Applied {
        match self.services.apply(e) {
            super::store::Touched::Nothing => Applied::Nothing,
            super::store::Touched::All => {
                self.pending.all = true;
                Applied::Changed
            }
            super::store::Touched::One { name, .. } => {
                self.pending.services.insert(name);
                Applied::Changed
            }
        }
    }

    /// Notes that everything must be computed again when `a` is a change.
    fn everything_if(&mut self, a: Applied) -> Applied {
        if a == Applied::Changed {
            self.pending.all = true;
        }
        a
    }

    /// Notes that the route `key` of `kind` (`None`: every route) must be
    /// attached again when `a` is a change.
    fn route_if(&mut self, a: Applied, kind: RouteKindName, key: Option<String>) -> Applied {
        if a == Applied::Changed {
            match key {
                Some(key) => {
                    self.pending.routes.insert((kind, key));
                }
                None => self.pending.all = true,
            }
        }
        a
    }

    /// Whether `class` is served by this LB.
    fn ours(class: &GatewayClass, config: &GatewayConfig) -> bool {
        class.spec.controller_name == CONTROLLER_NAME
            && (config.classes.is_empty() || config.classes.contains(&class.name_any()))
    }

    /// The computed status of the GatewayClass `name`.
    pub fn class_status(&self, name: &str) -> Option<&GatewayClassStatus> {
        self.planned.as_ref()?.1.classes.get(name)
    }

    /// The computed status of the Gateway `key` (`namespace/name`).
    pub fn gateway_status(&self, key: &str) -> Option<&GatewayStatus> {
        self.planned.as_ref()?.1.gateways.get(key)
    }

    /// Our computed entries of the `status.parents` of the route `key`.
    pub fn route_status(&self, kind: RouteKindName, key: &str) -> Option<&Vec<RouteParentStatus>> {
        self.routes.get(&(kind, key.to_owned())).map(|c| &c.status)
    }

    /// Computes routing, certificates and statuses from the stores, redoing
    /// only what changed since the last compute: a Gateway-side change
    /// (class, Gateway, grant, namespace, Secret, configuration) redoes
    /// everything; a route change attaches and resolves that route; a
    /// Service or EndpointSlice change resolves the routes that name the
    /// Service. The result is what a compute from nothing would give.
    pub fn compute(&mut self, config: &GatewayConfig, now: &Time) -> Computed {
        let pending = std::mem::take(&mut self.pending);
        let replan = pending.all || !matches!(&self.planned, Some((c, _)) if c == config);
        let mut touched: Vec<(&'static str, String)> = Vec::new();
        let reattach: BTreeSet<RouteId> = if replan {
            let planned = self.plan(config, now);
            touched.extend(
                planned
                    .classes
                    .keys()
                    .map(|k| ("gatewayclasses", k.clone())),
            );
            self.planned = Some((config.clone(), planned));
            self.backends.clear();
            let mut all: BTreeSet<RouteId> = self.routes.keys().cloned().collect();
            all.extend(
                self.http
                    .live()
                    .keys()
                    .map(|k| (RouteKindName::Http, k.clone())),
            );
            all.extend(
                self.grpc
                    .live()
                    .keys()
                    .map(|k| (RouteKindName::Grpc, k.clone())),
            );
            all
        } else {
            pending.routes
        };
        let mut resolve: BTreeSet<RouteId> = BTreeSet::new();
        for svc in &pending.services {
            let prefix = format!("{svc}:");
            self.backends.retain(|(k, _), _| !k.starts_with(&prefix));
            resolve.extend(self.by_service.get(svc).into_iter().flatten().cloned());
        }
        let reattached = !reattach.is_empty();
        for id in reattach {
            if let Some(old) = self.routes.remove(&id) {
                self.unlink(&id, &old.services);
            }
            if let Some(attached) = self.attach(&id) {
                self.routes.insert(
                    id.clone(),
                    Cached {
                        attached,
                        route: None,
                        status: Vec::new(),
                        services: BTreeSet::new(),
                    },
                );
                resolve.insert(id);
            }
        }
        for id in resolve {
            self.resolve(&id, now);
            let resource = match id.0 {
                RouteKindName::Http => "httproutes",
                RouteKindName::Grpc => "grpcroutes",
            };
            touched.push((resource, id.1));
        }
        if reattached || replan {
            self.gateway_statuses(config, now);
            let planned = &self.planned.as_ref().expect("planned above").1;
            touched.extend(planned.gateways.keys().map(|k| ("gateways", k.clone())));
        }
        let planned = &self.planned.as_ref().expect("planned above").1;
        Computed {
            routing: RoutingConfig {
                upstreams: Vec::new(),
                routes: self
                    .routes
                    .values()
                    .filter_map(|c| c.route.clone())
                    .collect(),
            },
            certs: planned.certs.clone(),
            touched,
        }
    }

    /// Forgets that the route `id` names `services`.
    fn unlink(&mut self, id: &RouteId, services: &BTreeSet<String>) {
        for svc in services {
            if let Some(ids) = self.by_service.get_mut(svc) {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_service.remove(svc);
                }
            }
        }
    }

    /// The Gateways' side: class statuses, listener plans and certificates
    /// (Gateway statuses wait for the routes: [`Self::gateway_statuses`]).
    fn plan(&self, config: &GatewayConfig, now: &Time) -> Planned {
        let mut out = Planned::default();
        // 1. Classes.
        let mut accepted_classes: Vec<String> = Vec::new();
        for (name, class) in self.classes.live() {
            if !Self::ours(class, config) {
                continue;
            }
            let prev = class.status.clone().unwrap_or_default();
            let accepted = match &class.spec.parameters_ref {
                Some(p) => condition(
                    "Accepted",
                    truth(false),
                    "InvalidParameters",
                    format!(
                        "roundhouse takes no parameters ({}/{} {})",
                        p.group, p.kind, p.name
                    ),
                    class.metadata.generation,
                    &prev.conditions,
                    now,
                ),
                None => {
                    accepted_classes.push(name.clone());
                    condition(
                        "Accepted",
                        truth(true),
                        "Accepted",
                        "handled by roundhouse",
                        class.metadata.generation,
                        &prev.conditions,
                        now,
                    )
                }
            };
            out.classes.insert(
                name.clone(),
                GatewayClassStatus {
                    conditions: vec![accepted],
                    supported_features: SUPPORTED_FEATURES
                        .iter()
                        .map(|f| SupportedFeature {
                            name: (*f).to_owned(),
                        })
                        .collect(),
                },
            );
        }

        // 2. Gateways, oldest first (conflicts between Gateways go to the oldest).
        let mut gws: Vec<&Gateway> = self
            .gateways
            .live()
            .values()
            .filter(|g| accepted_classes.contains(&g.spec.gateway_class_name) && config.programs(g))
            .collect();
        gws.sort_by(|a, b| {
            let ka = format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any());
            let kb = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
            seniority(
                (a.metadata.creation_timestamp.as_ref(), &ka),
                (b.metadata.creation_timestamp.as_ref(), &kb),
            )
        });
        out.plans = gws
            .iter()
            .map(|g| listeners::plan(g, config, self.grants.live(), self.secrets.live()))
            .collect();
        listeners::settle_across_gateways(&mut out.plans);
        out.by_key = out
            .plans
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key.clone(), i))
            .collect();
        for plan in out.plans.iter().filter(|p| p.invalid.is_none()) {
            for l in plan.listeners.iter().filter(|l| l.programmed()) {
                for c in &l.certs {
                    if !out.certs.iter().any(|x| x.name == c.name) {
                        out.certs.push(c.clone());
                    }
                }
            }
        }
        out
    }

    /// The Gateway statuses, with each listener's attached routes counted
    /// over every route.
    fn gateway_statuses(&mut self, config: &GatewayConfig, now: &Time) {
        let Some((_, planned)) = &mut self.planned else {
            return;
        };
        let mut attached: Vec<BTreeMap<String, i32>> = vec![BTreeMap::new(); planned.plans.len()];
        for c in self.routes.values() {
            for &(gi, li) in &c.attached.counted {
                *attached[gi]
                    .entry(planned.plans[gi].listeners[li].name.clone())
                    .or_insert(0) += 1;
            }
        }
        let addresses = config.status_addresses();
        planned.gateways = planned
            .plans
            .iter()
            .zip(&attached)
            .filter_map(|(plan, counts)| {
                let gw = self.gateways.live().get(&plan.key)?;
                Some((
                    plan.key.clone(),
                    listeners::status(gw, plan, counts, &addresses, now),
                ))
            })
            .collect();
    }

    /// The route `id` attached to the planned Gateways. `None`: it is gone,
    /// or has no parent this LB handles (and no stale entry of ours to
    /// remove).
    fn attach(&self, id: &RouteId) -> Option<AttachedRoute> {
        let planned = &self.planned.as_ref()?.1;
        let grants = self.grants.live();
        let (view, origin, rules, previous) = match id.0 {
            RouteKindName::Http => {
                let r = self.http.live().get(&id.1)?;
                let ns = r.namespace().unwrap_or_default();
                let rules = r
                    .spec
                    .rules
                    .iter()
                    .map(|rule| routes::http_rule(rule, &ns, grants))
                    .collect();
                (
                    (&r.spec.parent_refs, &r.spec.hostnames, &r.metadata),
                    (RouteKind::HttpRoute, ns, r.name_any()),
                    rules,
                    r.status.as_ref(),
                )
            }
            RouteKindName::Grpc => {
                let r = self.grpc.live().get(&id.1)?;
                let ns = r.namespace().unwrap_or_default();
                let rules = r
                    .spec
                    .rules
                    .iter()
                    .map(|rule| routes::grpc_rule(rule, &ns, grants))
                    .collect();
                (
                    (&r.spec.parent_refs, &r.spec.hostnames, &r.metadata),
                    (RouteKind::GrpcRoute, ns, r.name_any()),
                    rules,
                    r.status.as_ref(),
                )
            }
        };
        let ((parent_refs, hostnames, meta), (kind, ns, name)) = (view, origin);
        attach_route(
            RouteView {
                kind: id.0,
                namespace: &ns,
                parent_refs,
                hostnames,
            },
            (kind, &name, meta),
            rules,
            previous,
            planned,
            self.namespaces.live(),
        )
    }

    /// Resolves the attached route `id`: its model route (when served) and
    /// its status entries.
    fn resolve(&mut self, id: &RouteId, now: &Time) {
        let Some(c) = self.routes.get(id) else {
            return;
        };
        let r = &c.attached;
        let (previous, generation) = match id.0 {
            RouteKindName::Http => {
                let o = self.http.live().get(&id.1);
                (
                    o.and_then(|o| o.status.as_ref()),
                    o.and_then(|o| o.metadata.generation),
                )
            }
            RouteKindName::Grpc => {
                let o = self.grpc.live().get(&id.1);
                (
                    o.and_then(|o| o.status.as_ref()),
                    o.and_then(|o| o.metadata.generation),
                )
            }
        };
        let mut backends = Backends {
            slices_of: &self.slices_of,
            slices: self.slices.live(),
            services: self.services.live(),
            built: &mut self.backends,
        };
        let mut unresolved: Option<Failed> = None;
        let mut route = None;
        if r.unsupported.is_none() && !r.scopes.is_empty() {
            let rules: Vec<Rule> = r
                .rules
                .iter()
                .map(|rule| backends.rule(rule.clone(), &mut unresolved))
                .collect();
            route = Some(Arc::new(Route {
                origin: r.origin.clone(),
                order: r.order,
                scopes: r.scopes.clone(),
                rules,
            }));
        } else if r.unsupported.is_none() {
            // Not served anywhere: still report its references.
            for rule in &r.rules {
                backends.rule(rule.clone(), &mut unresolved);
            }
        }
        let status = routes::parent_statuses(
            &r.parents,
            r.unsupported.as_deref(),
            unresolved.as_ref(),
            generation,
            previous,
            now,
        );
        let services: BTreeSet<String> = r
            .rules
            .iter()
            .filter_map(|rule| match &rule.action {
                ActionIntent::Forward(shares) => Some(shares),
                ActionIntent::Redirect(_) => None,
            })
            .flatten()
            .filter_map(|s| s.target.as_ref().ok())
            .map(|t| format!("{}/{}", t.namespace, t.name))
            .collect();
        let old = std::mem::take(&mut self.routes.get_mut(id).expect("checked").services);
        self.unlink(id, &old);
        for svc in &services {
            self.by_service
                .entry(svc.clone())
                .or_default()
                .insert(id.clone());
        }
        let c = self.routes.get_mut(id).expect("checked");
        c.route = route;
        c.status = status;
        c.services = services;
    }
}

/// The Service (`namespace/name`) of the slice `key`.
fn slice_service(key: &str, slice: &EndpointSlice) -> Option<String> {
    let (ns, _) = key.split_once('/')?;
    endpoints::service_of(slice).map(|svc| format!("{ns}/{svc}"))
}

/// One route's attachment. `None`: the route has no parent this LB
/// handles (and no stale entry of ours to remove).
fn attach_route(
    view: RouteView<'_>,
    (kind, name, meta): (RouteKind, &str, &kube::api::ObjectMeta),
    rules: Vec<Result<RuleIntent, routes::Unsupported>>,
    previous: Option<&RouteStatus>,
    planned: &Planned,
    namespaces: &BTreeMap<String, Namespace>,
) -> Option<AttachedRoute> {
    let plans = &planned.plans;
    let hostnames: Result<Vec<HostMatch>, _> =
        view.hostnames.iter().map(|h| HostMatch::parse(h)).collect();
    let parents = routes::attach(
        view,
        hostnames.as_deref().unwrap_or_default(),
        plans,
        &planned.by_key,
        namespaces,
    );
    let stale = previous.is_some_and(|s| {
        s.parents.iter().any(|e| {
            e.controller_name == CONTROLLER_NAME && !view.parent_refs.contains(&e.parent_ref)
        })
    });
    if parents.iter().all(|(_, p)| *p == Parent::NotOurs) && !stale {
        return None;
    }
    let unsupported: Option<String> = match &hostnames {
        Err(e) => Some(e.to_string()),
        Ok(_) => rules.iter().find_map(|r| r.as_ref().err().cloned()),
    };
    // Attached route counts: once per listener, whatever the rules say.
    let mut counted: Vec<(usize, usize)> = Vec::new();
    if unsupported.is_none() {
        for (_, p) in &parents {
            if let Parent::Attached(list) = p {
                for (gi, li, _) in list {
                    if !counted.contains(&(*gi, *li)) {
                        counted.push((*gi, *li));
                    }
                }
            }
        }
    }
    let scopes = if unsupported.is_none() {
        routes::scopes(&parents, plans)
    } else {
        Vec::new()
    };
    Some(AttachedRoute {
        origin: Origin {
            kind,
            namespace: view.namespace.into(),
            name: name.into(),
        },
        order: Order {
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
        },
        scopes,
        rules: rules.into_iter().flatten().collect(),
        parents,
        unsupported,
        counted,
    })
}

/// One route with a parent this LB handles, before endpoint resolution.
#[derive(Debug)]
struct AttachedRoute {
    origin: Origin,
    order: Order,
    scopes: Vec<crate::discovery::route::Scope>,
    rules: Vec<RuleIntent>,
    parents: Vec<(ParentReference, Parent)>,
    unsupported: Option<String>,
    /// The listeners (Gateway, listener) it counts as attached to.
    counted: Vec<(usize, usize)>,
}

/// Service ports resolved to model backends, kept between computes and
/// shared by every rule that names them.
struct Backends<'a> {
    slices_of: &'a HashMap<String, BTreeSet<String>>,
    slices: &'a BTreeMap<String, EndpointSlice>,
    services: &'a BTreeMap<String, Service>,
    built: &'a mut HashMap<(String, bool), Result<Arc<Backend>, Failed>>,
}

impl Backends<'_> {
    fn backend(&mut self, s: &ServiceRef, force_h2c: bool) -> Result<Arc<Backend>, Failed> {
        let key = format!("{}/{}:{}", s.namespace, s.name, s.port_text());
        if let Some(b) = self.built.get(&(key.clone(), force_h2c)) {
            return b.clone();
        }
        let built = self.build(s, &key, force_h2c);
        self.built.insert((key, force_h2c), built.clone());
        built
    }

    /// A Service port: the Service must exist and have the port; the
    /// port's name (unnamed: the slices' only port) finds the endpoints'
    /// port on the Service's EndpointSlices.
    fn build(&self, s: &ServiceRef, key: &str, force_h2c: bool) -> Result<Arc<Backend>, Failed> {
        let svc_key = format!("{}/{}", s.namespace, s.name);
        let Some(svc) = self.services.get(&svc_key) else {
            return Err(("BackendNotFound", format!("Service {svc_key} not found")));
        };
        let wanted = match &s.port {
            Some(IntOrString::Int(n)) => *n,
            _ => 0,
        };
        let Some(port) = endpoints::service_port(svc, &IntOrString::Int(wanted)) else {
            return Err((
                "BackendNotFound",
                format!("Service {svc_key} has no port {wanted}"),
            ));
        };
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(&svc_key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .collect();
        let resolved = match endpoints::resolve_service_port(&slices, port) {
            Ok(r) => r,
            Err(PortError::Unknown | PortError::Ambiguous { .. }) => {
                // The slices do not have the port (yet): no endpoints.
                endpoints::resolve(&[], None).expect("no slices resolve")
            }
        };
        // The Service port's appProtocol counts even while its slices lack
        // the port.
        let h2c = resolved.h2c || port.app_protocol.as_deref() == Some(H2C_APP_PROTOCOL);
        let protocol = if force_h2c || h2c {
            Protocol::H2c
        } else {
            Protocol::Http1
        };
        let name = if force_h2c && !h2c {
            format!("{key} h2c")
        } else {
            key.to_owned()
        };
        Ok(Arc::new(Backend {
            name: name.into(),
            endpoints: resolved.routed,
            protocol,
            policy: UpstreamPolicy::default(),
        }))
    }

    /// The model rule of `r`, noting the first unresolved reference.
    fn rule(&mut self, r: RuleIntent, unresolved: &mut Option<Failed>) -> Rule {
        let action = match r.action {
            ActionIntent::Redirect(redirect) => Action::Redirect(redirect),
            ActionIntent::Forward(shares) if shares.is_empty() => Action::Respond(FixedResponse {
                status: http::StatusCode::INTERNAL_SERVER_ERROR,
                body: "no backendRefs\n".into(),
            }),
            ActionIntent::Forward(shares) => Action::Forward(
                shares
                    .into_iter()
                    .map(|s| {
                        let target = s.target.and_then(|t| self.backend(&t, false));
                        WeightedBackend {
                            weight: s.weight,
                            target: match target {
                                Ok(b) => BackendRef::Resolved(b),
                                Err(failed) => {
                                    let why: Arc<str> = failed.1.as_str().into();
                                    unresolved.get_or_insert(failed);
                                    BackendRef::Invalid(why)
                                }
                            },
                        }
                    })
                    .collect(),
            ),
        };
        Rule {
            name: r.name.map(Into::into),
            matches: r.matches,
            filters: r.filters,
            action,
            policy: r.policy,
        }
    }
}

/// Our status entries as the object shows them now: entries with our
/// controller name for the parents in `ours`, and stale ones (a parent no
/// longer in the spec). Compared with the computed entries to decide
/// whether to write.
pub fn current_entries(
    status: Option<&RouteStatus>,
    spec_parents: &[ParentReference],
    ours: &[RouteParentStatus],
) -> Vec<RouteParentStatus> {
    let Some(status) = status else {
        return Vec::new();
    };
    let mut out: Vec<RouteParentStatus> = ours
        .iter()
        .filter_map(|o| {
            status
                .parents
                .iter()
                .find(|e| e.controller_name == CONTROLLER_NAME && e.parent_ref == o.parent_ref)
                .cloned()
        })
        .collect();
    out.extend(
        status
            .parents
            .iter()
            .filter(|e| {
                e.controller_name == CONTROLLER_NAME && !spec_parents.contains(&e.parent_ref)
            })
            .cloned(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    fn obj<K: DeserializeOwned>(v: Value) -> K {
        serde_json::from_value(v).expect("a valid object")
    }

    /// The objects of the cluster, as a test changes them.
    #[derive(Clone, Default)]
    struct World {
        gateways: BTreeMap<String, Value>,
        routes: BTreeMap<String, Value>,
        services: BTreeMap<String, Value>,
        slices: BTreeMap<String, Value>,
    }

    fn class() -> GatewayClass {
        obj(json!({"metadata": {"name": "rh"}, "spec": {"controllerName": CONTROLLER_NAME}}))
    }

    fn namespace() -> Namespace {
        obj(json!({"metadata": {"name": "ns"}}))
    }

    fn gateway(wildcard: bool) -> Value {
        let mut listeners = vec![json!({"name": "http", "port": 80, "protocol": "HTTP",
                                        "allowedRoutes": {"namespaces": {"from": "All"}}})];
        if wildcard {
            listeners.push(json!({"name": "wild", "port": 80, "protocol": "HTTP",
                                  "hostname": "*.example",
                                  "allowedRoutes": {"namespaces": {"from": "Same"}}}));
        }
        json!({"metadata": {"name": "gw", "namespace": "ns", "generation": 1},
               "spec": {"gatewayClassName": "rh", "listeners": listeners}})
    }

    fn service(i: usize) -> Value {
        json!({"metadata": {"name": format!("svc-{i}"), "namespace": "ns"},
               "spec": {"ports": [{"name": "http", "port": 8080}]}})
    }

    fn slice(i: usize, ips: &[String]) -> Value {
        let endpoints: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        json!({"metadata": {"name": format!("svc-{i}-abc"), "namespace": "ns",
                            "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
               "endpoints": endpoints})
    }

    /// A fresh index over the world, every store listed.
    fn listed(w: &World) -> GatewayIndex {
        let mut index = GatewayIndex::default();
        macro_rules! list {
            ($apply:ident, $items:expr) => {
                index.$apply(Event::Init);
                for o in $items {
                    index.$apply(Event::InitApply(o));
                }
                index.$apply(Event::InitDone);
            };
        }
        list!(apply_class, [class()]);
        list!(apply_namespace, [namespace()]);
        list!(apply_gateway, w.gateways.values().map(|v| obj(v.clone())));
        list!(apply_http, w.routes.values().map(|v| obj(v.clone())));
        list!(apply_grpc, Vec::<GRPCRoute>::new());
        list!(apply_grant, Vec::<ReferenceGrant>::new());
        list!(apply_secret, Vec::<Secret>::new());
        list!(apply_service, w.services.values().map(|v| obj(v.clone())));
        list!(apply_slice, w.slices.values().map(|v| obj(v.clone())));
        index
    }

    /// Everything a compute decided, statuses included.
    fn decided(index: &mut GatewayIndex, config: &GatewayConfig, now: &Time) -> String {
        let c = index.compute(config, now);
        let routes: Vec<String> = index.http.live().keys().cloned().collect();
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            c.routing,
            c.certs,
            index.class_status("rh"),
            index.gateway_status("ns/gw"),
            routes
                .iter()
                .map(|k| (k, index.route_status(RouteKindName::Http, k)))
                .collect::<Vec<_>>()
        )
    }

    #[test]
    fn a_compute_after_changes_is_a_compute_from_nothing() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) as usize) % n
        };
        let config = GatewayConfig {
            addresses: vec!["127.0.0.1".into()],
            ..GatewayConfig::default()
        };
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let mut w = World::default();
        w.gateways.insert("ns/gw".into(), gateway(false));
        for i in 0..4 {
            w.services.insert(format!("ns/svc-{i}"), service(i));
            w.slices.insert(
                format!("ns/svc-{i}-abc"),
                slice(i, &[format!("10.0.{i}.1")]),
            );
        }
        let mut incremental = listed(&w);
        decided(&mut incremental, &config, &now);
        let hosts = ["a.example", "b.example", "c.other", "*.example"];
        for step in 0..300 {
            match next(8) {
                0 => {
                    // An endpoint change.
                    let i = next(4);
                    let ips: Vec<String> = (0..1 + next(3))
                        .map(|_| format!("10.0.{i}.{}", 1 + next(5)))
                        .collect();
                    let s = slice(i, &ips);
                    w.slices.insert(format!("ns/svc-{i}-abc"), s.clone());
                    incremental.apply_slice(Event::Apply(obj(s)));
                }
                1 => {
                    // A Service goes or comes back (svc-4 never exists).
                    let i = next(4);
                    let key = format!("ns/svc-{i}");
                    match w.services.remove(&key) {
                        Some(s) => {
                            incremental.apply_service(Event::Delete(obj(s)));
                        }
                        None => {
                            w.services.insert(key, service(i));
                            incremental.apply_service(Event::Apply(obj(service(i))));
                        }
                    }
                }
                2 if next(4) == 0 => {
                    // The Gateway gains or loses a listener.
                    let g = gateway(next(2) == 0);
                    w.gateways.insert("ns/gw".into(), g.clone());
                    incremental.apply_gateway(Event::Apply(obj(g)));
                }
                3 => {
                    let key = format!("ns/r{}", next(8));
                    if let Some(r) = w.routes.remove(&key) {
                        incremental.apply_http(Event::Delete(obj(r)));
                    }
                }
                _ => {
                    // A route is created or changed.
                    let name = format!("r{}", next(8));
                    let rules: Vec<Value> = (0..1 + next(3))
                        .map(|_| {
                            let prefix = ["/", "/a", "/b"][next(3)];
                            let refs: Vec<Value> = (0..next(3))
                                .map(|_| {
                                    json!({"name": format!("svc-{}", next(5)), "port": 8080,
                                                "weight": next(3)})
                                })
                                .collect();
                            json!({"matches": [{"path": {"type": "PathPrefix",
                                                         "value": prefix}}],
                                   "backendRefs": refs})
                        })
                        .collect();
                    let section = ["http", "wild", "none"][next(3)];
                    let host = hosts[next(hosts.len())];
                    let parent = if next(3) == 0 {
                        json!({"name": "gw", "sectionName": section})
                    } else {
                        json!({"name": "gw"})
                    };
                    let r = json!({"metadata": {"name": name, "namespace": "ns",
                                                "generation": 1 + next(3),
                                                "creationTimestamp": "2026-01-01T00:00:00Z"},
                                   "spec": {"parentRefs": [parent],
                                            "hostnames": [host],
                                            "rules": rules}});
                    w.routes.insert(format!("ns/{name}"), r.clone());
                    incremental.apply_http(Event::Apply(obj(r)));
                }
            }
            if next(3) == 0 {
                continue; // changes pile up before the next compute
            }
            let got = decided(&mut incremental, &config, &now);
            let want = decided(&mut listed(&w), &config, &now);
            assert_eq!(got, want, "step {step}");
        }
    }
}
