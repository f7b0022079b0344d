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

use std::collections::{BTreeMap, HashMap};
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

/// Every object the adapter reads, as watch stores (cluster-wide).
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
    /// The last attachment and the configuration it was made with.
    attached: Option<(GatewayConfig, Attached)>,
    /// An object the attachment reads changed since.
    dirty: bool,
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
            attached: None,
            dirty: true,
        }
    }
}

/// Everything the adapter decides from the stores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Computed {
    /// The routing snapshot.
    pub routing: RoutingConfig,
    /// The certificates of the served HTTPS listeners.
    pub certs: Vec<CertPair>,
    /// Status of each GatewayClass that names our controller.
    pub classes: BTreeMap<String, GatewayClassStatus>,
    /// Status of each Gateway this LB programs (`namespace/name`).
    pub gateways: BTreeMap<String, GatewayStatus>,
    /// Our entries of each HTTPRoute's `status.parents`.
    pub http: BTreeMap<String, Vec<RouteParentStatus>>,
    /// Our entries of each GRPCRoute's `status.parents`.
    pub grpc: BTreeMap<String, Vec<RouteParentStatus>>,
}

impl Computed {
    /// The keys of the objects of `resource` (`gatewayclasses`, `gateways`,
    /// `httproutes`, `grpcroutes`) that have a computed status.
    pub fn keys(&self, resource: &str) -> Vec<String> {
        match resource {
            "gatewayclasses" => self.classes.keys().cloned().collect(),
            "gateways" => self.gateways.keys().cloned().collect(),
            "httproutes" => self.http.keys().cloned().collect(),
            "grpcroutes" => self.grpc.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
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

fn touched<K>(t: super::store::Touched<K>) -> Applied {
    match t {
        super::store::Touched::Nothing => Applied::Nothing,
        _ => Applied::Changed,
    }
}

/// Like [`touched`], but an update that keeps `same` (spec, generation)
/// is [`Applied::StatusOnly`].
fn touched_status<K: Clone>(
    t: super::store::Touched<K>,
    live: &BTreeMap<String, K>,
    same: impl Fn(&K, &K) -> bool,
) -> Applied {
    match t {
        super::store::Touched::One {
            name,
            old: Some(old),
        } if live.get(&name).is_some_and(|new| same(&old, new)) => Applied::StatusOnly(name),
        other => touched(other),
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
        let a = touched_status(t, self.classes.live(), |a, b| {
            a.spec == b.spec && a.metadata.generation == b.metadata.generation
        });
        self.mark(a)
    }
    /// Applies a Gateway event.
    pub fn apply_gateway(&mut self, e: Event<Gateway>) -> Applied {
        let t = self.gateways.apply(e);
        let a = touched_status(t, self.gateways.live(), |a, b| {
            a.spec == b.spec
                && a.metadata.generation == b.metadata.generation
                && a.metadata.creation_timestamp == b.metadata.creation_timestamp
        });
        self.mark(a)
    }
    /// Applies an HTTPRoute event.
    pub fn apply_http(&mut self, e: Event<HTTPRoute>) -> Applied {
        let t = self.http.apply(e);
        let a = touched_status(t, self.http.live(), |a, b| {
            a.spec == b.spec && a.metadata.generation == b.metadata.generation
        });
        self.mark(a)
    }
    /// Applies a GRPCRoute event.
    pub fn apply_grpc(&mut self, e: Event<GRPCRoute>) -> Applied {
        let t = self.grpc.apply(e);
        let a = touched_status(t, self.grpc.live(), |a, b| {
            a.spec == b.spec && a.metadata.generation == b.metadata.generation
        });
        self.mark(a)
    }
    /// Applies a ReferenceGrant event.
    pub fn apply_grant(&mut self, e: Event<ReferenceGrant>) -> Applied {
        let t = touched(self.grants.apply(e));
        self.mark(t)
    }
    /// Applies a Namespace event.
    pub fn apply_namespace(&mut self, e: Event<Namespace>) -> Applied {
        let t = touched(self.namespaces.apply(e));
        self.mark(t)
    }
    /// Applies a Secret event.
    pub fn apply_secret(&mut self, e: Event<Secret>) -> Applied {
        let t = touched(self.secrets.apply(e));
        self.mark(t)
    }

    /// Notes that the attachment must be redone when `a` is a change.
    fn mark(&mut self, a: Applied) -> Applied {
        if a == Applied::Changed {
            self.dirty = true;
        }
        a
    }
    /// Applies an EndpointSlice event.
    pub fn apply_slice(&mut self, e: Event<EndpointSlice>) -> Applied {
        touched(self.slices.apply(e))
    }
    /// Applies a Service event.
    pub fn apply_service(&mut self, e: Event<Service>) -> Applied {
        touched(self.services.apply(e))
    }

    /// Whether `class` is served by this LB.
    fn ours(class: &GatewayClass, config: &GatewayConfig) -> bool {
        class.spec.controller_name == CONTROLLER_NAME
            && (config.classes.is_empty() || config.classes.contains(&class.name_any()))
    }

    /// Computes routing, certificates and statuses from the stores. The
    /// attachment (classes, Gateways, listeners, routes' parents and rules)
    /// is kept between calls and redone only when an object it reads
    /// changed; endpoint resolution runs every time (an EndpointSlice or
    /// Service change redoes only that).
    pub fn compute(&mut self, config: &GatewayConfig, now: &Time) -> Computed {
        let fresh = !matches!(&self.attached, Some((cfg, _)) if !self.dirty && cfg == config);
        if fresh {
            let attached = self.attach(config, now);
            self.attached = Some((config.clone(), attached));
            self.dirty = false;
        }
        let attached = &self.attached.as_ref().expect("set above").1;
        let mut out = Computed {
            routing: RoutingConfig::default(),
            certs: attached.certs.clone(),
            classes: attached.classes.clone(),
            gateways: attached.gateways.clone(),
            http: BTreeMap::new(),
            grpc: BTreeMap::new(),
        };
        let slices_by_service = endpoints::slices_by_service(self.slices.live());
        let mut backends = Backends {
            slices: &slices_by_service,
            services: self.services.live(),
            built: HashMap::new(),
        };
        for r in &attached.routes {
            let (previous, generation) = match r.kind {
                RouteKindName::Http => {
                    let o = self.http.live().get(&r.key);
                    (
                        o.and_then(|o| o.status.as_ref()),
                        o.and_then(|o| o.metadata.generation),
                    )
                }
                RouteKindName::Grpc => {
                    let o = self.grpc.live().get(&r.key);
                    (
                        o.and_then(|o| o.status.as_ref()),
                        o.and_then(|o| o.metadata.generation),
                    )
                }
            };
            let mut unresolved: Option<Failed> = None;
            if r.unsupported.is_none() && !r.scopes.is_empty() {
                let rules: Vec<Rule> = r
                    .rules
                    .iter()
                    .map(|rule| backends.rule(rule.clone(), &mut unresolved))
                    .collect();
                out.routing.routes.push(Arc::new(Route {
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
            let entries = routes::parent_statuses(
                &r.parents,
                r.unsupported.as_deref(),
                unresolved.as_ref(),
                generation,
                previous,
                now,
            );
            match r.kind {
                RouteKindName::Http => out.http.insert(r.key.clone(), entries),
                RouteKindName::Grpc => out.grpc.insert(r.key.clone(), entries),
            };
        }
        out
    }

    /// The attachment: class and Gateway statuses, certificates, and each
    /// route's parents, rules and scopes.
    fn attach(&self, config: &GatewayConfig, now: &Time) -> Attached {
        let mut out = Attached::default();
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
        let mut plans: Vec<GatewayPlan> = gws
            .iter()
            .map(|g| listeners::plan(g, config, self.grants.live(), self.secrets.live()))
            .collect();
        listeners::settle_across_gateways(&mut plans);
        let by_key: BTreeMap<String, usize> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key.clone(), i))
            .collect();
        let mut attached: Vec<BTreeMap<String, i32>> = vec![BTreeMap::new(); plans.len()];

        // 3. Routes.
        let namespaces = self.namespaces.live();
        let grants = self.grants.live();
        for (key, r) in self.http.live() {
            let ns = r.namespace().unwrap_or_default();
            let rules = r
                .spec
                .rules
                .iter()
                .map(|rule| routes::http_rule(rule, &ns, grants))
                .collect();
            if let Some(a) = Self::attach_route(
                RouteView {
                    kind: RouteKindName::Http,
                    namespace: &ns,
                    parent_refs: &r.spec.parent_refs,
                    hostnames: &r.spec.hostnames,
                },
                (key, RouteKind::HttpRoute, &r.name_any(), &r.metadata),
                rules,
                r.status.as_ref(),
                &plans,
                &by_key,
                namespaces,
                &mut attached,
            ) {
                out.routes.push(a);
            }
        }
        for (key, r) in self.grpc.live() {
            let ns = r.namespace().unwrap_or_default();
            let rules = r
                .spec
                .rules
                .iter()
                .map(|rule| routes::grpc_rule(rule, &ns, grants))
                .collect();
            if let Some(a) = Self::attach_route(
                RouteView {
                    kind: RouteKindName::Grpc,
                    namespace: &ns,
                    parent_refs: &r.spec.parent_refs,
                    hostnames: &r.spec.hostnames,
                },
                (key, RouteKind::GrpcRoute, &r.name_any(), &r.metadata),
                rules,
                r.status.as_ref(),
                &plans,
                &by_key,
                namespaces,
                &mut attached,
            ) {
                out.routes.push(a);
            }
        }

        // Gateway statuses and certificates.
        let addresses = config.status_addresses();
        for (i, (gw, plan)) in gws.iter().zip(&plans).enumerate() {
            out.gateways.insert(
                plan.key.clone(),
                listeners::status(gw, plan, &attached[i], &addresses, now),
            );
            if plan.invalid.is_none() {
                for l in plan.listeners.iter().filter(|l| l.programmed()) {
                    for c in &l.certs {
                        if !out.certs.iter().any(|x| x.name == c.name) {
                            out.certs.push(c.clone());
                        }
                    }
                }
            }
        }
        out
    }

    /// One route's attachment. `None`: the route has no parent this LB
    /// handles (and no stale entry of ours to remove).
    #[allow(clippy::too_many_arguments)]
    fn attach_route(
        view: RouteView<'_>,
        (key, kind, name, meta): (&str, RouteKind, &str, &kube::api::ObjectMeta),
        rules: Vec<Result<RuleIntent, routes::Unsupported>>,
        previous: Option<&RouteStatus>,
        plans: &[GatewayPlan],
        by_key: &BTreeMap<String, usize>,
        namespaces: &BTreeMap<String, Namespace>,
        attached: &mut [BTreeMap<String, i32>],
    ) -> Option<AttachedRoute> {
        let hostnames: Result<Vec<HostMatch>, _> =
            view.hostnames.iter().map(|h| HostMatch::parse(h)).collect();
        let parents = routes::attach(
            view,
            hostnames.as_deref().unwrap_or_default(),
            plans,
            by_key,
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
                            *attached[*gi]
                                .entry(plans[*gi].listeners[*li].name.clone())
                                .or_insert(0) += 1;
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
            kind: view.kind,
            key: key.to_owned(),
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
        })
    }
}

/// The attachment step's result, kept between computes.
#[derive(Debug, Default)]
struct Attached {
    classes: BTreeMap<String, GatewayClassStatus>,
    gateways: BTreeMap<String, GatewayStatus>,
    certs: Vec<CertPair>,
    routes: Vec<AttachedRoute>,
}

/// One route with a parent this LB handles, before endpoint resolution.
#[derive(Debug)]
struct AttachedRoute {
    kind: RouteKindName,
    key: String,
    origin: Origin,
    order: Order,
    scopes: Vec<crate::discovery::route::Scope>,
    rules: Vec<RuleIntent>,
    parents: Vec<(ParentReference, Parent)>,
    unsupported: Option<String>,
}

/// Service ports resolved to model backends, built once per compute and
/// shared by every rule that names them.
struct Backends<'a> {
    slices: &'a HashMap<String, Vec<&'a EndpointSlice>>,
    services: &'a BTreeMap<String, Service>,
    built: HashMap<(String, bool), Result<Arc<Backend>, Failed>>,
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
        let slices = self
            .slices
            .get(&svc_key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let resolved = match endpoints::resolve_service_port(slices, port) {
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
