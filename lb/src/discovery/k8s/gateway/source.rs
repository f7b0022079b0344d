//! The Gateway API source: cluster-wide watches of GatewayClasses,
//! Gateways, HTTPRoutes, GRPCRoutes, ReferenceGrants, Namespaces,
//! `kubernetes.io/tls` Secrets and EndpointSlices (and, with
//! `--gateway-service`, the LB's own Service for the Gateways' addresses),
//! the index, the publication of routing and certificates, and one status
//! writer per kind.
//!
//! Events that arrive together are applied together and computed once.
//! Missing Gateway API CRDs (a watch answered 404) are logged once with
//! what to install, and the source stays not ready until they appear; the
//! watches keep retrying with the usual back-off, so installing the CRDs is
//! enough, no restart.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::sinks::{ApplySink, RouteSink};
use super::{Applied, GatewayConfig, GatewayIndex, RouteKindName, current_entries};
use crate::discovery::k8s::endpoints::{SERVICE_LABEL, service_addresses};
use crate::discovery::k8s::gateway_api::{
    GRPCRoute, Gateway, GatewayClass, HTTPRoute, ReferenceGrant,
};
use crate::discovery::k8s::status::{StatusWriter, WRITE_TIMEOUT};
use crate::discovery::k8s::watch;
use crate::discovery::{Discovery, Publisher};

/// The `resource` labels of the watches.
pub const RESOURCES: &[&str] = &[
    "gatewayclasses",
    "gateways",
    "httproutes",
    "grpcroutes",
    "referencegrants",
    "namespaces",
    "secrets",
    "endpointslices",
    "services",
];

/// The Gateway API source.
#[derive(Clone)]
pub struct GatewayDiscovery {
    client: Client,
    /// The LB's namespace (where `--gateway-service` lives).
    namespace: String,
    config: GatewayConfig,
    /// The LB's Service, whose addresses the Gateways get.
    service: Option<String>,
    status_timeout: Duration,
}

impl std::fmt::Debug for GatewayDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayDiscovery")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl GatewayDiscovery {
    /// A source using `client`; `namespace` is the LB's own.
    pub fn new(client: Client, namespace: impl Into<String>, config: GatewayConfig) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            config,
            service: None,
            status_timeout: WRITE_TIMEOUT,
        }
    }

    /// Takes the Gateways' addresses from this Service of the LB's
    /// namespace (its load-balancer ingress, else its external or cluster
    /// IPs) when no `--gateway-address` is given.
    pub fn with_service(mut self, name: Option<String>) -> Self {
        self.service = name;
        self
    }

    /// How long one status write may take.
    pub fn with_status_timeout(mut self, timeout: Duration) -> Self {
        self.status_timeout = timeout;
        self
    }
}

/// One watch event of any kind. Each is moved once, into the index, so
/// the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Watched {
    Class(Result<Event<GatewayClass>, watcher::Error>),
    Gateway(Result<Event<Gateway>, watcher::Error>),
    Http(Result<Event<HTTPRoute>, watcher::Error>),
    Grpc(Result<Event<GRPCRoute>, watcher::Error>),
    Grant(Result<Event<ReferenceGrant>, watcher::Error>),
    Namespace(Result<Event<Namespace>, watcher::Error>),
    Secret(Result<Event<Secret>, watcher::Error>),
    Slice(Result<Event<EndpointSlice>, watcher::Error>),
    Service(Result<Event<Service>, watcher::Error>),
}

/// Whether a watch error says the resource does not exist on the server
/// (its CRD is not installed).
fn not_found(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.code == 404
    )
}

impl Discovery for GatewayDiscovery {
    fn run(
        self: Box<Self>,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let c = &self.client;
            let events = stream::select_all([
                watch::watching(
                    Api::<GatewayClass>::all(c.clone()),
                    watcher::Config::default(),
                )
                .map(Watched::Class)
                .boxed(),
                watch::watching(Api::<Gateway>::all(c.clone()), watcher::Config::default())
                    .map(Watched::Gateway)
                    .boxed(),
                watch::watching(Api::<HTTPRoute>::all(c.clone()), watcher::Config::default())
                    .map(Watched::Http)
                    .boxed(),
                watch::watching(Api::<GRPCRoute>::all(c.clone()), watcher::Config::default())
                    .map(Watched::Grpc)
                    .boxed(),
                watch::watching(
                    Api::<ReferenceGrant>::all(c.clone()),
                    watcher::Config::default(),
                )
                .map(Watched::Grant)
                .boxed(),
                watch::watching(Api::<Namespace>::all(c.clone()), watcher::Config::default())
                    .map(Watched::Namespace)
                    .boxed(),
                watch::watching(
                    Api::<Secret>::all(c.clone()),
                    watcher::Config::default().fields("type=kubernetes.io/tls"),
                )
                .map(Watched::Secret)
                .boxed(),
                watch::watching(
                    Api::<EndpointSlice>::all(c.clone()),
                    watcher::Config::default().labels(SERVICE_LABEL),
                )
                .map(Watched::Slice)
                .boxed(),
                watch::watching(Api::<Service>::all(c.clone()), watcher::Config::default())
                    .map(Watched::Service)
                    .boxed(),
            ]);
            let mut events = std::pin::pin!(events);

            let metrics = publisher.metrics().clone();
            let mut classes = StatusWriter::new(
                ApplySink::<GatewayClass, _>::new(c.clone(), "gatewayclasses"),
                metrics.clone(),
            )
            .with_timeout(self.status_timeout);
            let mut gateways = StatusWriter::new(
                ApplySink::<Gateway, _>::new(c.clone(), "gateways"),
                metrics.clone(),
            )
            .with_timeout(self.status_timeout);
            let mut http = StatusWriter::new(
                RouteSink::<HTTPRoute>::new(c.clone(), "httproutes"),
                metrics.clone(),
            )
            .with_timeout(self.status_timeout);
            let mut grpc = StatusWriter::new(
                RouteSink::<GRPCRoute>::new(c.clone(), "grpcroutes"),
                metrics.clone(),
            )
            .with_timeout(self.status_timeout);

            let mut health = watch::Health::new(RESOURCES, publisher.clone());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut index = GatewayIndex::default();
            let mut missing_crds_logged = false;
            info!(
                controller = super::CONTROLLER,
                config = ?self.config,
                "watching Gateway API objects (cluster-wide)"
            );
            loop {
                let first = tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = classes.step() => continue,
                    () = gateways.step() => continue,
                    () = http.step() => continue,
                    () = grpc.step() => continue,
                    _ = tick.tick() => {
                        health.tick();
                        continue;
                    }
                    e = events.next() => match e { Some(e) => e, None => break },
                };
                // Apply what has arrived together, then compute once.
                let mut changed = false;
                let mut status_only: Vec<(&'static str, String)> = Vec::new();
                let mut next = Some(first);
                let mut applied = 0;
                while let Some(event) = next.take() {
                    applied += 1;
                    macro_rules! apply {
                        ($resource:expr, $result:expr, $apply:expr) => {
                            match $result {
                                Ok(e) => {
                                    health.event($resource, &e);
                                    match $apply(e) {
                                        Applied::Changed => changed = true,
                                        Applied::StatusOnly(key) => status_only.push(($resource, key)),
                                        Applied::Nothing => {}
                                    }
                                }
                                Err(e) => {
                                    if not_found(&e) && !missing_crds_logged {
                                        missing_crds_logged = true;
                                        warn!(
                                            resource = $resource,
                                            "the Gateway API CRDs are not installed \
                                             ({}.gateway.networking.k8s.io: 404); install the \
                                             standard channel v1.6 (docs/gateway-api.md); the LB \
                                             stays not ready and picks them up once installed",
                                            $resource
                                        );
                                    }
                                    health.failed($resource, &e);
                                }
                            }
                        };
                    }
                    match event {
                        Watched::Class(r) => apply!("gatewayclasses", r, |e| index.apply_class(e)),
                        Watched::Gateway(r) => apply!("gateways", r, |e| index.apply_gateway(e)),
                        Watched::Http(r) => apply!("httproutes", r, |e| index.apply_http(e)),
                        Watched::Grpc(r) => apply!("grpcroutes", r, |e| index.apply_grpc(e)),
                        Watched::Grant(r) => apply!("referencegrants", r, |e| index.apply_grant(e)),
                        Watched::Namespace(r) => {
                            apply!("namespaces", r, |e| index.apply_namespace(e))
                        }
                        Watched::Secret(r) => apply!("secrets", r, |e| index.apply_secret(e)),
                        Watched::Slice(r) => apply!("endpointslices", r, |e| index.apply_slice(e)),
                        Watched::Service(r) => apply!("services", r, |e| index.apply_service(e)),
                    }
                    if applied < 512 {
                        next = events.next().now_or_never().flatten();
                    }
                }
                if !index.synced() {
                    continue;
                }
                if changed {
                    let mut config = self.config.clone();
                    if config.addresses.is_empty()
                        && let Some(name) = &self.service
                    {
                        config.addresses = index
                            .services
                            .live()
                            .get(&format!("{}/{name}", self.namespace))
                            .map(service_addresses)
                            .unwrap_or_default();
                    }
                    let now = Time(k8s_openapi::jiff::Timestamp::now());
                    let super::Computed {
                        routing,
                        certs,
                        touched,
                    } = index.compute(&config, &now);
                    publisher.publish(routing, true);
                    if !certs.is_empty() {
                        publisher.publish_certs(certs);
                    }
                    classes.retain(|k| index.class_status(k).is_some());
                    gateways.retain(|k| index.gateway_status(k).is_some());
                    http.retain(|k| index.route_status(RouteKindName::Http, k).is_some());
                    grpc.retain(|k| index.route_status(RouteKindName::Grpc, k).is_some());
                    status_only.extend(touched);
                }
                // Hand the writers the computed statuses of what changed (what
                // the compute touched; after a status-only change, that object's).
                for (resource, k) in &status_only {
                    match *resource {
                        "gatewayclasses" => {
                            if let Some(s) = index.class_status(k) {
                                let obj = index.classes.live().get(k);
                                classes.observe(
                                    k,
                                    s,
                                    obj.and_then(|o| o.status.as_ref()),
                                    obj.and_then(|o| o.metadata.resource_version.as_deref()),
                                );
                            }
                        }
                        "gateways" => {
                            if let Some(s) = index.gateway_status(k) {
                                let obj = index.gateways.live().get(k);
                                gateways.observe(
                                    k,
                                    s,
                                    obj.and_then(|o| o.status.as_ref()),
                                    obj.and_then(|o| o.metadata.resource_version.as_deref()),
                                );
                            }
                        }
                        "httproutes" => {
                            if let Some(ours) = index.route_status(RouteKindName::Http, k) {
                                let obj = index.http.live().get(k);
                                let current = obj.map(|o| {
                                    current_entries(o.status.as_ref(), &o.spec.parent_refs, ours)
                                });
                                http.observe(
                                    k,
                                    ours,
                                    current.as_ref(),
                                    obj.and_then(|o| o.metadata.resource_version.as_deref()),
                                );
                            }
                        }
                        "grpcroutes" => {
                            if let Some(ours) = index.route_status(RouteKindName::Grpc, k) {
                                let obj = index.grpc.live().get(k);
                                let current = obj.map(|o| {
                                    current_entries(o.status.as_ref(), &o.spec.parent_refs, ours)
                                });
                                grpc.observe(
                                    k,
                                    ours,
                                    current.as_ref(),
                                    obj.and_then(|o| o.metadata.resource_version.as_deref()),
                                );
                            }
                        }
                        _ => {}
                    }
                }
                classes.dispatch();
                gateways.dispatch();
                http.dispatch();
                grpc.dispatch();
                debug!(
                    routes = index.http.live().len() + index.grpc.live().len(),
                    gateways = index.gateways.live().len(),
                    "Gateway API routing computed"
                );
            }
            debug!("Gateway API source stopping; flushing status writes");
            let flush = Duration::from_secs(2);
            tokio::join!(
                classes.flush(flush),
                gateways.flush(flush),
                http.flush(flush),
                grpc.flush(flush)
            );
        })
    }
}
